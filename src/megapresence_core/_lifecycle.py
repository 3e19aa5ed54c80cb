"""Every lifecycle, as data.

Theory of operation: each thing with a lifecycle (a client connection, the
bridge's hub link, a bridge as the hub sees it) has a state enum, an input
enum and one table ``(state, input) -> next state``. The machines turn events
into inputs, call :func:`advance`, and do the side effects of the input
themselves; no other module assigns a state. A pair missing from a table is
misuse by the shim or the embedding program: :func:`advance` raises
``LocalUsageError`` with the reason from the table's ``refusals``, or a
generic one, and changes nothing. Tests walk every pair of every table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final, TypeVar

from ._errors import LocalUsageError

__all__ = [
    "BRIDGE_TRANSITIONS",
    "CONN_REFUSALS",
    "CONN_TRANSITIONS",
    "LINK_TRANSITIONS",
    "BridgeInput",
    "BridgeState",
    "ConnInput",
    "ConnState",
    "LinkInput",
    "LinkState",
    "advance",
]


class ConnState(enum.Enum):
    """A client connection, from the core's point of view."""

    OPENED = "opened"  #: in the ns index; receives broadcasts; no identity yet
    JOINED = "joined"  #: also mapped by user and session id
    DETACHED = "detached"  #: lost its session to a newer connection; in no index
    CLOSED = "closed"  #: forgotten; the id may be reused


class ConnInput(enum.Enum):
    JOIN = "join"
    DETACH = "detach"  #: another connection joined with this one's session id
    CLOSE = "close"


CONN_TRANSITIONS: Final[Mapping[tuple[ConnState, ConnInput], ConnState]] = {
    (ConnState.OPENED, ConnInput.JOIN): ConnState.JOINED,
    (ConnState.OPENED, ConnInput.CLOSE): ConnState.CLOSED,
    (ConnState.JOINED, ConnInput.DETACH): ConnState.DETACHED,
    (ConnState.JOINED, ConnInput.CLOSE): ConnState.CLOSED,
    (ConnState.DETACHED, ConnInput.CLOSE): ConnState.CLOSED,
}

CONN_REFUSALS: Final[Mapping[tuple[ConnState, ConnInput], str]] = {
    (ConnState.JOINED, ConnInput.JOIN): (
        "connection has already joined a session; close it and join on a new connection"
    ),
    (ConnState.DETACHED, ConnInput.JOIN): (
        "connection lost its session to a newer connection with the same session id; close it"
    ),
}


class LinkState(enum.Enum):
    """The bridge's link to the hub."""

    IDLE = "idle"  #: configured, not started
    CONNECTING = "connecting"  #: ConnectHub emitted, transport not open yet
    REGISTERING = "registering"  #: REGISTER sent, waiting for REGISTERED
    REGISTERED = "registered"  #: the only state in which presence reaches the hub
    CLOSING = "closing"  #: we dropped the link (timeout, dead hub); will reconnect
    BACKING_OFF = "backing_off"  #: waiting for the reconnect delay
    DRAINING = "draining"  #: we are shutting down; the link will not come back
    CLOSED = "closed"  #: stopped for good (shutdown, or refused with 1008)


class LinkInput(enum.Enum):
    START = "start"
    CONNECTED = "connected"
    REGISTERED = "registered"  #: a valid REGISTERED frame while registering
    FRAME = "frame"  #: any other frame
    TIMEOUT = "timeout"  #: connect/register too slow, or the hub fell silent
    LOST = "lost"  #: the transport closed; reconnect
    REFUSED = "refused"  #: the transport closed with 1008: do not reconnect
    RETRY_DUE = "retry_due"
    SHUTDOWN = "shutdown"


_L, _LI = LinkState, LinkInput

LINK_TRANSITIONS: Final[Mapping[tuple[LinkState, LinkInput], LinkState]] = {
    (_L.IDLE, _LI.START): _L.CONNECTING,
    (_L.IDLE, _LI.SHUTDOWN): _L.CLOSED,
    (_L.CONNECTING, _LI.CONNECTED): _L.REGISTERING,
    (_L.CONNECTING, _LI.TIMEOUT): _L.CLOSING,
    (_L.CONNECTING, _LI.LOST): _L.BACKING_OFF,
    (_L.CONNECTING, _LI.REFUSED): _L.CLOSED,
    (_L.CONNECTING, _LI.SHUTDOWN): _L.DRAINING,
    (_L.REGISTERING, _LI.REGISTERED): _L.REGISTERED,
    (_L.REGISTERING, _LI.FRAME): _L.REGISTERING,
    (_L.REGISTERING, _LI.TIMEOUT): _L.CLOSING,
    (_L.REGISTERING, _LI.LOST): _L.BACKING_OFF,
    (_L.REGISTERING, _LI.REFUSED): _L.CLOSED,
    (_L.REGISTERING, _LI.SHUTDOWN): _L.DRAINING,
    (_L.REGISTERED, _LI.FRAME): _L.REGISTERED,
    (_L.REGISTERED, _LI.TIMEOUT): _L.CLOSING,
    (_L.REGISTERED, _LI.LOST): _L.BACKING_OFF,
    (_L.REGISTERED, _LI.REFUSED): _L.CLOSED,
    (_L.REGISTERED, _LI.SHUTDOWN): _L.DRAINING,
    (_L.CLOSING, _LI.FRAME): _L.CLOSING,
    (_L.CLOSING, _LI.LOST): _L.BACKING_OFF,
    (_L.CLOSING, _LI.REFUSED): _L.BACKING_OFF,
    (_L.CLOSING, _LI.SHUTDOWN): _L.DRAINING,
    (_L.BACKING_OFF, _LI.RETRY_DUE): _L.CONNECTING,
    (_L.BACKING_OFF, _LI.SHUTDOWN): _L.CLOSED,
    (_L.DRAINING, _LI.FRAME): _L.DRAINING,
    (_L.DRAINING, _LI.LOST): _L.CLOSED,
    (_L.DRAINING, _LI.REFUSED): _L.CLOSED,
    (_L.DRAINING, _LI.SHUTDOWN): _L.DRAINING,
    (_L.CLOSED, _LI.SHUTDOWN): _L.CLOSED,
}


class BridgeState(enum.Enum):
    """A bridge connection, as the hub sees it."""

    AWAITING_REGISTER = "awaiting_register"  #: authenticated, no REGISTER yet
    REGISTERED = "registered"  #: its sessions are part of the hub's presence
    CLOSING = "closing"  #: the hub closed it; frames are ignored until it is gone
    GONE = "gone"


class BridgeInput(enum.Enum):
    REGISTER = "register"
    FRAME = "frame"
    CLOSE = "close"  #: the hub decided to close it (error, timeout, drain, replaced)
    CLOSED = "closed"  #: the transport is gone


_B, _BI = BridgeState, BridgeInput

BRIDGE_TRANSITIONS: Final[Mapping[tuple[BridgeState, BridgeInput], BridgeState]] = {
    (_B.AWAITING_REGISTER, _BI.REGISTER): _B.REGISTERED,
    (_B.AWAITING_REGISTER, _BI.CLOSE): _B.CLOSING,
    (_B.AWAITING_REGISTER, _BI.CLOSED): _B.GONE,
    (_B.REGISTERED, _BI.FRAME): _B.REGISTERED,
    (_B.REGISTERED, _BI.CLOSE): _B.CLOSING,
    (_B.REGISTERED, _BI.CLOSED): _B.GONE,
    (_B.CLOSING, _BI.REGISTER): _B.CLOSING,
    (_B.CLOSING, _BI.FRAME): _B.CLOSING,
    (_B.CLOSING, _BI.CLOSE): _B.CLOSING,
    (_B.CLOSING, _BI.CLOSED): _B.GONE,
}

_S = TypeVar("_S", bound=enum.Enum)
_I = TypeVar("_I", bound=enum.Enum)


def advance(
    table: Mapping[tuple[_S, _I], _S],
    state: _S,
    event: _I,
    *,
    what: str,
    refusals: Mapping[tuple[_S, _I], str] | None = None,
) -> _S:
    """The state after ``event``, or ``LocalUsageError`` if the pair has no entry."""
    target = table.get((state, event))
    if target is None:
        reason = (refusals or {}).get((state, event)) or (
            f"{event.value!r} is not allowed while the {what} is {state.value!r}"
        )
        raise LocalUsageError(f"{what}: {reason}")
    return target
