"""Recovery across processes, as a user runs them: a numbered sequence published while
subscribers drop and reconnect (to any server of the deployment) and servers and the hub
restart. At the end every subscriber holds every number at most once, in order, and every
number it lacks lies in a stretch it was told about (``recovered: false`` or
``stream.reset``): zero silent gaps, zero duplicates.

One process (``serve``, restarted on its port), a hub with two servers (a server and the hub
restarted) and two instances over NATS (an instance and NATS restarted). The hub, and over
NATS JetStream, keeps the streams, so a reconnect to another server recovers; a server whose
link to the hub or to NATS went down or came back tells its subscribers ``stream.reset``. The
figures of each run are printed (``-s`` shows them).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from .process_helpers import Command, bridge_command
from .recovery_client import StreamReader, check
from .servers import Server
from .test_cluster_processes import serve

CHANNEL = "seq"
#: Within the servers' leave grace (5 s): a subscriber that comes back is the same member.
GRACE = ("--leave-grace", "5")
_DROPPED = (OSError, ConnectionClosed, InvalidHandshake, TimeoutError)


def _open(port: int, user: str) -> ClientConnection:
    url = f"ws://127.0.0.1:{port}/ws/chat?user={user}&session={user}-1&channels={CHANNEL}"
    return connect(url, open_timeout=3, close_timeout=1).__enter__()


class Subscriber(threading.Thread):
    """Holds the channel's numbers; drops and comes back with ``since`` until told to settle."""

    def __init__(self, name: str, ports: Callable[[], list[int]], seed: int) -> None:
        super().__init__(name=name, daemon=True)
        self.ports = ports
        self.rng = random.Random(seed)
        self.reader = StreamReader()
        self.settle = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        reader = self.reader
        while not self.done.is_set():
            try:
                ws = _open(self.rng.choice(self.ports()), self.name)
            except _DROPPED:
                time.sleep(0.1)
                continue
            try:
                ws.send(json.dumps(reader.subscribe()))
                until = time.monotonic() + self.rng.uniform(0.2, 1.2)
                while not self.done.is_set() and (self.settle.is_set() or time.monotonic() < until):
                    try:
                        reader.receive(json.loads(ws.recv(0.05)))
                    except TimeoutError:
                        continue
            except _DROPPED:
                pass  # the server went away: come back
            finally:
                ws.close()
                reader.dropped()
            time.sleep(self.rng.uniform(0, 0.5))


class Publisher(threading.Thread):
    """Publishes 1..count, each confirmed by its own echo; a number whose echo was lost with
    the connection is uncertain (published or not) and is not sent again."""

    def __init__(self, ports: Callable[[], list[int]], count: int, seed: int) -> None:
        super().__init__(name="publisher", daemon=True)
        self.ports = ports
        self.count = count
        self.rng = random.Random(seed)
        self.confirmed: list[int] = []
        self.uncertain: list[int] = []

    def run(self) -> None:
        n = 1
        while n <= self.count:
            try:
                ws = _open(self.rng.choice(self.ports()), "publisher")
            except _DROPPED:
                time.sleep(0.1)
                continue
            try:
                while n <= self.count:
                    command = {"op": "publish", "channel": CHANNEL, "type": "n", "payload": n}
                    ws.send(json.dumps(command))
                    while True:
                        message = json.loads(ws.recv(5))
                        if message["type"] == "n" and message["payload"] == n:
                            break
                    self.confirmed.append(n)
                    n += 1
                    time.sleep(0.004)
            except _DROPPED:
                self.uncertain.append(n)
                n += 1
            finally:
                ws.close()


def run_sequence(
    ports: Callable[[], list[int]],
    restarts: list[Callable[[], None]],
    *,
    count: int = 600,
    subscribers: int = 4,
    seed: int = 20,
) -> dict[str, Any]:
    subs = [Subscriber(f"sub{i}", ports, seed + i) for i in range(subscribers)]
    for sub in subs:
        sub.start()
    deadline = time.monotonic() + 15
    while not all(sub.reader.subscribed for sub in subs):
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
    for sub in subs:
        sub.settle.set()  # stay connected now: recover the rest, or be told
    deadline = time.monotonic() + 20
    last = publisher.confirmed[-1]
    while time.monotonic() < deadline and not all(
        sub.reader.last() >= last or sub.reader.open_stretch() for sub in subs
    ):
        time.sleep(0.05)
    time.sleep(0.5)
    for sub in subs:
        sub.done.set()
        sub.join(10)
    figures = check([sub.reader for sub in subs], publisher.confirmed, publisher.uncertain)
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
    a = serve(tmp_path, "A", nats_server, redis_server, *GRACE)
    b = serve(tmp_path, "B", nats_server, redis_server, *GRACE)
    commands = [a, b]
    ports = [a.port, b.port]

    def restart_instance() -> None:
        commands[0].stop()
        commands[0] = serve(
            tmp_path, "A", nats_server, redis_server, *GRACE, "--port", str(ports[0])
        )

    def restart_nats() -> None:
        nats_server.kill()
        nats_server.start()

    with _running(commands):
        figures = run_sequence(lambda: ports, [restart_instance, restart_nats])
    assert figures["recovered"] > 0
    assert sum(figures["not_recovered"].values()) > 0
