"""``megapresence serve`` and ``megapresence hub`` as separate processes on loopback.

Two servers and a hub, each run as the command a user would type. The servers
run on different backends (asyncio and trio) so one run also shows both
speak the same hub protocol.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from .hostile import FakeHub, answer, corpus
from .process_helpers import TOKEN, Command, bridge_command, eventually


def hub_listing(port: int) -> dict[str, Any]:
    """The hub's ``/presence``: its sessions and the bridges' interests (empty if down)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/presence", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            body: dict[str, Any] = json.load(response)
    except OSError:
        return {"members": [], "interests": {}}
    return body


def hub_sessions(port: int) -> set[tuple[str, str]]:
    return {(m["bridgeId"], m["sessionId"]) for m in hub_listing(port)["members"]}


def hub_interests(port: int) -> dict[str, list[str]]:
    interests: dict[str, list[str]] = hub_listing(port)["interests"]
    return interests


def recv_type(ws: ClientConnection, kind: str, timeout: float = 5) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout))
        if message["type"] == kind:
            return message


def nothing_of(ws: ClientConnection, kind: str, timeout: float = 0.5) -> bool:
    try:
        recv_type(ws, kind, timeout)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Command]]:
    hub_backend, other = request.param
    commands = {"hub": Command(tmp_path, "hub", "--backend", hub_backend, "hub", "--port", "0")}
    hub_url = f"ws://127.0.0.1:{commands['hub'].port}/"
    for name, backend in (("A", hub_backend), ("B", other)):
        commands[name] = bridge_command(tmp_path, name, backend, hub_url)
    yield commands
    for command in commands.values():
        command.stop(signal.SIGKILL)


@pytest.mark.parametrize(
    "cluster",
    [("asyncio", "trio"), ("trio", "asyncio")],
    indirect=True,
    ids=["hub-asyncio", "hub-trio"],
)
def test_two_servers_and_a_hub_survive_a_hub_crash_and_a_drain(
    cluster: dict[str, Command], tmp_path: Path
) -> None:
    hub, a, b = cluster["hub"], cluster["A"], cluster["B"]
    with (
        connect(f"ws://127.0.0.1:{a.port}/ws/chat?user=ann") as ann,
        connect(f"ws://127.0.0.1:{b.port}/ws/chat?user=bob") as bob,
    ):
        ann_id = recv_type(ann, "welcome")["payload"]["sessionId"]
        bob_id = recv_type(bob, "welcome")["payload"]["sessionId"]
        everyone = {("A", ann_id), ("B", bob_id)}  # --channels is an interest, not a member
        eventually(lambda: hub_sessions(hub.port) == everyone, what="the hub to see both")

        ann.send(
            json.dumps(
                {
                    "op": "broadcast",
                    "channel": "lobby",
                    "excludeSelf": True,
                    "payload": {"text": "hello"},
                }
            )
        )
        assert recv_type(bob, "chat")["payload"] == {"text": "hello"}
        assert nothing_of(bob, "chat")  # exactly once
        assert nothing_of(ann, "chat")  # and not back to the sender
        bob.send(json.dumps({"op": "direct", "userId": "ann", "payload": "psst"}))
        direct = recv_type(ann, "direct")
        assert (direct["payload"], direct["from"]["userId"]) == ("psst", "bob")  # signed
        assert nothing_of(ann, "direct")

        # kill -9: the hub loses everything; the servers reconnect and resync.
        port = hub.port
        hub.stop(signal.SIGKILL)
        cluster["hub"] = hub = Command(tmp_path, "hub2", "hub", "--port", str(port))
        eventually(lambda: hub_sessions(port) == everyone, what="the new hub to converge")
        for ws in (ann, bob):  # the client sockets stayed open
            ws.send('{"op":"roster"}')
            assert recv_type(ws, "roster")["type"] == "roster"
        ann.send(json.dumps({"op": "broadcast", "channel": "lobby", "payload": "again"}))
        assert recv_type(bob, "chat")["payload"] == "again"

        # SIGTERM: the hub drains its bridges with 4503; they come back to the next one.
        assert hub.stop() == 0
        for server in (a, b):
            eventually(
                lambda server=server: "code=4503" in server.log.read_text(),
                what="4503 in the server log",
            )
        cluster["hub"] = hub = Command(tmp_path, "hub3", "hub", "--port", str(port))
        eventually(lambda: hub_sessions(port) == everyone, what="the bridges to come back")
    assert a.stop() == 0
    assert b.stop() == 0


# ------------------------------------------------------------ hostile peers


def served_by(command: Command) -> bool:
    """A legitimate client still gets in: a demo page socket on ``serve``."""
    with connect(f"ws://127.0.0.1:{command.port}/ws/chat?user=legit", open_timeout=10) as ws:
        return recv_type(ws, "welcome")["payload"]["userId"] == "legit"


def hub_answers(hub: Command) -> bool:
    """A legitimate client of the hub: its presence listing, with a token."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{hub.port}/presence", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return bool(response.status == 200)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_hostile_corpus_costs_serve_and_hub_nothing(backend: str, tmp_path: Path) -> None:
    hub = Command(tmp_path, "hub", "--backend", backend, "hub", "--port", "0")
    a = bridge_command(tmp_path, "A", backend, f"ws://127.0.0.1:{hub.port}/")
    try:
        eventually(lambda: hub_interests(hub.port) == {"A": ["lobby"]}, what="A registered")
        targets = [
            (a, corpus("/ws/chat?user=eve"), served_by),
            (hub, corpus("/", f"Authorization: Bearer {TOKEN}\r\n"), hub_answers),
        ]
        for command, cases, legitimate in targets:
            for case in cases:
                assert answer(command.port, case) == case.expect, case.name
                assert legitimate(command), f"not served after {case.name}"
        assert hub_interests(hub.port) == {"A": ["lobby"]}  # the link held throughout
        for command in (hub, a):
            assert command.process.poll() is None
            assert "Traceback" not in command.log.read_text()
    finally:
        for command in (a, hub):
            command.stop(signal.SIGKILL)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_keeps_running_when_its_hub_address_answers_garbage(
    backend: str, tmp_path: Path
) -> None:
    with FakeHub().running() as fake:
        a = Command(
            tmp_path,
            "A",
            "--backend",
            backend,
            "--log-level",
            "DEBUG",
            "serve",
            "--port",
            "0",
            "--hub",
            f"ws://127.0.0.1:{fake.port}/",
        )
        try:
            # The answers that ended the process before; the socket tests try them all
            # with a shorter backoff than the command's (0.5 s, doubling).
            eventually(lambda: fake.seen >= 3, timeout=60, what="three retries")
            assert a.process.poll() is None
            assert served_by(a)
            log = a.log.read_text()
            assert "hub.link.lost" in log
            assert "Traceback" not in log
        finally:
            a.stop(signal.SIGKILL)


def test_servers_on_port_zero_get_distinct_bridge_ids(tmp_path: Path) -> None:
    """Without --bridge-id, two servers on --port 0 must not both register as "host:0"
    (the hub would take one for a reconnect of the other and drop it)."""
    hub = Command(tmp_path, "hub", "hub", "--port", "0")
    hub_url = f"ws://127.0.0.1:{hub.port}/"
    servers = [
        Command(tmp_path, name, "serve", "--port", "0", "--hub", hub_url) for name in ("A", "B")
    ]
    try:
        eventually(lambda: len(hub_interests(hub.port)) == 2, what="two bridges registered")
        assert all(bridge.startswith("127.0.0.1:") for bridge in hub_interests(hub.port))
    finally:
        for command in (*servers, hub):
            command.stop(signal.SIGKILL)
