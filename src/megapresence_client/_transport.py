"""One WebSocket connection over an anyio stream, spoken with wsproto (text messages only)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

#: What the client accepts in one message (a snapshot of a channel at its member cap fits).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class HandshakeRefusedError(Exception):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the server refused the WebSocket upgrade: HTTP {status}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Target:
    """Where to connect and with which credentials."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    cookies: tuple[tuple[str, str], ...] = ()

    def parts(self) -> tuple[str, int, bool, str, str]:
        """(host, port, tls, path?query, Host header) of the URL with the query added."""
        split = urlsplit(self.url)
        if split.scheme not in ("ws", "wss"):
            raise ValueError(f"a WebSocket URL is ws:// or wss://, not {self.url!r}")
        tls = split.scheme == "wss"
        host = split.hostname or ""
        if not host:
            raise ValueError(f"no host in {self.url!r}")
        port = split.port or (443 if tls else 80)
        query = urlencode([*parse_qsl(split.query, keep_blank_values=True), *self.query])
        target = urlunsplit(("", "", split.path or "/", query, ""))
        return host, port, tls, target, split.netloc

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(name.encode(), value.encode()) for name, value in self.headers]
        if self.cookies:
            cookie = "; ".join(f"{name}={value}" for name, value in self.cookies)
            headers.append((b"cookie", cookie.encode()))
        return headers


class Connection:
    """An open WebSocket: :meth:`receive` gives whole text messages, :meth:`send` sends one."""

    def __init__(self, stream: anyio.abc.ByteStream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._lock = anyio.Lock()
        self._parts: list[str] = []
        self._size = 0
        self._pending: list[Event] = []
        #: The close code and reason the server sent (None until it closed).
        self.close_code: int | None = None
        self.close_reason = ""

    @classmethod
    async def open(
        cls, target: Target, *, ssl_context: ssl.SSLContext | None, timeout: float
    ) -> Connection:
        """Connect and upgrade; raises ``HandshakeRefusedError`` or ``OSError``."""
        host, port, tls, path, netloc = target.parts()
        stream: anyio.abc.ByteStream
        with anyio.fail_after(timeout):
            if tls:
                stream = await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=ssl_context or ssl.create_default_context()
                )
            else:
                stream = await anyio.connect_tcp(host, port)
            try:
                ws = WSConnection(ConnectionType.CLIENT)
                await stream.send(
                    ws.send(Request(host=netloc, target=path, extra_headers=target.extra_headers()))
                )
                connection = cls(stream, ws)
                await connection._handshake()
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        return connection

    async def _handshake(self) -> None:
        status, body = 0, b""
        while True:
            data = await self._read()
            if data == b"":
                raise OSError("the server closed the connection during the upgrade")
            try:
                self._ws.receive_data(data)
            except RemoteProtocolError as exc:
                raise OSError(f"not a WebSocket upgrade answer: {exc}") from None
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    # Anything after the 101 in the same read is WebSocket data.
                    self._pending.extend(self._ws.events())
                    return
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise HandshakeRefusedError(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise HandshakeRefusedError(status, body)

    async def _read(self) -> bytes:
        try:
            return await self._stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return b""

    async def receive(self) -> str | None:
        """The next whole text message, or None once the connection ended
        (then ``close_code`` says how)."""
        while True:
            while self._pending:
                event = self._pending.pop(0)
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                    self._size += len(event.data)
                    if self._size > MAX_MESSAGE_BYTES:
                        await self.close(1009, "message too big")
                        self.close_code, self.close_reason = 1009, "message too big"
                        await anyio.aclose_forcefully(self._stream)
                        return None
                    if event.message_finished:
                        text = "".join(self._parts)
                        self._parts, self._size = [], 0
                        return text
                elif isinstance(event, Ping):
                    if self._ws.state is ConnectionState.OPEN:  # not once a close came
                        await self._write(self._encode(event.response()))
                elif isinstance(event, CloseConnection):
                    self.close_code, self.close_reason = event.code, event.reason or ""
                    if self._ws.state is ConnectionState.REMOTE_CLOSING:
                        await self._write(self._encode(event.response()))
                    await anyio.aclose_forcefully(self._stream)
                    return None
                elif isinstance(event, BytesMessage):
                    pass  # the protocol is text only; a binary message is not for us
            if self._ws.state is ConnectionState.CLOSED:
                return None
            data = await self._read()
            if data == b"":
                await anyio.aclose_forcefully(self._stream)
                return None
            self._ws.receive_data(data)
            self._pending.extend(self._ws.events())

    async def send(self, text: str) -> None:
        """Send one text message; raises ``ConnectionError`` if the connection is gone."""
        if self._ws.state is not ConnectionState.OPEN:
            raise ConnectionError("the connection is not open")
        await self._write(self._encode(TextMessage(data=text)))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (``receive`` then returns None when it ends)."""
        if self._ws.state is ConnectionState.OPEN:
            await self._write(self._encode(CloseConnection(code=code, reason=reason)))

    async def abort(self) -> None:
        await anyio.aclose_forcefully(self._stream)

    def _encode(self, event: Event) -> bytes:
        try:
            return self._ws.send(event)
        except LocalProtocolError as exc:  # the state moved (a close came) meanwhile
            raise ConnectionError(str(exc)) from None

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ConnectionError("the connection dropped") from exc
