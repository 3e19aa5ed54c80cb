"""One session across the deployment: the hub (or the cluster) decides who holds a session id.

Each rule runs on the simulated hub network (``sim.HubNetwork``) and, where the
cluster has the same rule, on the simulated NATS bus (``cluster_sim.Bus``): a
second connection for a live session behaves the same on every bridge under each
duplicate-session policy, another user's session id is refused everywhere at the
cost of that connection only, and a return within the leave grace to any bridge
is a restore (channels kept, watchers see nothing).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    DuplicateSessionPolicy,
    PresenceMode,
    SessionJoined,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.events import ClusterMessageReceived, HubFrameReceived
from megapresence_core.lifecycle import BridgeState, ConnectionState, HubLinkState

from .cluster_sim import HEARTBEAT, Bus
from .helpers import hub_frame
from .sim import HubNetwork

GRACE = 5.0
DETACHED = {"type": "session.detached", "sessionId": "s1", "reason": "replaced"}
FOREIGN = "session id belongs to another user"
DUPLICATE = "session id already connected"
REPLACED = "session taken over by a new connection"


def network(policy: DuplicateSessionPolicy = DuplicateSessionPolicy.DETACH_PRIOR) -> HubNetwork:
    """Bridges A and B (no interest of their own) and C (interested in ``room``), each with
    a watcher of ``room`` (users view): what they see is asserted to be nothing."""
    sim = HubNetwork(
        {"A": (), "B": (), "C": ("room",)}, leave_grace=GRACE, duplicate_session=policy
    )
    sim.settle()
    watch(sim)
    return sim


def watch(sim: HubNetwork) -> None:
    for name in sim.bridges:
        conn = sim.open(name, "/ws", f"watcher-{name}", f"w-{name}", ("room",))
        sim.act(name, Subscribe(conn=conn, channel="room", mode="users", now=sim.now))
    sim.settle()
    sim.clear_inboxes()


def diffs(sim: HubNetwork) -> list[dict[str, Any]]:
    """Every presence message any client received (since the inboxes were cleared)."""
    return [
        message
        for bridge in sim.bridges.values()
        for messages in bridge.inbox.values()
        for message in messages
        if message["type"].startswith("presence.")
    ]


def holders(sim: HubNetwork, session: str) -> dict[str, ConnectionState]:
    """bridge -> the state of ``session`` there, for the bridges that hold it."""
    states = {name: b.presence.session_state(session) for name, b in sim.bridges.items()}
    return {name: state for name, state in states.items() if state is not ConnectionState.CLOSED}


def hub_owner(sim: HubNetwork, session: str) -> tuple[str, tuple[str, ...]] | None:
    assert sim.hub is not None
    for member in sim.hub.members():
        if member.session_id == session:
            return member.bridge_id, member.channels
    return None


def seen(sim: HubNetwork, session: str) -> set[str]:
    """The bridges whose ``room`` roster lists ``session``."""
    return {
        name
        for name, b in sim.bridges.items()
        if session in {m.session_id for m in b.presence.channel_members("room")}
    }


# ----------------------------------------------------- a second live connection


@pytest.mark.parametrize("second", ["A", "B"])
def test_the_newer_connection_takes_the_session_on_any_bridge(second: str) -> None:
    sim = network()
    first = sim.open("A", "/ws", "ann", "s1", ("room",), {"v": 1})
    sim.settle()
    sim.clear_inboxes()
    newer = sim.open(second, "/ws", "ann", "s1", ("misc",), {"v": 1})
    sim.settle()
    # The prior connection is told, stays open, and holds nothing.
    assert sim.bridges["A"].inbox[first] == [DETACHED]
    assert not any(b.closed for b in sim.bridges.values())
    assert sim.bridges["A"].presence.connection_state(first) is ConnectionState.DETACHED
    assert holders(sim, "s1") == {second: ConnectionState.JOINED}
    assert sim.bridges[second].presence.connection_of("s1") == newer
    # The session keeps its channels (and gains the new join's), one view everywhere.
    assert hub_owner(sim, "s1") == (second, ("room", "misc"))
    assert set(sim.bridges[second].presence.subscriptions(newer)) == {"room", "misc"}
    assert seen(sim, "s1") == {"A", "B", "C"}
    assert diffs(sim) == []  # the watchers saw nothing: it never left
    # When the newer one closes, every bridge agrees that the session leaves (no split).
    sim.close(second, newer)
    sim.advance(GRACE + 0.5)
    assert seen(sim, "s1") == set()
    assert hub_owner(sim, "s1") is None


def test_close_prior_closes_the_prior_connection_on_the_other_bridge() -> None:
    sim = network(DuplicateSessionPolicy.CLOSE_PRIOR)
    first = sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.clear_inboxes()
    sim.open("B", "/ws", "ann", "s1")
    sim.settle()
    assert sim.bridges["A"].closed == [(first, 1008, REPLACED)]
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert diffs(sim) == []


def test_refuse_new_refuses_a_second_connection_on_another_bridge_but_restores() -> None:
    sim = network(DuplicateSessionPolicy.REFUSE_NEW)
    first = sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.clear_inboxes()
    second = sim.open("B", "/ws", "ann", "s1")
    sim.settle()
    assert sim.bridges["B"].closed == [(second, 1008, DUPLICATE)]
    assert holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == ("A", ("room",))
    assert seen(sim, "s1") == {"A", "B", "C"}  # B's watcher still sees it (on A)
    assert diffs(sim) == []
    # Once its socket closed, a return on B within the grace is a restore.
    sim.close("A", first)
    sim.clear_inboxes()
    back = sim.open("B", "/ws", "ann", "s1")
    sim.settle()
    assert sim.bridges["B"].closed == []
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert set(sim.bridges["B"].presence.subscriptions(back)) == {"room"}
    sim.advance(GRACE + 0.5)
    assert diffs(sim) == []


def test_two_connections_that_cross_at_the_hub_leave_no_split_view() -> None:
    # Two tabs at once: s1 opens on B and again on A, each before its bridge hears of the
    # other; the hub serves B's JOIN, then A's, and each bridge gets the other's claim.
    sim = network()
    sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.settle()
    for name in ("B", "A"):
        conn = next(sim.conn_ids)
        sim.open_conns[name][conn] = None
        sim.bridges[name].handle(ConnectionOpened(conn=conn, ns="/ws"))
        sim.bridges[name].handle(
            SessionJoined(conn=conn, user_id="ann", session_id="s1", channels=("room",), now=0)
        )
    sim.settle()
    sim.advance(GRACE + 1)
    # A's newer JOIN, the later at the hub, takes it back: B's connection is detached.
    assert hub_owner(sim, "s1") == ("A", ("room",))
    assert holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert seen(sim, "s1") == {"A", "B", "C"}


# ------------------------------------------------------ another user's session


@pytest.mark.parametrize("where", ["A", "B", "C"])
def test_another_users_session_id_is_refused_on_every_bridge_and_costs_only_that(
    where: str,
) -> None:
    sim = network()
    sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.settle()
    sim.clear_inboxes()
    for _ in range(5):  # far past the hub's strikes: the link never pays
        conn = sim.open(where, "/ws", "mallory", "s1", ("room",))
        sim.settle()
        assert sim.bridges[where].closed == [(conn, 1008, FOREIGN)]
        sim.clear_inboxes()
    assert holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == ("A", ("room",))
    assert seen(sim, "s1") == {"A", "B", "C"}
    assert all(b.presence.hub_link_state is HubLinkState.REGISTERED for b in sim.bridges.values())
    assert sim.hub is not None
    assert all(
        sim.hub.bridge_state(link) is BridgeState.REGISTERED
        for link in sim.hub.registered_bridges().values()
    )
    assert sorted(sim.links) == [1, 2, 3]  # no link was closed and opened again


def test_the_hub_refuses_another_users_id_that_the_bridge_could_not_know() -> None:
    sim = network()
    sim.open("A", "/ws", "ann", "s1", ("misc",))  # a channel B does not track
    sim.settle()
    assert "s1" not in sim.bridges["B"].presence._hub_members.table.sessions
    conn = sim.open("B", "/ws", "mallory", "s1", ("room",))
    sim.settle()
    assert sim.bridges["B"].closed == [(conn, 1008, FOREIGN)]
    assert hub_owner(sim, "s1") == ("A", ("misc",))
    assert sim.bridges["B"].presence.hub_link_state is HubLinkState.REGISTERED


def test_a_refused_join_puts_back_what_the_hub_said_of_the_session() -> None:
    # B watches room: it knows ann's s1 on A. Under REFUSE_NEW its own join of s1 is
    # refused by the hub; B's watchers must still see s1 (held by A).
    sim = network(DuplicateSessionPolicy.REFUSE_NEW)
    sim.open("A", "/ws", "ann", "s1", ("room",), {"v": 1})
    sim.settle()
    sim.clear_inboxes()
    sim.open("B", "/ws", "ann", "s1", (), {"v": 1})
    sim.settle()
    assert seen(sim, "s1") == {"A", "B", "C"}
    users = [m for m in sim.bridges["B"].presence.channel_members("room") if m.session_id == "s1"]
    assert [m.user_id for m in users] == ["ann"]


def test_a_hub_error_naming_an_unknown_session_changes_nothing() -> None:
    sim = network()
    bridge = sim.bridges["A"]
    data = hub_frame("ERROR", code="session_taken", message="x", sessionId="nobody")
    actions = bridge.presence.handle(HubFrameReceived(data=data, now=sim.now))
    assert [a.event for a in actions if hasattr(a, "event")] == ["hub.session.refused"]


# --------------------------------------------------------- restore across bridges


@pytest.mark.parametrize("back_on", ["A", "B", "C"])
def test_a_return_within_the_grace_to_any_bridge_is_a_restore(back_on: str) -> None:
    sim = network()
    first = sim.open("A", "/ws", "ann", "s1", ("room", "misc"), {"v": 1})
    sim.settle()
    sim.close("A", first)
    sim.advance(1.0)
    sim.clear_inboxes()
    back = sim.open(back_on, "/ws", "ann", "s1", (), {"v": 1})
    sim.settle()
    sim.advance(GRACE + 1.0)  # long past the grace that started on A
    assert diffs(sim) == []  # no leave, no join, on any bridge
    assert holders(sim, "s1") == {back_on: ConnectionState.JOINED}
    assert sim.bridges[back_on].presence.subscriptions(back) == {
        "room": PresenceMode.NONE,
        "misc": PresenceMode.NONE,
    }
    assert hub_owner(sim, "s1") == (back_on, ("room", "misc"))
    assert seen(sim, "s1") == {"A", "B", "C"}


@pytest.mark.parametrize(
    ("joined", "ops", "kept"),
    [
        ((), [(Unsubscribe, "room")], ("misc",)),
        # misc is not tracked on B, so B's JOIN did not carry it: left before the RESTORED
        ((), [(Unsubscribe, "misc")], ("room",)),
        ((), [(Unsubscribe, "misc"), (Unsubscribe, "room")], ()),
        ((), [(Unsubscribe, "room"), (Subscribe, "room")], ("misc", "room")),
        ((), [(Subscribe, "other")], ("room", "misc", "other")),
        ((), [(Subscribe, "other"), (Unsubscribe, "other")], ("room", "misc")),
        ((), [(Subscribe, "misc"), (Unsubscribe, "misc")], ("room",)),
        (("extra",), [(Unsubscribe, "extra")], ("room", "misc")),
        (("extra",), [(Unsubscribe, "extra"), (Unsubscribe, "room")], ("misc",)),
    ],
)
def test_restored_never_undoes_what_the_session_did_after_its_join(
    joined: tuple[str, ...],
    ops: list[tuple[type[Subscribe | Unsubscribe], str]],
    kept: tuple[str, ...],
) -> None:
    """A session that returns on B (JOIN with ``joined``) and subscribes or unsubscribes at
    once (``ops`` reach the hub behind its JOIN, before the RESTORED that answers the JOIN
    comes back) keeps its channels from A, less those it left on B and plus those it
    joined there: B, the watchers and the hub agree."""
    sim = network()
    first = sim.open("A", "/ws", "ann", "s1", ("room", "misc"))
    sim.settle()
    sim.close("A", first)
    bridge = sim.bridges["B"]
    back = next(sim.conn_ids)
    sim.open_conns["B"][back] = None
    bridge.handle(ConnectionOpened(conn=back, ns="/ws"))
    bridge.handle(
        SessionJoined(conn=back, user_id="ann", session_id="s1", channels=joined, now=sim.now)
    )
    for op, channel in ops:
        bridge.handle(op(conn=back, channel=channel, now=sim.now))
    sim.settle()
    assert tuple(bridge.presence.subscriptions(back)) == kept
    assert hub_owner(sim, "s1") == ("B", kept)
    assert seen(sim, "s1") == ({"A", "B", "C"} if "room" in kept else set())
    assert sim.hub_members() == sim.expected_hub_members()


@pytest.mark.parametrize("late", ["SUBSCRIBE", "MEMBERS"])
def test_what_the_hub_says_of_a_session_held_here_is_never_kept(late: str) -> None:
    """The hub routes A's SUBSCRIBE of s1 to B before it hears B's JOIN of s1 (the client
    moved meanwhile), or lists s1 in B's MEMBERS: B holds s1, so that is stale, and once s1
    leaves B's watchers must not list it (the soak's ghost on one hub-linked server)."""
    sim = network()
    first = sim.open("A", "/ws", "ann", "s1", ())
    sim.settle()
    a, b = sim.bridges["A"], sim.bridges["B"]
    back = next(sim.conn_ids)
    if late == "SUBSCRIBE":
        a.handle(Subscribe(conn=first, channel="room", mode="none", now=sim.now))  # on its way
        del sim.open_conns["A"][first]
        a.handle(ConnectionClosed(conn=first, now=sim.now))  # the client moves to B
    sim.open_conns["B"][back] = None
    b.handle(ConnectionOpened(conn=back, ns="/ws"))
    b.handle(SessionJoined(conn=back, user_id="ann", session_id="s1", channels=(), now=sim.now))
    if late == "MEMBERS":
        member = {"sessionId": "s1", "userId": "ann"}
        data = hub_frame("MEMBERS", channel="room", part=0, parts=1, members=[member])
        b.handle(HubFrameReceived(data=data, now=sim.now))
    sim.settle()
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    sim.close("B", back)
    sim.advance(GRACE + 1.0)
    assert hub_owner(sim, "s1") is None
    assert seen(sim, "s1") == set()


def test_what_a_session_that_never_moves_remembers_of_the_channels_it_left_is_bounded() -> None:
    """Only a RESTORED empties what a session left since it joined; one that never moves
    and keeps leaving channels holds at most the channel cap of them."""
    sim = network()
    conn = sim.open("A", "/ws", "ann", "s1", ())
    sim.settle()
    bridge = sim.bridges["A"]
    cap = bridge.presence.config.limits.max_channels_per_session
    for n in range(3 * cap):
        bridge.handle(Subscribe(conn=conn, channel=f"c{n}", mode="none", now=sim.now))
        bridge.handle(Unsubscribe(conn=conn, channel=f"c{n}", now=sim.now))
        sim.settle()
    record = bridge.presence._local.get(conn, what="test")  # the bound is internal
    assert 0 < len(record.left) <= cap
    assert tuple(bridge.presence.subscriptions(conn)) == ()
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_lingering_copy_never_takes_a_session_back_on_a_resync() -> None:
    sim = network()
    first = sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.settle()
    sim.close("A", first)
    sim.open("B", "/ws", "ann", "s1")
    sim.kill_hub()
    sim.start_hub()
    sim.settle()
    assert hub_owner(sim, "s1") == ("B", ("room",))
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}


# ------------------------------------------------------------------- the cluster


def bus(policy: DuplicateSessionPolicy = DuplicateSessionPolicy.DETACH_PRIOR) -> Bus:
    sim = Bus(leave_grace=GRACE, duplicate_session=policy)
    for name in ("A", "B"):
        sim.add(name)
    for name in ("A", "B"):
        conn = sim.join(name, "/ws", f"watcher-{name}", f"w-{name}", ("room",))
        sim.act(name, Subscribe(conn=conn, channel="room", mode="users", now=sim.now))
    clear(sim)
    return sim


def clear(sim: Bus) -> None:
    for instance in sim.instances.values():
        instance.inbox.clear()


def cluster_diffs(sim: Bus) -> list[dict[str, Any]]:
    return [
        m
        for instance in sim.instances.values()
        for messages in instance.inbox.values()
        for m in messages
        if m["type"].startswith("presence.")
    ]


def test_over_the_cluster_the_newer_connection_takes_the_session() -> None:
    sim = bus()
    first = sim.join("A", "/ws", "ann", "s1", ("room",))
    clear(sim)
    newer = sim.join("B", "/ws", "ann", "s1")
    assert sim.instances["A"].inbox[first] == [DETACHED]
    assert sim.instances["B"].presence.subscriptions(newer) == {"room": PresenceMode.NONE}
    assert sim.instances["A"].presence.session_state("s1") is ConnectionState.CLOSED
    assert cluster_diffs(sim) == []
    sim.close(newer)
    sim.advance(GRACE + 1)
    for name in ("A", "B"):
        assert "s1" not in {m.session_id for m in sim.instances[name].presence.roster("/ws")}


def test_over_the_cluster_a_return_within_the_grace_is_a_restore() -> None:
    sim = bus()
    first = sim.join("A", "/ws", "ann", "s1", ("room",), {"v": 1})
    sim.close(first)
    sim.advance(1)
    clear(sim)
    back = sim.join("B", "/ws", "ann", "s1", (), {"v": 1})
    sim.advance(GRACE + 1)
    assert cluster_diffs(sim) == []
    assert sim.instances["B"].presence.subscriptions(back) == {"room": PresenceMode.NONE}
    assert {m.session_id for m in sim.instances["A"].presence.roster("/ws")} >= {"s1"}


def test_over_the_cluster_another_users_session_id_is_refused() -> None:
    sim = bus()
    sim.join("A", "/ws", "ann", "s1", ("room",))
    clear(sim)
    conn = sim.join("B", "/ws", "mallory", "s1")
    assert sim.instances["B"].closed == [(conn, 1008, FOREIGN)]
    assert sim.instances["A"].presence.session_state("s1") is ConnectionState.JOINED
    assert cluster_diffs(sim) == []


def test_restored_for_a_session_not_held_here_changes_nothing() -> None:
    sim = network()
    bridge = sim.bridges["A"]
    data = hub_frame("RESTORED", sessionId="gone", channels=["room"])
    assert bridge.presence.handle(HubFrameReceived(data=data, now=sim.now)) == []


def test_over_the_cluster_a_channel_left_before_the_hand_over_stays_left() -> None:
    """A session back on B leaves a channel before A's hand-over (restored) reaches B,
    subscribed there or not yet: the hand-over does not bring it back, on any instance."""
    sim = bus()
    first = sim.join("A", "/ws", "ann", "s1", ("room", "dev"), {"v": 1})
    sim.close(first)
    sim.advance(1)
    sim.drop = lambda receiver, message: message["kind"] == "restored"  # held back a while
    back = sim.join("B", "/ws", "ann", "s1", ("dev",), {"v": 1})
    for channel in ("room", "dev"):  # room: only A knew it; dev: B's own
        sim.instances["B"].handle(Unsubscribe(conn=back, channel=channel, now=sim.now))
    sim.drop = lambda receiver, message: False
    sim.advance(HEARTBEAT + 1)  # the hand-over is sent again and arrives
    assert sim.instances["B"].presence.subscriptions(back) == {}
    sim.advance(GRACE + HEARTBEAT + 1)
    for name in ("A", "B"):
        for channel in ("room", "dev"):
            members = sim.instances[name].presence.channel_members(channel)
            assert "s1" not in {m.session_id for m in members}, (name, channel)


@pytest.mark.parametrize("lost", ["snapshots", "restored"])
def test_over_the_cluster_a_restore_on_an_instance_that_never_heard_of_it(lost: str) -> None:
    """A restarted instance (or one that lost the announcements) restores a lingering
    session it knows nothing of: the instance that held it in its grace tells it the
    channels, and again at its next heartbeat if that message is lost."""
    sim = bus()
    first = sim.join("A", "/ws", "ann", "s1", ("room",), {"v": 1})
    sim.close(first)
    sim.advance(1)
    # B restarts and hears none of A's members before the join (and A's first hand-over
    # is lost too).
    drops = iter([lost == "restored"])
    sim.drop = lambda receiver, message: (
        message["kind"] == "snapshot" or (message["kind"] == "restored" and next(drops, False))
    )
    sim.instances["B"].alive = False
    sim.add("B", epoch=2)
    back = sim.join("B", "/ws", "ann", "s1", (), {"v": 1})
    sim.drop = lambda receiver, message: False
    sim.advance(HEARTBEAT + 1)
    assert sim.instances["B"].presence.subscriptions(back) == {"room": PresenceMode.NONE}
    sim.advance(GRACE)  # A's grace would be over: the session stays, at B
    assert sim.instances["A"].presence.session_state("s1") is ConnectionState.CLOSED
    assert sim.instances["B"].presence.subscriptions(back) == {"room": PresenceMode.NONE}
    for name in ("A", "B"):
        members = sim.instances[name].presence.channel_members("room")
        assert "s1" in {m.session_id for m in members}, name


def test_over_the_cluster_a_hand_over_never_reaches_a_later_join() -> None:
    """B took s1 from A (its hand-over: room and dev) and left dev before it came, so A
    sends it again at B's heartbeats; s1 then left B and came back there as a new join:
    that join gets no hand-over of A's (the soak saw a channel its client had left)."""
    sim = Bus(leave_grace=1.0)
    for name in ("A", "B"):
        sim.add(name)
    first = sim.join("A", "/ws", "ann", "s1", ("room", "dev"))
    sim.close(first)
    sim.drop = lambda receiver, message: message["kind"] == "restored"  # held back a while
    back = sim.join("B", "/ws", "ann", "s1", ("room",))
    sim.instances["B"].handle(Unsubscribe(conn=back, channel="dev", now=sim.now))
    sim.drop = lambda receiver, message: False
    sim.close(back)
    sim.advance(1.5, step=0.25)  # its grace ends on B: it leaves
    again = sim.join("B", "/ws", "ann", "s1", ("room",))
    sim.advance(2 * HEARTBEAT + 1)
    assert sim.instances["B"].presence.subscriptions(again) == {"room": PresenceMode.NONE}
    for name in ("A", "B"):
        members = sim.instances[name].presence.channel_members("dev")
        assert "s1" not in {m.session_id for m in members}, name


def test_a_session_that_moves_while_the_hub_is_out_of_reach_keeps_only_what_it_holds() -> None:
    """B's copy of s1 is stale while B's link is down (s1 left room on A meanwhile): s1
    returning on B then does not take room from it; the resync gets s1's channels from A."""
    sim = HubNetwork({"A": (), "B": (), "C": ("room",)}, leave_grace=60.0)  # B is back within
    sim.settle()
    watch(sim)
    first = sim.open("A", "/ws", "ann", "s1", ("room", "misc"))
    sim.settle()
    sim.drop_link("B")  # B backs off: what it holds of s1 is stale from now on
    sim.act("A", Unsubscribe(conn=first, channel="room", now=sim.now))
    sim.close("A", first)
    back = sim.open("B", "/ws", "ann", "s1")
    assert sim.bridges["B"].presence.hub_link_state is not HubLinkState.REGISTERED
    sim.settle()
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert sim.bridges["B"].presence.subscriptions(back) == {"misc": PresenceMode.NONE}
    assert hub_owner(sim, "s1") == ("B", ("misc",))
    assert seen(sim, "s1") == set()


def join_at_once(sim: HubNetwork, *names: str, users: tuple[str, ...] = ()) -> dict[str, int]:
    """``ann`` (or ``users[i]``) joins s1 on each of ``names`` before any bridge hears of
    another's join: the hub reads their JOINs in that order."""
    conns = {}
    for index, name in enumerate(names):
        conn = conns[name] = next(sim.conn_ids)
        user = users[index] if users else "ann"
        sim.open_conns[name][conn] = None
        sim.bridges[name].handle(ConnectionOpened(conn=conn, ns="/ws"))
        sim.bridges[name].handle(
            SessionJoined(conn=conn, user_id=user, session_id="s1", channels=("room",), now=0)
        )
    sim.settle()
    return conns


def close_all_and_expect_gone(sim: HubNetwork, conns: dict[str, int]) -> None:
    """Once s1's connections closed and the grace passed, every bridge and the hub agree
    that it left."""
    for name, conn in conns.items():
        sim.close(name, conn)
    sim.advance(GRACE + 0.5)
    assert holders(sim, "s1") == {}
    assert hub_owner(sim, "s1") is None
    assert seen(sim, "s1") == set()


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
@pytest.mark.parametrize("order", [("A", "B"), ("B", "A")])
def test_two_joins_that_race_to_the_hub_leave_one_holder_and_no_ghost(
    policy: DuplicateSessionPolicy, order: tuple[str, str]
) -> None:
    """Racing joins on two bridges: the hub's order decides (the later JOIN takes the
    session, or is refused under REFUSE_NEW); the loser is told exactly once; once both
    sockets closed and the grace passed, no bridge and not the hub lists the session."""
    sim = network(policy)
    first, second = order
    conns = join_at_once(sim, first, second)
    winner, loser = (first, second) if policy is DuplicateSessionPolicy.REFUSE_NEW else order[::-1]
    assert holders(sim, "s1") == {winner: ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == (winner, ("room",))
    assert sim.bridges[winner].inbox.get(conns[winner], []) == []
    assert sim.bridges[winner].closed == []
    told = {
        DuplicateSessionPolicy.DETACH_PRIOR: ([DETACHED], []),
        DuplicateSessionPolicy.CLOSE_PRIOR: ([], [(conns[loser], 1008, REPLACED)]),
        DuplicateSessionPolicy.REFUSE_NEW: ([], [(conns[loser], 1008, DUPLICATE)]),
    }[policy]
    assert (sim.bridges[loser].inbox.get(conns[loser], []), sim.bridges[loser].closed) == told
    assert seen(sim, "s1") == {"A", "B", "C"}
    close_all_and_expect_gone(sim, conns)


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
@pytest.mark.parametrize("order", [("A", "B"), ("B", "A")])
def test_two_users_joins_that_race_to_the_hub_leave_the_first_holder(
    policy: DuplicateSessionPolicy, order: tuple[str, str]
) -> None:
    """eve and bob join s1 on two bridges at once: the hub refuses the JOIN it reads second,
    whose bridge closes that connection (1008, another user's) once, under every policy,
    though it heard the first JOIN before the refusal; every bridge shows s1 as eve's."""
    sim = network(policy)
    first, second = order
    conns = join_at_once(sim, first, second, users=("eve", "bob"))
    assert holders(sim, "s1") == {first: ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == (first, ("room",))
    assert sim.bridges[first].closed == []
    assert sim.bridges[second].closed == [(conns[second], 1008, FOREIGN)]
    assert sim.bridges[second].inbox.get(conns[second], []) == []
    for bridge in sim.bridges.values():
        members = bridge.presence.channel_members("room")
        assert {m.user_id for m in members if m.session_id == "s1"} == {"eve"}
    close_all_and_expect_gone(sim, conns)


def test_another_users_join_while_a_link_is_down_is_refused_when_it_returns() -> None:
    """ann joins s1 on A while A's link is down, eve joins s1 on B: when A registers again,
    it hears eve's s1 (the hub's members of room) before the hub's answer to its own JOIN,
    which refuses it: ann is closed once (1008, another user's), and every bridge shows s1
    as eve's."""
    sim = network()
    sim.drop_link("A")
    ann = sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.open("B", "/ws", "eve", "s1", ("room",))
    sim.settle()
    assert sim.bridges["A"].closed == [(ann, 1008, FOREIGN)]
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == ("B", ("room",))
    for bridge in sim.bridges.values():
        members = bridge.presence.channel_members("room")
        assert {m.user_id for m in members if m.session_id == "s1"} == {"eve"}


@pytest.mark.parametrize("kill", ["hub", "link"])
def test_a_session_on_two_bridges_while_the_hub_is_away_is_reconciled(kill: str) -> None:
    """s1 stays on A; while the hub is down (or B's link is), s1 joins B too. When the
    links return, the hub reads both JOINs again: the later holds it, the other connection
    is detached once, and once both closed and the grace passed every bridge agrees."""
    sim = network()
    conns = {"A": sim.open("A", "/ws", "ann", "s1", ("room",))}
    sim.settle()
    if kill == "hub":
        sim.kill_hub()
    else:
        sim.drop_link("B")
    conns["B"] = sim.open("B", "/ws", "ann", "s1", ("room",))
    if kill == "hub":
        sim.start_hub()
    sim.settle()
    (winner,) = holders(sim, "s1")
    loser = "A" if winner == "B" else "B"
    assert kill == "hub" or winner == "B"
    assert holders(sim, "s1") == {winner: ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == (winner, ("room",))
    assert sim.bridges[loser].inbox.get(conns[loser], []).count(DETACHED) == 1
    assert DETACHED not in sim.bridges[winner].inbox.get(conns[winner], [])
    assert seen(sim, "s1") == {"A", "B", "C"}
    close_all_and_expect_gone(sim, conns)


def cluster_holders(sim: Bus, session: str) -> dict[str, ConnectionState]:
    states = {name: i.presence.session_state(session) for name, i in sim.instances.items()}
    return {name: state for name, state in states.items() if state is not ConnectionState.CLOSED}


def cluster_seen(sim: Bus, session: str) -> set[str]:
    return {
        name
        for name, i in sim.instances.items()
        if session in {m.session_id for m in i.presence.channel_members("room")}
    }


def told(sim: Bus, name: str, conn: int, policy: DuplicateSessionPolicy) -> object:
    """What the connection that lost s1 heard: once, as its policy says."""
    return {
        DuplicateSessionPolicy.DETACH_PRIOR: ([DETACHED], []),
        DuplicateSessionPolicy.CLOSE_PRIOR: ([], [(conn, 1008, REPLACED)]),
        DuplicateSessionPolicy.REFUSE_NEW: ([], [(conn, 1008, DUPLICATE)]),
    }[policy] == (sim.instances[name].inbox.get(conn, []), sim.instances[name].closed)


def test_a_snapshot_sent_before_the_session_moved_never_takes_it_from_a_new_instance() -> None:
    """A rolling restart: s1 is open on B when A (re)starts; B introduces itself to A
    with a snapshot listing s1, which reaches A only after s1's client was sent away
    from B and joined A. A booted after B's claim of s1 was made, so its join outranks
    it: A keeps s1, B hands it over, and a watcher on C sees nothing (A used to give
    s1 up to that stale claim while B gave up its lingering copy: s1 held nowhere)."""
    sim = Bus(leave_grace=GRACE)
    for name in ("B", "C"):
        sim.add(name)
    watcher = sim.join("C", "/ws", "watcher", "w-C", ("room",))
    sim.act("C", Subscribe(conn=watcher, channel="room", mode="sessions", now=sim.now))
    for other in ("s0", "s2"):  # B's claims count up past the first ones of a new boot
        sim.join("B", "/ws", "bob", other, ("room",))
    first = sim.join("B", "/ws", "ann", "s1", ("room",))
    held: list[str] = []

    def hold(receiver: Any, message: dict[str, Any]) -> bool:
        if (receiver.instance_id, message["from"], message["kind"]) != ("A", "B", "snapshot"):
            return False
        held.append(json.dumps(message))
        return True

    sim.drop = hold
    a = sim.add("A", epoch=2)
    sim.drop = lambda receiver, message: False
    assert held
    sim.close(first)  # sent away: s1 lingers on B
    clear(sim)
    back = next(sim.conns)
    sim.sessions[back] = ("A", "/ws", "ann", "s1")
    a.handle(ConnectionOpened(conn=back, ns="/ws"))
    a.handle(
        SessionJoined(conn=back, user_id="ann", session_id="s1", channels=("room",), now=sim.now)
    )
    for data in held:  # B's snapshot, from before the move, after A's join
        a.handle(ClusterMessageReceived(data=data, now=sim.now))
    sim.run()
    sim.advance(GRACE + HEARTBEAT + 1)
    assert a.inbox.get(back, []) == []
    assert cluster_holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert a.presence.subscriptions(back) == {"room": PresenceMode.NONE}
    assert cluster_seen(sim, "s1") == {"A", "B", "C"}
    assert cluster_diffs(sim) == []


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
@pytest.mark.parametrize("partition", [False, True])
def test_over_the_cluster_a_session_on_two_instances_at_once_converges(
    policy: DuplicateSessionPolicy, partition: bool
) -> None:
    """s1 joins A and B at once (each add crosses the other), or on each side of a NATS
    outage: the higher (claim, instance id) keeps it, the other connection is told once
    (detached, or closed under the other policies), every instance shows it, and once both
    sockets closed and the grace passed, no instance lists it."""
    sim = bus(policy)
    conns: dict[str, int] = {}
    if partition:
        conns["A"] = sim.join("A", "/ws", "ann", "s1", ("room",))
        for instance in sim.instances.values():
            instance.disconnect()
        conns["B"] = sim.join("B", "/ws", "ann", "s1", ("room",))
        for instance in sim.instances.values():
            instance.connect()
    else:
        for name in ("A", "B"):
            conns[name] = next(sim.conns)
            instance = sim.instances[name]
            instance.handle(ConnectionOpened(conn=conns[name], ns="/ws"))
            sim.sessions[conns[name]] = (name, "/ws", "ann", "s1")
            instance.handle(
                SessionJoined(
                    conn=conns[name],
                    user_id="ann",
                    session_id="s1",
                    channels=("room",),
                    now=sim.now,
                )
            )
    sim.run()
    sim.advance(HEARTBEAT)
    (winner,) = cluster_holders(sim, "s1")
    loser = "A" if winner == "B" else "B"
    assert cluster_holders(sim, "s1") == {winner: ConnectionState.JOINED}
    assert told(sim, loser, conns[loser], policy)
    assert sim.instances[winner].inbox.get(conns[winner], []) == []
    assert cluster_seen(sim, "s1") == {"A", "B"}
    for conn in conns.values():
        sim.close(conn)
    sim.advance(GRACE + HEARTBEAT)
    assert cluster_holders(sim, "s1") == {}
    assert cluster_seen(sim, "s1") == set()


def cross_joins(sim: Bus, users: dict[str, str]) -> dict[str, int]:
    """Each instance of ``users`` joins s1 (room) for its user before any hears of another's
    join: their adds cross. Returns instance -> connection."""
    conns: dict[str, int] = {}
    for name, user in users.items():
        conn = conns[name] = next(sim.conns)
        instance = sim.instances[name]
        instance.handle(ConnectionOpened(conn=conn, ns="/ws"))
        sim.sessions[conn] = (name, "/ws", user, "s1")
        instance.handle(
            SessionJoined(conn=conn, user_id=user, session_id="s1", channels=("room",), now=sim.now)
        )
    return conns


def claim_ahead(sim: Bus, name: str) -> None:
    """``name`` joins another session, and no other instance hears of it yet: its next
    join outranks theirs (a higher claim)."""
    sim.drop = lambda receiver, message: receiver.instance_id != name
    sim.join(name, "/ws", "zed", f"other-{name}")
    sim.drop = lambda receiver, message: False


def shown_as(sim: Bus, session: str) -> dict[str, set[str]]:
    """instance -> the users its room roster lists ``session`` as."""
    return {
        name: {m.user_id for m in i.presence.channel_members("room") if m.session_id == session}
        for name, i in sim.instances.items()
    }


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
@pytest.mark.parametrize("outage", [False, True])
@pytest.mark.parametrize("ahead", ["A", "B"])
@pytest.mark.parametrize("eve_on", ["A", "B"])
def test_over_the_cluster_two_users_joining_one_id_at_once_leave_one_holder(
    policy: DuplicateSessionPolicy, outage: bool, ahead: str, eve_on: str
) -> None:
    """eve and bob join s1 on A and B at once (their adds cross), or on each side of a NATS
    outage (the snapshots cross): nothing refused either join, so the higher (claim,
    instance id) keeps it, under every policy, as for one user; the other connection is
    closed once (1008, another user's), every instance and watcher lists s1 as the
    holder's user, and once the holder closed and the grace passed, no instance lists it."""
    sim = bus(policy)
    if outage:
        for instance in sim.instances.values():
            instance.disconnect()
    claim_ahead(sim, ahead)
    users = {eve_on: "eve", "B" if eve_on == "A" else "A": "bob"}
    conns = cross_joins(sim, users)
    if outage:
        for instance in sim.instances.values():
            instance.connect()
    sim.run()
    sim.advance(HEARTBEAT)
    winner, loser = ahead, "B" if ahead == "A" else "A"
    assert cluster_holders(sim, "s1") == {winner: ConnectionState.JOINED}
    assert sim.instances[loser].closed == [(conns[loser], 1008, FOREIGN)]
    assert sim.instances[winner].closed == []
    assert DETACHED not in sim.instances[winner].inbox.get(conns[winner], [])
    assert shown_as(sim, "s1") == {"A": {users[winner]}, "B": {users[winner]}}
    for instance in sim.instances.values():  # what each watcher was told
        (watched,) = instance.clients.maps.values()
        assert users[winner] in watched.members
        assert users[loser] not in watched.members
    sim.close(conns[winner])
    sim.advance(GRACE + HEARTBEAT)
    assert cluster_holders(sim, "s1") == {}
    assert cluster_seen(sim, "s1") == set()


@pytest.mark.parametrize("outage", [False, True])
def test_over_the_cluster_a_join_of_another_user_after_the_holders_add_is_refused(
    outage: bool,
) -> None:
    """The reverse timing: B heard eve's add before bob joins there (then NATS went away,
    maybe: B keeps what it heard): bob is refused at once and eve keeps s1, unbothered."""
    sim = bus()
    eve = sim.join("A", "/ws", "eve", "s1", ("room",))
    if outage:
        for instance in sim.instances.values():
            instance.disconnect()
    bob = sim.join("B", "/ws", "bob", "s1", ("room",))
    for instance in sim.instances.values():
        instance.connect()
    sim.run()
    sim.advance(2 * HEARTBEAT)
    assert sim.instances["B"].closed == [(bob, 1008, FOREIGN)]
    assert sim.instances["A"].closed == []
    assert sim.instances["A"].inbox.get(eve, []) == []
    assert cluster_holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert shown_as(sim, "s1") == {"A": {"eve"}, "B": {"eve"}}


def test_over_the_cluster_a_lingering_copy_of_another_user_is_dropped_not_handed_over() -> None:
    """eve's s1 lingers on A in its grace when bob's join of s1 on B (made during an outage)
    is heard: a lingering copy never outranks a connection, so A drops eve's copy, and
    hands none of eve's channels to bob's session; every instance lists s1 as bob's."""
    sim = bus()
    for instance in sim.instances.values():
        instance.disconnect()
    eve = sim.join("A", "/ws", "eve", "s1", ("room", "dev"))
    sim.close(eve)
    bob = sim.join("B", "/ws", "bob", "s1", ("room",))
    for instance in sim.instances.values():
        instance.connect()
    sim.run()
    sim.advance(2 * HEARTBEAT)
    assert [c for i in sim.instances.values() for c in i.closed] == []
    assert sim.instances["B"].restored == []
    assert sim.instances["B"].presence.subscriptions(bob) == {"room": PresenceMode.NONE}
    assert cluster_holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert shown_as(sim, "s1") == {"A": {"bob"}, "B": {"bob"}}
    for name in ("A", "B"):
        members = sim.instances[name].presence.channel_members("dev")
        assert "s1" not in {m.session_id for m in members}, name


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("A", "nothing"),
        ("B", "nothing"),
        ("A", "subscribes again"),
        ("B", "subscribes again"),
        ("A", "subscribes as it is restored"),  # B registering first gets no RESTORED
    ],
)
def test_a_channel_left_while_the_hub_was_down_stays_left_whoever_registers_first(
    first: str, then: str
) -> None:
    """While the hub is down, s1 subscribes to room on A and its socket closes there (A keeps
    it for the grace); it joins B, subscribes to room and leaves it. When A registers with
    the new hub first, the hub holds A's lingering copy (room) when B's resync JOIN takes the
    session, and answers with a RESTORED listing room: B must not take it back, and the hub
    hears that s1 left it (the soak's ghost member on every server of a hub). Unless s1
    subscribed to room again: before the resync, or as the RESTORED comes (its SUBSCRIBE
    reaches the hub after the JOIN, and the subscribe waits for the hub's answer)."""
    sim = HubNetwork({"A": (), "B": (), "C": ("room",)}, leave_grace=60.0)
    sim.settle()
    watch(sim)
    on_a = sim.open("A", "/ws", "ann", "s1", ())
    sim.settle()
    sim.kill_hub()
    sim.act("A", Subscribe(conn=on_a, channel="room", mode="none", now=sim.now))
    sim.close("A", on_a)
    bridge = sim.bridges["B"]
    back = sim.open("B", "/ws", "ann", "s1", ())
    sim.act("B", Subscribe(conn=back, channel="room", mode="none", now=sim.now))
    sim.act("B", Unsubscribe(conn=back, channel="room", now=sim.now))
    if then == "subscribes again":
        sim.act("B", Subscribe(conn=back, channel="room", mode="none", now=sim.now))
    elif then == "subscribes as it is restored":
        handle = bridge.handle

        def subscribe_first(event: Any) -> None:
            if isinstance(event, HubFrameReceived) and "RESTORED" in str(event.data):
                handle(Subscribe(conn=back, channel="room", mode="none", now=sim.now))
            handle(event)

        bridge.handle = subscribe_first  # type: ignore[method-assign]
    sim.start_hub()
    sim.admitting = set()
    for name in (first, "C", "A" if first == "B" else "B"):
        sim.admitting.add(name)
        sim.settle_bridges(name)
    sim.admitting = None
    sim.settle()
    kept = () if then == "nothing" else ("room",)
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert tuple(bridge.presence.subscriptions(back)) == kept
    assert hub_owner(sim, "s1") == ("B", kept)
    assert seen(sim, "s1") == (set() if then == "nothing" else {"A", "B", "C"})
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_session_that_moves_after_a_hub_restart_keeps_no_channel_it_left_meanwhile() -> None:
    """s1 leaves room on B while the hub is down, and its socket closes. A registers with the
    new hub first, whose MEMBERS of room do not list s1: A's copy of s1 in room is stale (kept
    for the grace only). s1 then joins A: it must not keep room from that copy, which its
    JOIN would tell the hub (the soak's ghost member on every server of a hub)."""
    sim = network()
    on_b = sim.open("B", "/ws", "ann", "s1", ("room",))
    sim.settle()
    assert "A" in seen(sim, "s1")
    sim.kill_hub()
    sim.act("B", Unsubscribe(conn=on_b, channel="room", now=sim.now))
    sim.close("B", on_b)
    sim.start_hub()
    sim.admitting = {"A", "C"}
    sim.settle_bridges("A", "C")
    on_a = sim.open("A", "/ws", "ann", "s1", ())
    sim.admitting = None
    sim.settle()
    assert holders(sim, "s1") == {"A": ConnectionState.JOINED}
    assert sim.bridges["A"].presence.subscriptions(on_a) == {}
    assert hub_owner(sim, "s1") == ("A", ())
    assert seen(sim, "s1") == set()
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_lingering_copy_hears_who_holds_the_session_when_it_registers_last() -> None:
    """s1's socket on A closed while the hub was down, and s1 joined B: B reaches the new
    hub first, so A never hears B's JOIN; A's resync of its lingering copy is answered
    with the holder's JOIN, so A drops its copy and its watchers see s1 on B."""
    sim = HubNetwork({"A": (), "B": (), "C": ("room",)}, leave_grace=60.0)
    sim.settle()
    watch(sim)
    first = sim.open("A", "/ws", "ann", "s1", ("room",))
    sim.settle()
    sim.kill_hub()
    sim.close("A", first)
    sim.open("B", "/ws", "ann", "s1", ("room",))
    sim.bridges["A"].alive = False  # slow to come back
    sim.start_hub()
    while sim.bridges["B"].presence.hub_link_state is not HubLinkState.REGISTERED:
        sim.tick(0.5)
    sim.bridges["A"].alive = True
    sim.settle()
    assert holders(sim, "s1") == {"B": ConnectionState.JOINED}
    assert hub_owner(sim, "s1") == ("B", ("room",))
    assert seen(sim, "s1") == {"A", "B", "C"}
