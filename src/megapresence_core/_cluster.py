"""The cluster link: this instance's view of the other instances of its app.

Theory of operation. NATS is at-most-once, so every gap is expected and healed
rather than prevented:

- each instance publishes its members' adds and removes as they happen, and a
  heartbeat carrying how many members it holds and a digest of their ids;
- an instance whose heartbeat disagrees with what we hold of it is asked for
  a snapshot (``resync``), at most once per heartbeat interval;
- an instance seen for the first time, or with a newer epoch (it restarted),
  gets our snapshot; a newer epoch also purges its old incarnation at once;
- after our own (re)connection we publish our snapshot and ask everyone for
  theirs; while we are disconnected nobody is swept (stale, not gone: the
  ``CLUSTER_LINK`` table allows the ``INSTANCE_TTL`` timers only while
  connected, and entering ``DISCONNECTED`` cancels them);
- an instance silent for ``ttl`` is swept; one that says ``bye`` is forgotten now.

Snapshots travel in parts (NATS caps a message's size); a snapshot replaces
what we hold of its sender only once every part has arrived.

Members carry their channels, and an ``add`` is a member's whole state (sent
on a join, a metadata change, a subscribe and an unsubscribe), so every
instance knows every channel's roster. What we hold of each instance is a
:class:`~megapresence_core._rosters.SourceTable` keyed by its instance id,
which keeps the channel rosters in step; the heartbeat digest covers channels
and metadata, so a lost ``add`` of either kind is noticed and healed too.

A session that lingers here in its leave grace and is taken over by another
instance (its ``add`` claims it, or its snapshot lists it) is handed over: our
copy is dropped without a leave, and we tell the new holder the channels the
session keeps (``restored``, the hub's RESTORED), since it may not have heard
them (it restarted, or our announcements were lost). A lost ``restored`` is sent
again at each of the new holder's heartbeats, up to ``HANDOVER_RETRIES`` times,
until the new holder announces the session with those channels (or without the
session), and never once it removes the session (a later join there is a new
session); the new holder applies the first one only, and only to a join that
took the session from no connection of its own (``Presence``). Until the new
holder announces them, we hold its copy with those channels (our watchers see
the session stay); the other instances learn them from its announcement.

A session id held here by one user and announced by another instance under a
different user is a conflict (two joins that crossed, or made on each side of
an outage): it is logged, and decided as a take-over is, by the higher (claim,
instance id). If the other instance's claim outranks ours (or our copy only
lingers), our connection is closed (1008, another user's session id) and our
copy dropped, with no hand-over of its channels to another user; otherwise we
keep it and the other instance closes its own when it hears ours. Until then
the other copy is kept in that instance's table (so heartbeat digests still
agree and no resync loop starts), and never shown in place of the local
member (``roster`` lists local members first).

Without a configured cluster, ``Presence`` holds :class:`NoCluster`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, final

import attrs

from ._rosters import Arrival, Rosters, SourceTable
from ._timers import ALL, Timer, Timers
from ._values import Member, Message, RemoteMember, Sender
from .actions import Action, ClusterPublish, Log, LogLevel
from .config import ClusterConfig
from .errors import CloseCode, LocalUsageError, PeerError, over_limit
from .lifecycle import CLUSTER_LINK, ClusterLinkEffect, ClusterLinkInput, ClusterLinkState, Machine
from .wire import (
    ClusterAdd,
    ClusterBroadcast,
    ClusterBye,
    ClusterChannelPublish,
    ClusterDirect,
    ClusterHeartbeat,
    ClusterKick,
    ClusterMessage,
    ClusterRemove,
    ClusterRestored,
    ClusterResync,
    ClusterSnapshot,
    decode_cluster_message,
    encode,
)

__all__ = ["ClusterLink", "ClusterReceipt", "LocalMembers", "NoCluster"]

#: This instance's members, asked for only when a snapshot or a heartbeat needs
#: them: receiving a broadcast or ticking must not cost a walk over every session.
LocalMembers = Callable[[], list[RemoteMember]]
#: The session held here (joined or lingering), or None.
LocalSession = Callable[[str], RemoteMember | None]
#: Told that another instance handed a session over here: (session id, its channels).
Restore = Callable[[str, tuple[str, ...]], list[Action]]

#: Members per snapshot part: about 100 bytes each keeps a part far below
#: NATS's default 1 MiB payload limit.
SNAPSHOT_PART_MEMBERS: Final = 500
#: How many heartbeats of the new holder a hand-over is sent again at, unacknowledged.
HANDOVER_RETRIES: Final = 3
#: Claims an instance's boot epoch (milliseconds) is worth: the claims start there, so
#: an instance that boots later claims above every claim counted up from an earlier
#: boot, unless joins came faster than one per microsecond meanwhile.
CLAIMS_PER_MS: Final = 1000

_FANOUT: Final = frozenset({ClusterBroadcast, ClusterChannelPublish, ClusterDirect, ClusterKick})
_I = ClusterLinkInput
Fanout = ClusterBroadcast | ClusterChannelPublish | ClusterDirect | ClusterKick


def _restored(held: RemoteMember, channels: tuple[str, ...]) -> RemoteMember:
    """``held`` once a hand-over of ``channels`` reached it (in ``Presence``'s order)."""
    rest = tuple(c for c in held.channels if c not in channels)
    return RemoteMember(ns=held.ns, member=held.member, channels=(*channels, *rest))


def digest(members: Iterable[RemoteMember]) -> int:
    """An order-independent fingerprint of a set of members, channels and metadata included."""
    value = 0
    for remote in members:
        value ^= remote.fingerprint
    return value


@final
@attrs.frozen
class ClusterReceipt:
    """What a received message means for ``Presence``: actions, and maybe something to deliver."""

    actions: list[Action]
    #: A fan-out message for local delivery.
    fanout: Fanout | None = None


@final
class _Instance:
    """Another instance of the cluster, as we know it."""

    __slots__ = ("epoch", "handovers", "last_resync", "snapshot", "table")

    def __init__(self, epoch: int, table: SourceTable) -> None:
        self.epoch = epoch
        #: session id -> (the channels we told it the session keeps, retries left)
        self.handovers: dict[str, tuple[tuple[str, ...], int]] = {}
        self.last_resync: float | None = None
        #: Its members, mirrored into the channel rosters.
        self.table = table
        #: (snap, parts) -> the parts received so far
        self.snapshot: tuple[int, int, dict[int, tuple[RemoteMember, ...]]] | None = None

    @property
    def members(self) -> dict[str, RemoteMember]:
        return self.table.sessions


@final
class ClusterLink:
    __slots__ = (
        "_arrived",
        "_config",
        "_instances",
        "_lifecycle",
        "_local",
        "_local_session",
        "_restore",
        "_rosters",
        "_snap",
        "_subjects",
        "_timers",
        "heard_claim",
    )

    def __init__(
        self,
        config: ClusterConfig,
        timers: Timers,
        local: LocalMembers,
        local_session: LocalSession,
        rosters: Rosters,
        arrived: Arrival,
        restore: Restore,
    ) -> None:
        self._config = config
        self._timers = timers
        self._local = local
        self._local_session = local_session
        self._restore = restore
        self._rosters = rosters
        self._arrived = arrived
        prefix = f"megapresence.{config.app}"
        self._subjects = (f"{prefix}.fanout", f"{prefix}.members")
        self._instances: dict[str, _Instance] = {}
        self._lifecycle: Machine[ClusterLinkState, ClusterLinkInput, ClusterLinkEffect] = Machine(
            CLUSTER_LINK, timers, owner=ALL
        )
        self._snap = 0
        #: The highest claim another instance announced, and at least this boot's epoch in
        #: microseconds: a join here claims above it, so a connection that came after
        #: another instance's takes the session from it, also when this instance started
        #: since and has not heard that claim yet (a snapshot sent before that connection
        #: closed reaches us after our join: its claim, counted up from an earlier boot,
        #: ranks below ours).
        self.heard_claim = config.epoch * CLAIMS_PER_MS

    @property
    def reachable(self) -> bool:
        """Connected: what is published now reaches the other instances."""
        return self._lifecycle.state is ClusterLinkState.CONNECTED

    @property
    def state(self) -> ClusterLinkState:
        return self._lifecycle.state

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subjects to subscribe to (the members one only when members are shared)."""
        return self._subjects if self._config.sync_members else self._subjects[:1]

    # ------------------------------------------------------------ publishing

    def _header(self) -> dict[str, Any]:
        return {"sender": self._config.instance_id, "epoch": self._config.epoch}

    def encode(self, message: ClusterMessage) -> str:
        """The message's text, or ``LocalUsageError`` if it would not fit a cluster message."""
        text = encode(message)
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        limit = self._config.max_message_bytes
        if size > limit:
            raise over_limit(
                f"the cluster message would be {size} bytes; the limit is {limit} "
                "(ClusterConfig.max_message_bytes)",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )
        return text

    def publish_text(self, text: str, *, fanout: bool = True) -> list[Action]:
        if fanout:
            subject = self._subjects[0]
        elif self._config.sync_members:
            subject = self._subjects[1]
        else:
            return []
        if self._lifecycle.fire(_I.PUBLISH) is ClusterLinkEffect.SEND:
            return [ClusterPublish(subject=subject, data=text)]
        return []

    def _publish(self, message: ClusterMessage) -> list[Action]:
        return self.publish_text(encode(message), fanout=type(message) in _FANOUT)

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        return self.encode(
            ClusterBroadcast(
                **self._header(),
                ns=ns,
                channel=channel,
                message=message,
                except_session_ids=tuple(sorted(except_session_ids)),
                author=author,
            )
        )

    def publish(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        return self.encode(
            ClusterChannelPublish(
                **self._header(),
                channel=channel,
                message=message,
                except_session_ids=tuple(sorted(except_session_ids)),
                author=author,
            )
        )

    def direct(self, user_id: str, message: Message, author: Sender | None) -> str:
        return self.encode(
            ClusterDirect(**self._header(), user_id=user_id, message=message, author=author)
        )

    def kick(self, session_id: str, reason: str | None, requeue: bool) -> list[Action]:
        return self._publish(
            ClusterKick(**self._header(), session_id=session_id, reason=reason, requeue=requeue)
        )

    def add(self, remote: RemoteMember) -> list[Action]:
        """A local member's whole state: it joined, changed metadata, or (un)subscribed."""
        return self._publish(
            ClusterAdd(
                **self._header(),
                ns=remote.ns,
                member=remote.member,
                channels=remote.channels,
                claim=remote.claim,
            )
        )

    def remove(self, session_id: str) -> list[Action]:
        return self._publish(ClusterRemove(**self._header(), session_id=session_id))

    def _snapshot(self) -> list[Action]:
        self._snap += 1
        local = self._local()
        parts = [
            tuple(local[i : i + SNAPSHOT_PART_MEMBERS])
            for i in range(0, len(local), SNAPSHOT_PART_MEMBERS)
        ] or [()]
        actions: list[Action] = []
        for index, members in enumerate(parts):
            actions += self._publish(
                ClusterSnapshot(
                    **self._header(), snap=self._snap, part=index, parts=len(parts), members=members
                )
            )
        return actions

    # ------------------------------------------------------------- lifecycle

    def connected(self, now: float) -> list[Action]:
        """The client (re)connected: a possible gap. Publish ourselves, ask for everyone."""
        self._lifecycle.fire(_I.CONNECTED)
        config = self._config
        for instance in self._instances:
            # A grace period: their heartbeats resume now.
            self._timers.arm(Timer.INSTANCE_TTL, now + config.ttl, instance)
        self._timers.arm(Timer.CLUSTER_HEARTBEAT, now + config.heartbeat_interval)
        return [
            Log(level=LogLevel.INFO, event="cluster.connected", fields={}),
            *self._snapshot(),
            *self._publish(ClusterResync(**self._header(), target="*")),
        ]

    def lost(self, now: float) -> list[Action]:
        self._lifecycle.fire(_I.LOST)
        return [
            Log(
                level=LogLevel.WARNING,
                event="cluster.lost",
                fields={"instances_kept": len(self._instances)},
            )
        ]

    def shutdown(self) -> list[Action]:
        bye = self._publish(ClusterBye(**self._header()))
        self._lifecycle.fire(_I.STOP)
        return bye

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        if kind is Timer.INSTANCE_TTL:
            assert isinstance(owner, str)
            gone = self._instances.pop(owner)
            fields = {"instance_id": owner, "members": len(gone.members)}
            gone.table.clear()
            return [Log(level=LogLevel.INFO, event="cluster.instance.expired", fields=fields)]
        config = self._config  # Timer.CLUSTER_HEARTBEAT
        self._timers.arm(Timer.CLUSTER_HEARTBEAT, now + config.heartbeat_interval)
        members = self._local()
        return self._publish(
            ClusterHeartbeat(
                **self._header(),
                count=len(members),
                digest=digest(members),
            )
        )

    # ------------------------------------------------------------- receiving

    def receive(self, data: str | bytes, now: float) -> ClusterReceipt:
        try:
            message = decode_cluster_message(data, max_bytes=self._config.max_message_bytes)
        except PeerError as exc:
            fields = {"code": exc.code, "error": str(exc)}
            return ClusterReceipt(
                [Log(level=LogLevel.WARNING, event="cluster.message.invalid", fields=fields)]
            )
        if message.sender == self._config.instance_id:
            return ClusterReceipt([])  # our own echo
        if isinstance(message, Fanout):
            return ClusterReceipt([], message)
        if not self._config.sync_members:
            return ClusterReceipt([])
        return ClusterReceipt(self._member_message(message, now))

    def _member_message(self, message: ClusterMessage, now: float) -> list[Action]:
        sender = message.sender
        instance = self._instances.get(sender)
        if isinstance(message, ClusterBye):
            if instance is not None:
                del self._instances[sender]
                self._timers.cancel(Timer.INSTANCE_TTL, sender)
                instance.table.clear()
            fields = {"instance_id": sender}
            return [Log(level=LogLevel.INFO, event="cluster.instance.left", fields=fields)]
        actions: list[Action] = []
        if instance is not None and message.epoch < instance.epoch:
            return []  # a late message from an incarnation that is gone
        if instance is None or message.epoch > instance.epoch:
            if instance is not None:
                actions.append(
                    Log(
                        level=LogLevel.INFO,
                        event="cluster.instance.new_incarnation",
                        fields={"instance_id": sender, "purged": len(instance.members)},
                    )
                )
                instance.table.clear()
            table = SourceTable(sender, self._rosters, self._arrival(sender), keep_channelless=True)
            instance = self._instances[sender] = _Instance(message.epoch, table)
            actions += self._snapshot()  # introduce ourselves to the newcomer
        if self._lifecycle.fire(_I.HEARD) is ClusterLinkEffect.ARM:
            self._timers.arm(Timer.INSTANCE_TTL, now + self._config.ttl, sender)
        return actions + _MEMBER_HANDLERS[type(message)](self, instance, message, now)

    def _arrival(self, sender: str) -> Arrival:
        """What ``sender`` holding a session means here, and the hand-over of our copy."""

        def arrived(session_id: str, claimer: str | None) -> list[Action]:
            ours = self._local_session(session_id)
            theirs = self._instances[sender].members[session_id]
            # A joined session here whose claim outranks the sender's stays, whoever's
            # user claims it (the sender gives it up, or closes its connection as another
            # user's, when it hears ours); a lingering one (claim 0) always goes.
            rank = (ours.claim, self._config.instance_id) if ours is not None else (0, "")
            if rank[0] and rank > (theirs.claim, sender):
                return []
            actions = self._arrived(session_id, claimer)
            if (
                ours is None
                or not ours.channels
                or ours.member.user_id != theirs.member.user_id
                or self._local_session(session_id) is not None
            ):
                return actions  # not ours, nothing to keep, another user's, or still ours
            instance = self._instances[sender]
            instance.handovers[session_id] = (ours.channels, HANDOVER_RETRIES)
            # What it will hold: our watchers see the session stay.
            instance.table.put(_restored(instance.members[session_id], ours.channels))
            return self._hand_over(session_id, ours.channels, sender) + actions

        return arrived

    def _hand_over(self, session_id: str, channels: tuple[str, ...], target: str) -> list[Action]:
        return self._publish(
            ClusterRestored(
                **self._header(), target=target, session_id=session_id, channels=channels
            )
        )

    def _conflicts(self, members: Iterable[RemoteMember], sender: str) -> list[Action]:
        actions: list[Action] = []
        for remote in members:
            local = self._local_session(remote.member.session_id)
            local_user = local.member.user_id if local is not None else None
            if local_user is not None and local_user != remote.member.user_id:
                fields = {
                    "session_id": remote.member.session_id,
                    "user_id": local_user,
                    "instance_id": sender,
                    "their_user_id": remote.member.user_id,
                }
                actions.append(
                    Log(level=LogLevel.WARNING, event="cluster.session.conflict", fields=fields)
                )
        return actions

    def _on_add(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        remote = RemoteMember(
            ns=message.ns, member=message.member, channels=message.channels, claim=message.claim
        )
        self.heard_claim = max(self.heard_claim, message.claim)
        # An add is the sender's claim: it holds the session now (a take-over, when it
        # is held here too, unless our claim outranks it).
        return self._conflicts((remote,), message.sender) + instance.table.put(remote, claim=True)

    def _on_remove(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        instance.table.remove(message.session_id)
        # It no longer holds the session: a hand-over sent again would reach its next
        # join of it (a new session there, which keeps no channel of ours).
        instance.handovers.pop(message.session_id, None)
        return []

    def _on_heartbeat(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        held = (len(instance.members), digest(instance.members.values()))
        heard = (message.count, message.digest) == held
        actions = self._handovers_again(instance, message.sender, heard=heard)
        if heard or (
            instance.last_resync is not None
            and now - instance.last_resync < self._config.heartbeat_interval
        ):
            return actions
        instance.last_resync = now
        return actions + self._publish(ClusterResync(**self._header(), target=message.sender))

    def _handovers_again(self, instance: _Instance, sender: str, *, heard: bool) -> list[Action]:
        """Send again each hand-over ``instance`` may not have had (its heartbeat disagrees
        with what we hold of it, or that shows the session without the channels), while
        retries are left (a second copy changes nothing there)."""
        actions: list[Action] = []
        for session_id, (channels, retries) in list(instance.handovers.items()):
            held = instance.members.get(session_id)
            arrived = held is None or set(channels).issubset(held.channels)
            if (heard and arrived) or not retries:
                del instance.handovers[session_id]
                continue
            instance.handovers[session_id] = (channels, retries - 1)
            actions += self._hand_over(session_id, channels, sender)
        return actions

    def _on_restored(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        # Only the target applies it: a copy sent again must not change what others hold
        # of the target, when the target did not take it (its own announcements say).
        if message.target != self._config.instance_id:
            return []
        return self._restore(message.session_id, message.channels)

    def _on_snapshot(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        snap, part, parts = message.snap, message.part, message.parts
        if part >= parts:
            return []  # malformed numbering: ignore the part
        if instance.snapshot is None or instance.snapshot[:2] != (snap, parts):
            instance.snapshot = (snap, parts, {})
        received = instance.snapshot[2]
        received[part] = message.members
        if len(received) < parts:
            return []
        members = [m for index in range(parts) for m in received[index]]
        instance.snapshot = None
        self.heard_claim = max((self.heard_claim, *(m.claim for m in members)))
        # Every member is a claim: after a partition, a session held here and there at
        # once stays with the higher (claim, instance id), as for a crossing add.
        return self._conflicts(members, message.sender) + instance.table.replace(members)

    def _on_resync(self, instance: _Instance, message: Any, now: float) -> list[Action]:
        if message.target in ("*", self._config.instance_id):
            return self._snapshot()
        return []

    # ----------------------------------------------------------------- views

    def remote_members(self, ns: str) -> list[Member]:
        return [
            remote.member
            for instance in self._instances.values()
            for remote in instance.members.values()
            if remote.ns == ns
        ]

    def knows_user(self, user_id: str) -> bool:
        return any(instance.table.knows_user(user_id) for instance in self._instances.values())

    def tables(self) -> list[SourceTable]:
        return [instance.table for instance in self._instances.values()]


_MEMBER_HANDLERS: Final[
    dict[type[Any], Callable[[ClusterLink, _Instance, Any, float], list[Action]]]
] = {
    ClusterAdd: ClusterLink._on_add,
    ClusterRemove: ClusterLink._on_remove,
    ClusterHeartbeat: ClusterLink._on_heartbeat,
    ClusterSnapshot: ClusterLink._on_snapshot,
    ClusterResync: ClusterLink._on_resync,
    ClusterRestored: ClusterLink._on_restored,
}


@final
class NoCluster:
    """The cluster link of a ``Presence`` without a cluster: publishes nothing, knows no one."""

    __slots__ = ()

    state: Final = None
    reachable: Final = True  # nothing to reach
    heard_claim: Final = 0
    subjects: Final[tuple[str, ...]] = ()

    def _misuse(self, what: str) -> LocalUsageError:
        return LocalUsageError(f"{what}: no cluster is configured (PresenceConfig.cluster is None)")

    def connected(self, now: float) -> list[Action]:
        raise self._misuse("ClusterConnected")

    def lost(self, now: float) -> list[Action]:
        raise self._misuse("ClusterLost")

    def receive(self, data: str | bytes, now: float) -> ClusterReceipt:
        raise self._misuse("ClusterMessageReceived")

    def shutdown(self) -> list[Action]:
        return []

    def publish_text(self, text: str, *, fanout: bool = True) -> list[Action]:
        return []

    def broadcast(
        self,
        ns: str,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        return ""

    def publish(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> str:
        return ""

    def direct(self, user_id: str, message: Message, author: Sender | None) -> str:
        return ""

    def kick(self, session_id: str, reason: str | None, requeue: bool) -> list[Action]:
        return []

    def add(self, remote: RemoteMember) -> list[Action]:
        return []

    def remove(self, session_id: str) -> list[Action]:
        return []

    def remote_members(self, ns: str) -> list[Member]:
        return []

    def knows_user(self, user_id: str) -> bool:
        return False

    def tables(self) -> list[SourceTable]:
        return []
