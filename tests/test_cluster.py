"""The cluster protocol in the core: codec, fan-out, and a roster that heals its own gaps."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    KickRequested,
    LocalUsageError,
    Log,
    Member,
    Message,
    MetadataUpdated,
    PeerError,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
)
from megapresence_core._cluster import CLAIMS_PER_MS, HANDOVER_RETRIES
from megapresence_core.actions import (
    ClusterPublish,
)
from megapresence_core.events import (
    ClusterConnected,
    ClusterMessageReceived,
)
from megapresence_core.wire import (
    CLUSTER_KINDS,
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
    RemoteMember,
    Sender,
    decode_cluster_message,
    encode,
    wire_name,
)

from .cluster_sim import TTL, Bus
from .helpers import scaled

# ------------------------------------------------------------------- codec


MEMBER = Member(session_id="s", user_id="u", metadata={"a": 1})
MESSAGES = [
    ClusterBroadcast(
        sender="i1",
        epoch=7,
        ns="/ws",
        channel="c",
        message=Message(type="t", payload=[1]),
        except_session_ids=("s1",),
        author=Sender(user_id="u", session_id="s"),
    ),
    ClusterChannelPublish(
        sender="i1",
        epoch=7,
        channel="c",
        message=Message(type="t", payload={"x": 1}),
        except_session_ids=("s1",),
        author=Sender(user_id="u", session_id="s"),
    ),
    ClusterDirect(sender="i1", epoch=7, user_id="u", message=Message(type="t")),
    ClusterDirect(
        sender="i1",
        epoch=7,
        user_id="u",
        message=Message(type="t"),
        author=Sender(user_id="u", session_id="s"),
    ),
    ClusterKick(sender="i1", epoch=7, session_id="s", reason="r", requeue=True),
    ClusterAdd(sender="i1", epoch=7, ns="/ws", member=MEMBER, channels=("c", "d")),
    ClusterRemove(sender="i1", epoch=7, session_id="s"),
    ClusterHeartbeat(sender="i1", epoch=7, count=2, digest=12345),
    ClusterSnapshot(
        sender="i1",
        epoch=7,
        snap=1,
        part=0,
        parts=1,
        members=(
            RemoteMember(ns="/ws", member=MEMBER, channels=("c",)),
            RemoteMember(ns="/ws", member=MEMBER),
        ),
    ),
    ClusterResync(sender="i1", epoch=7, target="*"),
    ClusterRestored(sender="i1", epoch=7, target="i2", session_id="s", channels=("c",)),
    ClusterBye(sender="i1", epoch=7),
]


@pytest.mark.parametrize("message", MESSAGES, ids=wire_name)
def test_every_kind_round_trips(message: ClusterMessage) -> None:
    text = encode(message)
    assert json.loads(text)["kind"] == wire_name(message)
    assert decode_cluster_message(text, max_bytes=10_000) == message


def test_the_kinds_are_all_covered() -> None:
    assert (
        set(CLUSTER_KINDS)
        == {wire_name(message) for message in MESSAGES}
        == {
            "broadcast",
            "publish",
            "direct",
            "kick",
            "add",
            "remove",
            "heartbeat",
            "snapshot",
            "resync",
            "restored",
            "bye",
        }
    )


def test_defaults_are_left_out_on_the_wire() -> None:
    text = encode(ClusterKick(sender="i1", epoch=1, session_id="s"))
    assert json.loads(text) == {"v": 1, "kind": "kick", "from": "i1", "epoch": 1, "sessionId": "s"}


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        ('{"v":2,"kind":"bye","from":"i","epoch":1}', "unsupported_protocol", "protocol 2"),
        ('{"v":1,"kind":"party","from":"i","epoch":1}', "unknown_type", "unknown cluster"),
        ('{"v":1,"kind":"bye","from":"","epoch":1}', "bad_frame", "field from must be"),
        ('{"v":1,"kind":"bye","from":"i","epoch":-1}', "bad_frame", "field epoch must be"),
        ('{"v":true,"kind":"bye","from":"i","epoch":1}', "unsupported_protocol", "True"),
        ('{"v":1,"kind":5,"from":"i","epoch":1}', "bad_frame", "needs a string 'kind'"),
        ('{"v":1,"kind":"remove","from":"i","epoch":1}', "bad_frame", "missing sessionId"),
        (
            '{"v":1,"kind":"heartbeat","from":"i","epoch":1,"count":true,"digest":1}',
            "bad_frame",
            "count must be",
        ),
        (
            '{"v":1,"kind":"snapshot","from":"i","epoch":1,"snap":1,"part":0,"parts":1,'
            '"members":{}}',
            "bad_frame",
            "members must be a list",
        ),
        (
            '{"v":1,"kind":"add","from":"i","epoch":1,"ns":"/ws","member":{"sessionId":"s"}}',
            "bad_frame",
            "member must be a non-empty string",
        ),
        (
            '{"v":1,"kind":"publish","from":"i","epoch":1,"channel":"c",'
            '"message":{"type":"presence.state"}}',
            "bad_frame",
            "reserved for the server",
        ),
        ("[]", "bad_json", "JSON object"),
    ],
)
def test_bad_messages_are_refused(data: str, code: str, match: str) -> None:
    with pytest.raises(PeerError, match=match) as info:
        decode_cluster_message(data, max_bytes=10_000)
    assert info.value.code == code


def test_config_is_validated() -> None:
    with pytest.raises(LocalUsageError, match="NATS subject token"):
        ClusterConfig(app="a.b", instance_id="i", epoch=1)
    with pytest.raises(LocalUsageError, match="epoch must be"):
        ClusterConfig(app="a", instance_id="i", epoch=-1)
    with pytest.raises(LocalUsageError, match="ttl must be longer"):
        ClusterConfig(app="a", instance_id="i", epoch=1, heartbeat_interval=5, ttl=5)


# ------------------------------------------------------------------ fan-out


def test_fan_out_reaches_peers_once_and_never_echoes() -> None:
    bus = Bus()
    a, b = bus.add("A"), bus.add("B")
    ann = bus.join("A", "/ws", "ann", "s-ann")
    bob = bus.join("B", "/ws", "bob", "s-bob")
    a.handle(BroadcastRequested(ns="/ws", channel="c", message={"type": "hi"}))
    bus.run()
    assert a.inbox == {ann: [{"type": "hi", "ns": "/ws"}]}
    assert b.inbox == {bob: [{"type": "hi", "ns": "/ws"}]}
    a.handle(DirectRequested(user_id="bob", message={"type": "dm"}))
    bus.run()
    assert b.inbox[bob][-1] == {"type": "dm"}
    assert len(a.inbox[ann]) == 1


def test_broadcast_except_and_kick_cross_instances() -> None:
    bus = Bus()
    a, b = bus.add("A"), bus.add("B")
    bob = bus.join("B", "/ws", "bob", "s-bob")
    bus.join("B", "/ws", "cid", "s-cid")
    a.handle(
        BroadcastRequested(
            ns="/ws", channel="c", message={"type": "x"}, except_session_ids=["s-cid"]
        )
    )
    bus.run()
    assert set(b.inbox) == {bob}
    actions = b.presence.handle(
        ClusterMessageReceived(
            data=encode(
                ClusterKick(sender="A", epoch=1, session_id="s-bob", reason="out", requeue=True)
            ),
            now=bus.now,
        )
    )
    assert [(a.conn, a.code, a.reason) for a in actions] == [(bob, 4503, "out")]  # type: ignore[union-attr]
    assert (
        b.presence.handle(
            ClusterMessageReceived(
                data=encode(ClusterKick(sender="A", epoch=1, session_id="elsewhere")), now=bus.now
            )
        )
        == []
    )
    kick = a.presence.handle(KickRequested(session_id="s-bob"))
    assert [json.loads(x.data)["kind"] for x in kick if isinstance(x, ClusterPublish)] == ["kick"]


def test_roster_is_cluster_wide_and_follows_metadata() -> None:
    bus = Bus()
    a, b = bus.add("A"), bus.add("B")
    bus.join("A", "/ws", "ann", "s-ann")
    bus.join("B", "/ws", "bob", "s-bob")
    assert bus.roster("A", "/ws") == bus.roster("B", "/ws") == {("ann", "s-ann"), ("bob", "s-bob")}
    b.handle(MetadataUpdated(session_id="s-bob", metadata={"status": "away"}, now=0.0))
    bus.run()
    assert {m.session_id: m.metadata for m in a.presence.roster("/ws")}["s-bob"] == {
        "status": "away"
    }


def test_fan_out_only_cluster_keeps_rosters_local() -> None:
    bus = Bus()
    a, _ = bus.add("A", sync_members=False), bus.add("B", sync_members=False)
    bus.join("B", "/ws", "bob", "s-bob")
    assert bus.roster("A", "/ws") == set()
    assert not [x for x in a.presence.handle(Tick(now=100)) if isinstance(x, ClusterPublish)]


# --------------------------------------------------------------- healing


def test_a_silent_instance_is_swept_after_the_ttl_and_not_before() -> None:
    bus = Bus()
    bus.add("A")
    b = bus.add("B")
    bus.join("B", "/ws", "bob", "s-bob")
    b.alive = False  # crashed without a word
    bus.advance(TTL - 2)
    assert bus.roster("A", "/ws") == {("bob", "s-bob")}
    bus.advance(3)
    assert bus.roster("A", "/ws") == set()


def test_nobody_is_swept_while_we_are_disconnected_then_we_heal() -> None:
    bus = Bus()
    a = bus.add("A")
    bus.add("B")
    bus.join("B", "/ws", "bob", "s-bob")
    a.disconnect()
    bus.advance(TTL * 3)
    assert bus.roster("A", "/ws") == {("bob", "s-bob")}  # stale, not gone
    bus.join("B", "/ws", "cid", "s-cid")  # missed by A
    a.connect()
    bus.run()
    assert bus.roster("A", "/ws") == {("bob", "s-bob"), ("cid", "s-cid")}


def test_a_lost_add_is_healed_by_the_next_heartbeat() -> None:
    bus = Bus()
    a = bus.add("A")
    bus.add("B")
    bus.drop = lambda receiver, message: message["kind"] == "add"
    bus.join("B", "/ws", "bob", "s-bob")
    assert bus.roster("A", "/ws") == set()
    bus.drop = lambda receiver, message: False
    bus.advance(6)
    assert bus.roster("A", "/ws") == {("bob", "s-bob")}
    del a


def test_lost_metadata_changes_that_look_alike_are_healed_too() -> None:
    """Two sessions change ``{"s": 0}`` to ``{"s": 1}`` and both adds are lost: the
    heartbeat digest still disagrees (a linear checksum such as a CRC would cancel the two
    alike changes out), so A asks for a snapshot and its watcher gets the update."""
    bus = Bus(presence_window=0.05)
    a, b = bus.add("A"), bus.add("B")
    watcher = bus.join("A", "/ws", "eve", "s-eve")
    a.handle(Subscribe(conn=watcher, channel="room", mode="users", now=bus.now))
    for user, session in (("ann", "s-ann"), ("bob", "s-bob")):
        bus.join("B", "/ws", user, session, channels=("room",), metadata={"s": 0})
    bus.advance(0.1)
    bus.drop = lambda receiver, message: message["kind"] == "add"
    for session in ("s-ann", "s-bob"):
        b.handle(MetadataUpdated(session_id=session, metadata={"s": 1}, now=bus.now))
    bus.run()
    bus.drop = lambda receiver, message: False
    bus.advance(6, step=0.05)  # a heartbeat: its digest disagrees, A asks B for a snapshot
    assert {m.session_id: m.metadata for m in a.presence.roster("/ws")} == {
        "s-eve": None,
        "s-ann": {"s": 1},
        "s-bob": {"s": 1},
    }
    watched = a.clients.maps[(watcher, "room", "users")]
    assert watched.in_sync
    assert {
        user: [s["metadata"] for s in entry["sessions"]]  # type: ignore[index]
        for user, entry in watched.members.items()
    } == {"eve": [None], "ann": [{"s": 1}], "bob": [{"s": 1}]}


def test_a_restart_with_a_new_epoch_purges_the_old_incarnation_at_once() -> None:
    bus = Bus()
    bus.add("A")
    bus.add("B", epoch=1)
    bus.join("B", "/ws", "bob", "s-bob")
    bus.instances["B"].alive = False
    bus.sessions.clear()
    bus.add("B", epoch=2)  # same id, new boot
    assert bus.roster("A", "/ws") == set()
    old = encode(
        ClusterAdd(sender="B", epoch=1, ns="/ws", member=Member(session_id="ghost", user_id="g"))
    )
    bus.instances["A"].handle(ClusterMessageReceived(data=old, now=bus.now))
    assert bus.roster("A", "/ws") == set()  # a late message of the old boot is ignored


def test_bye_forgets_a_peer_now() -> None:
    bus = Bus()
    bus.add("A")
    b = bus.add("B")
    bus.join("B", "/ws", "bob", "s-bob")
    b.handle(ShutdownRequested())
    bus.run()
    assert bus.roster("A", "/ws") == set()


def test_large_snapshots_go_in_parts_and_apply_only_when_complete() -> None:
    bus = Bus()
    a = bus.add("A")
    bus.add("B")
    bus.checks = False  # a check per join costs O(members): one when all have joined
    for n in range(1200):
        bus.join("B", "/ws", f"u{n}", f"s{n}")
    bus.checks = True
    for instance in bus.instances.values():
        instance.presence.check_invariants()
    assert len(bus.roster("A", "/ws")) == 1200
    parts: list[str] = []
    bus.drop = lambda receiver, message: (
        message["kind"] == "snapshot" and (parts.append(message) or message["part"] == 1)
    )  # type: ignore[func-returns-value]
    a.disconnect()
    bus.close(next(iter(bus.sessions)))
    a.connect()
    bus.run()
    assert {p["parts"] for p in parts if p["from"] == "B"} == {3}  # type: ignore[index]
    assert len(bus.roster("A", "/ws")) == 1200  # the incomplete snapshot was not applied
    bus.drop = lambda receiver, message: False
    bus.advance(6)  # the heartbeat digest disagrees: A asks B again
    assert len(bus.roster("A", "/ws")) == 1199


def test_bad_cluster_messages_are_warnings() -> None:
    bus = Bus()
    a = bus.add("A")
    actions = a.presence.handle(ClusterMessageReceived(data="{", now=0))
    assert [x.event for x in actions if isinstance(x, Log)] == ["cluster.message.invalid"]
    bad_part = encode(ClusterSnapshot(sender="B", epoch=1, snap=1, part=5, parts=2, members=()))
    a.handle(ClusterMessageReceived(data=bad_part, now=0))
    assert bus.roster("A", "/ws") == set()


def test_cluster_events_need_a_cluster() -> None:
    with pytest.raises(LocalUsageError, match="no cluster is configured"):
        Presence().handle(ClusterConnected(now=0))


def test_cluster_publishes_nothing_until_connected() -> None:
    config = ClusterConfig(app="t", instance_id="i", epoch=1)
    presence = Presence(PresenceConfig(cluster=config))
    presence.handle(ConnectionOpened(conn=1, ns="/ws"))
    actions = presence.handle(SessionJoined(conn=1, user_id="u", session_id="s", now=0.0))
    assert actions == []
    assert presence.next_deadline() is None


# ------------------------------------------------- a stateful test over the bus


class ClusterBusMachine(RuleBasedStateMachine):
    """Random joins, closes, losses and faults; after healing, every roster is the truth."""

    def __init__(self) -> None:
        super().__init__()
        self.bus = Bus()
        self.epochs = dict.fromkeys("ABC", 1)
        for name in "ABC":
            self.bus.add(name)

    def alive(self) -> list[str]:
        return sorted(name for name, instance in self.bus.instances.items() if instance.alive)

    @precondition(lambda self: self.alive())
    @rule(
        data=st.data(),
        ns=st.sampled_from(["/a", "/b"]),
        user=st.sampled_from(["u1", "u2"]),
        slot=st.integers(0, 3),
    )
    def join(self, data: st.DataObject, ns: str, user: str, slot: int) -> None:
        instance = data.draw(st.sampled_from(self.alive()))
        session = f"{instance}-{slot}"
        for conn, (_, _, _, sid) in list(self.bus.sessions.items()):
            if sid == session:
                self.bus.close(conn)
        self.bus.join(instance, ns, user, session)

    @precondition(lambda self: self.bus.sessions)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        self.bus.close(data.draw(st.sampled_from(sorted(self.bus.sessions))))

    @rule(lossy=st.booleans())
    def lose_messages(self, lossy: bool) -> None:
        counter = iter(range(1_000_000))
        self.bus.drop = (lambda r, m: next(counter) % 3 == 0) if lossy else (lambda r, m: False)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def blip(self, data: st.DataObject) -> None:
        target = self.bus.instances[data.draw(st.sampled_from(self.alive()))]
        target.disconnect()
        self.bus.advance(2)
        target.connect()
        self.bus.run()

    @rule(instance=st.sampled_from("ABC"), restart=st.booleans())
    def crash(self, instance: str, restart: bool) -> None:
        self.bus.instances[instance].alive = False
        for conn, info in list(self.bus.sessions.items()):
            if info[0] == instance:
                del self.bus.sessions[conn]
        if restart:
            self.epochs[instance] += 1
            self.bus.add(instance, epoch=self.epochs[instance])

    @invariant()
    def rosters_converge_once_messages_flow(self) -> None:
        self.bus.drop = lambda r, m: False
        self.bus.advance(TTL + 6)  # a sweep and a heartbeat round
        for ns in ("/a", "/b"):
            for name, instance in self.bus.instances.items():
                if instance.alive:
                    assert self.bus.roster(name, ns) == self.bus.expected(ns), (name, ns)


# Each step is followed by a heal of 21 simulated seconds, messages and all: 100 examples
# in CI (the long profile runs 500).
ClusterBusMachine.TestCase.settings = scaled(100)
TestClusterBus = ClusterBusMachine.TestCase


def test_subjects_deadlines_and_ignored_messages() -> None:
    assert Presence().cluster_subjects == ()
    bus = Bus()
    a = bus.add("A")
    assert a.presence.cluster_subjects == ("megapresence.test.fanout", "megapresence.test.members")
    assert a.presence.next_deadline() == 5.0  # the first heartbeat
    bus.add("B")
    bus.advance(5)
    assert a.presence.next_deadline() == 10.0
    fanout_only = bus.add("C", sync_members=False)
    assert fanout_only.presence.cluster_subjects == ("megapresence.test.fanout",)
    add = encode(
        ClusterAdd(sender="B", epoch=1, ns="/ws", member=Member(session_id="s", user_id="u"))
    )
    assert fanout_only.presence.handle(ClusterMessageReceived(data=add, now=bus.now)) == []
    stranger_bye = encode(ClusterBye(sender="Z", epoch=1))
    assert [
        x.event
        for x in a.presence.handle(ClusterMessageReceived(data=stranger_bye, now=bus.now))
        if isinstance(x, Log)
    ] == ["cluster.instance.left"]
    not_for_us = encode(ClusterResync(sender="B", epoch=1, target="C"))
    assert a.presence.handle(ClusterMessageReceived(data=not_for_us, now=bus.now)) == []


def test_another_users_claim_on_a_local_session_is_logged_and_never_shown() -> None:
    bus = Bus()
    a = bus.add("A")
    bus.join("A", "/ws", "ann", "s-ann")
    claim = ClusterAdd(
        sender="B", epoch=1, ns="/ws", member=Member(session_id="s-ann", user_id="mallory")
    )
    actions = a.presence.handle(ClusterMessageReceived(data=encode(claim), now=bus.now))
    assert [(x.event, x.fields["their_user_id"]) for x in actions if isinstance(x, Log)] == [
        ("cluster.session.conflict", "mallory")
    ]
    assert bus.roster("A", "/ws") == {("ann", "s-ann")}  # the local member is never replaced
    snapshot = ClusterSnapshot(
        sender="B",
        epoch=1,
        snap=1,
        part=0,
        parts=1,
        members=(RemoteMember(ns="/ws", member=claim.member),),
    )
    actions = a.presence.handle(ClusterMessageReceived(data=encode(snapshot), now=bus.now))
    assert [x.event for x in actions if isinstance(x, Log)] == ["cluster.session.conflict"]
    assert bus.roster("A", "/ws") == {("ann", "s-ann")}
    same_user = ClusterAdd(
        sender="B", epoch=1, ns="/ws", member=Member(session_id="s-ann", user_id="ann")
    )
    # The same user's claim below ours (none: its socket closed there) changes nothing.
    assert a.presence.handle(ClusterMessageReceived(data=encode(same_user), now=bus.now)) == []
    assert a.presence.connection_of("s-ann") is not None
    # One that outranks ours (the same claim: the first above A's boot, and "B" > "A") is
    # a take-over: the local connection gives the session up.
    same_user = attrs.evolve(same_user, claim=CLAIMS_PER_MS + 1)
    actions = a.presence.handle(ClusterMessageReceived(data=encode(same_user), now=bus.now))
    assert [json.loads(x.text)["type"] for x in actions if isinstance(x, Deliver)] == [
        "session.detached"
    ]
    assert [json.loads(x.data)["kind"] for x in actions if isinstance(x, ClusterPublish)] == [
        "remove"
    ]
    assert a.presence.connection_of("s-ann") is None


def test_a_hand_over_is_sent_again_at_heartbeats_while_unheard_then_given_up() -> None:
    """A lingering session taken over by an instance that never heard of it: the old home
    tells it the channels (``restored``), and again at each heartbeat of the new holder
    that shows it has not, at most ``HANDOVER_RETRIES`` times."""
    bus = Bus(leave_grace=30.0)
    for name in "ABC":
        bus.add(name)
    first = bus.join("A", "/ws", "ann", "s1", ("room",))
    bus.close(first)
    lost: list[str] = []

    def drop(receiver: Any, message: dict[str, Any]) -> bool:
        if receiver.instance_id != "B" or message["kind"] not in ("snapshot", "restored"):
            return False
        lost.append(message["kind"])
        return True

    bus.drop = drop
    bus.instances["B"].alive = False
    bus.add("B", epoch=2)
    back = bus.join("B", "/ws", "ann", "s1")
    assert lost.count("restored") == 1
    bus.advance(TTL * 2)
    assert lost.count("restored") == 1 + HANDOVER_RETRIES
    assert bus.instances["B"].presence.subscriptions(back) == {}


def test_a_restored_message_changes_only_a_join_that_took_the_session_from_elsewhere() -> None:
    bus = Bus(leave_grace=30.0)
    b = bus.add("B")
    bus.add("A")
    bus.join("B", "/ws", "ann", "s1")  # a session B holds...
    taken = bus.join("B", "/ws", "ann", "s1")  # ...taken over by a connection here
    for target, session_id in (("B", "s1"), ("B", "gone"), ("Z", "s1"), ("A", "gone")):
        restored = ClusterRestored(
            sender="A", epoch=1, target=target, session_id=session_id, channels=("room",)
        )
        assert b.presence.handle(ClusterMessageReceived(data=encode(restored), now=bus.now)) == []
    assert b.presence.subscriptions(taken) == {}
