"""Handshakes apart from connections: the caps of SocketLimits, and a slowloris, on both backends.

Loopback has a whole /8: sockets bound to 127.0.0.2, 127.0.0.3, ... are
different addresses to the server, which is how per-address caps are tested.
"""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import anyio
import pytest
from websockets.exceptions import InvalidStatus

from megapresence_anyio import PresenceServer, SocketLimits

from .socket_helpers import Client, running_server, upgrade_answer, wait_for

pytestmark = pytest.mark.anyio

HALF_REQUEST = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"  # never finished


def half_open(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connected socket that has sent part of a request and will say no more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(HALF_REQUEST)
    return sock


@contextmanager
def half_open_sockets(port: int, count: int, sources: list[str]) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            socks.append(half_open(port, sources[i % len(sources)]))
        yield socks
    finally:
        for sock in socks:
            sock.close()


def answer_to_new_half_open(port: int) -> bytes:
    with half_open(port) as sock:
        return answer_of(sock)


def answer_of(sock: socket.socket, timeout: float = 5) -> bytes:
    """The status line the server wrote to ``sock`` (b"" if it closed without one)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data.split(b"\r\n", 1)[0]


@asynccontextmanager
async def half_open_against(
    limits: SocketLimits, count: int, sources: list[str]
) -> AsyncIterator[tuple[PresenceServer, str, list[socket.socket]]]:
    """A server with ``count`` half-open sockets from ``sources`` in its handshake."""
    async with running_server(limits=limits) as (server, url):
        assert server.port is not None
        with half_open_sockets(server.port, count, sources) as socks:
            await wait_for(lambda: server._admission.pending == count)
            yield server, url, socks


async def connect_from(url: str, source: str) -> Client:
    return await Client.connect(url, source_address=(source, 0))


async def test_pending_handshakes_per_address_are_capped_with_429() -> None:
    limits = SocketLimits(max_pending_per_address=3)
    async with half_open_against(limits, 3, ["127.0.0.1"]) as (server, url, _):
        refused = await anyio.to_thread.run_sync(answer_to_new_half_open, server.port)
        assert refused == b"HTTP/1.1 429 Too Many Requests"
        other = await connect_from(f"{url}/ws?user=ann", "127.0.0.2")  # another address
        await other.close()


async def test_at_the_pending_cap_the_oldest_handshake_makes_room_with_503() -> None:
    limits = SocketLimits(max_pending_handshakes=3)
    sources = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    async with half_open_against(limits, 3, sources) as (server, url, socks):
        client = await Client.connect(f"{url}/ws?user=ann")  # pushes the oldest out
        oldest = await anyio.to_thread.run_sync(answer_of, socks[0])
        assert oldest == b"HTTP/1.1 503 Service Unavailable"
        assert server._admission.pending == 2  # the other two wait on
        await client.close()


async def test_connections_count_from_the_upgrade_and_are_capped_with_503() -> None:
    limits = SocketLimits(max_connections=1)
    async with half_open_against(limits, 5, ["127.0.0.2"]) as (server, url, _):
        first = await Client.connect(f"{url}/ws?user=ann")  # half-open sockets hold no slot
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}/ws?user=bob")
        assert refused.value.response.status_code == 503
        await first.close()
        await wait_for(lambda: server._admission.open == 0)
        again = await Client.connect(f"{url}/ws?user=bob")
        await again.close()


async def test_open_connections_per_address_are_capped_with_429() -> None:
    limits = SocketLimits(max_connections_per_address=1)
    async with running_server(limits=limits) as (server, url):
        assert server.port is not None
        first = await Client.connect(f"{url}/ws?user=ann")
        assert await upgrade_answer(server.port) == b"HTTP/1.1 429 Too Many Requests"
        other = await connect_from(f"{url}/ws?user=bob", "127.0.0.2")
        await first.close()
        await other.close()


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted``; return what it is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def test_a_slowloris_past_the_pending_cap_does_not_lock_a_client_out() -> None:
    """Thousands of half-open sockets from many addresses (and a flood from one), past
    max_pending_handshakes and past max_connections; a client still gets in."""
    file_limit = raise_file_limit(16_384)
    # Each half-open socket costs this process one descriptor (its client side);
    # the server keeps at most max_pending_handshakes of theirs.
    count = min(6_000, file_limit - 2_048)
    assert count >= 2_000, f"RLIMIT_NOFILE {file_limit} is too low for a meaningful slowloris"
    limits = SocketLimits(max_connections=1_000)  # the other caps at their defaults
    sources = [f"127.0.0.{i}" for i in range(2, 102)]
    async with running_server(limits=limits) as (server, url):
        assert server.port is not None
        port = server.port

        def flood() -> list[socket.socket]:
            socks = [half_open(port, sources[i % len(sources)]) for i in range(count)]
            socks += [half_open(port, "127.0.0.250") for _ in range(200)]  # one address
            return socks

        socks = await anyio.to_thread.run_sync(flood)
        try:
            assert len(socks) > 3 * limits.max_connections
            # The listener accepts in order: the flood is ahead of the client in the queue.
            started = time.monotonic()
            legit = await Client.connect(f"{url}/ws?user=ann", open_timeout=10)
            elapsed = time.monotonic() - started
            await wait_for(lambda: len(server.clients) == 1)
            server.broadcast("/ws", "c", {"type": "served"})
            assert (await legit.recv_json())["type"] == "served"
            await legit.close()
            assert len(socks) > 10 * limits.max_pending_handshakes
            assert server._admission.pending <= limits.max_pending_handshakes
        finally:
            for sock in socks:
                sock.close()
    print(f"slowloris: {len(socks)} half-open sockets; a client connected in {elapsed:.3f} s")


async def test_the_hub_caps_handshakes_per_address_too() -> None:
    from megapresence_anyio import HubServer
    from megapresence_core import HubConfig

    limits = SocketLimits(max_pending_per_address=2)
    async with HubServer(HubConfig(hub_id="h", tokens=["t"]), limits=limits) as hub:
        port = await hub.listen()
        with half_open_sockets(port, 2, ["127.0.0.1"]):
            await wait_for(lambda: hub._admission.pending == 2)
            refused = await anyio.to_thread.run_sync(answer_to_new_half_open, port)
            assert refused == b"HTTP/1.1 429 Too Many Requests"
