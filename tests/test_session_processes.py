"""One session across real processes: a hub with two ``serve`` (asyncio and trio, in both
roles), and two ``serve`` over NATS (asyncio: its NATS and Redis clients need it). A session
id used on two servers at once, by its user or another, in either order; a reconnect to the
other server within the leave grace; and a rolling restart (SIGTERM each server in turn)
with a few hundred clients that reconnect to the other server: a watcher on a third server
sees no leave and no join."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.sync.client import ClientConnection, connect

from megapresence_core.wire import PresenceDiff, PresenceMap, PresenceState, decode_server_message

from .process_helpers import Command, bridge_command, hub_pair, running
from .servers import Server
from .test_cluster_processes import nats_pair, serve

GRACE = 3.0
FLAGS = ("--leave-grace", str(GRACE), "--drain-timeout", "10")
BACKENDS = [("asyncio", "trio"), ("trio", "asyncio")]


def url(port: int, user: str, session: str, channels: str = "room") -> str:
    return f"ws://127.0.0.1:{port}/ws/chat?user={user}&session={session}&channels={channels}"


class Peer:
    """A raw client of the browser protocol; a watcher keeps a sessions-view map of ``room``
    and every diff it received."""

    def __init__(self, port: int, user: str, session: str, channels: str = "room") -> None:
        self.ws: ClientConnection = connect(
            url(port, user, session, channels), open_timeout=10
        ).__enter__()
        self.map = PresenceMap("room", "sessions")
        self.diffs: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []

    def send(self, **command: Any) -> None:
        self.ws.send(json.dumps(command))

    def until(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.read(max(0.01, deadline - time.monotonic()))
            if wanted(message):
                return message

    def read(self, timeout: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv(timeout))
        self.seen.append(message)
        if message["type"] in ("presence.state", "presence.diff") and message["view"] == "sessions":
            decoded = decode_server_message(json.dumps(message))
            assert isinstance(decoded, PresenceState | PresenceDiff)
            assert self.map.apply(decoded), message
            if message["type"] == "presence.diff":
                self.diffs.append(message)
        return message

    def drain_for(self, seconds: float) -> None:
        """Read whatever comes for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.read(left)
            except TimeoutError:
                return

    def watch(self, members: set[str]) -> None:
        self.send(op="subscribe", channel="room", presence="sessions")
        self.until(lambda m: members <= set(self.map.members) and m["type"].startswith("pres"))

    def close(self) -> None:
        self.ws.close()


def moves(diffs: list[dict[str, Any]], session: str) -> list[str]:
    """What the diffs said of ``session``: joins and leaves."""
    found = []
    for diff in diffs:
        found += ["join"] * (session in diff["joins"]) + ["leave"] * (session in diff["leaves"])
    return found


def watchers(stack: ExitStack, a: int, b: int) -> list[Peer]:
    """A watcher of ``room`` on each server, each seeing itself listed."""
    found = []
    for port, name in ((a, "wa"), (b, "wb")):
        watcher = Peer(port, name, f"{name}-1")
        stack.callback(watcher.close)
        watcher.watch({f"{name}-1"})
        found.append(watcher)
    return found


# ------------------------------------------------------- collisions across servers


def _collisions(a: int, b: int) -> None:
    with ExitStack() as stack:
        both = watchers(stack, a, b)
        for first, second in ((a, b), (b, a)):  # in both orders
            sid = f"ann-{first}"
            ann = Peer(first, "ann", sid)
            stack.callback(ann.close)
            for watcher in both:
                watcher.until(lambda m, w=watcher, sid=sid: sid in w.map.members)
            # The same user on the other server: the newer connection takes the session;
            # the prior one is told, and stays open.
            again = Peer(second, "ann", sid)
            stack.callback(again.close)
            ann.until(lambda m: m["type"] == "session.detached")
            assert ann.seen[-1] == {
                "type": "session.detached",
                "sessionId": sid,
                "reason": "replaced",
            }
            ann.send(op="subscribe", channel="x", presence="users")
            assert ann.until(lambda m: m["type"] == "error")["payload"]["code"] == "not_joined"
            # Another user's id, a few times, on both servers: refused, the link unharmed.
            for port in (first, second, first, second):
                mallory = Peer(port, "mallory", sid)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    mallory.until(lambda m: False, timeout=10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1008
                assert closed.value.rcvd.reason == "session id belongs to another user"
            # One view everywhere: both watchers list the session (ann's), nobody saw it
            # leave or join again; a message to room reaches the newer connection only.
            for watcher in both:
                watcher.drain_for(0.5)
                assert watcher.map.members[sid]["userId"] == "ann"
                assert moves(watcher.diffs, sid) == ["join"]
            both[0].send(op="publish", channel="room", type="hello", payload=sid)
            again.until(lambda m, sid=sid: m["type"] == "hello" and m["payload"] == sid)
            # When the newer one closes, every server agrees that the session leaves.
            again.close()
            for watcher in both:
                watcher.until(
                    lambda m, w=watcher, sid=sid: sid not in w.map.members, timeout=GRACE + 10
                )
                assert moves(watcher.diffs, sid) == ["join", "leave"]


@pytest.mark.parametrize("backends", BACKENDS, ids=["asyncio-trio", "trio-asyncio"])
def test_session_id_collisions_across_servers_behind_a_hub(
    tmp_path: Path, backends: tuple[str, str]
) -> None:
    with hub_pair(tmp_path, backends, *FLAGS) as (a, b):
        _collisions(a, b)


def test_session_id_collisions_across_servers_over_nats(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    with nats_pair(tmp_path, nats_server, redis_server, *FLAGS) as (a, b):
        _collisions(a, b)


def outcome(peer: Peer, seconds: float) -> tuple[int, str] | None:
    """Read ``peer`` for ``seconds``: how the server closed it, if it did."""
    try:
        peer.drain_for(seconds)
    except websockets.ConnectionClosed as closed:
        frame = closed.rcvd
    else:
        return None
    assert frame is not None
    return frame.code, frame.reason


def test_two_users_joining_one_session_id_at_once_over_nats(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    """eve on one server and bob on the other join one fresh session id at the same moment,
    neither server having heard of the other's, in both placements: one keeps it, the other
    is closed once (1008, another user's), both watchers list it as the holder's, and once
    the holder closed, both see it leave."""
    with nats_pair(tmp_path, nats_server, redis_server, *FLAGS) as (a, b), ExitStack() as stack:
        both = watchers(stack, a, b)
        pool = stack.enter_context(ThreadPoolExecutor(2))
        held: dict[str, tuple[Peer, str]] = {}
        for trial in range(4):
            sid = f"race-{trial}-{random.getrandbits(32):x}"
            users = {a: "eve", b: "bob"} if trial % 2 else {b: "eve", a: "bob"}
            ports = list(users)
            peers = list(pool.map(Peer, ports, [users[port] for port in ports], [sid, sid]))
            for peer in peers:
                stack.callback(peer.close)
            ends = list(pool.map(lambda peer: outcome(peer, 1.0), peers))
            closed = [end for end in ends if end is not None]
            assert closed == [(1008, "session id belongs to another user")], (trial, ends)
            held[sid] = peers[ends.index(None)], users[ports[ends.index(None)]]
        for sid, (winner, holder) in held.items():
            assert not any(m["type"] == "session.detached" for m in winner.seen)
            for watcher in both:
                watcher.drain_for(0.1)
                assert watcher.map.members[sid]["userId"] == holder
            winner.close()
        for watcher in both:
            deadline = time.monotonic() + GRACE + 10
            while set(held) & set(watcher.map.members):
                watcher.read(deadline - time.monotonic())


# --------------------------------------------------- a return to the other server


def _return_elsewhere(a: int, b: int) -> None:
    with ExitStack() as stack:
        both = watchers(stack, a, b)
        bob = Peer(a, "bob", "bob-1", "room,side")
        for watcher in both:
            watcher.until(lambda m, w=watcher: "bob-1" in w.map.members)
        bob.close()
        back = Peer(b, "bob", "bob-1", "lobby")  # within the grace, to the other server
        stack.callback(back.close)
        # Past the grace that started on the first one: one wait for both watchers (the
        # second's messages wait in its socket meanwhile), then what each was sent.
        end = time.monotonic() + GRACE + 1.5
        for watcher in both:
            watcher.drain_for(max(0.5, end - time.monotonic()))
            assert moves(watcher.diffs, "bob-1") == ["join"]  # no leave, no second join
            assert "bob-1" in watcher.map.members
        # The session kept its channels: a message to room reaches it, unasked.
        both[0].send(op="publish", channel="room", type="hello", payload="again")
        back.until(lambda m: m["type"] == "hello")


@pytest.mark.parametrize("backends", BACKENDS, ids=["asyncio-trio", "trio-asyncio"])
def test_a_reconnect_to_the_other_server_within_the_grace_is_a_restore(
    tmp_path: Path, backends: tuple[str, str]
) -> None:
    with hub_pair(tmp_path, backends, *FLAGS) as (a, b):
        _return_elsewhere(a, b)


def test_a_reconnect_to_the_other_instance_within_the_grace_is_a_restore(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    with nats_pair(tmp_path, nats_server, redis_server, *FLAGS) as (a, b):
        _return_elsewhere(a, b)


# ------------------------------------------------------------ a rolling restart

CLIENTS = 200


class Fleet:
    """Clients that each hold one session and, when their server closes them with 4503,
    reconnect at once to another live server with the same session id. None is ever
    told that its session was taken (``session.detached``): no other connection has it."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports  # server name -> port, of the servers that take clients
        self.where: dict[str, str] = {}  # session -> the server it is connected to
        self.codes: list[int] = []
        self.refused: list[str] = []
        self.detached: list[str] = []
        self.gate = asyncio.Semaphore(16)

    async def client(self, index: int, home: str, stop: asyncio.Event) -> None:
        session = f"c{index}"
        server = home
        while not stop.is_set():
            try:
                async with self.gate:  # a few handshakes at a time, as a balancer would
                    ws = await websockets.connect(
                        url(self.ports[server], f"u{index}", session), open_timeout=20
                    )
                async with ws:
                    self.where[session] = server
                    while True:
                        recv = asyncio.ensure_future(ws.recv())
                        halt = asyncio.ensure_future(stop.wait())
                        done, _ = await asyncio.wait(
                            {recv, halt}, return_when=asyncio.FIRST_COMPLETED
                        )
                        if halt in done:
                            recv.cancel()
                            return
                        halt.cancel()
                        if json.loads(recv.result())["type"] == "session.detached":
                            self.detached.append(f"{session} on {server}")
            except websockets.ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else 1006
                self.codes.append(code)
                if code != 4503:
                    self.refused.append(f"{session}: {code}")
                    return
            except (OSError, websockets.InvalidStatus):  # not up yet, or busy: again
                await asyncio.sleep(0.05)
                continue
            others = [name for name in self.ports if name != server]
            server = random.choice(others) if others else server
            await asyncio.sleep(random.uniform(0, 0.2))


def _rolling_restart(
    start: Callable[[str], Command], names: tuple[str, str], watch_port: int
) -> None:
    servers = {name: start(name) for name in names}
    try:
        fleet = Fleet({name: command.port for name, command in servers.items()})
        watcher = Peer(watch_port, "watcher", "watcher-1", "lobby")
        stop = asyncio.Event()

        async def run() -> None:
            tasks = [
                asyncio.ensure_future(fleet.client(i, names[i % 2], stop)) for i in range(CLIENTS)
            ]
            try:
                await restart_each()
            finally:
                stop.set()
                await asyncio.gather(*tasks)

        async def wait_all_listed() -> None:
            wanted = {f"c{i}" for i in range(CLIENTS)}
            deadline = time.monotonic() + 60
            while not wanted <= set(watcher.map.members):
                assert time.monotonic() < deadline, "not every client is listed"
                await asyncio.to_thread(watcher.drain_for, 0.2)

        async def restart_each() -> None:
            watcher.send(op="subscribe", channel="room", presence="sessions")
            await wait_all_listed()
            watcher.diffs.clear()
            for name in names:
                command = servers[name]
                del fleet.ports[name]  # the balancer stops sending clients there
                began = time.monotonic()
                command.process.send_signal(15)
                await asyncio.sleep(0.2)
                code = await asyncio.to_thread(command.stop)  # a second SIGTERM, mid-drain
                assert code == 0, f"{name} exited {code}"
                drained_in = time.monotonic() - began
                assert drained_in < 12, f"{name} took {drained_in:.1f}s to drain"
                assert all(where != name for where in fleet.where.values())
                servers[name] = start(name)
                fleet.ports[name] = servers[name].port
            await asyncio.to_thread(watcher.drain_for, GRACE + 2)

        asyncio.run(run())
        assert fleet.refused == []
        assert fleet.detached == []
        assert fleet.codes.count(4503) >= CLIENTS  # every client was moved at least once
        missing = sorted({f"c{i}" for i in range(CLIENTS)} - set(watcher.map.members))
        assert missing == [], f"the watcher does not list {missing}"
        seen = [
            (sid, kind)
            for diff in watcher.diffs
            for kind in ("joins", "leaves")
            for sid in diff[kind]
            if sid.startswith("c")
        ]
        assert seen == [], f"the watcher saw {len(seen)} joins and leaves: {seen[:10]}"
        watcher.close()
    finally:
        for command in servers.values():
            command.stop()


@pytest.mark.parametrize("backends", BACKENDS, ids=["asyncio-trio", "trio-asyncio"])
def test_a_rolling_restart_behind_a_hub_is_invisible_to_watchers(
    tmp_path: Path, backends: tuple[str, str]
) -> None:
    hub = Command(tmp_path, "hub", "hub", "--port", "0")
    with running(hub):
        hub_url = f"ws://127.0.0.1:{hub.port}/"
        w = bridge_command(tmp_path, "W", "asyncio", hub_url, *FLAGS, "--channels", "room")
        with running(w):
            kinds = dict(zip(("A", "B"), backends, strict=True))
            _rolling_restart(
                lambda name: bridge_command(tmp_path, name, kinds[name], hub_url, *FLAGS),
                ("A", "B"),
                w.port,
            )


def test_a_rolling_restart_over_nats_is_invisible_to_watchers(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    w = serve(tmp_path, "W", nats_server, redis_server, *FLAGS)
    with running(w):
        _rolling_restart(
            lambda name: serve(tmp_path, name, nats_server, redis_server, *FLAGS),
            ("A", "B"),
            w.port,
        )
