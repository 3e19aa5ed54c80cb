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
A session moves between bridges only under its own user id: a JOIN for a
session held under another user is refused (a strike) and changes nothing.

Lifecycles: each bridge follows the ``BRIDGE`` table and the hub itself the
``HUB`` table (accepting, then draining); their rows name what each
transition does (``"forget"`` a registered bridge's sessions, ``"ignore"``
what a closing bridge still says...). Timers (``REGISTER`` while awaiting
REGISTER, ``HEARTBEAT`` and ``SILENCE`` while registered) live in one
``Timers`` keyed by bridge, and entering a state cancels those it does not allow.

The session table (:class:`HubSessions`). Routing asks two questions on every
frame, "which bridges have a member in channel C" and "which bridges hold a
session of user U", so both are kept as counted indexes rather than computed
by scanning sessions. As with the bridge's indexes, no empty entry is kept and
:meth:`HubSessions.check` states the invariant by recomputing everything from
the sessions.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

import attrs

from ._values import JsonObject, dumps, utf8_len
from .actions import (
    AcceptBridge,
    CloseBridge,
    HubAction,
    Log,
    LogLevel,
    RefuseBridge,
    SendBridgeFrame,
)
from .config import HubConfig
from .errors import CloseCode, LocalUsageError, PeerError, truncate_reason
from .events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    HubEvent,
    ShutdownRequested,
    Tick,
)
from .lifecycle import (
    BRIDGE,
    HUB,
    BridgeInput,
    BridgeState,
    HubInput,
    HubState,
    Machine,
    Timer,
    Timers,
)
from .wire import (
    HUB_PROTOCOL_VERSION,
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
    encode,
)

__all__ = ["Bridge", "Hub", "HubConfig", "HubMember", "HubSession", "HubSessions"]

_HEARTBEAT_TEXT: Final = encode(HeartbeatFrame())
_BI = BridgeInput


# ------------------------------------------------------------ session table


@final
class HubSession:
    __slots__ = ("bridge", "channels", "metadata", "session_id", "user_id")

    def __init__(
        self,
        session_id: str,
        user_id: str,
        bridge: Hashable,
        channels: tuple[str, ...],
        metadata: JsonObject | None,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.bridge = bridge
        self.channels = channels
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"<HubSession {self.session_id!r} of {self.user_id!r} on {self.bridge!r}>"


def _count_up(index: dict[str, dict[Hashable, int]], key: str, bridge: Hashable) -> None:
    counts = index.setdefault(key, {})
    counts[bridge] = counts.get(bridge, 0) + 1


def _count_down(index: dict[str, dict[Hashable, int]], key: str, bridge: Hashable) -> None:
    counts = index[key]
    if counts[bridge] == 1:
        del counts[bridge]
        if not counts:
            del index[key]
    else:
        counts[bridge] -= 1


@final
class HubSessions:
    __slots__ = ("by_bridge", "channel_bridges", "sessions", "user_bridges")

    def __init__(self) -> None:
        self.sessions: dict[str, HubSession] = {}
        self.by_bridge: dict[Hashable, dict[str, None]] = {}
        self.channel_bridges: dict[str, dict[Hashable, int]] = {}
        self.user_bridges: dict[str, dict[Hashable, int]] = {}

    def put(self, session: HubSession) -> None:
        """Add ``session``, replacing any session with its id (wherever it was)."""
        if session.session_id in self.sessions:
            self.remove(session.session_id)
        self.sessions[session.session_id] = session
        self.by_bridge.setdefault(session.bridge, {})[session.session_id] = None
        for channel in session.channels:
            _count_up(self.channel_bridges, channel, session.bridge)
        _count_up(self.user_bridges, session.user_id, session.bridge)

    def remove(self, session_id: str) -> HubSession:
        session = self.sessions.pop(session_id)
        owned = self.by_bridge[session.bridge]
        del owned[session_id]
        if not owned:
            del self.by_bridge[session.bridge]
        for channel in session.channels:
            _count_down(self.channel_bridges, channel, session.bridge)
        _count_down(self.user_bridges, session.user_id, session.bridge)
        return session

    def remove_bridge(self, bridge: Hashable) -> list[HubSession]:
        """Remove every session of ``bridge``; return them in join order."""
        return [self.remove(session_id) for session_id in list(self.by_bridge.get(bridge, ()))]

    def session_count(self, bridge: Hashable) -> int:
        return len(self.by_bridge.get(bridge, ()))

    def bridges_in(self, channels: Iterable[str], *, besides: Hashable) -> tuple[Hashable, ...]:
        """Bridges other than ``besides`` with a member in any of ``channels``."""
        found: dict[Hashable, None] = {}
        for channel in channels:
            found.update(dict.fromkeys(self.channel_bridges.get(channel, ())))
        found.pop(besides, None)
        return tuple(found)

    def bridges_of_user(self, user_id: str, *, besides: Hashable) -> tuple[Hashable, ...]:
        return tuple(bridge for bridge in self.user_bridges.get(user_id, ()) if bridge != besides)

    def check(self) -> None:
        """Raise ``AssertionError`` unless every index is what the sessions imply."""
        by_bridge: dict[Hashable, set[str]] = {}
        channels: dict[str, dict[Hashable, int]] = {}
        users: dict[str, dict[Hashable, int]] = {}
        for session_id, session in self.sessions.items():
            if session.session_id != session_id:
                raise AssertionError(f"{session!r} is filed under {session_id!r}")
            by_bridge.setdefault(session.bridge, set()).add(session_id)
            for channel in session.channels:
                _count_up(channels, channel, session.bridge)
            _count_up(users, session.user_id, session.bridge)
        actual = {bridge: set(ids) for bridge, ids in self.by_bridge.items()}
        if actual != by_bridge:
            raise AssertionError(f"bridge index {actual!r} should be {by_bridge!r}")
        if self.channel_bridges != channels:
            raise AssertionError(f"channel index {self.channel_bridges!r} should be {channels!r}")
        if self.user_bridges != users:
            raise AssertionError(f"user index {self.user_bridges!r} should be {users!r}")


# ---------------------------------------------------------------------- hub


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
class Bridge:
    """A presence server linked to this hub, as the hub sees it."""

    __slots__ = (
        "allowance",
        "allowance_at",
        "bridge",
        "bridge_id",
        "errors",
        "instance_id",
        "lifecycle",
    )

    def __init__(self, bridge: Hashable, now: float, burst: float, timers: Timers) -> None:
        self.bridge = bridge
        self.lifecycle: Machine[BridgeState, BridgeInput] = Machine(BRIDGE, timers, owner=bridge)
        self.bridge_id: str | None = None
        self.instance_id: str | None = None
        self.errors = 0
        self.allowance = burst
        self.allowance_at = now

    @property
    def state(self) -> BridgeState:
        return self.lifecycle.state


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
        self._bridges: dict[Hashable, Bridge] = {}
        self._by_bridge_id: dict[str, Bridge] = {}
        self._sessions = HubSessions()
        self._timers = Timers()
        self._lifecycle: Machine[HubState, HubInput] = Machine(HUB)

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
        if self._lifecycle.fire(HubInput.CONNECT) == "refuse":
            return [RefuseBridge(bridge=event.bridge, status=503, reason="hub is draining")]
        if not self.authorized(event.authorization):
            return [
                Log(level=LogLevel.WARNING, event="hub.auth.refused", fields={}),
                RefuseBridge(bridge=event.bridge, status=401, reason="bad or missing bearer token"),
            ]
        config = self._config
        self._bridges[event.bridge] = Bridge(
            event.bridge, event.now, config.frame_burst, self._timers
        )
        self._timers.arm(Timer.REGISTER, event.now + config.register_timeout, event.bridge)
        return [AcceptBridge(bridge=event.bridge)]

    def _get(self, bridge: Hashable, what: str) -> Bridge:
        record = self._bridges.get(bridge)
        if record is None:
            raise LocalUsageError(f"{what}: unknown bridge {bridge!r}; accept it first")
        return record

    def _on_closed(self, event: BridgeClosed) -> list[HubAction]:
        record = self._get(event.bridge, "BridgeClosed")
        effect = record.lifecycle.fire(_BI.CLOSED)
        del self._bridges[event.bridge]
        if effect != "gone":
            return []
        return [
            Log(
                level=LogLevel.INFO, event="hub.bridge.gone", fields={"bridge_id": record.bridge_id}
            ),
            *self._forget(record, notify=True),
        ]

    def _forget(self, record: Bridge, *, notify: bool) -> list[HubAction]:
        """Drop a registered bridge's sessions; tell the bridges that shared a channel."""
        assert record.bridge_id is not None  # set by REGISTER
        del self._by_bridge_id[record.bridge_id]
        sessions = self._sessions.remove_bridge(record.bridge)
        if not sessions or not notify:
            return []
        channels = {channel for session in sessions for channel in session.channels}
        frame = BulkLeaveFrame(
            bridge_id=record.bridge_id, session_ids=tuple(s.session_id for s in sessions)
        )
        return self._route(
            self._sessions.bridges_in(channels, besides=record.bridge), encode(frame)
        )

    def _close(
        self, record: Bridge, code: int, reason: str, *, event: BridgeInput = _BI.CLOSE
    ) -> list[HubAction]:
        effect = record.lifecycle.fire(event)
        if not effect:
            return []  # already closing
        actions: list[HubAction] = [
            CloseBridge(bridge=record.bridge, code=code, reason=truncate_reason(reason))
        ]
        if effect != "close":
            actions += self._forget(record, notify=effect == "forget")
        return actions

    def _on_tick(self, event: Tick) -> list[HubAction]:
        config, now = self._config, event.now
        actions: list[HubAction] = []
        beats: list[Hashable] = []
        while (due := self._timers.pop_due(now)) is not None:
            kind, bridge = due
            record = self._bridges[bridge]
            if kind is Timer.HEARTBEAT:
                self._timers.arm(Timer.HEARTBEAT, now + config.heartbeat_interval, bridge)
                beats.append(bridge)
            elif kind is Timer.SILENCE:
                actions.append(
                    Log(
                        level=LogLevel.WARNING,
                        event="hub.bridge.dead",
                        fields={"bridge_id": record.bridge_id},
                    )
                )
                actions += self._close(record, CloseCode.GOING_AWAY, "bridge silent")
            else:  # Timer.REGISTER
                actions += self._close(record, CloseCode.POLICY, "no REGISTER in time")
        if beats:
            actions.append(SendBridgeFrame(bridges=tuple(beats), data=_HEARTBEAT_TEXT))
        return actions

    def _silence(self) -> float:
        return self._config.heartbeat_interval * self._config.dead_after_intervals

    def _on_shutdown(self, event: ShutdownRequested) -> list[HubAction]:
        if not self._lifecycle.fire(HubInput.SHUTDOWN):
            return []  # already draining
        actions: list[HubAction] = []
        for record in list(self._bridges.values()):
            actions += self._close(record, CloseCode.REQUEUE, "hub draining", event=_BI.DRAIN)
        return actions

    # ---------------------------------------------------------------- frames

    def _on_frame(self, event: BridgeFrameReceived) -> list[HubAction]:
        record = self._get(event.bridge, "BridgeFrameReceived")
        if record.lifecycle.fire(_BI.ARRIVAL) == "ignore":
            return []  # it is on its way out; nothing it says counts any more
        if not self._within_rate(record, event.now):
            return self._strike(record, "rate_limited", "over the frames-per-second limit")
        self._timers.postpone(Timer.SILENCE, event.now + self._silence(), record.bridge)
        try:
            frame = decode_hub_frame(event.data, max_bytes=self._config.max_frame_bytes)
        except PeerError as exc:
            return self._strike(record, exc.code, str(exc))
        if isinstance(frame, RegisterFrame):
            supported = frame.protocol == HUB_PROTOCOL_VERSION
            effect = record.lifecycle.fire(_BI.REGISTER if supported else _BI.BAD_REGISTER)
        else:
            effect = record.lifecycle.fire(_BI.FRAME)
        return _FRAME_EFFECTS[effect](self, record, frame, event)

    def _not_registered(
        self, record: Bridge, frame: HubFrame, event: BridgeFrameReceived
    ) -> list[HubAction]:
        return self._fatal(record, "not_registered", "the first frame must be REGISTER")

    def _unsupported(
        self, record: Bridge, frame: HubFrame, event: BridgeFrameReceived
    ) -> list[HubAction]:
        assert isinstance(frame, RegisterFrame)
        return self._fatal(
            record,
            "unsupported_protocol",
            f"protocol {frame.protocol} is not supported; this hub speaks {HUB_PROTOCOL_VERSION}",
        )

    def _second_register(
        self, record: Bridge, frame: HubFrame, event: BridgeFrameReceived
    ) -> list[HubAction]:
        return self._fatal(record, "already_registered", "REGISTER sent twice on one link")

    def _dispatch(
        self, record: Bridge, frame: HubFrame, event: BridgeFrameReceived
    ) -> list[HubAction]:
        # A routed frame travels on as it arrived: validated, within the frame limit,
        # and never encoded again (unknown fields go along, for newer bridges).
        data = event.data
        text = data if isinstance(data, str) else data.decode("utf-8")
        return _FRAME_HANDLERS[type(frame)](self, record, frame, text)

    def _within_rate(self, record: Bridge, now: float) -> bool:
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

    def _error_frame(self, record: Bridge, code: str, message: str) -> SendBridgeFrame:
        text = encode(ErrorFrame(code=code, message=message[:200]))
        return SendBridgeFrame(bridges=(record.bridge,), data=text)

    def _strike(self, record: Bridge, code: str, message: str) -> list[HubAction]:
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

    def _fatal(self, record: Bridge, code: str, message: str) -> list[HubAction]:
        return [
            Log(
                level=LogLevel.WARNING,
                event="hub.protocol.violation",
                fields={"bridge_id": record.bridge_id, "code": code, "error": message},
            ),
            self._error_frame(record, code, message),
            *self._close(record, CloseCode.POLICY, message),
        ]

    def _register(
        self, record: Bridge, frame: HubFrame, event: BridgeFrameReceived
    ) -> list[HubAction]:
        assert isinstance(frame, RegisterFrame)
        config = self._config
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
        record.bridge_id, record.instance_id = frame.bridge_id, frame.instance_id
        self._by_bridge_id[frame.bridge_id] = record
        now = event.now
        self._timers.arm(Timer.HEARTBEAT, now + config.heartbeat_interval, record.bridge)
        self._timers.arm(Timer.SILENCE, now + self._silence(), record.bridge)
        registered = RegisteredFrame(
            hub_id=config.hub_id, heartbeat_interval=config.heartbeat_interval
        )
        actions.append(SendBridgeFrame(bridges=(record.bridge,), data=encode(registered)))
        return actions

    def _route(self, bridges: tuple[Hashable, ...], text: str) -> list[HubAction]:
        if not bridges:
            return []
        return [SendBridgeFrame(bridges=bridges, data=text)]

    def _owned(self, record: Bridge, session_id: str) -> HubSession | None:
        session = self._sessions.sessions.get(session_id)
        return session if session is not None and session.bridge == record.bridge else None

    def _metadata_too_big(self, metadata: JsonObject | None) -> bool:
        return metadata is not None and utf8_len(dumps(metadata)) > self._config.max_metadata_bytes

    def _join(self, record: Bridge, frame: JoinFrame, text: str) -> list[HubAction]:
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
        held = self._sessions.sessions.get(frame.session_id)
        if held is not None and held.user_id != frame.user_id:
            return self._strike(
                record,
                "session_taken",
                f"session {frame.session_id[:40]!r} is held by another user",
            )
        if self._owned(record, frame.session_id) is None and (
            self._sessions.session_count(record.bridge) >= config.max_sessions_per_bridge
        ):
            return self._strike(
                record,
                "too_many_sessions",
                f"the limit is {config.max_sessions_per_bridge} per bridge",
            )
        self._sessions.put(
            HubSession(
                frame.session_id,
                frame.user_id,
                record.bridge,
                frame.channels,
                frame.metadata,
            )
        )
        return self._route(self._sessions.bridges_in(frame.channels, besides=record.bridge), text)

    def _leave(self, record: Bridge, frame: LeaveFrame, text: str) -> list[HubAction]:
        # Only the owner may remove a session: a stale LEAVE from the bridge it
        # moved away from must not remove it from its new bridge.
        if self._owned(record, frame.session_id) is None:
            return []
        session = self._sessions.remove(frame.session_id)
        return self._route(self._sessions.bridges_in(session.channels, besides=record.bridge), text)

    def _metadata(self, record: Bridge, frame: MetadataFrame, text: str) -> list[HubAction]:
        session = self._owned(record, frame.session_id)
        if session is None:
            return []
        if self._metadata_too_big(frame.metadata):
            return self._strike(
                record, "metadata_too_big", f"metadata over {self._config.max_metadata_bytes} bytes"
            )
        session.metadata = frame.metadata
        return self._route(self._sessions.bridges_in(session.channels, besides=record.bridge), text)

    def _broadcast(self, record: Bridge, frame: BroadcastFrame, text: str) -> list[HubAction]:
        return self._route(self._sessions.bridges_in((frame.channel,), besides=record.bridge), text)

    def _direct(self, record: Bridge, frame: DirectFrame, text: str) -> list[HubAction]:
        return self._route(
            self._sessions.bridges_of_user(frame.user_id, besides=record.bridge), text
        )

    def _disconnect(self, record: Bridge, frame: DisconnectFrame, text: str) -> list[HubAction]:
        session = self._sessions.sessions.get(frame.session_id)
        if session is None or session.bridge == record.bridge:
            return []
        return self._route((session.bridge,), text)

    def _heartbeat(self, record: Bridge, frame: HeartbeatFrame, text: str) -> list[HubAction]:
        return []

    def _unexpected(self, record: Bridge, frame: HubFrame, text: str) -> list[HubAction]:
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
            for s in self._sessions.sessions.values()
        ]

    @property
    def state(self) -> HubState:
        return self._lifecycle.state

    def bridge_state(self, bridge: Hashable) -> BridgeState:
        record = self._bridges.get(bridge)
        return record.state if record is not None else BridgeState.GONE

    def registered_bridges(self) -> dict[str, Hashable]:
        """bridge id -> the connection currently registered under it."""
        return {bridge_id: record.bridge for bridge_id, record in self._by_bridge_id.items()}

    def next_deadline(self) -> float | None:
        """When the shim should send the next ``Tick``, or None with no timer running."""
        return self._timers.next_deadline()

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if presence or registrations are inconsistent."""
        self._sessions.check()
        for bridge in self._sessions.by_bridge:
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

_FRAME_EFFECTS: Final[
    dict[str, Callable[[Hub, Bridge, HubFrame, BridgeFrameReceived], list[HubAction]]]
] = {
    "registered": Hub._register,
    "unsupported": Hub._unsupported,
    "not_registered": Hub._not_registered,
    "second_register": Hub._second_register,
    "route": Hub._dispatch,
}

_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Hub, Bridge, Any, str], list[HubAction]]]] = {
    JoinFrame: Hub._join,
    LeaveFrame: Hub._leave,
    MetadataFrame: Hub._metadata,
    BroadcastFrame: Hub._broadcast,
    DirectFrame: Hub._direct,
    DisconnectFrame: Hub._disconnect,
    HeartbeatFrame: Hub._heartbeat,
    RegisteredFrame: Hub._unexpected,
    BulkLeaveFrame: Hub._unexpected,
    ErrorFrame: Hub._unexpected,
}
