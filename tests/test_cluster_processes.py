"""Several ``megapresence serve`` processes as one server, over real NATS and Redis."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from .process_helpers import Command, eventually, running
from .servers import Server, free_port

CLUSTER_FLAGS = (
    "--cluster-heartbeat",
    "0.5",
    "--cluster-ttl",
    "2",
    "--roster-refresh",
    "0.5",
    "--roster-ttl",
    "2",
    "--app",
    "proc",
)


def serve(tmp_path: Path, name: str, nats: Server, redis_: Server, *extra: str) -> Command:
    return Command(
        tmp_path,
        name,
        "serve",
        "--port",
        "0",
        "--instance-id",
        name,
        "--nats",
        f"nats://127.0.0.1:{nats.port}",
        "--redis",
        f"redis://127.0.0.1:{redis_.port}/0",
        *CLUSTER_FLAGS,
        *extra,
    )


@contextmanager
def nats_pair(
    log_dir: Path, nats: Server, redis_: Server, *extra: str
) -> Iterator[tuple[int, int]]:
    """Two ``serve`` over ``nats`` and ``redis_``, ``A`` and ``B``: their ports."""
    a = serve(log_dir, "A", nats, redis_, *extra)
    with running(a):
        b = serve(log_dir, "B", nats, redis_, *extra)
        with running(b):
            yield a.port, b.port


class Page:
    """A demo-page client: join, ask the roster, send commands."""

    def __init__(self, port: int, user: str) -> None:
        self.ws: ClientConnection = connect(
            f"ws://127.0.0.1:{port}/ws/chat?user={user}&channels=lobby"
        ).__enter__()
        self.session = self.next("welcome")["payload"]["sessionId"]

    def next(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self.ws.recv(timeout))
            if message["type"] == kind:
                return message

    def none_of(self, kind: str, timeout: float = 0.7) -> bool:
        try:
            self.next(kind, timeout)
        except TimeoutError:
            return True
        return False

    def roster(self) -> set[str]:
        self.ws.send('{"op":"roster"}')
        return {m["userId"] for m in self.next("roster")["payload"]["members"]}

    def send(self, **command: Any) -> None:
        self.ws.send(json.dumps(command))

    def close(self) -> None:
        self.ws.close()


def redis_lobby(port: int) -> set[str]:
    client = redis.Redis(port=port)
    try:
        raw = client.hgetall("megapresence:roster:{proc:lobby}")
    finally:
        client.close()
    now_ms = time.time() * 1000
    return {json.loads(v)["userId"] for v in raw.values() if json.loads(v)["expiresAt"] > now_ms}


@pytest.fixture
def three(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> Iterator[dict[str, Command]]:
    commands = {name: serve(tmp_path, name, nats_server, redis_server) for name in "ABC"}
    yield commands
    for command in commands.values():
        command.stop(signal.SIGKILL)


def test_three_instances_behave_as_one_server_through_faults(
    three: dict[str, Command], nats_server: Server, redis_server: Server
) -> None:
    ann, bob, cid = (
        Page(three["A"].port, "ann"),
        Page(three["B"].port, "bob"),
        Page(three["C"].port, "cid"),
    )
    pages = [ann, bob, cid]
    everyone = {"ann", "bob", "cid"}
    eventually(lambda: all(p.roster() == everyone for p in pages), what="equal rosters")
    eventually(lambda: redis_lobby(redis_server.port) == everyone, what="the Redis roster")

    ann.send(op="broadcast", channel="lobby", excludeSelf=True, payload="hi all")
    assert bob.next("chat")["payload"] == "hi all"
    assert cid.next("chat")["payload"] == "hi all"
    assert bob.none_of("chat")
    assert cid.none_of("chat")
    assert ann.none_of("chat")  # never the sender's echo
    bob.send(op="direct", userId="cid", payload="psst")
    direct = cid.next("direct")
    assert (direct["payload"], direct["from"]["userId"]) == ("psst", "bob")  # signed
    assert cid.none_of("direct")

    bob.close()
    eventually(lambda: ann.roster() == cid.roster() == {"ann", "cid"}, what="bob gone everywhere")

    # kill -9 an instance: its members leave every roster (after the TTL, 2 s: the core's
    # tests pin the timing with a fake clock), and its Redis members expire although A
    # keeps refreshing the same channel.
    three["C"].stop(signal.SIGKILL)
    eventually(lambda: ann.roster() == {"ann"}, timeout=20, what="cid swept")
    eventually(
        lambda: redis_lobby(redis_server.port) == {"ann"}, timeout=10, what="cid expired in Redis"
    )

    # kill -9 NATS and start it again: a gap; rosters converge and fan-out resumes.
    dan = Page(three["B"].port, "dan")
    eventually(lambda: ann.roster() == {"ann", "dan"}, what="dan seen")
    nats_server.kill()
    eve = Page(three["B"].port, "eve")  # joins during the outage
    nats_server.start()
    eventually(lambda: ann.roster() == {"ann", "dan", "eve"}, timeout=15, what="healed rosters")
    ann.send(op="broadcast", channel="lobby", payload="still here")
    assert eve.next("chat")["payload"] == "still here"

    # kill -9 Redis (no persistence) and start it again: members come back within a refresh.
    redis_server.kill()
    redis_server.start()
    eventually(
        lambda: redis_lobby(redis_server.port) == {"ann", "dan", "eve"},
        timeout=5,
        what="members re-asserted",
    )
    for page in (ann, dan, eve):
        page.close()


def test_processes_sharing_one_port_act_as_one_server(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    port = str(free_port())
    commands = [
        Command(
            tmp_path,
            name,
            "serve",
            "--port",
            port,
            "--reuse-port",
            "--instance-id",
            name,
            "--nats",
            f"nats://127.0.0.1:{nats_server.port}",
            *CLUSTER_FLAGS,
        )
        for name in ("P", "Q")
    ]
    try:
        pages = [Page(int(port), f"user{n}") for n in range(8)]
        users = {f"user{n}" for n in range(8)}
        eventually(lambda: all(p.roster() == users for p in pages), what="one roster")
        pages[0].send(op="broadcast", channel="lobby", payload="everyone")
        for page in pages:
            assert page.next("chat")["payload"] == "everyone"
            assert page.none_of("chat", timeout=0.2)
        for page in pages:
            page.close()
    finally:
        for command in commands:
            command.stop(signal.SIGKILL)
