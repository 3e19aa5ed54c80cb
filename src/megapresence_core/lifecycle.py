"""Every lifecycle of every machine, as data, and the one place that assigns a state.

Theory of operation. Each thing with a lifecycle (a client connection, the
presence process itself, the bridge's hub link, the cluster link, a bridge as
the hub sees it, the hub itself) has a state enum, an input enum and one
:class:`Lifecycle`: a table ``(state, input) -> Row(target, effect)``, the
timers that may run in each state, and reasons for the common mistakes.

A machine holds a :class:`Machine` and calls :meth:`Machine.fire` with an
input; ``fire`` is the only code in the package that assigns a state. It
returns the row's ``effect``: a short name of what the owner must do for this
transition (``"retry"``, ``"forget"``, ``"ignore"``...). Owners act on the
effect, never on the state, so no ``if state is ...`` decides anything outside
this module; where the same input means different things in different states,
the table says which by naming different effects. Entering a state cancels
the owner's timers that the state does not allow (``timers``), so a timer can
only fire in a state where the table expects it.

A pair missing from a table is misuse by the shim or the embedding program:
``fire`` raises ``LocalUsageError`` with the reason from ``refusals`` (or a
generic one) and changes nothing. The tests walk every pair of every table
and drive the real machines through every row: no row is dead, none missing.

Timers as data: a machine keeps every deadline it has in one
:class:`Timers`, keyed by ``(kind, owner)`` (the owner tells apart, say, the
heartbeats of two bridges). Both questions a shim asks are derived from that
one structure: :meth:`Timers.next_deadline` (when to send the next ``Tick``)
and :meth:`Timers.pop_due` (what is due on this tick). There is no second
copy of a timer's rule to drift from the first.

A tick pops due timers one at a time, earliest first (ties in the order of
:class:`Timer`), so a timer whose handler changes state can cancel the others
before they fire: a link found silent is not also sent a heartbeat. Handlers
re-arm at ``now`` plus a positive interval, so a tick always ends.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Hashable, Mapping
from typing import Any, Final, Generic, TypeVar, final

import attrs

from .errors import LocalUsageError

__all__ = [
    "ALL",
    "BRIDGE",
    "CLUSTER_LINK",
    "CONNECTION",
    "HUB",
    "HUB_LINK",
    "LIFECYCLES",
    "PRESENCE",
    "Backoff",
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
    "Machine",
    "PresenceInput",
    "PresenceState",
    "Row",
    "Timer",
    "Timers",
]

# ------------------------------------------------------------------- timers


class _Enum(enum.Enum):
    """An enum hashed by identity (members are singletons, equality is identity):
    every transition looks up a ``(state, input)`` pair, and ``Enum.__hash__``
    (a Python-level hash of the name) was the largest cost of a table lookup."""

    __hash__ = object.__hash__


class Timer(_Enum):
    """Every kind of timer; on a tie, the earlier member fires first."""

    CONNECT = "connect"  #: the hub link: from ConnectHub to REGISTERED
    SILENCE = "silence"  #: a link that heard nothing for too long is dead
    HEARTBEAT = "heartbeat"  #: time to tell the other end we are alive
    RETRY = "retry"  #: the hub link's backoff delay is over
    PACE = "pace"  #: the hub link may send more of what it holds (its frame rate)
    REGISTER = "register"  #: the hub: a bridge must REGISTER this soon
    INSTANCE_TTL = "instance_ttl"  #: a silent instance of the cluster is swept
    CLUSTER_HEARTBEAT = "cluster_heartbeat"
    STORE_REFRESH = "store_refresh"  #: re-put this process's members in the shared store
    GRACE = "grace"  #: a lingering session's leave grace is over
    FLUSH = "flush"  #: a channel's presence window is over: send its diffs
    STALE = "stale"  #: a remote member the hub no longer vouched for is not confirmed in time


_ORDER: Final = {kind: index for index, kind in enumerate(Timer)}


class _All(enum.Enum):
    ALL = "ALL"


#: As an owner: every timer of a kind, whoever owns it.
ALL: Final = _All.ALL


@final
class Timers:
    """Deadlines by ``(kind, owner)``, in monotonic seconds.

    ``_deadlines`` is the truth; ``_heap`` orders it, with lazy deletion: an entry
    whose key is no longer armed at that time (cancelled, moved or popped) is
    stale and dropped when it reaches the top, and the heap is rebuilt when stale
    entries outnumber live ones. So arming, cancelling, ``next_deadline`` and
    ``pop_due`` cost O(log n), and a storm of n grace timers costs O(n log n).
    Ties go by the order of :class:`Timer`, then the order of arming.
    """

    __slots__ = ("_armed", "_deadlines", "_heap")

    def __init__(self) -> None:
        self._deadlines: dict[tuple[Timer, Hashable], float] = {}
        self._heap: list[tuple[float, int, int, tuple[Timer, Hashable]]] = []
        #: How many times a timer was armed: the last tie-break, never equal twice.
        self._armed = 0

    def arm(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        """Set (or move) the deadline of ``(kind, owner)``."""
        key = (kind, owner)
        self._deadlines[key] = at
        self._armed += 1
        heapq.heappush(self._heap, (at, _ORDER[kind], self._armed, key))
        if len(self._heap) > 2 * len(self._deadlines) + 16:
            self._rebuild()

    def arm_unless_armed(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        if (kind, owner) not in self._deadlines:
            self.arm(kind, at, owner)

    def postpone(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        """Move an armed timer to ``at``; a timer that is not armed stays so."""
        if (kind, owner) in self._deadlines:
            self.arm(kind, at, owner)

    def cancel(self, kind: Timer, owner: Hashable = None) -> None:
        """Forget ``(kind, owner)``, or with ``owner=ALL`` every timer of ``kind``."""
        if owner is ALL:
            for key in [key for key in self._deadlines if key[0] is kind]:
                del self._deadlines[key]
        else:
            self._deadlines.pop((kind, owner), None)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when no timer is armed."""
        heap = self._top()
        return heap[0][0] if heap else None

    def owners(self, kind: Timer) -> dict[Hashable, float]:
        """Every owner with a ``kind`` timer armed, and its deadline (for invariant checks)."""
        return {key[1]: at for key, at in self._deadlines.items() if key[0] is kind}

    def pop_due(self, now: float) -> tuple[Timer, Hashable] | None:
        """Remove and return the earliest timer due at ``now``, or None."""
        heap = self._top()
        if not heap or heap[0][0] > now:
            return None
        key = heapq.heappop(heap)[3]
        del self._deadlines[key]
        return key

    def _top(self) -> list[tuple[float, int, int, tuple[Timer, Hashable]]]:
        """The heap, its stale top entries dropped: its first entry is the earliest."""
        heap, deadlines = self._heap, self._deadlines
        while heap and deadlines.get(heap[0][3]) != heap[0][0]:
            heapq.heappop(heap)
        return heap

    def _rebuild(self) -> None:
        """One live entry per armed timer (its earliest), stale ones dropped. A sorted
        list is a heap, and the dict keeps the sorted order."""
        deadlines = self._deadlines
        live: dict[tuple[Timer, Hashable], tuple[float, int, int, tuple[Timer, Hashable]]] = {}
        for entry in sorted(self._heap):
            if deadlines.get(entry[3]) == entry[0]:
                live.setdefault(entry[3], entry)
        self._heap = list(live.values())


@final
class Backoff:
    """Exponential backoff with full jitter, drawn from a seeded RNG.

    Full jitter (a uniform draw in ``[0, ceiling]``) spreads a herd of bridges
    reconnecting to a restarted hub over the whole window instead of at its
    edge. The RNG is seeded and owned here, so a replay draws the same delays.
    """

    __slots__ = ("_attempt", "_initial", "_maximum", "_multiplier", "_rng")

    def __init__(self, *, initial: float, maximum: float, multiplier: float, seed: int) -> None:
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._rng = random.Random(seed)
        self._attempt = 0

    @property
    def ceiling(self) -> float:
        """The largest delay the next draw can give."""
        return min(self._maximum, self._initial * self._multiplier**self._attempt)

    def next_delay(self) -> float:
        ceiling = self.ceiling
        if ceiling < self._maximum:  # past the cap the exponent no longer matters
            self._attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start again from the initial ceiling, after a link that worked."""
        self._attempt = 0


# ----------------------------------------------------------------- lifecycles

S = TypeVar("S", bound=enum.Enum)
I = TypeVar("I", bound=enum.Enum)  # noqa: E741 - the input of a table


@final
@attrs.frozen
class Row(Generic[S]):
    """One transition: the state after it, and what the owner does for it."""

    target: S
    effect: str = ""


@final
class Lifecycle(Generic[S, I]):
    """The table of one kind of machine; data only, shared by every instance."""

    __slots__ = ("initial", "inputs", "refusals", "rows", "states", "timer_kinds", "timers", "what")

    def __init__(
        self,
        what: str,
        initial: S,
        inputs: type[I],
        rows: Mapping[tuple[S, I], Row[S]],
        *,
        refusals: Mapping[tuple[S, I], str] | None = None,
        timers: Mapping[S, frozenset[Timer]] | None = None,
    ) -> None:
        self.what = what
        self.initial = initial
        self.states: tuple[S, ...] = tuple(type(initial))
        self.inputs: tuple[I, ...] = tuple(inputs)
        self.rows = rows
        self.refusals = refusals or {}
        self.timers = timers or {}
        self.timer_kinds: frozenset[Timer] = frozenset().union(*self.timers.values())

    def row(self, state: S, event: I) -> Row[S]:
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
class Machine(Generic[S, I]):
    """One live lifecycle: its state, changed only by :meth:`fire`.

    With ``timers``, entering a state cancels this owner's timers (keys
    ``(kind, owner)``; ``owner=ALL`` means every key of the kind) that the new
    state does not allow.
    """

    __slots__ = ("_owner", "_spec", "_state", "_timers")

    def __init__(
        self,
        spec: Lifecycle[S, I],
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

    def check(self, event: I) -> str:
        """The effect ``event`` would have, or ``LocalUsageError``; changes nothing."""
        return self._spec.row(self._state, event).effect

    def fire(self, event: I) -> str:
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


def _rows(table: Mapping[tuple[S, I], S | tuple[S, str]]) -> Mapping[tuple[S, I], Row[S]]:
    return {
        pair: Row(*value) if isinstance(value, tuple) else Row(value)
        for pair, value in table.items()
    }


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


_C, _CI = ConnectionState, ConnectionInput

#: Effects: "unindex" (leave the ns index), "unmap" (leave every index and lose
#: the session), "linger" (leave every index, keep the session listed for the
#: grace), "leave" (the session has left: announce it), "hasten" (end a
#: grace at the next tick), "restore" (hand the session to the connection that
#: joined it again), "drop" (forget the session without announcing a leave:
#: its new home does), "forget" (shutdown: nothing is announced any more).
CONNECTION: Final = Lifecycle(
    "connection",
    _C.OPENED,
    ConnectionInput,
    _rows(
        {
            (_C.OPENED, _CI.JOIN): _C.JOINED,
            (_C.OPENED, _CI.SHUTDOWN): (_C.CLOSING, "unindex"),
            (_C.OPENED, _CI.CLOSE): (_C.CLOSED, "unindex"),
            (_C.JOINED, _CI.DETACH): (_C.DETACHED, "unmap"),
            (_C.JOINED, _CI.KICK): _C.KICKED,
            (_C.JOINED, _CI.SHUTDOWN): (_C.CLOSING, "unmap"),
            (_C.JOINED, _CI.CLOSE): (_C.LINGERING, "linger"),
            (_C.KICKED, _CI.DETACH): (_C.DETACHED, "unmap"),
            (_C.KICKED, _CI.KICK): _C.KICKED,
            (_C.KICKED, _CI.SHUTDOWN): (_C.CLOSING, "unmap"),
            (_C.KICKED, _CI.CLOSE): (_C.CLOSED, "leave"),
            (_C.DETACHED, _CI.SHUTDOWN): _C.CLOSING,
            (_C.DETACHED, _CI.CLOSE): _C.CLOSED,
            (_C.CLOSING, _CI.CLOSE): _C.CLOSED,
            (_C.LINGERING, _CI.KICK): (_C.LINGERING, "hasten"),
            (_C.LINGERING, _CI.RETURN): (_C.CLOSED, "restore"),
            (_C.LINGERING, _CI.SUPERSEDE): (_C.CLOSED, "drop"),
            (_C.LINGERING, _CI.EXPIRE): (_C.CLOSED, "leave"),
            (_C.LINGERING, _CI.SHUTDOWN): (_C.CLOSED, "forget"),
        }
    ),
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
    EVENT = "event"  #: opens, joins, sends, kicks, link starts: refused after shutdown
    WIND_DOWN = "wind_down"  #: closes, link losses, frames, messages and ticks
    SHUTDOWN = "shutdown"


_P, _PI = PresenceState, PresenceInput

PRESENCE: Final = Lifecycle(
    "presence",
    _P.RUNNING,
    PresenceInput,
    _rows(
        {
            (_P.RUNNING, _PI.EVENT): (_P.RUNNING, "handle"),
            (_P.RUNNING, _PI.WIND_DOWN): (_P.RUNNING, "handle"),
            (_P.RUNNING, _PI.SHUTDOWN): (_P.SHUT_DOWN, "handle"),
            (_P.SHUT_DOWN, _PI.WIND_DOWN): (_P.SHUT_DOWN, "handle"),
            (_P.SHUT_DOWN, _PI.SHUTDOWN): _P.SHUT_DOWN,  # idempotent, like closing a socket twice
        }
    ),
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


_L, _LI = HubLinkState, HubLinkInput
_FRAMES = (_LI.REGISTERED, _LI.ERROR, _LI.UNEXPECTED, _LI.FRAME, _LI.INVALID)


def _link_rows() -> dict[
    tuple[HubLinkState, HubLinkInput], HubLinkState | tuple[HubLinkState, str]
]:
    rows: dict[tuple[HubLinkState, HubLinkInput], HubLinkState | tuple[HubLinkState, str]] = {
        (_L.IDLE, _LI.START): (_L.CONNECTING, "connect"),
        (_L.IDLE, _LI.SHUTDOWN): _L.CLOSED,
        (_L.CONNECTING, _LI.CONNECTED): (_L.REGISTERING, "register"),
        (_L.CONNECTING, _LI.TIMEOUT): _L.CLOSING,
        (_L.CONNECTING, _LI.LOST): (_L.BACKING_OFF, "retry"),
        (_L.CONNECTING, _LI.REFUSED): (_L.REFUSED, "refused"),
        (_L.CONNECTING, _LI.SHUTDOWN): (_L.DRAINING, "close"),
        (_L.REGISTERING, _LI.REGISTERED): (_L.REGISTERED, "registered"),
        (_L.REGISTERING, _LI.ERROR): (_L.REGISTERING, "hub_error"),
        (_L.REGISTERING, _LI.UNEXPECTED): (_L.REGISTERING, "too_early"),
        (_L.REGISTERING, _LI.FRAME): (_L.REGISTERING, "too_early"),
        (_L.REGISTERING, _LI.INVALID): (_L.REGISTERING, "invalid"),
        (_L.REGISTERING, _LI.TIMEOUT): _L.CLOSING,
        (_L.REGISTERING, _LI.LOST): (_L.BACKING_OFF, "retry"),
        (_L.REGISTERING, _LI.SHUTDOWN): (_L.DRAINING, "close"),
        (_L.REGISTERED, _LI.REGISTERED): (_L.REGISTERED, "unexpected"),
        (_L.REGISTERED, _LI.ERROR): (_L.REGISTERED, "hub_error"),
        (_L.REGISTERED, _LI.UNEXPECTED): (_L.REGISTERED, "unexpected"),
        (_L.REGISTERED, _LI.FRAME): (_L.REGISTERED, "deliver"),
        (_L.REGISTERED, _LI.INVALID): (_L.REGISTERED, "invalid"),
        (_L.REGISTERED, _LI.SEND): (_L.REGISTERED, "send"),
        (_L.REGISTERED, _LI.TIMEOUT): _L.CLOSING,
        (_L.REGISTERED, _LI.LOST): (_L.BACKING_OFF, "retry"),
        (_L.REGISTERED, _LI.SHUTDOWN): (_L.DRAINING, "close"),
        (_L.CLOSING, _LI.LOST): (_L.BACKING_OFF, "retry"),
        (_L.CLOSING, _LI.SHUTDOWN): _L.DRAINING,
        (_L.BACKING_OFF, _LI.RETRY_DUE): (_L.CONNECTING, "connect"),
        (_L.BACKING_OFF, _LI.SHUTDOWN): _L.CLOSED,
        (_L.DRAINING, _LI.LOST): (_L.CLOSED, "closed"),
        (_L.DRAINING, _LI.REFUSED): (_L.CLOSED, "closed"),
        (_L.REFUSED, _LI.SHUTDOWN): _L.CLOSED,
    }
    # A link being torn down ignores what still arrives: late frames mean nothing.
    for state in (_L.CLOSING, _L.DRAINING):
        rows.update({(state, frame): (state, "ignore") for frame in _FRAMES})
    # Presence reaches the hub only while registered; elsewhere a send is dropped.
    # (A draining or closed link sends nothing: after shutdown nothing is sent at all.)
    for state in set(_L) - {_L.DRAINING, _L.CLOSED}:
        rows.setdefault((state, _LI.SEND), state)
    return rows


HUB_LINK: Final = Lifecycle(
    "hub link",
    _L.IDLE,
    HubLinkInput,
    _rows(_link_rows()),
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


_K, _KI = ClusterLinkState, ClusterLinkInput

CLUSTER_LINK: Final = Lifecycle(
    "cluster link",
    _K.DISCONNECTED,
    ClusterLinkInput,
    _rows(
        {
            (_K.DISCONNECTED, _KI.CONNECTED): (_K.CONNECTED, "connected"),
            (_K.CONNECTED, _KI.CONNECTED): (_K.CONNECTED, "connected"),  # a gap we did not see
            (_K.DISCONNECTED, _KI.LOST): (_K.DISCONNECTED, "lost"),
            (_K.CONNECTED, _KI.LOST): (_K.DISCONNECTED, "lost"),
            (_K.STOPPED, _KI.LOST): (_K.STOPPED, "lost"),
            (_K.CONNECTED, _KI.PUBLISH): (_K.CONNECTED, "send"),
            (_K.DISCONNECTED, _KI.PUBLISH): _K.DISCONNECTED,
            (_K.STOPPED, _KI.PUBLISH): _K.STOPPED,
            (_K.CONNECTED, _KI.HEARD): (_K.CONNECTED, "arm"),
            (_K.DISCONNECTED, _KI.HEARD): _K.DISCONNECTED,
            (_K.STOPPED, _KI.HEARD): _K.STOPPED,
            (_K.CONNECTED, _KI.STOP): (_K.STOPPED, "bye"),
            (_K.DISCONNECTED, _KI.STOP): _K.STOPPED,
        }
    ),
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


_B, _BI = BridgeState, BridgeInput

BRIDGE: Final = Lifecycle(
    "bridge",
    _B.AWAITING_REGISTER,
    BridgeInput,
    _rows(
        {
            (_B.AWAITING_REGISTER, _BI.ARRIVAL): (_B.AWAITING_REGISTER, "read"),
            (_B.AWAITING_REGISTER, _BI.REGISTER): (_B.REGISTERED, "registered"),
            (_B.AWAITING_REGISTER, _BI.BAD_REGISTER): (_B.AWAITING_REGISTER, "refuse_register"),
            (_B.AWAITING_REGISTER, _BI.FRAME): (_B.AWAITING_REGISTER, "not_registered"),
            (_B.AWAITING_REGISTER, _BI.CLOSE): (_B.CLOSING, "close"),
            (_B.AWAITING_REGISTER, _BI.DRAIN): (_B.CLOSING, "close"),
            (_B.AWAITING_REGISTER, _BI.CLOSED): _B.GONE,
            (_B.REGISTERED, _BI.ARRIVAL): (_B.REGISTERED, "read"),
            (_B.REGISTERED, _BI.REGISTER): (_B.REGISTERED, "second_register"),
            (_B.REGISTERED, _BI.BAD_REGISTER): (_B.REGISTERED, "second_register"),
            (_B.REGISTERED, _BI.FRAME): (_B.REGISTERED, "route"),
            (_B.REGISTERED, _BI.CLOSE): (_B.CLOSING, "forget"),
            # Every bridge is leaving: no BULK_LEAVE to bridges that are all going.
            (_B.REGISTERED, _BI.DRAIN): (_B.CLOSING, "close_quietly"),
            (_B.REGISTERED, _BI.CLOSED): (_B.GONE, "gone"),
            (_B.CLOSING, _BI.ARRIVAL): (_B.CLOSING, "ignore"),
            (_B.CLOSING, _BI.DRAIN): _B.CLOSING,  # already on its way out
            (_B.CLOSING, _BI.CLOSED): _B.GONE,
        }
    ),
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


_H, _HI = HubState, HubInput

HUB: Final = Lifecycle(
    "hub",
    _H.ACCEPTING,
    HubInput,
    _rows(
        {
            (_H.ACCEPTING, _HI.CONNECT): (_H.ACCEPTING, "authenticate"),
            (_H.DRAINING, _HI.CONNECT): (_H.DRAINING, "refuse"),
            (_H.ACCEPTING, _HI.SHUTDOWN): (_H.DRAINING, "drain"),
            (_H.DRAINING, _HI.SHUTDOWN): _H.DRAINING,
        }
    ),
)

#: Every table, for the tests that walk them all.
LIFECYCLES: Final[tuple[Lifecycle[Any, Any], ...]] = (
    CONNECTION,
    PRESENCE,
    HUB_LINK,
    CLUSTER_LINK,
    BRIDGE,
    HUB,
)
