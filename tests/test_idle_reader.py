"""An open socket read from a reader callback, with no task (issue 19).

A plain socket of the server's own listener is read from a reader callback once
it is open (``_reader.py``): asyncio's ``loop.add_reader``, or on trio an epoll
of the server's own (Linux, where these tests run). Both must behave alike:
messages in order, an async ``on_message`` that holds its peer's reading (and
only its), a hook's fault that closes its connection only, a peer that goes
away mid-frame, and a shutdown that ends every socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import anyio
import pytest

from megapresence_anyio import Client as ServerClient
from megapresence_anyio import PresenceServer, SocketLimits, handle_command
from megapresence_core import PresenceConfig

from .hostile import flooding, masked, upgraded
from .process_helpers import worst_round_trip
from .socket_helpers import HISTORY, Client, RawClient, query_login, running_server, wait_for

pytestmark = pytest.mark.anyio

#: Silent peers are dropped soon after their close.
LIMITS = SocketLimits(close_timeout=0.3)


def read_from_callbacks(server: Any) -> int:
    """How many sockets the server reads without a task."""
    return len(server._host.readers)


async def round_trip(client: RawClient, data: str = "x") -> None:
    """A ping answered: the server reads this socket."""
    await client.send_frame(0x89, data.encode())
    with anyio.fail_after(5):
        while (await client.frame()) != (0xA, data.encode()):
            pass


def tasks(backend: str) -> int:
    """How many tasks the event loop has."""
    if backend == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    return count(trio.lowlevel.current_root_task())


async def test_idle_sockets_hold_no_task(anyio_backend: str) -> None:
    async with running_server(on_message=handle_command) as (server, _):
        assert server.port is not None
        before = tasks(anyio_backend)
        clients = [
            await RawClient.connect(server.port, f"/ws?user=u{n}&channels=lobby") for n in range(50)
        ]
        await wait_for(lambda: len(server.clients) == 50)
        await wait_for(lambda: read_from_callbacks(server) == 50)
        await anyio.sleep(0.1)
        assert tasks(anyio_backend) - before < 5  # no task per socket
        for client in clients[::10]:
            await round_trip(client)
        for client in clients:
            await client.stream.aclose()
        await wait_for(lambda: not server.clients and read_from_callbacks(server) == 0)


async def test_a_flood_of_tiny_frames_does_not_starve_another(anyio_backend: str) -> None:
    frame = masked(0x81, json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode())
    async with running_server(on_message=handle_command) as (server, url):
        assert server.port is not None
        bystander = await Client.connect(f"{url}/ws?user=bob&channels=lobby")
        mallory = await anyio.to_thread.run_sync(upgraded, server.port, "/ws?user=mallory")
        with flooding(mallory, frame):
            await wait_for(lambda: len(server.clients) == 2)
            assert read_from_callbacks(server) == 2
            worst = await anyio.to_thread.run_sync(worst_round_trip, bystander.ws, 2.0)
        assert worst < 2.0, f"a round trip took {worst:.3f} s beside the flood"
        await bystander.close()


async def test_an_async_on_message_keeps_order_and_holds_its_peers_reading() -> None:
    seen: list[str] = []
    release = anyio.Event()

    async def on_message(client: ServerClient, text: str) -> None:
        if client.user_id == "bob":
            seen.append(text)
            if text == "0":
                await release.wait()
            await anyio.sleep(0)

    limits = SocketLimits(hook_timeout=30)
    async with running_server(on_message=on_message, limits=limits) as (server, _):
        assert server.port is not None
        bob = await anyio.to_thread.run_sync(upgraded, server.port, "/ws?user=bob")
        alice = await RawClient.connect(server.port, "/ws?user=alice")
        bob.sendall(b"".join(masked(0x81, str(n).encode()) for n in range(5)))
        await wait_for(lambda: seen == ["0"])
        await round_trip(alice)  # the others are read meanwhile

        # While its hook waits, bob's socket is not read: what he writes stays in the
        # kernel's buffers, which fill, and he can write no more.
        bob.setblocking(False)
        frames = masked(0x81, b"12345678" * 15) * 64
        written, stalled_since = 0, None
        with anyio.fail_after(20):
            while stalled_since is None or anyio.current_time() - stalled_since < 0.3:
                try:
                    written += bob.send(frames)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or anyio.current_time()
                    await anyio.sleep(0.02)
        assert written < 64 << 20, written
        assert seen == ["0"]

        release.set()
        await wait_for(lambda: len(seen) >= 5, timeout=20)
        assert seen[:5] == ["0", "1", "2", "3", "4"]
        await round_trip(alice)
        bob.close()
        await alice.stream.aclose()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_hook_that_raises_closes_its_connection_only(asynchronous: bool) -> None:
    def check(client: ServerClient, text: str) -> None:
        if text == "boom":
            raise RuntimeError("a bug in the hook")
        handle_command(client, text)

    async def on_message_async(client: ServerClient, text: str) -> None:
        await anyio.sleep(0)
        check(client, text)

    on_message = on_message_async if asynchronous else check
    async with running_server(on_message=on_message) as (server, _):
        assert server.port is not None
        mallory = await RawClient.connect(server.port, "/ws?user=mallory")
        bob = await RawClient.connect(server.port, "/ws?user=bob")
        await mallory.send_frame(0x81, b"boom")
        with anyio.fail_after(5):
            assert await mallory.close_code() == 1011
        await round_trip(bob)
        await wait_for(lambda: [c.user_id for c in server.clients] == ["bob"])
        await mallory.stream.aclose()
        await bob.stream.aclose()


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_peer_gone_mid_frame_ends_its_connection(how: str) -> None:
    async with running_server() as (server, _):
        assert server.port is not None
        bob = await RawClient.connect(server.port, "/ws?user=bob")
        gone = await anyio.to_thread.run_sync(upgraded, server.port, "/ws?user=gone")
        await wait_for(lambda: len(server.clients) == 2)
        gone.sendall(masked(0x81, b"half a frame")[:7])
        await anyio.sleep(0.05)
        if how == "reset":
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        await wait_for(lambda: [c.user_id for c in server.clients] == ["bob"])
        await round_trip(bob)
        await wait_for(lambda: read_from_callbacks(server) in (0, 1))
        await bob.stream.aclose()


async def test_a_server_stopping_ends_its_idle_sockets(anyio_backend: str) -> None:
    presence = PresenceConfig(leave_grace=0, history=HISTORY)
    server = PresenceServer(query_login, paths=None, presence=presence, limits=LIMITS)
    answering: list[RawClient] = []
    silent: list[RawClient] = []

    async def answer(client: RawClient) -> None:  # the close handshake, as a browser's
        opcode, payload = 0, b""
        while opcode != 0x8:
            opcode, payload = await client.frame()
        await client.send_frame(0x88, payload)

    async with anyio.create_task_group() as group, server:
        port = await server.listen()
        for n in range(10):
            answering.append(await RawClient.connect(port, f"/ws?user=a{n}"))
            silent.append(await RawClient.connect(port, f"/ws?user=s{n}"))
        await wait_for(lambda: len(server.clients) == 20)
        assert read_from_callbacks(server) == 20
        for client in answering:
            group.start_soon(answer, client)
    # Every socket was closed by the server: the answering ones after their close, the
    # silent ones (which never answer) at the latest when the server stopped.
    assert not server.clients
    assert read_from_callbacks(server) == 0
    for client in answering + silent:
        with anyio.fail_after(5), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await read_to_the_end(client)
        await client.stream.aclose()


async def read_to_the_end(client: RawClient) -> None:
    while True:
        await client.frame()
