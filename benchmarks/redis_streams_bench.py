"""Channel streams in Redis (``RedisStreams``) against a real redis-server, side by side.

Prints, each the median of ``--runs`` runs:

- appends per second through one ``RedisStreams`` (numbered, kept, published and received
  back on its pub/sub connection), against the roster's put script (``RedisRoster``, a
  HSET and a ZADD) through the same pipelining: the ratio is what numbering, keeping and
  publishing cost beside the project's other Redis write;
- what the restart check (``INFO server`` in every call, for the ``run_id``) costs: the
  append script's rate against the same script without it;
- the time from ``read`` to its ``StreamReadDone`` for a recovery of a full history
  (``--missed`` entries of ~100 bytes), and what such a history costs in Redis
  (``MEMORY USAGE`` of the stream and its meta key);
- a reconnect storm's reads: ``--readers`` recoveries of ``--storm-missed`` publications
  each, asked at once through one instance: the time to the last answer and Redis's CPU.

    python benchmarks/redis_streams_bench.py [--publications 20000] [--missed 300]

It starts its own ``redis-server`` (no persistence) on a free port.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import redis.asyncio as aioredis

from megapresence_core import Event, Member
from megapresence_core.config import HistoryConfig
from megapresence_core.events import StreamPosition, StreamPublished, StreamReadDone
from megapresence_redis import RedisRoster, RedisStreams, _streams

DATA = json.dumps({"type": "PUBLISH", "payload": {"message": {"type": "note", "n": "x" * 60}}})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


async def appends_per_second(url: str, count: int, *, check_restart: bool = True) -> float:
    streams = RedisStreams(url, app=f"bench{time.monotonic_ns()}")
    published = 0

    def dispatch(event: Event) -> None:
        nonlocal published
        published += isinstance(event, StreamPublished)

    await streams.start(dispatch, HistoryConfig(boot_id="bench"))
    if not check_restart:  # the same script, the run_id taken as it was
        script = _streams._APPEND.replace(
            "string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')", "'same'"
        )
        streams._scripts["append"] = streams._redis.register_script(script)  # type: ignore[union-attr]
    async with anyio.create_task_group() as tg:
        tg.start_soon(streams.run)
        while not streams.healthy:
            await anyio.sleep(0.01)
        start = time.perf_counter()
        for n in range(count):
            streams.append(f"c{n % 100}", DATA)
        while published < count:
            await anyio.sleep(0.001)
        elapsed = time.perf_counter() - start
        tg.cancel_scope.cancel()
    await streams.aclose()
    return count / elapsed


async def puts_per_second(url: str, count: int) -> float:
    roster = RedisRoster(url, app=f"bench{time.monotonic_ns()}", instance_id="i", epoch=1)
    await roster.start()
    member = Member(session_id="s", user_id="u", metadata={"n": "x" * 60})
    start = time.perf_counter()
    for n in range(count):
        roster.put(f"c{n % 100}", f"s{n}", member, ttl=60)
    await roster._flush()
    elapsed = time.perf_counter() - start
    await roster.aclose()
    return count / elapsed


async def fill(streams: RedisStreams, tg: anyio.abc.TaskGroup, count: int) -> None:
    """Run ``streams`` in ``tg`` and, once it reads, append ``count`` entries to "room"."""
    tg.start_soon(streams.run)
    while not streams.healthy:
        await anyio.sleep(0.01)
    for _ in range(count):
        streams.append("room", DATA)


async def recovery(url: str, missed: int) -> tuple[float, int]:
    """Seconds from ``read`` to its answer for ``missed`` entries; bytes the history costs."""
    app = f"bench{time.monotonic_ns()}"
    streams = RedisStreams(url, app=app)
    seen: list[Event] = []
    await streams.start(seen.append, HistoryConfig(boot_id="bench", size=missed))
    async with anyio.create_task_group() as tg:
        await fill(streams, tg, missed)
        while sum(isinstance(e, StreamPublished) for e in seen) < missed:
            await anyio.sleep(0.001)
        first = next(e for e in seen if isinstance(e, StreamPublished))
        start = time.perf_counter()
        streams.read(1, "room", StreamPosition(offset=0, epoch=first.epoch), missed)
        while not any(isinstance(e, StreamReadDone) for e in seen):
            await anyio.sleep(0)
        elapsed = time.perf_counter() - start
        answer = next(e for e in seen if isinstance(e, StreamReadDone))
        assert len(answer.entries) == missed
        tg.cancel_scope.cancel()
    await streams.aclose()
    client = aioredis.from_url(url)
    key = f"megapresence:stream:{{{app}:room}}"
    size = (await client.memory_usage(key) or 0) + (await client.memory_usage(key + ":meta") or 0)
    await client.aclose()
    return elapsed, size


async def storm(url: str, readers: int, missed: int) -> tuple[float, float]:
    """A reconnect storm's reads: ``readers`` recoveries of ``missed`` publications each,
    asked at once; seconds until the last answer, and Redis's CPU seconds meanwhile."""
    streams = RedisStreams(url, app=f"bench{time.monotonic_ns()}")
    answers, epoch = 0, ""

    def dispatch(event: Event) -> None:
        nonlocal answers, epoch
        if isinstance(event, StreamReadDone):
            answers += 1
        elif isinstance(event, StreamPublished):
            epoch = event.epoch

    await streams.start(dispatch, HistoryConfig(boot_id="bench"))
    client = aioredis.from_url(url)
    async with anyio.create_task_group() as tg:
        await fill(streams, tg, missed)
        while not epoch:
            await anyio.sleep(0.01)
        cpu = await redis_cpu(client)
        start = time.perf_counter()
        for request in range(readers):
            streams.read(request, "room", StreamPosition(offset=0, epoch=epoch), missed)
        while answers < readers:
            await anyio.sleep(0.005)
        elapsed = time.perf_counter() - start
        cpu = await redis_cpu(client) - cpu
        tg.cancel_scope.cancel()
    await client.aclose()
    await streams.aclose()
    return elapsed, cpu


async def redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def median(runs: int, measure: Callable[[], Awaitable[Any]]) -> Any:
    results = [anyio.run(measure) for _ in range(runs)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publications", type=int, default=20_000)
    parser.add_argument("--missed", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--storm-missed", type=int, default=100)
    args = parser.parse_args()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port)
            url = f"redis://127.0.0.1:{port}/0"
            n = args.publications
            appends = median(args.runs, lambda: appends_per_second(url, n))
            unchecked = median(args.runs, lambda: appends_per_second(url, n, check_restart=False))
            puts = median(args.runs, lambda: puts_per_second(url, n))
            seconds, size = median(args.runs, lambda: recovery(url, args.missed))
            storm_seconds, storm_cpu = median(
                args.runs, lambda: storm(url, args.readers, args.storm_missed)
            )
        finally:
            server.kill()
            server.wait()
    print(f"appends/s (numbered, kept, published, received): {appends:,.0f}")
    print(f"roster puts/s (the peer):                        {puts:,.0f}")
    print(f"appends per roster put:                          {appends / puts:.2f}x")
    print(f"appends/s without the restart check:             {unchecked:,.0f}")
    print(f"the restart check's share of an append:          {1 - appends / unchecked:.0%}")
    print(f"recovery of {args.missed} entries, read to answer: {seconds * 1000:.1f} ms")
    print(f"Redis memory for {args.missed} entries of history: {size / 1024:.0f} KiB")
    print(
        f"a storm of {args.readers:,} recoveries of {args.storm_missed} each: "
        f"{storm_seconds:.2f} s to the last answer, Redis CPU {storm_cpu:.2f} s"
    )


if __name__ == "__main__":
    main()
