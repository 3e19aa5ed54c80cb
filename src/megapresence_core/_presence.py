"""``Presence``: the bridge-side machine, one per application process.

Theory of operation: the shim turns everything that happens (a socket opened,
a join, a frame from the hub, time passing) into an event and calls
:meth:`Presence.handle`, which returns the actions to perform, in order.
``Presence`` is a facade over its parts, each with one job:

- the local indexes (``_local.LocalIndexes``): who is connected here;
- the hub link (``_hub_link.HubLink``), the cluster link
  (``_cluster.ClusterLink``) and the shared store (``_local.SharedStore``):
  where presence and messages go beyond this process; when one is not
  configured, an inert stand-in (``NoHubLink``, ``NoCluster``, ``NoStore``)
  takes its place, so no handler asks whether a part exists;
- the limits (``config.Limits``), which refuse a request before anything
  changes, including one whose hub frame or cluster message would not fit;
- one ``Timers`` shared by every part: ``next_deadline`` and ``Tick`` read it.

Dispatch is by exact event type through one table, which also classifies each
event for the ``PRESENCE`` lifecycle (after shutdown only closes, link events
and ticks are accepted). Local delivery always comes first and fan-out (hub,
cluster, store) after it, so a failing fan-out can neither delay nor undo
what was delivered here. Misuse raises ``LocalUsageError`` before any state
changes: every handler validates first (and builds every frame it will send,
so a frame too big is refused) and mutates after. Bytes from the network
never raise: the links turn them into warnings.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

from ._cluster import ClusterLink, ClusterReceipt, NoCluster
from ._hub_link import HubLink, NoHubLink
from ._local import ConnectionRecord, LocalIndexes, NoStore, SharedStore
from ._values import Member, Message, RemoteMember, StoreEntry
from .actions import Action, CloseConnection, Deliver, Log, LogLevel
from .config import DuplicateSessionPolicy, PresenceConfig
from .errors import CloseCode, LocalUsageError, truncate_reason
from .events import (
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
from .lifecycle import (
    CLUSTER_LINK,
    HUB_LINK,
    PRESENCE,
    ClusterLinkState,
    ConnectionInput,
    ConnectionState,
    HubLinkState,
    Machine,
    PresenceInput,
    PresenceState,
    Timer,
    Timers,
)
from .wire import (
    BroadcastFrame,
    BulkLeaveFrame,
    ClusterBroadcast,
    ClusterDirect,
    ClusterKick,
    DirectFrame,
    DisconnectFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MetadataFrame,
    broadcast_text,
    direct_text,
)

__all__ = ["Presence"]

KICK_REASON: Final = "kicked"
REQUEUE_REASON: Final = "requeued: reconnect"
DUPLICATE_REASON: Final = "session id already connected"
FOREIGN_REASON: Final = "session id belongs to another user"
REPLACED_REASON: Final = "session taken over by a new connection"
SHUTDOWN_REASON: Final = "server shutting down"

_TimerHandler = Callable[[Timer, Hashable, float], list[Action]]


@final
class Presence:
    """Who is connected here, and what to send where when that changes."""

    def __init__(self, config: PresenceConfig | None = None) -> None:
        self._config = config = config if config is not None else PresenceConfig()
        self._limits = config.limits
        self._lifecycle: Machine[PresenceState, PresenceInput] = Machine(PRESENCE)
        self._timers = Timers()
        self._local = LocalIndexes()
        self._on_timer: dict[Timer, _TimerHandler] = {}
        self._hub_link: HubLink | NoHubLink = NoHubLink()
        self._cluster: ClusterLink | NoCluster = NoCluster()
        self._store: SharedStore | NoStore = NoStore()
        if config.hub_link is not None:
            link = HubLink(
                config.hub_link, self._timers, max_frame_bytes=self._limits.max_hub_frame_bytes
            )
            self._hub_link = link
            self._on_timer.update(dict.fromkeys(HUB_LINK.timer_kinds, link.on_timer))
        if config.cluster is not None:
            cluster = ClusterLink(config.cluster, self._timers, self._local_members, self._user_of)
            self._cluster = cluster
            self._on_timer.update(dict.fromkeys(CLUSTER_LINK.timer_kinds, cluster.on_timer))
        if config.store is not None:
            store = SharedStore(config.store, self._timers, self.local_store_entries)
            self._store = store
            self._on_timer[Timer.STORE_REFRESH] = store.on_timer

    @property
    def config(self) -> PresenceConfig:
        return self._config

    # ------------------------------------------------------------------ events

    def handle(self, event: Event) -> list[Action]:
        """Apply one event; return what the shim must do, in order."""
        entry = _HANDLERS.get(type(event))
        if entry is None:
            raise LocalUsageError(f"Presence.handle: not an event: {event!r}")
        kind, handler = entry
        if self._lifecycle.fire(kind) == "handle":
            return handler(self, event)
        return []

    def _on_open(self, event: ConnectionOpened) -> list[Action]:
        self._limits.check_name("ConnectionOpened", "ns", event.ns)
        self._local.open(event.conn, event.ns)
        return []

    def _on_join(self, event: SessionJoined) -> list[Action]:
        local, limits = self._local, self._limits
        record = local.get(event.conn, what="SessionJoined")
        record.lifecycle.check(ConnectionInput.JOIN)
        limits.check_name("SessionJoined", "user_id", event.user_id)
        limits.check_name("SessionJoined", "session_id", event.session_id)
        limits.check_channels("SessionJoined", event.channels)
        limits.check_metadata("SessionJoined", event.metadata_bytes)
        actions: list[Action] = []
        prior = local.by_session.get(event.session_id)
        if prior is not None:
            # A session may move between connections of its own user only.
            foreign = prior.user_id != event.user_id
            policy = (
                DuplicateSessionPolicy.REFUSE_NEW if foreign else self._config.duplicate_session
            )
            fields = {
                "session_id": event.session_id,
                "prior_user_id": prior.user_id,
                "user_id": event.user_id,
                "policy": policy.value,
            }
            event_name = "presence.session.foreign" if foreign else "presence.session.duplicate"
            actions.append(Log(level=LogLevel.WARNING, event=event_name, fields=fields))
            if policy is DuplicateSessionPolicy.REFUSE_NEW:
                reason = FOREIGN_REASON if foreign else DUPLICATE_REASON
                actions.append(
                    CloseConnection(conn=event.conn, code=CloseCode.POLICY, reason=reason)
                )
                return actions
            stale = [channel for channel in prior.channels if channel not in event.channels]
            local.detach(prior)
            if policy is DuplicateSessionPolicy.CLOSE_PRIOR:
                actions.append(
                    CloseConnection(conn=prior.conn, code=CloseCode.POLICY, reason=REPLACED_REASON)
                )
            actions += self._store.delete(event.session_id, stale)
        local.join(record, event.user_id, event.session_id, event.channels, event.metadata)
        actions += self._hub_link.send(_join_frame(record))
        actions += self._cluster.add(record.ns, record.member())
        actions += self._store.put(record)
        return actions

    def _on_close(self, event: ConnectionClosed) -> list[Action]:
        record = self._local.close(event.conn)
        if record is None:  # it held no session (or lost it, or the server shut down)
            return []
        session_id = record.session_id
        assert session_id is not None
        return (
            self._hub_link.send(LeaveFrame(session_id=session_id))
            + self._cluster.remove(session_id)
            + self._store.delete(session_id, record.channels)
        )

    def _on_broadcast(self, event: BroadcastRequested) -> list[Action]:
        ns, channel, message, excepted = (
            event.ns,
            event.channel,
            event.message,
            event.except_session_ids,
        )
        limits = self._limits
        limits.check_name("BroadcastRequested", "ns", ns)
        limits.check_name("BroadcastRequested", "channel", channel)
        limits.check_message("BroadcastRequested", message)
        # Every hop's text is built (and measured) before anything happens.
        hub_text = self._hub_link.broadcast(ns, channel, message, excepted)
        cluster_text = self._cluster.broadcast(ns, channel, message, excepted)
        actions = self._deliver_broadcast(ns, message, excepted)
        return (
            actions + self._hub_link.send_text(hub_text) + self._cluster.publish_text(cluster_text)
        )

    def _on_direct(self, event: DirectRequested) -> list[Action]:
        user_id, message = event.user_id, event.message
        self._limits.check_name("DirectRequested", "user_id", user_id)
        self._limits.check_message("DirectRequested", message)
        hub_text = self._hub_link.direct(user_id, message)
        cluster_text = self._cluster.direct(user_id, message)
        actions = self._deliver_direct(user_id, message)
        return (
            actions + self._hub_link.send_text(hub_text) + self._cluster.publish_text(cluster_text)
        )

    def _on_metadata(self, event: MetadataUpdated) -> list[Action]:
        self._limits.check_metadata("MetadataUpdated", event.metadata_bytes)
        record = self._local.by_session.get(event.session_id)
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
        return (
            self._hub_link.send(frame)
            + self._cluster.add(record.ns, record.member())
            + self._store.put(record)
        )

    def _on_kick(self, event: KickRequested) -> list[Action]:
        record = self._local.by_session.get(event.session_id)
        if record is not None:
            return [_kick(record, event.reason, event.requeue)]
        frame = DisconnectFrame(
            session_id=event.session_id, reason=event.reason, requeue=event.requeue
        )
        actions = self._hub_link.send(frame) + self._cluster.kick(
            event.session_id, event.reason, event.requeue
        )
        return actions or [
            Log(
                level=LogLevel.DEBUG,
                event="presence.kick.unknown_session",
                fields={"session_id": event.session_id},
            )
        ]

    def _on_hub_start(self, event: HubLinkStarted) -> list[Action]:
        return self._hub_link.start(event.now)

    def _on_hub_connected(self, event: HubConnected) -> list[Action]:
        return self._hub_link.connected(event.now)

    def _on_hub_lost(self, event: HubLost) -> list[Action]:
        return self._hub_link.lost(event.now, event.code, event.reason)

    def _on_hub_frame(self, event: HubFrameReceived) -> list[Action]:
        receipt = self._hub_link.receive(event.data, event.now)
        actions = receipt.actions
        if receipt.registered:
            actions += self._resync()
        if receipt.frame is not None:
            actions += _HUB_FRAME_HANDLERS[type(receipt.frame)](self, receipt.frame)
        return actions

    def _on_cluster_connected(self, event: ClusterConnected) -> list[Action]:
        return self._cluster.connected(event.now)

    def _on_cluster_lost(self, event: ClusterLost) -> list[Action]:
        return self._cluster.lost(event.now)

    def _on_cluster_message(self, event: ClusterMessageReceived) -> list[Action]:
        receipt: ClusterReceipt = self._cluster.receive(event.data, event.now)
        message = receipt.fanout
        if isinstance(message, ClusterBroadcast):
            excepted = frozenset(message.except_session_ids)
            return self._deliver_broadcast(message.ns, message.message, excepted)
        if isinstance(message, ClusterDirect):
            return self._deliver_direct(message.user_id, message.message)
        if isinstance(message, ClusterKick):
            record = self._local.by_session.get(message.session_id)
            if record is not None:
                return [_kick(record, message.reason, message.requeue)]
        return receipt.actions  # a member message, or a kick for another instance

    def _on_tick(self, event: Tick) -> list[Action]:
        now = event.now
        self._store.on_tick(now)
        actions: list[Action] = []
        while (due := self._timers.pop_due(now)) is not None:
            kind, owner = due
            actions += self._on_timer[kind](kind, owner, now)
        return actions

    def _on_shutdown(self, event: ShutdownRequested) -> list[Action]:
        # The seed's order: hub link, cluster, store (while the indexes still
        # say whose members are ours), then the clients.
        actions = self._hub_link.shutdown() + self._cluster.shutdown() + self._store.shutdown()
        self._store = NoStore()
        actions += [
            CloseConnection(conn=record.conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON)
            for record in self._local.shut_down()
        ]
        return actions

    # --------------------------------------------------------- hub frames in

    def _hub_broadcast(self, frame: BroadcastFrame) -> list[Action]:
        return self._deliver_broadcast(frame.ns, frame.message, frozenset(frame.except_session_ids))

    def _hub_direct(self, frame: DirectFrame) -> list[Action]:
        return self._deliver_direct(frame.user_id, frame.message)

    def _hub_disconnect(self, frame: DisconnectFrame) -> list[Action]:
        record = self._local.by_session.get(frame.session_id)
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
        # roster lives in the cluster and the store, so these are not noise.
        return []

    # ------------------------------------------------------------- delivery

    def _deliver_broadcast(
        self, ns: str, message: Message, except_session_ids: frozenset[str]
    ) -> list[Action]:
        conns = self._local.by_ns.get(ns)
        if not conns:
            return []
        if except_session_ids:
            records = self._local.records
            targets = tuple(
                conn for conn in conns if records[conn].session_id not in except_session_ids
            )
            if not targets:
                return []
        else:
            targets = tuple(conns)
        return [Deliver(conns=targets, text=broadcast_text(ns, message))]

    def _deliver_direct(self, user_id: str, message: Message) -> list[Action]:
        conns = self._local.by_user.get(user_id)
        if not conns:
            return []
        return [Deliver(conns=tuple(conns), text=direct_text(message))]

    def _resync(self) -> list[Action]:
        """The hub lost all presence: subscribe our channels, then re-JOIN every session."""
        link = self._hub_link
        subscriber = f"bridge:{link.bridge_id}"
        actions: list[Action] = []
        for channel in link.channels:
            actions += link.send(
                JoinFrame(
                    user_id=subscriber, session_id=f"{subscriber}#{channel}", channels=(channel,)
                )
            )
        for record in self._local.joined():
            actions += link.send(_join_frame(record))
        return actions

    # --------------------------------------------------------------- queries

    def _local_members(self) -> list[RemoteMember]:
        return [RemoteMember(ns=r.ns, member=r.member()) for r in self._local.joined()]

    def _user_of(self, session_id: str) -> str | None:
        record = self._local.by_session.get(session_id)
        return record.user_id if record is not None else None

    def roster(self, ns: str) -> list[Member]:
        """The joined sessions on ``ns``: this process's first, then (when the cluster shares
        members) every other instance's, without repeating a session id."""
        found = {r.session_id: r.member() for r in self._local.joined() if r.ns == ns}
        for member in self._cluster.remote_members(ns):
            found.setdefault(member.session_id, member)
        return list(found.values())

    def presence_list(
        self, channels: Iterable[str], remote_members: Iterable[Member] = ()
    ) -> list[Member]:
        """Members of ``channels``: local ones first (always fresh), then ``remote_members``
        (read by the shim from the shared store), without repeating a session id."""
        wanted = set(channels)
        found: dict[str, Member] = {}
        for record in self._local.joined():
            if not wanted.isdisjoint(record.channels):
                member = record.member()
                found[member.session_id] = member
        for member in remote_members:
            found.setdefault(member.session_id, member)
        return list(found.values())

    def local_store_entries(self) -> list[StoreEntry]:
        """One entry per (channel, session) of this process: what the shared store holds of us."""
        return [
            StoreEntry(channel=channel, session_id=member.session_id, member=member)
            for record in self._local.joined()
            for member in (record.member(),)
            for channel in record.channels
        ]

    def connection_state(self, conn: Hashable) -> ConnectionState:
        """The lifecycle state of ``conn``; CLOSED for an id the core does not hold."""
        record = self._local.records.get(conn)
        return record.state if record is not None else ConnectionState.CLOSED

    @property
    def cluster_subjects(self) -> tuple[str, ...]:
        """The subjects a cluster shim subscribes to (none without a cluster)."""
        return self._cluster.subjects

    @property
    def hub_link_state(self) -> HubLinkState | None:
        """The hub link's state; None without a hub."""
        return self._hub_link.state

    @property
    def cluster_link_state(self) -> ClusterLinkState | None:
        """The cluster link's state; None without a cluster."""
        return self._cluster.state

    @property
    def state(self) -> PresenceState:
        return self._lifecycle.state

    @property
    def is_shut_down(self) -> bool:
        return self._lifecycle.state is PresenceState.SHUT_DOWN

    def next_deadline(self) -> float | None:
        """When the shim should send the next ``Tick`` (monotonic seconds), or None."""
        return self._timers.next_deadline()

    def check_invariants(self) -> None:
        """Raise ``AssertionError`` if the indexes are inconsistent (for tests and fuzzers)."""
        self._local.check()


def _kick(record: ConnectionRecord, reason: str | None, requeue: bool) -> CloseConnection:
    code = CloseCode.REQUEUE if requeue else CloseCode.POLICY
    text = reason if reason is not None else (REQUEUE_REASON if requeue else KICK_REASON)
    return CloseConnection(conn=record.conn, code=code, reason=truncate_reason(text))


def _join_frame(record: ConnectionRecord) -> JoinFrame:
    assert record.user_id is not None
    assert record.session_id is not None
    return JoinFrame(
        user_id=record.user_id,
        session_id=record.session_id,
        channels=record.channels,
        metadata=record.metadata,
    )


_E, _W = PresenceInput.EVENT, PresenceInput.WIND_DOWN

#: event type -> (its input to the PRESENCE lifecycle, its handler)
_HANDLERS: Final[dict[type[Any], tuple[PresenceInput, Callable[[Presence, Any], list[Action]]]]] = {
    ConnectionOpened: (_E, Presence._on_open),
    SessionJoined: (_E, Presence._on_join),
    ConnectionClosed: (_W, Presence._on_close),
    BroadcastRequested: (_E, Presence._on_broadcast),
    DirectRequested: (_E, Presence._on_direct),
    MetadataUpdated: (_E, Presence._on_metadata),
    KickRequested: (_E, Presence._on_kick),
    HubLinkStarted: (_E, Presence._on_hub_start),
    HubConnected: (_W, Presence._on_hub_connected),
    HubFrameReceived: (_W, Presence._on_hub_frame),
    HubLost: (_W, Presence._on_hub_lost),
    ClusterConnected: (_E, Presence._on_cluster_connected),
    ClusterLost: (_W, Presence._on_cluster_lost),
    ClusterMessageReceived: (_W, Presence._on_cluster_message),
    Tick: (_W, Presence._on_tick),
    ShutdownRequested: (PresenceInput.SHUTDOWN, Presence._on_shutdown),
}

_HUB_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Presence, Any], list[Action]]]] = {
    BroadcastFrame: Presence._hub_broadcast,
    DirectFrame: Presence._hub_direct,
    DisconnectFrame: Presence._hub_disconnect,
    JoinFrame: Presence._hub_ignored,
    LeaveFrame: Presence._hub_ignored,
    BulkLeaveFrame: Presence._hub_ignored,
    MetadataFrame: Presence._hub_ignored,
    HeartbeatFrame: Presence._hub_ignored,
}
