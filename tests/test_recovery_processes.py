"""Recovery across processes, as a user runs them: a numbered sequence published while
subscribers drop and reconnect (to any server of the deployment) and servers and the hub
restart. At the end every subscriber holds every number at most once, in order, and every
number it lacks lies in a stretch it was told about (``recovered: false`` or
``stream.reset``): zero silent gaps, zero duplicates.

One process (``serve``, restarted on its port), a hub with two servers (a server and the hub
restarted) and two instances over NATS (an instance and NATS restarted). The hub, and over
NATS JetStream, keeps the streams, so a reconnect to another server recovers; a server whose
link to the hub or to NATS came back tells its subscribers behind ``stream.missed``.
The subscribers and the publisher (which confirms each number by its echo) are the
project's Python client, ``megapresence_client``: its reconnects, ``since``, merge and
position checks are what is tested. The figures of each run are printed (``-s`` shows
them).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from megapresence_client import (
    Backoff,
    ChannelMessage,
    ClientClosedError,
    Disconnected,
    PresenceClient,
    ServerError,
)

from .process_helpers import Command, bridge_command
from .recovery_client import EventReader, check
from .servers import Server
from .test_cluster_processes import serve

CHANNEL = "seq"
#: Within the servers' leave grace (5 s): a subscriber that comes back is the same member.
GRACE = ("--leave-grace", "5")


def client_of(
    ports: Callable[[], list[int]], rng: random.Random, user: str, **options: Any
) -> PresenceClient:
    """A client of the channel that connects (again) to a server picked at random."""
    return PresenceClient(
        lambda: f"ws://127.0.0.1:{rng.choice(ports())}/ws/chat",
        query={"user": user, "session": f"{user}-1", "channels": CHANNEL},
        backoff=Backoff(first=0.2, first_back_off=0.5, cap=1.0),
        open_timeout=3,
        **options,
    )


class Subscribers(threading.Thread):
    """Subscribers on the Python client (``megapresence_client``), in one event loop of their
    own: each drops its connection every 0.2-1.2 s (no close frame, as a blip) and the
    client comes back to a server picked at random, recovering with ``since``, until told
    to settle; it also checks its position every 0.5 s."""

    def __init__(self, count: int, ports: Callable[[], list[int]], seed: int) -> None:
        super().__init__(name="subscribers", daemon=True)
        self.ports = ports
        self.seed = seed
        self.readers = [EventReader() for _ in range(count)]
        self.settle = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        anyio.run(self._all)

    async def _all(self) -> None:
        async with anyio.create_task_group() as group:
            for index, reader in enumerate(self.readers):
                group.start_soon(self._one, index, reader)

    async def _one(self, index: int, reader: EventReader) -> None:
        rng = random.Random(self.seed + index)
        async with client_of(self.ports, rng, f"sub{index}", position_check=0.5) as client:
            client.subscribe(CHANNEL, recover=True)
            async with anyio.create_task_group() as group:
                group.start_soon(self._read, client, reader)
                while not self.settle.is_set():
                    await anyio.sleep(rng.uniform(0.2, 1.2))
                    if not self.settle.is_set():
                        await client.drop()
                while not self.done.is_set():
                    await anyio.sleep(0.05)
                group.cancel_scope.cancel()

    @staticmethod
    async def _read(client: PresenceClient, reader: EventReader) -> None:
        async for event in client:
            reader.event(event)


class Publisher(threading.Thread):
    """Publishes 1..count on the Python client, each confirmed by its own echo. A number
    refused (``unavailable`` while the server's link is down, say) is sent again; one whose
    echo was lost with the connection is uncertain (published or not) and is not."""

    def __init__(self, ports: Callable[[], list[int]], count: int, seed: int) -> None:
        super().__init__(name="publisher", daemon=True)
        self.ports = ports
        self.count = count
        self.rng = random.Random(seed)
        self.confirmed: list[int] = []
        self.uncertain: list[int] = []

    def run(self) -> None:
        anyio.run(self._publish)

    async def _publish(self) -> None:
        async with client_of(self.ports, self.rng, "publisher", position_check=0) as client:
            n = 1
            while n <= self.count:
                try:
                    await client.publish(CHANNEL, "n", n)
                except ClientClosedError:
                    await anyio.sleep(0.05)  # not sent: send it once connected
                    continue
                outcome = await self._echo(client, n)
                if outcome == "refused":
                    await anyio.sleep(0.1)
                    continue
                (self.confirmed if outcome == "confirmed" else self.uncertain).append(n)
                n += 1
                await anyio.sleep(0.004)

    @staticmethod
    async def _echo(client: PresenceClient, n: int) -> str:
        with anyio.move_on_after(5):
            async for event in client:
                if isinstance(event, ChannelMessage) and event.payload == n:
                    return "confirmed"
                if isinstance(event, ServerError):
                    return "refused"
                if isinstance(event, Disconnected):
                    break
        return "lost"


def run_sequence(
    ports: Callable[[], list[int]],
    restarts: list[Callable[[], None]],
    *,
    count: int = 600,
    subscribers: int = 4,
    seed: int = 20,
) -> dict[str, Any]:
    subs = Subscribers(subscribers, ports, seed)
    subs.start()
    deadline = time.monotonic() + 15
    while not all(reader.subscribed for reader in subs.readers):
        assert time.monotonic() < deadline, "a subscriber never subscribed"
        time.sleep(0.02)
    publisher = Publisher(ports, count, seed)
    publisher.start()
    for restart in restarts:
        while len(publisher.confirmed) < count * 0.3 and publisher.is_alive():
            time.sleep(0.02)  # a third of the way, then between restarts
        restart()
        time.sleep(1.0)
    publisher.join(120)
    assert not publisher.is_alive(), "the publisher did not finish"
    subs.settle.set()  # stay connected now: recover the rest, or be told
    deadline = time.monotonic() + 20
    last = publisher.confirmed[-1]
    while time.monotonic() < deadline and not all(
        reader.last() >= last or reader.open_stretch() for reader in subs.readers
    ):
        time.sleep(0.05)
    time.sleep(0.5)
    subs.done.set()
    subs.join(10)
    figures = check(subs.readers, publisher.confirmed, publisher.uncertain)
    print(f"\nrecovery run: {figures}")
    assert figures["silent_gaps"] == 0
    assert figures["duplicates"] == 0
    assert figures["out_of_order"] == 0
    assert figures["made_up"] == 0
    return figures


@contextmanager
def _running(commands: list[Command]) -> Iterator[None]:
    try:
        yield
    finally:
        for command in reversed(commands):
            command.stop()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_one_process_recovers_or_tells_across_drops_and_a_restart(
    tmp_path: Path, backend: str
) -> None:
    flags = ("--backend", backend, "serve", *GRACE)
    server = Command(tmp_path, "serve", *flags, "--port", "0")
    port = server.port
    commands = [server]

    def restart() -> None:
        commands[0].stop()
        commands[0] = Command(tmp_path, "serve-again", *flags, "--port", str(port))

    with _running(commands):
        figures = run_sequence(lambda: [port], [restart])
    assert figures["recovered"] > 0  # drops within the history were recovered
    assert figures["not_recovered"].get("epoch", 0) > 0  # the restart was told


def test_a_hub_with_two_servers_recovers_or_tells_across_servers_and_restarts(
    tmp_path: Path,
) -> None:
    hub = Command(tmp_path, "hub", "hub", "--port", "0")
    hub_port = hub.port
    hub_url = f"ws://127.0.0.1:{hub_port}/"
    a = bridge_command(tmp_path, "A", "asyncio", hub_url, *GRACE)
    b = bridge_command(tmp_path, "B", "trio", hub_url, *GRACE)
    commands = [hub, a, b]
    ports = [a.port, b.port]

    def restart_server() -> None:
        commands[1].stop()
        commands[1] = bridge_command(
            tmp_path, "A", "asyncio", hub_url, *GRACE, "--port", str(ports[0])
        )

    def restart_hub() -> None:
        commands[0].stop()
        commands[0] = Command(tmp_path, "hub-again", "hub", "--port", str(hub_port))

    with _running(commands):
        figures = run_sequence(lambda: ports, [restart_server, restart_hub])
    assert figures["recovered"] > 0
    assert sum(figures["not_recovered"].values()) > 0


def test_two_instances_over_nats_recover_or_tell_across_instances_and_restarts(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    # History in JetStream (the roster in Redis): a reconnect to the other instance
    # recovers, and NATS keeps its store across the restart (-sd).
    flags = (*GRACE, "--history", "jetstream")
    a = serve(tmp_path, "A", nats_server, redis_server, *flags)
    b = serve(tmp_path, "B", nats_server, redis_server, *flags)
    commands = [a, b]
    ports = [a.port, b.port]

    def restart_instance() -> None:
        commands[0].stop()
        commands[0] = serve(
            tmp_path, "A", nats_server, redis_server, *flags, "--port", str(ports[0])
        )

    def restart_nats() -> None:
        nats_server.kill()
        nats_server.start()

    with _running(commands):
        figures = run_sequence(lambda: ports, [restart_instance, restart_nats])
    assert figures["recovered"] > 0
