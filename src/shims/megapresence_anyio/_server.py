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
    Action,
    BroadcastRequested,
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
    SendHubFrame,
    StoreDelete,
    StoreEntry,
    StorePut,
    StoreRefresh,
)
from megapresence_core.events import HubLinkStarted

from ._config import DEFAULT_SOCKET_LIMITS, SocketLimits
from ._guard import Admission, Guard, read_upgrade
from ._http import HandshakeRequest, server_connection, write_upgrade
from ._hub_client import HubClient
from ._listener import accept_forever, open_listener
from ._logging import log_action
from ._session import WebSocketSession, text_frame
from ._ticker import Ticker
from ._transport import SocketTransport, StreamTransport

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
        self.session.send_frame(text_frame(text.encode("utf-8")), anyio.current_time())

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.session.close(code, reason, anyio.current_time())

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
        self._admission = Admission(limits)
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
        # Nothing but cancellation leaves _serve: its boundary catches the rest.
        task.add_done_callback(self._connection_tasks.discard)

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
        guard = Guard(transport, remote)
        self._spawn_connection(self._serve, guard, self._admission.begin(guard))

    async def handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection accepted elsewhere (it is written through a queue)."""
        transport = StreamTransport(
            stream, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        guard = Guard(transport, None)
        await self._serve(guard, self._admission.begin(guard))

    async def _serve(self, guard: Guard, refused: int | None) -> None:
        """One connection, from its request to its close, behind its fault boundary:
        nothing it raises reaches the server (see ``_guard.py`` for what it becomes).
        While the socket is open this is the only frame above the session's, so an
        idle connection costs little memory."""
        try:
            if refused is not None:
                guard.respond(refused)  # over a handshake cap (logged by the admission)
            else:
                client = await self._handshake(guard)
                if client is not None:
                    await _run_hook(self._on_open, client)
                    on_message = self._on_message
                    await client.session.run(
                        (lambda text: on_message(client, text))
                        if on_message is not None
                        else _ignore
                    )
                    guard.ended()
        except Exception as exc:
            guard.fault(exc)
        finally:
            await self._admission.finish(guard, lambda: self._closed(guard))

    async def _closed(self, guard: Guard) -> None:
        """Out of the core, then through ``on_close`` if it was open."""
        client = guard.conn
        if isinstance(client, Client):
            self._clients.discard(client)
            self.dispatch(ConnectionClosed(conn=client))
            if guard.session is not None:
                try:
                    await _run_hook(self._on_close, client)
                except Exception as exc:
                    logger.error(
                        "%s: the on_close hook failed: %s: %s",
                        guard,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )

    async def _handshake(self, guard: Guard) -> Client | None:
        """Read the request; answer it over HTTP, refuse it, or upgrade it into a ``Client``."""
        read = await read_upgrade(guard, self._limits, self._serve_page)
        if read is None:
            return None
        request, trailing = read
        refusal = self._check(guard, request)
        if refusal is not None:
            guard.refuse(refusal.status, refusal.reason)
            return None
        outcome: object = None
        with anyio.CancelScope(deadline=guard.deadline) as timer:
            outcome = self._authenticate(request)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        if timer.cancelled_caught:
            guard.refuse(503, "authenticate did not answer within the handshake timeout")
            return None
        if isinstance(outcome, Refusal):
            guard.refuse(outcome.status, outcome.reason)
            return None
        if outcome is not None and not isinstance(outcome, Identity):
            raise TypeError(f"authenticate returned {outcome!r}: an Identity, a Refusal or None")
        return self._upgrade(guard, request, trailing, outcome)

    def _check(self, guard: Guard, request: HandshakeRequest) -> Refusal | None:
        """What refuses an upgrade before ``authenticate`` runs and again before the 101
        (``authenticate`` may take a while): path, origin, shutdown, connection caps."""
        if not _matches(request.path, self._paths):
            return Refusal(status=404, reason="no WebSocket at this path")
        if not self._limits.origin_allowed(request.header("origin")):
            return Refusal(status=403, reason="origin not allowed")
        if self._presence.is_shut_down:
            return Refusal(status=503, reason="server shutting down")
        status = self._admission.refusal(guard)
        if status is not None:
            return Refusal(status=status, reason="too many connections")
        return None

    def _upgrade(
        self, guard: Guard, request: HandshakeRequest, trailing: bytes, identity: Identity | None
    ) -> Client | None:
        """Join the core, then answer 101, in one step with no await: an identity the core
        refuses gets an HTTP status (the boundary's 403), never a 101 and a close."""
        refusal = self._check(guard, request)
        if refusal is not None:
            guard.refuse(refusal.status, refusal.reason)
            return None
        now = anyio.current_time()
        session = WebSocketSession(guard.transport, server_connection(trailing), self._limits, now)
        client = Client(self, request, identity, session)
        joined = None
        if identity is not None:
            guard.user = identity.user_id
            joined = SessionJoined(
                conn=client,
                user_id=identity.user_id,
                session_id=identity.session_id,
                channels=identity.channels,
                metadata=identity.metadata,
            )
        self.dispatch(ConnectionOpened(conn=client, ns=client.ns))
        guard.conn = client
        self._clients.add(client)
        actions = self._presence.handle(joined) if joined is not None else []
        self._admission.upgrade(guard)
        write_upgrade(guard.transport, request)
        guard.session = session
        self._perform(actions)
        return client

    def _serve_page(self, guard: Guard, request: HandshakeRequest) -> None:
        page = self._pages.get(request.path)
        if request.method not in ("GET", "HEAD"):
            guard.respond(405)
        elif page is None:
            guard.respond(426 if _matches(request.path, self._paths) else 404)
        else:
            guard.respond(200, page[1], page[0], head=request.method == "HEAD")

    # ---------------------------------------------------------- core driving

    def dispatch(self, event: Event) -> None:
        """Feed one event to the core and perform its actions, in order."""
        self._perform(self._presence.handle(event))

    def _perform(self, actions: list[Action]) -> None:
        performers = self._performers
        for action in actions:
            performers[type(action)](action)
        self._ticker.reschedule()

    def _on_tick(self, now: float) -> None:
        self.dispatch(Tick(now=now))
        for client in list(self._clients):
            client.session.keepalive(now)
        if self._hub is not None:
            self._hub.keepalive(now)

    def _deliver(self, action: Deliver) -> None:
        frame = text_frame(action.text.encode("utf-8"))
        now = anyio.current_time()
        for client in action.conns:
            client.session.send_frame(frame, now)  # type: ignore[attr-defined]

    def _close_connection(self, action: CloseConnection) -> None:
        session = action.conn.session  # type: ignore[attr-defined]
        session.close(action.code, action.reason, anyio.current_time())

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
        self.dispatch(MetadataUpdated(session_id=session_id, metadata=metadata))

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


async def _run_hook(hook: OnClose | None, client: Client) -> None:
    """Run an open or close hook, sync or async; what it raises is the boundary's."""
    if hook is not None:
        result = hook(client)
        if result is not None:
            await result
