"""A reconnect storm's timers: N sessions close (a grace timer each), then all expire.

    python benchmarks/timer_storm.py [N ...]

The servers ask the core for ``next_deadline()`` after every event, so each
close is timed with it, as a shim does; then one tick past the grace expires
every lingering session. Prints microseconds per close and the expiry tick's
seconds, per N: the cost per close should not grow with N.
"""

from __future__ import annotations

import sys
import time

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    Presence,
    PresenceConfig,
    SessionJoined,
    Tick,
)


def storm(n: int) -> tuple[float, float]:
    presence = Presence(PresenceConfig())
    for i in range(n):
        presence.handle(ConnectionOpened(conn=i, ns="/ws"))
        presence.handle(
            SessionJoined(conn=i, user_id=f"u{i}", session_id=f"s{i}", channels=("lobby",), now=0)
        )
    start = time.perf_counter()
    for i in range(n):
        presence.handle(ConnectionClosed(conn=i, now=1.0 + i * 1e-5))
        presence.next_deadline()
    closes = time.perf_counter() - start
    start = time.perf_counter()
    presence.handle(Tick(now=100.0))
    presence.next_deadline()
    expiry = time.perf_counter() - start
    assert not presence.channel_members("lobby")
    return closes / n * 1e6, expiry


def main(sizes: list[int]) -> None:
    print(f"{'sessions':>9} {'us/close':>9} {'expiry s':>9}")
    for n in sizes:
        per_close, expiry = storm(n)
        print(f"{n:>9} {per_close:>9.1f} {expiry:>9.3f}")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000, 10_000])
