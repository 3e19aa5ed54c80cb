"""``Hub``: the server every bridge links to, one sans-IO machine for all of them.

Theory of operation: a bridge is authenticated before any state exists for
it (the shim passes the upgrade's Authorization header), must REGISTER first
(protocol 1 or 2), and is then a member of the hub's presence through the
sessions it JOINs. A bridge *tracks* a channel while it has a member in it or
an interest in it (REGISTER ``channels``; a version 1 bridge's subscriber
session ``bridge:<id>#<channel>`` is read as an interest and never listed).
Frames are routed, never echoed to their origin: BROADCAST and PUBLISH to the
bridges tracking the channel, DIRECT to those holding a session of the user,
DISCONNECT to the session's owner, JOIN/LEAVE/METADATA/SUBSCRIBE/UNSUBSCRIBE
to the bridges tracking one of the session's channels (and a JOIN that moves
a session also to the bridge it moved from, which drops its lingering copy).
When a bridge starts to track a channel, it gets the channel's members on
the other bridges in MEMBERS frames, so its watchers can see them. Version 2
frames (SUBSCRIBE, UNSUBSCRIBE, PUBLISH, MEMBERS) never go to a version 1
bridge. A bridge that goes (closed, silent, replaced by a newer incarnation,
or closed for errors) loses its sessions at once, announced by one
BULK_LEAVE to the bridges that tracked one of their channels.

Flow control: REGISTERED states the hub's limits (``maxFramesPerSecond``,
``frameBurst``, ``maxFrameBytes``) and the bridge paces what it sends within
them. Each bridge has a token bucket; a message read over it is still handled,
and the hub answers with ``PauseBridge``: the shim reads nothing more from that
bridge until the debt is repaid, so TCP slows the bridge down. Over-rate input
is never refused and never struck.

A refusal costs the smallest unit that caused it. One that belongs to one
session (over the per-session channel cap, metadata too big, the bridge at its
session cap, a session id held under another user) is an ERROR frame naming
the session (``sessionId``): the bridge closes that client, the link is not
struck, and nothing changes here. A malformed or unexpected frame is a strike
on the link; strikes decay (one per ``error_decay`` seconds), and
``max_errors`` of them at once, or one protocol violation, close it with 1008
(after which a bridge registers again, with backoff). A session moves between
bridges only under its own user id.

One session id has one owner in the deployment, decided here. A JOIN for a
session held under another user is refused with an ERROR naming the session
(``session_taken``; no strike: the bridge closes that client, and the link is
not at fault) and changes nothing. A JOIN of the same user from another bridge
moves the session there, whether its socket on the old bridge is open (a
take-over: that bridge detaches or closes it) or closed (a return within the
leave grace: that bridge drops its lingering copy); the session keeps its
channels and gains the JOIN's, and the new bridge hears which in RESTORED; the
old bridge's copy of the JOIN names (``supersedes``) the ``claim`` of the
connection that loses it, so a bridge whose own newer JOIN crossed it keeps its
connection (the hub gives the session back to it next). A
bridge under ``REFUSE_NEW`` marks its JOINs ``exclusive`` (and its lingering
sessions with a ``lingering`` JOIN): such a JOIN for a session open on another
bridge is refused (``session_in_use``, naming the session) instead.

Lifecycles: each bridge follows the ``BRIDGE`` table and the hub itself the
``HUB`` table (accepting, then draining); their rows name what each
transition does (``"forget"`` a registered bridge's sessions, ``"ignore"``
what a closing bridge still says...). Timers (``REGISTER`` while awaiting
REGISTER, ``HEARTBEAT`` and ``SILENCE`` while registered) live in one
``Timers`` keyed by bridge, and entering a state cancels those it does not allow.

Batching: a bridge whose REGISTER names ``batch``, at a hub whose config
offers it (``batch_frames``), gets REGISTERED naming it too, alone in its
message; from then on what it sends is split into frames, each read as if it
had arrived alone (the rate limit, strikes and limits count frames), and what
it is sent says ``batch`` so the shim may pack it. A message over the frame
limit is refused whole, with one strike.

The session table (:class:`HubSessions`, in ``_hub_sessions``) keeps the
indexes routing asks about.

Streams: with ``HubConfig.history``, the hub numbers every channel's
publications (``_hub_streams``): a PUBLISH becomes a STREAM frame for the
bridges that named ``stream`` (its origin included: such a bridge delivers its
own publishes when they come back numbered) and stays a PUBLISH for the
others; RECOVER is answered with RECOVERED from the same stream.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

import attrs

from ._hub_sessions import HubSession, HubSessions
from ._hub_streams import HubStreams
from ._timers import Timer, Timers
from ._values import JsonObject, Member, Sender, dumps, utf8_len
from .actions import (
    AcceptBridge,
    CloseBridge,
    HubAction,
    Log,
    LogLevel,
    PauseBridge,
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
    BridgeEffect,
    BridgeInput,
    BridgeState,
    HubEffect,
    HubInput,
    HubState,
    Machine,
)
from .wire import (
    HUB_BATCH,
    HUB_PROTOCOL_VERSION,
    HUB_STREAM,
    SUPPORTED_HUB_PROTOCOLS,
    BroadcastFrame,
    BulkLeaveFrame,
    DirectFrame,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MembersFrame,
    MetadataFrame,
    PublishFrame,
    RecoveredFrame,
    RecoverFrame,
    RegisteredFrame,
    RegisterFrame,
    RestoredFrame,
    StreamFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    decode_hub_frame,
    encode,
    split_hub_batch,
    unbroken_frame,
)

__all__ = ["Bridge", "Hub", "HubConfig", "HubMember", "HubSession", "HubSessions"]

_HEARTBEAT_TEXT: Final = encode(HeartbeatFrame())
_BI = BridgeInput


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
        "batch",
        "bridge",
        "bridge_id",
        "errors",
        "errors_at",
        "heard_at",
        "instance_id",
        "lifecycle",
        "protocol",
        "stream",
    )

    def __init__(self, bridge: Hashable, now: float, burst: float, timers: Timers) -> None:
        self.bridge = bridge
        self.lifecycle = Machine(BRIDGE, timers, owner=bridge)
        self.bridge_id: str | None = None
        self.instance_id: str | None = None
        #: The hub protocol it registered with.
        self.protocol = 1
        #: Both ends named ``batch``: frames from and to it may share a message.
        self.batch = False
        #: Both ends named ``stream``: it gets STREAM frames and may RECOVER.
        self.stream = False
        #: Strikes not yet forgiven; one is forgiven per ``error_decay`` seconds from
        #: ``errors_at``, so whole strikes count and the ``max_errors``-th at once closes.
        self.errors = 0
        self.errors_at = now
        #: When its message being read arrived.
        self.heard_at = now
        #: Frames it may send now (below 0: its debt, repaid while it is paused).
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
        self._lifecycle = Machine(HUB)
        history = config.history
        self._streams = HubStreams(history, config.max_frame_bytes) if history is not None else None

    @property
    def hub_id(self) -> str:
        return self._config.hub_id

    def handle(self, event: HubEvent) -> list[HubAction]:
        """Apply one event; return what the shim must do, in order."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise LocalUsageError(f"Hub.handle: not a hub event: {event!r}")
        now = getattr(event, "now", None)
        if now is not None and self._streams is not None:
            self._streams.streams.clock(now)
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
        if self._lifecycle.fire(HubInput.CONNECT) is HubEffect.REFUSE:
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
        if effect is not BridgeEffect.GONE:
            return []
        return [
            Log(
                level=LogLevel.INFO, event="hub.bridge.gone", fields={"bridge_id": record.bridge_id}
            ),
            *self._forget(record, notify=True),
        ]

    def _forget(self, record: Bridge, *, notify: bool) -> list[HubAction]:
        """Drop a registered bridge's sessions and interests; tell the bridges tracking one
        of their channels."""
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
        if effect is None:
            return []  # already closing
        actions: list[HubAction] = [
            CloseBridge(bridge=record.bridge, code=code, reason=truncate_reason(reason))
        ]
        if effect is not BridgeEffect.CLOSE:
            actions += self._forget(record, notify=effect is BridgeEffect.FORGET)
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
        if self._streams is not None:
            sessions = self._sessions
            self._streams.sweep(lambda channel: bool(sessions.bridges_in((channel,), besides=None)))
        return actions + self._route(beats, _HEARTBEAT_TEXT)

    def _silence(self) -> float:
        return self._config.heartbeat_interval * self._config.dead_after_intervals

    def _on_shutdown(self, event: ShutdownRequested) -> list[HubAction]:
        if self._lifecycle.fire(HubInput.SHUTDOWN) is not HubEffect.DRAIN:
            return []  # already draining
        actions: list[HubAction] = []
        for record in list(self._bridges.values()):
            actions += self._close(record, CloseCode.REQUEUE, "hub draining", event=_BI.DRAIN)
        return actions

    # ---------------------------------------------------------------- frames

    def _on_frame(self, event: BridgeFrameReceived) -> list[HubAction]:
        record = self._get(event.bridge, "BridgeFrameReceived")
        record.heard_at = event.now
        if not record.batch:
            return self._read(record, event.data, event.now) + self._pace(record, 1, event.now)
        try:
            frames = split_hub_batch(event.data, max_bytes=self._config.max_frame_bytes)
        except PeerError as exc:
            if record.lifecycle.fire(_BI.ARRIVAL) is BridgeEffect.IGNORE:
                return []
            return self._strike(record, exc.code, str(exc))
        actions: list[HubAction] = []
        for data in frames:
            actions += self._read(record, data, event.now)
        return actions + self._pace(record, len(frames), event.now)

    def _read(self, record: Bridge, data: str | bytes, now: float) -> list[HubAction]:
        """One frame from ``record``, as if it had arrived alone."""
        if record.lifecycle.fire(_BI.ARRIVAL) is BridgeEffect.IGNORE:
            return []  # it is on its way out; nothing it says counts any more
        self._timers.postpone(Timer.SILENCE, now + self._silence(), record.bridge)
        try:
            frame = decode_hub_frame(data, max_bytes=self._config.max_frame_bytes)
        except PeerError as exc:
            return self._strike(record, exc.code, str(exc))
        if isinstance(frame, RegisterFrame):
            acceptable = self._register_problem(frame) is None
            effect = record.lifecycle.fire(_BI.REGISTER if acceptable else _BI.BAD_REGISTER)
        else:
            effect = record.lifecycle.fire(_BI.FRAME)
        return _FRAME_EFFECTS[effect](self, record, frame, data, now)

    def _not_registered(
        self, record: Bridge, frame: HubFrame, data: str | bytes, now: float
    ) -> list[HubAction]:
        return self._fatal(record, "not_registered", "the first frame must be REGISTER")

    def _register_problem(self, frame: RegisterFrame) -> tuple[str, str] | None:
        """Why the hub cannot accept this REGISTER (a code and a sentence), if it cannot."""
        if frame.protocol not in SUPPORTED_HUB_PROTOCOLS:
            return (
                "unsupported_protocol",
                f"protocol {frame.protocol} is not supported; this hub speaks 1 and "
                f"{HUB_PROTOCOL_VERSION}",
            )
        limit = self._config.max_interest_channels
        if len(frame.channels) > limit:
            return (
                "too_many_channels",
                f"{len(frame.channels)} interest channels; the limit is {limit}",
            )
        return None

    def _refuse_register(
        self, record: Bridge, frame: HubFrame, data: str | bytes, now: float
    ) -> list[HubAction]:
        assert isinstance(frame, RegisterFrame)
        problem = self._register_problem(frame)
        assert problem is not None
        return self._fatal(record, *problem)

    def _second_register(
        self, record: Bridge, frame: HubFrame, data: str | bytes, now: float
    ) -> list[HubAction]:
        return self._fatal(record, "already_registered", "REGISTER sent twice on one link")

    def _dispatch(
        self, record: Bridge, frame: HubFrame, data: str | bytes, now: float
    ) -> list[HubAction]:
        # A routed frame travels on as it arrived: validated, within the frame limit,
        # and never encoded again (unknown fields go along, for newer bridges), but
        # with any line feed (JSON whitespace) made a space, so it fits in a batch.
        text = unbroken_frame(data if isinstance(data, str) else data.decode("utf-8"))
        return _FRAME_HANDLERS[type(frame)](self, record, frame, text)

    def _pace(self, record: Bridge, frames: int, now: float) -> list[HubAction]:
        """Charge ``frames`` to the bridge's bucket; past it, pause reading the bridge
        until its debt is repaid (back-pressure, not a refusal)."""
        config = self._config
        rate = config.max_frames_per_second
        elapsed = now - record.allowance_at
        if elapsed > 0:
            record.allowance = min(config.frame_burst, record.allowance + elapsed * rate)
            record.allowance_at = now
        record.allowance -= frames
        if record.allowance >= 0:
            return []
        return [PauseBridge(bridge=record.bridge, until=now - record.allowance / rate)]

    def _error_frame(
        self, record: Bridge, code: str, message: str, session_id: str | None = None
    ) -> SendBridgeFrame:
        text = encode(ErrorFrame(code=code, message=message[:200], session_id=session_id))
        return _send(record, text)

    def _refuse_session(
        self, record: Bridge, session_id: str, code: str, message: str
    ) -> list[HubAction]:
        """A refusal that belongs to one session: an ERROR naming it (its bridge closes
        that client), no strike; nothing changed here."""
        fields = {
            "bridge_id": record.bridge_id,
            "session_id": session_id,
            "code": code,
            "error": message,
        }
        return [
            Log(level=LogLevel.WARNING, event="hub.session.refused", fields=fields),
            self._error_frame(record, code, message, session_id),
        ]

    def _refuse_taken(self, record: Bridge, session_id: str) -> list[HubAction]:
        """``session_id`` is another user's: refused to this one, whatever it asked."""
        message = f"session {session_id[:40]!r} is held by another user"
        return self._refuse_session(record, session_id, "session_taken", message)

    def _strike(self, record: Bridge, code: str, message: str) -> list[HubAction]:
        now, decay = record.heard_at, self._config.error_decay
        forgiven = max(0, int((now - record.errors_at) // decay))  # whole periods gone by
        if forgiven >= record.errors:
            record.errors, record.errors_at = 0, now
        else:
            record.errors -= forgiven
            record.errors_at += forgiven * decay
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
        self, record: Bridge, frame: HubFrame, data: str | bytes, now: float
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
        record.protocol = frame.protocol
        self._by_bridge_id[frame.bridge_id] = record
        for channel in frame.channels:
            self._sessions.add_interest(record.bridge, channel)
        self._timers.arm(Timer.HEARTBEAT, now + config.heartbeat_interval, record.bridge)
        self._timers.arm(Timer.SILENCE, now + self._silence(), record.bridge)
        # ``stream`` answers a bridge that named it (an older one never hears of it).
        streams = self._streams is not None and HUB_STREAM in frame.capabilities
        registered = RegisteredFrame(
            hub_id=config.hub_id,
            heartbeat_interval=config.heartbeat_interval,
            capabilities=(
                *((HUB_BATCH,) if config.batch_frames else ()),
                *((HUB_STREAM,) if streams else ()),
            ),
            max_frames_per_second=config.max_frames_per_second,
            frame_burst=config.frame_burst,
            max_frame_bytes=config.max_frame_bytes,
        )
        # REGISTERED travels alone: the bridge learns from it that the link batches.
        actions.append(_send(record, encode(registered)))
        record.batch = config.batch_frames and HUB_BATCH in frame.capabilities
        record.stream = streams
        return actions + self._members_for(record, frame.channels)

    def _route(
        self, bridges: Iterable[Hashable], text: str, *, v2: bool = False
    ) -> list[HubAction]:
        """``text`` to ``bridges``; a version 2 frame only to those that speak version 2.
        One action for the bridges that batch, one for those that do not."""
        known = self._bridges
        batched: list[Hashable] = []
        alone: list[Hashable] = []
        for bridge in bridges:
            record = known[bridge]
            if record.protocol >= 2 or not v2:
                (batched if record.batch else alone).append(bridge)
        actions: list[HubAction] = []
        if batched:
            actions.append(SendBridgeFrame(bridges=tuple(batched), data=text, batch=True))
        if alone:
            actions.append(SendBridgeFrame(bridges=tuple(alone), data=text))
        return actions

    def _members_for(self, record: Bridge, channels: Iterable[str]) -> list[HubAction]:
        """MEMBERS frames of ``channels`` for a bridge that starts to track them: each
        channel's members on the other bridges, in parts that fit the frame limit."""
        if record.protocol < 2:
            return []
        actions: list[HubAction] = []
        for channel in channels:
            members = self._sessions.members_of(channel, besides=record.bridge)
            for text in self._members_frames(channel, members):
                actions.append(_send(record, text))
        return actions

    def _members_frames(self, channel: str, members: list[Member]) -> list[str]:
        empty = MembersFrame(channel=channel, part=10**9, parts=10**9, members=())
        budget = self._config.max_frame_bytes - utf8_len(encode(empty))
        parts: list[list[Member]] = [[]]
        size = 0
        for member in members:
            cost = utf8_len(dumps(member.to_json())) + 1
            if parts[-1] and size + cost > budget:
                parts.append([])
                size = 0
            parts[-1].append(member)
            size += cost
        return [
            encode(MembersFrame(channel=channel, part=i, parts=len(parts), members=tuple(part)))
            for i, part in enumerate(parts)
        ]

    def _owned(self, record: Bridge, session_id: str) -> HubSession | None:
        session = self._sessions.sessions.get(session_id)
        return session if session is not None and session.bridge == record.bridge else None

    def _metadata_too_big(self, metadata: JsonObject | None) -> bool:
        return metadata is not None and utf8_len(dumps(metadata)) > self._config.max_metadata_bytes

    def _join(self, record: Bridge, frame: JoinFrame, text: str) -> list[HubAction]:
        config, sessions = self._config, self._sessions
        if record.protocol == 1 and _subscriber_channel(record, frame) is not None:
            return self._v1_interest(record, frame)
        if len(frame.channels) > config.max_channels_per_session:
            return self._refuse_session(
                record,
                frame.session_id,
                "too_many_channels",
                f"{len(frame.channels)} channels; the limit is {config.max_channels_per_session}",
            )
        if self._metadata_too_big(frame.metadata):
            return self._refuse_session(
                record,
                frame.session_id,
                "metadata_too_big",
                f"metadata over {config.max_metadata_bytes} bytes",
            )
        held = sessions.sessions.get(frame.session_id)
        if held is not None and held.user_id != frame.user_id:
            return self._refuse_taken(record, frame.session_id)
        elsewhere = held is not None and held.bridge != record.bridge
        if held is not None and frame.lingering and elsewhere:
            # A resync of a session that returned on another bridge meanwhile: the other
            # bridge holds it now. This one hears so (it may have registered after that
            # JOIN was routed) and drops its copy, as for a move.
            now = JoinFrame(
                session_id=held.session_id,
                user_id=held.user_id,
                channels=held.channels,
                metadata=held.metadata,
                claim=held.claim,
                supersedes=frame.claim,
            )
            return self._route((record.bridge,), encode(now))
        if held is not None and elsewhere and frame.exclusive and not held.lingering:
            return self._refuse_session(
                record,
                frame.session_id,
                "session_in_use",
                f"session {frame.session_id[:40]!r} is open on another server",
            )
        if (
            held is not None
            and not elsewhere
            and frame.lingering
            and (held.channels, held.metadata) == (frame.channels, frame.metadata)
        ):
            held.lingering = True  # its socket closed: the bridge keeps it for the grace
            return []
        if self._owned(record, frame.session_id) is None and (
            sessions.session_count(record.bridge) >= config.max_sessions_per_bridge
        ):
            return self._refuse_session(
                record,
                frame.session_id,
                "too_many_sessions",
                f"the limit is {config.max_sessions_per_bridge} per bridge",
            )
        # A session that moves here from another bridge (a return within its grace, or
        # a take-over) keeps its channels, as it would on one bridge: the JOIN's are added.
        channels, restored = frame.channels, []
        if held is not None and elsewhere and record.protocol >= 2:
            kept = dict.fromkeys((*held.channels, *frame.channels))
            channels = tuple(kept)[: config.max_channels_per_session]
            if channels != frame.channels:
                text = encode(attrs.evolve(frame, channels=channels))
                restored = [
                    _send(
                        record,
                        encode(RestoredFrame(session_id=frame.session_id, channels=channels)),
                    )
                ]
        # Whoever saw the session before (its old channels, the bridge it moved from)
        # and whoever sees it now hear the JOIN; the JOIN says its channels from now on.
        targets: dict[Hashable, None] = {}
        moved: list[HubAction] = []
        if held is not None:
            targets = sessions.bridges_in(held.channels, besides=record.bridge)
            if elsewhere:  # the bridge it moves from hears which connection loses it
                lost = attrs.evolve(frame, channels=channels, supersedes=held.claim)
                moved = self._route((held.bridge,), encode(lost))
        gained = [c for c in channels if not sessions.tracks(record.bridge, c)]
        sessions.put(
            HubSession(
                frame.session_id,
                frame.user_id,
                record.bridge,
                channels,
                frame.metadata,
                lingering=frame.lingering,
                claim=frame.claim,
            )
        )
        targets.update(sessions.bridges_in(channels, besides=record.bridge))
        targets.pop(record.bridge, None)
        if held is not None:
            targets.pop(held.bridge, None)
        routed = self._route(targets, text)
        return restored + moved + routed + self._members_for(record, gained)

    def _v1_interest(self, record: Bridge, frame: JoinFrame) -> list[HubAction]:
        """A version 1 bridge's subscriber session (``bridge:<id>#<channel>``): an interest
        in the channel, never a member that other bridges would list."""
        channel = _subscriber_channel(record, frame)
        assert channel is not None
        limit = self._config.max_interest_channels
        if self._sessions.interest_count(record.bridge) >= limit:
            return self._strike(record, "too_many_channels", f"the interest limit is {limit}")
        self._sessions.add_interest(record.bridge, channel)
        return []

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
            return self._refuse_session(
                record,
                frame.session_id,
                "metadata_too_big",
                f"metadata over {self._config.max_metadata_bytes} bytes",
            )
        session.metadata = frame.metadata
        return self._route(self._sessions.bridges_in(session.channels, besides=record.bridge), text)

    def _subscribe(self, record: Bridge, frame: SubscribeFrame, text: str) -> list[HubAction]:
        sessions, channel = self._sessions, frame.channel
        session = self._owned(record, frame.session_id)
        if session is None or channel in session.channels:
            return []
        if session.user_id != frame.user_id:
            return self._refuse_taken(record, frame.session_id)
        limit = self._config.max_channels_per_session
        if len(session.channels) >= limit:
            return self._refuse_session(
                record, frame.session_id, "too_many_channels", f"the limit is {limit} per session"
            )
        gained = not sessions.tracks(record.bridge, channel)
        sessions.subscribe(session, channel)
        actions = self._route(sessions.bridges_in((channel,), besides=record.bridge), text, v2=True)
        return actions + (self._members_for(record, (channel,)) if gained else [])

    def _unsubscribe(self, record: Bridge, frame: UnsubscribeFrame, text: str) -> list[HubAction]:
        session = self._owned(record, frame.session_id)
        if session is None or frame.channel not in session.channels:
            return []
        self._sessions.unsubscribe(session, frame.channel)
        bridges = self._sessions.bridges_in((frame.channel,), besides=record.bridge)
        return self._route(bridges, text, v2=True)

    def _forged(self, record: Bridge, author: Sender | None) -> list[HubAction] | None:
        """Why a message signed by ``author`` may not pass, if so: a session speaks only
        from the bridge holding it, under its user (as SUBSCRIBE)."""
        if author is None:
            return None
        session = self._owned(record, author.session_id)
        if session is None:
            return []  # not this bridge's session (or it just moved): not its to sign
        if session.user_id != author.user_id:
            return self._refuse_taken(record, author.session_id)
        return None

    def _broadcast(self, record: Bridge, frame: BroadcastFrame, text: str) -> list[HubAction]:
        forged = self._forged(record, frame.author)
        if forged is not None:
            return forged
        return self._route(self._sessions.bridges_in((frame.channel,), besides=record.bridge), text)

    def _publish(self, record: Bridge, frame: PublishFrame, text: str) -> list[HubAction]:
        """Routed to the channel's bridges, if its signature holds (see :meth:`_forged`)."""
        forged = self._forged(record, frame.author)
        if forged is not None:
            return forged
        bridges = self._sessions.bridges_in((frame.channel,), besides=record.bridge)
        if self._streams is None:
            return self._route(bridges, text, v2=True)
        return self._stream_publish(record, frame, text, bridges)

    def _stream_publish(
        self, record: Bridge, frame: PublishFrame, text: str, others: dict[Hashable, None]
    ) -> list[HubAction]:
        """Number the publication; STREAM to the bridges tracking the channel that speak
        ``stream`` (the origin too), the PUBLISH as it came to the others (not the origin)."""
        streams = self._streams
        assert streams is not None
        if not streams.fits(text):
            message = "a PUBLISH this close to the frame limit has no room for its offset"
            return [self._error_frame(record, "too_big", message)]
        stream_text = streams.publish(frame)
        known = self._bridges
        numbered = [b for b in (*others, record.bridge) if known[b].stream]
        if record.stream and record.bridge not in self._sessions.bridges_in(
            (frame.channel,), besides=None
        ):
            numbered.remove(record.bridge)  # the origin has nobody there to deliver to
        legacy = [b for b in others if not known[b].stream]
        return self._route(numbered, stream_text) + self._route(legacy, text, v2=True)

    def _recover(self, record: Bridge, frame: RecoverFrame, text: str) -> list[HubAction]:
        if self._streams is None or not record.stream:
            return self._strike(record, "unexpected_type", "RECOVER needs the stream capability")
        return [_send(record, self._streams.recover(frame))]

    def _direct(self, record: Bridge, frame: DirectFrame, text: str) -> list[HubAction]:
        forged = self._forged(record, frame.author)
        if forged is not None:
            return forged
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

    def interests(self) -> dict[str, tuple[str, ...]]:
        """bridge id -> the channels it tracks without a member."""
        return {
            bridge_id: tuple(self._sessions.interests.get(record.bridge, ()))
            for bridge_id, record in self._by_bridge_id.items()
            if record.bridge in self._sessions.interests
        }

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

    @property
    def history_bytes(self) -> int:
        """What the channels' streams keep for recovery (0 without ``HubConfig.history``)."""
        return self._streams.streams.bytes if self._streams is not None else 0

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if presence or registrations are inconsistent."""
        self._sessions.check()
        if self._streams is not None:
            self._streams.streams.check()
        for bridge in (*self._sessions.by_bridge, *self._sessions.interests):
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
    dict[
        BridgeEffect | None,
        Callable[[Hub, Bridge, HubFrame, str | bytes, float], list[HubAction]],
    ]
] = {
    BridgeEffect.REGISTERED: Hub._register,
    BridgeEffect.REFUSE_REGISTER: Hub._refuse_register,
    BridgeEffect.NOT_REGISTERED: Hub._not_registered,
    BridgeEffect.SECOND_REGISTER: Hub._second_register,
    BridgeEffect.ROUTE: Hub._dispatch,
}

_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Hub, Bridge, Any, str], list[HubAction]]]] = {
    JoinFrame: Hub._join,
    LeaveFrame: Hub._leave,
    MetadataFrame: Hub._metadata,
    BroadcastFrame: Hub._broadcast,
    DirectFrame: Hub._direct,
    DisconnectFrame: Hub._disconnect,
    HeartbeatFrame: Hub._heartbeat,
    SubscribeFrame: Hub._subscribe,
    UnsubscribeFrame: Hub._unsubscribe,
    PublishFrame: Hub._publish,
    RecoverFrame: Hub._recover,
    StreamFrame: Hub._unexpected,
    RecoveredFrame: Hub._unexpected,
    RegisteredFrame: Hub._unexpected,
    BulkLeaveFrame: Hub._unexpected,
    ErrorFrame: Hub._unexpected,
    MembersFrame: Hub._unexpected,
    RestoredFrame: Hub._unexpected,
}


def _send(record: Bridge, text: str) -> SendBridgeFrame:
    """``text`` to the one bridge of ``record``."""
    return SendBridgeFrame(bridges=(record.bridge,), data=text, batch=record.batch)


def _subscriber_channel(record: Bridge, frame: JoinFrame) -> str | None:
    """The channel of a version 1 subscriber session (``bridge:<id>#<channel>`` of user
    ``bridge:<id>``, in that one channel), or None for any other JOIN."""
    user = f"bridge:{record.bridge_id}"
    if frame.user_id != user or len(frame.channels) != 1:
        return None
    channel = frame.channels[0]
    return channel if frame.session_id == f"{user}#{channel}" else None
