"""Presence to watchers: snapshots, then coalesced diffs with consecutive versions, and counts."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    KickRequested,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.events import PresenceSync
from megapresence_core.wire import PresenceMap, decode_server_message

from .helpers import deliveries, drive, open_joined, presence_messages

WINDOW = 0.05


def feed(window: float = WINDOW, mode: str = "users") -> Presence:
    """conn 1 (ann, session a1) watches ``lobby`` in ``mode`` from t=0, alone in it."""
    presence = Presence(PresenceConfig(presence_window=window, leave_grace=0))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    drive(presence, Subscribe(conn=1, channel="lobby", mode=mode, now=0), Tick(now=1))
    return presence


def join(presence: Presence, conn: int, user: str, session: str, now: float, **kw: Any) -> Any:
    return open_joined(presence, conn, user, session, channels=["lobby"], now=now, **kw)


def diffs(actions: list[Any], conn: Hashable = 1) -> list[dict[str, Any]]:
    return [m for m in presence_messages(actions, conn) if m["type"] == "presence.diff"]


def member(user: str, *sessions: tuple[str, object]) -> dict[str, Any]:
    return {
        "userId": user,
        "sessions": [{"sessionId": sid, "metadata": metadata} for sid, metadata in sessions],
    }


def test_changes_wait_for_the_window_then_go_out_as_one_diff() -> None:
    presence = feed()
    assert join(presence, 2, "bob", "b1", now=1.00) == []
    assert join(presence, 3, "cid", "c1", now=1.02) == []
    assert presence.next_deadline() == pytest.approx(1.05)  # from the window's first change
    assert drive(presence, Tick(now=1.04)) == []
    [diff] = diffs(drive(presence, Tick(now=1.05)))
    assert diff == {
        "type": "presence.diff",
        "channel": "lobby",
        "view": "users",
        "version": 1,
        "joins": {"bob": member("bob", ("b1", None)), "cid": member("cid", ("c1", None))},
        "leaves": {},
        "updates": {},
    }
    assert presence.next_deadline() is None


@pytest.mark.parametrize("mode", ["users", "sessions"])
def test_a_join_then_a_leave_in_one_window_cancel_out(mode: str) -> None:
    presence = feed(mode=mode)
    join(presence, 2, "bob", "b1", now=1.0)
    drive(presence, ConnectionClosed(conn=2, now=1.01))
    assert drive(presence, Tick(now=2)) == []  # nothing changed, as far as a watcher can tell
    [diff] = diffs(join(presence, 3, "cid", "c1", now=3) + drive(presence, Tick(now=4)))
    assert diff["version"] == 1  # no version was spent on the empty window


def test_a_metadata_change_is_an_update_never_a_leave_and_a_join() -> None:
    presence = feed(mode="sessions")
    join(presence, 2, "bob", "b1", now=1, metadata={"s": "here"})
    drive(presence, Tick(now=2))
    drive(presence, MetadataUpdated(session_id="b1", metadata={"s": "away"}, now=3))
    [diff] = diffs(drive(presence, Tick(now=4)))
    assert (diff["joins"], diff["leaves"]) == ({}, {})
    assert diff["updates"] == {
        "b1": {"sessionId": "b1", "userId": "bob", "metadata": {"s": "away"}}
    }
    # Changed and changed back within a window: nothing to say.
    drive(presence, MetadataUpdated(session_id="b1", metadata={"s": "x"}, now=5))
    drive(presence, MetadataUpdated(session_id="b1", metadata={"s": "away"}, now=5.01))
    assert drive(presence, Tick(now=6)) == []


def test_in_the_users_view_a_user_joins_with_its_first_session_and_leaves_with_its_last() -> None:
    presence = feed(window=0)
    [diff] = diffs(join(presence, 2, "ann", "a2", now=1))
    assert diff["updates"] == {"ann": member("ann", ("a1", None), ("a2", None))}
    [diff] = diffs(join(presence, 3, "bob", "b1", now=2))
    assert diff["joins"] == {"bob": member("bob", ("b1", None))}
    [diff] = diffs(drive(presence, ConnectionClosed(conn=2, now=3)))
    assert diff["updates"] == {"ann": member("ann", ("a1", None))}
    [diff] = diffs(drive(presence, ConnectionClosed(conn=3, now=4)))
    assert diff["leaves"] == {"bob": member("bob", ("b1", None))}
    assert [diff["version"] for diff in [diff]] == [4]


def test_a_window_of_zero_flushes_at_the_end_of_each_event() -> None:
    presence = feed(window=0)
    for conn in range(2, 6):
        [diff] = diffs(join(presence, conn, f"u{conn}", f"s{conn}", now=1))
        assert diff["version"] == conn - 1
    assert presence.next_deadline() is None


def test_a_storm_of_joins_gives_each_watcher_one_diff_per_window() -> None:
    presence = Presence(PresenceConfig(presence_window=WINDOW))
    maps = {1: PresenceMap("lobby", "users"), 2: PresenceMap("lobby", "sessions")}
    received: dict[Hashable, list[str]] = {1: [], 2: []}

    def record(actions: list[Any]) -> None:
        for action in actions:
            for conn in getattr(action, "conns", ()):
                if conn in maps and "presence." in action.text:
                    message = decode_server_message(action.text)
                    assert maps[conn].apply(message)  # type: ignore[arg-type]
                    received[conn].append(action.text)

    for conn, mode in ((1, "users"), (2, "sessions")):
        open_joined(presence, conn, f"w{conn}", f"w{conn}")
        record(drive(presence, Subscribe(conn=conn, channel="lobby", mode=mode, now=0)))
    now, conn = 1.0, 100
    while now < 2.0:  # 1,000 joins in one second, a tick every 10 ms
        for _ in range(10):
            conn += 1
            presence.handle(ConnectionOpened(conn=conn, ns="/ws"))
            record(
                presence.handle(
                    SessionJoined(
                        conn=conn,
                        user_id=f"u{conn}",
                        session_id=f"s{conn}",
                        channels=["lobby"],
                        now=now,
                    )
                )
            )
        record(presence.handle(Tick(now=now)))
        now = round(now + 0.01, 2)
    record(drive(presence, Tick(now=3)))
    windows = 1.0 / WINDOW + 2  # the storm touches at most this many windows
    for watcher in (1, 2):
        diffs_received = len(received[watcher]) - 1  # after the snapshot
        assert 0 < diffs_received <= windows
    assert set(maps[2].members) == {m.session_id for m in presence.channel_members("lobby")}
    assert len(maps[1].members) == len(maps[2].members) == 1002


def _snapshot(presence: Presence, conn: int) -> str:
    [action] = drive(presence, PresenceSync(conn=conn, channel="lobby"))
    return action.text  # type: ignore[union-attr]


def test_a_snapshot_mid_window_is_the_last_version_sent_and_the_diff_applies_to_it() -> None:
    presence = feed(mode="sessions")
    join(presence, 2, "bob", "b1", now=1, metadata={"v": 1})
    drive(presence, Tick(now=2))  # version 1: bob joined
    # A window opens: bob changes, cid joins, ann leaves ... and a new watcher arrives.
    drive(presence, MetadataUpdated(session_id="b1", metadata={"v": 2}, now=3))
    join(presence, 3, "cid", "c1", now=3.01)
    open_joined(presence, 4, "dan", "d1")
    actions = drive(presence, Subscribe(conn=4, channel="lobby", mode="sessions", now=3.02))
    watched = PresenceMap("lobby", "sessions")
    [state] = presence_messages(actions, 4)
    assert state["version"] == 1
    assert state["members"] == {
        "a1": {"sessionId": "a1", "userId": "ann", "metadata": None},
        "b1": {"sessionId": "b1", "userId": "bob", "metadata": {"v": 1}},
    }
    watched.apply(decode_server_message(_text(actions, 4)))
    drive(presence, ConnectionClosed(conn=1, now=3.03))
    flush = drive(presence, Tick(now=4))
    assert watched.apply(decode_server_message(_text(flush, 4)))
    assert watched.version == 2
    assert set(watched.members) == {"b1", "c1", "d1"}
    assert watched.members["b1"] == {"sessionId": "b1", "userId": "bob", "metadata": {"v": 2}}
    # The same diff went to the old watcher... which closed; and a sync now gives version 2.
    assert 1 not in deliveries(flush)
    [fresh] = presence_messages(drive(presence, PresenceSync(conn=4, channel="lobby")), 4)
    assert (fresh["version"], fresh["members"]) == (2, watched.members)


def _text(actions: list[Any], conn: int) -> str:
    return next(
        a.text for a in actions if conn in getattr(a, "conns", ()) and "presence." in a.text
    )


def test_counts_are_coalesced_and_sent_only_when_they_change() -> None:
    presence = feed(mode="count")
    join(presence, 2, "bob", "b1", now=1)
    join(presence, 3, "bob", "b2", now=1.01)
    assert presence_messages(drive(presence, Tick(now=2)), 1) == [
        {"type": "presence.count", "channel": "lobby", "sessions": 3, "users": 2}
    ]
    drive(presence, ConnectionClosed(conn=3, now=3))
    join(presence, 4, "bob", "b3", now=3.01)  # a session went, another came: same counts
    assert drive(presence, Tick(now=4)) == []
    # A count watcher arriving mid-window gets the counts before the window.
    drive(presence, ConnectionClosed(conn=4, now=5))
    open_joined(presence, 5, "eve", "e1")
    actions = drive(presence, Subscribe(conn=5, channel="lobby", mode="count", now=5.01))
    assert presence_messages(actions, 5) == [
        {"type": "presence.count", "channel": "lobby", "sessions": 3, "users": 2}
    ]
    assert presence_messages(drive(presence, Tick(now=6)), 5) == [
        {"type": "presence.count", "channel": "lobby", "sessions": 3, "users": 3}
    ]


def test_a_watcher_that_goes_stops_the_feed_and_its_timer() -> None:
    presence = feed()
    join(presence, 2, "bob", "b1", now=1)
    assert presence.next_deadline() is not None
    drive(presence, ConnectionClosed(conn=1, now=1.01))
    assert presence.next_deadline() is None
    presence = feed()
    join(presence, 2, "bob", "b1", now=1)
    drive(presence, KickRequested(session_id="a1"), ConnectionClosed(conn=1, now=1.01))
    assert presence.next_deadline() is None


def test_shutdown_stops_every_feed() -> None:
    presence = feed()
    join(presence, 2, "bob", "b1", now=1)
    drive(presence, ShutdownRequested())
    assert presence.next_deadline() is None
    assert presence.presence_stats("lobby") == (0, 0)
    assert presence.channel_members("lobby") == []


def test_a_watcher_of_two_views_and_two_channels_gets_each_separately() -> None:
    presence = feed(window=0)
    open_joined(presence, 2, "bob", "b1", channels=["dev"])
    drive(presence, Subscribe(conn=2, channel="lobby", mode="sessions", now=1))
    drive(presence, Subscribe(conn=1, channel="dev", mode="users", now=1))
    actions = drive(presence, Unsubscribe(conn=2, channel="dev", now=2))
    assert [(m["channel"], m["view"]) for m in presence_messages(actions, 1)] == [("dev", "users")]
    assert presence_messages(actions, 2) == []
