"""``PresenceServer``: client WebSockets on asyncio or trio, driven by ``megapresence_core``.

The server translates and nothing more: sockets become core events, core
actions become writes. Every presence decision (who receives what, who is
kicked, what the hub hears) is the core's. Methods for the embedding program
(``broadcast``, ``direct_to_user``, ``kick``, ...) are synchronous and can be
called from any task on the server's event loop: writes happen in place.

A connection reaches the server from its own listener (:meth:`PresenceServer.listen`,
plain or TLS), as an anyio stream (:meth:`~PresenceServer.handle_stream`), or from an
ASGI server (:meth:`~PresenceServer.asgi`, ``_asgi.py``). All three go through one
host, ``ConnectionHost`` (``_host.py``), and one opening, ``ClientOpening``
(``_opening.py``): the same caps, checks, ``authenticate`` hook, core events and
fault boundary; only how the request is read and how the upgrade is answered
differ. The core's actions are performed through one table (``_performers.py``).
This module is the rest: the lifecycle, the embedding API and the feeding of the
core. Every background task has a boundary of its own (``Background``): a fault
there is logged with its traceback and the process serves on, and ``/readyz``
says not ready when the task was one the server cannot do without.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
)
from functools import partial
from typing import Any, final

import anyio
import anyio.abc
import attrs

from megapresence_core import (
    Action,
    BroadcastRequested,
    DirectRequested,
    Event,
    KickRequested,
    LocalUsageError,
    Member,
    Message,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    PresenceMode,
    PublishRequested,
    Sender,
    ShutdownRequested,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.actions import RequestRefused
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    CommandReceived,
    DrainRequested,
    HubLinkStarted,
)

from ._asgi import ASGIApp, PresenceASGI, Receive, Scope, Send, serve_asgi
from ._backends import Backends
from ._background import Background
from ._config import DEFAULT_SOCKET_LIMITS, SocketLimits
from ._guard import Guard
from ._health import Health
from ._http import HandshakeRequest
from ._hub_client import HubClient
from ._opening import ClientOpening, Hook, MessageHook
from ._ops import (
    DEFAULT_METRICS_ACCESS,
    MetricsAccess,
    OpsEndpoints,
    Readiness,
    Response,
)
from ._outgoing import Outgoing
from ._performers import Performers
from ._permissions import SubscriptionGate
from ._session import Session
from ._stats import Stats
from ._ticker import Ticker
from ._types import (
    Authenticator,
    ChannelStats,
    ClusterBackend,
    Identity,
    RosterBackend,
    StreamStoreBackend,
    Verdict,
)

__all__ = ["Client", "PresenceServer", "SubscriptionHook"]


@final
class Client:
    """One client socket. It is also the connection id the core sees."""

    __slots__ = ("_guard", "_server", "identity", "ns", "request", "session")

    def __init__(
        self,
        server: PresenceServer,
        request: HandshakeRequest,
        identity: Identity | None,
        session: Session,
        guard: Guard[Any],
    ) -> None:
        self._server = server
        self._guard = guard
        self.request = request
        self.ns = request.path
        self.identity = identity
        self.session = session

    @property
    def server(self) -> PresenceServer:
        """The server this client is connected to."""
        return self._server

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity is not None else None

    @property
    def session_id(self) -> str | None:
        return self.identity.session_id if self.identity is not None else None

    def send(self, text: str) -> None:
        """Send one text message to this socket only (a reply, not presence traffic)."""
        self.session.send(Outgoing(text), anyio.current_time())

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.session.close(code, reason, anyio.current_time())

    def fault(self, exc: Exception) -> None:
        """What this connection's work raised outside its task (an async hook's verdict):
        its boundary's close code (1011 for a bug) and a logged line, as if in its task."""
        self._guard.fault(exc)

    def __repr__(self) -> str:
        who = f" {self.user_id}/{self.session_id}" if self.identity else ""
        return f"<Client {self.ns}{who} at {id(self):#x}>"


#: ``authorize_subscription(client, channel, mode)``, sync or async (see ``_permissions.py``).
SubscriptionHook = Callable[[Client, str, PresenceMode], Verdict | Awaitable[Verdict]]


OnMessage = MessageHook[Client]
OnClose = Hook[Client]
#: ``on_link_state(link, state)``: "hub", "cluster", "roster" or "streams", and its new state.
OnLinkState = Callable[[str, str], None]


@final
class PresenceServer:
    """Serve WebSocket paths (each path an ns) with presence, on asyncio or trio.

    Use as ``async with PresenceServer(...) as server: await server.listen(...)``
    (or ``await server.serve(host, port)``); a framework with its own listener
    hands accepted streams to :meth:`handle_stream` instead.

    ``authenticate`` and ``on_open`` see the whole request; after ``on_open``
    ``client.request`` keeps its method, path, query and address but not its
    headers (the cookies and keys of every open socket are memory an idle socket
    does not need), unless ``keep_headers=True`` (for hooks that read a header
    later: ``on_message``, ``on_close``, ``authorize_subscription``).

    ``on_restored(client)`` (synchronous) is called when the client's session, taken over
    from another server (through a hub or a cluster), turns out after ``on_open`` to have
    kept channels there: ``presence.subscriptions(client)`` lists them from then on (the
    demo sends its ``welcome`` again).

    Channel messages carry stream offsets and a client may recover what it
    missed (``PresenceConfig.history``); without one given, the server keeps
    the default history under a boot id drawn at random at every start.
    """

    def __init__(
        self,
        authenticate: Authenticator,
        *,
        paths: Collection[str] | None = ("/ws/",),
        on_open: OnClose | None = None,
        on_message: OnMessage | None = None,
        on_close: OnClose | None = None,
        on_restored: Callable[[Client], None] | None = None,
        presence: PresenceConfig | None = None,
        limits: SocketLimits = DEFAULT_SOCKET_LIMITS,
        hub_url: str | None = None,
        hub_token: str | None = None,
        cluster: ClusterBackend | None = None,
        roster: RosterBackend | None = None,
        stream_store: StreamStoreBackend | None = None,
        pages: Mapping[str, tuple[str, bytes]] | None = None,
        hub_ssl_context: ssl.SSLContext | None = None,
        metrics_access: MetricsAccess = DEFAULT_METRICS_ACCESS,
        on_link_state: OnLinkState | None = None,
        authorize_subscription: SubscriptionHook | None = None,
        keep_headers: bool = False,
    ) -> None:
        config = presence if presence is not None else PresenceConfig()
        if config.history is None:
            # A new boot id at every start: a stream's epoch never repeats after a restart.
            config = attrs.evolve(config, history=HistoryConfig(boot_id=uuid.uuid4().hex))
        self._backends = Backends(
            config, cluster=cluster, roster=roster, stream_store=stream_store, hub_url=hub_url
        )
        self._limits = limits
        self._presence = Presence(config)
        self._clients: set[Client] = set()
        #: When a drain's timeout is over (``anyio.current_time``): the shutdown after it
        #: waits for no socket past then.
        self._drain_deadline: float | None = None
        self._stats = Stats()
        self._background = Background(self._stats, self._group)
        self._gate = (
            SubscriptionGate(
                authorize_subscription,
                handle=self._handle,
                spawn=self._background.spawn,
                is_open=self._clients.__contains__,
                timeout=limits.hook_timeout,
                max_pending=limits.max_pending_hooks,
            )
            if authorize_subscription is not None
            else None
        )
        # The metrics are the health's, which counts the opening's connections: asked late.
        self._ops = OpsEndpoints(metrics_access, lambda: self._health.metrics(), self.readiness)
        self._opening: ClientOpening[Client] = ClientOpening(
            authenticate,
            client=partial(Client, self),
            presence=self._presence,
            clients=self._clients,
            perform=self._perform,
            dispatch=self.dispatch,
            forget=self._gate.forget if self._gate is not None else None,
            paths=paths,
            on_open=on_open,
            on_message=on_message,
            on_close=on_close,
            keep_headers=keep_headers,
            pages=dict(pages or {}),
            ops=self._ops,
            limits=limits,
            stats=self._stats,
            background=self._background,
        )
        self._host = self._opening.host
        self._admission = self._host.admission
        self._task_group: anyio.abc.TaskGroup | None = None
        self._hub = (
            HubClient(
                hub_url,
                hub_token or "",
                dispatch=self._dispatch_link,
                spawn=self._background.spawn,
                limits=attrs.evolve(limits, max_message_bytes=config.limits.max_hub_frame_bytes),
                ssl_context=hub_ssl_context,
            )
            if hub_url is not None
            else None
        )
        period = max(0.05, min(limits.ping_interval, limits.ping_timeout, limits.close_timeout) / 4)
        self._ticker = Ticker(self._presence.next_deadline, self._on_tick, period, self._stats)
        self._health = Health(
            self._presence,
            hub=self._hub,
            cluster=cluster,
            roster=roster,
            stream_store=stream_store,
            clients=self._clients,
            stats=self._stats,
            admission=self._admission,
            background=self._background,
            ticker=self._ticker,
            on_link_state=on_link_state,
        )
        self._performers = Performers(
            stats=self._stats,
            health=self._health,
            ticker=self._ticker,
            hub=self._hub,
            cluster=cluster,
            roster=roster,
            stream_store=stream_store,
            on_restored=on_restored,
        )
        self.port: int | None = None

    # ------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> PresenceServer:
        if self._task_group is not None:
            raise LocalUsageError("PresenceServer: already running; enter it once")
        await self._backends.start(self._presence, self._dispatch_link)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._host.start(self._task_group)
        self._background.service("ticker", self._ticker.run)
        self._backends.run(self._background)
        if self._hub is not None:
            self._dispatch_link(HubLinkStarted(now=anyio.current_time()))
        self._health.check_links()
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        with anyio.CancelScope(shield=True):
            await self.shutdown()
            await self._host.stop()
            await self._backends.aclose()  # after the core has said its goodbyes
        task_group.cancel_scope.cancel()
        try:
            return await task_group.__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            self._task_group = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the server for an app's lifetime: ``FastAPI(lifespan=server.lifespan)``
        (or ``Starlette(lifespan=...)``); inside a lifespan of your own, ``async with
        server:`` does the same."""
        async with self:
            yield

    @property
    def running(self) -> bool:
        """Entered (``async with server``) and not shut down."""
        return self._task_group is not None and not self._presence.is_shut_down

    async def drain(self, timeout: float) -> None:
        """Hand every client to another server before shutting down: each is closed with
        4503 (reconnect now) and its session lingers for the leave grace, so it moves with
        its client; the hub and cluster links stay up meanwhile. Returns once every
        session has moved or left, or after ``timeout`` seconds; leaving ``async with``
        then shuts down as usual, within the same ``timeout``: a socket still open when it
        is over (a client that never answers the close) is aborted, not waited for."""
        if self._presence.is_shut_down:
            return
        deadline = anyio.current_time() + timeout
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
        self.dispatch(DrainRequested())
        with anyio.move_on_after(timeout):
            while not self._presence.drained:
                await anyio.sleep(0.02)

    async def shutdown(self) -> None:
        """Hub link, then roster, then every client closed with 1001; wait for the sockets
        (each has ``close_timeout`` to answer; after a :meth:`drain`, only until the
        drain's timeout is over; leaving ``async with`` then aborts what is still open)."""
        if self._presence.is_shut_down:
            return
        self.dispatch(ShutdownRequested())
        wait = self._limits.close_timeout + 0.5
        if self._drain_deadline is not None:
            wait = max(0.0, min(wait, self._drain_deadline - anyio.current_time()))
        with anyio.move_on_after(wait):
            while self._clients or (self._hub is not None and self._hub.active):
                await anyio.sleep(0.02)

    def _group(self) -> anyio.abc.TaskGroup:
        if self._task_group is None:
            raise LocalUsageError("PresenceServer: use it inside 'async with server:'")
        return self._task_group

    async def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 4096,
    ) -> int:
        """Accept connections on ``host:port`` in the background; return the bound port.
        With ``ssl_context`` (a server context: ``megapresence_anyio.server_context``)
        the port speaks TLS (``wss://`` and ``https://``). ``backlog`` bounds the
        connections the kernel holds before they are accepted (it is capped by
        ``net.core.somaxconn``): in a reconnect storm a short queue drops SYNs, and
        each dropped SYN costs its client a retransmission (1 s, then 2, 4...)."""
        self._group()
        self.port = self._host.listen(
            host, port, ssl_context=ssl_context, reuse_port=reuse_port, backlog=backlog
        )
        return self.port

    async def listen_metrics(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Answer ``/metrics``, ``/healthz`` and ``/readyz`` (nothing else) on a port of their
        own, in plain HTTP; return the bound port. From then on they are answered there
        only: the main port answers them 404, and the ASGI app hands them to the other
        app (404 without one)."""
        return self._host.listen_ops(self._ops, host, port)

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

    async def handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        """Serve one connection accepted elsewhere (it is written through a queue)."""
        await self._host.handle_stream(stream)

    def asgi(self, other_app: ASGIApp | None = None, **options: Any) -> PresenceASGI:
        """This server as an ASGI app (``megapresence_anyio.PresenceASGI``): give it to
        uvicorn or Hypercorn, or mount it in Starlette or FastAPI."""
        return PresenceASGI(self, other_app, **options)

    async def handle_asgi(self, scope: Scope, receive: Receive, send: Send, **options: Any) -> None:
        """Serve one ASGI WebSocket connection (a route of your own hands it over)."""
        await serve_asgi(self, scope, receive, send, **options)

    def serves_path(self, path: str) -> bool:
        """Whether ``path`` is one of this server's WebSocket paths."""
        return self._opening.serves_path(path)

    def answers_http(self, path: str) -> bool:
        """Whether a plain HTTP request for ``path`` is this server's (a page, the JavaScript
        client, or ``/metrics``, ``/healthz``, ``/readyz`` unless :meth:`listen_metrics`
        moved them) rather than an app's it is mounted with."""
        return self._opening.answers_http(path)

    def http_answer(self, request: HandshakeRequest) -> Response:
        """The answer to a plain HTTP request: a page, ``/megapresence.js``, ``/metrics``,
        ``/healthz``, ``/readyz``, or the status saying there is nothing else here."""
        return self._opening.http_answer(request)

    @property
    def opening(self) -> ClientOpening[Client]:
        """How this server's client connections open, run and close (``_opening.py``):
        what the ASGI path hands its connections to."""
        return self._opening

    # ---------------------------------------------------------- core driving

    def dispatch(self, event: Event) -> None:
        """Feed one event to the core and perform its actions, in order. A client's
        ``Subscribe`` goes through ``authorize_subscription`` first, when there is one."""
        if self._gate is not None and type(event) is Subscribe and isinstance(event.conn, Client):
            self._gate.ask(event, event.conn)
            return
        self._handle(event)

    def command_allowed(self, client: Client) -> bool:
        """Count a command from ``client`` against its connection's rate (the core's
        ``CommandReceived``); False when it is over it: the client has been told
        (``rate_limited``) and the command must not be handled."""
        actions = self._presence.handle(CommandReceived(conn=client, now=self._host.clock()))
        self._perform(actions)
        return not actions

    def _handle(self, event: Event) -> None:
        self._perform(self._presence.handle(event))

    def _perform(self, actions: list[Action]) -> None:
        self._performers.perform(actions)

    def _dispatch_link(self, event: Event) -> None:
        """An event from the hub link or the cluster: it may change a link's state."""
        self.dispatch(event)
        self._health.check_links()

    def _on_tick(self, now: float) -> None:
        self._dispatch_link(Tick(now=now))
        for client in list(self._clients):
            client.session.keepalive(now)
        if self._hub is not None:
            self._hub.keepalive(now)

    # ------------------------------------------------------- embedding API

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message | Mapping[str, Any],
        except_session_ids: Iterable[str] = (),
    ) -> None:
        """Deliver to every connection of ``ns`` here and on every peer, except those sessions.
        It arrives without ``from``: a message of the server's."""
        self._group()
        self.dispatch(
            BroadcastRequested(
                ns=ns, channel=channel, message=message, except_session_ids=except_session_ids
            )
        )

    def direct_to_user(self, user_id: str, message: Message | Mapping[str, Any]) -> None:
        """Deliver to every connection of ``user_id``, here and on every peer (without
        ``from``: a message of the server's)."""
        self._group()
        self.dispatch(DirectRequested(user_id=user_id, message=message))

    def update_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> None:
        self.dispatch(
            MetadataUpdated(session_id=session_id, metadata=metadata, now=anyio.current_time())
        )

    def kick(self, session_id: str, reason: str | None = None, *, requeue: bool = False) -> None:
        """Close a session wherever it is: 1008 (kick) or, with ``requeue``, 4503."""
        self.dispatch(KickRequested(session_id=session_id, reason=reason, requeue=requeue))

    # ---------------------------------------------------------------- channels

    def subscribe(
        self,
        session: Client | str,
        channel: str,
        mode: PresenceMode | str = PresenceMode.NONE,
    ) -> RequestRefused | None:
        """Subscribe a session joined here (its ``Client`` or its session id) to ``channel``,
        or change its presence ``mode`` there: "none" (present only), "users", "sessions"
        or "count". The client is told ``subscribed``, then gets its snapshot or counts.
        The embedding program decides, so ``authorize_subscription`` is not asked. A
        refusal nobody could check beforehand (``channel_full``, ``too_many_channels``)
        is returned, not sent to the client; None means subscribed."""
        conn = self._conn("subscribe", session)
        return self._request(Subscribe(conn=conn, channel=channel, mode=mode, now=self._now()))

    def unsubscribe(self, session: Client | str, channel: str) -> None:
        """The session leaves ``channel`` at once (no grace); the client is told
        ``unsubscribed``. A channel it is not in is no error."""
        conn = self._conn("unsubscribe", session)
        self._request(Unsubscribe(conn=conn, channel=channel, now=self._now()))

    def publish(
        self,
        channel: str,
        message: Message | Mapping[str, Any],
        except_session_ids: Iterable[str] = (),
        *,
        sender: Client | Sender | None = None,
    ) -> None:
        """Deliver ``message`` (``{"type", "payload"?}``) to exactly the subscribers of
        ``channel``, here and on every bridge and instance, except those sessions. With
        ``sender`` (a joined ``Client`` or a ``Sender``) it arrives ``from`` that session.
        While this server's link to the hub or the cluster is down it is delivered nowhere
        (a warning is logged): the other servers' channel streams would miss it."""
        self._group()
        if isinstance(sender, Client):
            if sender.identity is None:
                raise LocalUsageError(
                    f"PresenceServer.publish: sender {sender!r} holds no session; give a "
                    "joined Client, a Sender(user_id=, session_id=) or None"
                )
            sender = Sender(user_id=sender.identity.user_id, session_id=sender.identity.session_id)
        self.dispatch(
            PublishRequested(
                channel=channel,
                message=message,
                except_session_ids=except_session_ids,
                sender=sender,
            )
        )

    def presence_stats(self, channel: str) -> ChannelStats:
        """Sessions and distinct users in ``channel``, in O(1): cluster-wide through NATS,
        and through the hub for a channel this server has a member or an interest in."""
        return ChannelStats(*self._presence.presence_stats(channel))

    def channel_members(self, channel: str) -> list[Member]:
        """The members of ``channel`` as this server knows them (as ``presence_stats``)."""
        return self._presence.channel_members(channel)

    def _now(self) -> float:
        return self._host.clock()

    def _conn(self, what: str, session: Client | str) -> Client:
        self._group()
        if isinstance(session, Client):
            return session
        conn = self._presence.connection_of(session)
        if not isinstance(conn, Client):
            raise LocalUsageError(
                f"PresenceServer.{what}: no session {session!r} is connected to this server; "
                "give a Client or the id of a session joined here"
            )
        return conn

    def _request(self, event: Event) -> RequestRefused | None:
        """Handle an embedder's request; its refusal (if any) is returned, not sent."""
        actions = self._presence.handle(event)
        refusal = next((a for a in actions if isinstance(a, RequestRefused)), None)
        self._perform([a for a in actions if a is not refusal])
        return refusal

    def roster(self, ns: str) -> list[Member]:
        return self._presence.roster(ns)

    async def presence_list(self, channels: Iterable[str]) -> list[Member]:
        """Members of ``channels``: this process's (always fresh) first, then the shared
        roster's, read concurrently. With a roster backend that is down this raises its
        error (``RosterUnavailableError``) rather than answer with local members only."""
        wanted = tuple(channels)
        roster = self._backends.roster
        remote = await roster.members(wanted) if roster is not None else []
        return self._presence.presence_list(wanted, remote)

    # ------------------------------------------------------ links and health

    def link_states(self) -> dict[str, str]:
        """The state of each link this server has: ``hub`` (the core's hub link state),
        ``cluster`` (NATS) and ``roster`` (Redis: ``ok`` or ``failing``)."""
        return self._health.link_states()

    def readiness(self) -> Readiness:
        """Whether to send this server traffic: running, its hub link registered (or no
        hub), NATS connected and Redis answering (when used), no essential task failed."""
        server = "running" if self.running else ("stopping" if self._task_group else "stopped")
        return self._health.readiness(server)

    @property
    def stats(self) -> Stats:
        """The server's counters (what ``/metrics`` shows)."""
        return self._stats

    @property
    def limits(self) -> SocketLimits:
        return self._limits

    @property
    def presence(self) -> Presence:
        """The core machine, for queries (``hub_link_state``, ``connection_state``...)."""
        return self._presence

    @property
    def clients(self) -> frozenset[Client]:
        return frozenset(self._clients)
