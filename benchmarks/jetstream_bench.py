"""Channel history in JetStream against each instance's own, side by side, over one real
nats-server (``-js``, store in a temporary directory), two instances in this process.

Prints, for each mode, the round trip of a publish to its own echo (a publisher on
instance A, sequential), and for JetStream the time a subscriber that dropped on A takes to
recover ``--missed`` publications on B (from its resubscribe to the last missed message):
what JetStream costs a publish (a read and a conditional append before any delivery) and
what a recovery on another instance costs.

    python benchmarks/jetstream_bench.py [--publishes 300] [--missed 100]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from megapresence_anyio import HandshakeRequest, Identity, PresenceServer, handle_command
from megapresence_client import ChannelMessage, PresenceClient, Subscribed
from megapresence_core import ClusterConfig, Limits, PresenceConfig
from megapresence_nats import JetStreamHistory, NatsCluster


def login(request: HandshakeRequest) -> Identity:
    user = request.query["user"]
    return Identity(user_id=user, session_id=user + "1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def instance(url: str, app: str, name: str, *, jetstream: bool) -> AsyncIterator[int]:
    config = ClusterConfig(app=app, instance_id=name, epoch=time.time_ns() // 1_000_000)
    server = PresenceServer(
        login,
        paths=None,
        on_message=handle_command,
        # No command rate: the benchmark measures the path, not the limiter.
        presence=PresenceConfig(
            cluster=config, leave_grace=5, limits=Limits(command_rate=1e9, command_burst=10**9)
        ),
        cluster=NatsCluster(url),
        stream_store=JetStreamHistory(url, app=app) if jetstream else None,
    )
    async with server:
        yield await server.listen()


async def echo(client: PresenceClient, n: int) -> None:
    await client.publish("room", "n", n)
    async for event in client:
        if isinstance(event, ChannelMessage) and event.payload == n:
            return


async def run(url: str, app: str, *, jetstream: bool, publishes: int, missed: int) -> None:
    async with (
        instance(url, app, "A", jetstream=jetstream) as port_a,
        instance(url, app, "B", jetstream=jetstream) as port_b,
        PresenceClient(f"ws://127.0.0.1:{port_a}/ws", query={"user": "pub"}) as publisher,
    ):
        await publisher.subscribe("room").wait_subscribed()
        times = []
        for n in range(publishes):
            start = time.perf_counter()
            await echo(publisher, n)
            times.append(time.perf_counter() - start)
        times.sort()
        mode = "jetstream" if jetstream else "local"
        median, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
        print(
            f"{mode:9} publish round trip: median {median * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms",
            flush=True,
        )
        if not jetstream:
            return
        async with PresenceClient(f"ws://127.0.0.1:{port_a}/ws", query={"user": "sub"}) as sub:
            await sub.subscribe("room", recover=True).wait_subscribed()
            await echo(publisher, publishes)
            await anyio.sleep(0.2)
            position = sub.subscriptions["room"].position
        for n in range(missed):  # while the subscriber is away
            await echo(publisher, publishes + 1 + n)
        start = time.perf_counter()
        back = PresenceClient(f"ws://127.0.0.1:{port_b}/ws", query={"user": "sub"}, wait_open=False)
        back.subscribe("room", recover=True).stream.position = position
        recovered = None
        async with back:
            async for event in back:
                if isinstance(event, Subscribed):
                    recovered = event.recovered
                if isinstance(event, ChannelMessage) and event.payload == publishes + missed:
                    break
        took = time.perf_counter() - start
        print(
            f"{mode:9} recovery of {missed} on the other instance: recovered={recovered}, "
            f"{took * 1e3:.1f} ms from its connect to the last missed message"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=300)
    parser.add_argument("--missed", type=int, default=100)
    args = parser.parse_args()
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)  # nats-server starts
            url = f"nats://127.0.0.1:{port}"
            for round_ in range(2):  # side by side, twice: the second says how noisy
                for jetstream in (False, True):
                    anyio.run(
                        lambda j=jetstream, r=round_: run(
                            url,
                            f"bench{r}{int(j)}",
                            jetstream=j,
                            publishes=args.publishes,
                            missed=args.missed,
                        )
                    )
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
