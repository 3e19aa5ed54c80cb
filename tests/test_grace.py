"""The leave grace: a session whose socket closed stays listed; a return within it is no flap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from megapresence_core import (
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    DuplicateSessionPolicy,
    KickRequested,
    Log,
    Member,
    MetadataUpdated,
    Presence,
    PresenceMode,
    ShutdownRequested,
    StoreConfig,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.actions import CloseConnection, ClusterPublish, StoreDelete
from megapresence_core.config import DEFAULT_LEAVE_GRACE
from megapresence_core.events import (
    ClusterConnected,
    ClusterMessageReceived,
    DrainRequested,
    HubFrameReceived,
)
from megapresence_core.lifecycle import ConnectionState, Timer
from megapresence_core.wire import ClusterAdd, ClusterKick, encode

from .helpers import (
    drive,
    hub_frame,
    hub_presence,
    open_joined,
    presence_messages,
    refusals,
    sent_frames,
)

GRACE = DEFAULT_LEAVE_GRACE


def grace_due(presence: Presence) -> float | None:
    """When the next leave grace ends (the links' timers run too)."""
    return min(presence._timers.owners(Timer.GRACE).values(), default=None)


def watched(**config: Any) -> Presence:
    """A registered bridge where conn 1 (ann) watches ``lobby`` (sessions view) and conn 2
    (bob, session b1) is in it; the hub link, the store and the cluster are wired."""
    presence = hub_presence(
        presence_window=0,
        store=StoreConfig(),
        cluster=ClusterConfig(app="t", instance_id="me", epoch=1),
        **config,
    )
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    open_joined(presence, 2, "bob", "b1", channels=["lobby"], metadata={"s": 1})
    drive(presence, Subscribe(conn=1, channel="lobby", mode="sessions", now=0))
    return presence


def kinds(actions: list[Any]) -> list[str]:
    """What reached the hub, the cluster and the store (heartbeats left out)."""
    frames = [f["type"] for f in sent_frames(actions)]
    published = [json.loads(a.data)["kind"] for a in actions if isinstance(a, ClusterPublish)]
    stored = [type(a).__name__ for a in actions if isinstance(a, StoreDelete)]
    return [kind for kind in frames + published + stored if kind.upper() != "HEARTBEAT"]


def test_a_closed_session_lingers_listed_and_counted_then_leaves() -> None:
    presence = watched()
    assert drive(presence, ConnectionClosed(conn=2, now=2)) == []  # no diff, no LEAVE
    assert presence.session_state("b1") is ConnectionState.LINGERING
    assert presence.connection_state(2) is ConnectionState.CLOSED  # the id may be reused
    assert presence.presence_stats("lobby") == (2, 2)
    assert {m.session_id for m in presence.roster("/ws")} == {"a1", "b1"}
    assert presence.presence_list(["lobby"])[1].session_id == "b1"
    assert grace_due(presence) == 2 + GRACE
    actions = drive(presence, Tick(now=2 + GRACE - 0.01))
    assert (kinds(actions), presence_messages(actions, 1)) == ([], [])
    actions = drive(presence, Tick(now=2 + GRACE))
    [diff] = presence_messages(actions, 1)
    assert list(diff["leaves"]) == ["b1"]
    assert kinds(actions) == ["LEAVE", "remove", "StoreDelete"]
    assert presence.session_state("b1") is ConnectionState.CLOSED
    assert presence.presence_stats("lobby") == (1, 1)


def test_a_return_within_the_grace_is_restored_without_a_leave_or_a_join() -> None:
    presence = watched()
    drive(presence, Subscribe(conn=2, channel="dev", mode="users", now=0))
    drive(presence, ConnectionClosed(conn=2, now=10))
    actions = open_joined(presence, 3, "bob", "b1", channels=["lobby"], metadata={"s": 1}, now=12)
    assert presence_messages(actions, 1) == []  # same metadata: nothing to tell
    assert [f["type"] for f in sent_frames(actions)] == ["JOIN"]  # the hub still held it
    # It keeps its channels (present only: this connection has seen no snapshot yet).
    assert presence.subscriptions(3) == {"lobby": PresenceMode.NONE, "dev": PresenceMode.NONE}
    assert presence.session_state("b1") is ConnectionState.JOINED
    assert grace_due(presence) is None  # the grace timer is gone
    assert kinds(drive(presence, Tick(now=100))) == []  # and no LEAVE, ever


def test_a_return_with_new_metadata_is_one_update() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    actions = open_joined(presence, 3, "bob", "b1", channels=["lobby"], metadata={"s": 2}, now=11)
    [diff] = presence_messages(actions, 1)
    assert (diff["joins"], diff["leaves"]) == ({}, {})
    assert diff["updates"]["b1"]["metadata"] == {"s": 2}


def test_another_user_cannot_take_a_lingering_session() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    actions = open_joined(presence, 3, "eve", "b1", now=11)
    assert [a for a in actions if isinstance(a, CloseConnection)] == [
        CloseConnection(conn=3, code=1008, reason="session id belongs to another user")
    ]
    assert presence.session_state("b1") is ConnectionState.LINGERING


def test_a_kick_leaves_at_once_and_a_requeue_lingers() -> None:
    presence = watched()
    drive(presence, KickRequested(session_id="b1"))
    actions = drive(presence, ConnectionClosed(conn=2, now=10))
    assert list(presence_messages(actions, 1)[0]["leaves"]) == ["b1"]
    assert kinds(actions) == ["LEAVE", "remove", "StoreDelete"]
    presence = watched()
    drive(presence, KickRequested(session_id="b1", requeue=True))  # 4503: come back now
    assert drive(presence, ConnectionClosed(conn=2, now=10)) == []
    assert presence.session_state("b1") is ConnectionState.LINGERING


def test_a_kick_of_a_lingering_session_ends_its_grace_at_the_next_tick() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    assert drive(presence, KickRequested(session_id="b1", requeue=True)) == []
    assert grace_due(presence) == 10 + GRACE  # a requeue has no socket to close
    assert drive(presence, KickRequested(session_id="b1")) == []
    assert grace_due(presence) == 10  # due now
    actions = drive(presence, Tick(now=11))
    assert kinds(actions) == ["LEAVE", "remove", "StoreDelete"]


@pytest.mark.parametrize("source", ["hub", "cluster"])
def test_a_kick_from_elsewhere_reaches_a_lingering_session(source: str) -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    if source == "hub":
        data = hub_frame("DISCONNECT", sessionId="b1")
        drive(presence, HubFrameReceived(data=data, now=11))
    else:
        kick = ClusterKick(sender="other", epoch=1, session_id="b1")
        drive(presence, ClusterMessageReceived(data=encode(kick), now=11))
    assert grace_due(presence) == 10
    assert kinds(drive(presence, Tick(now=11))) == ["LEAVE", "remove", "StoreDelete"]


def test_an_unsubscribe_bypasses_the_grace() -> None:
    presence = watched()
    actions = drive(presence, Unsubscribe(conn=2, channel="lobby", now=10))
    assert list(presence_messages(actions, 1)[0]["leaves"]) == ["b1"]


def test_a_grace_of_zero_leaves_at_once() -> None:
    presence = watched(leave_grace=0)
    actions = drive(presence, ConnectionClosed(conn=2, now=10))
    assert list(presence_messages(actions, 1)[0]["leaves"]) == ["b1"]
    assert kinds(actions) == ["LEAVE", "remove", "StoreDelete"]


def test_shutdown_removes_lingering_sessions_from_the_store_at_once() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    actions = drive(presence, ShutdownRequested())
    assert {(a.channel, a.session_id) for a in actions if isinstance(a, StoreDelete)} == {
        ("lobby", "a1"),
        ("lobby", "b1"),
    }
    assert presence.session_state("b1") is ConnectionState.CLOSED
    assert grace_due(presence) is None


def test_metadata_of_a_lingering_session_is_not_changed() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    [log] = drive(presence, MetadataUpdated(session_id="b1", metadata={"s": 9}, now=11))
    assert isinstance(log, Log)
    assert log.event == "presence.metadata.unknown_session"


def test_a_return_on_another_bridge_drops_the_lingering_copy_without_a_leave() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    # The hub routes bob's JOIN from the bridge it returned to, here too (we held it).
    data = hub_frame("JOIN", userId="bob", sessionId="b1", channels=["lobby"], metadata={"s": 2})
    actions = drive(presence, HubFrameReceived(data=data, now=11))
    [diff] = presence_messages(actions, 1)
    assert (diff["joins"], diff["leaves"], list(diff["updates"])) == ({}, {}, ["b1"])
    assert kinds(actions) == ["remove", "StoreDelete"]  # no LEAVE: the hub has moved it
    assert presence.session_state("b1") is ConnectionState.CLOSED
    assert grace_due(presence) is None
    assert presence.presence_stats("lobby") == (2, 2)


def test_a_return_on_another_instance_drops_the_lingering_copy_without_a_leave() -> None:
    presence = watched()
    drive(presence, ConnectionClosed(conn=2, now=10))
    bob = Member(session_id="b1", user_id="bob", metadata={"s": 1})
    add = ClusterAdd(sender="other", epoch=1, ns="/ws", member=bob, channels=("lobby",))
    actions = drive(presence, ClusterMessageReceived(data=encode(add), now=11))
    assert presence_messages(actions, 1) == []  # the same member, from its new home
    assert [json.loads(a.data)["kind"] for a in actions if isinstance(a, ClusterPublish)] == [
        "snapshot",  # introducing ourselves to an instance we had not heard of
        "restored",  # handing the session's channels over to its new home
        "remove",
    ]
    assert presence.session_state("b1") is ConnectionState.CLOSED
    assert presence.presence_stats("lobby") == (2, 2)
    assert refusals(actions) == []


def test_a_drain_sends_every_client_away_with_4503_and_keeps_their_sessions() -> None:
    presence = watched()
    drive(presence, ConnectionOpened(conn=3, ns="/ws"))  # not joined: sent away too
    actions = drive(presence, DrainRequested())
    assert {(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)} == {
        (1, 4503),
        (2, 4503),
        (3, 4503),
    }
    assert kinds(actions) == []  # nothing leaves: the links stay, the sessions too
    for conn in (1, 2, 3):
        assert drive(presence, ConnectionClosed(conn=conn, now=1)) == []
    assert presence.session_state("b1") is ConnectionState.LINGERING
    assert not presence.drained
    # A join meanwhile is sent away as well.
    actions = open_joined(presence, 4, "cid", "c1", now=1)
    assert [(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)] == [(4, 4503)]
    drive(presence, ConnectionClosed(conn=4, now=1))
    # b1 comes back on another bridge: dropped without a leave; a1 never does: it leaves.
    data = hub_frame("JOIN", userId="bob", sessionId="b1", channels=["lobby"], metadata={"s": 1})
    drive(presence, HubFrameReceived(data=data, now=2))
    assert presence.session_state("b1") is ConnectionState.CLOSED
    assert kinds(drive(presence, Tick(now=1 + GRACE))) == ["LEAVE", "remove", "StoreDelete"]
    assert presence.drained


def test_without_a_hub_or_a_cluster_a_drain_sends_clients_away_with_1001_at_once() -> None:
    # No other server could take a session over, and a new process is a new boot: a
    # 4503 ("reconnect now, the session is kept") would be a promise nobody keeps.
    presence = Presence()
    open_joined(presence, 1, "ann", "a1")
    actions = drive(presence, DrainRequested())
    assert [(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)] == [(1, 1001)]
    assert not presence.drained  # its socket is still open
    actions = open_joined(presence, 2, "bob", "b1", now=1)  # a join meanwhile: sent away too
    assert [(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)] == [(2, 1001)]
    drive(presence, ConnectionClosed(conn=2, now=1))
    drive(presence, ConnectionClosed(conn=1, now=1))
    assert presence.session_state("a1") is ConnectionState.LINGERING
    assert presence.drained  # no other server could take it over


def test_under_refuse_new_the_hub_hears_that_a_session_lingers() -> None:
    presence = watched(duplicate_session=DuplicateSessionPolicy.REFUSE_NEW)
    actions = drive(presence, ConnectionClosed(conn=2, now=2))
    assert [(f["type"], f["payload"].get("lingering")) for f in sent_frames(actions)] == [
        ("JOIN", True)
    ]
