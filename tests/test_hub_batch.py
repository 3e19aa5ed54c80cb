"""Batching on hub links: the ``batch`` capability, both ends, old peers, bad frames, limits."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

from megapresence_core import (
    BroadcastRequested,
    CloseCode,
    HubLinkConfig,
    Log,
    Presence,
    PresenceConfig,
    Tick,
)
from megapresence_core.actions import CloseBridge, PauseBridge, SendBridgeFrame, SendHubFrame
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import BridgeState
from megapresence_core.wire import RegisteredFrame, encode, split_hub_batch, unbroken_frame

from .helpers import deliveries, drive, hub_frame, open_joined
from .test_hub import TOKEN, frames_to, new_hub

BATCH = ["batch"]


def register(hub: Any, bridge: Hashable, capabilities: list[str], protocol: int = 2) -> list[Any]:
    hub.handle(BridgeConnecting(bridge=bridge, authorization=f"Bearer {TOKEN}", now=0))
    register = hub_frame(
        "REGISTER",
        bridgeId=str(bridge),
        instanceId="i1",
        protocol=protocol,
        capabilities=capabilities,
    )
    actions: list[Any] = hub.handle(BridgeFrameReceived(bridge=bridge, data=register, now=0))
    return actions


def receive(hub: Any, bridge: Hashable, *frames: str) -> list[Any]:
    """``frames`` from ``bridge`` in one message."""
    actions: list[Any] = hub.handle(
        BridgeFrameReceived(bridge=bridge, data="\n".join(frames), now=0)
    )
    hub.check_invariants()
    return actions


def broadcast(n: object, channel: str = "room") -> str:
    return hub_frame("BROADCAST", ns="/ws", channel=channel, message={"type": "m", "payload": n})


def join(user: str, session: str, *channels: str) -> str:
    return hub_frame("JOIN", userId=user, sessionId=session, channels=list(channels))


def sends(actions: list[Any]) -> list[tuple[tuple[Hashable, ...], bool, Any]]:
    """(bridges, batch, the message's payload) of each BROADCAST sent."""
    out = []
    for action in actions:
        if isinstance(action, SendBridgeFrame):
            frame = json.loads(action.data)
            if frame["type"] == "BROADCAST":
                out.append((action.bridges, action.batch, frame["payload"]["message"]["payload"]))
    return out


# --------------------------------------------------------------- the hub


def test_registered_names_batch_travels_alone_and_what_follows_batches() -> None:
    hub = new_hub()
    [registered] = register(hub, "A", BATCH)
    assert isinstance(registered, SendBridgeFrame)
    assert not registered.batch  # the bridge learns from it that the link batches
    assert json.loads(registered.data)["payload"]["capabilities"] == ["batch"]
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    assert sends(receive(hub, "A", broadcast(1))) == [(("B",), True, 1)]


def test_a_bridge_without_batch_gets_single_frames_and_its_messages_are_never_split() -> None:
    hub = new_hub()
    register(hub, "A", [])  # a bridge of an older release: no capability named
    register(hub, "B", BATCH)
    receive(hub, "A", join("ann", "a1", "room"))
    receive(hub, "B", join("bob", "b1", "room"))
    # Pretty-printed JSON from an unbatched bridge: one frame, its line feeds whitespace.
    pretty = json.dumps(json.loads(broadcast("p")), indent=1)
    assert "\n" in pretty
    actions = receive(hub, "A", pretty)
    [to_b] = [a for a in actions if isinstance(a, SendBridgeFrame)]
    assert to_b.batch
    assert to_b.bridges == ("B",)
    assert "\n" not in to_b.data  # made fit to share a message, meaning the same
    assert json.loads(to_b.data) == json.loads(pretty)
    assert sends(receive(hub, "B", broadcast(2), broadcast(3))) == [
        (("A",), False, 2),
        (("A",), False, 3),
    ]


def test_a_hub_without_batching_is_an_old_hub_to_a_batching_bridge() -> None:
    hub = new_hub(batch_frames=False)
    [registered] = register(hub, "A", BATCH)
    assert "capabilities" not in json.loads(registered.data)["payload"]
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    actions = receive(hub, "A", broadcast(1), broadcast(2))  # not split: one bad frame
    assert frames_to(actions)["A"][0]["payload"]["code"] == "bad_json"
    assert sends(receive(hub, "A", broadcast(3))) == [(("B",), False, 3)]


def test_batched_and_unbatched_bridges_get_one_frame_each_in_order() -> None:
    hub = new_hub()
    for bridge, capabilities in (("A", BATCH), ("B", BATCH), ("C", []), ("D", BATCH)):
        register(hub, bridge, capabilities)
        receive(hub, bridge, join(f"u{bridge}", f"s{bridge}", "room"))
    actions = receive(hub, "A", *[broadcast(n) for n in range(3)])
    assert sends(actions) == [
        (("B", "D"), True, 0),
        (("C",), False, 0),
        (("B", "D"), True, 1),
        (("C",), False, 1),
        (("B", "D"), True, 2),
        (("C",), False, 2),
    ]


def test_a_bad_frame_in_a_batch_is_refused_alone_with_one_strike() -> None:
    hub = new_hub()
    register(hub, "A", BATCH)
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    actions = receive(
        hub, "A", broadcast(1), '{"type": "BROADCAST"', broadcast(2), "", broadcast(3)
    )
    errors = [f["payload"]["code"] for f in frames_to(actions)["A"]]
    assert errors == ["bad_json", "bad_json"]  # the cut frame and the empty one
    assert [n for bridges, _, n in sends(actions) if bridges == ("B",)] == [1, 2, 3]
    assert hub.bridge_state("A") is BridgeState.REGISTERED  # two strikes of three


def test_strikes_in_one_batch_close_the_bridge_and_what_follows_is_ignored() -> None:
    hub = new_hub(max_errors=2)
    register(hub, "A", BATCH)
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    actions = receive(hub, "A", broadcast(1), "x", "y", broadcast(2), "z")
    assert [n for bridges, _, n in sends(actions) if bridges == ("B",)] == [1]
    closes = [a for a in actions if isinstance(a, CloseBridge)]
    assert [(c.bridge, c.code) for c in closes] == [("A", CloseCode.POLICY)]
    assert len(frames_to(actions)["A"]) == 2  # an ERROR per strike, each before the close
    assert actions.index(closes[0]) > max(
        i for i, a in enumerate(actions) if isinstance(a, SendBridgeFrame) and a.bridges == ("A",)
    )


def test_the_rate_limit_counts_the_frames_of_a_batch() -> None:
    hub = new_hub(max_frames_per_second=1, frame_burst=4)
    register(hub, "A", BATCH)  # one frame of the burst
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    actions = receive(hub, "A", *[broadcast(n) for n in range(5)])
    # Every frame is routed (nothing refused), and the bridge, two frames over its
    # bucket, is not read again for the two seconds they cost at one per second.
    assert [n for bridges, _, n in sends(actions) if bridges == ("B",)] == [0, 1, 2, 3, 4]
    assert "A" not in frames_to(actions)
    assert [a.until for a in actions if isinstance(a, PauseBridge)] == [2.0]


def test_a_batch_over_the_frame_limit_is_refused_whole() -> None:
    hub = new_hub(max_frame_bytes=1_000)
    register(hub, "A", BATCH)
    register(hub, "B", BATCH)
    receive(hub, "B", join("bob", "b1", "room"))
    frame = broadcast("x" * 390)
    assert sends(receive(hub, "A", frame, frame)) != []  # 2 x 497 bytes and a line feed: 995
    actions = receive(hub, "A", frame, frame, frame)
    assert [a for a in actions if isinstance(a, SendBridgeFrame) and a.bridges == ("B",)] == []
    [error] = frames_to(actions)["A"]
    assert error["payload"]["code"] == "too_big"


def test_a_closing_bridge_batch_is_ignored_even_when_too_big() -> None:
    hub = new_hub(max_frame_bytes=200, max_errors=1)
    register(hub, "A", BATCH)
    receive(hub, "A", "junk")  # the strike that closes it
    assert hub.bridge_state("A") is BridgeState.CLOSING
    assert receive(hub, "A", "x" * 300) == []
    assert receive(hub, "A", broadcast(1), broadcast(2)) == []


def test_heartbeats_batch_to_batching_bridges_only() -> None:
    hub = new_hub(heartbeat_interval=1)
    register(hub, "A", BATCH)
    register(hub, "B", [])
    beats = [a for a in hub.handle(Tick(now=1.0)) if isinstance(a, SendBridgeFrame)]
    assert [(a.bridges, a.batch) for a in beats] == [(("A",), True), (("B",), False)]


# ---------------------------------------------------------- the bridge


def bridge(capabilities: tuple[str, ...] = ("broadcast", "batch")) -> Presence:
    link = HubLinkConfig(
        bridge_id="b1", instance_id="i1", channels=["room"], capabilities=capabilities
    )
    return Presence(PresenceConfig(hub_link=link))


def registered(*capabilities: str) -> str:
    return encode(RegisteredFrame(hub_id="h", heartbeat_interval=5, capabilities=capabilities))


def client_broadcast(n: int) -> str:
    return hub_frame("BROADCAST", ns="/ws", channel="room", message={"type": "m", "payload": n})


def link_up(presence: Presence, *registered_message: str) -> list[Any]:
    return drive(
        presence,
        HubLinkStarted(now=0),
        HubConnected(now=0),
        *[HubFrameReceived(data=text, now=0) for text in registered_message],
    )


def test_the_bridge_offers_batch_and_batches_once_the_hub_names_it() -> None:
    presence = bridge()
    [_, register_action] = drive(presence, HubLinkStarted(now=0), HubConnected(now=0))
    assert isinstance(register_action, SendHubFrame)
    assert not register_action.batch
    assert json.loads(register_action.data)["payload"]["capabilities"] == ["broadcast", "batch"]
    drive(presence, HubFrameReceived(data=registered("batch", "future"), now=0))
    joined = open_joined(presence, "c1", "ann", "a1", channels=["room"])
    assert [a.batch for a in joined if isinstance(a, SendHubFrame)] == [True]
    two = f"{client_broadcast(1)}\n{client_broadcast(2)}"
    actions = drive(presence, HubFrameReceived(data=two, now=1))
    assert [m["payload"] for m in deliveries(actions)["c1"]] == [1, 2]


def test_the_bridge_does_not_batch_with_an_old_hub_nor_when_it_does_not_offer() -> None:
    for presence, answer in (
        (bridge(), registered()),  # an older hub: REGISTERED names nothing
        (bridge(("broadcast",)), registered("batch")),  # this bridge does not offer it
    ):
        link_up(presence, answer)
        open_joined(presence, "c1", "ann", "a1", channels=["room"])
        actions = drive(
            presence, BroadcastRequested(ns="/ws", channel="room", message={"type": "m"})
        )
        assert [a.batch for a in actions if isinstance(a, SendHubFrame)] == [False]
        two = f"{client_broadcast(1)}\n{client_broadcast(2)}"
        actions = drive(presence, HubFrameReceived(data=two, now=1))
        assert "c1" not in deliveries(actions)
        assert [a.event for a in actions if isinstance(a, Log)] == ["hub.frame.invalid"]


def test_the_bridge_refuses_one_bad_frame_of_a_batch_and_a_batch_over_the_limit() -> None:
    presence = bridge()
    link_up(presence, registered("batch"))
    open_joined(presence, "c1", "ann", "a1", channels=["room"])
    batch = "\n".join([client_broadcast(1), "{", client_broadcast(2)])
    actions = drive(presence, HubFrameReceived(data=batch.encode(), now=1))
    assert [m["payload"] for m in deliveries(actions)["c1"]] == [1, 2]
    assert [a.event for a in actions if isinstance(a, Log)] == ["hub.frame.invalid"]
    limit = PresenceConfig().limits.max_hub_frame_bytes
    frame = client_broadcast(1)
    too_big = "\n".join([frame] * (limit // len(frame) + 1))
    actions = drive(presence, HubFrameReceived(data=too_big, now=2))
    assert "c1" not in deliveries(actions)
    [log] = [a for a in actions if isinstance(a, Log)]
    assert (log.event, log.fields["code"]) == ("hub.frame.invalid", "too_big")


def test_a_new_link_starts_unbatched_until_registered_again() -> None:
    presence = bridge()
    link_up(presence, registered("batch"))
    drive(presence, HubLost(now=1, code=1001, reason="gone"))
    drive(presence, Tick(now=100), HubConnected(now=100))  # the retry, then the new link
    both = f"{registered('batch')}\n{client_broadcast(1)}"
    actions = drive(presence, HubFrameReceived(data=both, now=100))
    assert [a.event for a in actions if isinstance(a, Log)] == ["hub.frame.invalid"]


def test_split_and_unbroken_frame() -> None:
    assert split_hub_batch("a\nb", max_bytes=3) == ["a", "b"]
    assert split_hub_batch(b"a\nb", max_bytes=3) == [b"a", b"b"]
    assert unbroken_frame('{"a":\n1}') == '{"a": 1}'
    text = '{"a":1}'
    assert unbroken_frame(text) is text
