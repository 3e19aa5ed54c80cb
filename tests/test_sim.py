"""The in-memory hub network is itself tested: its faults happen, and it converges after each."""

from __future__ import annotations

from megapresence_core import (
    BroadcastRequested,
    DirectRequested,
    KickRequested,
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
