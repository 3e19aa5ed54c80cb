"""One send-buffer rule for every writer (issue 19): a peer whose buffer is full, or
does not move for ``send_stall_timeout``, is closed with 1013, whether its socket is
plain, TLS (written in place, ``TlsTransport``) or an ASGI connection; and one
outgoing message object (``Outgoing``), whose forms are built once.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trustme

from megapresence_anyio import Client as ServerClient
from megapresence_anyio import PresenceServer, SocketLimits, server_context
from megapresence_anyio._outgoing import Outgoing, text_frame
from megapresence_anyio._tls import TlsTransport
from megapresence_anyio._transport import SocketTransport
from megapresence_core import PresenceConfig

from .asgi_harness import asgi_connection
from .socket_helpers import Client, query_login, wait_for
from .test_asgi import accepted, as_user, mounted

pytestmark = pytest.mark.anyio

HOST = "127.0.0.1"
BIG = 4 * 1024 * 1024
UPGRADE = (
    b"GET /ws?user=slow HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certificate(ca: trustme.CA, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it."""
    path = tmp_path / "server.pem"
    ca.issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(path)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server_context(str(path)), client


def silent_peer(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    """A blocking socket past its upgrade that will never read: a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((HOST, port))
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname=HOST)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def serving(
    server: PresenceServer, tls: bool, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> tuple[int, ssl.SSLContext | None]:
    port = await server.listen(HOST, 0, ssl_context=certificate[0] if tls else None)
    return port, certificate[1] if tls else None


@asynccontextmanager
async def silent_client(
    server: PresenceServer, port: int, tls: ssl.SSLContext | None
) -> AsyncIterator[tuple[ServerClient, socket.socket]]:
    """A ``silent_peer`` of ``server`` (its only client): the server's client for it and
    its socket, closed at the end."""
    sock = await anyio.to_thread.run_sync(silent_peer, port, tls)
    try:
        await wait_for(lambda: len(server.clients) == 1)
        (client,) = server.clients
        yield client, sock
    finally:
        sock.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_peer_whose_buffer_does_not_move_is_closed_1013(
    anyio_backend: str, tls: bool, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    limits = SocketLimits(send_stall_timeout=0.5, close_timeout=0.5, max_message_bytes=BIG)
    async with PresenceServer(query_login, paths=None, limits=limits) as server:
        port, context = await serving(server, tls, certificate)
        async with silent_client(server, port, context) as (client, _sock):
            transport = client.session.transport
            assert type(transport) is (TlsTransport if tls else SocketTransport)
            client.send("x" * BIG)  # far more than the kernel takes: it waits, and stays
            await wait_for(lambda: transport.queued > 0)
            with anyio.fail_after(5):
                while client.session.is_open:
                    await anyio.sleep(0.05)
            assert client.session.close_code == 1013
            assert client.session.close_reason == "slow consumer: send buffer not moving"
            await wait_for(lambda: not server.clients, timeout=5)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_peer_whose_buffer_is_full_is_closed_1013(
    anyio_backend: str, tls: bool, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    limits = SocketLimits(max_send_buffer=64 * 1024, close_timeout=0.5)
    async with PresenceServer(query_login, paths=None, limits=limits) as server:
        port, context = await serving(server, tls, certificate)
        async with silent_client(server, port, context) as (client, _sock):
            sent = 0
            while client.session.is_open:  # a message per turn: each leaves, or waits
                client.send("y" * 10_000)
                sent += 1
                assert sent < 10_000, "the bound never refused a write"
                await anyio.sleep(0)
            assert client.session.close_code == 1013
            assert client.session.close_reason == "slow consumer: send buffer full"
            await wait_for(lambda: not server.clients, timeout=5)


async def test_an_asgi_peer_whose_buffer_does_not_move_is_closed_1013(anyio_backend: str) -> None:
    limits = SocketLimits(send_stall_timeout=0.5, close_timeout=0.5)
    async with (
        mounted(limits=limits) as (server, app, group),
        asgi_connection(group, app, as_user("ann")) as ann,
    ):
        await accepted(ann)
        ann.hold = anyio.Event()  # the ASGI server's send to ann blocks from now on
        (client,) = server.clients
        client.send("z" * 100)  # one message, in flight for good: well within the bound
        with anyio.fail_after(5):
            while client.session.is_open:
                await anyio.sleep(0.05)
        assert (client.session.close_code, client.session.close_reason) == (
            1013,
            "slow consumer: send buffer not moving",
        )
        ann.hold.set()
        close = await ann.wait_type("websocket.close")
        assert close["code"] == 1013


async def test_a_tls_peer_that_reads_slowly_gets_every_message_whole_and_in_order(
    anyio_backend: str, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Frames queued in the clear behind a sealed chunk are sealed in their turn: the
    records stay in order and the peer decrypts all of them."""
    limits = SocketLimits(max_message_bytes=BIG, max_send_buffer=2 * BIG)
    presence = PresenceConfig(leave_grace=0)
    async with PresenceServer(query_login, paths=None, limits=limits, presence=presence) as server:
        port = await server.listen(HOST, 0, ssl_context=certificate[0])
        peer = await Client.connect(
            f"wss://{HOST}:{port}/ws?user=ann&channels=lobby", ssl=certificate[1], max_size=2 * BIG
        )
        try:
            await wait_for(lambda: len(server.clients) == 1)
            (client,) = server.clients
            client.send("a" * BIG)
            await anyio.sleep(0)  # sent at the end of that turn: the kernel takes part of it
            for n in range(20):  # queued in the clear behind the rest, sealed in their turn
                client.send(f"small {n}")
            assert await peer.recv() == "a" * BIG
            assert [await peer.recv() for _ in range(20)] == [f"small {n}" for n in range(20)]
            server.broadcast("/ws", "lobby", {"type": "after"})
            assert json.loads(await peer.recv())["type"] == "after"
        finally:
            await peer.close()


async def test_one_message_alone_behind_the_head_fits_whatever_its_size() -> None:
    """The rule of every writer: what waits behind the chunk in flight stays within the
    bound, but a single message larger than the bound still reaches a peer that reads."""
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with anyio.create_task_group() as group:
        transport = SocketTransport(left, spawn=group.start_soon, max_buffer=1000)
        assert transport.write(b"h" * 1_000_000)  # the head: the kernel takes part of it
        assert transport.queued > 0
        assert transport.write(b"b" * 5000)  # alone behind the head: fits
        assert not transport.write(b"c")  # behind it: over the bound
        assert transport.write(b"close", force=True)
        transport.abort()
    right.close()


def test_an_outgoing_message_builds_each_form_once() -> None:
    message = Outgoing("héllo")
    assert message.size == len("héllo".encode()) == 6
    assert message.frame == text_frame("héllo".encode())
    assert message.frame is message.frame
    assert message.frame_size == len(message.frame)
    # Too short to gain from compression: the plain frame serves a deflating peer too.
    assert message.deflated(15) is message.frame
    long = Outgoing("abc" * 1000, compress=True)
    assert long.deflated(15) is long.deflated(15)
    assert len(long.deflated(15)) < len(long.frame)
    assert long.deflated(10) is not long.deflated(15)
    assert Outgoing("x" * 200).frame_size == len(Outgoing("x" * 200).frame)
    assert Outgoing("x" * 70_000).frame_size == len(Outgoing("x" * 70_000).frame)
    assert repr(Outgoing("y" * 100)) == f"Outgoing({'y' * 37 + '...'!r})"


async def test_a_tls_peer_that_breaks_its_records_while_its_queue_waits_is_dropped(
    anyio_backend: str, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """The alert the record layer writes goes after the sealed chunk in flight."""
    limits = SocketLimits(max_message_bytes=BIG, close_timeout=0.5)
    async with PresenceServer(query_login, paths=None, limits=limits) as server:
        port = await server.listen(HOST, 0, ssl_context=certificate[0])
        async with silent_client(server, port, certificate[1]) as (client, sock):
            client.send("x" * BIG)
            await wait_for(lambda: client.session.transport.queued > 0)
            os.write(sock.fileno(), b"\x17\x03\x03\x00\x10" + b"not a record....")
            await wait_for(lambda: not server.clients, timeout=5)
            assert client.session.close_code == 1006


async def test_an_http_answer_over_tls_is_sealed_before_the_socket_ends(
    anyio_backend: str, certificate: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async with PresenceServer(query_login, paths=None) as server:
        port = await server.listen(HOST, 0, ssl_context=certificate[0])

        def get() -> bytes:
            with (
                socket.create_connection((HOST, port)) as raw,
                certificate[1].wrap_socket(raw, server_hostname=HOST) as sock,
            ):
                sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
                return answer

        answer = await anyio.to_thread.run_sync(get)
        assert answer.startswith(b"HTTP/1.1 426 Upgrade Required"), answer
