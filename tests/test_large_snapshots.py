"""A snapshot bigger than the send buffer reaches a watcher that reads, on a socket and mounted.

A users-view snapshot of a channel at its member cap is about 1 MB, the size of
``SocketLimits.max_send_buffer``: the bound counts what waits behind the frame
in flight, so one big frame must not be taken for a slow consumer (1013).
Here the buffer is 4 KiB and the snapshot about 8 KiB, sent right behind the
``subscribed`` reply.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from megapresence_anyio import PresenceServer, SocketLimits
from megapresence_anyio._demo import DemoApp

from .asgi_harness import asgi_connection, websocket_scope
from .socket_helpers import Client, wait_for

pytestmark = pytest.mark.anyio

BUFFER = 4096
MEMBERS = 5
BIO = "x" * 1500  # metadata of 1.5 KiB each: the snapshot is about 8 KiB
SUBSCRIBE = json.dumps({"op": "subscribe", "channel": "lobby", "presence": "users"})


@asynccontextmanager
async def demo_server() -> AsyncIterator[PresenceServer]:
    app = DemoApp()
    server = PresenceServer(
        app.authenticate,
        on_open=app.on_open,
        on_message=app.on_message,
        limits=SocketLimits(max_send_buffer=BUFFER),
    )
    app.server = server
    async with server:
        yield server


def metadata_command(user: str) -> str:
    return json.dumps({"op": "metadata", "metadata": {"status": "online", "bio": BIO + user}})


def full(server: PresenceServer) -> bool:
    members = server.roster("/ws/chat")
    return len(members) == MEMBERS and all(m.metadata and "bio" in m.metadata for m in members)


async def test_on_a_socket(anyio_backend: str) -> None:
    async with demo_server() as server:
        port = await server.listen()
        url = f"ws://127.0.0.1:{port}/ws/chat"
        members = [await Client.connect(f"{url}?user=u{n}") for n in range(MEMBERS)]
        for n, member in enumerate(members):
            await member.send(metadata_command(f"u{n}"))
        await wait_for(lambda: full(server))
        watcher = await Client.connect(f"{url}?user=w&channels=other")
        await watcher.send(SUBSCRIBE)
        while (message := await watcher.recv_json())["type"] != "presence.state":
            pass
        assert len(json.dumps(message)) > BUFFER
        assert len(message["members"]) == MEMBERS
        await watcher.send('{"op":"roster"}')  # still open: answered
        while (await watcher.recv_json())["type"] != "roster":
            pass
        for client in (watcher, *members):
            await client.close()


async def test_mounted(anyio_backend: str) -> None:
    async with demo_server() as server, anyio.create_task_group() as group:
        app = server.asgi()
        scopes = [websocket_scope("/ws/chat", query=f"user=u{n}") for n in range(MEMBERS)]
        async with (
            asgi_connection(group, app, scopes[0]) as u0,
            asgi_connection(group, app, scopes[1]) as u1,
            asgi_connection(group, app, scopes[2]) as u2,
            asgi_connection(group, app, scopes[3]) as u3,
            asgi_connection(group, app, scopes[4]) as u4,
        ):
            for n, member in enumerate((u0, u1, u2, u3, u4)):
                await member.wait_type("websocket.accept")
                await member.text(metadata_command(f"u{n}"))
            await wait_for(lambda: full(server))
            scope = websocket_scope("/ws/chat", query="user=w&channels=other")
            async with asgi_connection(group, app, scope) as watcher:
                await watcher.wait_type("websocket.accept")
                await watcher.text(SUBSCRIBE)
                await watcher.wait_for(
                    lambda sent: any(
                        '"presence.state"' in m.get("text", "") or m["type"] == "websocket.close"
                        for m in sent
                    )
                )
                assert watcher.of_type("websocket.close") == []
                [state] = [t for t in watcher.texts() if '"presence.state"' in t]
                assert len(state) > BUFFER
                assert len(json.loads(state)["members"]) == MEMBERS
