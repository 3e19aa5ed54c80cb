"""One socket cannot take the event loop from the others (issue 17, item 6).

A client that writes small valid frames as fast as the link takes them and never
reads must not delay another client's round trip: the read loop yields once per
chunk it reads and every few messages, on asyncio and trio alike.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from megapresence_anyio import handle_command

from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


def masked_text(payload: bytes) -> bytes:
    """One client frame (masked, final, text) of under 126 bytes."""
    mask = os.urandom(4)
    return (
        bytes((0x81, 0x80 | len(payload)))
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def upgraded(port: int, path: str) -> socket.socket:
    """A blocking socket past its upgrade, with nothing read after the 101."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@asynccontextmanager
async def flooding(port: int, path: str, frame: bytes) -> AsyncIterator[None]:
    """A thread writing ``frame`` over and over on an upgraded socket that never reads."""
    sock = await anyio.to_thread.run_sync(upgraded, port, path)
    burst = frame * (65536 // len(frame))
    stop = threading.Event()

    def write() -> None:
        try:
            while not stop.is_set():
                sock.sendall(burst)
        except OSError:
            pass  # closed by the server (a rate limit, a slow consumer): the flood ends

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        sock.close()
        await anyio.to_thread.run_sync(thread.join, 5)


async def worst_round_trip(client: Client, seconds: float) -> float:
    """The slowest of the pings ``client`` gets answered within ``seconds``."""

    def measure() -> float:
        worst = 0.0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.monotonic()
            assert client.ws.ping().wait(30)
            worst = max(worst, time.monotonic() - start)
            time.sleep(0.01)
        return worst

    return await anyio.to_thread.run_sync(measure)


@pytest.mark.parametrize(
    "frame",
    [
        masked_text(json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode()),
        bytes((0x89, 0x80)) + os.urandom(4),  # an empty ping (its pongs are never read)
    ],
    ids=["metadata", "ping"],
)
async def test_a_socket_writing_at_line_rate_does_not_delay_another(frame: bytes) -> None:
    async with running_server(on_message=handle_command) as (server, url):
        port = server.port
        assert port is not None
        bystander = await Client.connect(f"{url}/ws?user=bob&channels=lobby")
        async with flooding(port, "/ws?user=mallory", frame):
            await wait_for(lambda: len(server.clients) == 2)
            worst = await worst_round_trip(bystander, 2.0)
        # Generous: the flood's writer thread, this probe and the server share one process
        # (and its GIL) on a 2-core machine; a round trip of 0.5 s was seen under CI. Without
        # the yields no ping is answered while the flood lasts (30 s, then the wait fails).
        # The process test (test_fairness_processes.py) holds the server alone to 0.5 s.
        assert worst < 2.0, f"a round trip took {worst:.3f} s beside the flood"
        await bystander.close()
