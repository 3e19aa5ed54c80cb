"""``Presence``: the bridge-side machine, one per application process.

Theory of operation: the shim turns everything that happens (a socket opened,
a join, a frame from the hub, time passing) into an event and calls
:meth:`Presence.handle`, which returns the actions to perform, in order.
Dispatch is by exact event type through one table; so is the dispatch of hub
frames. Local delivery always comes first and fan-out (hub, roster) after it,
so a failing fan-out can neither delay nor undo what was delivered here.

Misuse raises ``LocalUsageError`` before any state changes: every handler
validates first and mutates after. Bytes from the network never raise: the
link turns them into warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

from ._actions import (
    Action,
    CloseConnection,
    Deliver,
    Log,
    LogLevel,
    RosterDelete,
    RosterPut,
    RosterRefresh,
)
from ._close import CloseCode, truncate_reason
from ._cluster import Cluster
from ._cluster_codec import RemoteMember
from ._config import DuplicateSessionPolicy, PresenceConfig
from ._errors import LocalUsageError
from ._events import (
    BroadcastRequested,
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    Event,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
    KickRequested,
    MetadataUpdated,
    SessionJoined,
    ShutdownRequested,
    Tick,
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
    RegisterFrame,
)
from ._hub_link import HubLink
from ._indexes import ConnRecord, Indexes
from ._json import dumps, utf8_len
from ._lifecycle import ConnInput, ConnState, LinkState
from ._values import Member, Message, RosterEntry

__all__ = ["Presence"]

KICK_REASON: Final = "kicked"
REQUEUE_REASON: Final = "requeued: reconnect"
DUPLICATE_REASON: Final = "session id already connected"
REPLACED_REASON: Final = "session taken over by a new connection"
SHUTDOWN_REASON: Final = "server shutting down"


def broadcast_text(ns: str, message: Message) -> str:
    """The client frame ``{"type", "ns", "payload"}``, built around the encoded payload."""
    head = f'{{"type":{dumps(message.type)},"ns":{dumps(ns)}'
    if message.payload_json is None:
        return head + "}"
    return f'{head},"payload":{message.payload_json}}}'


def direct_text(message: Message) -> str:
    """The client frame ``{"type", "payload"}`` of a direct message."""
    head = f'{{"type":{dumps(message.type)}'
    if message.payload_json is None:
        return head + "}"
    return f'{head},"payload":{message.payload_json}}}'


def _message_bytes(message: Message) -> int:
    return utf8_len(message.type) + (utf8_len(message.payload_json) if message.payload_json else 0)


@final
class Presence:
    """Who is connected here, and what to send where when that changes."""

    def __init__(self, config: PresenceConfig | None = None) -> None:
        self._config = config if config is not None else PresenceConfig()
        self._indexes = Indexes()
        hub = self._config.hub
        self._link = (
            HubLink(hub, max_frame_bytes=self._config.limits.max_hub_frame_bytes)
            if hub is not None
            else None
        )
        cluster = self._config.cluster
        self._cluster = Cluster(cluster) if cluster is not None else None
        self._roster_refresh_at: float | None = None
        #: None while running; after shutdown, the connections whose close is still due.
        self._closing: set[Hashable] | None = None

    @property
    def config(self) -> PresenceConfig:
        return self._config

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the shim must do, in order."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise LocalUsageError(f"Presence.handle: not an event: {event!r}")
        if self._closing is not None and type(event) not in _AFTER_SHUTDOWN:
            raise LocalUsageError(f"Presence.handle: shut down; {type(event).__name__} refused")
        return handler(self, event)

    def _on_open(self, event: ConnectionOpened) -> list[Action]:
        if event.conn in self._indexes.records:
            raise LocalUsageError(f"ConnectionOpened: connection {event.conn!r} is already open")
        self._indexes.open(event.conn, event.ns)
        return []

    def _on_join(self, event: SessionJoined) -> list[Action]:
        indexes, limits = self._indexes, self._config.limits
        record = indexes.get(event.conn, what="SessionJoined")
        indexes.check_transition(record, _JOIN)
        if len(event.channels) > limits.max_channels_per_session:
            raise LocalUsageError(
                f"SessionJoined: {len(event.channels)} channels; the limit is "
                f"{limits.max_channels_per_session} (Limits.max_channels_per_session)"
            )
        _check_metadata("SessionJoined", event.metadata_bytes, limits.max_metadata_bytes)
        actions: list[Action] = []
        prior = indexes.by_session.get(event.session_id)
        if prior is not None:
            policy = self._config.duplicate_session
            actions.append(
                Log(
                    level=LogLevel.WARNING,
                    event="presence.session.duplicate",
                    fields={
                        "session_id": event.session_id,
                        "prior_user_id": prior.user_id,
                        "user_id": event.user_id,
                        "policy": policy.value,
                    },
                )
            )
            if policy is DuplicateSessionPolicy.REFUSE_NEW:
                actions.append(
                    CloseConnection(conn=event.conn, code=CloseCode.POLICY, reason=DUPLICATE_REASON)
                )
                return actions
            stale = [ch for ch in prior.channels if ch not in event.channels]
            indexes.detach(prior)
            if policy is DuplicateSessionPolicy.CLOSE_PRIOR:
                actions.append(
                    CloseConnection(conn=prior.conn, code=CloseCode.POLICY, reason=REPLACED_REASON)
                )
            actions += self._roster_delete(event.session_id, stale)
        indexes.join(record, event.user_id, event.session_id, event.channels, event.metadata)
        actions += self._to_hub(_join_frame(record))
        actions += self._to_cluster_add(record)
        actions += self._roster_put(record)
        return actions

    def _on_close(self, event: ConnectionClosed) -> list[Action]:
        if self._closing is not None:
            if event.conn not in self._closing:
                raise LocalUsageError(f"ConnectionClosed: unknown connection {event.conn!r}")
            self._closing.discard(event.conn)
            return []
        record = self._indexes.get(event.conn, what="ConnectionClosed")
        session_id, channels = record.session_id, record.channels
        self._indexes.close(record)
        if session_id is None:
            return []
        actions = self._to_hub(LeaveFrame(session_id=session_id))
        if self._cluster is not None:
            actions += self._cluster.publish_remove(session_id)
        return actions + self._roster_delete(session_id, channels)

    def _on_broadcast(self, event: BroadcastRequested) -> list[Action]:
        message = event.message
        _check_message("BroadcastRequested", message, self._config.limits.max_message_bytes)
        actions = self._deliver_broadcast(event.ns, message, event.except_session_ids)
        excepted = tuple(sorted(event.except_session_ids))
        actions += self._to_hub(
            BroadcastFrame(
                ns=event.ns, channel=event.channel, message=message, except_session_ids=excepted
            )
        )
        if self._cluster is not None:
            actions += self._cluster.publish_broadcast(event.ns, event.channel, message, excepted)
        return actions

    def _on_direct(self, event: DirectRequested) -> list[Action]:
        _check_message("DirectRequested", event.message, self._config.limits.max_message_bytes)
        actions = self._deliver_direct(event.user_id, event.message)
        actions += self._to_hub(DirectFrame(user_id=event.user_id, message=event.message))
        if self._cluster is not None:
            actions += self._cluster.publish_direct(event.user_id, event.message)
        return actions

    def _on_metadata(self, event: MetadataUpdated) -> list[Action]:
        _check_metadata(
            "MetadataUpdated", event.metadata_bytes, self._config.limits.max_metadata_bytes
        )
        record = self._indexes.by_session.get(event.session_id)
        if record is None:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    event="presence.metadata.unknown_session",
                    fields={"session_id": event.session_id},
                )
            ]
        record.metadata = event.metadata
        frame = MetadataFrame(session_id=event.session_id, metadata=event.metadata)
        return self._to_hub(frame) + self._to_cluster_add(record) + self._roster_put(record)

    def _on_kick(self, event: KickRequested) -> list[Action]:
        record = self._indexes.by_session.get(event.session_id)
        if record is not None:
            return [_kick(record, event.reason, event.requeue)]
        frame = DisconnectFrame(
            session_id=event.session_id, reason=event.reason, requeue=event.requeue
        )
        actions = self._to_hub(frame)
        if self._cluster is not None:
            actions += self._cluster.publish_kick(event.session_id, event.reason, event.requeue)
        return actions or [
            Log(
                level=LogLevel.DEBUG,
                event="presence.kick.unknown_session",
                fields={"session_id": event.session_id},
            )
        ]

    def _require_link(self, event: Event) -> HubLink:
        if self._link is None:
            raise LocalUsageError(
                f"{type(event).__name__}: no hub is configured (PresenceConfig.hub is None)"
            )
        return self._link

    def _on_hub_start(self, event: HubLinkStarted) -> list[Action]:
        return self._require_link(event).start(event.now)

    def _on_hub_connected(self, event: HubConnected) -> list[Action]:
        return self._require_link(event).connected(event.now)

    def _on_hub_lost(self, event: HubLost) -> list[Action]:
        return self._require_link(event).lost(event.now, event.code, event.reason)

    def _on_hub_frame(self, event: HubFrameReceived) -> list[Action]:
        receipt = self._require_link(event).receive(event.data, event.now)
        actions = receipt.actions
        if receipt.registered:
            actions += self._resync()
        if receipt.frame is not None:
            actions += _HUB_FRAME_HANDLERS[type(receipt.frame)](self, receipt.frame)
        return actions

    def _require_cluster(self, event: Event) -> Cluster:
        if self._cluster is None:
            raise LocalUsageError(
                f"{type(event).__name__}: no cluster is configured (PresenceConfig.cluster is None)"
            )
        return self._cluster

    def _local_members(self) -> list[RemoteMember]:
        return [RemoteMember(ns=r.ns, member=r.member()) for r in self._indexes.joined()]

    def _on_cluster_connected(self, event: ClusterConnected) -> list[Action]:
        return self._require_cluster(event).connected(event.now, self._local_members)

    def _on_cluster_lost(self, event: ClusterLost) -> list[Action]:
        return self._require_cluster(event).lost(event.now)

    def _on_cluster_message(self, event: ClusterMessageReceived) -> list[Action]:
        cluster = self._require_cluster(event)
        receipt = cluster.receive(event.data, event.now, self._local_members)
        message = receipt.fanout
        if message is None:
            return receipt.actions
        fields = message.fields
        if message.kind == "broadcast":
            return self._deliver_broadcast(
                fields["ns"], fields["message"], frozenset(fields["except"])
            )
        if message.kind == "direct":
            return self._deliver_direct(fields["userId"], fields["message"])
        record = self._indexes.by_session.get(fields["sessionId"])  # a kick
        if record is None:
            return []  # the session lives on another instance
        return [_kick(record, fields["reason"], fields["requeue"])]

    def _on_tick(self, event: Tick) -> list[Action]:
        actions = self._link.tick(event.now) if self._link is not None else []
        if self._cluster is not None:
            actions += self._cluster.tick(event.now, self._local_members)
        roster = self._config.roster
        if roster is not None and self._closing is None:
            if self._roster_refresh_at is None:
                self._roster_refresh_at = event.now + roster.refresh_interval
            elif event.now >= self._roster_refresh_at:
                self._roster_refresh_at = event.now + roster.refresh_interval
                entries = tuple(self.local_roster_members())
                if entries:
                    actions.append(RosterRefresh(entries=entries, ttl=roster.ttl))
        return actions

    def _on_shutdown(self, event: ShutdownRequested) -> list[Action]:
        if self._closing is not None:
            return []  # idempotent, like closing a socket twice
        # The seed's order: hub link, cluster, roster (while the indexes still
        # say whose members are ours), then the clients, then the indexes.
        actions = self._link.shutdown() if self._link is not None else []
        if self._cluster is not None:
            actions += self._cluster.shutdown()
        if self._config.roster is not None:
            actions += [
                RosterDelete(channel=entry.channel, session_id=entry.session_id)
                for entry in self.local_roster_members()
            ]
        records = self._indexes.records
        actions += [
            CloseConnection(conn=conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON)
            for conn in records
        ]
        self._closing = set(records)
        self._indexes.clear()
        return actions

    # --------------------------------------------------------- hub frames in

    def _hub_broadcast(self, frame: BroadcastFrame) -> list[Action]:
        return self._deliver_broadcast(frame.ns, frame.message, frozenset(frame.except_session_ids))

    def _hub_direct(self, frame: DirectFrame) -> list[Action]:
        return self._deliver_direct(frame.user_id, frame.message)

    def _hub_disconnect(self, frame: DisconnectFrame) -> list[Action]:
        record = self._indexes.by_session.get(frame.session_id)
        if record is None:  # closed meanwhile, or moved to another bridge
            return [
                Log(
                    level=LogLevel.DEBUG,
                    event="hub.disconnect.unknown_session",
                    fields={"session_id": frame.session_id},
                )
            ]
        return [_kick(record, frame.reason, frame.requeue)]

    def _hub_ignored(self, frame: HubFrame) -> list[Action]:
        # Other bridges' presence reaches us for channel membership only; the
        # roster lives in the cluster/Redis roster, so these are not noise.
        return []

    def _hub_error(self, frame: ErrorFrame) -> list[Action]:
        return [
            Log(
                level=LogLevel.WARNING,
                event="hub.error",
                fields={"code": frame.code, "message": frame.message},
            )
        ]

    def _hub_unexpected(self, frame: HubFrame) -> list[Action]:
        return [
            Log(
                level=LogLevel.WARNING,
                event="hub.frame.unexpected",
                fields={"type": type(frame).__name__},
            )
        ]

    # ------------------------------------------------------------- delivery

    def _deliver_broadcast(
        self, ns: str, message: Message, except_session_ids: frozenset[str]
    ) -> list[Action]:
        conns = self._indexes.by_ns.get(ns)
        if not conns:
            return []
        if except_session_ids:
            records = self._indexes.records
            targets = tuple(
                conn for conn in conns if records[conn].session_id not in except_session_ids
            )
            if not targets:
                return []
        else:
            targets = tuple(conns)
        return [Deliver(conns=targets, text=broadcast_text(ns, message))]

    def _deliver_direct(self, user_id: str, message: Message) -> list[Action]:
        conns = self._indexes.by_user.get(user_id)
        if not conns:
            return []
        return [Deliver(conns=tuple(conns), text=direct_text(message))]

    # --------------------------------------------------------------- fan-out

    def _to_hub(self, frame: HubFrame) -> list[Action]:
        return self._link.send(frame) if self._link is not None else []

    def _to_cluster_add(self, record: ConnRecord) -> list[Action]:
        if self._cluster is None:
            return []
        return self._cluster.publish_add(record.ns, record.member())

    def _resync(self) -> list[Action]:
        """The hub lost all presence: subscribe our channels, then re-JOIN every session."""
        hub = self._config.hub
        assert hub is not None
        assert self._link is not None
        actions: list[Action] = []
        subscriber = f"bridge:{hub.bridge_id}"
        for channel in hub.channels:
            actions += self._link.send(
                JoinFrame(
                    user_id=subscriber,
                    session_id=f"{subscriber}#{channel}",
                    channels=(channel,),
                )
            )
        for record in self._indexes.joined():
            actions += self._link.send(_join_frame(record))
        return actions

    def _roster_put(self, record: ConnRecord) -> list[Action]:
        roster = self._config.roster
        if roster is None:
            return []
        member = record.member()
        return [
            RosterPut(channel=channel, session_id=member.session_id, member=member, ttl=roster.ttl)
            for channel in record.channels
        ]

    def _roster_delete(self, session_id: str, channels: Iterable[str]) -> list[Action]:
        if self._config.roster is None:
            return []
        return [RosterDelete(channel=channel, session_id=session_id) for channel in channels]

    # --------------------------------------------------------------- queries

    def roster(self, ns: str) -> list[Member]:
        """The joined sessions on path ``ns``: this process's first, then (with a cluster
        roster) every other instance's, without repeating a session id."""
        found = {r.session_id: r.member() for r in self._indexes.joined() if r.ns == ns}
        if self._cluster is not None:
            for member in self._cluster.remote_members(ns):
                found.setdefault(member.session_id, member)
        return list(found.values())

    def presence_list(
        self, channels: Iterable[str], remote_members: Iterable[Member] = ()
    ) -> list[Member]:
        """Members of ``channels``: local ones first (always fresh), then ``remote_members``
        (read by the shim from a shared roster), without repeating a session id."""
        wanted = set(channels)
        found: dict[str, Member] = {}
        for record in self._indexes.joined():
            if not wanted.isdisjoint(record.channels):
                member = record.member()
                found[member.session_id] = member
        for member in remote_members:
            found.setdefault(member.session_id, member)
        return list(found.values())

    def local_roster_members(self) -> list[RosterEntry]:
        """One entry per (channel, session) of this process: the roster heartbeat's input."""
        return [
            RosterEntry(channel=channel, session_id=member.session_id, member=member)
            for record in self._indexes.joined()
            for member in (record.member(),)
            for channel in record.channels
        ]

    def connection_state(self, conn: Hashable) -> ConnState:
        """The lifecycle state of ``conn``; CLOSED for an id the core does not hold."""
        record = self._indexes.records.get(conn)
        return record.state if record is not None else ConnState.CLOSED

    @property
    def cluster_subjects(self) -> tuple[str, ...]:
        """The subjects a cluster shim subscribes to (none without a cluster)."""
        return self._cluster.subjects if self._cluster is not None else ()

    @property
    def hub_link_state(self) -> LinkState | None:
        return self._link.state if self._link is not None else None

    @property
    def is_shut_down(self) -> bool:
        return self._closing is not None

    def next_deadline(self) -> float | None:
        """When the shim should send the next ``Tick`` (monotonic seconds), or None."""
        deadlines = [
            self._roster_refresh_at,
            self._link.next_deadline() if self._link is not None else None,
            self._cluster.next_deadline() if self._cluster is not None else None,
        ]
        due = [deadline for deadline in deadlines if deadline is not None]
        return min(due) if due else None

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the indexes are inconsistent (for tests and fuzzers)."""
        self._indexes.check()


def _check_metadata(owner: str, size: int, limit: int) -> None:
    if size > limit:
        raise LocalUsageError(
            f"{owner}: metadata is {size} bytes of JSON; the limit is {limit} "
            "(Limits.max_metadata_bytes)"
        )


def _check_message(owner: str, message: Message, limit: int) -> None:
    size = _message_bytes(message)
    if size > limit:
        raise LocalUsageError(
            f"{owner}: message is {size} bytes; the limit is {limit} (Limits.max_message_bytes)"
        )


def _kick(record: ConnRecord, reason: str | None, requeue: bool) -> CloseConnection:
    code = CloseCode.REQUEUE if requeue else CloseCode.POLICY
    text = reason if reason is not None else (REQUEUE_REASON if requeue else KICK_REASON)
    return CloseConnection(conn=record.conn, code=code, reason=truncate_reason(text))


def _join_frame(record: ConnRecord) -> JoinFrame:
    assert record.user_id is not None
    assert record.session_id is not None
    return JoinFrame(
        user_id=record.user_id,
        session_id=record.session_id,
        channels=record.channels,
        metadata=record.metadata,
    )


_JOIN: Final = ConnInput.JOIN

_HANDLERS: Final[dict[type[Any], Callable[[Presence, Any], list[Action]]]] = {
    ConnectionOpened: Presence._on_open,
    SessionJoined: Presence._on_join,
    ConnectionClosed: Presence._on_close,
    BroadcastRequested: Presence._on_broadcast,
    DirectRequested: Presence._on_direct,
    MetadataUpdated: Presence._on_metadata,
    KickRequested: Presence._on_kick,
    HubLinkStarted: Presence._on_hub_start,
    HubConnected: Presence._on_hub_connected,
    HubFrameReceived: Presence._on_hub_frame,
    HubLost: Presence._on_hub_lost,
    ClusterConnected: Presence._on_cluster_connected,
    ClusterLost: Presence._on_cluster_lost,
    ClusterMessageReceived: Presence._on_cluster_message,
    Tick: Presence._on_tick,
    ShutdownRequested: Presence._on_shutdown,
}

#: After shutdown only the closes it asked for, the hub link's drain and time remain.
_AFTER_SHUTDOWN: Final = frozenset(
    {
        ConnectionClosed,
        HubConnected,
        HubFrameReceived,
        HubLost,
        ClusterLost,
        ClusterMessageReceived,
        Tick,
        ShutdownRequested,
    }
)

_HUB_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Presence, Any], list[Action]]]] = {
    BroadcastFrame: Presence._hub_broadcast,
    DirectFrame: Presence._hub_direct,
    DisconnectFrame: Presence._hub_disconnect,
    JoinFrame: Presence._hub_ignored,
    LeaveFrame: Presence._hub_ignored,
    BulkLeaveFrame: Presence._hub_ignored,
    MetadataFrame: Presence._hub_ignored,
    HeartbeatFrame: Presence._hub_ignored,
    ErrorFrame: Presence._hub_error,
    RegisterFrame: Presence._hub_unexpected,
}
