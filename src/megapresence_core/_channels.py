"""A session's channels: subscribe, unsubscribe, sync, publish and position checks, and what
every change of a local session's membership tells the rosters, the watchers, the hub, the
cluster and the store.

Theory of operation. A local session's channels are its subscriptions (channel
-> presence mode). Every change goes through the helpers here, so the rosters
(source ``LOCAL``), the feed's watchers and the fan-out (SUBSCRIBE,
UNSUBSCRIBE, LEAVE to the hub; the session's whole state as a cluster
``add``; a store put or delete per channel) never disagree. Refusals nobody
could check beforehand (the channel is full, the session holds too many
channels, the connection holds no session) are ``RequestRefused`` actions and
change nothing; misuse raises before anything changes. A subscriber first
gets ``subscribed``, then its snapshot, and then, like every watcher, sees
itself join in the next diff.

A client is out of step in a channel when it holds a position the stream here never
reached (another epoch, a later offset), or when this server relays a numbering that
skips (it missed publications, so did they): either way it is sent ``stream.missed`` and
recovers with ``since`` (docs/protocol.md).

:class:`Parts` is what ``Presence`` and this module share; the store is the
one part replaced (by ``NoStore``) when the process shuts down.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Final, final

from ._cluster import ClusterLink, NoCluster
from ._feed import PresenceFeed
from ._hub_link import HubLink, NoHubLink
from ._hub_members import HubMembers
from ._local import ConnectionRecord, LocalIndexes, NoStore, SharedStore
from ._recoveries import PendingRecovery, Recoveries
from ._rosters import LOCAL, Rosters
from ._stream_store import StreamStore
from ._streams import NoStreams, Streams
from ._values import Message, PresenceMode, Sender, StreamPosition
from .actions import Action, Deliver, Log, LogLevel, RequestRefused
from .config import Limits
from .events import PositionCheck, PresenceSync, PublishRequested, Subscribe, Unsubscribe
from .wire import (
    LeaveFrame,
    StreamMissed,
    Subscribed,
    SubscribeFrame,
    Unsubscribed,
    UnsubscribeFrame,
    channel_text,
    encode,
    error_reply,
)

__all__ = ["Channels", "Parts", "refused"]

_NONE = PresenceMode.NONE


@final
class Parts:
    """The parts of one ``Presence`` that more than one of its modules acts on."""

    __slots__ = (
        "cluster",
        "feed",
        "hub_link",
        "hub_members",
        "limits",
        "local",
        "recoveries",
        "rosters",
        "store",
        "stream_store",
        "streams",
    )

    def __init__(
        self,
        *,
        local: LocalIndexes,
        feed: PresenceFeed,
        hub_members: HubMembers,
        limits: Limits,
        hub_link: HubLink | NoHubLink,
        cluster: ClusterLink | NoCluster,
        store: SharedStore | NoStore,
        streams: Streams | NoStreams,
        stream_store: StreamStore,
        recoveries: Recoveries,
    ) -> None:
        self.local = local
        self.feed = feed
        self.rosters: Rosters = feed.rosters
        self.hub_members = hub_members
        self.limits = limits
        self.hub_link = hub_link
        self.cluster = cluster
        self.store = store
        self.streams = streams
        self.stream_store = stream_store
        #: Subscribes waiting for the stream owner's answer (RECOVERED, ``StreamReadDone``).
        self.recoveries = recoveries

    def owner(self) -> HubLink | StreamStore | None:
        """Who numbers the channel streams if this process does not (see ``_stream_store``):
        a streaming hub link, else a ready stream store."""
        if isinstance(self.hub_link, HubLink) and self.hub_link.streaming:
            return self.hub_link
        return self.stream_store if self.stream_store.streaming else None


def refused(conn: Hashable, code: str, message: str, channel: str | None) -> RequestRefused:
    return RequestRefused(
        conn=conn,
        code=code,
        message=message,
        channel=channel,
        text=error_reply(code, message, channel),
    )


def missed(conns: Iterable[Hashable], channel: str, position: StreamPosition) -> Deliver:
    """``stream.missed`` at ``position`` for ``conns``: they missed publications to
    ``channel`` (and recover them with ``since``)."""
    text = encode(StreamMissed(channel=channel, offset=position.offset, epoch=position.epoch))
    return Deliver(conns=tuple(conns), text=text)


#: Why a client's command is refused while the hub link holds too much (``busy``).
BUSY_MESSAGE: Final = "the link to the other servers is saturated; retry later"


def busy(parts: Parts, conn: Hashable | None, channel: str | None) -> RequestRefused | None:
    """The refusal of a client's command that would send the hub one more frame while
    the link holds more than it lets out within ``max_queue_delay`` and the connection
    its fair share of that (``HubLink.admits``); the embedding program's own requests
    are never refused."""
    if conn is None or parts.hub_link.admits(conn):
        return None
    return refused(conn, "busy", BUSY_MESSAGE, channel)


@final
class Channels:
    """Subscriptions of the local sessions, and channel-scoped delivery."""

    __slots__ = ("_parts",)

    def __init__(self, parts: Parts) -> None:
        self._parts = parts

    # -------------------------------------------------------------- requests

    def subscribe(self, event: Subscribe) -> list[Action]:
        parts, channel, mode, conn = self._parts, event.channel, event.mode, event.conn
        record = parts.local.get(conn, what="Subscribe")
        parts.limits.check_name("Subscribe", "channel", channel)
        if record.session_id is None:
            return [refused(conn, "not_joined", "join a session to subscribe", channel)]
        if event.denied is not None:
            return [refused(conn, "forbidden", event.denied, channel)]
        old = record.subscriptions.get(channel)
        if old is None:
            refusal = self.refusal(conn, channel, len(record.subscriptions)) or busy(
                parts, conn, channel
            )
            if refusal is not None:
                return [refusal]
        owner = parts.owner()
        if owner is not None:
            # The owner holds the stream: a hub's SUBSCRIBE routes the channel here, and the
            # subscription takes effect here when the owner answers (see ``answer``).
            subscribe = (
                [] if old is not None else parts.hub_link.send(self._frame(record, channel), conn)
            )
            recover = parts.recoveries.ask(
                conn, channel, mode, event.since, record.session_id, fresh=old is None
            )
            return subscribe + owner.recover(recover)
        if old is not None and old is not _NONE:
            parts.feed.unwatch(conn, channel, old)
        parts.streams.hold(channel, record.session_id)
        parts.local.subscribe(record, channel, mode)
        # What it missed comes right after the answer, before any live publication.
        reply = self.subscribed(conn, channel, mode, event.since, record.session_id)
        # The snapshot comes first: a new member then sees itself join, in the next diff.
        reply += self._watch(record, channel, mode)
        if old is not None:
            return reply
        self.show(record, (channel,))
        return [
            *reply,
            *parts.hub_link.send(self._frame(record, channel), conn),
            *parts.cluster.add(record.remote()),
            *parts.store.put(record, (channel,)),
        ]

    @staticmethod
    def _frame(record: ConnectionRecord, channel: str) -> SubscribeFrame:
        assert record.session_id is not None
        return SubscribeFrame(
            session_id=record.session_id,
            user_id=record.member().user_id,
            channel=channel,
            metadata=record.metadata,
        )

    def subscribed(
        self,
        conn: Hashable,
        channel: str,
        mode: PresenceMode,
        since: StreamPosition | None,
        session_id: str,
    ) -> list[Action]:
        """``subscribed`` with the stream's position and, after a ``since``, whether it
        recovered; then the recovered publications, oldest first."""
        streams = self._parts.streams
        recovered: bool | None = None
        reason: str | None = None
        texts: list[str] = []
        if since is None:
            position = streams.tell(channel)
        else:
            recovery = streams.recover(channel, since, session_id)
            position, texts, reason = recovery.position, recovery.texts, recovery.reason
            recovered = reason is None
        reply = Subscribed(
            channel=channel,
            presence=mode.value,
            offset=position.offset if position is not None else None,
            epoch=position.epoch if position is not None else None,
            recovered=recovered,
            reason=reason,
        )
        return [Deliver(conns=(conn,), text=text) for text in (encode(reply), *texts)]

    def answer(
        self, pending: PendingRecovery, reply: Callable[[str], list[Action]]
    ) -> list[Action]:
        """A subscribe that waited for the stream owner takes effect: ``reply(session_id)`` (its
        ``subscribed`` and recovered messages), then its snapshot; a new subscription joins
        the channel here now, as on a single server. Nothing if the connection lost its
        session, or the subscription it changed is gone."""
        parts = self._parts
        local, feed, conn, channel, mode = (
            parts.local,
            parts.feed,
            pending.conn,
            pending.channel,
            pending.mode,
        )
        record = local.records.get(conn)
        if record is None or record.session_id is None:
            parts.hub_members.untrack(channel)
            return []
        old = record.subscriptions.get(channel)
        if old is None:
            if not pending.fresh:
                return []  # unsubscribed meanwhile
            refusal = self.refusal(conn, channel, len(record.subscriptions))
            if refusal is not None:  # the channel filled up meanwhile
                parts.hub_members.untrack(channel)
                frame = UnsubscribeFrame(session_id=record.session_id, channel=channel)
                return [refusal, *parts.hub_link.send(frame)]
        elif old is not _NONE:
            feed.unwatch(conn, channel, old)
        parts.streams.hold(channel, record.session_id)
        local.subscribe(record, channel, mode)
        actions = reply(record.session_id)
        actions += self._watch(record, channel, mode)
        if old is not None:
            return actions
        self.show(record, (channel,))
        return actions + parts.cluster.add(record.remote()) + parts.store.put(record, (channel,))

    def answer_here(self, pending: PendingRecovery) -> list[Action]:
        """A waiting subscribe answered from this process's own streams (the owner is gone)."""
        conn, channel, mode, since = pending.conn, pending.channel, pending.mode, pending.since
        return self.answer(
            pending, lambda session_id: self.subscribed(conn, channel, mode, since, session_id)
        )

    def unsubscribe(self, event: Unsubscribe) -> list[Action]:
        parts, channel, conn = self._parts, event.channel, event.conn
        record = parts.local.get(conn, what="Unsubscribe")
        parts.limits.check_name("Unsubscribe", "channel", channel)
        session_id = record.session_id
        if session_id is None:
            return [refused(conn, "not_joined", "join a session to unsubscribe", channel)]
        actions: list[Action] = [Deliver(conns=(conn,), text=encode(Unsubscribed(channel=channel)))]
        mode = record.subscriptions.get(channel)
        if mode is None:
            # Not subscribed here, as asked; but maybe still waiting for the hub, or held at
            # the session's prior home, which the hub keeps when it moves the session here:
            # the hub hears that it left, and a hand-over on its way (RESTORED, restored)
            # does not bring it back.
            if parts.recoveries.cancel(conn, channel):  # a subscribe still waiting for the hub
                parts.hub_members.untrack(channel)
            elif (refusal := busy(parts, conn, channel)) is not None:
                return [refusal]
            if isinstance(parts.hub_link, HubLink) or isinstance(parts.cluster, ClusterLink):
                record.note_left(channel, parts.limits.max_channels_per_session)
            return actions + parts.hub_link.send(
                UnsubscribeFrame(session_id=session_id, channel=channel), conn
            )
        refusal = busy(parts, conn, channel)
        if refusal is not None:
            return [refusal]
        if mode is not _NONE:
            parts.feed.unwatch(conn, channel, mode)
        parts.local.unsubscribe(record, channel)
        if isinstance(parts.hub_link, HubLink) or isinstance(parts.cluster, ClusterLink):
            # A RESTORED (hub) or restored (cluster) on its way does not take it back.
            record.note_left(channel, parts.limits.max_channels_per_session)
        self.hide(record, (channel,))
        frame = UnsubscribeFrame(session_id=session_id, channel=channel)
        return (
            actions
            + parts.hub_link.send(frame, conn)
            + parts.cluster.add(record.remote())
            + parts.store.delete(session_id, (channel,))
        )

    def sync(self, event: PresenceSync) -> list[Action]:
        parts, channel, conn = self._parts, event.channel, event.conn
        record = parts.local.get(conn, what="PresenceSync")
        parts.limits.check_name("PresenceSync", "channel", channel)
        if record.session_id is None:
            return [refused(conn, "not_joined", "join a session to sync", channel)]
        mode = record.subscriptions.get(channel)
        if mode is None:
            return [refused(conn, "not_subscribed", "subscribe to the channel first", channel)]
        if mode is _NONE:
            message = "the subscription has no presence mode"
            return [refused(conn, "not_watching", message, channel)]
        return [self._charged(record, parts.feed.snapshot(conn, channel, mode))]

    def check(self, event: PositionCheck) -> list[Action]:
        """``stream.missed`` when the client's position is not one the stream here has
        reached (another epoch, or a later offset); nothing when it is (an earlier offset:
        what follows is on its way, or was not for this session)."""
        parts, channel, conn, claimed = self._parts, event.channel, event.conn, event.position
        record = parts.local.get(conn, what="PositionCheck")
        parts.limits.check_name("PositionCheck", "channel", channel)
        if record.session_id is None:
            return [refused(conn, "not_joined", "join a session to check a position", channel)]
        if channel not in record.subscriptions:
            return [refused(conn, "not_subscribed", "subscribe to the channel first", channel)]
        here = parts.streams.reached(channel)
        if here is None or (claimed.epoch == here.epoch and claimed.offset <= here.offset):
            return []
        return [missed((conn,), channel, here)]

    def _watch(self, record: ConnectionRecord, channel: str, mode: PresenceMode) -> list[Action]:
        """``record``'s connection watches ``channel`` in ``mode`` from now: its snapshot."""
        if mode is _NONE:
            return []
        return [self._charged(record, self._parts.feed.watch(record.conn, channel, mode))]

    def _charged(self, record: ConnectionRecord, snapshot: Deliver) -> Deliver:
        """``snapshot``, paid for from its connection's command bucket: one command more per
        ``SNAPSHOT_CHARS_PER_COMMAND`` of it (the next commands are ``rate_limited`` until
        the rate has paid it back), so a large channel's snapshots come slower."""
        record.charge(snapshot.text, self._parts.limits.command_burst)
        return snapshot

    def publish(self, event: PublishRequested) -> list[Action]:
        parts, channel, message = self._parts, event.channel, event.message
        excepted = event.except_session_ids
        parts.limits.check_name("PublishRequested", "channel", channel)
        parts.limits.check_message("PublishRequested", message)
        author = event.sender
        if event.conn is not None:
            record = parts.local.get(event.conn, what="PublishRequested")
            author = record.sender()
            if author is None:
                return [refused(event.conn, "not_joined", "join a session to publish", channel)]
            if channel not in record.subscriptions:
                text = "subscribe to the channel first"
                return [refused(event.conn, "not_subscribed", text, channel)]
        reachable = (
            parts.hub_link.reachable and parts.cluster.reachable and parts.stream_store.reachable
        )
        if parts.streams.keeps and not reachable:
            # Delivered here only, it would be missing from the other servers' streams
            # with nobody told: a publication reaches the whole deployment or nobody.
            if event.conn is not None:
                text = "the link to the other servers is down: publish again later"
                return [refused(event.conn, "unavailable", text, channel)]
            fields = {"channel": channel}
            return [
                Log(level=LogLevel.WARNING, event="presence.publish.unavailable", fields=fields)
            ]
        refusal = busy(parts, event.conn, channel)
        if refusal is not None:
            return [refusal]
        # Every hop's text is built (and measured) before anything happens.
        hub_text = parts.hub_link.publish(channel, message, excepted, author)
        cluster_text = parts.cluster.publish(channel, message, excepted, author)
        owner = parts.owner()
        if owner is parts.stream_store:
            # It reaches every process (this one too) as ``StreamPublished``, numbered.
            return parts.stream_store.append(channel, message, excepted, author)
        # A hub that numbers streams sends it back numbered (STREAM): delivered then.
        here = [] if owner is not None else self.deliver(channel, message, excepted, author)
        return (
            here
            + parts.hub_link.send_text(hub_text, event.conn)
            + parts.cluster.publish_text(cluster_text)
        )

    def deliver(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
        position: StreamPosition | None = None,
    ) -> list[Action]:
        """A channel message to this process's subscribers of ``channel``: at ``position``
        (the stream owner numbered it: the hub or the stream store), or at the next offset of
        this process's stream (kept for recovery, also when only lingering sessions hold it). A
        numbered one sent already is dropped; one that does not follow the last is told first
        (``stream.missed``: this server missed some, so did its subscribers, who then recover
        them)."""
        local = self._parts.local
        told: list[Action] = []
        if position is not None:
            seen = self._parts.streams.saw(channel, position)
            if seen == "again":
                return []
            subscribers = local.by_channel.get(channel)
            if seen == "gap" and subscribers:
                told.append(missed(subscribers, channel, position))
            text = channel_text(channel, message, author, position)
        else:
            text = self._parts.streams.append(
                channel,
                except_session_ids,
                lambda at: channel_text(channel, message, author, at),
            )
        targets = local.targets(local.by_channel.get(channel), except_session_ids)
        if not targets:
            return told
        return [*told, Deliver(conns=targets, text=text)]

    def refusal(self, conn: Hashable, channel: str, held: int) -> RequestRefused | None:
        """Why a session holding ``held`` channels may not subscribe to ``channel``, if so."""
        limits = self._parts.limits
        if held >= limits.max_channels_per_session:
            return refused(
                conn,
                "too_many_channels",
                f"the session is in {held} channels, the limit "
                f"(max_channels_per_session {limits.max_channels_per_session})",
                channel,
            )
        sessions, _ = self._parts.rosters.counts(channel)
        if sessions >= limits.max_members_per_channel:
            return refused(
                conn,
                "channel_full",
                f"{channel!r} has {sessions} members, the limit "
                f"(max_members_per_channel {limits.max_members_per_channel})",
                channel,
            )
        return None

    # ----------------------------------------------- a local session's membership

    def show(self, record: ConnectionRecord, channels: Iterable[str]) -> None:
        """``record``'s session, as it is now, is in ``channels`` (for the rosters)."""
        member, rosters, streams = record.member(), self._parts.rosters, self._parts.streams
        for channel in channels:
            rosters.put(channel, LOCAL, member)
            streams.hold(channel, member.session_id)

    def hide(self, record: ConnectionRecord, channels: Iterable[str]) -> None:
        """``record``'s session is no longer in ``channels`` here (a channel the bridge then
        stops tracking is forgotten: see ``HubMembers``)."""
        session_id = record.session_id
        assert session_id is not None
        rosters, hub_members, streams = (
            self._parts.rosters,
            self._parts.hub_members,
            self._parts.streams,
        )
        for channel in channels:
            rosters.remove(channel, LOCAL, session_id)
            hub_members.untrack(channel)
            streams.release(channel, session_id)

    def left(self, record: ConnectionRecord) -> list[Action]:
        """``record``'s session has left for good: tell everyone."""
        parts, session_id, channels = self._parts, record.session_id, record.channels
        assert session_id is not None
        self.hide(record, channels)
        return (
            parts.hub_link.send(LeaveFrame(session_id=session_id))
            + parts.cluster.remove(session_id)
            + parts.store.delete(session_id, channels)
        )

    def unwatch(self, record: ConnectionRecord) -> None:
        """``record``'s connection watches nothing any more (it closed or lost its session)."""
        feed = self._parts.feed
        for channel, mode in record.subscriptions.items():
            if mode is not _NONE:
                feed.unwatch(record.conn, channel, mode)
                record.subscriptions[channel] = _NONE
