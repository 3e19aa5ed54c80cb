"""The in-memory hub network is itself tested: its faults happen, and it converges after each."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from megapresence_core import (
    BroadcastRequested,
    DirectRequested,
    KickRequested,
    Subscribe,
)
from megapresence_core.lifecycle import (
    HubLinkState,
)

from .sim import HubNetwork


def network() -> HubNetwork:
    sim = HubNetwork({"A": ("room",), "B": ("room",), "C": ()})
    sim.settle()
    return sim


def test_bridges_register_and_the_hub_holds_their_interests() -> None:
    sim = network()
    assert sim.hub is not None
    assert set(sim.hub.registered_bridges()) == {"A", "B", "C"}
    assert sim.hub_members() == sim.expected_hub_members() == set()
    assert sim.hub.interests() == sim.expected_interests() == {"A": ("room",), "B": ("room",)}


def test_a_broadcast_crosses_bridges_subscribed_to_the_channel() -> None:
    sim = network()
    a = sim.open("A", "/ws", "ann", "a1", ("room",))
    b = sim.open("B", "/ws")
    c = sim.open("C", "/ws")
    sim.act("A", BroadcastRequested(ns="/ws", channel="room", message={"type": "hi"}))
    assert sim.bridges["A"].inbox == {a: [{"type": "hi", "ns": "/ws"}]}
    assert sim.bridges["B"].inbox == {b: [{"type": "hi", "ns": "/ws"}]}
    assert sim.bridges["C"].inbox == {}  # C has no member in "room"
    assert c not in sim.bridges["C"].inbox


def test_a_direct_and_a_kick_cross_bridges() -> None:
    sim = network()
    c = sim.open("C", "/ws", "cid", "c1")
    sim.act("A", DirectRequested(user_id="cid", message={"type": "dm"}))
    assert sim.bridges["C"].inbox == {c: [{"type": "dm"}]}
    sim.act("A", KickRequested(session_id="c1", requeue=True, reason="move"))
    assert sim.bridges["C"].closed == [(c, 4503, "move")]
    assert "c1" not in {m[1] for m in sim.hub_members()}


def test_hub_restart_loses_everything_and_the_bridges_resync() -> None:
    sim = network()
    sim.open("A", "/ws", "ann", "a1", ("room",), {"s": 1})
    sim.kill_hub()
    assert sim.bridges["A"].presence.hub_link_state is HubLinkState.BACKING_OFF
    sim.start_hub()
    assert sim.hub_members() == set()
    sim.settle()
    assert sim.hub_members() == sim.expected_hub_members()
    assert sim.hub is not None
    assert sim.hub.hub_id == "hub-2"


def test_drain_reconnects_every_bridge_to_the_new_hub() -> None:
    sim = network()
    sim.open("B", "/ws", "bob", "b1")
    sim.drain_hub()
    assert all(b.presence.hub_link_state is HubLinkState.BACKING_OFF for b in sim.bridges.values())
    sim.settle()
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_dropped_link_is_purged_and_rebuilt() -> None:
    sim = network()
    sim.open("A", "/ws", "ann", "a1", ("room",))
    sim.drop_link("A")
    assert "a1" not in {m[1] for m in sim.hub_members()}
    sim.settle()
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_bridge_killed_silently_is_replaced_by_its_new_incarnation() -> None:
    sim = network()
    sim.open("A", "/ws", "ann", "a1", ("room",))
    sim.kill_bridge("A", hub_notices=False)
    sim.settle()
    assert "a1" not in {m[1] for m in sim.hub_members()}
    assert any(log.event == "hub.bridge.replaced" for log in sim.hub_logs)
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_silent_half_open_link_is_purged_by_the_hubs_heartbeat_timeout() -> None:
    sim = network()
    sim.open("C", "/ws", "cid", "c1")
    bridge = sim.bridges["C"]
    bridge.alive = False  # dead without a word, and it does not come back
    link = bridge.link
    assert link is not None
    link.bridge_open = False
    for _ in range(8):  # 40 s > the hub's 30 s silence limit
        sim.tick()
    assert any(log.event == "hub.bridge.dead" for log in sim.hub_logs)
    assert "c1" not in {m[1] for m in sim.hub_members()}


def test_batching_links_carry_several_frames_per_message_and_unbatched_ones_never() -> None:
    sim = HubNetwork({"A": ("room",), "B": ("room",), "C": ("room",)}, unbatched=("C",))
    sim.settle()
    b = sim.open("B", "/ws")
    c = sim.open("C", "/ws")
    links = {link.bridge.bridge_id: link for link in sim.links.values() if link.bridge_open}
    for link in links.values():
        link.up.messages = link.up.batches = link.down.messages = link.down.batches = 0
    for n in range(5):  # one turn: nothing travels until the queue runs
        sim.bridges["A"].handle(
            BroadcastRequested(ns="/ws", channel="room", message={"type": "m", "payload": n})
        )
    sim.run()
    expected = [{"type": "m", "ns": "/ws", "payload": n} for n in range(5)]
    assert sim.bridges["B"].inbox[b] == sim.bridges["C"].inbox[c] == expected
    assert (links["A"].up.messages, links["A"].up.batches) == (1, 1)
    assert (links["B"].down.messages, links["B"].down.batches) == (1, 1)
    assert links["C"].down.messages == 5
    assert links["C"].up.batches == links["C"].down.batches == 0


def watched_network() -> tuple[HubNetwork, dict[str, int]]:
    """A hub, 30 sessions on A and a watcher of ``room`` on B (users) and C (count),
    with the default 5 s leave grace; each watcher's inbox emptied."""
    sim = HubNetwork({"A": (), "B": (), "C": ()}, leave_grace=5.0)
    sim.settle()
    for n in range(30):
        sim.open("A", "/ws", f"u{n}", f"s{n}", ("room",))
    watchers = {"B": sim.open("B", "/ws", "wb", "wb"), "C": sim.open("C", "/ws", "wc", "wc")}
    sim.act("B", Subscribe(conn=watchers["B"], channel="room", mode="users", now=sim.now))
    sim.act("C", Subscribe(conn=watchers["C"], channel="room", mode="count", now=sim.now))
    sim.clear_inboxes()
    return sim, watchers


def presence_seen(sim: HubNetwork, watchers: dict[str, int]) -> list[dict[str, Any]]:
    return [
        message
        for name, conn in watchers.items()
        for message in sim.bridges[name].inbox.get(conn, [])
        if message["type"].startswith("presence.")
    ]


@pytest.mark.parametrize("order", list(itertools.permutations("ABC")))
def test_a_hub_restart_in_any_registration_order_shows_watchers_nothing(
    order: tuple[str, ...],
) -> None:
    sim, watchers = watched_network()
    sim.restart_hub_in_order(order)
    sim.advance(10.0)  # past every grace
    assert presence_seen(sim, watchers) == []
    assert sim.hub_members() == sim.expected_hub_members()


def test_a_link_blip_of_the_members_bridge_shows_watchers_nothing() -> None:
    sim, watchers = watched_network()
    sim.drop_link("A")  # the hub stays up and tells B and C that A's sessions went
    sim.settle_bridges("A")  # A is back after its backoff (under a second)
    sim.advance(10.0)
    assert presence_seen(sim, watchers) == []


def test_a_member_gone_while_the_hub_was_down_leaves_once_after_the_grace() -> None:
    sim, watchers = watched_network()
    sim.kill_hub()
    sim.start_hub()
    sim.admitting = {"B", "C"}  # A stays away for now
    conn = next(iter(sim.open_conns["A"]))
    sim.close("A", conn)  # s0's socket closes; its grace ends while A is cut off
    sim.settle_bridges("B", "C")
    sim.advance(2.0)
    assert presence_seen(sim, watchers) == []
    sim.admitting = None
    sim.settle_bridges("A")  # within the grace of B's and C's registrations
    sim.advance(10.0)
    seen = presence_seen(sim, watchers)
    assert [m["leaves"] for m in seen if m["type"] == "presence.diff"] == [
        {"u0": {"userId": "u0", "sessions": [{"sessionId": "s0", "metadata": None}]}}
    ]
    assert [m["sessions"] for m in seen if m["type"] == "presence.count"] == [31]  # 30 + 2 - 1
