"""Time as data: every deadline a machine keeps, in one structure, and the backoff that
draws reconnect delays from a seeded RNG.

A machine keeps every deadline it has in one
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
from collections.abc import Hashable
from typing import Final, final

__all__ = ["ALL", "Backoff", "IdentityEnum", "Timer", "Timers"]


class IdentityEnum(enum.Enum):
    """An enum hashed by identity (members are singletons, equality is identity):
    every transition looks up a ``(state, input)`` pair, and ``Enum.__hash__``
    (a Python-level hash of the name) was the largest cost of a table lookup."""

    __hash__ = object.__hash__


class Timer(IdentityEnum):
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

    def armed(self, kind: Timer, owner: Hashable = None) -> bool:
        return (kind, owner) in self._deadlines

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
