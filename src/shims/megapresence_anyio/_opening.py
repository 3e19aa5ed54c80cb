"""``ClientOpening``: how a client connection opens, runs and closes, for every kind of socket.

``PresenceServer`` gives its ``ConnectionHost`` (``_host.py``) the four steps of a
client connection, and this module is them. Opening: the path, origin and caps
checks; ``authenticate`` within the handshake deadline; then, in one step with no
await, the core's ``ConnectionOpened`` and ``SessionJoined`` and the 101 (so an
identity the core refuses gets an HTTP status, never a 101 and a close). Opened:
``on_open``, then the request's headers go unless they are kept. Running: the read
loop, each message through ``on_message``. Closed: out of the core, then
``on_close``. Every awaited hook is bounded by ``SocketLimits.hook_timeout``.

A socket of the server's own listener is read here (:meth:`ClientOpening.handshake`,
which also answers the plain HTTP requests: the pages, the JavaScript client and the
ops endpoints); an ASGI connection arrives read and goes through
:meth:`ClientOpening.serve`, the same path from the checks on. The connection's
handle (``Client``) is made by the server's factory, so this module does not
import the server back.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast, final

import anyio
import attrs

from megapresence_core import (
    Action,
    CloseConnection,
    ConnectionClosed,
    ConnectionOpened,
    Event,
    Presence,
    SessionJoined,
)

from ._background import Background
from ._config import SocketLimits
from ._deflate import negotiate
from ._guard import Guard
from ._host import ConnectionHost
from ._http import (
    HandshakeRequest,
    bad_escape,
    extension_offers,
    has_dot_segment,
    server_connection,
    write_upgrade,
)
from ._ops import OpsEndpoints, Response, respond_with
from ._session import Session, WebSocketSession
from ._static import CLIENT_PATH, static_answer
from ._stats import Stats
from ._transport import Transport
from ._types import Authenticator, Identity, Refusal
from ._upgrade import read_upgrade

__all__ = [
    "ClientFactory",
    "ClientOpening",
    "Hook",
    "HookTimeoutError",
    "MessageHook",
    "Opened",
    "matches",
]

logger = logging.getLogger("megapresence")


class Opened(Hashable, Protocol):
    """What the opening needs of a connection's handle (``Client``)."""

    request: HandshakeRequest
    session: Session

    @property
    def ns(self) -> str: ...


C = TypeVar("C", bound=Opened)

#: ``hook(client)`` (``on_open``, ``on_close``) and ``on_message(client, text)``.
Hook = Callable[[C], Awaitable[None] | None]
MessageHook = Callable[[C, str], Awaitable[None] | None]
#: Makes a connection's handle once it is let in: request, identity, session, guard.
ClientFactory = Callable[[HandshakeRequest, Identity | None, Session, Guard[Any]], C]


def matches(path: str, paths: Collection[str] | None) -> bool:
    """Whether ``path`` is one of ``paths`` (a path ending in ``/`` is a prefix; None: any)."""
    if has_dot_segment(path):
        return False
    if paths is None:
        return True
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in paths)


@final
class ClientOpening(Generic[C]):
    """The steps of one server's client connections, and the host that runs them."""

    def __init__(
        self,
        authenticate: Authenticator,
        *,
        client: ClientFactory[C],
        presence: Presence,
        clients: set[C],
        perform: Callable[[list[Action]], None],
        dispatch: Callable[[Event], None],
        forget: Callable[[C], None] | None,
        paths: Collection[str] | None,
        on_open: Hook[C] | None,
        on_message: MessageHook[C] | None,
        on_close: Hook[C] | None,
        keep_headers: bool,
        pages: Mapping[str, tuple[str, bytes]],
        ops: OpsEndpoints,
        limits: SocketLimits,
        stats: Stats,
        background: Background,
    ) -> None:
        """``client`` makes a connection's handle; ``presence`` is the core, whose actions
        go to ``perform`` (or, for an event, ``dispatch``); ``clients`` is the set of open
        ones; ``forget(client)`` drops what the permission gate awaits for a closed one."""
        self._authenticate = authenticate
        self._client = client
        self._presence = presence
        self._clients = clients
        self._perform = perform
        self._dispatch = dispatch
        self._forget = forget
        self._paths = paths
        self._on_open = on_open
        self._on_message = on_message
        self._on_close = on_close
        self._keep_headers = keep_headers
        self._pages = pages
        self._ops = ops
        self._limits = limits
        self.host: ConnectionHost[C] = ConnectionHost(
            open=self.handshake,
            opened=self._opened,
            run=self._run,
            closed=self._closed,
            limits=limits,
            stats=stats,
            background=background,
            coalesce=True,
        )
        self._admission = self.host.admission

    # ------------------------------------------------------------ HTTP answers

    def serves_path(self, path: str) -> bool:
        """Whether ``path`` is one of the server's WebSocket paths."""
        return matches(path, self._paths)

    def answers_http(self, path: str) -> bool:
        """Whether a plain HTTP request for ``path`` is the server's (see
        ``PresenceServer.answers_http``)."""
        return path in self._pages or self._ops.answers(path) or path == CLIENT_PATH

    def http_answer(self, request: HandshakeRequest) -> Response:
        """The answer to a plain HTTP request (see ``PresenceServer.http_answer``)."""
        if bad_escape(request.query_string):  # over ASGI; the own listener refused it
            return Response(400, b"")
        answer = self._ops.answer(request) or static_answer(request)
        if answer is not None:
            return answer
        page = self._pages.get(request.path)
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"")
        if page is None:
            return Response(426 if self.serves_path(request.path) else 404, b"")
        return Response(200, page[1], page[0])

    def _serve_page(self, guard: Guard[Transport], request: HandshakeRequest) -> None:
        respond_with(guard, request, self.http_answer(request))

    # ---------------------------------------------------------------- opening

    async def handshake(self, guard: Guard[Transport]) -> C | None:
        """Read the request; answer it over HTTP, refuse it, or upgrade it into a client."""
        read = await read_upgrade(guard, self._limits, self._serve_page, swept=True)
        if read is None:
            return None
        request, trailing = read
        transport = guard.transport
        limits = self._limits
        deflate = negotiate(extension_offers(request)) if limits.permessage_deflate else None

        def session(now: float) -> Session:
            if deflate is None:
                connection = server_connection(trailing, limits.max_message_bytes)
                return WebSocketSession(transport, connection, limits, now)
            return WebSocketSession(
                transport,
                server_connection(trailing, limits.max_message_bytes, deflate=True),
                limits,
                now,
                deflate=deflate.server_bits,
            )

        return await self.admit(
            guard, request, session, lambda: write_upgrade(transport, request, deflate)
        )

    async def serve(
        self,
        guard: Guard[Any],
        request: HandshakeRequest,
        session: Callable[[float], Session],
        accept: Callable[[], None],
    ) -> None:
        """Host a connection whose request was read elsewhere (an ASGI server's): from
        the checks on, as :meth:`admit`, under the host's caps and fault boundary."""

        async def opening(guard: Guard[Any]) -> C | None:
            return await self.admit(guard, request, session, accept)

        await self.host.serve(guard, opening)

    async def admit(
        self,
        guard: Guard[Any],
        request: HandshakeRequest,
        session: Callable[[float], Session],
        accept: Callable[[], None],
    ) -> C | None:
        """Check, authenticate and upgrade a request that has been read: the one path of
        every kind of connection. ``session(now)`` makes its session and ``accept()``
        answers the upgrade (a 101, an ASGI accept)."""
        refusal = self._check(guard, request)
        if refusal is not None:
            guard.refuse(refusal.status, refusal.reason)
            return None
        outcome: object = self._authenticate(request)
        waited = False
        if inspect.isawaitable(outcome):  # only an await can take time: a timer for it alone
            waited = True
            with anyio.CancelScope(deadline=guard.deadline) as timer:
                outcome = await outcome
            if timer.cancelled_caught:
                guard.refuse(503, "authenticate did not answer within the handshake timeout")
                return None
        if isinstance(outcome, Refusal):
            guard.refuse(outcome.status, outcome.reason)
            return None
        if outcome is not None and not isinstance(outcome, Identity):
            raise TypeError(f"authenticate returned {outcome!r}: an Identity, a Refusal or None")
        return self._upgrade(guard, request, outcome, session, accept, recheck=waited)

    def _check(self, guard: Guard[Any], request: HandshakeRequest) -> Refusal | None:
        """What refuses an upgrade before ``authenticate`` runs and again before the 101
        (``authenticate`` may take a while): path, origin, connection caps. Whether the
        server still opens connections is the core's word, at :meth:`_upgrade`. A bad
        ``%`` escape in the query is refused here for the ASGI path (an ASGI server hands
        the query string on as it came); the own listener refused it on reading."""
        if bad_escape(request.query_string):
            return Refusal(status=400, reason="a bad % escape in the query")
        if not self.serves_path(request.path):
            return Refusal(status=404, reason="no WebSocket at this path")
        if not self._limits.origin_allowed(request.header("origin")):
            return Refusal(status=403, reason="origin not allowed")
        status = self._admission.refusal(guard)
        if status is not None:
            return Refusal(status=status, reason="too many connections")
        return None

    def _upgrade(
        self,
        guard: Guard[Any],
        request: HandshakeRequest,
        identity: Identity | None,
        make_session: Callable[[float], Session],
        accept: Callable[[], None],
        *,
        recheck: bool,
    ) -> C | None:
        """Join the core, then answer 101, in one step with no await: an identity the core
        refuses gets an HTTP status (the boundary's 403), never a 101 and a close.
        ``recheck``: ``authenticate`` awaited, so the world may have changed since
        :meth:`_check` (without an await nothing else ran)."""
        if recheck:
            if guard.answered is not None:
                return None  # pushed out of the handshake caps while it authenticated
            refusal = self._check(guard, request)
            if refusal is not None:
                guard.refuse(refusal.status, refusal.reason)
                return None
        now = self.host.clock()
        session = make_session(now)
        client = self._client(request, identity, session, guard)
        joined = None
        if identity is not None:
            guard.user = identity.user_id
            joined = SessionJoined(
                conn=client,
                user_id=identity.user_id,
                session_id=identity.session_id,
                channels=identity.channels,
                metadata=identity.metadata,
                now=now,
            )
        closed = self._presence.handle(ConnectionOpened(conn=client, ns=client.ns))
        if closed:  # the core closes it at once (the server shut down): no 101
            assert isinstance(closed[0], CloseConnection)
            guard.refuse(503, closed[0].reason)
            return None
        guard.conn = client
        self._clients.add(client)
        actions = self._presence.handle(joined) if joined is not None else []
        self._admission.upgrade(guard)
        accept()
        guard.session = session
        self._perform(actions)
        return client

    # ------------------------------------------------------ open, run, close

    async def _opened(self, client: C) -> None:
        """``on_open`` (bounded); then the request's headers go, unless they are kept."""
        if self._on_open is not None:
            opened = self._on_open(client)
            if opened is not None:
                await _within(opened, "on_open", self._limits.hook_timeout)
        if not self._keep_headers:
            client.request = attrs.evolve(client.request, headers=())

    def _run(self, client: C) -> Awaitable[None]:
        """The client's read loop, each message through ``on_message`` (bounded)."""
        on_message, timeout = self._on_message, self._limits.hook_timeout
        return client.session.run(
            (lambda text: _bounded(on_message(client, text), "on_message", timeout))
            if on_message is not None
            else _ignore
        )

    async def _closed(self, guard: Guard[Any]) -> None:
        """Out of the core, then through ``on_close`` if it was open."""
        if guard.conn is None:
            return  # never let in: the core never knew it
        client = cast(C, guard.conn)  # only _upgrade sets it, to a client
        self._clients.discard(client)
        if self._forget is not None:
            self._forget(client)
        self._dispatch(ConnectionClosed(conn=client, now=self.host.clock()))
        if guard.session is not None:
            try:
                if self._on_close is not None:
                    closing = self._on_close(client)
                    if closing is not None:
                        await _within(closing, "on_close", self._limits.hook_timeout)
            except Exception as exc:
                logger.error(
                    "%s: the on_close hook failed: %s: %s",
                    guard,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )


def _ignore(text: str) -> None:
    return None


class HookTimeoutError(Exception):
    """An awaited hook did not return within ``SocketLimits.hook_timeout``: it was
    cancelled, and its connection is closed (1011) by its fault boundary."""


def _bounded(result: Awaitable[None] | None, what: str, timeout: float) -> Awaitable[None] | None:
    """A hook's result: None (it was synchronous), or its awaitable bounded by ``timeout``."""
    return None if result is None else _within(result, what, timeout)


async def _within(result: Awaitable[None], what: str, timeout: float) -> None:
    with anyio.move_on_after(timeout) as scope:
        await result
    if scope.cancelled_caught:
        raise HookTimeoutError(
            f"{what} did not return within {timeout:g} s (SocketLimits.hook_timeout)"
        )
