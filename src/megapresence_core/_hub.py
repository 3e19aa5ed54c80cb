"""``Hub``: the server every bridge links to, one sans-IO machine for all of them.

Theory of operation: a bridge is authenticated before any state exists for
it (the shim passes the upgrade's Authorization header), must REGISTER first,
and is then a member of the hub's presence through the sessions it JOINs.
Frames are routed, never echoed to their origin: BROADCAST to the bridges
with a member in the channel, DIRECT to those holding a session of the user,
DISCONNECT to the session's owner, JOIN/LEAVE/METADATA to the bridges
sharing a channel. A bridge that goes (closed, silent, replaced by a newer
incarnation, or closed for errors) loses its sessions at once, announced by
one BULK_LEAVE to the bridges that shared a channel with it.

A bad frame from one bridge costs that bridge only: an ERROR frame and a
strike; ``max_errors`` strikes, or one protocol violation, close it with 1008.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable
from typing import Any, Final, final

import attrs

from ._actions import Log, LogLevel
from ._close import CloseCode, truncate_reason
from ._config import HUB_PROTOCOL_VERSION, HubConfig
from ._errors import FrameError, LocalUsageError
from ._events import ShutdownRequested, Tick
from ._hub_events import (
    AcceptBridge,
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    CloseBridge,
    HubAction,
    HubEvent,
    RefuseBridge,
    SendBridgeFrame,
)
from ._hub_frames import (
    BroadcastFrame,
    BulkLeaveFrame,
    DirectFrame,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MetadataFrame,
    RegisteredFrame,
    RegisterFrame,
    decode_hub_frame,
    encode_hub_frame,
)
from ._hub_presence import HubPresence, HubSession
from ._json import JsonObject, dumps, utf8_len
from ._lifecycle import BRIDGE_TRANSITIONS, BridgeInput, BridgeState, advance

__all__ = ["Hub", "HubMember"]

_HEARTBEAT_TEXT: Final = encode_hub_frame(HeartbeatFrame())


@final
@attrs.frozen(kw_only=True)
class HubMember:
    """One session in the hub's presence, with the bridge that owns it."""

    bridge_id: str
    session_id: str
    user_id: str
    channels: tuple[str, ...]
    metadata: JsonObject | None = attrs.field(default=None, hash=False)


@final
class _Bridge:
    __slots__ = (
        "allowance",
        "allowance_at",
        "bridge",
        "bridge_id",
        "connected_at",
        "errors",
        "instance_id",
        "last_heard",
        "last_sent",
        "state",
    )

    def __init__(self, bridge: Hashable, now: float, burst: float) -> None:
        self.bridge = bridge
        self.state = BridgeState.AWAITING_REGISTER
        self.bridge_id: str | None = None
        self.instance_id: str | None = None
        self.connected_at = now
        self.last_heard = now
        self.last_sent = now
        self.errors = 0
        self.allowance = burst
        self.allowance_at = now


def _bearer(authorization: str | None) -> bytes:
    if authorization is None:
        return b""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return b""
    return token.strip().encode("utf-8", "surrogateescape")


@final
class Hub:
    """Presence and routing for every bridge connected to this hub process."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._tokens = tuple(token.encode("utf-8") for token in config.tokens)
        self._bridges: dict[Hashable, _Bridge] = {}
        self._by_bridge_id: dict[str, _Bridge] = {}
        self._presence = HubPresence()
        self._draining = False

    @property
    def hub_id(self) -> str:
        return self._config.hub_id

    def handle(self, event: HubEvent) -> list[HubAction]:
        """Apply one event; return what the shim must do, in order."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise LocalUsageError(f"Hub.handle: not a hub event: {event!r}")
        return handler(self, event)

    # ------------------------------------------------------------ lifecycle

    def authorized(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the configured tokens."""
        presented = _bearer(authorization)
        # Compare with every token, always, so timing says nothing about which
        # token (if any) matched or how much of it did.
        matched = False
        for token in self._tokens:
            matched |= hmac.compare_digest(presented, token)
        return matched and bool(presented)

    def _on_connecting(self, event: BridgeConnecting) -> list[HubAction]:
        if event.bridge in self._bridges:
            raise LocalUsageError(f"BridgeConnecting: bridge {event.bridge!r} is already connected")
        if self._draining:
            return [RefuseBridge(bridge=event.bridge, status=503, reason="hub is draining")]
        if not self.authorized(event.authorization):
            return [
                Log(level=LogLevel.WARNING, event="hub.auth.refused", fields={}),
                RefuseBridge(bridge=event.bridge, status=401, reason="bad or missing bearer token"),
            ]
        self._bridges[event.bridge] = _Bridge(event.bridge, event.now, self._config.frame_burst)
        return [AcceptBridge(bridge=event.bridge)]

    def _get(self, bridge: Hashable, what: str) -> _Bridge:
        record = self._bridges.get(bridge)
        if record is None:
            raise LocalUsageError(f"{what}: unknown bridge {bridge!r}; accept it first")
        return record

    def _on_closed(self, event: BridgeClosed) -> list[HubAction]:
        record = self._get(event.bridge, "BridgeClosed")
        was_registered = record.state is BridgeState.REGISTERED
        record.state = advance(BRIDGE_TRANSITIONS, record.state, BridgeInput.CLOSED, what="bridge")
        del self._bridges[event.bridge]
        if not was_registered:
            return []
        return [
            Log(
                level=LogLevel.INFO, event="hub.bridge.gone", fields={"bridge_id": record.bridge_id}
            ),
            *self._forget(record, notify=True),
        ]

    def _forget(self, record: _Bridge, *, notify: bool) -> list[HubAction]:
        """Drop a registered bridge's sessions; tell the bridges that shared a channel."""
        assert record.bridge_id is not None  # set by REGISTER
        del self._by_bridge_id[record.bridge_id]
        sessions = self._presence.remove_bridge(record.bridge)
        if not sessions or not notify:
            return []
        channels = {channel for session in sessions for channel in session.channels}
        frame = BulkLeaveFrame(
            bridge_id=record.bridge_id, session_ids=tuple(s.session_id for s in sessions)
        )
        return self._route(self._presence.bridges_in(channels, besides=record.bridge), frame)

    def _close(
        self, record: _Bridge, code: int, reason: str, *, notify: bool = True
    ) -> list[HubAction]:
        was_registered = record.state is BridgeState.REGISTERED
        record.state = advance(BRIDGE_TRANSITIONS, record.state, BridgeInput.CLOSE, what="bridge")
        actions: list[HubAction] = [
            CloseBridge(bridge=record.bridge, code=code, reason=truncate_reason(reason))
        ]
        if was_registered:
            actions += self._forget(record, notify=notify)
        return actions

    def _on_tick(self, event: Tick) -> list[HubAction]:
        config, now = self._config, event.now
        silence = config.heartbeat_interval * config.dead_after_intervals
        actions: list[HubAction] = []
        due: list[Hashable] = []
        for record in list(self._bridges.values()):
            if record.state is BridgeState.AWAITING_REGISTER:
                if now - record.connected_at >= config.register_timeout:
                    actions += self._close(record, CloseCode.POLICY, "no REGISTER in time")
            elif record.state is BridgeState.REGISTERED:
                if now - record.last_heard >= silence:
                    actions.append(
                        Log(
                            level=LogLevel.WARNING,
                            event="hub.bridge.dead",
                            fields={"bridge_id": record.bridge_id},
                        )
                    )
                    actions += self._close(record, CloseCode.GOING_AWAY, "bridge silent")
                elif now - record.last_sent >= config.heartbeat_interval:
                    record.last_sent = now
                    due.append(record.bridge)
        if due:
            actions.append(SendBridgeFrame(bridges=tuple(due), data=_HEARTBEAT_TEXT))
        return actions

    def _on_shutdown(self, event: ShutdownRequested) -> list[HubAction]:
        self._draining = True
        actions: list[HubAction] = []
        for record in list(self._bridges.values()):
            if record.state is not BridgeState.CLOSING:
                actions += self._close(record, CloseCode.REQUEUE, "hub draining", notify=False)
        return actions

    # ---------------------------------------------------------------- frames

    def _on_frame(self, event: BridgeFrameReceived) -> list[HubAction]:
        record = self._get(event.bridge, "BridgeFrameReceived")
        if record.state is BridgeState.CLOSING:
            return []  # it is on its way out; nothing it says counts any more
        if not self._within_rate(record, event.now):
            return self._strike(record, "rate_limited", "over the frames-per-second limit")
        record.last_heard = event.now
        try:
            frame = decode_hub_frame(event.data, max_bytes=self._config.max_frame_bytes)
        except FrameError as exc:
            return self._strike(record, exc.code, str(exc))
        if record.state is BridgeState.AWAITING_REGISTER:
            if isinstance(frame, RegisterFrame):
                return self._register(record, frame, event.now)
            return self._fatal(record, "not_registered", "the first frame must be REGISTER")
        return _FRAME_HANDLERS[type(frame)](self, record, frame)

    def _within_rate(self, record: _Bridge, now: float) -> bool:
        config = self._config
        elapsed = max(0.0, now - record.allowance_at)
        record.allowance = min(
            config.frame_burst, record.allowance + elapsed * config.max_frames_per_second
        )
        record.allowance_at = now
        if record.allowance < 1.0:
            return False
        record.allowance -= 1.0
        return True

    def _error_frame(self, record: _Bridge, code: str, message: str) -> SendBridgeFrame:
        text = encode_hub_frame(ErrorFrame(code=code, message=message[:200]))
        return SendBridgeFrame(bridges=(record.bridge,), data=text)

    def _strike(self, record: _Bridge, code: str, message: str) -> list[HubAction]:
        record.errors += 1
        actions: list[HubAction] = [
            Log(
                level=LogLevel.WARNING,
                event="hub.frame.refused",
                fields={"bridge_id": record.bridge_id, "code": code, "error": message},
            ),
            self._error_frame(record, code, message),
        ]
        if record.errors >= self._config.max_errors:
            actions += self._close(record, CloseCode.POLICY, f"too many errors (last: {code})")
        return actions

    def _fatal(self, record: _Bridge, code: str, message: str) -> list[HubAction]:
        return [
            Log(
                level=LogLevel.WARNING,
                event="hub.protocol.violation",
                fields={"bridge_id": record.bridge_id, "code": code, "error": message},
            ),
            self._error_frame(record, code, message),
            *self._close(record, CloseCode.POLICY, message),
        ]

    def _register(self, record: _Bridge, frame: RegisterFrame, now: float) -> list[HubAction]:
        if frame.protocol != HUB_PROTOCOL_VERSION:
            return self._fatal(
                record,
                "unsupported_protocol",
                f"protocol {frame.protocol} is not supported; this hub speaks "
                f"{HUB_PROTOCOL_VERSION}",
            )
        actions: list[HubAction] = []
        previous = self._by_bridge_id.get(frame.bridge_id)
        if previous is not None:
            # A newer connection of the same bridge: the old one is a ghost (a
            # half-open link or a crashed incarnation). Purge it now rather
            # than wait for its heartbeat to time out.
            actions.append(
                Log(
                    level=LogLevel.INFO,
                    event="hub.bridge.replaced",
                    fields={
                        "bridge_id": frame.bridge_id,
                        "new_incarnation": previous.instance_id != frame.instance_id,
                    },
                )
            )
            actions += self._close(previous, CloseCode.POLICY, "replaced by a newer connection")
        record.state = advance(
            BRIDGE_TRANSITIONS, record.state, BridgeInput.REGISTER, what="bridge"
        )
        record.bridge_id, record.instance_id = frame.bridge_id, frame.instance_id
        record.last_sent = now
        self._by_bridge_id[frame.bridge_id] = record
        registered = RegisteredFrame(
            hub_id=self._config.hub_id, heartbeat_interval=self._config.heartbeat_interval
        )
        actions.append(SendBridgeFrame(bridges=(record.bridge,), data=encode_hub_frame(registered)))
        return actions

    def _route(self, bridges: tuple[Hashable, ...], frame: HubFrame) -> list[HubAction]:
        if not bridges:
            return []
        return [SendBridgeFrame(bridges=bridges, data=encode_hub_frame(frame))]

    def _owned(self, record: _Bridge, session_id: str) -> HubSession | None:
        session = self._presence.sessions.get(session_id)
        return session if session is not None and session.bridge == record.bridge else None

    def _metadata_too_big(self, metadata: JsonObject | None) -> bool:
        return metadata is not None and utf8_len(dumps(metadata)) > self._config.max_metadata_bytes

    def _join(self, record: _Bridge, frame: JoinFrame) -> list[HubAction]:
        config = self._config
        if len(frame.channels) > config.max_channels_per_session:
            return self._strike(
                record,
                "too_many_channels",
                f"{len(frame.channels)} channels; the limit is {config.max_channels_per_session}",
            )
        if self._metadata_too_big(frame.metadata):
            return self._strike(
                record, "metadata_too_big", f"metadata over {config.max_metadata_bytes} bytes"
            )
        if self._owned(record, frame.session_id) is None and (
            self._presence.session_count(record.bridge) >= config.max_sessions_per_bridge
        ):
            return self._strike(
                record,
                "too_many_sessions",
                f"the limit is {config.max_sessions_per_bridge} per bridge",
            )
        self._presence.put(
            HubSession(
                frame.session_id,
                frame.user_id,
                record.bridge,
                frame.channels,
                frame.metadata,
            )
        )
        return self._route(self._presence.bridges_in(frame.channels, besides=record.bridge), frame)

    def _leave(self, record: _Bridge, frame: LeaveFrame) -> list[HubAction]:
        # Only the owner may remove a session: a stale LEAVE from the bridge it
        # moved away from must not remove it from its new bridge.
        if self._owned(record, frame.session_id) is None:
            return []
        session = self._presence.remove(frame.session_id)
        return self._route(
            self._presence.bridges_in(session.channels, besides=record.bridge), frame
        )

    def _metadata(self, record: _Bridge, frame: MetadataFrame) -> list[HubAction]:
        session = self._owned(record, frame.session_id)
        if session is None:
            return []
        if self._metadata_too_big(frame.metadata):
            return self._strike(
                record, "metadata_too_big", f"metadata over {self._config.max_metadata_bytes} bytes"
            )
        session.metadata = frame.metadata
        return self._route(
            self._presence.bridges_in(session.channels, besides=record.bridge), frame
        )

    def _broadcast(self, record: _Bridge, frame: BroadcastFrame) -> list[HubAction]:
        return self._route(
            self._presence.bridges_in((frame.channel,), besides=record.bridge), frame
        )

    def _direct(self, record: _Bridge, frame: DirectFrame) -> list[HubAction]:
        return self._route(
            self._presence.bridges_of_user(frame.user_id, besides=record.bridge), frame
        )

    def _disconnect(self, record: _Bridge, frame: DisconnectFrame) -> list[HubAction]:
        session = self._presence.sessions.get(frame.session_id)
        if session is None or session.bridge == record.bridge:
            return []
        return self._route((session.bridge,), frame)

    def _heartbeat(self, record: _Bridge, frame: HeartbeatFrame) -> list[HubAction]:
        return []

    def _second_register(self, record: _Bridge, frame: RegisterFrame) -> list[HubAction]:
        return self._fatal(record, "already_registered", "REGISTER sent twice on one link")

    def _unexpected(self, record: _Bridge, frame: HubFrame) -> list[HubAction]:
        return self._strike(
            record, "unexpected_type", f"{type(frame).__name__} is not sent by bridges"
        )

    # --------------------------------------------------------------- queries

    def members(self) -> list[HubMember]:
        """Every session the hub knows, with its owning bridge id."""
        return [
            HubMember(
                bridge_id=self._bridges[s.bridge].bridge_id or "",
                session_id=s.session_id,
                user_id=s.user_id,
                channels=s.channels,
                metadata=s.metadata,
            )
            for s in self._presence.sessions.values()
        ]

    def bridge_state(self, bridge: Hashable) -> BridgeState:
        record = self._bridges.get(bridge)
        return record.state if record is not None else BridgeState.GONE

    def registered_bridges(self) -> dict[str, Hashable]:
        """bridge id -> the connection currently registered under it."""
        return {bridge_id: record.bridge for bridge_id, record in self._by_bridge_id.items()}

    def next_deadline(self) -> float | None:
        """When the shim should send the next ``Tick``, or None with no bridge."""
        config = self._config
        silence = config.heartbeat_interval * config.dead_after_intervals
        deadlines = []
        for record in self._bridges.values():
            if record.state is BridgeState.AWAITING_REGISTER:
                deadlines.append(record.connected_at + config.register_timeout)
            elif record.state is BridgeState.REGISTERED:
                deadlines.append(
                    min(record.last_sent + config.heartbeat_interval, record.last_heard + silence)
                )
        return min(deadlines) if deadlines else None

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if presence or registrations are inconsistent."""
        self._presence.check()
        for bridge in self._presence.by_bridge:
            record = self._bridges.get(bridge)
            if record is None or record.state is not BridgeState.REGISTERED:
                raise AssertionError(f"sessions kept for bridge {bridge!r} that is not registered")
        for bridge_id, record in self._by_bridge_id.items():
            if record.bridge_id != bridge_id or record.state is not BridgeState.REGISTERED:
                raise AssertionError(f"bridge id {bridge_id!r} maps to {record.bridge!r} wrongly")


_HANDLERS: Final[dict[type[Any], Callable[[Hub, Any], list[HubAction]]]] = {
    BridgeConnecting: Hub._on_connecting,
    BridgeFrameReceived: Hub._on_frame,
    BridgeClosed: Hub._on_closed,
    Tick: Hub._on_tick,
    ShutdownRequested: Hub._on_shutdown,
}

_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Hub, _Bridge, Any], list[HubAction]]]] = {
    JoinFrame: Hub._join,
    LeaveFrame: Hub._leave,
    MetadataFrame: Hub._metadata,
    BroadcastFrame: Hub._broadcast,
    DirectFrame: Hub._direct,
    DisconnectFrame: Hub._disconnect,
    HeartbeatFrame: Hub._heartbeat,
    RegisterFrame: Hub._second_register,
    RegisteredFrame: Hub._unexpected,
    BulkLeaveFrame: Hub._unexpected,
    ErrorFrame: Hub._unexpected,
}
