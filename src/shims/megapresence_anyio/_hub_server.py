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
import attrs

from megapresence_core import Hub, HubConfig, Log, ShutdownRequested, Tick
from megapresence_core.actions import AcceptBridge, CloseBridge, RefuseBridge, SendBridgeFrame
from megapresence_core.events import BridgeClosed, BridgeConnecting, BridgeFrameReceived, HubEvent

from ._config import DEFAULT_HUB_LIMITS, SocketLimits
from ._guard import Admission, Guard, read_upgrade
from ._http import HandshakeRequest, server_connection, write_upgrade
from ._listener import accept_forever, open_listener
from ._logging import log_action
from ._session import WebSocketSession, text_frame
from ._ticker import Ticker
from ._transport import SocketTransport

__all__ = ["HubServer"]


@final
class _BridgeSocket:
    """One bridge connection: the core's id for it, and what the shim needs to answer."""

    __slots__ = ("session", "verdict")

    def __init__(self) -> None:
        #: Set at the upgrade, in the same step as the core's AcceptBridge.
        self.session: WebSocketSession | None = None
        self.verdict: AcceptBridge | RefuseBridge | None = None


@final
class HubServer:
    """The hub over real sockets.

    Bridge links get ``HubConfig.max_frame_bytes`` as their message limit (a hub
    frame is a client message plus routing, so the client socket limit would
    refuse legal broadcasts); every other cap comes from ``limits``, whose
    ``max_connections`` counts bridge links.
    """

    def __init__(self, config: HubConfig, *, limits: SocketLimits = DEFAULT_HUB_LIMITS) -> None:
        self._hub = Hub(config)
        self._limits = limits
        self._bridge_limits = attrs.evolve(limits, max_message_bytes=config.max_frame_bytes)
        self._admission = Admission(limits)
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
        self._spawn(accept_forever, sock, self._on_accept)
        return self.port

    def _on_accept(self, sock: socket.socket, remote: tuple[str, int] | None) -> None:
        transport = SocketTransport(
            sock, spawn=self._spawn, max_buffer=self._limits.max_send_buffer
        )
        guard = Guard(transport, remote)
        self._spawn(self._serve, guard, self._admission.begin(guard))

    def dispatch(self, event: HubEvent) -> None:
        for action in self._hub.handle(event):
            self._performers[type(action)](action)
        self._ticker.reschedule()

    def _on_tick(self, now: float) -> None:
        self.dispatch(Tick(now=now))
        for bridge in list(self._bridges):
            if bridge.session is not None:
                bridge.session.keepalive(now)

    async def _serve(self, guard: Guard, refused: int | None) -> None:
        """One bridge link behind its fault boundary: nothing it raises reaches the hub."""
        try:
            if refused is not None:
                guard.respond(refused)  # over a handshake cap (logged by the admission)
            else:
                bridge = await self._handshake(guard)
                if bridge is not None and bridge.session is not None:
                    await bridge.session.run(
                        lambda text: self.dispatch(
                            BridgeFrameReceived(bridge=bridge, data=text, now=anyio.current_time())
                        )
                    )
                    guard.ended()
        except Exception as exc:
            guard.fault(exc)
        finally:
            await self._admission.finish(guard, lambda: self._closed(guard))

    async def _closed(self, guard: Guard) -> None:
        bridge = guard.conn
        if isinstance(bridge, _BridgeSocket):
            self._bridges.discard(bridge)
            self.dispatch(BridgeClosed(bridge=bridge, now=anyio.current_time()))

    async def _handshake(self, guard: Guard) -> _BridgeSocket | None:
        """Read the request; answer it over HTTP, refuse it, or accept the bridge."""
        read = await read_upgrade(guard, self._limits, self._answer_http)
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
                now=anyio.current_time(),
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
        bridge.session = guard.session = WebSocketSession(
            guard.transport, server_connection(trailing), self._bridge_limits, anyio.current_time()
        )
        return bridge

    def _answer_http(self, guard: Guard, request: HandshakeRequest) -> None:
        """``GET /presence`` (with a hub token) lists every session the hub holds, as JSON."""
        if request.path != "/presence":
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
            body = json.dumps({"hubId": self._hub.hub_id, "members": members}).encode()
            guard.respond(200, body, "application/json")

    def _verdict(self, action: AcceptBridge | RefuseBridge) -> None:
        action.bridge.verdict = action  # type: ignore[attr-defined]

    def _send(self, action: SendBridgeFrame) -> None:
        frame = text_frame(action.data.encode("utf-8"))
        now = anyio.current_time()
        for bridge in action.bridges:
            session = bridge.session  # type: ignore[attr-defined]
            if session is not None:
                session.send_frame(frame, now)

    def _close(self, action: CloseBridge) -> None:
        session = action.bridge.session  # type: ignore[attr-defined]
        if session is not None:
            session.close(action.code, action.reason, anyio.current_time())
