"""Flow control on the bridge's end of the hub link: pacing within the rate REGISTERED
states, coalescing what is held, refusing a client's excess with ``busy``, the resync
first, and a refusal the hub names a session for costing that session only."""

from __future__ import annotations

from typing import Any

import pytest

from megapresence_core import (
    BroadcastRequested,
    ConnectionOpened,
    DirectRequested,
    HubLinkConfig,
    KickRequested,
    LocalUsageError,
    Message,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    PublishRequested,
    SessionJoined,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.actions import CloseConnection, Deliver, RequestRefused
from megapresence_core.events import (
    ConnectionClosed,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import HubLinkState
from megapresence_core.wire import RegisteredFrame, encode

from .helpers import drive, hub_frame, open_joined, registered_frame, sent_frames

MESSAGE = Message(type="chat", payload="hi")


def limited(rate: float = 10.0, burst: float = 1.0, *, max_frame_bytes: int | None = None) -> str:
    return encode(
        RegisteredFrame(
            hub_id="hub-1",
            heartbeat_interval=3600.0,
            max_frames_per_second=rate,
            frame_burst=burst,
            max_frame_bytes=max_frame_bytes,
        )
    )


def paced(registered: str | None = None, **config: Any) -> Presence:
    """A registered bridge; by default its hub allows 10 frames/s, a burst of one (the
    REGISTER took it), so everything it sends is held until a tick releases it."""
    link = HubLinkConfig(bridge_id="b1", instance_id="i1", **config)
    presence = Presence(PresenceConfig(hub_link=link, leave_grace=5.0))
    drive(
        presence,
        HubLinkStarted(now=0),
        HubConnected(now=0),
        HubFrameReceived(data=registered or limited(), now=0),
    )
    return presence


def release(presence: Presence, now: float) -> list[Any]:
    """Tick at each release of held frames (long before the heartbeat) until none is
    held; every action."""
    actions: list[Any] = []
    end = now + 50
    while (deadline := presence.next_deadline()) is not None and deadline < end:
        now = max(now, deadline)
        actions += drive(presence, Tick(now=now))
    return actions


def kinds(actions: list[Any]) -> list[str]:
    return [f["type"] for f in sent_frames(actions)]


def refusals(actions: list[Any]) -> list[str]:
    return [a.code for a in actions if isinstance(a, RequestRefused)]


def test_frames_over_the_stated_rate_are_held_and_released_as_tokens_come() -> None:
    # Two tokens left after REGISTER: a burst of five, two kept in reserve (0.2 s).
    presence = paced(limited(rate=10, burst=5))
    actions: list[Any] = []
    for n in range(5):
        actions += open_joined(presence, n, f"u{n}", f"s{n}")
    assert kinds(actions) == ["JOIN", "JOIN"]
    assert presence.next_deadline() == pytest.approx(0.1)  # one token at 10 per second
    assert [f["payload"]["sessionId"] for f in sent_frames(drive(presence, Tick(now=0.1)))] == [
        "s2"
    ]
    released = sent_frames(drive(presence, Tick(now=0.35)))
    assert [f["payload"]["sessionId"] for f in released] == ["s3", "s4"]
    assert presence.next_deadline() == 3600.0  # nothing held: only the heartbeat


def test_a_hub_that_states_no_limits_is_paced_by_the_default_ones() -> None:
    assert Presence().hub_link_held == 0  # no hub, nothing held
    # An older hub: 2,000/s, a burst of 4,000, of which 400 (0.2 s) are kept in reserve.
    presence = paced(registered_frame())
    actions: list[Any] = []
    for n in range(3_600):
        actions += presence.handle(ConnectionOpened(conn=n, ns="/ws"))
        actions += presence.handle(
            SessionJoined(conn=n, user_id="u", session_id=f"s{n}", channels=(), now=0)
        )
    assert len(sent_frames(actions)) == 3_599  # the REGISTER took one token
    assert len(sent_frames(drive(presence, Tick(now=1)))) == 1


def test_a_metadata_replaces_the_held_one_of_its_session() -> None:
    presence = paced()
    open_joined(presence, 1, "u", "s1")
    for value in range(5):
        drive(presence, MetadataUpdated(session_id="s1", metadata={"v": value}, now=0))
    released = sent_frames(release(presence, 0))
    assert [(f["type"], f["payload"].get("metadata")) for f in released] == [
        ("JOIN", None),
        ("METADATA", {"v": 4}),
    ]
    # Once sent, the next METADATA is a frame of its own again (and the bucket has
    # filled meanwhile: it goes at once).
    actions = drive(presence, MetadataUpdated(session_id="s1", metadata={"v": 5}, now=10))
    assert kinds(actions) == ["METADATA"]


def test_an_unsubscribe_cancels_the_held_subscribe() -> None:
    presence = paced()
    open_joined(presence, 1, "u", "s1")
    for _ in range(3):
        drive(
            presence, Subscribe(conn=1, channel="c", now=0), Unsubscribe(conn=1, channel="c", now=0)
        )
    assert kinds(drive(presence, Tick(now=10))) == ["JOIN"]
    # A SUBSCRIBE that has gone is not cancelled: the UNSUBSCRIBE follows it.
    drive(presence, Subscribe(conn=1, channel="c", now=10))
    assert kinds(drive(presence, Tick(now=20))) == ["SUBSCRIBE"]
    drive(presence, Unsubscribe(conn=1, channel="c", now=20))
    assert kinds(drive(presence, Tick(now=30))) == ["UNSUBSCRIBE"]


def test_a_channel_named_like_a_key_is_not_coalesced_with_metadata() -> None:
    presence = paced()
    open_joined(presence, 1, "u", "s1")
    drive(presence, Subscribe(conn=1, channel="metadata", now=0))
    drive(presence, MetadataUpdated(session_id="s1", metadata={"v": 1}, now=0))
    assert kinds(release(presence, 0)) == ["JOIN", "SUBSCRIBE", "METADATA"]


def test_a_join_of_the_session_ends_the_coalescing_of_what_was_held_before_it() -> None:
    presence = paced()
    open_joined(presence, 1, "u", "s1")
    drive(presence, Subscribe(conn=1, channel="c", now=0))
    drive(presence, MetadataUpdated(session_id="s1", metadata={"v": 1}, now=0))
    open_joined(presence, 2, "u", "s1")  # the same session, on a new connection
    drive(presence, MetadataUpdated(session_id="s1", metadata={"v": 2}, now=0))
    drive(presence, Unsubscribe(conn=2, channel="c", now=0))
    released = sent_frames(release(presence, 0))
    assert [f["type"] for f in released] == [
        "JOIN",
        "SUBSCRIBE",
        "METADATA",
        "JOIN",
        "METADATA",
        "UNSUBSCRIBE",
    ]
    assert released[3]["payload"]["channels"] == ["c"]  # what the UNSUBSCRIBE then undoes


def test_past_the_bound_a_clients_commands_are_refused_with_busy() -> None:
    presence = paced(max_queued_frames=3)
    open_joined(presence, 1, "u", "s1")  # JOIN held
    open_joined(presence, 2, "v", "s2", channels=["c"])  # JOIN held
    drive(presence, Subscribe(conn=1, channel="c", now=0))  # SUBSCRIBE held: 3, the bound
    commands: list[Any] = [
        Subscribe(conn=1, channel="d", now=0),
        PublishRequested(channel="c", message=MESSAGE, conn=1),
        BroadcastRequested(ns="/ws", channel="c", message=MESSAGE, conn=1),
        DirectRequested(user_id="v", message=MESSAGE, conn=1),
        MetadataUpdated(session_id="s1", metadata={"v": 1}, now=0, conn=1),
        Unsubscribe(conn=1, channel="c", now=0),
        Unsubscribe(conn=1, channel="e", now=0),  # not here, but the hub may hold it
    ]
    for command in commands:
        actions = drive(presence, command)
        assert refusals(actions) == ["busy"]
        assert [a for a in actions if isinstance(a, Deliver)] == []  # nothing happened here
    assert presence.subscriptions(1).keys() == {"c"}
    # The embedding program's own requests are held whatever the count.
    actions = drive(
        presence,
        PublishRequested(channel="c", message=MESSAGE),
        BroadcastRequested(ns="/ws", channel="c", message=MESSAGE),
        DirectRequested(user_id="v", message=MESSAGE),
        MetadataUpdated(session_id="s1", metadata={"v": 0}, now=0),
    )
    assert refusals(actions) == []
    assert len([a for a in actions if isinstance(a, Deliver)]) == 3
    # Released, the link takes commands again.
    assert len(sent_frames(release(presence, 0))) == 7
    for command in commands:
        assert refusals(drive(presence, command)) == []
        release(presence, 0)


def publishes(presence: Presence, conn: int, count: int) -> list[str]:
    """What became of ``count`` publishes by ``conn``: ``ok`` or the refusal's code."""
    codes: list[str] = []
    for _ in range(count):
        actions = drive(presence, PublishRequested(channel="c", message=MESSAGE, conn=conn))
        codes += refusals(actions) or ["ok"]
    return codes


@pytest.mark.parametrize(
    ("rate", "delay", "capacity"),
    [(1_000.0, 0.05, 50), (1_000.0, 0.1, 100), (2_000.0, 0.05, 100), (10.0, 0.05, 1)],
)
def test_the_backlog_is_bounded_by_seconds_of_the_hubs_rate(
    rate: float, delay: float, capacity: int
) -> None:
    presence = paced(limited(rate=rate, burst=1), max_queue_delay=delay)
    open_joined(presence, 1, "u", "s1", channels=["c"])  # its JOIN is held, charged to nobody
    # Alone, a connection's fair share is the whole capacity: it is refused once it holds
    # more than that (at least one frame), so what waits leaves within about ``delay``.
    assert publishes(presence, 1, capacity + 5) == ["ok"] * (capacity + 1) + ["busy"] * 4
    assert presence.hub_link_held == capacity + 2
    # The embedding program's own requests are held whatever the count.
    drive(presence, PublishRequested(channel="c", message=MESSAGE))
    assert presence.hub_link_held == capacity + 3
    release(presence, 0)
    assert publishes(presence, 1, 1) == ["ok"]


def test_the_connection_that_floods_is_refused_and_the_one_that_sends_little_is_not() -> None:
    # Holds 50 frames (0.05 s) at most; a burst of 100, 50 of it in reserve.
    presence = paced(limited(rate=1_000, burst=100))
    open_joined(presence, 1, "f", "s1", channels=["c"])
    open_joined(presence, 2, "m", "s2", channels=["c"])
    release(presence, 0)
    flood: list[str] = []
    modest: list[str] = []
    most = 0
    # For a second the flooder asks 3,000 frames a second, the other 50, of 1,000.
    for ms in range(1, 1_001):
        drive(presence, Tick(now=ms / 1_000))
        flood += publishes(presence, 1, 3)
        if ms % 20 == 0:
            modest += publishes(presence, 2, 1)
        most = max(most, presence.hub_link_held)
    assert modest == ["ok"] * 50
    assert flood.count("busy") > 1_900  # the excess is refused to whom it belongs ...
    assert flood.count("ok") > 900  # ... and the rest of the rate is its to use
    assert most <= 52  # within the capacity, plus one frame a connection


def test_past_its_share_a_connection_is_refused_only_if_it_holds_half_the_most() -> None:
    presence = paced(limited(rate=1_000, burst=1))  # holds 50 frames (0.05 s); none leaves
    for conn in range(3):
        open_joined(presence, conn, f"u{conn}", f"s{conn}", channels=["c"])
    release(presence, 0)
    assert publishes(presence, 0, 60).count("ok") == 51  # alone: its share is all 50
    assert publishes(presence, 1, 1) == ["ok"]  # it holds nothing: never refused
    assert publishes(presence, 2, 1) == ["ok"]
    # Three connections hold frames: a fair share is 16.7 of the 50, but connection 1
    # holds less than half what connection 0 does (51): it may hold one more, up to 26.
    assert publishes(presence, 1, 30) == ["ok"] * 25 + ["busy"] * 5
    assert publishes(presence, 0, 1) == ["busy"]
    assert publishes(presence, 2, 1) == ["ok"]
    # What is held leaves: the counts fall with it.
    assert presence.hub_link_held == 51 + 26 + 2
    release(presence, 0)
    assert [publishes(presence, conn, 1) for conn in range(3)] == [["ok"]] * 3


def test_what_goes_at_once_is_charged_to_the_bucket_as_it_is_then() -> None:
    # Rate 10 and a burst of 5, 2 of it in reserve: 3 frames at once at most.
    presence = paced(limited(rate=10, burst=5))
    actions = drive(presence, Tick(now=20))  # 20 s on: the hub's bucket is full, no fuller
    for _ in range(6):
        actions += drive(presence, PublishRequested(channel="c", message=MESSAGE))
    actions += drive(presence, Tick(now=20))
    assert kinds(actions) == ["PUBLISH"] * 3
    assert presence.next_deadline() == pytest.approx(20.1)  # the rest as tokens come


def test_the_resync_goes_first_and_is_never_refused() -> None:
    presence = paced(max_queued_frames=1)
    for n in range(5):
        open_joined(presence, n, f"u{n}", f"s{n}", channels=["c"])
    release(presence, 0)
    # The hub restarts: the link registers again and resends every session.
    actions = drive(
        presence,
        HubLost(now=11, code=1006),
        Tick(now=100),
        HubConnected(now=100),
        HubFrameReceived(data=limited(rate=10, burst=5), now=100),
    )
    assert kinds(actions) == ["REGISTER", "JOIN", "JOIN"]
    assert presence.hub_link_held == 3
    # A client's command while the resync is held is held behind it, not refused ...
    assert refusals(drive(presence, PublishRequested(channel="c", message=MESSAGE, conn=0))) == []
    # ... up to the bound of what is not the resync.
    assert refusals(drive(presence, PublishRequested(channel="c", message=MESSAGE, conn=0))) == [
        "busy"
    ]
    released = sent_frames(release(presence, 100))
    assert [f["type"] for f in released] == ["JOIN", "JOIN", "JOIN", "PUBLISH"]


def test_the_resync_says_each_session_as_it_is_when_it_goes() -> None:
    presence = paced()
    for n in range(3):
        open_joined(presence, n, f"u{n}", f"s{n}", channels=["c"])
    release(presence, 0)
    drive(
        presence,
        HubLost(now=11, code=1006),
        Tick(now=100),
        HubConnected(now=100),
        HubFrameReceived(data=limited(burst=4), now=100),  # one JOIN now, two held
    )
    drive(presence, KickRequested(session_id="s1"), ConnectionClosed(conn=1, now=100))
    drive(presence, MetadataUpdated(session_id="s2", metadata={"v": 1}, now=100))
    released = sent_frames(release(presence, 100))
    # s1 left before its JOIN went: none; s2's JOIN carries its metadata of now.
    assert [(f["type"], f["payload"]["sessionId"]) for f in released] == [
        ("JOIN", "s2"),
        ("LEAVE", "s1"),
        ("METADATA", "s2"),
    ]
    assert released[0]["payload"]["metadata"] == {"v": 1}


def test_what_is_held_dies_with_the_link() -> None:
    presence = paced()
    open_joined(presence, 1, "u", "s1")
    drive(presence, HubLost(now=1, code=1006))
    assert presence.hub_link_state is HubLinkState.BACKING_OFF
    drive(presence, Tick(now=100), HubConnected(now=100))
    actions = drive(presence, HubFrameReceived(data=limited(burst=10), now=100))
    assert kinds(actions) == ["JOIN"]  # the resync's, once; the old held one is gone


def test_a_smaller_frame_limit_stated_by_the_hub_is_kept() -> None:
    presence = paced(limited(max_frame_bytes=200))
    open_joined(presence, 1, "u", "s1", channels=["c"])
    big = Message(type="chat", payload="x" * 300)
    with pytest.raises(LocalUsageError, match="the limit is 200"):
        drive(presence, PublishRequested(channel="c", message=big, conn=1))
    # A hub that states none (or a larger one) after a reconnect: our own limit again.
    drive(
        presence,
        HubLost(now=1, code=1006),
        Tick(now=100),
        HubConnected(now=100),
        HubFrameReceived(data=limited(burst=100), now=100),
    )
    assert kinds(drive(presence, PublishRequested(channel="c", message=big, conn=1))) == ["PUBLISH"]


# ------------------------------------------------------- a refusal of one session


def session_error(session_id: str, code: str = "too_many_channels") -> HubFrameReceived:
    return HubFrameReceived(
        data=hub_frame("ERROR", code=code, message="the limit is 2", sessionId=session_id), now=1
    )


def test_an_error_naming_a_session_closes_that_client_only() -> None:
    presence = paced(limited(burst=100))
    open_joined(presence, 1, "ann", "a1", channels=["c"])
    open_joined(presence, 2, "bob", "b1", channels=["c"])
    actions = drive(presence, session_error("a1"))
    assert [a for a in actions if isinstance(a, CloseConnection)] == [
        CloseConnection(conn=1, code=1008, reason="refused by the hub: too_many_channels")
    ]
    assert presence.hub_link_state is HubLinkState.REGISTERED
    # It was closed as a kick: it leaves at once, and the hub hears so.
    assert kinds(drive(presence, ConnectionClosed(conn=1, now=2))) == ["LEAVE"]
    assert presence.session_state("b1").value == "joined"


def test_an_error_naming_a_lingering_session_ends_its_grace() -> None:
    presence = paced(limited(burst=100))
    open_joined(presence, 1, "ann", "a1", channels=["c"])
    drive(presence, ConnectionClosed(conn=1, now=0))
    assert drive(presence, session_error("a1")) != []
    assert kinds(drive(presence, Tick(now=1))) == ["LEAVE"]


def test_an_error_naming_an_unknown_session_changes_nothing() -> None:
    presence = paced(limited(burst=100))
    actions = drive(presence, session_error("ghost", "session_taken"))
    # Logged as a refusal of that session; there is no such session here to close.
    assert [a.event for a in actions] == ["hub.session.refused"]  # type: ignore[attr-defined]
    assert presence.hub_link_state is HubLinkState.REGISTERED
