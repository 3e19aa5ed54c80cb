"""Helpers for real-socket tests: servers on the test's backend, clients from another library.

The client is the independent ``websockets`` library (its synchronous client,
driven from worker threads), so the same test runs unchanged on asyncio and
trio and nothing on the client side shares code with the server.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from megapresence_anyio import HandshakeRequest, Identity, PresenceServer, Refusal
from megapresence_core import PresenceConfig
from megapresence_core.config import HistoryConfig

#: The tests' channel streams: epochs ``boot.1``, ``boot.2``... in the order channels start.
HISTORY = HistoryConfig(boot_id="boot")


def query_login(request: HandshakeRequest) -> Identity | Refusal | None:
    """?user=U&session=S&channels=a,b; no user means an anonymous connection."""
    user = request.query.get("user")
    if user is None:
        return None
    if user == "refused":
        return Refusal(status=401, reason="no")
    channels = tuple(c for c in request.query.get("channels", "").split(",") if c)
    return Identity(
        user_id=user, session_id=request.query.get("session", user + "-s"), channels=channels
    )


@asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[tuple[PresenceServer, str]]:
    options.setdefault("paths", None)
    # These tests watch sockets, deliveries and closes: a closed session leaves at once
    # here (the core's tests cover the leave grace).
    options.setdefault("presence", PresenceConfig(leave_grace=0, history=HISTORY))
    async with PresenceServer(options.pop("authenticate", query_login), **options) as server:
        port = await server.listen()
        yield server, f"ws://127.0.0.1:{port}"


class Client:
    """A ``websockets`` client whose blocking calls run in a worker thread."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, **options: Any) -> Client:
        options.setdefault("open_timeout", 5)
        # Entered as a context manager, the form websockets asks for; closed by close().
        ws = await anyio.to_thread.run_sync(lambda: connect(url, **options).__enter__())
        return cls(ws)

    async def send(self, message: Any, text: bool | None = None) -> None:
        await anyio.to_thread.run_sync(lambda: self.ws.send(message, text=text))

    async def recv(self, timeout: float = 5) -> str:
        message = await anyio.to_thread.run_sync(lambda: self.ws.recv(timeout))
        assert isinstance(message, str)
        return message

    async def recv_json(self, timeout: float = 5) -> Any:
        return json.loads(await self.recv(timeout))

    async def silent(self, timeout: float = 0.3) -> bool:
        """True if nothing arrives within ``timeout``."""
        try:
            await anyio.to_thread.run_sync(lambda: self.ws.recv(timeout))
        except TimeoutError:
            return True
        return False

    async def closed(self, timeout: float = 10) -> tuple[int | None, str]:
        """Read until the server closes; return the close code and reason it sent."""

        def drain() -> tuple[int | None, str]:
            try:
                while True:
                    self.ws.recv(timeout)
            except ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")

        return await anyio.to_thread.run_sync(drain)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self.ws.close)


async def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


# ----------------------------------------------------------- raw WebSocket client


class RawClient:
    """A hand-rolled client for what ``websockets`` refuses to send (bad frames, silence)."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        #: The server's answer to the upgrade (status line and headers).
        self.head = b""

    @classmethod
    async def connect(cls, port: int, path: str = "/ws", headers: str = "") -> RawClient:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        client = cls(stream)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
            ).encode()
        )
        client.head = await client.read_until(b"\r\n\r\n")
        assert client.head.startswith(b"HTTP/1.1 101"), client.head
        return client

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stream.aclose()

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = await self.stream.receive()
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.stream.receive()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def frame(self) -> tuple[int, bytes]:
        """The next (opcode, payload) from the server (server frames are unmasked)."""
        first, payload = await self.raw_frame()
        return first & 0x0F, payload

    async def raw_frame(self) -> tuple[int, bytes]:
        """The next server frame: its first byte (FIN, RSV bits, opcode) and its payload."""
        first, second = await self.read_exactly(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.read_exactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.read_exactly(8))
        return first, await self.read_exactly(size)

    async def send_frame(self, first_byte: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        await self.stream.send(bytes((first_byte, 0x80 | len(payload))) + mask + masked)

    async def close_code(self) -> int:
        """Skip frames until a close frame; return its code."""
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])


async def http_status(port: int, request: bytes) -> bytes:
    """Send raw request bytes; return the status line of the answer."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(5):
            while b"\r\n" not in data:
                chunk = await stream.receive()
                data += chunk
        return data.split(b"\r\n", 1)[0]


async def http_exchange(port: int, request: str) -> tuple[str, dict[str, str], bytes]:
    """One request over a raw socket: (status line, headers, body) once the server closes.
    A header sent twice fails the test."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request.encode())
        data = b""
        with anyio.fail_after(10):
            try:
                while True:
                    data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice"
        headers[name.lower()] = value.strip()
    return status, headers, body


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
)


async def upgrade_answer(port: int, headers: str = "", path: str = "/ws") -> bytes:
    """The status line answering a valid upgrade request with ``headers`` added."""
    return await http_status(port, UPGRADE.format(path=path, headers=headers).encode())
