"""A reconnect storm in the core alone: N sessions' sockets close within a second.

.venv/bin/python benchmarks/timers_bench.py            # N = 1,000, 5,000 and 10,000
.venv/bin/python benchmarks/timers_bench.py 10000      # one N

Each closed session lingers for its leave grace (a timer per session), and
the shim asks ``next_deadline()`` after every event it feeds the core, as
``PresenceServer`` does. Then a ``Tick`` past the grace lets every session
leave. Reported: the core's wall-clock time per close (with its
``next_deadline()``) and for the expiry tick, per session. With timers kept
in a scan-everything structure both grow with N (the storm is quadratic);
kept in a heap they do not.
"""

from __future__ import annotations

import statistics
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
    """(µs per close, µs per expired session) for one storm of ``n`` disconnects."""
    presence = Presence(PresenceConfig(leave_grace=5.0, presence_window=0.05))
    for i in range(n):
        presence.handle(ConnectionOpened(conn=i, ns="/ws"))
        presence.handle(
            SessionJoined(conn=i, user_id=f"u{i}", session_id=f"s{i}", channels=("lobby",), now=0.0)
        )
    started = time.perf_counter()
    for i in range(n):
        presence.handle(ConnectionClosed(conn=i, now=1.0 + i / n))
        presence.next_deadline()
    closing = time.perf_counter() - started
    started = time.perf_counter()
    presence.handle(Tick(now=10.0))
    presence.next_deadline()
    expiring = time.perf_counter() - started
    assert presence.presence_stats("lobby") == (0, 0)
    return closing / n * 1e6, expiring / n * 1e6


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [1_000, 5_000, 10_000]
    print("| sessions closed | µs per close (+ next_deadline) | µs per expiry (one Tick) |")
    print("|---:|---:|---:|")
    for n in sizes:
        runs = [storm(n) for _ in range(3)]
        close = statistics.median(r[0] for r in runs)
        expire = statistics.median(r[1] for r in runs)
        print(f"| {n:,} | {close:,.1f} | {expire:,.1f} |")


if __name__ == "__main__":
    main()
