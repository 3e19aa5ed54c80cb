"""``Presence``: the bridge-side machine, one per application process.

Theory of operation: the shim turns everything that happens (a socket opened,
a join, a subscribe, a frame from the hub, time passing) into an event and
calls :meth:`Presence.handle`, which returns the actions to perform, in order.
``Presence`` is a facade over its parts, each with one job:

- the local indexes (``_local.LocalIndexes``): who is connected here, which
  sessions linger in their leave grace, who is subscribed to what;
- the channel rosters (``_rosters.Rosters``): every channel's members as this
  process knows them, cluster-wide, with O(1) counts; remote members arrive in
  source tables (the hub's here, each instance's in the cluster link);
- the presence feed (``_feed.PresenceFeed``): snapshots and coalesced diffs
  and counts for the watchers of each channel;
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
so a frame too big is refused) and mutates after. A refusal nobody could
check beforehand (a full channel) is a ``RequestRefused`` action. Bytes from
the network never raise: the links turn them into warnings. At the end of
every event that carries ``now``, the feed starts the presence windows the
event opened (or, with a window of 0, flushes them).

A local session's changes reach every part through one set of helpers
(``_joined``, ``_left``...): the rosters (source ``LOCAL``), the hub
(JOIN, LEAVE, SUBSCRIBE...), the cluster (an ``add`` with the session's whole
state) and the store (a put or delete per channel). A session whose socket
closes lingers for ``leave_grace``: still listed, counted and announced as
present; it leaves when the grace ends (timer ``GRACE``), or is restored if
it joins again, here (the new connection takes it over) or elsewhere (the
hub or the cluster tells us, and we drop our copy without a leave).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

from ._cluster import ClusterLink, ClusterReceipt, NoCluster
from ._feed import PresenceFeed
from ._hub_link import HubLink, NoHubLink
from ._local import ConnectionRecord, LocalIndexes, NoStore, SharedStore
from ._rosters import HUB, LOCAL, SourceTable
from ._values import Member, Message, PresenceMode, RemoteMember, Sender, StoreEntry
from .actions import Action, CloseConnection, Deliver, Log, LogLevel, RequestRefused
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
    PresenceSync,
    PublishRequested,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
    Unsubscribe,
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
    ClusterChannelPublish,
    ClusterDirect,
    ClusterKick,
    DirectFrame,
    DirectResult,
    DisconnectFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MembersFrame,
    MetadataFrame,
    PublishFrame,
    Subscribed,
    SubscribeFrame,
    Unsubscribed,
    UnsubscribeFrame,
    broadcast_text,
    channel_text,
    direct_text,
    encode,
    error_reply,
)

__all__ = ["Presence"]

KICK_REASON: Final = "kicked"
REQUEUE_REASON: Final = "requeued: reconnect"
DUPLICATE_REASON: Final = "session id already connected"
FOREIGN_REASON: Final = "session id belongs to another user"
REPLACED_REASON: Final = "session taken over by a new connection"
SHUTDOWN_REASON: Final = "server shutting down"

_TimerHandler = Callable[[Timer, Hashable, float], list[Action]]
_NONE = PresenceMode.NONE


@final
class Presence:
    """Who is connected here, and what to send where when that changes."""

    def __init__(self, config: PresenceConfig | None = None) -> None:
        self._config = config = config if config is not None else PresenceConfig()
        self._limits = config.limits
        self._lifecycle: Machine[PresenceState, PresenceInput] = Machine(PRESENCE)
        self._timers = Timers()
        self._local = LocalIndexes(self._timers)
        self._feed = PresenceFeed(self._timers, config.presence_window)
        self._rosters = self._feed.rosters
        self._hub_members = SourceTable(HUB, self._rosters, self._arrived, keep_channelless=False)
        self._on_timer: dict[Timer, _TimerHandler] = {
            Timer.GRACE: self._grace_over,
            Timer.FLUSH: self._feed.on_timer,
        }
        self._hub_link: HubLink | NoHubLink = NoHubLink()
        self._cluster: ClusterLink | NoCluster = NoCluster()
        self._store: SharedStore | NoStore = NoStore()
        if config.hub_link is not None:
            link = HubLink(
                config.hub_link, self._timers, max_frame_bytes=self._limits.max_hub_frame_bytes
            )
            self._hub_link = link
            self._on_timer.update(dict.fromkeys(HUB_LINK.timer_kinds, link.on_timer))
        #: Channels the hub routes to us without a member here.
        self._interest = frozenset(self._hub_link.channels)
        if config.cluster is not None:
            cluster = ClusterLink(
                config.cluster,
                self._timers,
                self._local_members,
                self._user_of,
                self._rosters,
                self._arrived,
            )
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
        if self._lifecycle.fire(kind) != "handle":
            return []
        actions = handler(self, event)
        now = getattr(event, "now", None)
        if now is not None:
            actions += self._feed.settle(now)
        return actions

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
        prior = local.session(event.session_id)
        inherited: Iterable[str] = ()
        if prior is not None:
            # A session may move between connections of its own user only.
            foreign = prior.user_id != event.user_id
            policy = (
                DuplicateSessionPolicy.REFUSE_NEW if foreign else self._config.duplicate_session
            )
            if prior.state is not ConnectionState.LINGERING or foreign:
                actions.append(_duplicate_log(event, prior, policy, foreign))
            if policy is DuplicateSessionPolicy.REFUSE_NEW and (
                foreign or prior.state is not ConnectionState.LINGERING
            ):
                reason = FOREIGN_REASON if foreign else DUPLICATE_REASON
                actions.append(
                    CloseConnection(conn=event.conn, code=CloseCode.POLICY, reason=reason)
                )
                return actions
            inherited = prior.channels
            actions += self._hand_over(prior, policy)
        # The session keeps its subscriptions (as present-only: this connection has
        # seen no snapshot) and gains the join's channels, unless one is refused.
        subscriptions = dict.fromkeys(inherited, _NONE)
        refusals: list[Action] = []
        for channel in event.channels:
            if channel not in subscriptions:
                refusal = self._refusal(event.conn, channel, len(subscriptions))
                if refusal is None:
                    subscriptions[channel] = _NONE
                else:
                    refusals.append(refusal)
        local.join(record, event.user_id, event.session_id, subscriptions, event.metadata)
        # If the session was another bridge's, the hub now moves it here and will not echo
        # that to us: what it told us of the session is stale.
        self._hub_members.remove(event.session_id)
        self._show(record, subscriptions)
        actions += refusals
        actions += self._hub_link.send(_join_frame(record))
        return actions + self._cluster.add(record.remote()) + self._store.put(record, subscriptions)

    def _hand_over(self, prior: ConnectionRecord, policy: DuplicateSessionPolicy) -> list[Action]:
        """``prior`` gives its session to a connection joining with it: a lingering session
        is restored, an open one detached (and, by policy, closed)."""
        if prior.state is ConnectionState.LINGERING:
            self._local.end(prior, ConnectionInput.RETURN)
            return []
        self._unwatch(prior)
        self._local.detach(prior)
        if policy is DuplicateSessionPolicy.CLOSE_PRIOR:
            return [CloseConnection(conn=prior.conn, code=CloseCode.POLICY, reason=REPLACED_REASON)]
        return []

    def _refusal(self, conn: Hashable, channel: str, held: int) -> RequestRefused | None:
        """Why a session holding ``held`` channels may not subscribe to ``channel``, if so."""
        limits = self._limits
        if held >= limits.max_channels_per_session:
            return _refused(
                conn,
                "too_many_channels",
                f"the session is in {held} channels, the limit "
                f"(max_channels_per_session {limits.max_channels_per_session})",
                channel,
            )
        sessions, _ = self._rosters.counts(channel)
        if sessions >= limits.max_members_per_channel:
            return _refused(
                conn,
                "channel_full",
                f"{channel!r} has {sessions} members, the limit "
                f"(max_members_per_channel {limits.max_members_per_channel})",
                channel,
            )
        return None

    def _on_close(self, event: ConnectionClosed) -> list[Action]:
        record, effect = self._local.close(event.conn, event.now)
        self._unwatch(record)
        if effect == "leave":  # it was kicked: no grace
            return self._left(record)
        if effect != "linger":  # it held no session (or lost it, or the server shut down)
            return []
        grace = self._config.leave_grace
        if not grace:
            self._local.end(record, ConnectionInput.EXPIRE)
            return self._left(record)
        self._timers.arm(Timer.GRACE, event.now + grace, record)
        return []

    def _grace_over(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        assert isinstance(owner, ConnectionRecord)
        self._local.end(owner, ConnectionInput.EXPIRE)
        return self._left(owner)

    def _arrived(self, session_id: str) -> list[Action]:
        """Another process now holds ``session_id``: a lingering copy here is dropped, with
        no leave (its new home announces it); the cluster and the store forget our copy."""
        record = self._local.lingering.get(session_id)
        if record is None:
            return []
        self._local.end(record, ConnectionInput.SUPERSEDE)
        self._hide(record, record.channels)
        return self._cluster.remove(session_id) + self._store.delete(session_id, record.channels)

    def _on_subscribe(self, event: Subscribe) -> list[Action]:
        channel, mode, conn = event.channel, event.mode, event.conn
        record = self._local.get(conn, what="Subscribe")
        self._limits.check_name("Subscribe", "channel", channel)
        if record.session_id is None:
            return [_refused(conn, "not_joined", "join a session to subscribe", channel)]
        reply = Deliver(
            conns=(conn,), text=encode(Subscribed(channel=channel, presence=mode.value))
        )
        old = record.subscriptions.get(channel)
        if old is None:
            refusal = self._refusal(conn, channel, len(record.subscriptions))
            if refusal is not None:
                return [refusal]
        elif old is not _NONE:
            self._feed.unwatch(conn, channel, old)
        self._local.subscribe(record, channel, mode)
        # The snapshot comes first: a new member then sees itself join, in the next diff.
        snapshot = self._feed.watch(conn, channel, mode) if mode is not _NONE else []
        if old is not None:
            return [reply, *snapshot]
        self._show(record, (channel,))
        frame = SubscribeFrame(
            session_id=record.session_id,
            user_id=record.member().user_id,
            channel=channel,
            metadata=record.metadata,
        )
        return [
            reply,
            *snapshot,
            *self._hub_link.send(frame),
            *self._cluster.add(record.remote()),
            *self._store.put(record, (channel,)),
        ]

    def _on_unsubscribe(self, event: Unsubscribe) -> list[Action]:
        channel, conn = event.channel, event.conn
        record = self._local.get(conn, what="Unsubscribe")
        self._limits.check_name("Unsubscribe", "channel", channel)
        session_id = record.session_id
        if session_id is None:
            return [_refused(conn, "not_joined", "join a session to unsubscribe", channel)]
        actions: list[Action] = [Deliver(conns=(conn,), text=encode(Unsubscribed(channel=channel)))]
        mode = record.subscriptions.get(channel)
        if mode is None:
            return actions  # idempotent: it is not subscribed, as asked
        if mode is not _NONE:
            self._feed.unwatch(conn, channel, mode)
        self._local.unsubscribe(record, channel)
        self._hide(record, (channel,))
        frame = UnsubscribeFrame(session_id=session_id, channel=channel)
        return (
            actions
            + self._hub_link.send(frame)
            + self._cluster.add(record.remote())
            + self._store.delete(session_id, (channel,))
        )

    def _on_sync(self, event: PresenceSync) -> list[Action]:
        channel, conn = event.channel, event.conn
        record = self._local.get(conn, what="PresenceSync")
        self._limits.check_name("PresenceSync", "channel", channel)
        if record.session_id is None:
            return [_refused(conn, "not_joined", "join a session to sync", channel)]
        mode = record.subscriptions.get(channel)
        if mode is None:
            return [_refused(conn, "not_subscribed", "subscribe to the channel first", channel)]
        if mode is _NONE:
            return [
                _refused(conn, "not_watching", "the subscription has no presence mode", channel)
            ]
        return [self._feed.snapshot(conn, channel, mode)]

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

    def _on_publish(self, event: PublishRequested) -> list[Action]:
        channel, message, excepted = event.channel, event.message, event.except_session_ids
        limits = self._limits
        limits.check_name("PublishRequested", "channel", channel)
        limits.check_message("PublishRequested", message)
        author = event.sender
        if event.conn is not None:
            record = self._local.get(event.conn, what="PublishRequested")
            if record.session_id is None:
                return [_refused(event.conn, "not_joined", "join a session to publish", channel)]
            if channel not in record.subscriptions:
                return [
                    _refused(
                        event.conn, "not_subscribed", "subscribe to the channel first", channel
                    )
                ]
            author = Sender(user_id=record.member().user_id, session_id=record.session_id)
        hub_text = self._hub_link.publish(channel, message, excepted, author)
        cluster_text = self._cluster.publish(channel, message, excepted, author)
        actions = self._deliver_publish(channel, message, excepted, author)
        return (
            actions + self._hub_link.send_text(hub_text) + self._cluster.publish_text(cluster_text)
        )

    def _on_direct(self, event: DirectRequested) -> list[Action]:
        user_id, message = event.user_id, event.message
        self._limits.check_name("DirectRequested", "user_id", user_id)
        self._limits.check_message("DirectRequested", message)
        if event.conn is not None:
            self._local.get(event.conn, what="DirectRequested")
        hub_text = self._hub_link.direct(user_id, message)
        cluster_text = self._cluster.direct(user_id, message)
        actions = self._deliver_direct(user_id, message)
        if event.conn is not None:
            found = self.knows_user(user_id)
            text = encode(DirectResult(user_id=user_id, found=found))
            actions.append(Deliver(conns=(event.conn,), text=text))
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
        self._show(record, record.subscriptions)
        frame = MetadataFrame(session_id=event.session_id, metadata=event.metadata)
        return (
            self._hub_link.send(frame)
            + self._cluster.add(record.remote())
            + self._store.put(record, record.subscriptions)
        )

    def _on_kick(self, event: KickRequested) -> list[Action]:
        here = self._kick_here(event.session_id, event.reason, event.requeue)
        if here is not None:
            return here
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

    def _kick_here(self, session_id: str, reason: str | None, requeue: bool) -> list[Action] | None:
        """Kick a session of this process: close its socket, or (it lingers, so it has
        none) end its grace at the next tick, unless asked to requeue. None if not ours."""
        record = self._local.by_session.get(session_id)
        if record is not None:
            return [self._kick(record, reason, requeue)]
        lingering = self._local.lingering.get(session_id)
        if lingering is None:
            return None
        if not requeue:
            self._local.kick(lingering)
            self._timers.arm(Timer.GRACE, lingering.closed_at, lingering)
        return []

    def _kick(self, record: ConnectionRecord, reason: str | None, requeue: bool) -> CloseConnection:
        """Close a local session's socket: 1008 leaves at once; 4503 (requeue: come back
        now) keeps the session for its grace, like any other lost socket."""
        if not requeue:
            self._local.kick(record)
        code = CloseCode.REQUEUE if requeue else CloseCode.POLICY
        text = reason if reason is not None else (REQUEUE_REASON if requeue else KICK_REASON)
        return CloseConnection(conn=record.conn, code=code, reason=truncate_reason(text))

    def _on_hub_start(self, event: HubLinkStarted) -> list[Action]:
        return self._hub_link.start(event.now)

    def _on_hub_connected(self, event: HubConnected) -> list[Action]:
        return self._hub_link.connected(event.now)

    def _on_hub_lost(self, event: HubLost) -> list[Action]:
        # What the hub told us stays (stale, not gone) until the MEMBERS of the next
        # registration replace it, channel by channel.
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
        if isinstance(message, ClusterChannelPublish):
            excepted = frozenset(message.except_session_ids)
            return self._deliver_publish(message.channel, message.message, excepted, message.author)
        if isinstance(message, ClusterDirect):
            return self._deliver_direct(message.user_id, message.message)
        if isinstance(message, ClusterKick):
            return self._kick_here(message.session_id, message.reason, message.requeue) or []
        return receipt.actions  # a member message

    def _on_tick(self, event: Tick) -> list[Action]:
        now = event.now
        self._store.on_tick(now)
        actions: list[Action] = []
        while (due := self._timers.pop_due(now)) is not None:
            kind, owner = due
            actions += self._on_timer[kind](kind, owner, now)
        return actions

    def _on_shutdown(self, event: ShutdownRequested) -> list[Action]:
        # The seed's order: hub link, cluster, store (while the indexes still say whose
        # members are ours), then the clients. Nobody watches any more, and what other
        # processes told us will not be kept up to date: the rosters empty.
        actions = self._hub_link.shutdown() + self._cluster.shutdown() + self._store.shutdown()
        self._store = NoStore()
        self._feed.shutdown()
        for record in list(self._local.members()):
            self._hide(record, record.channels)
        self._hub_members.clear()
        actions += [
            CloseConnection(conn=record.conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON)
            for record in self._local.shut_down()
        ]
        return actions

    # ----------------------------------------------- a local session's membership

    def _show(self, record: ConnectionRecord, channels: Iterable[str]) -> None:
        """``record``'s session, as it is now, is in ``channels`` (for the rosters)."""
        member = record.member()
        for channel in channels:
            self._rosters.put(channel, LOCAL, member)

    def _hide(self, record: ConnectionRecord, channels: Iterable[str]) -> None:
        """``record``'s session is no longer in ``channels`` here. A channel with no local
        member left and no interest is no longer routed to us by the hub: what the hub
        told us of it would go stale, so it is forgotten."""
        session_id = record.session_id
        assert session_id is not None
        rosters = self._rosters
        for channel in channels:
            rosters.remove(channel, LOCAL, session_id)
            if not self._tracks(channel):
                self._hub_members.drop_channel(channel)

    def _tracks(self, channel: str) -> bool:
        return channel in self._interest or self._rosters.tracked_locally(channel)

    def _left(self, record: ConnectionRecord) -> list[Action]:
        """``record``'s session has left for good: tell everyone."""
        session_id = record.session_id
        assert session_id is not None
        channels = record.channels
        self._hide(record, channels)
        return (
            self._hub_link.send(LeaveFrame(session_id=session_id))
            + self._cluster.remove(session_id)
            + self._store.delete(session_id, channels)
        )

    def _unwatch(self, record: ConnectionRecord) -> None:
        """``record``'s connection watches nothing any more (it closed or lost its session)."""
        for channel, mode in record.subscriptions.items():
            if mode is not _NONE:
                self._feed.unwatch(record.conn, channel, mode)
                record.subscriptions[channel] = _NONE

    # --------------------------------------------------------- hub frames in

    def _hub_broadcast(self, frame: BroadcastFrame) -> list[Action]:
        return self._deliver_broadcast(frame.ns, frame.message, frozenset(frame.except_session_ids))

    def _hub_publish(self, frame: PublishFrame) -> list[Action]:
        excepted = frozenset(frame.except_session_ids)
        return self._deliver_publish(frame.channel, frame.message, excepted, frame.author)

    def _hub_direct(self, frame: DirectFrame) -> list[Action]:
        return self._deliver_direct(frame.user_id, frame.message)

    def _hub_disconnect(self, frame: DisconnectFrame) -> list[Action]:
        here = self._kick_here(frame.session_id, frame.reason, frame.requeue)
        if here is None:  # gone meanwhile, or moved to another bridge
            return [
                Log(
                    level=LogLevel.DEBUG,
                    event="hub.disconnect.unknown_session",
                    fields={"session_id": frame.session_id},
                )
            ]
        return here

    # Other bridges' members, as the hub routes them: only the channels this bridge
    # tracks (a local member or interest) are kept, since only those stay up to date.

    def _hub_join(self, frame: JoinFrame) -> list[Action]:
        member = Member(session_id=frame.session_id, user_id=frame.user_id, metadata=frame.metadata)
        channels = tuple(channel for channel in frame.channels if self._tracks(channel))
        return self._hub_members.put(RemoteMember(ns="", member=member, channels=channels))

    def _hub_leave(self, frame: LeaveFrame) -> list[Action]:
        self._hub_members.remove(frame.session_id)
        return []

    def _hub_bulk_leave(self, frame: BulkLeaveFrame) -> list[Action]:
        for session_id in frame.session_ids:
            self._hub_members.remove(session_id)
        return []

    def _hub_metadata(self, frame: MetadataFrame) -> list[Action]:
        held = self._hub_members.sessions.get(frame.session_id)
        if held is None:
            return []
        member = Member(
            session_id=frame.session_id, user_id=held.member.user_id, metadata=frame.metadata
        )
        return self._hub_members.put(RemoteMember(ns="", member=member, channels=held.channels))

    def _hub_subscribe(self, frame: SubscribeFrame) -> list[Action]:
        if not self._tracks(frame.channel):
            return []
        member = Member(session_id=frame.session_id, user_id=frame.user_id, metadata=frame.metadata)
        return self._hub_members.with_channel(frame.session_id, frame.channel, member=member)

    def _hub_unsubscribe(self, frame: UnsubscribeFrame) -> list[Action]:
        self._hub_members.without_channel(frame.session_id, frame.channel)
        return []

    def _hub_members_frame(self, frame: MembersFrame) -> list[Action]:
        """The channel's members on other bridges, in parts: the first part replaces what we
        held of the channel (maybe stale, from before a reconnect), the others add to it."""
        channel, table = frame.channel, self._hub_members
        if not self._tracks(channel):
            return []
        if frame.part == 0:
            table.drop_channel(channel)
        actions: list[Action] = []
        for member in frame.members:
            actions += table.with_channel(member.session_id, channel, member=member)
        return actions

    def _hub_ignored(self, frame: HubFrame) -> list[Action]:
        return []

    # ------------------------------------------------------------- delivery

    def _deliver_broadcast(
        self, ns: str, message: Message, except_session_ids: frozenset[str]
    ) -> list[Action]:
        conns = self._local.by_ns.get(ns)
        if not conns:
            return []
        targets = self._targets(conns, except_session_ids)
        return [Deliver(conns=targets, text=broadcast_text(ns, message))] if targets else []

    def _deliver_publish(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> list[Action]:
        conns = self._local.by_channel.get(channel)
        if not conns:
            return []
        targets = self._targets(conns, except_session_ids)
        return (
            [Deliver(conns=targets, text=channel_text(channel, message, author))] if targets else []
        )

    def _targets(
        self, conns: dict[Hashable, None], except_session_ids: frozenset[str]
    ) -> tuple[Hashable, ...]:
        if not except_session_ids:
            return tuple(conns)
        records = self._local.records
        return tuple(conn for conn in conns if records[conn].session_id not in except_session_ids)

    def _deliver_direct(self, user_id: str, message: Message) -> list[Action]:
        conns = self._local.by_user.get(user_id)
        if not conns:
            return []
        return [Deliver(conns=tuple(conns), text=direct_text(message))]

    def _resync(self) -> list[Action]:
        """The hub lost our presence: JOIN every local session again, with its channels.
        (Our interest travelled in REGISTER; the hub answers both with MEMBERS.)"""
        link = self._hub_link
        actions: list[Action] = []
        lingering = self._local.lingering
        for record in self._local.members():
            actions += link.send(_join_frame(record, lingering=record.session_id in lingering))
        return actions

    # --------------------------------------------------------------- queries

    def _local_members(self) -> list[RemoteMember]:
        return [record.remote() for record in self._local.members()]

    def _user_of(self, session_id: str) -> str | None:
        record = self._local.session(session_id)
        return record.user_id if record is not None else None

    def roster(self, ns: str) -> list[Member]:
        """The sessions on ``ns`` (lingering ones included): this process's first, then (when
        the cluster shares members) every other instance's, without repeating a session id."""
        found = {r.session_id: r.member() for r in self._local.members() if r.ns == ns}
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
        for record in self._local.members():
            if not wanted.isdisjoint(record.subscriptions):
                member = record.member()
                found[member.session_id] = member
        for member in remote_members:
            found.setdefault(member.session_id, member)
        return list(found.values())

    def channel_members(self, channel: str) -> list[Member]:
        """The members of ``channel`` as this process knows them: its own, and, for a channel
        it tracks, every bridge's (through the hub) or every instance's (through the cluster)."""
        roster = self._rosters.get(channel)
        return list(roster.members.values()) if roster is not None else []

    def presence_stats(self, channel: str) -> tuple[int, int]:
        """``(sessions, users)`` of ``channel``, in O(1): cluster-wide for a channel this
        process has a subscriber in or an interest in (the hub routes only those), and
        through the cluster for every channel; local only with neither."""
        return self._rosters.counts(channel)

    def subscriptions(self, conn: Hashable) -> dict[str, PresenceMode]:
        """The channels of ``conn``'s session and its presence mode in each (empty when
        it holds no session)."""
        return dict(self._local.get(conn, what="subscriptions").subscriptions)

    def knows_user(self, user_id: str) -> bool:
        """Whether ``user_id`` has a session that a direct message would reach, as far as
        this process knows: a connection here, a member of a channel tracked here, or a
        member of another instance of the cluster."""
        return (
            user_id in self._local.by_user
            or self._hub_members.knows_user(user_id)
            or self._cluster.knows_user(user_id)
        )

    def local_store_entries(self) -> list[StoreEntry]:
        """One entry per (channel, session) of this process: what the shared store holds of us."""
        return [
            StoreEntry(channel=channel, session_id=member.session_id, member=member)
            for record in self._local.members()
            for member in (record.member(),)
            for channel in record.subscriptions
        ]

    def connection_state(self, conn: Hashable) -> ConnectionState:
        """The lifecycle state of ``conn``; CLOSED for an id the core does not hold."""
        record = self._local.records.get(conn)
        return record.state if record is not None else ConnectionState.CLOSED

    def session_state(self, session_id: str) -> ConnectionState:
        """The state of the connection holding ``session_id`` (LINGERING during its leave
        grace); CLOSED for a session this process does not hold."""
        record = self._local.session(session_id)
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
        """Raise ``AssertionError`` if any index disagrees with what it is built from:
        the local indexes with the records, the rosters with the local sessions and the
        sources' tables, the watchers with the subscriptions, the timers with the
        lingering sessions and open windows (for tests and fuzzers)."""
        local = self._local
        local.check()
        expected: dict[str, dict[str, dict[Hashable, Member]]] = {}
        for record in local.members():
            member = record.member()
            for channel in record.subscriptions:
                expected.setdefault(channel, {}).setdefault(member.session_id, {})[LOCAL] = member
        tables = [self._hub_members, *self._cluster.tables()]
        for table in tables:
            table.check()
            for channel, session_id, member in table.holdings():
                expected.setdefault(channel, {}).setdefault(session_id, {})[table.source] = member
        self._rosters.check(expected)
        untracked = {c for c, _, _ in self._hub_members.holdings() if not self._tracks(c)}
        if untracked:
            raise AssertionError(f"the hub's members of untracked channels {untracked} are kept")
        watchers: dict[str, dict[PresenceMode, set[Hashable]]] = {}
        for record in local.members():
            for channel, mode in record.subscriptions.items():
                if mode is not _NONE:
                    watchers.setdefault(channel, {}).setdefault(mode, set()).add(record.conn)
        self._feed.check(watchers)
        if set(self._timers.owners(Timer.GRACE)) != set(local.lingering.values()):
            raise AssertionError("the grace timers disagree with the lingering sessions")


def _refused(conn: Hashable, code: str, message: str, channel: str | None) -> RequestRefused:
    return RequestRefused(
        conn=conn,
        code=code,
        message=message,
        channel=channel,
        text=error_reply(code, message, channel),
    )


def _duplicate_log(
    event: SessionJoined, prior: ConnectionRecord, policy: DuplicateSessionPolicy, foreign: bool
) -> Log:
    fields = {
        "session_id": event.session_id,
        "prior_user_id": prior.user_id,
        "user_id": event.user_id,
        "policy": policy.value,
    }
    name = "presence.session.foreign" if foreign else "presence.session.duplicate"
    return Log(level=LogLevel.WARNING, event=name, fields=fields)


def _join_frame(record: ConnectionRecord, *, lingering: bool = False) -> JoinFrame:
    member = record.member()
    return JoinFrame(
        user_id=member.user_id,
        session_id=member.session_id,
        channels=record.channels,
        metadata=record.metadata,
        lingering=lingering,
    )


_E, _W = PresenceInput.EVENT, PresenceInput.WIND_DOWN

#: event type -> (its input to the PRESENCE lifecycle, its handler)
_HANDLERS: Final[dict[type[Any], tuple[PresenceInput, Callable[[Presence, Any], list[Action]]]]] = {
    ConnectionOpened: (_E, Presence._on_open),
    SessionJoined: (_E, Presence._on_join),
    ConnectionClosed: (_W, Presence._on_close),
    Subscribe: (_E, Presence._on_subscribe),
    Unsubscribe: (_E, Presence._on_unsubscribe),
    PresenceSync: (_E, Presence._on_sync),
    BroadcastRequested: (_E, Presence._on_broadcast),
    PublishRequested: (_E, Presence._on_publish),
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
    PublishFrame: Presence._hub_publish,
    DirectFrame: Presence._hub_direct,
    DisconnectFrame: Presence._hub_disconnect,
    JoinFrame: Presence._hub_join,
    LeaveFrame: Presence._hub_leave,
    BulkLeaveFrame: Presence._hub_bulk_leave,
    MetadataFrame: Presence._hub_metadata,
    SubscribeFrame: Presence._hub_subscribe,
    UnsubscribeFrame: Presence._hub_unsubscribe,
    MembersFrame: Presence._hub_members_frame,
    HeartbeatFrame: Presence._hub_ignored,
}
