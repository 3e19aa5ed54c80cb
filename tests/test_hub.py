"""The hub machine: authentication, registration, routing, limits, incarnations, drain."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import attrs
import pytest

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    Hub,
    HubConfig,
    Limits,
    LocalUsageError,
    Log,
    Message,
    Presence,
    PresenceConfig,
    SessionJoined,
    ShutdownRequested,
    Tick,
)
from megapresence_core.actions import (
    AcceptBridge,
    CloseBridge,
    PauseBridge,
    RefuseBridge,
    SendBridgeFrame,
    SendHubFrame,
)
from megapresence_core.events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    HubFrameReceived,
)
from megapresence_core.hub import HubMember
from megapresence_core.lifecycle import BridgeState

from .helpers import hub_frame, hub_presence, open_joined, sent_frames

TOKEN = "secret-token"


def new_hub(**config: Any) -> Hub:
    return Hub(HubConfig(hub_id="hub-1", tokens=[TOKEN, "rotated-token"], **config))


def frames_to(actions: list[Any]) -> dict[Hashable, list[dict[str, Any]]]:
    """bridge -> the frames sent to it, decoded."""
    out: dict[Hashable, list[dict[str, Any]]] = {}
    for action in actions:
        if isinstance(action, SendBridgeFrame):
            for bridge in action.bridges:
                out.setdefault(bridge, []).append(json.loads(action.data))
    return out


def send(hub: Hub, bridge: Hashable, kind: str, now: float = 0.0, **payload: Any) -> list[Any]:
    actions = hub.handle(
        BridgeFrameReceived(bridge=bridge, data=hub_frame(kind, **payload), now=now)
    )
    hub.check_invariants()
    return actions


def connect(
    hub: Hub, bridge: Hashable, bridge_id: str | None = None, instance: str = "i1", now: float = 0.0
) -> list[Any]:
    assert hub.handle(
        BridgeConnecting(bridge=bridge, authorization=f"Bearer {TOKEN}", now=now)
    ) == [AcceptBridge(bridge=bridge)]
    return send(
        hub,
        bridge,
        "REGISTER",
        now,
        bridgeId=bridge_id or str(bridge),
        instanceId=instance,
        protocol=1,
    )


def join(
    hub: Hub, bridge: Hashable, user: str, session: str, *channels: str, **extra: Any
) -> list[Any]:
    return send(
        hub, bridge, "JOIN", userId=user, sessionId=session, channels=list(channels), **extra
    )


def three_bridges() -> Hub:
    hub = new_hub()
    for bridge in ("A", "B", "C"):
        connect(hub, bridge)
    join(hub, "A", "ann", "a1", "room")
    join(hub, "B", "bob", "b1", "room")
    join(hub, "C", "cid", "c1", "other")
    return hub


# --------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic secret-token",
        f"Bearer {TOKEN}x",
        "Bearer \udcff",
    ],
)
def test_a_bad_token_is_refused_with_401_and_no_state(authorization: str | None) -> None:
    hub = new_hub()
    actions = hub.handle(BridgeConnecting(bridge="X", authorization=authorization, now=0))
    assert actions[-1] == RefuseBridge(bridge="X", status=401, reason="bad or missing bearer token")
    assert hub.bridge_state("X") is BridgeState.GONE
    with pytest.raises(LocalUsageError, match="unknown bridge"):
        hub.handle(BridgeFrameReceived(bridge="X", data="{}", now=0))


@pytest.mark.parametrize(
    "authorization", [f"Bearer {TOKEN}", "bearer rotated-token", f"  Bearer   {TOKEN}  "]
)
def test_every_configured_token_is_accepted(authorization: str) -> None:
    hub = new_hub()
    assert hub.handle(BridgeConnecting(bridge="X", authorization=authorization, now=0)) == [
        AcceptBridge(bridge="X")
    ]
    assert hub.bridge_state("X") is BridgeState.AWAITING_REGISTER


def test_connecting_the_same_bridge_twice_is_misuse() -> None:
    hub = new_hub()
    connect(hub, "A")
    with pytest.raises(LocalUsageError, match="already connected"):
        hub.handle(BridgeConnecting(bridge="A", authorization=f"Bearer {TOKEN}", now=0))


# ------------------------------------------------------- registration


def test_register_answers_registered_with_the_hub_epoch_and_interval() -> None:
    hub = new_hub(heartbeat_interval=7)
    actions = connect(hub, "A", "bridge-a")
    assert frames_to(actions) == {
        "A": [
            {
                "type": "REGISTERED",
                "payload": {
                    "hubId": "hub-1",
                    "heartbeatInterval": 7.0,
                    "capabilities": ["batch"],
                    "maxFramesPerSecond": 2000.0,
                    "frameBurst": 4000.0,
                    "maxFrameBytes": 81920,
                },
            }
        ]
    }
    assert hub.registered_bridges() == {"bridge-a": "A"}
    assert hub.hub_id == "hub-1"


@pytest.mark.parametrize(
    ("kind", "payload", "code"),
    [
        ("HEARTBEAT", {}, "not_registered"),
        ("REGISTER", {"bridgeId": "a", "instanceId": "i", "protocol": 3}, "unsupported_protocol"),
        (
            "REGISTER",
            {
                "bridgeId": "a",
                "instanceId": "i",
                "protocol": 2,
                "channels": [f"c{i}" for i in range(1001)],
            },
            "too_many_channels",
        ),
    ],
)
def test_protocol_violations_before_registration_close_with_1008(
    kind: str, payload: dict[str, Any], code: str
) -> None:
    hub = new_hub()
    hub.handle(BridgeConnecting(bridge="A", authorization=f"Bearer {TOKEN}", now=0))
    actions = send(hub, "A", kind, **payload)
    assert frames_to(actions)["A"][0]["payload"]["code"] == code
    assert [(a.code) for a in actions if isinstance(a, CloseBridge)] == [1008]
    assert hub.bridge_state("A") is BridgeState.CLOSING
    assert send(hub, "A", "HEARTBEAT") == []  # ignored while closing


def test_register_twice_on_one_link_is_fatal() -> None:
    hub = new_hub()
    connect(hub, "A")
    actions = send(hub, "A", "REGISTER", bridgeId="A", instanceId="i1", protocol=1)
    assert frames_to(actions)["A"][0]["payload"]["code"] == "already_registered"
    assert hub.bridge_state("A") is BridgeState.CLOSING


def test_a_bridge_that_never_registers_is_closed_after_the_timeout() -> None:
    hub = new_hub(register_timeout=5)
    hub.handle(BridgeConnecting(bridge="A", authorization=f"Bearer {TOKEN}", now=0))
    assert hub.next_deadline() == 5
    assert hub.handle(Tick(now=4)) == []
    assert hub.handle(Tick(now=5)) == [
        CloseBridge(bridge="A", code=1008, reason="no REGISTER in time")
    ]
    assert hub.handle(BridgeClosed(bridge="A", now=6)) == []
    assert hub.next_deadline() is None


# ------------------------------------------------------------ routing


def test_broadcast_goes_to_other_bridges_with_a_member_in_the_channel_never_the_origin() -> None:
    hub = three_bridges()
    actions = send(hub, "A", "BROADCAST", ns="/ws", channel="room", message={"type": "t"})
    assert frames_to(actions) == {
        "B": [
            {
                "type": "BROADCAST",
                "payload": {"ns": "/ws", "channel": "room", "message": {"type": "t"}},
            }
        ]
    }
    assert send(hub, "C", "BROADCAST", ns="/ws", channel="nobody", message={"type": "t"}) == []


def test_bridge_subscriber_sessions_make_a_bridge_receive_its_channels() -> None:
    hub = three_bridges()
    join(hub, "C", "bridge:C", "bridge:C#room", "room")
    actions = send(hub, "A", "BROADCAST", ns="/ws", channel="room", message={"type": "t"})
    assert set(frames_to(actions)) == {"B", "C"}


def test_direct_goes_to_other_bridges_holding_a_session_of_the_user() -> None:
    hub = three_bridges()
    join(hub, "C", "bob", "b2", "other")
    actions = send(hub, "A", "DIRECT", userId="bob", message={"type": "dm"})
    assert set(frames_to(actions)) == {"B", "C"}
    assert set(frames_to(send(hub, "B", "DIRECT", userId="ann", message={"type": "dm"}))) == {"A"}
    assert send(hub, "A", "DIRECT", userId="ann", message={"type": "dm"}) == []  # no echo
    assert send(hub, "A", "DIRECT", userId="nobody", message={"type": "dm"}) == []


def test_disconnect_goes_to_the_sessions_owner_only() -> None:
    hub = three_bridges()
    actions = send(hub, "A", "DISCONNECT", sessionId="c1", reason="bye", requeue=True)
    assert frames_to(actions) == {
        "C": [
            {"type": "DISCONNECT", "payload": {"sessionId": "c1", "reason": "bye", "requeue": True}}
        ]
    }
    assert send(hub, "A", "DISCONNECT", sessionId="a1") == []  # its own: nothing to route
    assert send(hub, "A", "DISCONNECT", sessionId="ghost") == []


def test_join_leave_metadata_go_to_bridges_sharing_a_channel() -> None:
    hub = three_bridges()
    actions = join(hub, "C", "dan", "d1", "room", "other", metadata={"s": 1})
    assert set(frames_to(actions)) == {"A", "B"}
    actions = send(hub, "C", "METADATA", sessionId="d1", metadata={"s": 2})
    assert set(frames_to(actions)) == {"A", "B"}
    assert {m.session_id: m.metadata for m in hub.members()}["d1"] == {"s": 2}
    actions = send(hub, "C", "LEAVE", sessionId="d1")
    assert set(frames_to(actions)) == {"A", "B"}
    assert "d1" not in {m.session_id for m in hub.members()}


def test_only_the_owner_can_leave_or_update_a_session() -> None:
    hub = three_bridges()
    assert send(hub, "B", "LEAVE", sessionId="a1") == []
    assert send(hub, "B", "METADATA", sessionId="a1", metadata={"x": 1}) == []
    assert {m.session_id: m.metadata for m in hub.members()}["a1"] is None


def test_a_session_joining_on_another_bridge_moves_and_a_stale_leave_cannot_remove_it() -> None:
    hub = three_bridges()
    join(hub, "B", "ann", "a1", "room")
    assert {m.session_id: m.bridge_id for m in hub.members()}["a1"] == "B"
    assert send(hub, "A", "LEAVE", sessionId="a1") == []
    assert {m.session_id: m.bridge_id for m in hub.members()}["a1"] == "B"


def test_a_rejoin_replaces_channels_and_metadata() -> None:
    hub = three_bridges()
    join(hub, "A", "ann", "a1", "other", metadata={"v": 2})
    assert [m for m in hub.members() if m.session_id == "a1"] == [
        HubMember(
            bridge_id="A", session_id="a1", user_id="ann", channels=("other",), metadata={"v": 2}
        )
    ]
    actions = send(hub, "B", "BROADCAST", ns="/ws", channel="room", message={"type": "t"})
    assert frames_to(actions) == {}


# ---------------------------------------------------- bridges going away


def test_a_closed_bridge_loses_its_sessions_with_one_bulk_leave_to_channel_peers() -> None:
    hub = three_bridges()
    join(hub, "A", "ann", "a2", "other")
    actions = hub.handle(BridgeClosed(bridge="A", now=1))
    assert frames_to(actions) == {
        "B": [{"type": "BULK_LEAVE", "payload": {"bridgeId": "A", "sessionIds": ["a1", "a2"]}}],
        "C": [{"type": "BULK_LEAVE", "payload": {"bridgeId": "A", "sessionIds": ["a1", "a2"]}}],
    }
    assert {m.bridge_id for m in hub.members()} == {"B", "C"}
    hub.check_invariants()


def test_a_bridge_without_sessions_goes_quietly() -> None:
    hub = new_hub()
    connect(hub, "A")
    actions = hub.handle(BridgeClosed(bridge="A", now=1))
    assert [a.event for a in actions if isinstance(a, Log)] == ["hub.bridge.gone"]
    assert frames_to(actions) == {}


def test_a_silent_bridge_is_closed_and_purged_at_once() -> None:
    hub = new_hub(heartbeat_interval=10, dead_after_intervals=3)
    connect(hub, "A")
    connect(hub, "B")
    join(hub, "A", "ann", "a1", "room")
    join(hub, "B", "bob", "b1", "room")
    for now in (10, 20):
        send(hub, "B", "HEARTBEAT", now=now)
        actions = hub.handle(Tick(now=now))
        assert frames_to(actions) == {
            "A": [{"type": "HEARTBEAT", "payload": {}}],
            "B": [{"type": "HEARTBEAT", "payload": {}}],
        }
    send(hub, "B", "HEARTBEAT", now=29)
    actions = hub.handle(Tick(now=30))
    assert CloseBridge(bridge="A", code=1001, reason="bridge silent") in actions
    assert frames_to(actions)["B"] == [
        {"type": "BULK_LEAVE", "payload": {"bridgeId": "A", "sessionIds": ["a1"]}},
        {"type": "HEARTBEAT", "payload": {}},
    ]
    assert [m.session_id for m in hub.members()] == ["b1"]
    assert hub.handle(BridgeClosed(bridge="A", now=31)) == []
    assert hub.next_deadline() == 40  # the next heartbeat to B


def test_a_new_incarnation_replaces_and_purges_the_old_one_at_once() -> None:
    hub = new_hub()
    connect(hub, "old", "bridge-a", instance="boot-1")
    connect(hub, "B")
    join(hub, "old", "ann", "a1", "room")
    join(hub, "B", "bob", "b1", "room")
    actions = connect(hub, "new", "bridge-a", instance="boot-2")
    assert [a.fields for a in actions if isinstance(a, Log)] == [
        {"bridge_id": "bridge-a", "new_incarnation": True}
    ]
    assert CloseBridge(bridge="old", code=1008, reason="replaced by a newer connection") in actions
    assert frames_to(actions)["B"] == [
        {"type": "BULK_LEAVE", "payload": {"bridgeId": "bridge-a", "sessionIds": ["a1"]}}
    ]
    assert hub.registered_bridges() == {"bridge-a": "new", "B": "B"}
    assert [m.session_id for m in hub.members()] == ["b1"]
    # The old link's late close changes nothing for the new one.
    assert hub.handle(BridgeClosed(bridge="old", now=1)) == []
    assert hub.registered_bridges()["bridge-a"] == "new"


def test_drain_closes_every_bridge_with_4503_and_refuses_newcomers() -> None:
    hub = three_bridges()
    actions = hub.handle(ShutdownRequested())
    assert sorted((a.bridge, a.code) for a in actions if isinstance(a, CloseBridge)) == [
        ("A", 4503),
        ("B", 4503),
        ("C", 4503),
    ]
    assert frames_to(actions) == {}  # no BULK_LEAVE to bridges that are all leaving
    assert hub.members() == []
    assert hub.handle(BridgeConnecting(bridge="D", authorization=f"Bearer {TOKEN}", now=0)) == [
        RefuseBridge(bridge="D", status=503, reason="hub is draining")
    ]
    assert hub.handle(ShutdownRequested()) == []


# --------------------------------------------------------------- limits


def strikes(actions: list[Any]) -> list[str]:
    return [
        f["payload"]["code"]
        for frames in frames_to(actions).values()
        for f in frames
        if f["type"] == "ERROR"
    ]


def test_bad_frames_get_error_and_the_third_closes_only_that_bridge() -> None:
    hub = three_bridges()
    assert strikes(hub.handle(BridgeFrameReceived(bridge="A", data="nope", now=0))) == ["bad_json"]
    assert strikes(send(hub, "A", "BULK_LEAVE", bridgeId="x", sessionIds=[])) == ["unexpected_type"]
    assert hub.bridge_state("A") is BridgeState.REGISTERED
    actions = send(hub, "A", "WHAT")
    assert strikes(actions) == ["unknown_type"]
    assert CloseBridge(bridge="A", code=1008, reason="too many errors (last: unknown_type)") in (
        actions
    )
    assert hub.bridge_state("B") is BridgeState.REGISTERED
    assert "a1" not in {m.session_id for m in hub.members()}


def test_frame_size_limit() -> None:
    hub = new_hub(max_frame_bytes=100)
    connect(hub, "A")
    actions = send(hub, "A", "DIRECT", userId="u", message={"type": "t", "payload": "x" * 100})
    assert strikes(actions) == ["too_big"]


def test_channels_metadata_and_sessions_limits_cost_the_session_not_the_link() -> None:
    hub = new_hub(
        max_channels_per_session=2, max_metadata_bytes=10, max_sessions_per_bridge=2, max_errors=1
    )
    connect(hub, "A")
    assert strikes(join(hub, "A", "u", "s1", "a", "b", "c")) == ["too_many_channels"]
    assert strikes(join(hub, "A", "u", "s1", metadata={"k": "0123456789"})) == ["metadata_too_big"]
    join(hub, "A", "u", "s1")
    join(hub, "A", "u", "s2")
    assert strikes(join(hub, "A", "u", "s3")) == ["too_many_sessions"]
    assert strikes(join(hub, "A", "u", "s2", "a")) == []  # a re-join is not a new session
    assert strikes(send(hub, "A", "METADATA", sessionId="s1", metadata={"k": "0123456789"})) == [
        "metadata_too_big"
    ]
    assert sorted(m.session_id for m in hub.members()) == ["s1", "s2"]
    # Each refusal named its session; none was a strike (one would have closed the link).
    assert hub.bridge_state("A") is BridgeState.REGISTERED
    actions = join(hub, "A", "u", "s9", "a", "b", "c")
    assert [f["payload"]["sessionId"] for f in frames_to(actions)["A"]] == ["s9"]


def pauses(actions: list[Any]) -> list[float]:
    return [a.until for a in actions if isinstance(a, PauseBridge)]


def test_over_the_frame_rate_a_bridge_is_paused_not_refused() -> None:
    hub = new_hub(max_frames_per_second=10, frame_burst=3, max_errors=1)
    three = connect(hub, "A")  # the REGISTER used one of the three
    assert pauses(three) == []
    assert pauses(send(hub, "A", "HEARTBEAT", now=0)) == []
    assert pauses(send(hub, "A", "HEARTBEAT", now=0)) == []
    # Over the bucket: the frame is handled, and the shim reads nothing more from the
    # bridge until its debt (one frame at 10 per second) is repaid. No ERROR, no strike.
    actions = send(hub, "A", "HEARTBEAT", now=0)
    assert strikes(actions) == []
    assert pauses(actions) == [pytest.approx(0.1)]
    actions = send(hub, "A", "HEARTBEAT", now=0.05)  # read anyway (already in a buffer)
    assert pauses(actions) == [pytest.approx(0.2)]
    assert pauses(send(hub, "A", "HEARTBEAT", now=10)) == []  # the bucket refilled
    assert hub.bridge_state("A") is BridgeState.REGISTERED


def test_strikes_decay_with_time() -> None:
    hub = new_hub(max_errors=3, error_decay=10)
    connect(hub, "A")
    for now in (0, 10, 20, 30, 40):  # one bad frame every 10 s: each forgiven by the next
        actions = hub.handle(BridgeFrameReceived(bridge="A", data="nope", now=now))
        assert strikes(actions) == ["bad_json"]
        assert not [a for a in actions if isinstance(a, CloseBridge)]
    # The one at 40 is not forgiven before 50: with two more at 45, three close it.
    hub.handle(BridgeFrameReceived(bridge="A", data="nope", now=45))
    actions = hub.handle(BridgeFrameReceived(bridge="A", data="nope", now=45))
    assert CloseBridge(bridge="A", code=1008, reason="too many errors (last: bad_json)") in actions


def closes(hub: Hub, now: float) -> bool:
    """Send "A" a bad frame at ``now``: whether that closed its link."""
    actions = hub.handle(BridgeFrameReceived(bridge="A", data="nope", now=now))
    assert strikes(actions) == ["bad_json"]
    return any(isinstance(a, CloseBridge) for a in actions)


def test_the_third_strike_in_a_decay_period_closes_however_they_are_spread() -> None:
    hub = new_hub(max_errors=3, error_decay=10)
    connect(hub, "A")
    assert [closes(hub, now) for now in (0.0, 0.1, 0.2)] == [False, False, True]


def test_a_strike_is_forgiven_per_whole_decay_period() -> None:
    hub = new_hub(max_errors=3, error_decay=10)
    connect(hub, "A")
    assert [closes(hub, now) for now in (0.0, 1.0, 10.5)] == [False, False, False]  # 2 - 1 + 1
    assert closes(hub, 19.9)  # the next is forgiven at 20 (10 after the first): 3


def test_handle_refuses_what_is_not_a_hub_event() -> None:
    with pytest.raises(LocalUsageError, match="not a hub event"):
        new_hub().handle("tick")  # type: ignore[arg-type]


# ------------------------------------------------- one chain of limits, in bytes


def test_a_session_held_by_another_user_cannot_be_joined_from_any_bridge() -> None:
    hub = three_bridges()
    before = hub.members()
    for bridge in ("A", "B"):  # its own bridge or another
        for _ in range(5):  # never a strike: the refusal costs the session, not the link
            actions = join(hub, bridge, "mallory", "a1", "room")
            [error] = frames_to(actions)[bridge]
            assert (error["type"], error["payload"]["code"]) == ("ERROR", "session_taken")
            assert error["payload"]["sessionId"] == "a1"
            assert [a.event for a in actions if isinstance(a, Log)] == ["hub.session.refused"]
            assert not [a for a in actions if isinstance(a, CloseBridge)]
            assert not [
                a for a in actions if isinstance(a, SendBridgeFrame) and a.bridges != (bridge,)
            ]
        assert hub.bridge_state(bridge) is BridgeState.REGISTERED
    assert hub.members() == before
    # The same user may still move the session to another bridge.
    join(hub, "B", "ann", "a1", "room")
    assert {m.session_id: m.bridge_id for m in hub.members()}["a1"] == "B"


def _chain() -> tuple[Presence, Hub, Presence]:
    sender, receiver = hub_presence("A"), hub_presence("B")
    hub = new_hub(max_frames_per_second=1e9, frame_burst=1e9)
    connect(hub, "A")
    connect(hub, "B")
    [joined] = sent_frames(
        open_joined(receiver, "listener", "bob", "b1", ns=NS, channels=[CHANNEL])
    )
    send(hub, "B", "JOIN", **joined["payload"])
    return sender, hub, receiver


#: Names at Limits.max_name_bytes, each byte a control character: six bytes once escaped.
NS = "/" + "\x01" * 255
CHANNEL = "\x02" * 256


def _message_of(size: int) -> Message:
    overhead = Message(type="t", payload="").size
    message = Message(type="t", payload="x" * (size - overhead))
    assert message.size == size
    return message


def _relay(sender: Presence, hub: Hub, receiver: Presence, event: Any) -> list[Any]:
    """Send through every hop: bridge A's core, the hub's core, bridge B's core."""
    [frame] = [a for a in sender.handle(event) if isinstance(a, SendHubFrame)]
    routed = hub.handle(BridgeFrameReceived(bridge="A", data=frame.data, now=1))
    [forward] = [a for a in routed if isinstance(a, SendBridgeFrame)]
    assert forward.bridges == ("B",)
    return receiver.handle(HubFrameReceived(data=forward.data, now=1))


def test_the_largest_legal_message_crosses_every_hop_and_one_byte_more_is_refused_first() -> None:
    limits = Limits()
    assert HubConfig(hub_id="h", tokens=["t"]).max_frame_bytes == limits.max_hub_frame_bytes
    sender, hub, receiver = _chain()
    largest = _message_of(limits.max_message_bytes)
    delivered = _relay(
        sender, hub, receiver, BroadcastRequested(ns=NS, channel=CHANNEL, message=largest)
    )
    [deliver] = delivered
    assert isinstance(deliver, Deliver)
    assert deliver.conns == ("listener",)
    assert json.loads(deliver.text)["payload"] == largest.payload
    # One byte more is refused by the first hop, naming the limit, and nothing is sent.
    too_big = _message_of(limits.max_message_bytes + 1)
    with pytest.raises(LocalUsageError, match=r"Limits\.max_message_bytes") as info:
        sender.handle(BroadcastRequested(ns=NS, channel=CHANNEL, message=too_big))
    assert (info.value.close_code, info.value.http_status) == (1009, 413)
    with pytest.raises(LocalUsageError, match=r"Limits\.max_message_bytes"):
        sender.handle(DirectRequested(user_id="bob", message=too_big))


def test_a_request_whose_hub_frame_would_not_fit_is_refused_before_anything_happens() -> None:
    sender, hub, receiver = _chain()
    open_joined(sender, "here", "ann", "a1", ns=NS)
    excepted = [f"s{n:05}" for n in range(3000)]  # 24 KB of routing on top of the message
    event = BroadcastRequested(
        ns=NS, channel=CHANNEL, message=_message_of(60_000), except_session_ids=excepted
    )
    with pytest.raises(LocalUsageError, match=r"hub frame would be \d+ bytes.*max_hub_frame_bytes"):
        sender.handle(event)
    assert _relay(sender, hub, receiver, attrs.evolve(event, except_session_ids=excepted[:100]))


def test_names_over_max_name_bytes_are_refused() -> None:
    presence = hub_presence("A")
    with pytest.raises(LocalUsageError, match=r"ns is 257 bytes.*Limits\.max_name_bytes"):
        presence.handle(ConnectionOpened(conn=1, ns="/" + "x" * 256))
    with pytest.raises(LocalUsageError, match=r"channel is 258 bytes"):
        presence.handle(BroadcastRequested(ns="/ws", channel="é" * 129, message={"type": "t"}))
    presence.handle(ConnectionOpened(conn=1, ns="/ws"))
    with pytest.raises(LocalUsageError, match=r"session_id is 300 bytes"):
        presence.handle(SessionJoined(conn=1, user_id="u", session_id="s" * 300, now=0.0))
    with pytest.raises(LocalUsageError, match=r"channel is 257 bytes"):
        presence.handle(
            SessionJoined(conn=1, user_id="u", session_id="s", channels=["c" * 257], now=0.0)
        )


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Limits(max_message_bytes=80_000),
            r"max_hub_frame_bytes \(81920\) must hold the largest message plus its routing",
        ),
        (
            lambda: Limits(max_name_bytes=4096),
            r"at least 114756 \(max_message_bytes 65536 \+ 49220",
        ),
        (
            lambda: PresenceConfig(
                cluster=ClusterConfig(app="a", instance_id="i", epoch=1, max_message_bytes=70_000)
            ),
            r"cluster.max_message_bytes \(70000\) must hold what a hub frame holds",
        ),
    ],
)
def test_limits_that_do_not_chain_fail_when_the_config_is_built(build: Any, match: str) -> None:
    with pytest.raises(LocalUsageError, match=match):
        build()


def test_a_cluster_message_over_its_limit_is_refused_naming_it() -> None:
    limits = Limits(max_message_bytes=1000, max_name_bytes=16, max_hub_frame_bytes=2000)
    cluster = ClusterConfig(app="a", instance_id="i", epoch=1, max_message_bytes=2000)
    presence = Presence(PresenceConfig(cluster=cluster, limits=limits))
    event = BroadcastRequested(
        ns="/ws",
        channel="c",
        message=_message_of(1000),
        except_session_ids=[f"s{n:04}" for n in range(200)],
    )
    with pytest.raises(LocalUsageError, match=r"ClusterConfig\.max_message_bytes"):
        presence.handle(event)
