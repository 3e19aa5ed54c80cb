"""``HubServer``: the hub as a real server, driven by ``megapresence_core.Hub``.

It accepts bridges on any path of its port. The upgrade's Authorization header
goes to the core before anything else; a refusal is an HTTP response (401)
and leaves no state behind. A bridge over the hub's frame rate is slowed, not
refused: the core says until when (``PauseBridge``) and the bridge's read loop
waits that long before it reads on, so TCP holds the bridge back. On shutdown
the core drains every bridge with 4503 and the server waits (bounded) for them
to go. Like ``PresenceServer``, it hosts its sockets through a ``ConnectionHost``
(``_host.py``: caps, handshake deadlines, fault boundaries), answers ``/metrics``,
``/healthz`` and ``/readyz`` (``_ops.py``), can listen with TLS, and runs its
background tasks behind a boundary each.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, final

import anyio
import anyio.abc
import attrs

from megapresence_core import Hub, HubConfig, Log, ShutdownRequested, Tick
from megapresence_core.actions import (
    AcceptBridge,
    CloseBridge,
    PauseBridge,
    RefuseBridge,
    SendBridgeFrame,
)
from megapresence_core.config import HistoryConfig
from megapresence_core.events import BridgeClosed, BridgeConnecting, BridgeFrameReceived, HubEvent

from ._background import Background
from ._config import DEFAULT_HUB_LIMITS, SocketLimits
from ._guard import Guard
from ._host import ConnectionHost
from ._http import HandshakeRequest, server_connection, write_upgrade
from ._hub_batch import FrameBatch
from ._logging import log_action
from ._ops import (
    DEFAULT_METRICS_ACCESS,
    MetricsAccess,
    OpsEndpoints,
    Readiness,
    respond_with,
)
from ._outgoing import text_frame, utf8_len
from ._session import WebSocketSession
from ._stats import Metric, Stats, counter, gauge, held_bytes
from ._ticker import Ticker
from ._transport import Spawn, Transport
from ._upgrade import read_upgrade

__all__ = ["HubServer"]


@final
class _BridgeSocket:
    """One bridge connection: the core's id for it, and what the shim needs to answer."""

    __slots__ = ("batch", "paused_until", "session", "verdict")

    def __init__(self) -> None:
        #: The core's ``PauseBridge``: nothing more is read from it before this time.
        self.paused_until = 0.0
        #: Set at the upgrade, in the same step as the core's AcceptBridge.
        self.session: WebSocketSession | None = None
        #: Frames marked ``batch`` for this bridge in this turn (set with the session).
        self.batch: FrameBatch | None = None
        self.verdict: AcceptBridge | RefuseBridge | None = None

    def open(self, session: WebSocketSession, max_bytes: int, spawn: Spawn) -> None:
        self.session = session
        self.batch = FrameBatch(self._send_batch, max_bytes, spawn)

    def _send_batch(self, text: str) -> None:
        assert self.session is not None
        self.session.send_frame(text_frame(text.encode("utf-8")), anyio.current_time())

    async def _wait(self, delay: float) -> None:
        await anyio.sleep(delay)

    def pause(self) -> Awaitable[None] | None:
        """What the read loop awaits before it reads on: the core's pause, if any."""
        delay = self.paused_until - anyio.current_time()
        return self._wait(delay) if delay > 0 else None


@final
class HubServer:
    """The hub over real sockets.

    Bridge links get ``HubConfig.max_frame_bytes`` as their message limit (a hub
    frame is a client message plus routing, so the client socket limit would
    refuse legal broadcasts); every other cap comes from ``limits``, whose
    ``max_connections`` counts bridge links.
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        limits: SocketLimits = DEFAULT_HUB_LIMITS,
        metrics_access: MetricsAccess = DEFAULT_METRICS_ACCESS,
    ) -> None:
        if config.history is None:
            # The hub numbers channel streams; a new boot id at every start, so an epoch
            # never repeats after a restart (even under a fixed hub id).
            config = attrs.evolve(config, history=HistoryConfig(boot_id=uuid.uuid4().hex))
        self._hub = Hub(config)
        self._limits = limits
        self._bridge_limits = attrs.evolve(limits, max_message_bytes=config.max_frame_bytes)
        self._stats = Stats()
        self._background = Background(self._stats, self._group)
        self._host: ConnectionHost[_BridgeSocket] = ConnectionHost(
            open=self._handshake,
            run=self._run,
            closed=self._closed,
            limits=limits,
            stats=self._stats,
            background=self._background,
            # A few links, each paused by the hub's flow control: a task each is simpler.
            callbacks=False,
        )
        self._admission = self._host.admission
        self._bridges: set[_BridgeSocket] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ticker = Ticker(
            self._hub.next_deadline,
            self._on_tick,
            max(0.05, min(limits.close_timeout, config.heartbeat_interval) / 4),
            self._stats,
        )
        self._ops = OpsEndpoints(metrics_access, self._metrics, self.readiness)
        self._performers: dict[type[Any], Callable[[Any], None]] = {
            AcceptBridge: self._verdict,
            RefuseBridge: self._verdict,
            SendBridgeFrame: self._send,
            CloseBridge: self._close,
            PauseBridge: self._pause,
            Log: log_action,
        }
        self._draining = False
        #: ``PauseBridge`` actions performed: how often a bridge was slowed down.
        self._pauses = 0
        self.port: int | None = None

    @property
    def hub(self) -> Hub:
        return self._hub

    async def __aenter__(self) -> HubServer:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._host.start(self._task_group)
        self._background.service("ticker", self._ticker.run)
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        with anyio.CancelScope(shield=True):
            await self.drain()
            await self._host.stop()
        task_group.cancel_scope.cancel()
        return await task_group.__aexit__(*exc_info)  # type: ignore[arg-type]

    async def drain(self) -> None:
        """Close every bridge with 4503 (reconnect elsewhere or later) and wait for them."""
        if not self._draining:
            self._draining = True
            self.dispatch(ShutdownRequested())
        with anyio.move_on_after(self._limits.close_timeout + 0.5):
            while self._bridges:
                await anyio.sleep(0.02)

    def _group(self) -> anyio.abc.TaskGroup:
        assert self._task_group is not None, "use HubServer inside 'async with'"
        return self._task_group

    async def listen(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> int:
        """Accept bridges on ``host:port`` (TLS with ``ssl_context``); return the port."""
        self.port = self._host.listen(host, port, ssl_context=ssl_context)
        return self.port

    async def listen_metrics(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """``/metrics``, ``/healthz`` and ``/readyz`` on a port of their own (plain HTTP),
        and there only: the main port answers them as any other path from then on."""
        return self._host.listen_ops(self._ops, host, port)

    def dispatch(self, event: HubEvent) -> None:
        for action in self._hub.handle(event):
            self._performers[type(action)](action)
        self._ticker.reschedule()

    def _on_tick(self, now: float) -> None:
        self.dispatch(Tick(now=now))
        for bridge in list(self._bridges):
            if bridge.session is not None:
                bridge.session.keepalive(now)

    def _run(self, bridge: _BridgeSocket) -> Awaitable[None]:
        assert bridge.session is not None  # opened by the handshake
        return bridge.session.run(lambda text: self._received(bridge, text))

    def _received(self, bridge: _BridgeSocket, text: str) -> Awaitable[None] | None:
        """A message from ``bridge``; the read loop then waits out any pause it caused."""
        self.dispatch(BridgeFrameReceived(bridge=bridge, data=text, now=self._host.clock()))
        return bridge.pause()

    async def _closed(self, guard: Guard[Transport]) -> None:
        bridge = guard.conn
        if isinstance(bridge, _BridgeSocket):
            self._bridges.discard(bridge)
            self.dispatch(BridgeClosed(bridge=bridge, now=self._host.clock()))

    async def _handshake(self, guard: Guard[Transport]) -> _BridgeSocket | None:
        """Read the request; answer it over HTTP, refuse it, or accept the bridge."""
        read = await read_upgrade(guard, self._limits, self._answer_http, swept=True)
        if read is None:
            return None
        request, trailing = read
        status = self._admission.refusal(guard)
        if status is not None:
            guard.respond(status)
            return None
        bridge = _BridgeSocket()
        # The token goes to the core before anything else; a refusal leaves no state.
        self.dispatch(
            BridgeConnecting(
                bridge=bridge,
                authorization=request.header("authorization"),
                now=self._host.clock(),
            )
        )
        verdict = bridge.verdict
        if isinstance(verdict, RefuseBridge):
            guard.refuse(verdict.status, verdict.reason)
            return None
        guard.conn = bridge
        self._bridges.add(bridge)
        self._admission.upgrade(guard)
        write_upgrade(guard.transport, request)
        limits = self._bridge_limits
        connection = server_connection(trailing, limits.max_message_bytes)
        guard.session = session = WebSocketSession(
            guard.transport, connection, limits, self._host.clock()
        )
        bridge.open(session, limits.max_message_bytes, self._background.spawn)
        return bridge

    def _answer_http(self, guard: Guard[Transport], request: HandshakeRequest) -> None:
        """``GET /presence`` (with a hub token) lists every session the hub holds and each
        bridge's interests (channels it tracks without a member), as JSON;
        ``/metrics``, ``/healthz`` and ``/readyz`` answer as on a presence server (unless
        they have a port of their own)."""
        ops = self._ops.answer(request)
        if ops is not None:
            respond_with(guard, request, ops)
        elif request.path in OpsEndpoints.PATHS:  # answered on the metrics port
            guard.respond(404)
        elif request.path != "/presence":
            guard.respond(426, b"this is a megapresence hub: connect with WebSocket\n")
        elif not self._hub.authorized(request.header("authorization")):
            guard.respond(401)
        else:
            members = [
                {
                    "bridgeId": m.bridge_id,
                    "sessionId": m.session_id,
                    "userId": m.user_id,
                    "channels": list(m.channels),
                    "metadata": m.metadata,
                }
                for m in self._hub.members()
            ]
            listing = {
                "hubId": self._hub.hub_id,
                "members": members,
                "interests": {bridge: list(ch) for bridge, ch in self._hub.interests().items()},
            }
            body = json.dumps(listing).encode()
            guard.respond(200, body, "application/json")

    def _verdict(self, action: AcceptBridge | RefuseBridge) -> None:
        action.bridge.verdict = action  # type: ignore[attr-defined]

    def _send(self, action: SendBridgeFrame) -> None:
        bridges: tuple[_BridgeSocket, ...] = action.bridges  # type: ignore[assignment]
        if action.batch:
            self._stats.delivered(len(bridges), utf8_len(action.data))
            for bridge in bridges:
                if bridge.batch is not None:
                    bridge.batch.add(action.data)
            return
        data = action.data.encode("utf-8")
        self._stats.delivered(len(bridges), len(data))
        frame = text_frame(data)
        now = anyio.current_time()
        for bridge in bridges:
            if bridge.session is not None and bridge.batch is not None:
                bridge.batch.flush()  # what this turn held for it goes first
                bridge.session.send_frame(frame, now)

    def _pause(self, action: PauseBridge) -> None:
        bridge: _BridgeSocket = action.bridge  # type: ignore[assignment]
        bridge.paused_until = action.until
        self._pauses += 1

    def _close(self, action: CloseBridge) -> None:
        bridge: _BridgeSocket = action.bridge  # type: ignore[assignment]
        if bridge.session is not None and bridge.batch is not None:
            bridge.batch.flush()  # an ERROR frame before the close says why
            bridge.session.close(action.code, action.reason, anyio.current_time())

    # ------------------------------------------------------------- health

    def readiness(self) -> Readiness:
        """Ready while running and not draining, with no essential task failed."""
        running = self._task_group is not None and not self._draining
        checks = {"server": "running" if running else "stopped"}
        ready = running
        tasks_well = self._background.check(checks, ticker_failing=self._ticker.failing)
        return Readiness(ready and tasks_well, checks)

    def _metrics(self) -> list[Metric]:
        metrics = self._stats.metrics(
            connections=self._admission.open,
            pending=self._admission.pending,
            queued=held_bytes(
                bridge.session.transport for bridge in self._bridges if bridge.session is not None
            ),
        )
        metrics += [
            gauge(
                "megapresence_hub_bridges",
                "Bridges registered at this hub.",
                len(self._hub.registered_bridges()),
            ),
            gauge("megapresence_hub_sessions", "Sessions the hub holds.", len(self._hub.members())),
            counter(
                "megapresence_hub_bridge_pauses",
                "Times a bridge over the frame rate was paused (read no more for a while).",
                self._pauses,
            ),
            gauge(
                "megapresence_hub_history_bytes",
                "Bytes of channel history the hub keeps for recovery.",
                self._hub.history_bytes,
            ),
        ]
        return metrics

    @property
    def stats(self) -> Stats:
        return self._stats
