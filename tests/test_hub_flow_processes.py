"""Flow control between ``megapresence serve --hub`` and ``megapresence hub``, as processes.

A client's burst, a hub restart under 10,000 sessions and a 1008 close of the link must
never sever a server from the hub: the bridge paces what it sends within the rate the
hub states, the hub slows an over-rate bridge down instead of striking it, and after any
close but a bad token the bridge backs off and registers again.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from .hostile import masked, upgraded
from .process_helpers import Command, bridge_command, eventually
from .test_processes import hub_sessions, recv_type

BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


def ready(command: Command) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{command.port}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.HTTPError, OSError):
        return False


def refused_anywhere(*commands: Command) -> list[str]:
    """Log lines saying a link was struck, refused or closed for errors."""
    needles = ("hub.link.refused", "hub.frame.refused", "too many errors")
    return [
        line
        for command in commands
        for line in command.log.read_text().splitlines()
        if any(needle in line for needle in needles)
    ]


@contextmanager
def hub_and_servers(tmp_path: Path, backend: str, *names: str) -> Iterator[list[Command]]:
    hub = Command(tmp_path, "hub", "--backend", backend, "hub", "--port", "0")
    commands = [hub]
    try:
        for name in names:
            commands.append(bridge_command(tmp_path, name, backend, f"ws://127.0.0.1:{hub.port}/"))
        yield commands
    finally:
        for command in commands:
            command.stop(signal.SIGKILL)


def send_all(ws: ClientConnection, commands: list[dict[str, Any]]) -> None:
    """``commands`` in one write: the server reads them as fast as it can."""
    frames = [json.dumps(command).encode() for command in commands]
    assert all(len(frame) < 126 for frame in frames)  # what ``masked`` can frame
    ws.socket.sendall(b"".join(masked(0x81, frame) for frame in frames))


# ------------------------------------------------------------------ a client's burst


#: Commands in each burst: 6,000, or (where this many do not come faster than the
#: hub's burst allowance on a slow machine) twice as many.
BURSTS = {"metadata": 6_000, "pairs": 12_000, "publish": 12_000}


def burst(kind: str) -> list[dict[str, Any]]:
    """A burst of commands of one kind, each of which the server forwards to the hub."""
    count = BURSTS[kind]
    if kind == "metadata":
        return [{"op": "metadata", "metadata": {"n": n}} for n in range(count)]
    if kind == "pairs":
        return [
            {"op": op, "channel": f"c{n}"}
            for n in range(count // 2)
            for op in ("subscribe", "unsubscribe")
        ]
    return [
        {"op": "publish", "channel": "room", "type": "chat", "payload": n} for n in range(count)
    ]


def drain_replies(ws: ClientConnection, quiet: float = 3.0) -> list[dict[str, Any]]:
    """Every message until none comes for ``quiet`` seconds."""
    replies: list[dict[str, Any]] = []
    while True:
        try:
            replies.append(json.loads(ws.recv(quiet)))
        except TimeoutError:
            return replies


@BACKENDS
@pytest.mark.parametrize("kind", ["metadata", "pairs", "publish"])
def test_a_clients_burst_of_commands_does_not_cut_its_server_off(
    backend: str, kind: str, tmp_path: Path
) -> None:
    with (
        hub_and_servers(tmp_path, backend, "A", "B") as (hub, a, b),
        connect(f"ws://127.0.0.1:{a.port}/ws/chat?user=ann&channels=room") as ann,
        connect(f"ws://127.0.0.1:{b.port}/ws/chat?user=bob&channels=room") as bob,
    ):
        ann_id = recv_type(ann, "welcome")["payload"]["sessionId"]
        bob_id = recv_type(bob, "welcome")["payload"]["sessionId"]
        both = {("A", ann_id), ("B", bob_id)}
        eventually(lambda: hub_sessions(hub.port) == both, what="the hub to see both")
        bob.send(json.dumps({"op": "subscribe", "channel": "room", "presence": "sessions"}))
        recv_type(bob, "presence.state")

        commands = burst(kind)
        sender = threading.Thread(target=send_all, args=(ann, commands))
        # Ann reads what she is answered while she sends (a refusal per command over the
        # rate), as a client does: a reader that stopped would be a slow consumer (1013).
        replies: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: replies.extend(drain_replies(ann, quiet=8.0)))
        sender.start()
        reader.start()
        # Bob hears every publish the server took (in order), and ann's last metadata.
        chats: list[Any] = []
        metadata: dict[str, Any] | None = None
        while True:
            try:
                message = json.loads(bob.recv(5))
            except TimeoutError:
                break
            if message["type"] == "chat":
                chats.append(message["payload"])
            elif message["type"] == "presence.diff" and ann_id in message["updates"]:
                metadata = message["updates"][ann_id]["metadata"]
        sender.join()
        reader.join()
        errors = [r["payload"] for r in replies if r["type"] == "error"]
        # Any excess is refused with a documented error, one command at a time: over the
        # connection's command rate (``rate_limited``), or over what the hub link may
        # hold (``busy``). Each refuses one command of the burst, never the link.
        assert {e["code"] for e in errors} <= {"busy", "rate_limited"}, errors[:3]
        refused_publishes = len(errors) if kind == "publish" else 0
        assert chats == sorted(set(chats))  # in order, none twice
        assert len(chats) == (len(commands) - refused_publishes if kind == "publish" else 0)
        if kind == "metadata" and not errors:
            assert metadata == {"n": len(commands) - 1}
        # The link stayed up, and cross-server traffic flows on.
        assert hub_sessions(hub.port) == both
        assert ready(a)
        assert refused_anywhere(hub, a, b) == []
        ann.send(json.dumps({"op": "publish", "channel": "room", "type": "chat", "payload": "end"}))
        assert recv_type(bob, "chat", timeout=10)["payload"] == "end"


# ---------------------------------------------------- a hub restart under 10,000 sessions

#: A masked, empty Ping: keeps a socket we never read from being taken for dead.
PING = b"\x89\x80\x00\x00\x00\x00"


def open_sessions(port: int, count: int, per_address: int = 1_000) -> list[socket.socket]:
    """``count`` sessions of the demo app on ``port``, over raw sockets from as many
    loopback addresses as the per-address cap needs, a few handshakes at a time."""
    sources = [f"127.0.0.{2 + n}" for n in range(-(-count // per_address))]
    sockets: list[socket.socket] = []
    wave = 20 * len(sources)  # 20 handshakes in flight per address, under its cap of 64
    for start in range(0, count, wave):
        batch: list[socket.socket] = []
        for n in range(start, min(count, start + wave)):
            sock = socket.socket()
            sock.bind((sources[n % len(sources)], 0))
            sock.connect(("127.0.0.1", port))
            sock.sendall(
                f"GET /ws/chat?user=u{n}&channels=g{n % 10} HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
            )
            batch.append(sock)
        for sock in batch:
            sock.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                assert chunk, "closed during the upgrade"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head[:80]
        sockets += batch
    return sockets


@contextmanager
def kept_alive(sockets: list[socket.socket]) -> Iterator[None]:
    stop = threading.Event()

    def ping() -> None:
        while not stop.wait(5):
            for sock in sockets:
                sock.send(PING)

    thread = threading.Thread(target=ping, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for sock in sockets:
            sock.close()


@BACKENDS
def test_a_hub_restart_under_10000_sessions_lists_them_all_again(
    backend: str, tmp_path: Path
) -> None:
    with hub_and_servers(tmp_path, backend, "A") as (hub, a):
        sockets = open_sessions(a.port, 10_000)
        with kept_alive(sockets):
            eventually(
                lambda: len(hub_sessions(hub.port)) == 10_000,
                timeout=60,
                what="the hub to list 10,000 sessions",
            )
            port = hub.port
            hub.stop(signal.SIGKILL)
            hub = Command(tmp_path, "hub2", "--backend", backend, "hub", "--port", str(port))
            try:
                eventually(
                    lambda: len(hub_sessions(port)) == 10_000,
                    timeout=60,
                    what="the new hub to list 10,000 sessions",
                )
                assert refused_anywhere(hub, a) == []
            finally:
                hub.stop(signal.SIGKILL)


# ---------------------------------------------------------------- a 1008 close of the link


@BACKENDS
def test_a_1008_close_of_the_link_is_followed_by_a_reconnect(backend: str, tmp_path: Path) -> None:
    with (
        hub_and_servers(tmp_path, backend, "A") as (hub, a),
        connect(f"ws://127.0.0.1:{a.port}/ws/chat?user=ann") as ann,
    ):
        ann_id = recv_type(ann, "welcome")["payload"]["sessionId"]
        eventually(lambda: hub_sessions(hub.port) == {("A", ann_id)}, what="the hub to see ann")
        # Another server registers under A's bridge id: the hub closes A's link with 1008
        # ("replaced by a newer connection").
        impostor = bridge_command(
            tmp_path, "A2", backend, f"ws://127.0.0.1:{hub.port}/", "--bridge-id", "A"
        )
        try:
            eventually(lambda: "code=1008" in a.log.read_text(), what="1008 in A's log")
        finally:
            impostor.stop(signal.SIGKILL)
        # A backs off, registers again and resends its session.
        eventually(
            lambda: hub_sessions(hub.port) == {("A", ann_id)}, timeout=30, what="A to come back"
        )
        eventually(lambda: ready(a), what="A ready")
        log = a.log.read_text()
        assert "hub.link.refused" not in log
        assert "state=backing_off" in log


# ------------------------------------------------- flooders share the link, others do not wait

#: Connections on one server, each publishing to a channel of its own at 90 a second (under
#: the command rate of 100): 2,700 frames a second for a hub that takes 2,000 per bridge.
FLOODERS = 30


@contextmanager
def flooding_at_90_a_second(port: int) -> Iterator[list[int]]:
    """``FLOODERS`` connections publishing 9 commands each 0.1 s (150 at once first, within
    the command burst) until the block ends; the list counts the ``busy`` they were told."""
    sockets = [upgraded(port, f"/ws/chat?user=f{n}&channels=own{n}") for n in range(FLOODERS)]
    frames = [
        masked(
            0x81,
            json.dumps(
                {
                    "op": "publish",
                    "channel": f"own{n}",
                    "type": "x",
                    "payload": n,
                    "excludeSelf": True,
                }
            ).encode(),
        )
        for n in range(FLOODERS)
    ]
    busy = [0]
    stop = threading.Event()

    def write() -> None:
        with suppress(OSError):
            for sock, frame in zip(sockets, frames, strict=True):
                sock.sendall(frame * 150)
            while not stop.wait(0.1):
                for sock, frame in zip(sockets, frames, strict=True):
                    sock.sendall(frame * 9)

    def read() -> None:
        with suppress(OSError, ValueError):
            while not stop.is_set():
                for sock in select.select(sockets, [], [], 0.1)[0]:
                    busy[0] += sock.recv(65536).count(b'"busy"')

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    try:
        yield busy
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for sock in sockets:
            sock.close()


def test_flooders_are_refused_busy_and_another_clients_publish_is_not_delayed(
    tmp_path: Path,
) -> None:
    with (
        hub_and_servers(tmp_path, "asyncio", "A", "B") as (hub, a, b),
        connect(f"ws://127.0.0.1:{a.port}/ws/chat?user=ann&channels=probe") as ann,
        connect(f"ws://127.0.0.1:{b.port}/ws/chat?user=bob&channels=probe") as bob,
    ):
        ann_id = recv_type(ann, "welcome")["payload"]["sessionId"]
        bob_id = recv_type(bob, "welcome")["payload"]["sessionId"]
        both = {("A", ann_id), ("B", bob_id)}
        eventually(lambda: hub_sessions(hub.port) == both, what="the hub to see both")
        with flooding_at_90_a_second(a.port) as busy:
            time.sleep(1.0)  # past the hub's burst: the link is at the hub's rate
            # Ann publishes 20 times a second, across the hub to bob on B.
            delays: list[float] = []

            def hear() -> None:
                with suppress(TimeoutError):
                    while True:
                        message = json.loads(bob.recv(2.0))
                        if message["type"] == "t":
                            delays.append(time.time() - message["payload"])

            listener = threading.Thread(target=hear)
            listener.start()
            sent = 0
            start = time.monotonic()
            while time.monotonic() < start + 4.0:
                publish = {
                    "op": "publish",
                    "channel": "probe",
                    "type": "t",
                    "payload": time.time(),
                    "excludeSelf": True,
                }
                ann.send(json.dumps(publish))
                sent += 1
                time.sleep(0.05)
            listener.join()
            refused = busy[0]
        replies = drain_replies(ann, quiet=0.5)
    delays.sort()
    # Everything ann sent arrived, soon: the flood waits, not her. (Before flooders were
    # refused, the link's backlog grew to seconds, and everyone waited in it.)
    assert [r for r in replies if r["type"] == "error"] == []
    assert len(delays) == sent, (len(delays), sent)
    assert delays[len(delays) // 2] < 0.1, delays
    assert delays[-1] < 0.5, delays
    assert refused > 0  # the excess is the flooders', refused to them one command at a time
    assert refused_anywhere(hub, a, b) == []
