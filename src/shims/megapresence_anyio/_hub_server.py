"""``HubServer``: the hub as a real server, driven by ``megapresence_core.Hub``.

It accepts bridges on any path of its port. The upgrade's Authorization header
goes to the core before anything else; a refusal is an HTTP response (401)
and leaves no state behind. On shutdown the core drains every bridge with
4503 and the server waits (bounded) for them to go.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Coroutine
from typing import Any, final

import anyio
import anyio.abc

from megapresence_core import Hub, HubConfig, Log, ShutdownRequested, Tick
from megapresence_core.actions import AcceptBridge, CloseBridge, RefuseBridge, SendBridgeFrame
from megapresence_core.events import BridgeClosed, BridgeConnecting, BridgeFrameReceived, HubEvent

from ._config import DEFAULT_SOCKET_LIMITS, SocketLimits
from ._http import HandshakeRequest, accept_websocket, read_request, respond
from ._listener import accept_forever, open_listener
from ._logging import log_action
from ._session import WebSocketSession, text_frame
from ._ticker import Ticker
from ._transport import SocketTransport, Transport

__all__ = ["HubServer"]


@final
class _BridgeSocket:
    """One bridge connection: the core's id for it, and what the shim needs to answer."""

    __slots__ = ("session", "transport", "verdict")

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.session: WebSocketSession | None = None
        self.verdict: AcceptBridge | RefuseBridge | None = None


@final
class HubServer:
    def __init__(self, config: HubConfig, *, limits: SocketLimits = DEFAULT_SOCKET_LIMITS) -> None:
        self._hub = Hub(config)
        self._limits = limits
        self._bridges: set[_BridgeSocket] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._ticker = Ticker(
            self._hub.next_deadline,
            self._on_tick,
            max(0.05, min(limits.close_timeout, config.heartbeat_interval) / 4),
        )
        self._performers: dict[type[Any], Callable[[Any], None]] = {
            AcceptBridge: self._verdict,
            RefuseBridge: self._verdict,
            SendBridgeFrame: self._send,
            CloseBridge: self._close,
            Log: log_action,
        }
        self._draining = False
        self.port: int | None = None

    @property
    def hub(self) -> Hub:
        return self._hub

    async def __aenter__(self) -> HubServer:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._ticker.run)
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        task_group = self._task_group
        assert task_group is not None
        with anyio.CancelScope(shield=True):
            await self.drain()
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

    def _spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        assert self._task_group is not None, "use HubServer inside 'async with'"
        self._task_group.start_soon(function, *args)

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        sock = open_listener(host, port)
        self.port = sock.getsockname()[1]
        self._spawn(
            accept_forever,
            sock,
            lambda conn, remote: self._spawn(self._handle_socket, conn, remote),
        )
        return self.port

    def dispatch(self, event: HubEvent) -> None:
        for action in self._hub.handle(event):
            self._performers[type(action)](action)
        self._ticker.reschedule()

    def _on_tick(self, now: float) -> None:
        self.dispatch(Tick(now=now))
        for bridge in list(self._bridges):
            if bridge.session is not None:
                bridge.session.keepalive(now)

    async def _handle_socket(self, sock: socket.socket, remote: tuple[str, int] | None) -> None:
        limits = self._limits
        transport = SocketTransport(sock, spawn=self._spawn, max_buffer=limits.max_send_buffer)
        bridge = _BridgeSocket(transport)
        try:
            result = await read_request(transport, limits, remote)
            if result is None:
                return
            request, raw = result
            if not request.is_websocket:
                self._answer_http(transport, request)
                return
            self.dispatch(
                BridgeConnecting(
                    bridge=bridge,
                    authorization=request.header("authorization"),
                    now=anyio.current_time(),
                )
            )
            if isinstance(bridge.verdict, RefuseBridge):
                respond(transport, bridge.verdict.status, (bridge.verdict.reason + "\n").encode())
                return
            await self._run_bridge(bridge, request, raw)
        finally:
            await transport.drain_and_close(limits.close_timeout)

    def _answer_http(self, transport: Transport, request: HandshakeRequest) -> None:
        """``GET /presence`` (with a hub token) lists every session the hub holds, as JSON."""
        if request.path != "/presence":
            respond(transport, 426, b"this is a megapresence hub: connect with WebSocket\n")
        elif not self._hub.authorized(request.header("authorization")):
            respond(transport, 401)
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
            body = json.dumps({"hubId": self._hub.hub_id, "members": members}).encode()
            respond(transport, 200, body, "application/json")

    async def _run_bridge(
        self, bridge: _BridgeSocket, request: HandshakeRequest, raw: bytes
    ) -> None:
        ws = accept_websocket(bridge.transport, request, raw)
        if ws is not None:
            bridge.session = WebSocketSession(
                bridge.transport, ws, self._limits, anyio.current_time()
            )
        self._bridges.add(bridge)
        try:
            if bridge.session is not None:
                await bridge.session.run(
                    lambda text: self.dispatch(
                        BridgeFrameReceived(bridge=bridge, data=text, now=anyio.current_time())
                    )
                )
        finally:
            self._bridges.discard(bridge)
            self.dispatch(BridgeClosed(bridge=bridge, now=anyio.current_time()))

    def _verdict(self, action: AcceptBridge | RefuseBridge) -> None:
        action.bridge.verdict = action  # type: ignore[attr-defined]

    def _send(self, action: SendBridgeFrame) -> None:
        frame = text_frame(action.data.encode("utf-8"))
        for bridge in action.bridges:
            session = bridge.session  # type: ignore[attr-defined]
            if session is not None:
                session.send_frame(frame)

    def _close(self, action: CloseBridge) -> None:
        session = action.bridge.session  # type: ignore[attr-defined]
        if session is not None:
            session.close(action.code, action.reason)
        else:
            action.bridge.transport.abort()  # type: ignore[attr-defined]
