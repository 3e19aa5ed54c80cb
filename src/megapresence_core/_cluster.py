"""The cluster view of one instance: its peers, their members, and what to publish when.

Theory of operation. NATS is at-most-once, so every gap is expected and healed
rather than prevented:

- each instance publishes its members' adds and removes as they happen, and a
  heartbeat carrying how many members it holds and a digest of their ids;
- a peer whose heartbeat disagrees with what we hold of it is asked for a
  snapshot (``resync``), at most once per heartbeat interval;
- a peer seen for the first time, or with a newer epoch (it restarted), gets
  our snapshot; a newer epoch also purges its old incarnation at once;
- after our own (re)connection we publish our snapshot and ask everyone for
  theirs; while we are disconnected nobody is swept (stale, not gone);
- a peer silent for ``ttl`` is swept; one that says ``bye`` is forgotten now.

Snapshots travel in parts (NATS caps a message's size); a snapshot replaces
what we hold of its sender only once every part has arrived.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any, Final, final

import attrs

from ._actions import Action, ClusterPublish, Log, LogLevel
from ._cluster_codec import (
    ClusterEnvelope,
    RemoteMember,
    decode_cluster_message,
    encode_cluster_message,
)
from ._config import ClusterConfig
from ._errors import FrameError
from ._values import Member, Message

__all__ = ["Cluster", "ClusterReceipt", "LocalMembers"]

#: This instance's members, asked for only when a snapshot or a heartbeat needs
#: them: receiving a broadcast or ticking must not cost a walk over every session.
LocalMembers = Callable[[], list[RemoteMember]]

#: Members per snapshot part: about 100 bytes each keeps a part far below
#: NATS's default 1 MiB payload limit.
SNAPSHOT_PART_MEMBERS: Final = 500


def digest(session_ids: Iterable[str]) -> int:
    """An order-independent fingerprint of a set of session ids."""
    value = 0
    for session_id in session_ids:
        value ^= zlib.crc32(session_id.encode("utf-8", "surrogatepass"))
    return value


@final
@attrs.frozen
class ClusterReceipt:
    """What a received message means for ``Presence``: actions, and maybe something to deliver."""

    actions: list[Action]
    #: A fan-out message for local delivery: kind "broadcast", "direct" or "kick".
    fanout: ClusterEnvelope | None = None


@final
class _Peer:
    __slots__ = ("epoch", "last_heard", "last_resync", "members", "snapshot")

    def __init__(self, epoch: int, now: float) -> None:
        self.epoch = epoch
        self.last_heard = now
        self.last_resync: float | None = None
        self.members: dict[str, RemoteMember] = {}
        #: (snap, parts) -> the parts received so far
        self.snapshot: tuple[int, int, dict[int, tuple[RemoteMember, ...]]] | None = None


@final
class Cluster:
    __slots__ = ("_config", "_connected", "_next_heartbeat", "_peers", "_snap", "_subjects")

    def __init__(self, config: ClusterConfig) -> None:
        self._config = config
        prefix = f"megapresence.{config.app}"
        self._subjects = (f"{prefix}.fanout", f"{prefix}.roster")
        self._peers: dict[str, _Peer] = {}
        self._connected = False
        self._next_heartbeat = 0.0
        self._snap = 0

    @property
    def subjects(self) -> tuple[str, ...]:
        """The subjects to subscribe to (the roster one only with a cluster roster)."""
        return self._subjects if self._config.roster else self._subjects[:1]

    # ------------------------------------------------------------ publishing

    def _publish(self, kind: str, **fields: Any) -> list[Action]:
        if not self._connected:
            return []
        roster_kind = kind not in ("broadcast", "direct", "kick")
        if roster_kind and not self._config.roster:
            return []
        subject = self._subjects[1] if roster_kind else self._subjects[0]
        data = encode_cluster_message(kind, self._config.instance_id, self._config.epoch, **fields)
        return [ClusterPublish(subject=subject, data=data)]

    def publish_broadcast(
        self, ns: str, channel: str, message: Message, except_session_ids: tuple[str, ...]
    ) -> list[Action]:
        return self._publish(
            "broadcast", ns=ns, channel=channel, message=message, **{"except": except_session_ids}
        )

    def publish_direct(self, user_id: str, message: Message) -> list[Action]:
        return self._publish("direct", userId=user_id, message=message)

    def publish_kick(self, session_id: str, reason: str | None, requeue: bool) -> list[Action]:
        return self._publish("kick", sessionId=session_id, reason=reason, requeue=requeue)

    def publish_add(self, ns: str, member: Member) -> list[Action]:
        return self._publish("add", ns=ns, member=member)

    def publish_remove(self, session_id: str) -> list[Action]:
        return self._publish("remove", sessionId=session_id)

    def _snapshot(self, local_members: LocalMembers) -> list[Action]:
        self._snap += 1
        local = local_members()
        parts = [
            tuple(local[i : i + SNAPSHOT_PART_MEMBERS])
            for i in range(0, len(local), SNAPSHOT_PART_MEMBERS)
        ] or [()]
        actions: list[Action] = []
        for index, members in enumerate(parts):
            actions += self._publish(
                "snapshot", snap=self._snap, part=index, parts=len(parts), members=members
            )
        return actions

    # ------------------------------------------------------------- lifecycle

    def connected(self, now: float, local: LocalMembers) -> list[Action]:
        """The client (re)connected: a possible gap. Publish ourselves, ask for everyone."""
        self._connected = True
        for peer in self._peers.values():
            peer.last_heard = now  # a grace period: their heartbeats resume now
        self._next_heartbeat = now + self._config.heartbeat_interval
        return [Log(level=LogLevel.INFO, event="cluster.connected", fields={})] + (
            self._snapshot(local) + self._publish("resync", target="*")
        )

    def lost(self, now: float) -> list[Action]:
        self._connected = False
        return [
            Log(
                level=LogLevel.WARNING,
                event="cluster.lost",
                fields={"peers_kept": len(self._peers)},
            )
        ]

    def shutdown(self) -> list[Action]:
        actions = self._publish("bye")
        self._connected = False
        return actions

    def tick(self, now: float, local: LocalMembers) -> list[Action]:
        if not self._connected:
            return []  # stale, not gone: nobody is swept while we cannot hear
        config = self._config
        actions: list[Action] = []
        for instance, peer in list(self._peers.items()):
            if now - peer.last_heard >= config.ttl:
                del self._peers[instance]
                actions.append(
                    Log(
                        level=LogLevel.INFO,
                        event="cluster.peer.expired",
                        fields={"instance_id": instance, "members": len(peer.members)},
                    )
                )
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + config.heartbeat_interval
            members = local()
            actions += self._publish(
                "heartbeat", count=len(members), digest=digest(m.member.session_id for m in members)
            )
        return actions

    def next_deadline(self) -> float | None:
        if not self._connected:
            return None
        return min(
            [self._next_heartbeat, *(p.last_heard + self._config.ttl for p in self._peers.values())]
        )

    # ------------------------------------------------------------- receiving

    def receive(self, data: str | bytes, now: float, local: LocalMembers) -> ClusterReceipt:
        try:
            message = decode_cluster_message(data, max_bytes=self._config.max_message_bytes)
        except FrameError as exc:
            return ClusterReceipt(
                [
                    Log(
                        level=LogLevel.WARNING,
                        event="cluster.message.invalid",
                        fields={"code": exc.code, "error": str(exc)},
                    )
                ]
            )
        if message.sender == self._config.instance_id:
            return ClusterReceipt([])  # our own echo
        if message.kind in ("broadcast", "direct", "kick"):
            return ClusterReceipt([], message)
        if not self._config.roster:
            return ClusterReceipt([])
        return ClusterReceipt(self._roster_message(message, now, local))

    def _roster_message(
        self, message: ClusterEnvelope, now: float, local: LocalMembers
    ) -> list[Action]:
        actions: list[Action] = []
        peer = self._peers.get(message.sender)
        if message.kind == "bye":
            if peer is not None:
                del self._peers[message.sender]
            return [
                Log(
                    level=LogLevel.INFO,
                    event="cluster.peer.left",
                    fields={"instance_id": message.sender},
                )
            ]
        if peer is not None and message.epoch < peer.epoch:
            return []  # a late message from an incarnation that is gone
        if peer is None or message.epoch > peer.epoch:
            if peer is not None:
                actions.append(
                    Log(
                        level=LogLevel.INFO,
                        event="cluster.peer.new_incarnation",
                        fields={"instance_id": message.sender, "purged": len(peer.members)},
                    )
                )
            peer = self._peers[message.sender] = _Peer(message.epoch, now)
            actions += self._snapshot(local)  # introduce ourselves to the newcomer
        peer.last_heard = now
        fields = message.fields
        if message.kind == "add":
            remote = RemoteMember(ns=fields["ns"], member=fields["member"])
            peer.members[remote.member.session_id] = remote
        elif message.kind == "remove":
            peer.members.pop(fields["sessionId"], None)
        elif message.kind == "heartbeat":
            held = digest(peer.members)
            if (fields["count"], fields["digest"]) != (len(peer.members), held) and (
                peer.last_resync is None
                or now - peer.last_resync >= self._config.heartbeat_interval
            ):
                peer.last_resync = now
                actions += self._publish("resync", target=message.sender)
        elif message.kind == "snapshot":
            self._snapshot_part(peer, fields)
        elif fields["target"] in ("*", self._config.instance_id):  # resync
            actions += self._snapshot(local)
        return actions

    def _snapshot_part(self, peer: _Peer, fields: dict[str, Any]) -> None:
        snap, part, parts = fields["snap"], fields["part"], fields["parts"]
        if part >= parts:
            return  # malformed numbering: ignore the part
        if peer.snapshot is None or peer.snapshot[:2] != (snap, parts):
            peer.snapshot = (snap, parts, {})
        received = peer.snapshot[2]
        received[part] = fields["members"]
        if len(received) == parts:
            peer.members = {
                m.member.session_id: m for index in range(parts) for m in received[index]
            }
            peer.snapshot = None

    # ----------------------------------------------------------------- views

    def remote_members(self, ns: str) -> list[Member]:
        return [
            remote.member
            for peer in self._peers.values()
            for remote in peer.members.values()
            if remote.ns == ns
        ]
