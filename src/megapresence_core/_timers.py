"""Timers as data, and the reconnect backoff that feeds one of them.

Theory of operation: a machine keeps every deadline it has in one
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
import random
from collections.abc import Hashable
from typing import Final, final

__all__ = ["ALL", "Backoff", "Timer", "Timers"]


class Timer(enum.Enum):
    """Every kind of timer; on a tie, the earlier member fires first."""

    CONNECT = "connect"  #: the hub link: from ConnectHub to REGISTERED
    SILENCE = "silence"  #: a link that heard nothing for too long is dead
    HEARTBEAT = "heartbeat"  #: time to tell the other end we are alive
    RETRY = "retry"  #: the hub link's backoff delay is over
    REGISTER = "register"  #: the hub: a bridge must REGISTER this soon
    INSTANCE_TTL = "instance_ttl"  #: a silent instance of the cluster is swept
    CLUSTER_HEARTBEAT = "cluster_heartbeat"
    STORE_REFRESH = "store_refresh"  #: re-put this process's members in the shared store


_ORDER: Final = {kind: index for index, kind in enumerate(Timer)}


class _All(enum.Enum):
    ALL = "ALL"


#: As an owner: every timer of a kind, whoever owns it.
ALL: Final = _All.ALL


@final
class Timers:
    """Deadlines by ``(kind, owner)``, in monotonic seconds."""

    __slots__ = ("_deadlines",)

    def __init__(self) -> None:
        self._deadlines: dict[tuple[Timer, Hashable], float] = {}

    def arm(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        """Set (or move) the deadline of ``(kind, owner)``."""
        self._deadlines[(kind, owner)] = at

    def arm_unless_armed(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        self._deadlines.setdefault((kind, owner), at)

    def postpone(self, kind: Timer, at: float, owner: Hashable = None) -> None:
        """Move an armed timer to ``at``; a timer that is not armed stays so."""
        key = (kind, owner)
        if key in self._deadlines:
            self._deadlines[key] = at

    def cancel(self, kind: Timer, owner: Hashable = None) -> None:
        """Forget ``(kind, owner)``, or with ``owner=ALL`` every timer of ``kind``."""
        if owner is ALL:
            for key in [key for key in self._deadlines if key[0] is kind]:
                del self._deadlines[key]
        else:
            self._deadlines.pop((kind, owner), None)

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None when no timer is armed."""
        return min(self._deadlines.values(), default=None)

    def pop_due(self, now: float) -> tuple[Timer, Hashable] | None:
        """Remove and return the earliest timer due at ``now``, or None."""
        due = [(at, _ORDER[key[0]], key) for key, at in self._deadlines.items() if at <= now]
        if not due:
            return None
        key = min(due, key=lambda item: (item[0], item[1]))[2]
        del self._deadlines[key]
        return key


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
