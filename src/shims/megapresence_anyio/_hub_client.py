"""The transport of the hub link: one client WebSocket to the hub, driven by the core's actions.

``ConnectHub`` starts one attempt; whatever happens to it, exactly one
``HubLost`` follows (after a ``HubConnected`` if the upgrade succeeded), so the
core's link state can never disagree with the socket. A refused upgrade is
reported with its HTTP status (``HubLost.status``): the core stops retrying
after 401 (a bad token) only, and backs off and retries after anything else.
Anything else that goes wrong (an address that answers garbage or a bad 101,
a hook or a bug raising) is one lost link: the core logs it and retries with
backoff, and the process goes on.

A ``wss://`` hub is reached over TLS (the system's trust store unless an
``ssl_context`` is given), through the queued writer: see ``_tls.py``.

If the core refuses the final ``HubLost`` (a bug), the link cannot come back on
its own: that is logged with its traceback, :attr:`HubClient.faulted` says so
(``/readyz`` is not ready) and the process serves on.

``handshake_timeout`` bounds the upgrade only. Once the hub has answered 101
the link lives as long as the core wants it (the core's own deadlines, a
``REGISTERED`` in time and heartbeats, decide when it is dead).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
from typing import final
from urllib.parse import urlsplit

import anyio
import h11
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import ProtocolError

from megapresence_core import CloseCode, Event, LocalUsageError
from megapresence_core.events import HubConnected, HubFrameReceived, HubLost

from ._config import SocketLimits
from ._hub_batch import FrameBatch
from ._session import WebSocketSession
from ._tls import client_context
from ._transport import SocketTransport, Spawn, StreamTransport, Transport

__all__ = ["HandshakeError", "HubClient", "UpgradeReader", "parse_ws_url"]

logger = logging.getLogger("megapresence")


def parse_ws_url(url: str) -> tuple[str, int, str, bool]:
    """``ws://host:port/path`` or ``wss://...`` -> (host, port, path, tls); anything else
    is misuse."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise LocalUsageError(
            f"hub URL must look like ws://host:port/path or wss://..., got {url!r}"
        ) from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise LocalUsageError(
            f"hub URL must look like ws://host:port/path or wss://..., got {url!r}"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    tls = parts.scheme == "wss"
    return parts.hostname, port or (443 if tls else 80), path, tls


class HandshakeError(Exception):
    """The hub's answer to the upgrade is not an HTTP response we can act on."""


@final
class UpgradeReader:
    """Sans-IO: our upgrade request, and the hub's answer read as it arrives.

    ``feed`` returns the open connection once the hub accepts, the HTTP
    status if it refuses, or None for more; anything else (garbage, a bad
    101, the end of the stream) raises :class:`HandshakeError`, and nothing
    but that escapes.
    """

    __slots__ = ("_ws", "request")

    def __init__(self, host: str, port: int, path: str, token: str) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self.request = self._ws.send(
            Request(
                host=f"{host}:{port}",
                target=path,
                extra_headers=[(b"authorization", f"Bearer {token}".encode())],
            )
        )

    def feed(self, data: bytes) -> Connection | int | None:
        if not data:
            raise HandshakeError("hub closed the connection during the upgrade")
        ws = self._ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    assert ws.connection is not None
                    return ws.connection
                if isinstance(event, RejectConnection):
                    return event.status_code
        except (ProtocolError, h11.ProtocolError, ValueError) as exc:
            # ValueError: wsproto decodes some header values as ASCII, unchecked.
            raise HandshakeError(f"hub answered the upgrade with a bad response: {exc}") from None
        return None


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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port, self._path, tls = parse_ws_url(url)
        if ssl_context is not None and not tls:
            raise LocalUsageError(f"a TLS context for the hub link needs a wss:// URL, got {url!r}")
        self._ssl = (ssl_context or client_context()) if tls else None
        #: The core refused the link's last event: it will not come back by itself.
        self.faulted = False
        self._token = token
        self._dispatch = dispatch
        self._spawn = spawn
        self._limits = limits
        self._session: WebSocketSession | None = None
        #: Frames marked ``batch`` in this turn (set with the session).
        self._batch: FrameBatch | None = None
        self._attempt: anyio.CancelScope | None = None

    @property
    def active(self) -> bool:
        """An attempt or a link is under way."""
        return self._attempt is not None

    def connect(self) -> None:
        self._spawn(self._run)

    def send(self, data: str, *, batch: bool = False) -> None:
        """Send a frame now, or (``batch``) with the others of this turn."""
        if self._session is None or self._batch is None:
            return
        if batch:
            self._batch.add(data)
        else:
            self._batch.flush()  # what this turn held goes first
            self._session.send_text(data, anyio.current_time())

    def close(self, code: int, reason: str) -> None:
        if self._session is not None and self._batch is not None:
            self._batch.flush()
            self._session.close(code, reason, anyio.current_time())
        elif self._attempt is not None:
            self._attempt.cancel()  # still connecting: give up on this attempt

    def keepalive(self, now: float) -> None:
        if self._session is not None:
            self._session.keepalive(now)

    async def _open(self) -> Transport:
        """Connect (and, for wss://, do the TLS handshake) within the handshake timeout."""
        spawn, max_buffer = self._spawn, self._limits.max_send_buffer
        if self._ssl is None:
            sock = await _connect(self._host, self._port)
            return SocketTransport(sock, spawn=spawn, max_buffer=max_buffer)
        try:
            with anyio.fail_after(self._limits.handshake_timeout):
                stream = await anyio.connect_tcp(
                    self._host,
                    self._port,
                    tls=True,
                    ssl_context=self._ssl,
                    tls_hostname=self._host,
                    tls_standard_compatible=False,
                )
        except TimeoutError:
            raise OSError(f"TLS connect to {self._host}:{self._port} timed out") from None
        except (ssl.SSLError, anyio.BrokenResourceError) as exc:
            raise OSError(f"TLS handshake with {self._host}:{self._port} failed: {exc}") from exc
        return StreamTransport(stream, spawn=spawn, max_buffer=max_buffer)

    async def _run(self) -> None:
        """One attempt, behind the link's fault boundary: whatever it raises is one
        ``HubLost`` (and a retry, as the core decides), never the process."""
        code: int | None = None
        status: int | None = None
        reason = "connection attempt abandoned"
        with anyio.CancelScope() as self._attempt:
            try:
                transport = await self._open()
            except OSError as exc:
                reason = f"connect failed: {exc}"
            else:
                try:
                    code, reason, status = await self._handshake_and_run(transport)
                except HandshakeError as exc:
                    reason = str(exc)
                except Exception as exc:  # a bug: say so loudly, then retry as for a bad peer
                    logger.error(
                        "hub link to %s:%d%s closed with 1011: %s: %s",
                        self._host,
                        self._port,
                        self._path,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )
                    if self._session is not None:
                        now = anyio.current_time()
                        self._session.close(CloseCode.INTERNAL_ERROR, "internal error", now)
                    code, reason = CloseCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"
                finally:
                    with anyio.CancelScope(shield=True):
                        await transport.drain_and_close(self._limits.close_timeout)
        self._attempt = None
        self._session = self._batch = None
        with anyio.CancelScope(shield=True):
            try:
                self._dispatch(
                    HubLost(now=anyio.current_time(), code=code, reason=reason, status=status)
                )
            except Exception as exc:
                self.faulted = True
                logger.error(
                    "the hub link's loss could not be handled; it will not reconnect by "
                    "itself (not ready): %s: %s",
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )

    async def _handshake_and_run(self, transport: Transport) -> tuple[int | None, str, int | None]:
        """The link's close code and reason, and the HTTP status of a refused upgrade."""
        reader = UpgradeReader(self._host, self._port, self._path, self._token)
        transport.write(reader.request)
        answer: Connection | int | None = None
        with anyio.move_on_after(self._limits.handshake_timeout):
            while answer is None:
                answer = reader.feed(await transport.receive())
        if answer is None:
            return None, "hub upgrade timed out", None
        if isinstance(answer, int):
            return None, f"hub refused the upgrade: HTTP {answer}", answer
        return (*await self._run_session(transport, answer), None)

    async def _run_session(self, transport: Transport, ws: Connection) -> tuple[int | None, str]:
        session = WebSocketSession(transport, ws, self._limits, anyio.current_time())
        self._session = session
        self._batch = FrameBatch(
            lambda text: session.send_text(text, anyio.current_time()),
            self._limits.max_message_bytes,
            self._spawn,
        )
        self.faulted = False
        self._dispatch(HubConnected(now=anyio.current_time()))
        await session.run(
            lambda text: self._dispatch(HubFrameReceived(data=text, now=anyio.current_time()))
        )
        return session.close_code, session.close_reason
