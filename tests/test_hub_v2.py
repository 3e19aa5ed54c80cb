"""Hub protocol version 2: interests, SUBSCRIBE/UNSUBSCRIBE/PUBLISH, MEMBERS, version 1 bridges.

The hub side first (frames in, frames out), then a bridge's side: what the hub
tells it of other bridges becomes its channel rosters, for the channels it tracks.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import pytest

from megapresence_core import (
    ConnectionClosed,
    Hub,
    HubConfig,
    ShutdownRequested,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.actions import AcceptBridge
from megapresence_core.events import BridgeClosed, BridgeConnecting, HubFrameReceived, HubLost, Tick
from megapresence_core.events import HubConnected as _HubConnected

from .helpers import (
    drive,
    hub_frame,
    hub_presence,
    open_joined,
    presence_messages,
    registered_frame,
)
from .test_hub import TOKEN, frames_to, join, new_hub, send


def register(hub: Hub, bridge: str, protocol: int = 2, **payload: Any) -> list[Any]:
    assert hub.handle(BridgeConnecting(bridge=bridge, authorization=f"Bearer {TOKEN}", now=0)) == [
        AcceptBridge(bridge=bridge)
    ]
    return send(
        hub, bridge, "REGISTER", bridgeId=bridge, instanceId="i", protocol=protocol, **payload
    )


def types_to(actions: list[Any]) -> dict[Hashable, list[str]]:
    return {bridge: [f["type"] for f in frames] for bridge, frames in frames_to(actions).items()}


def members_of(actions: list[Any], bridge: str) -> list[dict[str, Any]]:
    return [f["payload"] for f in frames_to(actions).get(bridge, []) if f["type"] == "MEMBERS"]


# ------------------------------------------------------------------ the hub


def test_register_with_channels_is_an_interest_answered_with_their_members() -> None:
    hub = new_hub()
    register(hub, "A")
    join(hub, "A", "ann", "a1", "room", metadata={"s": 1})
    actions = register(hub, "B", channels=["room", "empty"])
    assert types_to(actions) == {"B": ["REGISTERED", "MEMBERS", "MEMBERS"]}
    assert members_of(actions, "B") == [
        {
            "channel": "room",
            "part": 0,
            "parts": 1,
            "members": [{"sessionId": "a1", "userId": "ann", "metadata": {"s": 1}}],
        },
        {"channel": "empty", "part": 0, "parts": 1, "members": []},
    ]
    assert hub.interests() == {"B": ("room", "empty")}
    assert [m.session_id for m in hub.members()] == ["a1"]  # an interest is never a member
    # B tracks room: it hears the channel's presence and traffic.
    assert types_to(join(hub, "A", "amy", "a2", "room")) == {"B": ["JOIN"]}
    publish = send(hub, "A", "PUBLISH", channel="room", message={"type": "t"})
    assert types_to(publish) == {"B": ["PUBLISH"]}
    broadcast = send(hub, "A", "BROADCAST", ns="/ws", channel="room", message={"type": "t"})
    assert types_to(broadcast) == {"B": ["BROADCAST"]}


def test_a_bridge_gaining_its_first_member_of_a_channel_gets_the_members_once() -> None:
    hub = new_hub()
    register(hub, "A")
    register(hub, "B")
    join(hub, "A", "ann", "a1", "room")
    actions = join(hub, "B", "bob", "b1", "room", "solo")
    assert types_to(actions) == {"A": ["JOIN"], "B": ["MEMBERS", "MEMBERS"]}
    assert [m["members"] for m in members_of(actions, "B")] == [
        [{"sessionId": "a1", "userId": "ann"}],
        [],  # nobody else in "solo", but any stale roster of it must go
    ]
    assert types_to(join(hub, "B", "bea", "b2", "room")) == {"A": ["JOIN"]}  # no MEMBERS again


def test_subscribe_and_unsubscribe_are_routed_to_the_channel_s_bridges() -> None:
    hub = new_hub()
    register(hub, "A")
    register(hub, "B")
    register(hub, "C")
    join(hub, "A", "ann", "a1")
    join(hub, "B", "bob", "b1", "room")
    actions = send(hub, "A", "SUBSCRIBE", sessionId="a1", userId="ann", channel="room")
    assert types_to(actions) == {"B": ["SUBSCRIBE"], "A": ["MEMBERS"]}
    assert hub.members()[0].channels == ("room",)
    # Idempotent, and only the owner may change its session.
    assert send(hub, "A", "SUBSCRIBE", sessionId="a1", userId="ann", channel="room") == []
    assert send(hub, "C", "SUBSCRIBE", sessionId="a1", userId="ann", channel="x") == []
    assert send(hub, "C", "UNSUBSCRIBE", sessionId="a1", channel="room") == []
    assert send(hub, "A", "UNSUBSCRIBE", sessionId="a1", channel="nope") == []
    assert types_to(send(hub, "A", "UNSUBSCRIBE", sessionId="a1", channel="room")) == {
        "B": ["UNSUBSCRIBE"]
    }
    assert hub.members()[0].channels == ()


def test_a_publish_speaks_for_a_session_only_from_its_bridge_under_its_user() -> None:
    hub = new_hub()
    for bridge in ("A", "B", "C"):
        register(hub, bridge)
    join(hub, "A", "ann", "a1", "room")
    join(hub, "B", "bob", "b1", "room")
    signed = {"channel": "room", "message": {"type": "t"}}
    ann = {"userId": "ann", "sessionId": "a1"}
    assert types_to(send(hub, "A", "PUBLISH", **signed, **{"from": ann})) == {"B": ["PUBLISH"]}
    assert send(hub, "C", "PUBLISH", **signed, **{"from": ann}) == []  # not C's session
    forged = send(hub, "A", "PUBLISH", **signed, **{"from": {"userId": "eve", "sessionId": "a1"}})
    assert frames_to(forged) == {"A": [frames_to(forged)["A"][0]]}  # the error, to A only
    assert frames_to(forged)["A"][0]["payload"]["code"] == "session_taken"
    assert types_to(send(hub, "C", "PUBLISH", **signed)) == {"A": ["PUBLISH"], "B": ["PUBLISH"]}


@pytest.mark.parametrize("kind", ["presence.state", "welcome", "error", "server.notice"])
def test_a_message_of_a_server_type_is_refused_with_a_strike_and_not_routed(kind: str) -> None:
    hub = new_hub()
    for bridge in ("A", "B"):
        register(hub, bridge)
    join(hub, "B", "bob", "b1", "room")
    message = {"type": kind, "payload": "unsigned"}
    for frame, fields in (
        ("PUBLISH", {"channel": "room"}),
        ("BROADCAST", {"ns": "/ws", "channel": "room"}),
        ("DIRECT", {"userId": "bob"}),
    ):
        actions = send(hub, "A", frame, **fields, message=message)
        assert list(frames_to(actions)) == ["A"]  # nothing reaches B
        (error,) = frames_to(actions)["A"]
        assert error["payload"]["code"] == "bad_frame"
        assert "reserved for the server" in error["payload"]["message"]


def test_a_subscribe_under_another_user_or_past_the_channel_limit_is_a_strike() -> None:
    hub = new_hub(max_channels_per_session=1)
    register(hub, "A")
    join(hub, "A", "ann", "a1", "room")
    actions = send(hub, "A", "SUBSCRIBE", sessionId="a1", userId="eve", channel="x")
    assert frames_to(actions)["A"][0]["payload"]["code"] == "session_taken"
    actions = send(hub, "A", "SUBSCRIBE", sessionId="a1", userId="ann", channel="x")
    assert frames_to(actions)["A"][0]["payload"]["code"] == "too_many_channels"
    assert hub.members()[0].channels == ("room",)


def test_a_join_that_moves_a_session_reaches_its_old_bridge_and_its_old_channels() -> None:
    hub = new_hub()
    for bridge in ("A", "B", "C", "D"):
        register(hub, bridge)
    join(hub, "A", "ann", "a1", "old")
    join(hub, "C", "cid", "c1", "old")
    join(hub, "D", "dan", "d1", "new")
    # a1 comes back on B, in "new": A drops its lingering copy; the session keeps "old"
    # (C sees no change) and gains "new" (D sees it join); B learns what it keeps.
    actions = join(hub, "B", "ann", "a1", "new")
    assert types_to(actions) == {
        "B": ["RESTORED", "MEMBERS", "MEMBERS"],
        "C": ["JOIN"],
        "A": ["JOIN"],
        "D": ["JOIN"],
    }
    assert frames_to(actions)["B"][0]["payload"] == {"sessionId": "a1", "channels": ["old", "new"]}
    assert frames_to(actions)["A"][0]["payload"]["channels"] == ["old", "new"]
    [moved] = hub.members()[2:]
    assert (moved.bridge_id, moved.channels) == ("B", ("old", "new"))
    assert send(hub, "A", "LEAVE", sessionId="a1") == []  # a late LEAVE from A changes nothing


def test_version_1_bridges_keep_working_and_never_see_version_2_frames() -> None:
    hub = new_hub()
    register(hub, "old", protocol=1)
    register(hub, "new")
    # The version 1 subscriber session is read as an interest, never listed.
    assert (
        send(
            hub, "old", "JOIN", userId="bridge:old", sessionId="bridge:old#room", channels=["room"]
        )
        == []
    )
    assert hub.interests() == {"old": ("room",)}
    assert hub.members() == []
    join(hub, "old", "ann", "a1", "room")
    actions = join(hub, "new", "bob", "b1", "room")
    assert types_to(actions) == {"old": ["JOIN"], "new": ["MEMBERS"]}
    assert send(hub, "new", "PUBLISH", channel="room", message={"type": "t"}) == []
    subscribe = send(hub, "new", "SUBSCRIBE", sessionId="b1", userId="bob", channel="room2")
    assert types_to(subscribe) == {"new": ["MEMBERS"]}
    assert types_to(send(hub, "new", "UNSUBSCRIBE", sessionId="b1", channel="room")) == {}
    # Its broadcasts, directs and presence go on as in version 1.
    broadcast = send(hub, "new", "BROADCAST", ns="/ws", channel="room", message={"type": "t"})
    assert types_to(broadcast) == {"old": ["BROADCAST"]}
    # A look-alike from another bridge id is a plain session.
    join(hub, "old", "bridge:x", "bridge:x#room", "room")
    assert "bridge:x#room" in {m.session_id for m in hub.members()}
    join(hub, "old", "bridge:old", "bridge:old#a", "a", "b")
    join(hub, "old", "bridge:old", "bridge:old#zz", "room")
    assert {"bridge:old#a", "bridge:old#zz"} <= {m.session_id for m in hub.members()}


def test_version_1_interests_are_capped() -> None:
    hub = new_hub(max_interest_channels=1)
    register(hub, "old", protocol=1)
    send(hub, "old", "JOIN", userId="bridge:old", sessionId="bridge:old#a", channels=["a"])
    actions = send(
        hub, "old", "JOIN", userId="bridge:old", sessionId="bridge:old#b", channels=["b"]
    )
    assert frames_to(actions)["old"][0]["payload"]["code"] == "too_many_channels"
    assert hub.interests() == {"old": ("a",)}


def test_members_come_in_parts_under_the_frame_limit() -> None:
    hub = Hub(
        HubConfig(
            hub_id="h",
            tokens=[TOKEN],
            max_frame_bytes=2_000,
            max_frames_per_second=1e9,
            frame_burst=1e9,
        )
    )
    register(hub, "A")
    for i in range(60):
        join(hub, "A", f"user-{i}", f"session-{i:04d}", "room")
    actions = register(hub, "B", channels=["room"])
    parts = members_of(actions, "B")
    assert len(parts) > 1
    assert all(len(f.data.encode()) <= 2_000 for f in actions if "MEMBERS" in f.data)  # type: ignore[union-attr]
    assert [p["part"] for p in parts] == list(range(len(parts)))
    assert {p["parts"] for p in parts} == {len(parts)}
    assert [m["sessionId"] for p in parts for m in p["members"]] == [
        f"session-{i:04d}" for i in range(60)
    ]


def test_a_bridge_that_goes_loses_its_interests_and_those_tracking_its_channels_hear_it() -> None:
    hub = new_hub()
    register(hub, "A", channels=["room"])
    register(hub, "B", channels=["room"])
    join(hub, "A", "ann", "a1", "room")
    actions = hub.handle(BridgeClosed(bridge="A", now=1))
    hub.check_invariants()
    assert types_to(actions) == {"B": ["BULK_LEAVE"]}
    assert hub.interests() == {"B": ("room",)}


# ------------------------------------------------------------ a bridge's side


def tracked(**config: Any) -> Any:
    """A registered bridge with a watcher (conn 1, sessions view) of ``room``; the leave
    grace is the default 5 s unless ``config`` says otherwise."""
    presence = hub_presence(presence_window=0, **config)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    drive(presence, Subscribe(conn=1, channel="room", mode="sessions", now=0))
    return presence


def hub_says(presence: Any, kind: str, now: float = 1, **payload: Any) -> dict[str, Any]:
    """What watcher 1 is told when the hub sends this frame (its one diff, or {})."""
    actions = drive(presence, HubFrameReceived(data=hub_frame(kind, **payload), now=now))
    return one_diff(actions)


def one_diff(actions: list[Any]) -> dict[str, Any]:
    messages = presence_messages(actions, 1)
    assert len(messages) <= 1
    return messages[0] if messages else {}


def later(presence: Any, now: float) -> dict[str, Any]:
    """What watcher 1 is told when time reaches ``now`` (its one diff, or {})."""
    return one_diff(drive(presence, Tick(now=now)))


def test_other_bridges_members_reach_the_watchers_for_tracked_channels_only() -> None:
    presence = tracked()
    diff = hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room", "elsewhere"])
    assert list(diff["joins"]) == ["b1"]
    assert presence.presence_stats("room") == (2, 2)
    assert presence.presence_stats("elsewhere") == (0, 0)  # not tracked here: not kept
    diff = hub_says(presence, "METADATA", sessionId="b1", metadata={"s": 2})
    assert diff["updates"]["b1"]["metadata"] == {"s": 2}
    assert hub_says(presence, "METADATA", sessionId="nobody", metadata={}) == {}
    diff = hub_says(presence, "SUBSCRIBE", sessionId="c1", userId="cid", channel="room")
    assert list(diff["joins"]) == ["c1"]
    assert hub_says(presence, "SUBSCRIBE", sessionId="c1", userId="cid", channel="untracked") == {}
    diff = hub_says(presence, "UNSUBSCRIBE", sessionId="c1", channel="room")
    assert list(diff["leaves"]) == ["c1"]
    diff = hub_says(presence, "LEAVE", sessionId="b1")
    assert list(diff["leaves"]) == ["b1"]
    assert hub_says(presence, "HEARTBEAT") == {}


def test_a_bulk_leave_is_a_link_that_went_its_members_leave_after_the_grace() -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b2", channels=["room"])
    hub_says(presence, "JOIN", userId="bob", sessionId="b3", channels=["room"])
    assert hub_says(presence, "BULK_LEAVE", bridgeId="B", sessionIds=["b2", "b3", "zz"]) == {}
    assert presence.presence_stats("room") == (3, 2)  # kept: B's link may come back
    assert later(presence, 5.9) == {}
    # B registers again and resyncs b2: confirmed, never seen leaving; b3 never comes.
    assert hub_says(presence, "JOIN", now=3, userId="bob", sessionId="b2", channels=["room"]) == {}
    assert list(later(presence, 6)["leaves"]) == ["b3"]
    assert later(presence, 60) == {}
    assert presence.presence_stats("room") == (2, 2)


def test_without_a_leave_grace_a_bulk_leave_and_members_act_at_once() -> None:
    presence = tracked(leave_grace=0)
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    hub_says(presence, "JOIN", userId="cid", sessionId="c1", channels=["room"])
    diff = hub_says(presence, "BULK_LEAVE", bridgeId="B", sessionIds=["b1"])
    assert list(diff["leaves"]) == ["b1"]
    diff = hub_says(presence, "MEMBERS", channel="room", part=0, parts=1, members=[])
    assert list(diff["leaves"]) == ["c1"]


def test_members_confirm_those_they_list_and_the_others_leave_after_the_grace() -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    hub_says(presence, "JOIN", userId="cid", sessionId="c1", channels=["room"])
    hub_says(presence, "JOIN", userId="eve", sessionId="e1", channels=["room"])
    one = {"sessionId": "c1", "userId": "cid", "metadata": {"s": 9}}
    diff = hub_says(presence, "MEMBERS", channel="room", part=0, parts=2, members=[one])
    assert (list(diff.get("leaves", [])), list(diff["updates"])) == ([], ["c1"])
    two = {"sessionId": "d1", "userId": "dan"}
    diff = hub_says(presence, "MEMBERS", channel="room", part=1, parts=2, members=[two])
    assert list(diff["joins"]) == ["d1"]
    assert hub_says(presence, "MEMBERS", channel="other", part=0, parts=1, members=[two]) == {}
    # b1 and e1 were not listed: kept for the grace; e1 subscribes again meanwhile.
    diff = hub_says(presence, "SUBSCRIBE", now=2, sessionId="e1", userId="eve", channel="room")
    assert diff == {}
    assert list(later(presence, 6)["leaves"]) == ["b1"]
    assert presence.presence_stats("room") == (4, 4)


def test_a_stale_member_that_leaves_meanwhile_leaves_once() -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    hub_says(presence, "MEMBERS", channel="room", part=0, parts=1, members=[])
    assert list(hub_says(presence, "LEAVE", now=2, sessionId="b1")["leaves"]) == ["b1"]
    assert later(presence, 10) == {}  # its grace ends with nothing left to remove
    # A part that comes without its first (a link lost mid-way) only adds.
    two = {"sessionId": "d1", "userId": "dan"}
    diff = hub_says(presence, "MEMBERS", channel="room", part=1, parts=2, members=[two])
    assert list(diff["joins"]) == ["d1"]


def test_a_bridge_forgets_what_it_no_longer_tracks_and_keeps_what_is_stale() -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    hub_says(presence, "MEMBERS", channel="room", part=0, parts=2, members=[])
    # The link drops (its MEMBERS half read): what the hub told us stays (stale, not gone).
    actions = drive(presence, HubLost(now=2, code=1006))
    assert presence_messages(actions, 1) == []
    assert presence.presence_stats("room") == (2, 2)
    # The last local member leaves room: the hub no longer routes it to us, so it goes,
    # and so does the MEMBERS under way.
    drive(presence, Unsubscribe(conn=1, channel="room", now=3))
    assert presence.presence_stats("room") == (0, 0)
    assert presence.channel_members("room") == []
    presence.check_invariants()


@pytest.mark.parametrize("confirmed", [True, False])
def test_after_a_new_hub_registers_a_member_not_yet_resynced_is_kept_for_the_grace(
    confirmed: bool,
) -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    drive(presence, HubLost(now=2, code=1006), Tick(now=100), _HubConnected(now=100))
    actions = drive(presence, HubFrameReceived(data=registered_frame("hub-2"), now=100))
    assert [json.loads(a.data)["type"] for a in actions if hasattr(a, "data")] == ["JOIN"]
    # We registered first: the new hub knows nobody else in room yet.
    assert hub_says(presence, "MEMBERS", now=100, channel="room", part=0, parts=1, members=[]) == {}
    if confirmed:  # bob's bridge registers 3 s later and resyncs him: nothing to see
        joined = hub_says(
            presence, "JOIN", now=103, userId="bob", sessionId="b1", channels=["room"]
        )
        assert joined == {}
        assert later(presence, 200) == {}
        assert presence.presence_stats("room") == (2, 2)
    else:  # bob is gone for good: he leaves once, when the grace ends
        assert later(presence, 104.9) == {}
        assert list(later(presence, 105)["leaves"]) == ["b1"]


def test_shutdown_forgets_the_stale_members_and_their_timers() -> None:
    presence = tracked()
    hub_says(presence, "JOIN", userId="bob", sessionId="b1", channels=["room"])
    hub_says(presence, "BULK_LEAVE", bridgeId="B", sessionIds=["b1"])
    drive(presence, ShutdownRequested())
    assert presence.next_deadline() is None
    presence.check_invariants()


def test_interest_channels_are_tracked_without_a_member() -> None:
    presence = hub_presence(channels=["lobby"], presence_window=0)
    drive(
        presence,
        HubFrameReceived(
            data=hub_frame("JOIN", userId="bob", sessionId="b1", channels=["lobby"]), now=1
        ),
    )
    assert presence.presence_stats("lobby") == (1, 1)
    assert [m.user_id for m in presence.channel_members("lobby")] == ["bob"]
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    drive(presence, ConnectionClosed(conn=1, now=2), Tick(now=10))
    assert presence.presence_stats("lobby") == (1, 1)  # still tracked: the interest holds


def test_a_lingering_resync_never_takes_a_session_from_the_bridge_holding_it() -> None:
    hub = new_hub()
    register(hub, "A")
    register(hub, "B")
    join(hub, "B", "ann", "a1", "room", claim=4)  # it came back on B while A's link was down
    # A hears who holds it (as for a move: its lingering claim is superseded), since it
    # may have registered after B's JOIN was routed.
    actions = join(hub, "A", "ann", "a1", "room", lingering=True, claim=7)
    assert frames_to(actions) == {
        "A": [
            {
                "type": "JOIN",
                "payload": {
                    "userId": "ann",
                    "sessionId": "a1",
                    "channels": ["room"],
                    "claim": 4,
                    "supersedes": 7,
                },
            }
        ]
    }
    [held] = hub.members()
    assert held.bridge_id == "B"
    # A's other sessions resync as usual, and A learns from MEMBERS where a1 is.
    actions = join(hub, "A", "bob", "b1", "room")
    assert [m["sessionId"] for p in members_of(actions, "A") for m in p["members"]] == ["a1"]


def test_a_bridge_s_view_tolerates_repeated_and_unknown_changes() -> None:
    presence = tracked()
    hub_says(presence, "SUBSCRIBE", sessionId="c1", userId="cid", channel="room")
    assert hub_says(presence, "SUBSCRIBE", sessionId="c1", userId="cid", channel="room") == {}
    assert hub_says(presence, "UNSUBSCRIBE", sessionId="nobody", channel="room") == {}
    assert hub_says(presence, "UNSUBSCRIBE", sessionId="c1", channel="other") == {}
    hub_says(
        presence,
        "MEMBERS",
        channel="room",
        part=1,
        parts=2,
        members=[{"sessionId": "c1", "userId": "cid"}],
    )
    assert presence.presence_stats("room") == (2, 2)


@pytest.mark.parametrize("protocol", [1, 2])
def test_the_hub_accepts_both_protocols(protocol: int) -> None:
    hub = new_hub()
    assert types_to(register(hub, "A", protocol=protocol)) == {"A": ["REGISTERED"]}
