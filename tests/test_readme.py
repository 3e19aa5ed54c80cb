"""The README's Python examples, run as written: they cannot rot.

Each ```python block is executed as a module (not as ``__main__``, so its
``anyio.run(main)`` stays put) and then driven as a user would: the serving
example with real clients on both backends, the mount example under uvicorn,
the deploy example with certificates made here and a wss hub, the cluster
example against real NATS and Redis servers. Only the listening addresses (to
free ports) and the example's file names and URLs are changed.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from megapresence_anyio import PresenceServer

from .servers import Server
from .socket_helpers import Client, http_status, wait_for

README = Path(__file__).resolve().parents[1] / "README.md"

SERVING = "Serving WebSockets (asyncio or trio)"
MOUNT = "Mount in FastAPI/Starlette"
CLUSTER = "A cluster of servers: NATS and Redis"
DEPLOY = "Deploy"
LIVE = "Live presence in a server"
CORE = "Using the core"


def python_blocks() -> dict[str, str]:
    """Section title -> the one Python block under it."""
    blocks: dict[str, str] = {}
    title = ""
    for heading, code in re.findall(
        r"^## ([^\n]+)$|^```python\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL
    ):
        if heading:
            title = heading
        else:
            assert title not in blocks, f"two Python blocks under {title!r}: give each a test"
            blocks[title] = code
    return blocks


def run_block(title: str, **overrides: object) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(python_blocks()[title], f"README.md: {title}", "exec"), namespace)
    namespace.update(overrides)  # module globals the example's functions read when called
    return namespace


def test_every_python_block_of_the_readme_has_a_test() -> None:
    assert set(python_blocks()) == {SERVING, LIVE, MOUNT, CLUSTER, DEPLOY, CORE}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[PresenceServer]:
    """The servers the examples start, each listening on a free loopback port."""
    servers: list[PresenceServer] = []
    listen = PresenceServer.listen

    listen_metrics = PresenceServer.listen_metrics

    async def on_a_free_port(self: PresenceServer, *args: Any, **options: Any) -> int:
        options.pop("reuse_port", None)
        port = await listen(self, "127.0.0.1", 0, **options)
        servers.append(self)
        return port

    async def metrics_on_a_free_port(self: PresenceServer, *args: Any) -> int:
        port = await listen_metrics(self, "127.0.0.1", 0)
        self.metrics_port = port  # type: ignore[attr-defined]
        return port

    monkeypatch.setattr(PresenceServer, "listen", on_a_free_port)
    monkeypatch.setattr(PresenceServer, "listen_metrics", metrics_on_a_free_port)
    return servers


@asynccontextmanager
async def running(
    main: Callable[[], Any], servers: list[PresenceServer], count: int = 1
) -> AsyncIterator[list[PresenceServer]]:
    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(main)
        await wait_for(lambda: len(servers) == count, timeout=15)
        yield servers
        group.cancel_scope.cancel()


def url(server: PresenceServer, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def recv_type(client: Client, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await client.recv_json()
        if message["type"] == kind:
            return message


@pytest.mark.anyio
async def test_the_serving_example_authenticates_chats_and_moderates(
    started: list[PresenceServer],
) -> None:
    example = run_block(SERVING)
    async with running(example["main"], started) as (server,):
        assert server.port is not None
        no_cookie = b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
        request = no_cookie + b"\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        request += b"Sec-WebSocket-Version: 13\r\n\r\n"
        assert (await http_status(server.port, request)).startswith(b"HTTP/1.1 401")

        ann = await Client.connect(
            url(server, "/ws/chat?tab=1"), additional_headers={"Cookie": "sid=6f1c"}
        )
        bob = await Client.connect(
            url(server, "/ws/chat?tab=1"), additional_headers={"Cookie": "sid=9b2e"}
        )
        await wait_for(lambda: len(server.roster("/ws/chat")) == 2)
        assert sorted(m.session_id for m in server.roster("/ws/chat")) == ["ann-1", "bob-1"]
        await ann.send("hi")  # on_message returns None: no 1011, a chat to the lobby
        for client in (ann, bob):
            chat = await recv_type(client, "chat")
            assert chat["payload"] == {"from": "ann", "text": "hi"}

        example["moderate"](server)
        assert (await recv_type(bob, "notice"))["payload"] == "closing at 6"
        assert (await recv_type(ann, "ping"))["type"] == "ping"
        assert await bob.closed() == (1008, "bye")
        assert await ann.silent()  # ann was excepted from the notice
        await ann.close()


@pytest.mark.anyio
async def test_the_live_example_watches_a_room_and_asks_the_hook(
    started: list[PresenceServer],
) -> None:
    example = run_block(LIVE)
    async with running(example["main"], started) as (server,):
        ann = await Client.connect(url(server, "/ws/chat?user=ann&session=a1"))
        assert (await recv_type(ann, "subscribed"))["presence"] == "users"
        assert (await recv_type(ann, "presence.diff"))["joins"]["ann"]["userId"] == "ann"
        bob = await Client.connect(url(server, "/ws/chat?user=bob&session=b1"))
        assert list((await recv_type(ann, "presence.diff"))["joins"]) == ["bob"]
        await bob.send(json.dumps({"op": "subscribe", "channel": "staff"}))
        refused = await recv_type(bob, "error")
        assert refused["payload"]["message"] == "staff only"
        await ann.send(json.dumps({"op": "subscribe", "channel": "staff"}))
        assert (await recv_type(ann, "subscribed"))["channel"] == "staff"
        assert server.presence_stats("room") == (2, 2)
        server.kick("b1")  # at once: a closed socket would linger for the 5 s grace
        assert list((await recv_type(ann, "presence.diff"))["leaves"]) == ["bob"]
        await bob.close()
        await ann.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # nats-py and redis-py need it
@pytest.mark.anyio
async def test_the_cluster_example_runs_against_real_nats_and_redis(
    started: list[PresenceServer], nats_server: Server, redis_server: Server
) -> None:
    example = run_block(
        CLUSTER,
        NATS_URL=f"nats://127.0.0.1:{nats_server.port}",
        REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/0",
    )
    async with running(example["main"], started, count=2) as (a, b):
        ann = await Client.connect(url(a, "/ws/chat?user=ann"))
        bob = await Client.connect(url(b, "/ws/chat?user=bob"))

        def users(members: Iterator[Any] | list[Any]) -> set[str]:
            return {member.user_id for member in members}

        # NATS carries the roster and the fan-out, Redis the per-channel roster.
        await wait_for(lambda: users(b.roster("/ws/chat")) == {"ann", "bob"}, timeout=10)
        assert users(await b.presence_list(["lobby"])) == {"ann", "bob"}
        a.broadcast("/ws/chat", "lobby", {"type": "hello", "payload": 1})
        assert (await recv_type(bob, "hello"))["payload"] == 1
        # Redis numbers the channel messages (its streams), for every server.
        a.publish("lobby", {"type": "note"})
        note = await recv_type(bob, "note")
        assert note["offset"] == 1
        assert isinstance(note["epoch"], str)
        for client in (ann, bob):
            await client.close()
        # Let the removals reach Redis before the servers stop: the roster's writer
        # task is cancelled at exit, and a write cut short there leaks its pipeline.
        with anyio.fail_after(10):
            while await b.presence_list(["lobby"]):
                await anyio.sleep(0.02)


def test_the_core_example_watches_a_channel() -> None:
    example = run_block(CORE)
    presence = example["presence"]
    assert [m.user_id for m in presence.roster("/ws/chat")] == ["ann", "bob"]
    assert presence.presence_stats("lobby") == (2, 2)
    action = example["action"]  # the tick's one action: the window's diff, to the watcher
    assert action.conns == (17,)
    diff = json.loads(action.text)
    assert (diff["type"], diff["version"], list(diff["joins"])) == ("presence.diff", 1, ["bob"])


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
@pytest.mark.anyio
async def test_the_mount_example_runs_under_uvicorn() -> None:
    import uvicorn

    example = run_block(MOUNT)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(example["app"], log_level="warning"))
    async with anyio.create_task_group() as group:
        group.start_soon(partial(runner.serve, sockets=[sock]))
        await wait_for(lambda: runner.started, timeout=15)
        presence = example["presence"]
        assert presence.running  # FastAPI(lifespan=presence.lifespan)
        request = b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        request += b"Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        request += b"Sec-WebSocket-Version: 13\r\n\r\n"
        assert (await http_status(port, request)).startswith(b"HTTP/1.1 401")
        ann = await Client.connect(
            f"ws://127.0.0.1:{port}/ws/chat?tab=1", additional_headers={"Cookie": "sid=6f1c"}
        )
        await wait_for(lambda: [m.user_id for m in presence.roster("/ws/chat")] == ["ann"])
        # A second tab of the same login is a session of its own: neither goes deaf.
        tab2 = await Client.connect(
            f"ws://127.0.0.1:{port}/ws/chat?tab=2", additional_headers={"Cookie": "sid=6f1c"}
        )
        await wait_for(lambda: len(presence.roster("/ws/chat")) == 2)
        assert sorted(m.session_id for m in presence.roster("/ws/chat")) == ["ann-1", "ann-2"]
        javascript = b"GET /megapresence.js HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await http_status(port, javascript)).startswith(b"HTTP/1.1 200")

        def post() -> bytes:
            url = f"http://127.0.0.1:{port}/announce?text=hi"
            with urllib.request.urlopen(urllib.request.Request(url, method="POST")) as answer:
                return bytes(answer.read())

        assert json.loads(await anyio.to_thread.run_sync(post)) == {"sent": "hi"}
        assert (await recv_type(ann, "notice"))["payload"] == "hi"
        assert (await recv_type(tab2, "notice"))["payload"] == "hi"
        await tab2.close()
        healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await http_status(port, healthz)).startswith(b"HTTP/1.1 200")
        await ann.close()
        runner.should_exit = True
    assert not presence.running


@pytest.mark.anyio
async def test_the_deploy_example_serves_tls_metrics_and_a_wss_hub_link(
    started: list[PresenceServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trustme

    from megapresence_anyio import HubServer, server_context
    from megapresence_core import HubConfig

    ca = trustme.CA()
    ca_file, cert_file = tmp_path / "ca.pem", tmp_path / "cert.pem"
    ca.cert_pem.write_to_path(ca_file)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert_file)
    monkeypatch.setenv("HUB_TOKEN", "hub-token")
    monkeypatch.setenv("METRICS_TOKEN", "metrics-token")
    async with HubServer(HubConfig(hub_id="h", tokens=["hub-token"])) as hub:
        hub_port = await hub.listen(ssl_context=server_context(str(cert_file)))
        example = run_block(
            DEPLOY,
            CERTFILE=str(cert_file),
            KEYFILE=None,
            HUB_URL=f"wss://127.0.0.1:{hub_port}/",
            HUB_CA=str(ca_file),
        )
        async with running(example["main"], started) as (server,):
            await wait_for(lambda: server.readiness().ready, timeout=10)
            assert "hub is registered" in capsys.readouterr().out
            tls = ssl.create_default_context(cafile=str(ca_file))
            ann = await Client.connect(f"wss://127.0.0.1:{server.port}/ws/x?user=ann", ssl=tls)
            metrics = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            port = server.metrics_port  # type: ignore[attr-defined]
            # Loopback may read metrics (the default list); the token works too.
            assert (await http_status(port, metrics + b"\r\n")).startswith(b"HTTP/1.1 200")
            with_token = metrics + b"Authorization: Bearer metrics-token\r\n\r\n"
            assert (await http_status(port, with_token)).startswith(b"HTTP/1.1 200")
            await ann.close()
