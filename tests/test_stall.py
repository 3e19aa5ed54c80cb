"""A write that makes no progress is a slow consumer too (issue 17, item 8).

A peer that reads nothing but stays heard (it answers pings, or writes) held
what was queued for it for as long as it stayed: now bytes that have not moved
for ``send_stall_timeout`` close it with 1013, and the send-queue metric
counts the whole buffers a queue keeps alive, not only the bytes left to send.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
import pytest

from megapresence_anyio import Client, PresenceServer, SocketLimits
from megapresence_anyio._stats import held_bytes

from .socket_helpers import running_server, wait_for
from .test_loop_starters import silent_client

pytestmark = pytest.mark.anyio

BIG = 4 * 1024 * 1024


@asynccontextmanager
async def silent_reader(
    limits: SocketLimits,
) -> AsyncIterator[tuple[PresenceServer, Client, socket.socket]]:
    """A server with ``limits`` and its one client, whose socket reads nothing yet."""
    async with running_server(limits=limits) as (server, _url):
        port = server.port
        assert port is not None
        sock = await anyio.to_thread.run_sync(silent_client, port)
        try:
            await wait_for(lambda: len(server.clients) == 1)
            (client,) = server.clients
            yield server, client, sock
        finally:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


async def test_a_silent_reader_of_a_big_message_is_closed_and_its_memory_counted() -> None:
    limits = SocketLimits(send_stall_timeout=0.5, close_timeout=0.5, max_message_bytes=BIG)
    async with silent_reader(limits) as (server, client, _sock):
        client.send("x" * BIG)  # one frame: far more than the kernel takes
        transport = client.session.transport
        await wait_for(lambda: transport.queued > 0)
        # What is kept alive is the whole frame, though part of it was sent.
        held = held_bytes([transport])
        assert held > BIG > transport.queued
        assert (
            next(
                value
                for metric in server._health.metrics()
                if metric.name == "megapresence_send_queue_bytes"
                for _, value in metric.samples
            )
            == held
        )
        # The peer stays (the keepalive would hear it), but nothing moves: 1013.
        with anyio.fail_after(3):
            while client.session.is_open:
                await anyio.sleep(0.05)
        assert client.session.close_code == 1013
        await wait_for(lambda: not server.clients, timeout=3)
        assert held_bytes([transport]) == 0


async def test_a_reader_that_reads_slowly_is_not_a_stall() -> None:
    limits = SocketLimits(send_stall_timeout=0.5, max_message_bytes=BIG)
    async with silent_reader(limits) as (_server, client, sock):
        client.send("y" * BIG)

        def read_slowly() -> int:
            """Through a 4 KiB receive buffer: the queue drains slowly, but it moves."""
            total = 0
            sock.settimeout(5)
            while total < BIG:
                total += len(sock.recv(4096))
            return total

        received = await anyio.to_thread.run_sync(read_slowly)
        assert received >= BIG
        assert client.session.is_open
