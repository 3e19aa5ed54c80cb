"""One timer task per server: it sleeps until the core's next deadline, exactly.

The core keeps every deadline (heartbeats, timeouts, the hub link's
reconnect delay) in one structure and says when the earliest is due with
``next_deadline()``; the ticker sleeps until then and sends ``Tick``. After
each event the server calls :meth:`Ticker.reschedule`, which wakes the ticker
at once if the event set an earlier deadline (a reconnect delay, say) than the
one it is sleeping towards, and it sleeps again until that one (a tick comes
only when a deadline does, never early). Socket keepalive (pings, close
timeouts) is the shim's own periodic check, run at least every ``period`` on
the same task.

Each tick runs behind a boundary of its own: a fault in it (a bug in an action
the tick led to) is logged with its traceback and counted, the ticker goes on
(the timers are the whole server's), and :attr:`Ticker.failing` says so until
a tick passes again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import final

import anyio

from ._stats import Stats

__all__ = ["Ticker"]

logger = logging.getLogger("megapresence")


@final
class Ticker:
    """Calls ``on_tick(now)`` at the core's next deadline and at least every ``period``."""

    def __init__(
        self,
        next_deadline: Callable[[], float | None],
        on_tick: Callable[[float], None],
        period: float,
        stats: Stats,
    ) -> None:
        self._next_deadline = next_deadline
        self._on_tick = on_tick
        self._period = period
        self._stats = stats
        #: The last tick failed: its timers may not have fired.
        self.failing = False
        self._wake = anyio.Event()
        #: When the current sleep ends; -inf while awake (the next sleep is computed after
        #: the tick, so nothing that happens during it needs to wake the ticker again).
        self._target = -math.inf

    @property
    def target(self) -> float:
        """When the ticker will next wake (monotonic seconds); -inf while it is awake."""
        return self._target

    def reschedule(self) -> None:
        """Wake now if the core's next deadline is earlier than the current sleep's end."""
        deadline = self._next_deadline()
        if deadline is not None and deadline < self._target:
            self._wake.set()

    async def run(self) -> None:
        while True:
            now = anyio.current_time()
            deadline = self._next_deadline()
            wake_at = now + self._period
            self._target = wake_at if deadline is None else min(deadline, wake_at)
            with anyio.move_on_after(max(0.0, self._target - now)) as sleep:
                await self._wake.wait()
            self._target = -math.inf
            self._wake = anyio.Event()
            if sleep.cancelled_caught:  # the deadline (or the keepalive period) came
                self._tick(anyio.current_time())
            # else: woken by an earlier deadline; sleep again, until it

    def _tick(self, now: float) -> None:
        try:
            self._on_tick(now)
        except Exception as exc:
            self._stats.faults["ticker"] += 1
            if not self.failing:
                logger.error(
                    "a tick failed (the ticker goes on): %s: %s",
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
            self.failing = True
        else:
            if self.failing:
                logger.info("ticks pass again")
            self.failing = False
