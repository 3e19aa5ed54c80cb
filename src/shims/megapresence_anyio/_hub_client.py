"""The transport of the hub link: one client WebSocket to the hub, driven by the core's actions.

``ConnectHub`` starts one attempt; whatever happens to it, exactly one
``HubLost`` follows (after a ``HubConnected`` if the upgrade succeeded), so the
core's link state can never disagree with the socket. A refused upgrade
(HTTP 401/403) is reported as close code 1008: the core then stops retrying.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import final
from urllib.parse import urlsplit

import anyio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, Request

from megapresence_core import CloseCode, Event, LocalUsageError
from megapresence_core.events import HubConnected, HubFrameReceived, HubLost

from ._config import SocketLimits
from ._session import WebSocketSession
from ._transport import SocketTransport, Spawn

__all__ = ["HubClient", "parse_ws_url"]


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """``ws://host:port/path`` -> (host, port, path); anything else is misuse."""
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise LocalUsageError(f"hub URL must look like ws://host:port/path, got {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


async def _connect(host: str, port: int) -> socket.socket:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"cannot resolve {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"connect to {host}:{port} failed") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
        except BaseException:
            sock.close()
            raise
    raise error


@final
class HubClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        dispatch: Callable[[Event], None],
        spawn: Spawn,
        limits: SocketLimits,
    ) -> None:
        self._host, self._port, self._path = parse_ws_url(url)
        self._token = token
        self._dispatch = dispatch
        self._spawn = spawn
        self._limits = limits
        self._session: WebSocketSession | None = None
        self._attempt: anyio.CancelScope | None = None

    @property
    def active(self) -> bool:
        """An attempt or a link is under way."""
        return self._attempt is not None

    def connect(self) -> None:
        self._spawn(self._run)

    def send(self, data: str) -> None:
        if self._session is not None:
            self._session.send_text(data)

    def close(self, code: int, reason: str) -> None:
        if self._session is not None:
            self._session.close(code, reason)
        elif self._attempt is not None:
            self._attempt.cancel()  # still connecting: give up on this attempt

    def keepalive(self, now: float) -> None:
        if self._session is not None:
            self._session.keepalive(now)

    async def _run(self) -> None:
        code: int | None = None
        reason = ""
        with anyio.CancelScope() as self._attempt:
            try:
                sock = await _connect(self._host, self._port)
            except OSError as exc:
                reason = f"connect failed: {exc}"
            else:
                code, reason = await self._handshake_and_run(sock)
        self._attempt = None
        self._session = None
        with anyio.CancelScope(shield=True):
            if reason == "" and code is None:
                reason = "connection attempt abandoned"
            self._dispatch(HubLost(now=anyio.current_time(), code=code, reason=reason))

    async def _handshake_and_run(self, sock: socket.socket) -> tuple[int | None, str]:
        transport = SocketTransport(
            sock, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        try:
            ws = WSConnection(ConnectionType.CLIENT)
            transport.write(
                ws.send(
                    Request(
                        host=f"{self._host}:{self._port}",
                        target=self._path,
                        extra_headers=[(b"authorization", f"Bearer {self._token}".encode())],
                    )
                )
            )
            with anyio.move_on_after(self._limits.handshake_timeout):
                while True:
                    data = await transport.receive()
                    if not data:
                        return None, "hub closed the connection during the upgrade"
                    ws.receive_data(data)
                    for event in ws.events():
                        if isinstance(event, AcceptConnection):
                            assert ws.connection is not None
                            return await self._run_session(transport, ws.connection)
                        if isinstance(event, RejectConnection):
                            refused = event.status_code in (401, 403)
                            return (
                                CloseCode.POLICY if refused else None,
                                f"hub refused the upgrade: HTTP {event.status_code}",
                            )
            return None, "hub upgrade timed out"
        finally:
            transport.abort()

    async def _run_session(
        self, transport: SocketTransport, ws: Connection
    ) -> tuple[int | None, str]:
        session = WebSocketSession(transport, ws, self._limits, anyio.current_time())
        self._session = session
        self._dispatch(HubConnected(now=anyio.current_time()))
        await session.run(
            lambda text: self._dispatch(HubFrameReceived(data=text, now=anyio.current_time()))
        )
        return session.close_code, session.close_reason
