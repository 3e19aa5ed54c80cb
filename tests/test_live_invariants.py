"""The invariant checks of live presence notice every corruption (a check that cannot fail
would make every property test and fuzz target built on it vacuous).

Each new index is corrupted on a populated machine: the channel rosters and their
counts, the source tables, the watcher sets and their cached targets, the open
windows, the lingering sessions and their timers, the local channel index, and the
hub's channel members and interests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from megapresence_core import (
    ClusterConfig,
    ConnectionClosed,
    Member,
    Presence,
    PresenceConfig,
    PresenceMode,
    Subscribe,
)
from megapresence_core._hub_sessions import HubSession, HubSessions
from megapresence_core._rosters import HUB, LOCAL
from megapresence_core.events import BridgeConnecting, BridgeFrameReceived, HubFrameReceived
from megapresence_core.hub import Hub, HubConfig
from megapresence_core.lifecycle import ConnectionState, Timer
from megapresence_core.wire import RemoteMember

from .helpers import drive, hub_frame, hub_presence, open_joined

ANN = Member(session_id="a1", user_id="ann")


def live() -> Presence:
    """A bridge with a watcher, a window open, a lingering session and the hub's members."""
    presence = hub_presence(
        cluster=ClusterConfig(app="t", instance_id="me", epoch=1), presence_window=0.05
    )
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    open_joined(presence, 2, "bob", "b1", channels=["room"])
    drive(
        presence,
        Subscribe(conn=1, channel="room", mode="users", now=0),
        HubFrameReceived(
            data=hub_frame("JOIN", userId="cid", sessionId="c1", channels=["room"]), now=0
        ),
        ConnectionClosed(conn=2, now=0.01),
    )
    open_joined(presence, 3, "dan", "d1", channels=["room"], now=0.02)  # a window is open
    return presence


def _roster(p: Presence) -> Any:
    return p._rosters.channels["room"]


CORRUPTIONS: list[tuple[Callable[[Presence], object], str]] = [
    # the local indexes
    (lambda p: p._local.by_channel["room"].pop(1), "channel index"),
    (lambda p: p._local.lingering.__setitem__("zz", p._local.lingering["b1"]), "is filed under"),
    (
        lambda p: setattr(p._local.lingering["b1"].lifecycle, "_state", ConnectionState.JOINED),
        "lingering",
    ),
    (
        lambda p: p._local.records[1].lifecycle.__setattr__("_state", ConnectionState.OPENED),
        "disagrees",
    ),
    # the rosters, against what the sources hold
    (lambda p: _roster(p).holders["a1"].pop(LOCAL), "channel rosters"),
    (
        lambda p: _roster(p).members.__setitem__("a1", Member(session_id="a1", user_id="x")),
        "disagrees with its holders",
    ),
    (lambda p: _roster(p).by_user.pop("ann"), "disagrees with its holders"),
    (lambda p: setattr(_roster(p), "local", 9), "disagrees with its holders"),
    # the hub's table
    (lambda p: p._hub_members.table.users.__setitem__("cid", 2), "user index"),
    (
        lambda p: p._hub_members.table.sessions.__setitem__(
            "zz", RemoteMember(ns="", member=ANN, channels=("room",))
        ),
        "is filed under",
    ),
    (
        lambda p: p._hub_members.table.sessions.__setitem__(
            "a1", RemoteMember(ns="", member=ANN, channels=())
        ),
        "is filed under",
    ),
    # the feed
    (lambda p: p._feed.channels["room"].watchers[PresenceMode.USERS].pop(1), "watchers"),
    (lambda p: p._feed.channels["room"]._targets.__setitem__(PresenceMode.USERS, (9,)), "stale"),
    (lambda p: setattr(p._feed.channels["room"], "window", None), "window of 'room' is open"),
    (lambda p: p._timers.cancel(Timer.FLUSH, "room"), "window of 'room' is open"),
    (lambda p: p._feed._fresh.__setitem__("room", None), "window of 'room' is open"),
    (
        lambda p: p._feed.channels["room"].window.before.__setitem__("zz", ANN),  # type: ignore[union-attr]
        "misfiles",
    ),
    (lambda p: p._timers.arm(Timer.FLUSH, 1, "nobody-watches"), "nobody watches"),
    # the timers of the lingering sessions
    (lambda p: p._timers.cancel(Timer.GRACE, p._local.lingering["b1"]), "grace timers"),
]


@pytest.mark.parametrize(("corrupt", "match"), CORRUPTIONS)
def test_presence_check_notices(corrupt: Callable[[Presence], object], match: str) -> None:
    presence = live()
    presence.check_invariants()
    corrupt(presence)
    with pytest.raises(AssertionError, match=match):
        presence.check_invariants()


def test_presence_check_notices_the_hub_s_members_of_an_untracked_channel() -> None:
    presence = live()
    presence._hub_members.table.put(RemoteMember(ns="", member=ANN, channels=("elsewhere",)))
    with pytest.raises(AssertionError, match="untracked channels"):
        presence.check_invariants()


def test_presence_check_notices_a_lingering_session_that_still_watches() -> None:
    presence = live()
    presence._local.lingering["b1"].subscriptions["room"] = PresenceMode.USERS
    with pytest.raises(AssertionError, match="watchers"):
        presence.check_invariants()


def test_the_rosters_show_local_first_then_the_source_put_last() -> None:
    presence = Presence(PresenceConfig(presence_window=0))
    rosters = presence._rosters
    hub, other = (
        Member(session_id="s", user_id="u", metadata={"v": 1}),
        Member(session_id="s", user_id="u", metadata={"v": 2}),
    )
    rosters.put("c", HUB, hub)
    rosters.put("c", "i2", other)
    assert rosters.get("c").members["s"] == other  # type: ignore[union-attr]
    rosters.put("c", HUB, hub)  # HUB put again: it is now the last
    assert rosters.get("c").members["s"] == hub  # type: ignore[union-attr]
    rosters.remove("c", "nobody", "s")
    rosters.remove("c", HUB, "nope")
    rosters.remove("nowhere", HUB, "s")
    rosters.remove("c", HUB, "s")
    assert rosters.get("c").members["s"] == other  # type: ignore[union-attr]
    assert rosters.counts("c") == (1, 1)


# ---------------------------------------------------------------------- the hub


def populated() -> HubSessions:
    sessions = HubSessions()
    sessions.put(HubSession("s1", "ann", "A", ("x", "y"), None))
    sessions.put(HubSession("s2", "bob", "B", ("x",), None))
    sessions.add_interest("C", "x")
    return sessions


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda s: s.channel_sessions["x"].pop("s2"), "channel members"),
        (lambda s: setattr(s.sessions["s1"], "channels", ("x", "x", "y")), "is filed under"),
        (lambda s: s.interest["x"].pop("C"), "interest index"),
        (lambda s: s.interests.__setitem__("D", {}), "empty interest"),
    ],
)
def test_hub_sessions_check_notices(corrupt: Callable[[HubSessions], object], match: str) -> None:
    sessions = populated()
    sessions.check()
    corrupt(sessions)
    with pytest.raises(AssertionError, match=match):
        sessions.check()


def test_hub_check_notices_interests_of_an_unregistered_bridge() -> None:
    hub = Hub(HubConfig(hub_id="h", tokens=["t"]))
    hub.handle(BridgeConnecting(bridge="A", authorization="Bearer t", now=0))
    register = hub_frame("REGISTER", bridgeId="a", instanceId="i", protocol=2, channels=["c"])
    hub.handle(BridgeFrameReceived(bridge="A", data=register, now=0))
    hub.check_invariants()
    hub._sessions.add_interest("ghost", "c")
    with pytest.raises(AssertionError, match="not registered"):
        hub.check_invariants()
