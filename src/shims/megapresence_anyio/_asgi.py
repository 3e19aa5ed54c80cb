"""Mount a ``PresenceServer`` in an ASGI app (Starlette, FastAPI, ...) on uvicorn or Hypercorn.

An ASGI connection is one more kind of connection for the server: it goes
through the same path as a socket of its own listener (``ClientOpening.serve``
on its ``ConnectionHost``: the caps, the path and origin checks, ``authenticate``,
the core, the fault boundary) with an :class:`AsgiChannel` for its sending half and an
:class:`AsgiSession` for its life after the upgrade. What the ASGI server keeps
to itself is rebuilt here, at the message level (the ASGI spec gives an app no
control of pings, buffers or frames):

- **Refusals.** With the ``websocket.http.response`` extension (uvicorn,
  Hypercorn) a refusal is the documented HTTP status and body; without it
  (Daphne) a close before the accept, which the server answers with 403.
- **Close reasons** are sent only to a server of ASGI spec 2.3 or later
  (``scope["asgi"]["spec_version"]``); an older one gets the code alone.
- **Limits.** The ASGI server reassembles messages (up to its own 16 MiB);
  ``SocketLimits.max_message_bytes`` is checked here, 1009 past it.
- **The send queue.** ``websocket.send`` has no flow control, so each
  connection has its own bounded queue and one writer task: a message that
  would pass ``max_send_buffer`` behind the one in flight closes the slow
  consumer with 1013, as on the server's own sockets (one rule for every
  writer: ``SendBuffer``). A broadcast's text is queued as it is: no frame is
  built for ASGI connections.
- **Keepalive.** uvicorn pings every 20 s by default and reports a dead peer as
  a disconnect; Hypercorn never pings unless its ``websocket_ping_interval``
  is set. An app cannot send a WebSocket ping through ASGI, so for a server
  that does not ping, ``heartbeat`` sends an application message after
  ``ping_interval`` of silence, and a client that says nothing within
  ``ping_timeout`` of it is closed with 1011 (any message from the client
  counts as an answer). Without ``heartbeat`` the ASGI server's pings are
  relied on.

The ASGI server owns the connection's task; its writer task lives in a task
group of that connection, so nothing of a connection outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Final, Protocol, final

import anyio

from megapresence_core import CloseCode, LocalUsageError
from megapresence_core.errors import truncate_reason

from ._config import SocketLimits
from ._guard import Guard
from ._http import HandshakeRequest, default_body
from ._ops import Response
from ._outgoing import Outgoing, utf8_len
from ._session import OnText, Session, SessionBase
from ._transport import SendBuffer

__all__ = [
    "ASGIApp",
    "AsgiChannel",
    "AsgiHost",
    "AsgiOpening",
    "AsgiSession",
    "PresenceASGI",
    "serve_asgi",
]

logger = logging.getLogger("megapresence")

Scope = MutableMapping[str, Any]
AsgiMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[AsgiMessage]]
Send = Callable[[AsgiMessage], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_NO_STORE: Final = [(b"cache-control", b"no-store")]

#: Close reasons on ``websocket.close`` came with ASGI spec 2.3.
_REASONS_SINCE: Final = (2, 3)


def _spec_version(scope: Scope) -> tuple[int, ...]:
    text = str((scope.get("asgi") or {}).get("spec_version") or "2.0")
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (2, 0)


def request_of(scope: Scope) -> HandshakeRequest:
    """The request of an ``http`` or ``websocket`` scope, as ``authenticate`` sees it.

    The path is the one the client sent (``raw_path`` when the server gives it,
    so an ns is the same whether served by ``listen`` or by ASGI, mounted under a
    prefix or not); ``remote`` is the scope's ``client``, which the ASGI server
    has already taken from a trusted proxy's headers if told to."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").partition("?")[0] if raw else scope["path"]
    client = scope.get("client")
    return HandshakeRequest(
        method=scope.get("method", "GET"),
        path=path,
        query_string=bytes(scope.get("query_string", b"")).decode("latin-1"),
        headers=tuple(
            (sys.intern(bytes(name).decode("latin-1").lower()), bytes(value).decode("latin-1"))
            for name, value in scope.get("headers", ())
        ),
        remote=(str(client[0]), int(client[1])) if client else None,
        http_version=str(scope.get("http_version", "1.1")),
    )


@final
class AsgiChannel(SendBuffer):
    """The sending half of one ASGI WebSocket: a bounded queue and its writer task.

    The queue holds text messages (``write``; sent as ``websocket.send``, their
    UTF-8 size counted against ``max_buffer`` by the rule of every writer) and
    control messages (``post``: the accept, a refusal, the close; never counted,
    never dropped by :meth:`truncate`).
    """

    __slots__ = ("_flushed", "_idle", "_in_flight", "_queue", "_send", "_wake", "on_abort")

    def __init__(self, send: Send, max_buffer: int) -> None:
        super().__init__(max_buffer)
        self._send = send
        self._queue: deque[Outgoing | AsgiMessage] = deque()
        self._in_flight = 0
        self._idle = False
        self._wake = anyio.Event()
        self._flushed: anyio.Event | None = None
        #: Called by :meth:`abort`: the session stops reading.
        self.on_abort: Callable[[], None] | None = None

    def held(self) -> Iterator[object]:
        return (item.text for item in self._queue if isinstance(item, Outgoing))

    def write(self, data: Outgoing, *, force: bool = False) -> bool:
        """Queue one text message; False if it would break the send-buffer rule. The
        head of the queue counts as in flight: the writer takes it next, whole (a big
        snapshot right after the ``subscribed`` reply, both queued in one go before the
        writer runs, is not taken for a slow consumer)."""
        if self._closed:
            return True
        if not force and self._pending:
            queue = self._queue
            head = self._in_flight or (
                queue[0].size if queue and isinstance(queue[0], Outgoing) else 0
            )
            if not self._accepts(data.size, head):
                return False
        self._queue.append(data)
        self._pending += data.size
        self._wake_writer()
        return True

    def post(self, message: AsgiMessage) -> None:
        """Queue a control message, in order with the frames."""
        if not self._closed:
            self._queue.append(message)
            self._wake_writer()

    def deny(
        self, status: int, body: bytes, content_type: str, headers: tuple[tuple[str, str], ...]
    ) -> None:
        """Refuse the upgrade with ``status`` (the ``websocket.http.response`` extension)."""
        self.post(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *((name.encode("latin-1"), value.encode("latin-1")) for name, value in headers),
                ],
            }
        )
        self.post({"type": "websocket.http.response.body", "body": body})

    def _wake_writer(self) -> None:
        if self._idle:
            self._idle = False
            self._wake.set()

    def truncate(self) -> None:
        """Drop every queued frame (the one in flight is the ASGI server's already);
        control messages stay."""
        self._queue = deque(item for item in self._queue if not isinstance(item, Outgoing))
        self._pending = self._in_flight

    def abort(self) -> None:
        """Stop: queued frames are dropped, control messages already queued still go
        out (a refusal, a close), and the session stops reading."""
        if self._closed:
            return
        self.truncate()
        self._closed = True
        self._wake_writer()
        if self.on_abort is not None:
            self.on_abort()

    async def drain_and_close(self, timeout: float) -> None:
        """Let the queue go out (within ``timeout``), then stop the writer."""
        if self._queue or self._in_flight:
            self._flushed = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._flushed.wait()
        self._closed = True
        self._queue.clear()
        self._wake_writer()

    async def run_writer(self) -> None:
        """Send what is queued, in order, until closed. A send the ASGI server refuses
        means the client is gone: the channel stops."""
        send, queue = self._send, self._queue
        try:
            while True:
                while self._queue:
                    queue = self._queue  # truncate() may have replaced it
                    item = queue.popleft()
                    if isinstance(item, Outgoing):
                        self._in_flight = item.size
                        await send({"type": "websocket.send", "text": item.text})
                        self._pending -= self._in_flight
                        self._drained += self._in_flight
                        self._in_flight = 0
                    else:
                        await send(item)
                if self._flushed is not None:
                    self._flushed.set()
                if self._closed:
                    return
                self._wake = anyio.Event()
                self._idle = True
                await self._wake.wait()
        except Exception as exc:  # the ASGI server's word that the client is gone
            logger.debug("ASGI send failed, the client is gone: %s: %s", type(exc).__name__, exc)
            self._in_flight = 0
            self.abort()


@final
class AsgiSession(SessionBase):
    """The life of one ASGI WebSocket after its accept."""

    __slots__ = ("_channel", "_heartbeat", "_reading", "_reasons", "_receive")

    def __init__(
        self,
        channel: AsgiChannel,
        receive: Receive,
        limits: SocketLimits,
        now: float,
        *,
        reasons: bool,
        heartbeat: Outgoing | None,
    ) -> None:
        super().__init__(channel, limits, now)
        self._channel = channel
        self._receive = receive
        self._reasons = reasons
        self._heartbeat = heartbeat
        self._reading: anyio.CancelScope | None = None
        channel.on_abort = self._stop

    def _send_close(self, code: int, reason: str) -> None:
        message: AsgiMessage = {"type": "websocket.close", "code": code}
        if self._reasons:
            message["reason"] = truncate_reason(reason)
        self._channel.post(message)

    def send(self, message: Outgoing, now: float) -> None:
        """Queue the message's text."""
        if self.closing_since is None and not self._channel.write(message):
            self._overflow(now)

    def _pingable(self) -> bool:
        return self._heartbeat is not None

    def _ping(self, now: float) -> None:
        assert self._heartbeat is not None
        self.send(self._heartbeat, now)

    def _stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()

    async def run(self, on_text: OnText) -> None:
        """Receive until the client disconnects (or the channel is aborted)."""
        receive = self._receive
        with anyio.CancelScope() as self._reading:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    self._ended(int(message.get("code") or 1005), message.get("reason") or "")
                    return
                self.heard = True
                if kind != "websocket.receive" or self.closing_since is not None:
                    continue  # nothing counts once we are closing
                text = message.get("text")
                if text is None:
                    self.close(
                        CloseCode.UNSUPPORTED_DATA,
                        "binary messages are not accepted",
                        anyio.current_time(),
                    )
                elif not self._too_big(utf8_len(text)):
                    result = on_text(text)
                    if result is not None:
                        await result
        self._ended(1006, "")  # aborted: the close timed out, or the client is gone


class AsgiGuard(Guard[AsgiChannel]):
    """A guard whose HTTP answers are ASGI refusals."""

    __slots__ = ("_extension",)

    def __init__(self, channel: AsgiChannel, scope: Scope) -> None:
        client = scope.get("client")
        super().__init__(channel, (str(client[0]), int(client[1])) if client else None)
        self._extension = "websocket.http.response" in (scope.get("extensions") or {})

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        if self._extension:
            self.transport.deny(status, default_body(status, body), content_type, headers)
        else:  # the server turns a close before the accept into 403
            self.transport.post({"type": "websocket.close", "code": CloseCode.POLICY})


class AsgiOpening(Protocol):
    """How the server opens a connection whose request was read here
    (``ClientOpening.serve``: the caps, the checks, ``authenticate``, the core)."""

    def serve(
        self,
        guard: Guard[Any],
        request: HandshakeRequest,
        session: Callable[[float], Session],
        accept: Callable[[], None],
    ) -> Awaitable[None]: ...


class AsgiHost(Protocol):
    """What the ASGI path needs of its server. ``PresenceServer`` is the one; it is
    named here rather than imported, since ``_server.py`` builds on this module."""

    @property
    def limits(self) -> SocketLimits: ...

    @property
    def running(self) -> bool: ...

    @property
    def opening(self) -> AsgiOpening: ...

    def serves_path(self, path: str) -> bool: ...

    def answers_http(self, path: str) -> bool: ...

    def http_answer(self, request: HandshakeRequest) -> Response: ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(self, *exc_info: object) -> bool | None: ...


NOT_RUNNING: Final = (
    "PresenceServer is not running: run it for the app's lifetime with "
    "server.asgi(app) given to the ASGI server, FastAPI(lifespan=server.lifespan), or "
    "'async with server:' in your own lifespan"
)


async def serve_asgi(
    server: AsgiHost,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    heartbeat: str | None = None,
) -> None:
    """Serve one ASGI WebSocket connection with ``server`` (see the module docstring)."""
    if scope["type"] != "websocket":
        raise LocalUsageError(f"serve_asgi serves WebSocket scopes, not {scope['type']!r}")
    if (await receive())["type"] != "websocket.connect":
        return  # gone before it asked
    channel = AsgiChannel(send, server.limits.max_send_buffer)
    guard = AsgiGuard(channel, scope)
    request = request_of(scope)
    guard.path = request.path
    reasons = _spec_version(scope) >= _REASONS_SINCE
    beat = Outgoing(heartbeat) if heartbeat is not None else None

    def session(now: float) -> AsgiSession:
        return AsgiSession(channel, receive, server.limits, now, reasons=reasons, heartbeat=beat)

    def accept() -> None:
        channel.post({"type": "websocket.accept"})

    running = server.running
    async with anyio.create_task_group() as writer:
        writer.start_soon(channel.run_writer)
        if running:
            # The host drains the channel at its end.
            await server.opening.serve(guard, request, session, accept)
        else:
            guard.respond(503, b"megapresence is not running\n")
            await channel.drain_and_close(server.limits.close_timeout)
        writer.cancel_scope.cancel()  # a send still blocked after the drain's timeout
    if not running:
        raise LocalUsageError(NOT_RUNNING)


async def _lifespan_only(scope: Scope, receive: Receive, send: Send) -> None:
    """The lifespan of an app that has nothing to start but the server."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@final
class PresenceASGI:
    """A ``PresenceServer`` as an ASGI app, optionally in front of another one.

    WebSocket connections on the server's ``paths`` are served by it; plain
    HTTP requests for its pages and for ``/metrics``, ``/healthz``, ``/readyz``
    are answered by it; everything else goes to ``other_app`` (404, or 403 for
    a WebSocket, without one). Given to the ASGI server as the app, it runs the
    ``PresenceServer`` from the ASGI lifespan, around ``other_app``'s own
    (started before it, stopped after it). Mounted inside another app (whose
    sub-apps get no lifespan), run the server from that app's lifespan:
    ``FastAPI(lifespan=server.lifespan)``.
    """

    def __init__(
        self,
        server: AsgiHost,
        other_app: ASGIApp | None = None,
        *,
        heartbeat: str | None = None,
    ) -> None:
        self.server = server
        self.other_app = other_app
        self.heartbeat = heartbeat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        request = request_of(scope)
        server, other = self.server, self.other_app
        if kind == "websocket" and (server.serves_path(request.path) or other is None):
            await serve_asgi(server, scope, receive, send, heartbeat=self.heartbeat)
        elif kind == "http" and (other is None or server.answers_http(request.path)):
            await _respond(send, request, server.http_answer(request))
        elif other is not None:
            await other(scope, receive, send)
        else:
            raise LocalUsageError(f"PresenceASGI: no app for {kind!r} scopes")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the server around the other app's lifespan: entered at startup, before the
        other app's startup; left after its shutdown."""
        server = self.server
        stack = contextlib.AsyncExitStack()

        async def receive_() -> AsgiMessage:
            message = await receive()
            if message["type"] == "lifespan.startup" and not server.running:
                try:
                    await stack.enter_async_context(server)
                except Exception as exc:
                    await send(
                        {
                            "type": "lifespan.startup.failed",
                            "message": f"megapresence: {type(exc).__name__}: {exc}",
                        }
                    )
                    raise
            return message

        async def send_(message: AsgiMessage) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await stack.aclose()
            await send(message)

        try:
            await (self.other_app or _lifespan_only)(scope, receive_, send_)
        finally:
            with anyio.CancelScope(shield=True):
                await stack.aclose()


async def _respond(send: Send, request: HandshakeRequest, response: Response) -> None:
    body = default_body(response.status, response.body)
    own = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", response.content_type.encode("latin-1")),
                *([] if response.status == 304 else [(b"content-length", str(len(body)).encode())]),
                *([] if any(name == b"cache-control" for name, _ in own) else _NO_STORE),
                *own,
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if request.method == "HEAD" else body})
