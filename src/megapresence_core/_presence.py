"""``Presence``: the bridge-side machine, one per application process.

Theory of operation: the shim turns everything that happens (a socket opened,
a join, a subscribe, a frame from the hub, time passing) into an event and
calls :meth:`Presence.handle`, which returns the actions to perform, in order.
``Presence`` is a facade over its parts, each with one job:

- the local indexes (``_local.LocalIndexes``): who is connected here, which
  sessions linger in their leave grace, who is subscribed to what;
- the channel rosters (``_rosters.Rosters``): every channel's members as this
  process knows them, cluster-wide, with O(1) counts; remote members arrive in
  source tables (the hub's in ``_hub_members.HubMembers``, each instance's in
  the cluster link);
- the channels (``_channels.Channels``): subscribe, unsubscribe, sync, publish,
  position checks, and the one way a local session's membership changes reach every part;
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

A session whose socket closes lingers for ``leave_grace``: still listed,
counted and announced as present; it leaves when the grace ends (timer
``GRACE``), or is restored if it joins again, here (the new connection takes
it over, subscriptions and all) or elsewhere (the hub or the cluster tells
us, and we drop our copy without a leave; the session's channels move with it).

One session id has one holder in the deployment. A second connection for a
joined session, here or on another server (the hub's JOIN, the cluster's
``add``), takes it over under the default policy: the prior connection stays
open without a session and is told (``session.detached``). Another user's
session id is refused wherever it is known (here, or what the hub or the
cluster told us; else the hub refuses it, naming the session). A drain
(``DrainRequested``) sends every client away with 4503, so each session moves
with its client to the server it reconnects to; without a hub or a cluster, where
no server could take it, with 1001.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

import attrs

from ._channels import Channels, Parts, busy, missed, refused
from ._cluster import ClusterLink, ClusterReceipt, NoCluster
from ._feed import PresenceFeed
from ._hub_link import HubLink, NoHubLink
from ._hub_members import PRESENCE_FRAMES, HubMembers
from ._local import ConnectionRecord, LocalIndexes, NoStore, SharedStore
from ._recoveries import PendingRecovery, Recoveries
from ._rosters import LOCAL
from ._stream_store import StreamStore
from ._streams import NoStreams, Recovery, Streams
from ._timers import Timer, Timers
from ._values import (
    Member,
    Message,
    PresenceMode,
    RemoteMember,
    Sender,
    StoreEntry,
    StreamPosition,
)
from .actions import Action, ChannelsRestored, CloseConnection, Deliver, Log, LogLevel
from .config import DuplicateSessionPolicy, PresenceConfig
from .errors import CloseCode, LocalUsageError, truncate_reason
from .events import (
    BroadcastRequested,
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
    CommandReceived,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    DrainRequested,
    Event,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
    KickRequested,
    MetadataUpdated,
    PositionCheck,
    PresenceSync,
    PublishRequested,
    RosterRequested,
    SessionJoined,
    ShutdownRequested,
    StreamPublished,
    StreamReadDone,
    StreamStoreChanged,
    Subscribe,
    Tick,
    Unsubscribe,
)
from .lifecycle import (
    CLUSTER_LINK,
    HUB_LINK,
    PRESENCE,
    ClusterLinkState,
    ConnectionEffect,
    ConnectionInput,
    ConnectionState,
    HubLinkState,
    Machine,
    PresenceEffect,
    PresenceInput,
    PresenceState,
)
from .wire import (
    HUB_STREAM,
    BroadcastFrame,
    ClusterBroadcast,
    ClusterChannelPublish,
    ClusterDirect,
    ClusterKick,
    DirectFrame,
    DirectResult,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    MetadataFrame,
    PublishFrame,
    RecoveredFrame,
    RecoverFrame,
    RestoredFrame,
    SessionDetached,
    StreamFrame,
    StreamReset,
    Subscribed,
    UnsubscribeFrame,
    broadcast_text,
    direct_text,
    encode,
    roster_reply,
)

__all__ = ["Presence"]

KICK_REASON: Final = "kicked"
REQUEUE_REASON: Final = "requeued: reconnect"
DUPLICATE_REASON: Final = "session id already connected"
FOREIGN_REASON: Final = "session id belongs to another user"
REPLACED_REASON: Final = "session taken over by a new connection"
SHUTDOWN_REASON: Final = "server shutting down"
DRAIN_REASON: Final = "server draining: reconnect"

_TimerHandler = Callable[[Timer, Hashable, float], list[Action]]
_NONE = PresenceMode.NONE


@final
class Presence:
    """Who is connected here, and what to send where when that changes."""

    def __init__(self, config: PresenceConfig | None = None) -> None:
        self._config = config = config if config is not None else PresenceConfig()
        self._limits = config.limits
        self._lifecycle = Machine(PRESENCE)
        self._timers = timers = Timers()
        self._local = LocalIndexes(timers)
        self._feed = PresenceFeed(timers, config.presence_window)
        self._rosters = self._feed.rosters
        self._on_timer: dict[Timer, _TimerHandler] = {
            Timer.GRACE: self._grace_over,
            Timer.FLUSH: self._feed.on_timer,
        }
        self._hub_link: HubLink | NoHubLink = NoHubLink()
        self._cluster: ClusterLink | NoCluster = NoCluster()
        store: SharedStore | NoStore = NoStore()
        if config.hub_link is not None:
            link_config = config.hub_link
            if config.history is not None and HUB_STREAM not in link_config.capabilities:
                # With history, a hub that numbers channel streams holds ours.
                capabilities = (*link_config.capabilities, HUB_STREAM)
                link_config = attrs.evolve(link_config, capabilities=capabilities)
            link = HubLink(link_config, timers, max_frame_bytes=self._limits.max_hub_frame_bytes)
            self._hub_link = link
            self._on_timer.update(dict.fromkeys(HUB_LINK.timer_kinds, link.on_timer))
        recoveries = Recoveries()
        self._hub_members = HubMembers(
            self._rosters,
            self._arrived,
            frozenset(self._hub_link.channels),
            recoveries.awaits,
            lambda session_id: self._local.session(session_id) is not None,
            self._hub_shadow,
            timers=timers,
            grace=config.leave_grace,
        )
        self._on_timer[Timer.STALE] = self._hub_members.on_timer
        if config.cluster is not None:
            cluster = ClusterLink(
                config.cluster,
                timers,
                self._local_members,
                self._local_session,
                self._rosters,
                self._arrived,
                self._cluster_restored,
            )
            self._cluster = cluster
            self._on_timer.update(dict.fromkeys(CLUSTER_LINK.timer_kinds, cluster.on_timer))
        if config.store is not None:
            store = SharedStore(config.store, timers, self.local_store_entries)
            self._on_timer[Timer.STORE_REFRESH] = store.on_timer
        #: What this module and ``_channels`` share (the store is swapped at shutdown).
        self._parts = Parts(
            local=self._local,
            feed=self._feed,
            hub_members=self._hub_members,
            limits=self._limits,
            hub_link=self._hub_link,
            cluster=self._cluster,
            store=store,
            streams=Streams(config.history) if config.history is not None else NoStreams(),
            stream_store=StreamStore(config.history, max_bytes=self._limits.max_hub_frame_bytes),
            recoveries=recoveries,
        )
        self._channels = Channels(self._parts)
        #: A drain started: every connection was sent away with 4503, and joins are.
        self._draining = False
        #: The number of the last join here (JOIN ``claim``): which connection holds it.
        self._claims = 0

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
        effect = self._lifecycle.fire(kind)
        if effect is not PresenceEffect.HANDLE:
            if effect is PresenceEffect.REFUSE:  # opened after shutdown: as the others were
                assert isinstance(event, ConnectionOpened)  # the only OPEN
                return [
                    CloseConnection(
                        conn=event.conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON
                    )
                ]
            return []
        now = getattr(event, "now", None)
        if now is not None:
            self._parts.streams.clock(now)
            self._hub_link.clock(now)
        actions = handler(self, event)
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
        if self._draining:
            return [self._sent_away(event.conn)]
        actions: list[Action] = []
        held = local.by_session.get(event.session_id)
        lingering = local.lingering.get(event.session_id)
        prior = held or lingering
        # What another server holds of the session, as far as the hub or the cluster told us.
        remote = self._remote_copy(event.session_id)
        owner = prior.user_id if prior is not None else remote.member.user_id if remote else None
        foreign = owner is not None and owner != event.user_id
        if foreign or held is not None:
            # One connection at a time holds a session, and only its own user's.
            policy = (
                DuplicateSessionPolicy.REFUSE_NEW if foreign else self._config.duplicate_session
            )
            actions.append(_duplicate_log(event, owner, policy, foreign))
            if policy is DuplicateSessionPolicy.REFUSE_NEW:
                reason = FOREIGN_REASON if foreign else DUPLICATE_REASON
                actions.append(
                    CloseConnection(conn=event.conn, code=CloseCode.POLICY, reason=reason)
                )
                return actions
        # A session from another bridge keeps what the hub says of it (RESTORED adds what
        # it missed), unless the link is down: that copy may be stale, and the resync's
        # RESTORED brings what the session holds; nor the channels the hub stopped vouching
        # for (a restarted hub's MEMBERS did not list it there: what it did while the hub
        # was away reached no hub, and our JOIN would tell the hub it holds them). One from
        # another instance gains what that instance hands over (its copy here may be
        # stale: that instance may have died with it).
        hub_copy = self._hub_members.table.sessions.get(event.session_id)
        if prior is not None:
            inherited = prior.channels
        elif hub_copy is not None and self._hub_link.reachable:
            inherited = self._hub_members.vouched(hub_copy)
        else:
            inherited = ()
        if held is not None:  # taken over: it stays open (or is closed), without its session
            actions.append(self._yield(held, event.session_id))
        if lingering is not None:  # restored: no leave, no join
            local.end(lingering, ConnectionInput.RETURN)
        # The session keeps its subscriptions (as present-only: this connection has
        # seen no snapshot) and gains the join's channels, unless one is refused.
        subscriptions = dict.fromkeys(inherited, _NONE)
        refusals: list[Action] = []
        for channel in event.channels:
            if channel not in subscriptions:
                refusal = self._channels.refusal(event.conn, channel, len(subscriptions))
                if refusal is None:
                    subscriptions[channel] = _NONE
                else:
                    refusals.append(refusal)
        local.join(record, event.user_id, event.session_id, subscriptions, event.metadata)
        self._claims = max(self._claims, self._cluster.heard_claim) + 1
        record.claim = self._claims
        record.restorable = prior is None
        # If the session was another bridge's, the hub now moves it here and will not echo
        # that to us: what it told us of the session is stale (unless the hub refuses).
        record.displaced = hub_copy
        self._hub_members.table.remove(event.session_id)
        self._channels.show(record, subscriptions)
        actions += refusals
        exclusive = self._config.duplicate_session is DuplicateSessionPolicy.REFUSE_NEW
        actions += self._hub_link.send(_join_frame(record, exclusive=exclusive))
        store = self._parts.store.put(record, subscriptions)
        return actions + self._cluster.add(record.remote()) + store

    def _on_close(self, event: ConnectionClosed) -> list[Action]:
        record, effect = self._local.close(event.conn, event.now)
        self._channels.unwatch(record)
        if effect is ConnectionEffect.LEAVE:  # it was kicked: no grace
            return self._channels.left(record)
        if effect is not ConnectionEffect.LINGER:
            # it held no session (or lost it, or the server shut down)
            return []
        grace = self._config.leave_grace
        if not grace:
            self._local.end(record, ConnectionInput.EXPIRE)
            return self._channels.left(record)
        self._timers.arm(Timer.GRACE, event.now + grace, record)
        if self._config.duplicate_session is not DuplicateSessionPolicy.REFUSE_NEW:
            return []
        # The hub learns that the session has no socket now: a JOIN on another bridge
        # restores it there, where an open one would be refused.
        return self._hub_link.send(_join_frame(record, lingering=True))

    def _grace_over(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        assert isinstance(owner, ConnectionRecord)
        self._local.end(owner, ConnectionInput.EXPIRE)
        return self._channels.left(owner)

    def _arrived(self, session_id: str, claimer: str | None) -> list[Action]:
        """Another process now holds ``session_id``: a lingering copy here is dropped, with
        no leave (its new home announces it); so is a joined one when the other process
        claims it for the same user (a newer connection took it there: this one is
        detached, or closed under ``CLOSE_PRIOR``) or for another user (this one is closed
        as the foreign one). Only a cluster instance whose claim outranks ours claims a
        session held here for another user (two joins that crossed, or made on each side
        of an outage); the hub refuses the second of two users' JOINs instead, and no JOIN
        of it reaches this bridge as a claim (``_hub_presence``). The cluster and the store
        forget our copy."""
        local = self._local
        actions: list[Action] = []
        record = local.lingering.get(session_id)
        if record is not None:
            channels = record.channels
            local.end(record, ConnectionInput.SUPERSEDE)
            self._channels.hide(record, channels)
        else:
            record = local.by_session.get(session_id)
            if record is None or claimer is None:
                return []
            channels = record.channels
            self._channels.hide(record, channels)
            actions.append(self._yield(record, session_id, foreign=record.user_id != claimer))
        store = self._parts.store.delete(session_id, channels)
        return actions + self._cluster.remove(session_id) + store

    def _yield(self, record: ConnectionRecord, session_id: str, *, foreign: bool = False) -> Action:
        """A newer connection (here or elsewhere) takes ``record``'s session: the record
        loses it (no leave: the session stays present) and its client is told
        (``session.detached``), or closed under ``CLOSE_PRIOR``; under ``REFUSE_NEW`` only a
        cluster instance whose claim outranks ours takes it (joins that crossed, or a
        split after an outage), and ours is closed as the duplicate. A cluster instance
        whose claim outranks ours for another user (``foreign``) takes it under every
        policy, and ours is closed as the foreign one (1008, ``FOREIGN_REASON``)."""
        self._channels.unwatch(record)
        self._local.detach(record)
        policy = self._config.duplicate_session
        if foreign:
            return CloseConnection(conn=record.conn, code=CloseCode.POLICY, reason=FOREIGN_REASON)
        if policy is DuplicateSessionPolicy.CLOSE_PRIOR:
            return CloseConnection(conn=record.conn, code=CloseCode.POLICY, reason=REPLACED_REASON)
        if policy is DuplicateSessionPolicy.REFUSE_NEW:
            return CloseConnection(conn=record.conn, code=CloseCode.POLICY, reason=DUPLICATE_REASON)
        return Deliver(conns=(record.conn,), text=encode(SessionDetached(session_id=session_id)))

    def _remote_copy(self, session_id: str) -> RemoteMember | None:
        """The session as the hub or another instance says it holds it, if one does."""
        for table in (self._hub_members.table, *self._cluster.tables()):
            remote = table.sessions.get(session_id)
            if remote is not None:
                return remote
        return None

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
        author = event.sender
        if event.conn is not None:
            author = self._local.get(event.conn, what="BroadcastRequested").sender()
            if author is None:
                return [refused(event.conn, "not_joined", "join a session to broadcast", channel)]
        refusal = busy(self._parts, event.conn, channel)
        if refusal is not None:
            return [refusal]
        # Every hop's text is built (and measured) before anything happens.
        hub_text = self._hub_link.broadcast(ns, channel, message, excepted, author)
        cluster_text = self._cluster.broadcast(ns, channel, message, excepted, author)
        actions = self._deliver_broadcast(ns, message, excepted, author)
        return (
            actions
            + self._hub_link.send_text(hub_text, event.conn)
            + self._cluster.publish_text(cluster_text)
        )

    def _on_direct(self, event: DirectRequested) -> list[Action]:
        user_id, message = event.user_id, event.message
        self._limits.check_name("DirectRequested", "user_id", user_id)
        self._limits.check_message("DirectRequested", message)
        author = event.sender
        if event.conn is not None:
            author = self._local.get(event.conn, what="DirectRequested").sender()
            if author is None:
                text = "join a session to send a direct message"
                return [refused(event.conn, "not_joined", text, None)]
        refusal = busy(self._parts, event.conn, None)
        if refusal is not None:
            return [refusal]
        hub_text = self._hub_link.direct(user_id, message, author)
        cluster_text = self._cluster.direct(user_id, message, author)
        actions = self._deliver_direct(user_id, message, author)
        if event.conn is not None:
            found = self.knows_user(user_id)
            text = encode(DirectResult(user_id=user_id, found=found))
            actions.append(Deliver(conns=(event.conn,), text=text))
        return (
            actions
            + self._hub_link.send_text(hub_text, event.conn)
            + self._cluster.publish_text(cluster_text)
        )

    def _on_roster(self, event: RosterRequested) -> list[Action]:
        """The ``roster`` command: ``conn`` is sent its path's members and channels, paid
        for from its command bucket as a snapshot is: one command more per
        ``SNAPSHOT_CHARS_PER_COMMAND`` of it, so a large path's rosters come slower."""
        record = self._local.get(event.conn, what="RosterRequested")
        text = roster_reply(self.roster(event.ns), self.local_store_entries())
        record.charge(text, self._limits.command_burst)
        return [Deliver(conns=(event.conn,), text=text)]

    def _on_command(self, event: CommandReceived) -> list[Action]:
        """A token bucket per connection: ``command_rate`` a second, ``command_burst`` deep;
        a snapshot or roster sent takes more from it (``ConnectionRecord.charge``)."""
        record = self._local.get(event.conn, what="CommandReceived")
        limits = self._limits
        elapsed = max(0.0, event.now - record.command_at)
        tokens = min(
            float(limits.command_burst), record.command_tokens + elapsed * limits.command_rate
        )
        record.command_at = max(record.command_at, event.now)  # a clock gone back refills nothing
        if tokens < 1.0:
            record.command_tokens = tokens
            message = (
                f"more than {limits.command_rate:g} commands a second on this connection "
                "(Limits.command_rate; a snapshot or roster counts one more per 16 KiB): slow down"
            )
            return [refused(event.conn, "rate_limited", message, None)]
        record.command_tokens = tokens - 1.0
        return []

    def _on_metadata(self, event: MetadataUpdated) -> list[Action]:
        self._limits.check_metadata("MetadataUpdated", event.metadata_bytes)
        conn = event.conn
        # A client's own command: the session must still be that connection's (a detached
        # one names the session a newer connection took).
        if (
            conn is not None
            and self._local.get(conn, what="MetadataUpdated").session_id != event.session_id
        ):
            return [refused(conn, "not_joined", "join a session to set metadata", None)]
        record = self._local.by_session.get(event.session_id)
        if record is None:
            return [
                Log(
                    level=LogLevel.DEBUG,
                    event="presence.metadata.unknown_session",
                    fields={"session_id": event.session_id},
                )
            ]
        refusal = busy(self._parts, event.conn, None)
        if refusal is not None:
            return [refusal]
        record.metadata = event.metadata
        self._channels.show(record, record.subscriptions)
        frame = MetadataFrame(session_id=event.session_id, metadata=event.metadata)
        return (
            self._hub_link.send(frame, conn)
            + self._cluster.add(record.remote())
            + self._parts.store.put(record, record.subscriptions)
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
        # registration confirm it, or the grace ends (``_hub_members``). Subscribes
        # waiting for the hub's RECOVERED are answered from this process's (new) streams.
        actions = (
            self._hub_link.lost(event.now, event.code, event.reason, event.status)
            + self._reset_streams()
        )
        for pending in self._parts.recoveries.abandon():
            actions += self._channels.answer_here(pending)
        return actions

    def _on_hub_frame(self, event: HubFrameReceived) -> list[Action]:
        link = self._hub_link
        self._hub_members.now = event.now
        actions, frames = link.split(event.data, event.now)
        for data in frames:
            receipt = link.receive(data, event.now)
            actions += receipt.actions
            if receipt.registered:
                actions += self._resync() + self._reset_streams()
            if receipt.frame is not None:
                actions += _HUB_FRAME_HANDLERS[type(receipt.frame)](self, receipt.frame)
        return actions

    def _on_cluster_connected(self, event: ClusterConnected) -> list[Action]:
        return self._cluster.connected(event.now) + self._cluster_reset()

    def _on_cluster_lost(self, event: ClusterLost) -> list[Action]:
        return self._cluster.lost(event.now) + self._cluster_reset()

    def _cluster_reset(self) -> list[Action]:
        """The cluster link went down or came back: publications of other instances may
        have been missed, unless a stream owner (a store) numbers and carries them."""
        return [] if self._parts.owner() is not None else self._reset_streams()

    def _on_stream_store(self, event: StreamStoreChanged) -> list[Action]:
        """The stream store came, went or is out of reach: publications may have been
        missed, so every stream starts again; subscribes waiting for the store's answer
        are answered from this process's own streams."""
        parts = self._parts
        owned = parts.owner() is parts.stream_store
        if not parts.stream_store.change(event.state):
            return []
        actions = self._reset_streams()
        if owned:
            for pending in parts.recoveries.abandon():
                actions += self._channels.answer_here(pending)
        return actions

    def _on_stream_published(self, event: StreamPublished) -> list[Action]:
        store = self._parts.stream_store
        if self._parts.owner() is not store:
            return []  # late: the store stopped numbering (its change reset the streams)
        frame = store.decode(event.data)
        if isinstance(frame, Log):
            return [frame]
        position = StreamPosition(offset=event.offset, epoch=event.epoch)
        excepted = frozenset(frame.except_session_ids)
        return self._channels.deliver(
            event.channel, frame.message, excepted, frame.author, position
        )

    def _on_stream_read(self, event: StreamReadDone) -> list[Action]:
        parts = self._parts
        pending = self._answer_to(event.request, event.position)
        if isinstance(pending, list):
            return pending
        if event.position is None:  # the store could not be read
            return self._channels.answer_here(pending)
        position, since = event.position, pending.since
        logs: list[Log] = []

        def reply(session_id: str) -> list[Action]:
            recovery, warnings = parts.stream_store.recovery(
                pending.channel, since, position, event.entries, session_id
            )
            logs.extend(warnings)
            recovered = None if since is None else recovery.reason is None
            return self._recovered(pending, recovery, recovered)

        actions = self._channels.answer(pending, reply) + logs
        parts.streams.saw(pending.channel, position)
        return actions

    @staticmethod
    def _recovered(
        pending: PendingRecovery, recovery: Recovery, recovered: bool | None
    ) -> list[Action]:
        """The owner's answer to a waiting subscribe, for its connection: ``subscribed``
        (``recovered`` None when it asked no ``since``), then the recovered messages."""
        position = recovery.position
        assert position is not None
        reply = Subscribed(
            channel=pending.channel,
            presence=pending.mode.value,
            offset=position.offset,
            epoch=position.epoch,
            recovered=recovered,
            reason=recovery.reason,
        )
        texts = [encode(reply), *recovery.texts]
        return [Deliver(conns=(pending.conn,), text=text) for text in texts]

    def _reset_streams(self) -> list[Action]:
        """Publications may have been missed (a link went down or came back): this
        process's streams start again under a new epoch, and subscribers who hold its
        positions are told ``stream.reset`` with the new ones, unless an owner (the hub,
        a store) numbers the streams now. Whenever one does, it is asked where each
        channel's stream is (a probe, see ``_recoveries``): only it knows what the
        subscribers here missed, whoever's positions they hold."""
        parts = self._parts
        owner = parts.owner()
        by_channel = self._local.by_channel
        actions: list[Action] = []
        told = parts.streams.reset()
        if owner is None:
            for channel, position in told:
                conns = by_channel.get(channel)
                if conns:
                    reset = StreamReset(
                        channel=channel, offset=position.offset, epoch=position.epoch
                    )
                    actions.append(Deliver(conns=tuple(conns), text=encode(reset)))
            return actions
        records = self._local.records
        for channel, conns in by_channel.items():
            session_id = records[next(iter(conns))].session_id
            assert session_id is not None  # a subscriber is a joined session
            actions += owner.recover(parts.recoveries.probe(channel, session_id))
        return actions

    def _answer_to(
        self, request: int, position: StreamPosition | None
    ) -> PendingRecovery | list[Action]:
        """The waiting subscribe the owner's answer to ``request`` (at ``position``; None:
        the store could not be read) is for; or, when it is for none, what to do: a probe's
        answer (``_probed``), or nothing (answered already: the link or the store went away
        meanwhile; or not ours)."""
        recoveries = self._parts.recoveries
        probed = recoveries.probed(request)
        if probed is not None:
            return self._probed(probed, position)
        pending = recoveries.answered(request)
        return [] if pending is None else pending

    def _probed(self, channel: str, position: StreamPosition | None) -> list[Action]:
        """The owner says where ``channel``'s stream is: if this process's subscribers
        were sent another position, they are told ``stream.missed`` (and recover with
        ``since``); None (the store could not be read): nothing to say."""
        conns = self._local.by_channel.get(channel)
        if position is None or not conns or not self._parts.streams.moved(channel, position):
            return []
        return [missed(conns, channel, position)]

    def _on_cluster_message(self, event: ClusterMessageReceived) -> list[Action]:
        receipt: ClusterReceipt = self._cluster.receive(event.data, event.now)
        message = receipt.fanout
        if isinstance(message, ClusterBroadcast):
            excepted = frozenset(message.except_session_ids)
            return self._deliver_broadcast(message.ns, message.message, excepted, message.author)
        if isinstance(message, ClusterChannelPublish):
            excepted = frozenset(message.except_session_ids)
            return self._channels.deliver(
                message.channel, message.message, excepted, message.author
            )
        if isinstance(message, ClusterDirect):
            return self._deliver_direct(message.user_id, message.message, message.author)
        if isinstance(message, ClusterKick):
            return self._kick_here(message.session_id, message.reason, message.requeue) or []
        return receipt.actions  # a member message

    def _on_tick(self, event: Tick) -> list[Action]:
        now = event.now
        self._parts.store.on_tick(now)
        actions: list[Action] = []
        while (due := self._timers.pop_due(now)) is not None:
            kind, owner = due
            actions += self._on_timer[kind](kind, owner, now)
        return actions

    def _on_drain(self, event: DrainRequested) -> list[Action]:
        self._draining = True
        return [self._sent_away(conn) for conn in self._local.records]

    def _sent_away(self, conn: Hashable) -> CloseConnection:
        """A client of a draining server: told to reconnect now (4503), its session kept for
        the server it reconnects to; or, without a hub or a cluster, where no server could
        take the session over (a new process is a new boot), told the server goes (1001)."""
        if self._alone:
            return CloseConnection(conn=conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON)
        return CloseConnection(conn=conn, code=CloseCode.REQUEUE, reason=DRAIN_REASON)

    def _on_shutdown(self, event: ShutdownRequested) -> list[Action]:
        # The seed's order: hub link, cluster, store (while the indexes still say whose
        # members are ours), then the clients. Nobody watches any more, and what other
        # processes told us will not be kept up to date: the rosters empty.
        parts = self._parts
        actions = self._hub_link.shutdown() + self._cluster.shutdown() + parts.store.shutdown()
        parts.store = NoStore()
        self._feed.shutdown()
        for record in list(self._local.members()):
            self._channels.hide(record, record.channels)
        self._hub_members.clear()
        actions += [
            CloseConnection(conn=record.conn, code=CloseCode.GOING_AWAY, reason=SHUTDOWN_REASON)
            for record in self._local.shut_down()
        ]
        return actions

    # --------------------------------------------------------- hub frames in

    def _hub_broadcast(self, frame: BroadcastFrame) -> list[Action]:
        excepted = frozenset(frame.except_session_ids)
        return self._deliver_broadcast(frame.ns, frame.message, excepted, frame.author)

    def _hub_publish(self, frame: PublishFrame) -> list[Action]:
        excepted = frozenset(frame.except_session_ids)
        return self._channels.deliver(frame.channel, frame.message, excepted, frame.author)

    def _hub_stream(self, frame: StreamFrame) -> list[Action]:
        excepted = frozenset(frame.except_session_ids)
        return self._channels.deliver(
            frame.channel, frame.message, excepted, frame.author, frame.position
        )

    def _hub_recovered(self, frame: RecoveredFrame) -> list[Action]:
        position = StreamPosition(offset=frame.offset, epoch=frame.epoch)
        pending = self._answer_to(frame.request, position)
        if isinstance(pending, list):
            return pending
        # The publications are relayed as the hub kept them.
        recovery = Recovery(position, list(frame.publications), frame.reason)
        actions = self._channels.answer(
            pending,
            lambda session_id: self._recovered(pending, recovery, frame.recovered),
        )
        self._parts.streams.saw(frame.channel, position)
        return actions

    def _hub_direct(self, frame: DirectFrame) -> list[Action]:
        return self._deliver_direct(frame.user_id, frame.message, frame.author)

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

    def _hub_presence(self, frame: HubFrame) -> list[Action]:
        if isinstance(frame, JoinFrame):
            record = self._local.by_session.get(frame.session_id)
            if record is not None and record.claim != frame.supersedes:
                # Not a move from the connection holding it here (a plain JOIN, or one
                # superseding an older claim): our JOIN crossed it, and the hub, which
                # reads JOINs in one order, gives the session to the later one, ours, or
                # refuses ours (REFUSE_NEW), and then this copy is what watchers see.
                record.displaced = self._hub_members.copy(frame)
                return []
        return self._hub_members.receive(frame)

    def _hub_shadow(self, member: Member, channel: str) -> None:
        """The hub lists another bridge's ``member`` in ``channel`` while its session id is
        held here (a MEMBERS that crossed our JOIN, made while the link was down, say):
        kept as the copy to show if the hub refuses our JOIN (another user's session)."""
        record = self._local.session(member.session_id)
        assert record is not None  # ``HubMembers`` asks only for a session held here
        old = record.displaced
        channels = old.channels if old is not None and old.member == member else ()
        channels = tuple(dict.fromkeys((*channels, channel)))
        record.displaced = RemoteMember(ns="", member=member, channels=channels)

    def _hub_ignored(self, frame: HubFrame) -> list[Action]:
        return []

    def _hub_refused(self, frame: ErrorFrame) -> list[Action]:
        """The hub refused one session (``sessionId``): its client is closed with 1008 and
        the link is not at fault. Over a limit the session broke, it leaves; refused as
        another user's id, or open on another bridge under ``REFUSE_NEW``, the holder the
        hub knows stays what this bridge's watchers see."""
        assert frame.session_id is not None
        if frame.code not in _OWNERSHIP_REFUSALS:
            reason = f"refused by the hub: {frame.code}"
            return self._kick_here(frame.session_id, reason, requeue=False) or []
        record = self._local.by_session.get(frame.session_id)
        if record is None:
            return self._arrived(frame.session_id, None)  # a lingering copy is not ours
        reason = FOREIGN_REASON if frame.code == "session_taken" else DUPLICATE_REASON
        self._local.kick(record)
        actions: list[Action] = [
            CloseConnection(conn=record.conn, code=CloseCode.POLICY, reason=reason)
        ]
        if record.displaced is not None:  # the other bridge keeps it: so do its watchers here
            actions += self._hub_members.table.put(record.displaced)
        return actions

    def _hub_restored(self, frame: RestoredFrame) -> list[Action]:
        """The session moved here from another bridge and keeps its channels there, but
        for those it left here: after its JOIN (the hub heard that UNSUBSCRIBE after it
        sent this), or before a resync JOIN (the hub never heard it, and hears it now);
        it holds what this bridge holds once it has."""
        record = self._local.by_session.get(frame.session_id)
        if record is None:
            return []
        return self._restore(record, frame.channels)

    def _cluster_restored(self, session_id: str, channels: tuple[str, ...]) -> list[Action]:
        """Another instance handed over the session it held in its grace: a join here that
        took it from elsewhere gains its channels (once: a copy sent again changes
        nothing, nor does one for a join that took it from a connection here)."""
        record = self._local.by_session.get(session_id)
        if record is None or not record.restorable:
            return []
        record.restorable = False
        return self._restore(record, channels)

    def _restore(self, record: ConnectionRecord, channels: tuple[str, ...]) -> list[Action]:
        """``record``'s session keeps ``channels`` (its prior home's, in that order), less
        those it left here since its JOIN (a hub's RESTORED was sent before the hub heard
        that UNSUBSCRIBE) and those it left before a resync JOIN (``unheard``: the hub
        added them from an older copy, and hears now that the session left them; unless a
        subscribe to one waits for the hub, whose SUBSCRIBE it read after that JOIN)."""
        assert record.session_id is not None  # restored: it holds its session
        left, record.left = record.left, set()
        unheard, record.unheard = record.unheard, set()
        conn, subscriptions = record.conn, record.subscriptions
        waits = self._parts.recoveries.waits
        gone = {c for c in unheard if c not in left and not waits(conn, c)}
        offered = [c for c in channels if c not in subscriptions and c not in left]
        gained = [c for c in offered if c not in gone]
        again = [
            UnsubscribeFrame(session_id=record.session_id, channel=c) for c in offered if c in gone
        ]
        for channel in gained:
            self._local.subscribe(record, channel, _NONE)
        # In the hub's order, so both say the same list from now on: its channels first,
        # then those subscribed here since the JOIN (after leaving, if so), in turn.
        held = record.subscriptions
        first = [c for c in channels if c in held and c not in left]
        record.subscriptions = {c: held.pop(c) for c in first} | held
        self._channels.show(record, gained)
        actions = [action for frame in again for action in self._hub_link.send(frame)]
        actions += self._cluster.add(record.remote()) + self._parts.store.put(record, gained)
        if gained:  # its connection's application was told of the others at its join
            actions.append(ChannelsRestored(conn=record.conn, channels=tuple(gained)))
        return actions

    # ------------------------------------------------------------- delivery

    def _deliver_broadcast(
        self, ns: str, message: Message, except_session_ids: frozenset[str], author: Sender | None
    ) -> list[Action]:
        local = self._local
        targets = local.targets(local.by_ns.get(ns), except_session_ids)
        if not targets:
            return []
        return [Deliver(conns=targets, text=broadcast_text(ns, message, author))]

    def _deliver_direct(
        self, user_id: str, message: Message, author: Sender | None
    ) -> list[Action]:
        conns = self._local.by_user.get(user_id)
        if not conns:
            return []
        return [Deliver(conns=tuple(conns), text=direct_text(message, author))]

    def _resync(self) -> list[Action]:
        """The hub lost our presence: JOIN every local session again, with its channels.
        (Our interest travelled in REGISTER; the hub answers both with MEMBERS.)"""
        link = self._hub_link
        assert isinstance(link, HubLink)  # only a link registers
        local = self._local
        return link.resync([*local.by_session, *local.lingering], self._resync_frame)

    def _resync_frame(self, session_id: str) -> JoinFrame | None:
        """The resync JOIN of ``session_id`` as it is now; None if it has gone."""
        record = self._local.session(session_id)
        if record is None:
            return None
        # A RESTORED from now on answers this JOIN; it may list what the session left
        # before (``unheard``).
        record.rejoined(self._limits.max_channels_per_session)
        return _join_frame(record, lingering=session_id in self._local.lingering)

    # --------------------------------------------------------------- queries

    def _local_members(self) -> list[RemoteMember]:
        return [record.remote() for record in self._local.members()]

    def _local_session(self, session_id: str) -> RemoteMember | None:
        record = self._local.session(session_id)
        return record.remote() if record is not None else None

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
            or self._hub_members.table.knows_user(user_id)
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

    def connection_of(self, session_id: str) -> Hashable | None:
        """The connection holding ``session_id`` on this process, joined (a lingering
        session has none); None for a session this process does not hold."""
        record = self._local.by_session.get(session_id)
        return record.conn if record is not None else None

    def session_state(self, session_id: str) -> ConnectionState:
        """The state of the connection holding ``session_id`` (LINGERING during its leave
        grace); CLOSED for a session this process does not hold."""
        record = self._local.session(session_id)
        return record.state if record is not None else ConnectionState.CLOSED

    @property
    def history_bytes(self) -> int:
        """What the channels' recovery history holds: its texts in UTF-8 bytes plus a fixed
        cost per kept publication (0 without ``PresenceConfig.history``)."""
        return self._parts.streams.bytes

    def stream_position(self, channel: str) -> StreamPosition | None:
        """Where ``channel``'s stream is on this process (None: no stream here)."""
        return self._parts.streams.position(channel)

    @property
    def cluster_subjects(self) -> tuple[str, ...]:
        """The subjects a cluster shim subscribes to (none without a cluster)."""
        return self._cluster.subjects

    @property
    def hub_link_state(self) -> HubLinkState | None:
        """The hub link's state; None without a hub."""
        return self._hub_link.state

    @property
    def hub_link_held(self) -> int:
        """Frames the hub link holds for the hub's rate (0 without a hub)."""
        return self._hub_link.held

    @property
    def cluster_link_state(self) -> ClusterLinkState | None:
        """The cluster link's state; None without a cluster."""
        return self._cluster.state

    @property
    def state(self) -> PresenceState:
        return self._lifecycle.state

    @property
    def drained(self) -> bool:
        """No connection is open and no session lingers (after ``DrainRequested``: every
        session has moved to another server or left), or none could move: without a hub
        or a cluster, no other server would take a lingering session over."""
        return not self._local.records and (self._alone or not self._local.lingering)

    @property
    def _alone(self) -> bool:
        """No hub and no cluster: no other server could take a session over."""
        return self._hub_link.state is None and self._cluster.state is None

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
        self._hub_members.check()
        for table in (self._hub_members.table, *self._cluster.tables()):
            table.check()
            for channel, session_id, member in table.holdings():
                expected.setdefault(channel, {}).setdefault(session_id, {})[table.source] = member
        self._rosters.check(expected)
        watchers: dict[str, dict[PresenceMode, set[Hashable]]] = {}
        for record in local.members():
            for channel, mode in record.subscriptions.items():
                if mode is not _NONE:
                    watchers.setdefault(channel, {}).setdefault(mode, set()).add(record.conn)
        self._feed.check(watchers)
        streams = self._parts.streams
        streams.check()
        holders: dict[str, set[str]] = {}
        for record in local.members():
            for channel in record.subscriptions:
                holders.setdefault(channel, set()).add(record.member().session_id)
        held = {channel: stream.holders for channel, stream in streams.streams().items()}
        if isinstance(streams, Streams) and held != holders:
            raise AssertionError("the streams' holders disagree with the subscriptions")
        if set(self._timers.owners(Timer.GRACE)) != set(local.lingering.values()):
            raise AssertionError("the grace timers disagree with the lingering sessions")


def _duplicate_log(
    event: SessionJoined, prior_user_id: str | None, policy: DuplicateSessionPolicy, foreign: bool
) -> Log:
    fields = {
        "session_id": event.session_id,
        "prior_user_id": prior_user_id,
        "user_id": event.user_id,
        "policy": policy.value,
    }
    name = "presence.session.foreign" if foreign else "presence.session.duplicate"
    return Log(level=LogLevel.WARNING, event=name, fields=fields)


def _join_frame(
    record: ConnectionRecord, *, lingering: bool = False, exclusive: bool = False
) -> JoinFrame:
    member = record.member()
    return JoinFrame(
        user_id=member.user_id,
        session_id=member.session_id,
        channels=record.channels,
        metadata=record.metadata,
        lingering=lingering,
        exclusive=exclusive,
        claim=record.claim,
    )


_E, _W = PresenceInput.EVENT, PresenceInput.WIND_DOWN

#: event type -> (its input to the PRESENCE lifecycle, its handler)
_HANDLERS: Final[dict[type[Any], tuple[PresenceInput, Callable[[Presence, Any], list[Action]]]]] = {
    ConnectionOpened: (PresenceInput.OPEN, Presence._on_open),
    SessionJoined: (_E, Presence._on_join),
    ConnectionClosed: (_W, Presence._on_close),
    Subscribe: (_E, lambda p, e: p._channels.subscribe(e)),
    Unsubscribe: (_E, lambda p, e: p._channels.unsubscribe(e)),
    PresenceSync: (_E, lambda p, e: p._channels.sync(e)),
    PositionCheck: (_E, lambda p, e: p._channels.check(e)),
    RosterRequested: (_E, Presence._on_roster),
    CommandReceived: (_E, Presence._on_command),
    BroadcastRequested: (_E, Presence._on_broadcast),
    PublishRequested: (_E, lambda p, e: p._channels.publish(e)),
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
    StreamStoreChanged: (_W, Presence._on_stream_store),
    StreamPublished: (_W, Presence._on_stream_published),
    StreamReadDone: (_W, Presence._on_stream_read),
    Tick: (_W, Presence._on_tick),
    DrainRequested: (_E, Presence._on_drain),
    ShutdownRequested: (PresenceInput.SHUTDOWN, Presence._on_shutdown),
}

#: The hub's refusals of a session's ownership (not of something the session sent).
_OWNERSHIP_REFUSALS: Final = frozenset({"session_taken", "session_in_use"})

_HUB_FRAME_HANDLERS: Final[dict[type[Any], Callable[[Presence, Any], list[Action]]]] = {
    BroadcastFrame: Presence._hub_broadcast,
    PublishFrame: Presence._hub_publish,
    StreamFrame: Presence._hub_stream,
    RecoveredFrame: Presence._hub_recovered,
    RecoverFrame: Presence._hub_ignored,
    DirectFrame: Presence._hub_direct,
    DisconnectFrame: Presence._hub_disconnect,
    HeartbeatFrame: Presence._hub_ignored,
    ErrorFrame: Presence._hub_refused,
    RestoredFrame: Presence._hub_restored,
    **dict.fromkeys(PRESENCE_FRAMES, Presence._hub_presence),
}
