"""Every lifecycle of every machine, as data, and the one place that assigns a state.

Theory of operation. Each thing with a lifecycle (a client connection, the
presence process itself, the bridge's hub link, the cluster link, a bridge as
the hub sees it, the hub itself) has a state enum, an input enum and one
:class:`Lifecycle`: a table ``(state, input) -> Row(target, effect)``, the
timers that may run in each state, and reasons for the common mistakes.

A machine holds a :class:`Machine` and calls :meth:`Machine.fire` with an
input; ``fire`` is the only code in the package that assigns a state. It
returns the row's ``effect``: a member of the lifecycle's own effect enum
naming what the owner must do for this transition (``HubLinkEffect.RETRY``,
``BridgeEffect.IGNORE``...), or None where the owner does nothing more than the
move; only effects an owner reads are named. Owners act on the effect, never
on the state, so no ``if state is ...`` decides anything outside
this module; where the same input means different things in different states,
the table says which by naming different effects. Entering a state cancels
the owner's timers that the state does not allow (``timers``), so a timer can
only fire in a state where the table expects it.

A pair missing from a table is misuse by the shim or the embedding program:
``fire`` raises ``LocalUsageError`` with the reason from ``refusals`` (or a
generic one) and changes nothing. The tests walk every pair of every table
and drive the real machines through every row: no row is dead, none missing.

Timers and the backoff are data too, kept in ``_timers``: a machine's owner
hands it the :class:`Timers` it shares with the others of its ``Presence`` or
``Hub``.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Any, Final, Generic, TypeVar, final

import attrs

from ._timers import IdentityEnum as _Enum
from ._timers import Timer, Timers
from .errors import LocalUsageError

__all__ = [
    "BRIDGE",
    "CLUSTER_LINK",
    "CONNECTION",
    "HUB",
    "HUB_LINK",
    "LIFECYCLES",
    "PRESENCE",
    "BridgeInput",
    "BridgeState",
    "ClusterLinkInput",
    "ClusterLinkState",
    "ConnectionInput",
    "ConnectionState",
    "HubInput",
    "HubLinkInput",
    "HubLinkState",
    "HubState",
    "Lifecycle",
    "PresenceInput",
    "PresenceState",
    "Timer",
]

# ----------------------------------------------------------------- lifecycles

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741 - the input of a table
E = TypeVar("E", bound=enum.Enum)  #: the effects of a table


@final
@attrs.frozen
class Row(Generic[S, E]):
    """One transition: the state after it, and what the owner does for it (None: nothing)."""

    target: S
    effect: E | None = None


@final
class Lifecycle(Generic[S, I, E]):
    """The table of one kind of machine; data only, shared by every instance."""

    __slots__ = (
        "effects",
        "initial",
        "inputs",
        "refusals",
        "rows",
        "states",
        "timer_kinds",
        "timers",
        "what",
    )

    def __init__(
        self,
        what: str,
        initial: S,
        inputs: type[I],
        effects: type[E],
        rows: Mapping[tuple[S, I], S | tuple[S, E]],
        *,
        refusals: Mapping[tuple[S, I], str] | None = None,
        timers: Mapping[S, frozenset[Timer]] | None = None,
    ) -> None:
        self.what = what
        self.initial = initial
        self.states: tuple[S, ...] = tuple(type(initial))
        self.inputs: tuple[I, ...] = tuple(inputs)
        self.effects: tuple[E, ...] = tuple(effects)
        #: A target alone is a row without an effect.
        self.rows: Mapping[tuple[S, I], Row[S, E]] = {
            pair: Row(*value) if isinstance(value, tuple) else Row(value)
            for pair, value in rows.items()
        }
        self.refusals = refusals or {}
        self.timers = timers or {}
        self.timer_kinds: frozenset[Timer] = frozenset().union(*self.timers.values())

    def row(self, state: S, event: I) -> Row[S, E]:
        """The row for ``(state, event)``, or ``LocalUsageError`` if there is none."""
        found = self.rows.get((state, event))
        if found is None:
            reason = self.refusals.get((state, event)) or (
                f"{event.value!r} is not allowed while the {self.what} is {state.value!r}"
            )
            raise LocalUsageError(f"{self.what}: {reason}")
        return found

    def allowed_timers(self, state: S) -> frozenset[Timer]:
        return self.timers.get(state, frozenset())


@final
class Machine(Generic[S, I, E]):
    """One live lifecycle: its state, changed only by :meth:`fire`.

    With ``timers``, entering a state cancels this owner's timers (keys
    ``(kind, owner)``; ``owner=ALL`` means every key of the kind) that the new
    state does not allow.
    """

    __slots__ = ("_owner", "_spec", "_state", "_timers")

    def __init__(
        self,
        spec: Lifecycle[S, I, E],
        timers: Timers | None = None,
        owner: Hashable = None,
    ) -> None:
        self._spec = spec
        self._state = spec.initial
        self._timers = timers
        self._owner = owner

    @property
    def state(self) -> S:
        return self._state

    def check(self, event: I) -> E | None:
        """The effect ``event`` would have, or ``LocalUsageError``; changes nothing."""
        return self._spec.row(self._state, event).effect

    def fire(self, event: I) -> E | None:
        """Apply ``event``: assign the row's target and return its effect."""
        row = self._spec.rows.get((self._state, event))
        if row is None:
            row = self._spec.row(self._state, event)  # raises, saying why
        if row.target is not self._state:
            self._state = row.target
            if self._timers is not None:
                spec = self._spec
                for kind in spec.timer_kinds - spec.allowed_timers(row.target):
                    self._timers.cancel(kind, self._owner)
        return row.effect


# ------------------------------------------------------------ a connection


class ConnectionState(_Enum):
    """A client connection (and, once it closed, its lingering session), as the core sees it."""

    OPENED = "opened"  #: in the ns index; receives broadcasts; no session yet
    JOINED = "joined"  #: also mapped by user and session id, subscribed to its channels
    KICKED = "kicked"  #: joined, and we asked for its close: its session leaves at once
    DETACHED = "detached"  #: lost its session to a newer connection; in no index
    CLOSING = "closing"  #: the server shut down and asked for its close; in no index
    #: The socket closed, the session is still listed for the leave grace; the
    #: connection id is forgotten (and may be reused), the record is kept by session id.
    LINGERING = "lingering"
    CLOSED = "closed"  #: forgotten; the id may be reused


class ConnectionInput(_Enum):
    JOIN = "join"
    DETACH = "detach"  #: another connection of the same user took its session id
    KICK = "kick"  #: we asked for its close (1008): no grace for its session
    SHUTDOWN = "shutdown"
    CLOSE = "close"
    RETURN = "return"  #: its lingering session joined again (here): restored
    SUPERSEDE = "supersede"  #: its lingering session joined again on another process
    EXPIRE = "expire"  #: the leave grace is over


class ConnectionEffect(_Enum):
    """What the local indexes do for a connection's transition."""

    UNINDEX = "unindex"  #: leave the ns index
    UNMAP = "unmap"  #: leave every index and lose the session
    LINGER = "linger"  #: leave every index, keep the session listed for the grace
    LEAVE = "leave"  #: leave every index: the session has left, announce it


_C, _CI, _CE = ConnectionState, ConnectionInput, ConnectionEffect

#: A connection's table; its effects are what the local indexes do for a transition.
CONNECTION: Final = Lifecycle(
    "connection",
    _C.OPENED,
    ConnectionInput,
    ConnectionEffect,
    {
        (_C.OPENED, _CI.JOIN): _C.JOINED,
        (_C.OPENED, _CI.SHUTDOWN): (_C.CLOSING, _CE.UNINDEX),
        (_C.OPENED, _CI.CLOSE): (_C.CLOSED, _CE.UNINDEX),
        (_C.JOINED, _CI.DETACH): (_C.DETACHED, _CE.UNMAP),
        (_C.JOINED, _CI.KICK): _C.KICKED,
        (_C.JOINED, _CI.SHUTDOWN): (_C.CLOSING, _CE.UNMAP),
        (_C.JOINED, _CI.CLOSE): (_C.LINGERING, _CE.LINGER),
        (_C.KICKED, _CI.DETACH): (_C.DETACHED, _CE.UNMAP),
        (_C.KICKED, _CI.KICK): _C.KICKED,
        (_C.KICKED, _CI.SHUTDOWN): (_C.CLOSING, _CE.UNMAP),
        (_C.KICKED, _CI.CLOSE): (_C.CLOSED, _CE.LEAVE),
        (_C.DETACHED, _CI.SHUTDOWN): _C.CLOSING,
        (_C.DETACHED, _CI.CLOSE): _C.CLOSED,
        (_C.CLOSING, _CI.CLOSE): _C.CLOSED,
        # A kick ends the grace at the next tick (its owner re-arms the timer).
        (_C.LINGERING, _CI.KICK): _C.LINGERING,
        (_C.LINGERING, _CI.RETURN): _C.CLOSED,  # restored: the new connection has it
        (_C.LINGERING, _CI.SUPERSEDE): _C.CLOSED,  # its new home announces it
        (_C.LINGERING, _CI.EXPIRE): _C.CLOSED,
        (_C.LINGERING, _CI.SHUTDOWN): _C.CLOSED,  # nothing is announced any more
    },
    refusals={
        (_C.JOINED, _CI.JOIN): (
            "connection has already joined a session; close it and join on a new connection"
        ),
        (_C.KICKED, _CI.JOIN): (
            "connection has already joined a session; close it and join on a new connection"
        ),
        (_C.DETACHED, _CI.JOIN): (
            "connection lost its session to a newer connection with the same session id; close it"
        ),
    },
    timers={_C.LINGERING: frozenset({Timer.GRACE})},
)


# -------------------------------------------------------- a presence process


class PresenceState(_Enum):
    RUNNING = "running"
    SHUT_DOWN = "shut_down"  #: only the closes it asked for, the hub link's drain and time remain


class PresenceInput(_Enum):
    OPEN = "open"  #: a connection opens: closed at once after shutdown (503 before its upgrade)
    EVENT = "event"  #: joins, sends, kicks, link starts: refused after shutdown
    WIND_DOWN = "wind_down"  #: closes, link losses, frames, messages and ticks
    SHUTDOWN = "shutdown"


class PresenceEffect(_Enum):
    """Whether the process handles an event."""

    HANDLE = "handle"  #: the event is handled (else: ignored, the process is shut down)
    REFUSE = "refuse"  #: a connection opened after shutdown: closed as the others were


_P, _PI, _PE = PresenceState, PresenceInput, PresenceEffect

PRESENCE: Final = Lifecycle(
    "presence",
    _P.RUNNING,
    PresenceInput,
    PresenceEffect,
    {
        (_P.RUNNING, _PI.OPEN): (_P.RUNNING, _PE.HANDLE),
        (_P.RUNNING, _PI.EVENT): (_P.RUNNING, _PE.HANDLE),
        (_P.RUNNING, _PI.WIND_DOWN): (_P.RUNNING, _PE.HANDLE),
        (_P.RUNNING, _PI.SHUTDOWN): (_P.SHUT_DOWN, _PE.HANDLE),
        (_P.SHUT_DOWN, _PI.OPEN): (_P.SHUT_DOWN, _PE.REFUSE),
        (_P.SHUT_DOWN, _PI.WIND_DOWN): (_P.SHUT_DOWN, _PE.HANDLE),
        (_P.SHUT_DOWN, _PI.SHUTDOWN): _P.SHUT_DOWN,  # idempotent, like closing a socket twice
    },
    refusals={
        (_P.SHUT_DOWN, _PI.EVENT): "shut down; it accepts closes, link events and ticks only"
    },
)


# ------------------------------------------------------------- the hub link


class HubLinkState(_Enum):
    """The bridge's link to the hub."""

    IDLE = "idle"  #: configured, not started
    CONNECTING = "connecting"  #: ConnectHub emitted, transport not open yet
    REGISTERING = "registering"  #: REGISTER sent, waiting for REGISTERED
    REGISTERED = "registered"  #: the only state in which presence reaches the hub
    CLOSING = "closing"  #: we dropped the link (timeout, dead hub); will reconnect
    BACKING_OFF = "backing_off"  #: waiting for the reconnect delay (after any close or failure)
    DRAINING = "draining"  #: we are shutting down; the link will not come back
    REFUSED = "refused"  #: the hub refused our token (HTTP 401 at the upgrade): for good
    CLOSED = "closed"  #: stopped for good (shutdown)


class HubLinkInput(_Enum):
    START = "start"
    CONNECTED = "connected"
    REGISTERED = "registered"  #: a valid REGISTERED frame
    ERROR = "error"  #: a valid ERROR frame
    UNEXPECTED = "unexpected"  #: a valid frame only bridges send (REGISTER)
    FRAME = "frame"  #: any other valid frame
    INVALID = "invalid"  #: bytes that are not a valid frame
    SEND = "send"  #: a frame of ours, to send if the link carries presence
    TIMEOUT = "timeout"  #: connect/register too slow, or the hub fell silent
    LOST = "lost"  #: the transport closed (any close code) or failed; reconnect
    REFUSED = "refused"  #: the upgrade was refused with 401 (a bad token): do not reconnect
    RETRY_DUE = "retry_due"
    SHUTDOWN = "shutdown"


class HubLinkEffect(_Enum):
    """What the hub link does for a transition."""

    RETRY = "retry"  #: lost: back off, then connect again
    REFUSED = "refused"  #: refused for good (a bad token)
    CLOSE = "close"  #: shut down while open: close the transport
    SEND = "send"  #: send our frame (within the hub's rate)
    # What a received frame means, in this state:
    REGISTERED = "registered"  #: the hub accepted us: resync
    DELIVER = "deliver"  #: hand the frame to ``Presence``
    HUB_ERROR = "hub_error"  #: the hub's ERROR: logged, or a session's client closed
    TOO_EARLY = "too_early"  #: a frame before REGISTERED
    UNEXPECTED = "unexpected"  #: a frame the hub never sends here
    INVALID = "invalid"  #: bytes that are no frame: logged
    IGNORE = "ignore"  #: the link is being torn down: late frames mean nothing


_L, _LI, _LE = HubLinkState, HubLinkInput, HubLinkEffect
_FRAMES = (_LI.REGISTERED, _LI.ERROR, _LI.UNEXPECTED, _LI.FRAME, _LI.INVALID)
_LinkRows = dict[
    tuple[HubLinkState, HubLinkInput], HubLinkState | tuple[HubLinkState, HubLinkEffect]
]


def _link_rows() -> _LinkRows:
    rows: _LinkRows = {
        (_L.IDLE, _LI.START): _L.CONNECTING,
        (_L.IDLE, _LI.SHUTDOWN): _L.CLOSED,
        (_L.CONNECTING, _LI.CONNECTED): _L.REGISTERING,
        (_L.CONNECTING, _LI.TIMEOUT): _L.CLOSING,
        (_L.CONNECTING, _LI.LOST): (_L.BACKING_OFF, _LE.RETRY),
        (_L.CONNECTING, _LI.REFUSED): (_L.REFUSED, _LE.REFUSED),
        (_L.CONNECTING, _LI.SHUTDOWN): (_L.DRAINING, _LE.CLOSE),
        (_L.REGISTERING, _LI.REGISTERED): (_L.REGISTERED, _LE.REGISTERED),
        (_L.REGISTERING, _LI.ERROR): (_L.REGISTERING, _LE.HUB_ERROR),
        (_L.REGISTERING, _LI.UNEXPECTED): (_L.REGISTERING, _LE.TOO_EARLY),
        (_L.REGISTERING, _LI.FRAME): (_L.REGISTERING, _LE.TOO_EARLY),
        (_L.REGISTERING, _LI.INVALID): (_L.REGISTERING, _LE.INVALID),
        (_L.REGISTERING, _LI.TIMEOUT): _L.CLOSING,
        (_L.REGISTERING, _LI.LOST): (_L.BACKING_OFF, _LE.RETRY),
        (_L.REGISTERING, _LI.SHUTDOWN): (_L.DRAINING, _LE.CLOSE),
        (_L.REGISTERED, _LI.REGISTERED): (_L.REGISTERED, _LE.UNEXPECTED),
        (_L.REGISTERED, _LI.ERROR): (_L.REGISTERED, _LE.HUB_ERROR),
        (_L.REGISTERED, _LI.UNEXPECTED): (_L.REGISTERED, _LE.UNEXPECTED),
        (_L.REGISTERED, _LI.FRAME): (_L.REGISTERED, _LE.DELIVER),
        (_L.REGISTERED, _LI.INVALID): (_L.REGISTERED, _LE.INVALID),
        (_L.REGISTERED, _LI.SEND): (_L.REGISTERED, _LE.SEND),
        (_L.REGISTERED, _LI.TIMEOUT): _L.CLOSING,
        (_L.REGISTERED, _LI.LOST): (_L.BACKING_OFF, _LE.RETRY),
        (_L.REGISTERED, _LI.SHUTDOWN): (_L.DRAINING, _LE.CLOSE),
        (_L.CLOSING, _LI.LOST): (_L.BACKING_OFF, _LE.RETRY),
        (_L.CLOSING, _LI.SHUTDOWN): _L.DRAINING,
        (_L.BACKING_OFF, _LI.RETRY_DUE): _L.CONNECTING,
        (_L.BACKING_OFF, _LI.SHUTDOWN): _L.CLOSED,
        (_L.DRAINING, _LI.LOST): _L.CLOSED,
        (_L.DRAINING, _LI.REFUSED): _L.CLOSED,
        (_L.REFUSED, _LI.SHUTDOWN): _L.CLOSED,
    }
    # A link being torn down ignores what still arrives: late frames mean nothing.
    for state in (_L.CLOSING, _L.DRAINING):
        rows.update({(state, frame): (state, _LE.IGNORE) for frame in _FRAMES})
    # Presence reaches the hub only while registered; elsewhere a send is dropped.
    # (A draining or closed link sends nothing: after shutdown nothing is sent at all.)
    for state in set(_L) - {_L.DRAINING, _L.CLOSED}:
        rows.setdefault((state, _LI.SEND), state)
    return rows


HUB_LINK: Final = Lifecycle(
    "hub link",
    _L.IDLE,
    HubLinkInput,
    HubLinkEffect,
    _link_rows(),
    timers={
        _L.CONNECTING: frozenset({Timer.CONNECT}),
        _L.REGISTERING: frozenset({Timer.CONNECT}),
        _L.REGISTERED: frozenset({Timer.SILENCE, Timer.HEARTBEAT, Timer.PACE}),
        _L.BACKING_OFF: frozenset({Timer.RETRY}),
    },
)


# ---------------------------------------------------------- the cluster link


class ClusterLinkState(_Enum):
    """This instance's link to the other instances of its app (NATS)."""

    DISCONNECTED = "disconnected"  #: stale, not gone: nobody is swept while we cannot hear
    CONNECTED = "connected"
    STOPPED = "stopped"  #: said goodbye at shutdown


class ClusterLinkInput(_Enum):
    CONNECTED = "connected"
    LOST = "lost"
    PUBLISH = "publish"
    HEARD = "heard"  #: a message from another instance: its TTL restarts, if we can hear
    STOP = "stop"


class ClusterLinkEffect(_Enum):
    """What the cluster link does for a transition."""

    SEND = "send"  #: publish (only while connected)
    ARM = "arm"  #: restart the sender's TTL (only while we can hear)


_K, _KI, _KE = ClusterLinkState, ClusterLinkInput, ClusterLinkEffect

CLUSTER_LINK: Final = Lifecycle(
    "cluster link",
    _K.DISCONNECTED,
    ClusterLinkInput,
    ClusterLinkEffect,
    {
        (_K.DISCONNECTED, _KI.CONNECTED): _K.CONNECTED,
        (_K.CONNECTED, _KI.CONNECTED): _K.CONNECTED,  # a gap we did not see
        (_K.DISCONNECTED, _KI.LOST): _K.DISCONNECTED,
        (_K.CONNECTED, _KI.LOST): _K.DISCONNECTED,
        (_K.STOPPED, _KI.LOST): _K.STOPPED,
        (_K.CONNECTED, _KI.PUBLISH): (_K.CONNECTED, _KE.SEND),
        (_K.DISCONNECTED, _KI.PUBLISH): _K.DISCONNECTED,
        (_K.STOPPED, _KI.PUBLISH): _K.STOPPED,
        (_K.CONNECTED, _KI.HEARD): (_K.CONNECTED, _KE.ARM),
        (_K.DISCONNECTED, _KI.HEARD): _K.DISCONNECTED,
        (_K.STOPPED, _KI.HEARD): _K.STOPPED,
        (_K.CONNECTED, _KI.STOP): _K.STOPPED,
        (_K.DISCONNECTED, _KI.STOP): _K.STOPPED,
    },
    timers={_K.CONNECTED: frozenset({Timer.CLUSTER_HEARTBEAT, Timer.INSTANCE_TTL})},
)


# ---------------------------------------------------- a bridge, at the hub


class BridgeState(_Enum):
    """A bridge connection, as the hub sees it."""

    AWAITING_REGISTER = "awaiting_register"  #: authenticated, no REGISTER yet
    REGISTERED = "registered"  #: its sessions are part of the hub's presence
    CLOSING = "closing"  #: the hub closed it; frames are ignored until it is gone
    GONE = "gone"


class BridgeInput(_Enum):
    ARRIVAL = "arrival"  #: a frame arrived, not yet read
    REGISTER = "register"  #: a valid REGISTER the hub can accept
    #: a valid REGISTER the hub cannot accept (its protocol, too many interest channels)
    BAD_REGISTER = "bad_register"
    FRAME = "frame"  #: any other valid frame
    CLOSE = "close"  #: the hub decided to close it (errors, timeout, replaced)
    DRAIN = "drain"  #: the hub is shutting down
    CLOSED = "closed"  #: the transport is gone


class BridgeEffect(_Enum):
    """What the hub does for a bridge's transition."""

    IGNORE = "ignore"  #: a frame from a closing bridge: nothing it says counts
    # What a frame means, in this state:
    REGISTERED = "registered"  #: accept its REGISTER
    REFUSE_REGISTER = "refuse_register"  #: refuse its REGISTER, say why
    NOT_REGISTERED = "not_registered"  #: a frame before REGISTER: fatal
    SECOND_REGISTER = "second_register"  #: REGISTER twice: fatal
    ROUTE = "route"  #: route the frame
    # Closing it:
    CLOSE = "close"  #: close it (it held no sessions)
    FORGET = "forget"  #: close it, drop its sessions, tell the bridges tracking them
    CLOSE_QUIETLY = "close_quietly"  #: close it, drop its sessions, tell nobody
    GONE = "gone"  #: its transport is gone: drop its sessions, tell the bridges


_B, _BI, _BE = BridgeState, BridgeInput, BridgeEffect

BRIDGE: Final = Lifecycle(
    "bridge",
    _B.AWAITING_REGISTER,
    BridgeInput,
    BridgeEffect,
    {
        (_B.AWAITING_REGISTER, _BI.ARRIVAL): _B.AWAITING_REGISTER,
        (_B.AWAITING_REGISTER, _BI.REGISTER): (_B.REGISTERED, _BE.REGISTERED),
        (_B.AWAITING_REGISTER, _BI.BAD_REGISTER): (_B.AWAITING_REGISTER, _BE.REFUSE_REGISTER),
        (_B.AWAITING_REGISTER, _BI.FRAME): (_B.AWAITING_REGISTER, _BE.NOT_REGISTERED),
        (_B.AWAITING_REGISTER, _BI.CLOSE): (_B.CLOSING, _BE.CLOSE),
        (_B.AWAITING_REGISTER, _BI.DRAIN): (_B.CLOSING, _BE.CLOSE),
        (_B.AWAITING_REGISTER, _BI.CLOSED): _B.GONE,
        (_B.REGISTERED, _BI.ARRIVAL): _B.REGISTERED,
        (_B.REGISTERED, _BI.REGISTER): (_B.REGISTERED, _BE.SECOND_REGISTER),
        (_B.REGISTERED, _BI.BAD_REGISTER): (_B.REGISTERED, _BE.SECOND_REGISTER),
        (_B.REGISTERED, _BI.FRAME): (_B.REGISTERED, _BE.ROUTE),
        (_B.REGISTERED, _BI.CLOSE): (_B.CLOSING, _BE.FORGET),
        # Every bridge is leaving: no BULK_LEAVE to bridges that are all going.
        (_B.REGISTERED, _BI.DRAIN): (_B.CLOSING, _BE.CLOSE_QUIETLY),
        (_B.REGISTERED, _BI.CLOSED): (_B.GONE, _BE.GONE),
        (_B.CLOSING, _BI.ARRIVAL): (_B.CLOSING, _BE.IGNORE),
        (_B.CLOSING, _BI.DRAIN): _B.CLOSING,  # already on its way out
        (_B.CLOSING, _BI.CLOSED): _B.GONE,
    },
    timers={
        _B.AWAITING_REGISTER: frozenset({Timer.REGISTER}),
        _B.REGISTERED: frozenset({Timer.SILENCE, Timer.HEARTBEAT}),
    },
)


# ------------------------------------------------------------------ the hub


class HubState(_Enum):
    ACCEPTING = "accepting"
    DRAINING = "draining"  #: every bridge closed with 4503; newcomers get 503


class HubInput(_Enum):
    CONNECT = "connect"  #: an authenticated-or-not upgrade request
    SHUTDOWN = "shutdown"


class HubEffect(_Enum):
    """What the hub does for its own transition."""

    REFUSE = "refuse"  #: a newcomer while draining: 503
    DRAIN = "drain"  #: close every bridge with 4503


_H, _HI, _HE = HubState, HubInput, HubEffect

HUB: Final = Lifecycle(
    "hub",
    _H.ACCEPTING,
    HubInput,
    HubEffect,
    {
        (_H.ACCEPTING, _HI.CONNECT): _H.ACCEPTING,
        (_H.DRAINING, _HI.CONNECT): (_H.DRAINING, _HE.REFUSE),
        (_H.ACCEPTING, _HI.SHUTDOWN): (_H.DRAINING, _HE.DRAIN),
        (_H.DRAINING, _HI.SHUTDOWN): _H.DRAINING,
    },
)

#: Every table, for the tests that walk them all.
LIFECYCLES: Final[tuple[Lifecycle[Any, Any, Any], ...]] = (
    CONNECTION,
    PRESENCE,
    HUB_LINK,
    CLUSTER_LINK,
    BRIDGE,
    HUB,
)
