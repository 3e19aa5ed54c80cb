"""One timer task per server: core deadlines and socket keepalive share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import anyio

__all__ = ["Ticker"]


@final
class Ticker:
    """Calls ``on_tick(now)`` at the core's next deadline and at least every ``period``.

    ``wake()`` makes it recompute at once, for when an action set an earlier
    deadline (a reconnect delay, say) than the one it is sleeping towards.
    """

    def __init__(
        self,
        next_deadline: Callable[[], float | None],
        on_tick: Callable[[float], None],
        period: float,
    ) -> None:
        self._next_deadline = next_deadline
        self._on_tick = on_tick
        self._period = period
        self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            now = anyio.current_time()
            wake_at = now + self._period
            deadline = self._next_deadline()
            if deadline is not None:
                wake_at = min(wake_at, deadline)
            with anyio.move_on_after(max(0.0, wake_at - now)):
                await self._wake.wait()
            self._wake = anyio.Event()
            self._on_tick(anyio.current_time())
