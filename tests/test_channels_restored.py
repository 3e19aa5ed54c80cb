"""A session taken over from another server learns after its join the channels it kept
there (the hub's RESTORED, the cluster's hand-over): the core says so to its connection's
shim (``ChannelsRestored``), since what the application told the connection as it opened
(the demo's ``welcome``) could not list them."""

from __future__ import annotations

from megapresence_core import SessionJoined
from megapresence_core.actions import ChannelsRestored
from megapresence_core.events import ConnectionOpened

from .cluster_sim import Bus
from .sim import HubNetwork

GRACE = 30.0


def test_through_a_hub_the_kept_channels_are_told_once_they_arrive() -> None:
    sim = HubNetwork({"A": (), "B": ()}, leave_grace=GRACE)
    sim.settle()
    sim.close("A", sim.open("A", "/ws", "ann", "s1", ("lobby", "room")))
    sim.settle()
    back = sim.open("B", "/ws", "ann", "s1", ("lobby",))
    sim.settle()
    assert sim.bridges["B"].restored == [ChannelsRestored(conn=back, channels=("room",))]
    assert set(sim.bridges["B"].presence.subscriptions(back)) == {"lobby", "room"}


def test_a_take_over_that_keeps_nothing_new_is_not_told() -> None:
    sim = Bus(leave_grace=GRACE)
    for name in ("A", "B"):
        sim.add(name)
    sim.close(sim.join("A", "/ws", "ann", "s1", ("lobby",)))
    back = sim.join("B", "/ws", "ann", "s1", ("lobby", "room"))
    assert sim.instances["B"].restored == []
    assert list(sim.instances["B"].presence.subscriptions(back)) == ["lobby", "room"]


def test_over_a_cluster_the_hand_over_s_channels_are_told() -> None:
    sim = Bus(leave_grace=GRACE)
    for name in ("A", "B"):
        sim.add(name)
    sim.close(sim.join("A", "/ws", "ann", "s1", ("lobby", "room")))
    back = sim.join("B", "/ws", "ann", "s1", ("lobby",))
    assert sim.instances["B"].restored == [ChannelsRestored(conn=back, channels=("room",))]


def test_a_session_restored_on_the_same_server_is_not_told() -> None:
    """Its channels were known at its join: what the application said then was right."""
    sim = Bus(leave_grace=GRACE)
    sim.add("A")
    sim.close(sim.join("A", "/ws", "ann", "s1", ("lobby", "room")))
    instance = sim.instances["A"]
    instance.handle(ConnectionOpened(conn=99, ns="/ws"))
    instance.handle(SessionJoined(conn=99, user_id="ann", session_id="s1", now=sim.now))
    sim.run()
    assert instance.restored == []
    assert set(instance.presence.subscriptions(99)) == {"lobby", "room"}
