"""The shim's ticker sleeps exactly until the core's next deadline, on a fake clock.

The core says when its earliest timer is due (``next_deadline``); the ticker
must tick then and not later, must not tick early for nothing, and must wake
at once when an event moves the deadline earlier (the server calls
``reschedule`` after each event, so no reconnect action is needed).
"""

from __future__ import annotations

import anyio
import trio
import trio.testing

from megapresence_anyio._stats import Stats
from megapresence_anyio._ticker import Ticker


def run(test: object) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_the_ticker_ticks_at_the_deadline_and_wakes_early_when_it_moves_earlier() -> None:
    async def main() -> None:
        start = anyio.current_time()
        deadline: list[float | None] = [start + 100.0]
        ticks: list[float] = []

        def on_tick(now: float) -> None:
            ticks.append(now - start)
            deadline[0] = None  # the core's timer fired; nothing else is due

        ticker = Ticker(lambda: deadline[0], on_tick, period=1000.0, stats=Stats())
        async with anyio.create_task_group() as group:
            group.start_soon(ticker.run)
            await anyio.sleep(10)
            assert ticker.target == start + 100.0  # asleep until the deadline, exactly
            deadline[0] = start + 200.0
            ticker.reschedule()  # later than the sleep's end: no need to wake
            await anyio.sleep(10)
            assert ticks == []
            deadline[0] = start + 30.0
            ticker.reschedule()  # earlier: wake now and sleep again until then
            await anyio.sleep(40)
            assert ticks == [30.0]
            assert ticker.target == start + 30.0 + 1000.0  # no deadline: the keepalive period
            group.cancel_scope.cancel()

    run(main)


def test_a_deadline_already_due_ticks_at_once_and_only_once() -> None:
    async def main() -> None:
        start = anyio.current_time()
        deadline: list[float | None] = [start - 5.0]
        ticks: list[float] = []

        def on_tick(now: float) -> None:
            ticks.append(now - start)
            deadline[0] = now + 50.0

        ticker = Ticker(lambda: deadline[0], on_tick, period=1000.0, stats=Stats())
        async with anyio.create_task_group() as group:
            group.start_soon(ticker.run)
            await anyio.sleep(120)
            group.cancel_scope.cancel()
        assert ticks == [0.0, 50.0, 100.0]

    run(main)


def test_a_failing_tick_is_counted_and_the_ticker_goes_on() -> None:
    async def main() -> None:
        start = anyio.current_time()
        ticks: list[float] = []

        def on_tick(now: float) -> None:
            ticks.append(now - start)
            if len(ticks) <= 2:
                raise RuntimeError("injected fault")

        stats = Stats()
        ticker = Ticker(lambda: None, on_tick, period=10.0, stats=stats)
        async with anyio.create_task_group() as group:
            group.start_soon(ticker.run)
            await anyio.sleep(25)
            assert ticker.failing  # the last tick failed
            await anyio.sleep(10)
            assert not ticker.failing  # and this one passed
            group.cancel_scope.cancel()
        assert ticks == [10.0, 20.0, 30.0]
        assert stats.faults == {"ticker": 2}

    run(main)
