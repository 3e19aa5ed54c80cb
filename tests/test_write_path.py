"""The write path: a socket's writes of one turn of the event loop leave in one send(),
in order, with the slow-consumer bound kept; on asyncio and trio."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from megapresence_anyio import SocketLimits
from megapresence_anyio._transport import BATCH_BYTES, Coalescer, SocketTransport, StreamTransport

from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


class CountingSocket(socket.socket):
    """A socket that notes the size of every ``send()`` the kernel took."""

    sends: list[int]

    def send(self, data: Any, flags: int = 0) -> int:
        sent = super().send(data, flags)
        self.sends.append(sent)
        return sent


class BrokenSocket(socket.socket):
    """A socket whose ``send`` fails as no network error does (a bug)."""

    def send(self, data: Any, flags: int = 0) -> int:
        raise RuntimeError("a bug")


@asynccontextmanager
async def transport_pair(
    max_buffer: int = 1 << 20, *, coalesce: bool = True
) -> AsyncIterator[tuple[SocketTransport, CountingSocket, socket.socket]]:
    ours, peer = socket.socketpair()
    sock = CountingSocket(fileno=ours.detach())
    sock.sends = []
    peer.setblocking(False)
    async with anyio.create_task_group() as group:
        transport = SocketTransport(
            sock,
            spawn=group.start_soon,
            max_buffer=max_buffer,
            coalescer=Coalescer() if coalesce else None,
        )
        try:
            yield transport, sock, peer
        finally:
            transport.abort()
            peer.close()


async def received(peer: socket.socket, size: int) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while len(data) < size:
            try:
                chunk = peer.recv(1 << 20)
            except BlockingIOError:
                await anyio.sleep(0)
                continue
            if not chunk:
                break
            data += chunk
    return data


async def test_writes_in_one_turn_leave_in_one_send_in_order() -> None:
    async with transport_pair() as (transport, sock, peer):
        for n in range(10):
            assert transport.write(b"<%d>" % n)
        assert sock.sends == []  # nothing leaves before the turn ends
        assert await received(peer, 30) == b"".join(b"<%d>" % n for n in range(10))
        assert sock.sends == [30]
        transport.write(b"next")
        assert await received(peer, 4) == b"next"
        assert sock.sends == [30, 4]  # a later turn is a send of its own


async def test_without_a_coalescer_each_write_is_sent_in_place() -> None:
    async with transport_pair(coalesce=False) as (transport, sock, peer):
        transport.write(b"one")
        transport.write(b"two")
        assert sock.sends == [3, 3]
        assert await received(peer, 6) == b"onetwo"


async def test_a_batch_that_reaches_its_size_is_sent_at_once() -> None:
    async with transport_pair() as (transport, sock, peer):
        frame = b"x" * 1000
        count = BATCH_BYTES // len(frame) + 1
        for _ in range(count):
            transport.write(frame)
        assert sock.sends == [count * len(frame)]  # sent within the turn, in one piece
        transport.write(b"tail")
        assert await received(peer, count * len(frame) + 4) == frame * count + b"tail"


async def test_an_abort_sends_the_turns_batch_first() -> None:
    async with transport_pair() as (transport, _sock, peer):
        transport.write(b"HTTP/1.1 503 ")
        transport.write(b"Service Unavailable\r\n\r\n")
        transport.abort()
        transport.write(b"dropped")
        assert await received(peer, 1 << 16) == b"HTTP/1.1 503 Service Unavailable\r\n\r\n"


async def test_drain_and_close_sends_the_batch_then_ends_the_stream() -> None:
    async with transport_pair() as (transport, _sock, peer):
        transport.write(b"bye")
        await transport.drain_and_close(1)
        assert await received(peer, 1 << 16) == b"bye"


async def test_the_slow_consumer_bound_holds_within_one_turn() -> None:
    max_buffer = 100_000
    async with transport_pair(max_buffer) as (transport, _sock, _peer):
        frame = b"y" * 1000
        written = 0
        while transport.write(frame):  # the peer reads nothing
            written += 1
            assert written < 100_000, "the bound never refused a write"
        # Behind the chunk in flight (at most a batch and a frame) wait at most max_buffer bytes.
        assert transport.queued <= max_buffer + BATCH_BYTES + len(frame)
        assert not transport.write(frame)
        assert transport.write(b"close frame", force=True)


async def test_interleaved_broadcasts_directs_replies_and_a_close_keep_their_order() -> None:
    """One socket written by broadcasts, a direct, replies and a kick in one turn gets
    them in the order they were written, the close frame last."""

    def on_message(client: Any, text: str) -> None:
        server.broadcast("/ws", "c", {"type": "b", "payload": 1})
        client.send("reply 1")
        server.direct_to_user("ann", {"type": "d", "payload": 2})
        server.broadcast("/ws", "c", {"type": "b", "payload": 3})
        client.send("reply 2")
        server.kick("ann-s", "bye")
        client.send("after the close: dropped")

    async with running_server(on_message=on_message) as (server, url):
        ann = await Client.connect(f"{url}/ws?user=ann&channels=c")
        await wait_for(lambda: bool(server.roster("/ws")))
        await ann.send("go")
        assert await ann.recv_json() == {"type": "b", "ns": "/ws", "payload": 1}
        assert await ann.recv() == "reply 1"
        assert await ann.recv_json() == {"type": "d", "payload": 2}
        assert await ann.recv_json() == {"type": "b", "ns": "/ws", "payload": 3}
        assert await ann.recv() == "reply 2"
        assert await ann.closed() == (1008, "bye")


async def test_a_burst_to_many_sockets_reaches_each_whole_and_in_order() -> None:
    limits = SocketLimits(max_send_buffer=1 << 20)
    async with running_server(limits=limits) as (server, url):
        clients = [await Client.connect(f"{url}/ws?user=u{n}&channels=c") for n in range(5)]
        await wait_for(lambda: len(server.roster("/ws")) == 5)
        for n in range(50):
            server.broadcast("/ws", "c", {"type": "b", "payload": n})
        for client in clients:
            assert [(await client.recv_json())["payload"] for _ in range(50)] == list(range(50))
            await client.close()


class RecordingStream:
    """A byte stream that notes each ``send`` (what a TLS stream would make a record of)."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    async def send(self, item: bytes) -> None:
        self.sends.append(item)
        await anyio.sleep(0)


async def test_a_stream_transport_sends_what_queued_meanwhile_together() -> None:
    stream = RecordingStream()
    async with anyio.create_task_group() as group:
        transport = StreamTransport(stream, spawn=group.start_soon, max_buffer=1 << 20)  # type: ignore[arg-type]
        for n in range(5):
            transport.write(b"<%d>" % n)
        await wait_for(lambda: transport.queued == 0)
        transport.write(b"x" * BATCH_BYTES)
        transport.write(b"after a full chunk")
        await wait_for(lambda: transport.queued == 0)
    assert stream.sends == [b"<0><1><2><3><4>", b"x" * BATCH_BYTES, b"after a full chunk"]


async def test_a_write_that_fails_by_a_bug_ends_that_socket_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    coalescer = Coalescer()
    pairs = [socket.socketpair() for _ in range(3)]
    async with anyio.create_task_group() as group:
        transports = [
            SocketTransport(ours, spawn=group.start_soon, max_buffer=1 << 20, coalescer=coalescer)
            for ours, _ in pairs
        ]
        broken = transports[1]
        broken._sock = BrokenSocket(fileno=pairs[1][0].detach())
        for transport in transports:
            transport.write(b"hello")
        with anyio.fail_after(5):
            for index in (0, 2):
                pairs[index][1].setblocking(False)
                assert await received(pairs[index][1], 5) == b"hello"
        await wait_for(lambda: broken._closed)
    assert "a coalesced write failed" in caplog.text
    for ours, peer in pairs:
        ours.close()
        peer.close()
