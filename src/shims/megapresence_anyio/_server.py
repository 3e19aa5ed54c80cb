"""``PresenceServer``: client WebSockets on asyncio or trio, driven by ``megapresence_core``.

The server translates and nothing more: sockets become core events, core
actions become writes. Every presence decision (who receives what, who is
kicked, what the hub hears) is the core's. Methods for the embedding program
(``broadcast``, ``direct_to_user``, ``kick``, ...) are synchronous and can be
called from any task on the server's event loop: writes happen in place.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any, Protocol, final

import anyio
import anyio.abc
import attrs
import sniffio

from megapresence_core import (
    BroadcastRequested,
    CloseCode,
    CloseConnection,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    Event,
    KickRequested,
    LocalUsageError,
    Log,
    Member,
    Message,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Tick,
)
from megapresence_core.actions import (
    CloseHubLink,
    ClusterPublish,
    ConnectHub,
    RequestRefused,
    SendHubFrame,
    StoreDelete,
    StoreEntry,
    StorePut,
    StoreRefresh,
)
from megapresence_core.events import HubLinkStarted

from ._config import DEFAULT_SOCKET_LIMITS, SocketLimits
from ._http import HandshakeRequest, accept_websocket, read_request, respond
from ._hub_client import HubClient
from ._listener import accept_forever, open_listener
from ._logging import log_action
from ._session import WebSocketSession, text_frame
from ._ticker import Ticker
from ._transport import SocketTransport, StreamTransport, Transport

__all__ = ["Client", "Identity", "PresenceServer", "Refusal"]

logger = logging.getLogger("megapresence")


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@final
@attrs.frozen(kw_only=True)
class Identity:
    """Who an authenticated connection is; becomes the core's ``SessionJoined``."""

    user_id: str
    session_id: str
    channels: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    metadata: Mapping[str, Any] | None = attrs.field(default=None, hash=False)


@final
@attrs.frozen(kw_only=True)
class Refusal:
    """Refuse the upgrade with an HTTP status (401, 403, ...) and a short body."""

    status: int = 403
    reason: str = "forbidden"


AuthResult = Identity | Refusal | None
Authenticator = Callable[[HandshakeRequest], AuthResult | Awaitable[AuthResult]]


@final
class Client:
    """One client socket. It is also the connection id the core sees."""

    __slots__ = ("_server", "identity", "ns", "request", "session")

    def __init__(
        self,
        server: PresenceServer,
        request: HandshakeRequest,
        identity: Identity | None,
        session: WebSocketSession,
    ) -> None:
        self._server = server
        self.request = request
        self.ns = request.path
        self.identity = identity
        self.session = session

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None

    @property
    def session_id(self) -> str | None:
        return self.identity.session_id if self.identity is not None else None

    def send(self, text: str) -> None:
        """Send one text message to this socket only (a reply, not presence traffic)."""
        self.session.send_frame(text_frame(text.encode("utf-8")))

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.session.close(code, reason)

    def __repr__(self) -> str:
        who = f" {self.user_id}/{self.session_id}" if self.identity else ""
        return f"<Client {self.ns}{who} at {id(self):#x}>"


class ClusterBackend(Protocol):
    """What the server needs from a cluster transport (``megapresence_nats.NatsCluster``)."""

    async def start(self, dispatch: Callable[[Event], None], subjects: tuple[str, ...]) -> None: ...

    async def run(self) -> None: ...

    def publish(self, subject: str, data: str) -> None: ...

    async def aclose(self) -> None: ...


class RosterBackend(Protocol):
    """What the server needs from a shared roster (``megapresence_redis.RedisRoster``)."""

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    def put(self, channel: str, session_id: str, member: Member, ttl: float) -> None: ...

    def refresh(self, entries: Iterable[StoreEntry], ttl: float) -> None: ...

    def delete(self, channel: str, session_id: str) -> None: ...

    async def members(self, channels: Iterable[str]) -> list[Member]: ...

    async def aclose(self) -> None: ...


OnMessage = Callable[[Client, str], Awaitable[None] | None]
OnClose = Callable[[Client], Awaitable[None] | None]


def _matches(path: str, paths: Collection[str] | None) -> bool:
    if paths is None:
        return True
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in paths)


@final
class PresenceServer:
    """Serve WebSocket paths (each path an ns) with presence, on asyncio or trio.

    Use as ``async with PresenceServer(...) as server: await server.listen(...)``
    (or ``await server.serve(host, port)``); a framework with its own listener
    hands accepted streams to :meth:`handle_stream` instead.
    """

    def __init__(
        self,
        authenticate: Authenticator,
        *,
        paths: Collection[str] | None = ("/ws/",),
        on_open: OnClose | None = None,
        on_message: OnMessage | None = None,
        on_close: OnClose | None = None,
        presence: PresenceConfig | None = None,
        limits: SocketLimits = DEFAULT_SOCKET_LIMITS,
        hub_url: str | None = None,
        hub_token: str | None = None,
        cluster: ClusterBackend | None = None,
        roster: RosterBackend | None = None,
        pages: Mapping[str, tuple[str, bytes]] | None = None,
    ) -> None:
        config = presence if presence is not None else PresenceConfig()
        if (config.store is None) != (roster is None):
            raise LocalUsageError(
                "PresenceServer: give a roster backend (megapresence_redis.RedisRoster) together "
                "with PresenceConfig.store, or neither"
            )
        if (config.cluster is None) != (cluster is None):
            raise LocalUsageError(
                "PresenceServer: give a cluster backend (megapresence_nats.NatsCluster) together "
                "with PresenceConfig.cluster, or neither"
            )
        if (config.hub_link is None) != (hub_url is None):
            raise LocalUsageError(
                "PresenceServer: give hub_url together with PresenceConfig.hub_link (bridge id, "
                "instance id, channels), or neither"
            )
        self._authenticate = authenticate
        self._cluster = cluster
        self._roster = roster
        self._paths = paths
        self._on_open = on_open
        self._on_message = on_message
        self._on_close = on_close
        self._limits = limits
        self._pages = dict(pages or {})
        self._presence = Presence(config)
        self._clients: set[Client] = set()
        self._sockets = 0
        self._task_group: anyio.abc.TaskGroup | None = None
        #: On asyncio, the connections' tasks (see _spawn_connection); None on trio.
        self._connection_tasks: set[asyncio.Task[Any]] | None = None
        self._hub = (
            HubClient(
                hub_url,
                hub_token or "",
                dispatch=self.dispatch,
                spawn=self._spawn,
                limits=attrs.evolve(limits, max_message_bytes=config.limits.max_hub_frame_bytes),
            )
            if hub_url is not None
            else None
        )
        period = max(0.05, min(limits.ping_interval, limits.ping_timeout, limits.close_timeout) / 4)
        self._ticker = Ticker(self._presence.next_deadline, self._on_tick, period)
        self._performers: dict[type[Any], Callable[[Any], None]] = {
            Deliver: self._deliver,
            RequestRefused: self._refused,
            CloseConnection: self._close_connection,
            ConnectHub: self._connect_hub,
            SendHubFrame: self._send_hub_frame,
            CloseHubLink: self._close_hub_link,
            ClusterPublish: self._publish,
            StorePut: self._roster_put,
            StoreRefresh: self._roster_refresh,
            StoreDelete: self._roster_delete,
            Log: log_action,
        }
        self.port: int | None = None

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> PresenceServer:
        # Shared backends first, so a wrong URL fails the start, not the first join.
        if self._roster is not None:
            await self._roster.start()
        if self._cluster is not None:
            try:
                await self._cluster.start(self.dispatch, self._presence.cluster_subjects)
            except BaseException:
                if self._roster is not None:
                    await self._roster.aclose()
                raise
        if sniffio.current_async_library() == "asyncio":
            self._connection_tasks = set()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._ticker.run)
        for backend in (self._cluster, self._roster):
            if backend is not None:
                self._task_group.start_soon(backend.run)
        if self._hub is not None:
            self.dispatch(HubLinkStarted(now=anyio.current_time()))
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        with anyio.CancelScope(shield=True):
            await self.shutdown()
            await self._stop_connection_tasks()
            # In the core's order: the hub link is closed, the cluster has said
            # goodbye, the roster removals are queued; now let them out.
            if self._cluster is not None:
                await self._cluster.aclose()
            if self._roster is not None:
                await self._roster.aclose()
        task_group.cancel_scope.cancel()
        return await task_group.__aexit__(*exc_info)  # type: ignore[arg-type]

    async def _stop_connection_tasks(self) -> None:
        tasks = self._connection_tasks
        if tasks:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        """Hub link, then roster, then every client closed with 1001; wait for the sockets."""
        if self._presence.is_shut_down:
            return
        self.dispatch(ShutdownRequested())
        with anyio.move_on_after(self._limits.close_timeout + 0.5):
            while self._clients or (self._hub is not None and self._hub.active):
                await anyio.sleep(0.02)

    def _spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        if self._task_group is None:
            raise LocalUsageError("PresenceServer: use it inside 'async with server:'")
        self._task_group.start_soon(function, *args)

    def _spawn_connection(
        self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any
    ) -> None:
        """Start a connection's task as cheaply as the backend allows.

        anyio's ``start_soon`` gives each task a handle, an event and a cancel scope:
        more than an idle WebSocket should cost on asyncio. There the task is a plain
        ``asyncio.Task``, tracked here and cancelled when the server exits; on trio
        the nursery's own tasks are already cheap.
        """
        if self._connection_tasks is None:
            self._spawn(function, *args)
            return
        task = asyncio.get_running_loop().create_task(function(*args))
        self._connection_tasks.add(task)
        task.add_done_callback(self._connection_done)

    def _connection_done(self, task: asyncio.Task[Any]) -> None:
        assert self._connection_tasks is not None
        self._connection_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("connection task failed", exc_info=task.exception())

    async def listen(
        self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False
    ) -> int:
        """Accept connections on ``host:port`` in the background; return the bound port."""
        sock = open_listener(host, port, reuse_port=reuse_port)
        self.port = sock.getsockname()[1]
        self._spawn(accept_forever, sock, self._on_accept)
        return self.port

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and run until cancelled; ``task_status.started`` gets the bound port."""
        async with self:
            task_status.started(await self.listen(host, port))
            await anyio.sleep_forever()

    # ----------------------------------------------------------- connections

    def _on_accept(self, sock: socket.socket, remote: tuple[str, int] | None) -> None:
        transport = SocketTransport(
            sock, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        self._spawn_connection(self._serve, transport, remote)

    async def handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection accepted elsewhere (it is written through a queue)."""
        transport = StreamTransport(
            stream, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        await self._serve(transport, None)

    async def _serve(self, transport: Transport, remote: tuple[str, int] | None) -> None:
        """One connection, from its request to its close. While the socket is open this is
        the only frame above the session's, so an idle connection costs little memory."""
        self._sockets += 1
        client = None
        try:
            client = await self._open(transport, remote)
            if client is not None:
                self._opened(client)
                if await _hook(self._on_open, client):
                    on_message = self._on_message
                    await client.session.run(
                        (lambda text: on_message(client, text))
                        if on_message is not None
                        else _ignore
                    )
        finally:
            self._sockets -= 1
            if client is not None:
                self._clients.discard(client)
                self.dispatch(ConnectionClosed(conn=client, now=anyio.current_time()))
                with anyio.CancelScope(shield=True):
                    await _hook(self._on_close, client)
            await transport.drain_and_close(self._limits.close_timeout)

    async def _open(self, transport: Transport, remote: tuple[str, int] | None) -> Client | None:
        """Read the request; answer it over HTTP, refuse it, or upgrade it into a ``Client``."""
        limits = self._limits
        result = await read_request(transport, limits, remote)
        if result is None:
            return None
        request, raw = result
        if not request.is_websocket:
            self._serve_page(transport, request)
            return None
        refusal = self._check(request)
        identity = None
        if refusal is None:
            outcome = self._authenticate(request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if isinstance(outcome, Refusal):
                refusal = outcome
            else:
                identity = outcome
        if refusal is not None:
            respond(transport, refusal.status, (refusal.reason + "\n").encode())
            return None
        ws = accept_websocket(transport, request, raw)
        if ws is None:
            return None
        session = WebSocketSession(transport, ws, limits, anyio.current_time())
        return Client(self, request, identity, session)

    def _check(self, request: HandshakeRequest) -> Refusal | None:
        if not _matches(request.path, self._paths):
            return Refusal(status=404, reason="no WebSocket at this path")
        if not self._limits.origin_allowed(request.header("origin")):
            return Refusal(status=403, reason="origin not allowed")
        if self._sockets > self._limits.max_connections:
            return Refusal(status=503, reason="too many connections")
        if self._presence.is_shut_down:
            return Refusal(status=503, reason="server shutting down")
        return None

    def _serve_page(self, transport: Transport, request: HandshakeRequest) -> None:
        page = self._pages.get(request.path)
        if request.method not in ("GET", "HEAD"):
            respond(transport, 405)
        elif page is None:
            respond(transport, 426 if _matches(request.path, self._paths) else 404)
        else:
            respond(transport, 200, page[1], page[0], head=request.method == "HEAD")

    def _opened(self, client: Client) -> None:
        self._clients.add(client)
        self.dispatch(ConnectionOpened(conn=client, ns=client.ns))
        identity = client.identity
        if identity is not None:
            try:
                self.dispatch(
                    SessionJoined(
                        conn=client,
                        user_id=identity.user_id,
                        session_id=identity.session_id,
                        channels=identity.channels,
                        metadata=identity.metadata,
                        now=anyio.current_time(),
                    )
                )
            except LocalUsageError as exc:  # the core refused the identity: its hint says how
                logger.warning("join refused for %r: %s", client, exc)
                client.close(exc.close_code, str(exc))

    # ---------------------------------------------------------- core driving

    def dispatch(self, event: Event) -> None:
        """Feed one event to the core and perform its actions, in order."""
        for action in self._presence.handle(event):
            self._performers[type(action)](action)
        self._ticker.reschedule()

    def _on_tick(self, now: float) -> None:
        self.dispatch(Tick(now=now))
        for client in list(self._clients):
            client.session.keepalive(now)
        if self._hub is not None:
            self._hub.keepalive(now)

    def _deliver(self, action: Deliver) -> None:
        frame = text_frame(action.text.encode("utf-8"))
        for client in action.conns:
            client.session.send_frame(frame)  # type: ignore[attr-defined]

    def _refused(self, action: RequestRefused) -> None:
        action.conn.send(action.text)  # type: ignore[attr-defined]

    def _close_connection(self, action: CloseConnection) -> None:
        action.conn.session.close(action.code, action.reason)  # type: ignore[attr-defined]

    def _connect_hub(self, action: ConnectHub) -> None:
        assert self._hub is not None
        self._hub.connect()

    def _send_hub_frame(self, action: SendHubFrame) -> None:
        assert self._hub is not None
        self._hub.send(action.data)

    def _close_hub_link(self, action: CloseHubLink) -> None:
        assert self._hub is not None
        self._hub.close(action.code, action.reason)

    def _publish(self, action: ClusterPublish) -> None:
        assert self._cluster is not None
        self._cluster.publish(action.subject, action.data)

    def _roster_put(self, action: StorePut) -> None:
        assert self._roster is not None
        self._roster.put(action.channel, action.session_id, action.member, action.ttl)

    def _roster_refresh(self, action: StoreRefresh) -> None:
        assert self._roster is not None
        self._roster.refresh(action.entries, action.ttl)

    def _roster_delete(self, action: StoreDelete) -> None:
        assert self._roster is not None
        self._roster.delete(action.channel, action.session_id)

    # ------------------------------------------------------- embedding API

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message | Mapping[str, Any],
        except_session_ids: Iterable[str] = (),
    ) -> None:
        """Deliver to every connection of ``ns`` here and on every peer, except those sessions."""
        self.dispatch(
            BroadcastRequested(
                ns=ns, channel=channel, message=message, except_session_ids=except_session_ids
            )
        )

    def direct_to_user(self, user_id: str, message: Message | Mapping[str, Any]) -> None:
        """Deliver to every connection of ``user_id``, here and on every peer."""
        self.dispatch(DirectRequested(user_id=user_id, message=message))

    def update_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> None:
        self.dispatch(
            MetadataUpdated(session_id=session_id, metadata=metadata, now=anyio.current_time())
        )

    def kick(self, session_id: str, reason: str | None = None, *, requeue: bool = False) -> None:
        """Close a session wherever it is: 1008 (kick) or, with ``requeue``, 4503."""
        self.dispatch(KickRequested(session_id=session_id, reason=reason, requeue=requeue))

    def roster(self, ns: str) -> list[Member]:
        return self._presence.roster(ns)

    async def presence_list(self, channels: Iterable[str]) -> list[Member]:
        """Members of ``channels``: this process's (always fresh) first, then the shared
        roster's, read concurrently. With a roster backend that is down this raises its
        error (``RosterUnavailableError``) rather than answer with local members only."""
        wanted = tuple(channels)
        remote = await self._roster.members(wanted) if self._roster is not None else []
        return self._presence.presence_list(wanted, remote)

    @property
    def presence(self) -> Presence:
        """The core machine, for queries (``hub_link_state``, ``connection_state``...)."""
        return self._presence

    @property
    def clients(self) -> frozenset[Client]:
        return frozenset(self._clients)


def _ignore(text: str) -> None:
    return None


async def _hook(hook: OnClose | None, client: Client) -> bool:
    """Run an open or close hook; if it fails, log it and close that socket with 1011."""
    if hook is None:
        return True
    try:
        result = hook(client)
        if result is not None:
            await result
    except Exception:
        logger.exception(
            "the %s hook failed for %r; closing it with 1011",
            getattr(hook, "__name__", "connection"),
            client,
        )
        client.session.close(CloseCode.INTERNAL_ERROR, "internal error")
        return False
    return True
