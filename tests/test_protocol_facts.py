"""What docs/protocol.md states where it used to be ambiguous, pinned on the core.

Each test names the sentence of the protocol it holds: snapshot versions, the
first snapshot and count after a ``subscribe``, and what a restored session
takes from the identity that restored it. (The demo identity's defaults are
held in ``test_demo_app.py``.)
"""

from __future__ import annotations

import json
from typing import Any

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    Presence,
    PresenceConfig,
    SessionJoined,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.events import PresenceSync

from .helpers import drive


def sent(actions: list[Any], conn: int = 1) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Deliver) and conn in a.conns]


def joined(presence: Presence, conn: int, user: str, channels: list[str], now: float) -> None:
    drive(presence, ConnectionOpened(conn=conn, ns="/ws"))
    drive(
        presence,
        SessionJoined(conn=conn, user_id=user, session_id=f"{user}-1", channels=channels, now=now),
    )


def test_a_snapshot_carries_the_view_s_current_version_and_diffs_go_on_from_it() -> None:
    # Versions belong to the (channel, view) on this server, shared by its watchers: a
    # snapshot (subscribe or sync) carries the current one, the next diff is one more.
    presence = Presence(PresenceConfig())
    joined(presence, 1, "ann", ["lobby"], 0.0)
    [_, state] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=0.0)))
    assert (state["type"], state["version"]) == ("presence.state", 0)  # the first watcher
    joined(presence, 2, "bob", ["lobby"], 0.0)
    [diff] = sent(drive(presence, Tick(now=1.0)))
    assert (diff["type"], diff["version"]) == ("presence.diff", 1)
    [state] = sent(drive(presence, PresenceSync(conn=1, channel="lobby")))
    assert (state["type"], state["version"]) == ("presence.state", 1)  # not restarted
    # A new connection's first subscribe: the current version, not 0.
    [_, state] = sent(drive(presence, Subscribe(conn=2, channel="lobby", mode="users", now=1.0)), 2)
    assert state["version"] == 1
    joined(presence, 3, "cat", ["lobby"], 1.0)
    [diff] = sent(drive(presence, Tick(now=2.0)), 2)
    assert diff["version"] == 2
    # A subscribe that changes nothing answers the current version too, while others watch.
    [_, state] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=2.0)))
    assert state["version"] == 2
    # Another view of the channel counts on its own.
    [_, state] = sent(
        drive(presence, Subscribe(conn=3, channel="lobby", mode="sessions", now=2.0)), 3
    )
    assert (state["view"], state["version"]) == ("sessions", 0)
    # Once nobody watches the channel, its versions start over.
    for conn in (1, 2, 3):
        drive(presence, Subscribe(conn=conn, channel="lobby", mode="none", now=2.0))
    [_, state] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=2.0)))
    assert state["version"] == 0


def test_the_answer_to_a_subscribe_is_the_channel_before_it() -> None:
    presence = Presence(PresenceConfig())
    joined(presence, 1, "ann", [], 0.0)
    joined(presence, 2, "bob", ["lobby"], 0.0)
    [_, count] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="count", now=0.0)))
    assert (count["sessions"], count["users"]) == (1, 1)  # bob, not ann yet
    [count] = sent(drive(presence, Tick(now=1.0)))
    assert (count["sessions"], count["users"]) == (2, 2)  # ann, from the next window
    drive(presence, Unsubscribe(conn=1, channel="lobby", now=1.0))
    [_, state] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=1.0)))
    assert list(state["members"]) == ["bob"]
    [diff] = sent(drive(presence, Tick(now=2.0)))
    assert list(diff["joins"]) == ["ann"]
    # Already a member: in the snapshot.
    [_, state] = sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=2.0)))
    assert sorted(state["members"]) == ["ann", "bob"]


def test_a_restored_session_takes_the_new_identity_s_metadata_and_channels() -> None:
    presence = Presence(PresenceConfig(leave_grace=5.0))
    joined(presence, 1, "ann", ["lobby"], 0.0)
    sent(drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=0.0)))
    drive(presence, ConnectionOpened(conn=2, ns="/ws"))
    drive(
        presence,
        SessionJoined(
            conn=2, user_id="bob", session_id="b-1", channels=["lobby"], metadata={"v": 1}, now=0.0
        ),
    )
    drive(presence, Tick(now=1.0))
    drive(presence, ConnectionClosed(conn=2, now=1.0))
    drive(presence, ConnectionOpened(conn=3, ns="/ws"))
    drive(
        presence,
        SessionJoined(
            conn=3, user_id="bob", session_id="b-1", channels=["dev"], metadata={"v": 2}, now=2.0
        ),
    )
    [diff] = sent(drive(presence, Tick(now=3.0)))
    assert (diff["joins"], diff["leaves"]) == ({}, {})
    assert diff["updates"]["bob"]["sessions"] == [{"sessionId": "b-1", "metadata": {"v": 2}}]
    # The kept subscription stays, the new identity's channel is added, both in mode none.
    assert {c: m.value for c, m in presence.subscriptions(3).items()} == {
        "lobby": "none",
        "dev": "none",
    }
