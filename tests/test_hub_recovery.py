"""Channel streams held by the hub: one numbering for the whole deployment, so a client that
drops on one bridge recovers on any other; a hub restart is a new epoch, never a wrong
recovery. In the in-memory hub network (``sim``), and frame by frame against ``Hub``."""

from __future__ import annotations

import json
from collections.abc import Hashable
from typing import Any

import pytest

from megapresence_core import (
    Hub,
    HubConfig,
    HubLinkConfig,
    Limits,
    Message,
    Presence,
    PresenceConfig,
    PresenceMode,
    PublishRequested,
    Sender,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.actions import SendBridgeFrame, SendHubFrame
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    PositionCheck,
    StreamPosition,
    Tick,
)
from megapresence_core.wire import RecoveredFrame, RegisteredFrame, StreamFrame, encode

from .helpers import (
    deliveries,
    drive,
    hub_frame,
    hub_presence,
    open_joined,
    refusals,
    sent_frames,
)
from .sim import HubNetwork

TOKEN = "secret-token"


def network(**options: Any) -> HubNetwork:
    sim = HubNetwork({"A": (), "B": (), "C": ()}, leave_grace=5.0, **options)
    sim.settle()
    return sim


def numbers(sim: HubNetwork, name: str, conn: Hashable) -> list[tuple[Any, int, str]]:
    """(payload, offset, epoch) of the channel messages ``conn`` received."""
    return [
        (m.get("payload"), m["offset"], m["epoch"])
        for m in sim.bridges[name].inbox.get(conn, [])
        if m["type"] == "n"
    ]


def publish(sim: HubNetwork, name: str, conn: Hashable, n: int) -> None:
    bridge = sim.bridges[name]
    sim.act(
        name,
        PublishRequested(channel="room", message=Message(type="n", payload=n), conn=conn),
    )
    assert bridge.presence.hub_link_state is not None


def subscribe(
    sim: HubNetwork, name: str, conn: Hashable, since: StreamPosition | None = None
) -> list[dict[str, Any]]:
    before = len(sim.bridges[name].inbox.get(conn, []))
    sim.act(name, Subscribe(conn=conn, channel="room", now=sim.now, since=since))
    return sim.bridges[name].inbox.get(conn, [])[before:]


def hub_epoch(sim: HubNetwork) -> str:
    return f"hub-boot-{sim.hub_epoch}.1"


# ------------------------------------------------------------ the network


def test_the_hub_numbers_a_channel_once_for_every_bridge_the_origin_included() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    publish(sim, "A", ann, 1)
    publish(sim, "B", bob, 2)
    epoch = hub_epoch(sim)
    assert numbers(sim, "A", ann) == [(1, 1, epoch), (2, 2, epoch)]  # its own came back numbered
    assert numbers(sim, "B", bob) == [(1, 1, epoch), (2, 2, epoch)]


def test_subscribed_carries_the_hub_s_position_and_its_snapshot_follows() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    publish(sim, "A", ann, 1)
    bob = sim.open("B", "/ws", "bob", "b1")
    sim.act("B", Subscribe(conn=bob, channel="room", mode="users", now=sim.now))
    got = sim.bridges["B"].inbox[bob]
    assert got[0] == {
        "type": "subscribed",
        "channel": "room",
        "presence": "users",
        "offset": 1,
        "epoch": hub_epoch(sim),
    }
    assert got[1]["type"] == "presence.state"
    assert set(got[1]["members"]) == {"ann"}  # as on one server: then it sees itself join
    assert (got[2]["type"], set(got[2]["joins"])) == ("presence.diff", {"bob"})


def test_a_client_that_drops_on_one_bridge_recovers_on_another() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("A", "/ws", "bob", "b1", ("room",))
    publish(sim, "A", ann, 1)
    position = StreamPosition(offset=1, epoch=hub_epoch(sim))
    sim.close("A", bob)  # bob lingers on A
    for n in (2, 3, 4):
        publish(sim, "A", ann, n)
    back = sim.open("C", "/ws", "bob", "b1", ("room",))  # and comes back on C
    got = subscribe(sim, "C", back, position)
    assert got[0] == {
        "type": "subscribed",
        "channel": "room",
        "presence": "none",
        "offset": 4,
        "epoch": hub_epoch(sim),
        "recovered": True,
    }
    assert [(m["payload"], m["offset"]) for m in got[1:]] == [(2, 2), (3, 3), (4, 4)]
    publish(sim, "A", ann, 5)
    assert numbers(sim, "C", back)[-1] == (5, 5, hub_epoch(sim))


def test_a_check_through_the_hub_compares_with_the_hub_s_position() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    publish(sim, "A", ann, 1)
    publish(sim, "A", ann, 2)

    def check(offset: int, epoch: str) -> list[dict[str, Any]]:
        before = len(sim.bridges["B"].inbox[bob])
        position = StreamPosition(offset=offset, epoch=epoch)
        sim.act("B", PositionCheck(conn=bob, channel="room", position=position))
        return sim.bridges["B"].inbox[bob][before:]

    assert check(2, hub_epoch(sim)) == []
    assert check(3, hub_epoch(sim)) == [
        {"type": "stream.missed", "channel": "room", "offset": 2, "epoch": hub_epoch(sim)}
    ]
    # B numbers nothing itself: its own stream's position is not the one clients hold.
    assert check(0, "B-boot1.1")[0]["type"] == "stream.missed"
    # A subscriber answered by the hub's RECOVERED holds the hub's position too.
    carl = sim.open("C", "/ws", "carl", "c1")
    got = subscribe(sim, "C", carl, StreamPosition(offset=1, epoch=hub_epoch(sim)))
    assert got[0]["recovered"] is True
    before = len(sim.bridges["C"].inbox[carl])
    position = StreamPosition(offset=2, epoch=hub_epoch(sim))
    sim.act("C", PositionCheck(conn=carl, channel="room", position=position))
    assert sim.bridges["C"].inbox[carl][before:] == []


def test_a_hub_restart_is_a_new_epoch_and_the_subscribers_are_told() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    publish(sim, "A", ann, 1)
    old = StreamPosition(offset=1, epoch=hub_epoch(sim))
    sim.kill_hub()
    # Down, nothing is said: only the hub knows where its streams are, once it is back.
    told = [m for m in sim.bridges["B"].inbox[bob] if m["type"].startswith("stream.")]
    assert told == []
    sim.start_hub()
    sim.settle()
    # Back, the bridge asks; the new hub's stream is not where bob was: he is told.
    [missed] = [m for m in sim.bridges["B"].inbox[bob] if m["type"].startswith("stream.")]
    assert missed == {
        "type": "stream.missed",
        "channel": "room",
        "offset": 0,
        "epoch": hub_epoch(sim),
    }
    publish(sim, "A", ann, 2)
    assert numbers(sim, "B", bob)[-1] == (2, 1, hub_epoch(sim))
    got = subscribe(sim, "B", bob, old)
    assert (got[0]["recovered"], got[0]["reason"], got[0]["offset"]) == (False, "epoch", 1)
    assert got[0]["epoch"] == hub_epoch(sim) != old.epoch


def test_a_link_that_comes_back_tells_what_was_missed_meanwhile_and_it_is_recovered() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    cid = sim.open("B", "/ws", "cid", "c1", ("lobby",))
    publish(sim, "A", ann, 1)
    held = StreamPosition(offset=1, epoch=hub_epoch(sim))
    sim.drop_link("B")
    publish(sim, "A", ann, 2)  # B is away: bob does not get it
    publish(sim, "A", ann, 3)
    sim.settle()
    inbox = sim.bridges["B"].inbox
    told = [m for m in inbox[bob] if m["type"].startswith("stream.")]
    assert told == [
        {"type": "stream.missed", "channel": "room", "offset": 3, "epoch": hub_epoch(sim)}
    ]
    assert [m for m in inbox.get(cid, []) if m["type"].startswith("stream.")] == []
    got = subscribe(sim, "B", bob, held)
    assert (got[0]["recovered"], got[0]["offset"]) == (True, 3)
    assert [m["payload"] for m in got[1:] if m["type"] == "n"] == [2, 3]
    # Asked again, nothing new: a link that comes back with nothing missed says nothing.
    sim.drop_link("B")
    sim.settle()
    assert [m for m in inbox[bob] if m["type"].startswith("stream.")] == told


def test_retries_while_the_hub_is_away_say_nothing_and_a_local_answer_is_told_when_it_is_back() -> (
    None
):
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    cid = sim.open("B", "/ws", "cid", "c1", ("room",))
    publish(sim, "A", ann, 1)
    held = StreamPosition(offset=1, epoch=hub_epoch(sim))
    sim.kill_hub()
    sim.advance(20.0)  # the bridges try again and again meanwhile, and fail
    inbox = sim.bridges["B"].inbox
    assert [m for m in inbox[bob] + inbox[cid] if m["type"].startswith("stream.")] == []
    got = subscribe(sim, "B", cid, held)  # answered here: cid now holds B's own position
    assert (got[0]["recovered"], got[0]["reason"]) == (False, "epoch")
    sim.start_hub()
    sim.settle()
    for conn in (bob, cid):  # both are behind the new hub's stream, whatever they hold
        told = [m for m in inbox[conn] if m["type"].startswith("stream.")]
        assert [(m["type"], m["epoch"]) for m in told] == [("stream.missed", hub_epoch(sim))]


def test_a_subscribe_waiting_for_the_hub_is_answered_here_if_the_link_goes() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bridge = sim.bridges["A"]
    actions = bridge.presence.handle(
        Subscribe(
            conn=ann,
            channel="room",
            mode="users",
            now=sim.now,
            since=StreamPosition(offset=0, epoch="x"),
        )
    )
    assert [json.loads(a.data)["type"] for a in actions if isinstance(a, SendHubFrame)] == [
        "RECOVER"
    ]
    sim.kill_hub()  # RECOVER never reached it
    got = [m for m in bridge.inbox[ann] if m["type"] != "stream.reset"]
    assert (got[0]["type"], got[0]["recovered"], got[0]["reason"]) == ("subscribed", False, "epoch")
    assert got[0]["epoch"].startswith("A-boot1.")  # this process's own stream now
    assert got[1]["type"] == "presence.state"


def test_an_answer_for_a_connection_gone_meanwhile_is_dropped() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bridge = sim.bridges["A"]
    bridge.handle(Subscribe(conn=ann, channel="room", now=sim.now))  # RECOVER is on its way
    assert bridge.presence._parts.recoveries.pending
    bridge.close(ann)  # and the client goes before RECOVERED comes back
    sim.run()
    assert not bridge.presence._parts.recoveries.pending
    assert ann not in bridge.inbox
    bridge.presence.check_invariants()


def test_without_a_link_a_publish_is_refused_rather_than_delivered_here_only() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    bob = sim.open("B", "/ws", "bob", "b1", ("room",))
    sim.drop_link("A")  # A alone is cut off: B would never hear of it
    publish(sim, "A", ann, 1)
    refusal = sim.bridges["A"].inbox[ann][-1]
    assert (refusal["type"], refusal["payload"]["code"]) == ("error", "unavailable")
    assert numbers(sim, "A", ann) == numbers(sim, "B", bob) == []
    server = sim.bridges["A"]
    server.handle(PublishRequested(channel="room", message=Message(type="n")))
    assert server.logs[-1].event == "presence.publish.unavailable"
    sim.settle()
    publish(sim, "A", ann, 2)
    assert [n for n, _, _ in numbers(sim, "B", bob)] == [2]


def test_the_hub_forgets_the_stream_of_a_channel_nobody_tracks() -> None:
    sim = network()
    ann = sim.open("A", "/ws", "ann", "a1", ("room",))
    publish(sim, "A", ann, 1)
    assert sim.hub is not None
    assert sim.hub.history_bytes > 0
    sim.close("A", ann)
    sim.advance(6)  # past the grace: ann leaves, the hub's next tick sweeps
    sim.tick()
    assert sim.hub.history_bytes == 0


# -------------------------------------------------------- frame by frame


def new_hub(**config: Any) -> Hub:
    history = HistoryConfig(boot_id="hb", size=10, max_recovery=5)
    return Hub(HubConfig(hub_id="hub-1", tokens=[TOKEN], history=history, **config))


def send(hub: Hub, bridge: Hashable, kind: str, **payload: Any) -> list[Any]:
    actions = hub.handle(BridgeFrameReceived(bridge=bridge, data=hub_frame(kind, **payload), now=1))
    hub.check_invariants()
    return actions


def frames_to(actions: list[Any]) -> dict[Hashable, list[dict[str, Any]]]:
    out: dict[Hashable, list[dict[str, Any]]] = {}
    for action in actions:
        if isinstance(action, SendBridgeFrame):
            for bridge in action.bridges:
                out.setdefault(bridge, []).append(json.loads(action.data))
    return out


def connect(hub: Hub, bridge: str, capabilities: list[str]) -> None:
    hub.handle(BridgeConnecting(bridge=bridge, authorization=f"Bearer {TOKEN}", now=0))
    registered = frames_to(
        send(
            hub,
            bridge,
            "REGISTER",
            bridgeId=bridge,
            instanceId="i",
            protocol=2,
            capabilities=capabilities,
        )
    )[bridge][0]
    offered = registered["payload"].get("capabilities", [])
    assert ("stream" in offered) == ("stream" in capabilities)  # only to a bridge that asks


def two_bridges() -> Hub:
    hub = new_hub()
    connect(hub, "S", ["stream"])  # numbers
    connect(hub, "L", [])  # a bridge of an older release: plain PUBLISH
    send(hub, "S", "JOIN", userId="ann", sessionId="a1", channels=["room"])
    send(hub, "L", "JOIN", userId="bob", sessionId="b1", channels=["room"])
    return hub


def publish_frame(n: int, **extra: Any) -> dict[str, Any]:
    return {"channel": "room", "message": {"type": "n", "payload": n}, **extra}


def test_a_publish_is_numbered_for_stream_bridges_and_plain_for_the_others() -> None:
    hub = two_bridges()
    author = {"userId": "ann", "sessionId": "a1"}
    got = frames_to(send(hub, "S", "PUBLISH", **publish_frame(1, **{"from": author})))
    assert got["S"] == [
        {
            "type": "STREAM",
            "payload": {
                "channel": "room",
                "offset": 1,
                "epoch": "hb.1",
                "message": {"type": "n", "payload": 1},
                "from": author,
            },
        }
    ]
    assert got["L"][0]["type"] == "PUBLISH"
    got = frames_to(send(hub, "L", "PUBLISH", **publish_frame(2)))
    assert list(got) == ["S"]  # the plain origin delivered it itself
    assert got["S"][0]["payload"]["offset"] == 2


def test_a_publish_from_a_bridge_with_nobody_in_the_channel_is_not_echoed() -> None:
    hub = new_hub()
    connect(hub, "S", ["stream"])
    connect(hub, "T", ["stream"])
    send(hub, "T", "JOIN", userId="tim", sessionId="t1", channels=["room"])
    got = frames_to(send(hub, "S", "PUBLISH", **publish_frame(1)))
    assert list(got) == ["T"]


def test_recover_answers_the_position_the_missed_ones_or_why_not() -> None:
    hub = two_bridges()
    for n in range(1, 8):
        send(hub, "L", "PUBLISH", **publish_frame(n, exceptSessionIds=["a1"] if n == 7 else []))

    def recover(since: dict[str, Any] | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {"request": 9, "sessionId": "a1", "channel": "room"}
        if since is not None:
            payload["since"] = since
        [frame] = frames_to(send(hub, "S", "RECOVER", **payload))["S"]
        assert frame["type"] == "RECOVERED"
        return dict(frame["payload"])

    assert recover() == {"request": 9, "channel": "room", "offset": 7, "epoch": "hb.1"}
    got = recover({"offset": 4, "epoch": "hb.1"})
    # The channel messages as clients receive them, each a JSON string the bridge relays.
    assert got["recovered"] is True
    assert [json.loads(text) for text in got["publications"]] == [
        {"type": "n", "channel": "room", "offset": n, "epoch": "hb.1", "payload": n} for n in (5, 6)
    ]
    got = recover({"offset": 1, "epoch": "hb.1"})  # 6 missed; one recovery returns 5
    assert (got["recovered"], got["reason"], "publications" in got) == (False, "too_many", False)
    got = recover({"offset": 3, "epoch": "old.1"})
    assert (got["recovered"], got["reason"]) == (False, "epoch")


def test_a_recovery_that_would_not_fit_in_one_frame_is_too_many() -> None:
    hub = new_hub(max_frame_bytes=90_000)
    connect(hub, "S", ["stream"])
    send(hub, "S", "JOIN", userId="ann", sessionId="a1", channels=["room"])
    for _ in range(3):
        send(hub, "S", "PUBLISH", channel="room", message={"type": "n", "payload": "x" * 40_000})
    payload = {"request": 1, "sessionId": "a1", "channel": "room"}
    since = {"offset": 0, "epoch": "hb.1"}
    [frame] = frames_to(send(hub, "S", "RECOVER", **payload, since=since))["S"]
    assert (frame["payload"]["recovered"], frame["payload"]["reason"]) == (False, "too_many")
    [frame] = frames_to(send(hub, "S", "RECOVER", **payload, since={**since, "offset": 1}))["S"]
    assert frame["payload"]["recovered"] is True


def test_a_publish_with_no_room_for_its_offset_is_refused_whole() -> None:
    hub = new_hub(max_frame_bytes=81_920)
    connect(hub, "S", ["stream"])
    send(hub, "S", "JOIN", userId="ann", sessionId="a1", channels=["room"])
    big = {"type": "n", "payload": "x" * 81_400}
    got = frames_to(send(hub, "S", "PUBLISH", channel="room", message=big))
    assert [(f["type"], f["payload"]["code"]) for f in got["S"]] == [("ERROR", "too_big")]
    assert hub.history_bytes == 0


def test_stream_frames_are_the_hub_s_to_send_and_recover_needs_the_capability() -> None:
    hub = two_bridges()
    recover = {"request": 1, "sessionId": "b1", "channel": "room"}
    got = frames_to(send(hub, "L", "RECOVER", **recover))["L"]
    assert got[0]["payload"]["code"] == "unexpected_type"
    stream = {"channel": "room", "offset": 1, "epoch": "e", "message": {"type": "n"}}
    got = frames_to(send(hub, "S", "STREAM", **stream))["S"]
    assert got[0]["payload"]["code"] == "unexpected_type"


def test_a_hub_without_history_does_not_offer_streams() -> None:
    hub = Hub(HubConfig(hub_id="h", tokens=[TOKEN]))
    hub.handle(BridgeConnecting(bridge="S", authorization=f"Bearer {TOKEN}", now=0))
    got = frames_to(
        send(
            hub, "S", "REGISTER", bridgeId="S", instanceId="i", protocol=2, capabilities=["stream"]
        )
    )
    assert "stream" not in got["S"][0]["payload"].get("capabilities", [])
    send(hub, "S", "JOIN", userId="ann", sessionId="a1", channels=["room"])
    got = frames_to(send(hub, "S", "RECOVER", request=1, sessionId="a1", channel="room"))
    assert got["S"][0]["payload"]["code"] == "unexpected_type"
    assert hub.history_bytes == 0
    hub.handle(Tick(now=5))


def test_stream_frames_round_trip_through_the_codec() -> None:
    from megapresence_core.wire import (
        RecoveredFrame,
        RecoverFrame,
        StreamFrame,
        decode_hub_frame,
    )

    stream = StreamFrame(
        channel="c",
        offset=2,
        epoch="e.1",
        message=Message(type="n", payload=[1]),
        except_session_ids=("s",),
        author=Sender(user_id="u", session_id="s"),
    )
    frames = [
        stream,
        RecoverFrame(
            request=3, session_id="s", channel="c", since=StreamPosition(offset=1, epoch="e")
        ),
        RecoveredFrame(
            request=3,
            channel="c",
            offset=2,
            epoch="e.1",
            recovered=True,
            publications=('{"type":"n","channel":"c","offset":2,"epoch":"e.1"}',),
        ),
    ]
    for frame in frames:
        assert decode_hub_frame(encode(frame), max_bytes=10_000) == frame


# ------------------------------------------- a bridge's waiting subscribes


def streaming_bridge(**config: Any) -> Presence:
    """A bridge registered with a hub that numbers streams (frames driven by hand)."""
    link = HubLinkConfig(bridge_id="b1", instance_id="b1-i1")
    presence = Presence(
        PresenceConfig(
            hub_link=link, history=HistoryConfig(boot_id="b1"), presence_window=0, **config
        )
    )
    registered = RegisteredFrame(hub_id="h", heartbeat_interval=5.0, capabilities=("stream",))
    drive(
        presence,
        HubLinkStarted(now=0.0),
        HubConnected(now=0.0),
        HubFrameReceived(data=encode(registered), now=0.0),
    )
    return presence


def recovered(request: int, offset: int = 0) -> HubFrameReceived:
    frame = RecoveredFrame(request=request, channel="room", offset=offset, epoch="h.1")
    return HubFrameReceived(data=encode(frame), now=1.0)


def test_an_unsubscribe_cancels_a_subscribe_waiting_for_the_hub() -> None:
    presence = streaming_bridge()
    open_joined(presence, 1, "ann", "a1")
    sent = sent_frames(drive(presence, Subscribe(conn=1, channel="room", now=1)))
    assert [f["type"] for f in sent] == ["SUBSCRIBE", "RECOVER"]
    actions = drive(presence, Unsubscribe(conn=1, channel="room", now=1))
    assert [f["type"] for f in sent_frames(actions)] == ["UNSUBSCRIBE"]
    assert deliveries(actions)[1] == [{"type": "unsubscribed", "channel": "room"}]
    assert drive(presence, recovered(1)) == []  # the answer finds nobody waiting


def test_a_change_of_mode_unsubscribed_meanwhile_is_not_answered() -> None:
    presence = streaming_bridge()
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    sent = sent_frames(drive(presence, Subscribe(conn=1, channel="room", mode="users", now=1)))
    assert [f["type"] for f in sent] == ["RECOVER"]  # already in the channel: no SUBSCRIBE
    drive(presence, Unsubscribe(conn=1, channel="room", now=1))
    assert drive(presence, recovered(1)) == []
    assert presence.subscriptions(1) == {}


def test_two_subscribes_waiting_together_are_answered_in_turn() -> None:
    presence = streaming_bridge()
    open_joined(presence, 1, "ann", "a1")
    drive(presence, Subscribe(conn=1, channel="room", now=1))
    drive(presence, Subscribe(conn=1, channel="room", mode="count", now=1))
    first = deliveries(drive(presence, recovered(1)))[1]
    assert [m["type"] for m in first] == ["subscribed"]
    second = deliveries(drive(presence, recovered(2, offset=3)))[1]
    assert [(m["type"], m.get("presence")) for m in second] == [
        ("subscribed", "count"),
        ("presence.count", None),
    ]
    assert presence.subscriptions(1) == {"room": PresenceMode.COUNT}


def test_a_channel_that_filled_up_meanwhile_refuses_the_waiting_subscribe() -> None:
    presence = streaming_bridge(limits=Limits(max_members_per_channel=1))
    open_joined(presence, 1, "ann", "a1")
    drive(presence, Subscribe(conn=1, channel="room", now=1))
    open_joined(presence, 2, "bob", "b1", channels=["room"])  # took the last place
    actions = drive(presence, recovered(1))
    assert refusals(actions) == [(1, "channel_full", "room")]
    assert [f["type"] for f in sent_frames(actions)] == ["UNSUBSCRIBE"]
    assert presence.subscriptions(1) == {}


def test_recovered_needs_a_list_of_channel_messages_in_strings() -> None:
    from megapresence_core import PeerError
    from megapresence_core.wire import decode_hub_frame

    for publications in ({}, [{"type": "n"}], ["not an object"]):
        bad = hub_frame(
            "RECOVERED", request=1, channel="c", offset=0, epoch="e", publications=publications
        )
        with pytest.raises(PeerError, match="publications"):
            decode_hub_frame(bad, max_bytes=1000)


def test_a_publish_while_the_cluster_is_down_is_refused() -> None:
    from megapresence_core import ClusterConfig
    from megapresence_core.events import ClusterConnected, ClusterLost

    cluster = ClusterConfig(app="app", instance_id="i1", epoch=1)
    presence = Presence(PresenceConfig(cluster=cluster, history=HistoryConfig(boot_id="b")))
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    drive(presence, ClusterLost(now=1))
    actions = drive(presence, PublishRequested(channel="room", message=Message(type="n"), conn=1))
    assert refusals(actions) == [(1, "unavailable", "room")]


def test_a_stream_frame_for_a_channel_nobody_holds_here_reaches_nobody() -> None:
    presence = streaming_bridge()
    stream = StreamFrame(channel="room", offset=4, epoch="h.1", message=Message(type="n"))
    assert drive(presence, HubFrameReceived(data=encode(stream), now=1)) == []


def test_a_skip_in_the_hub_s_numbering_is_told_and_a_repeat_is_dropped() -> None:
    presence = streaming_bridge()
    open_joined(presence, 1, "ann", "a1")
    drive(presence, Subscribe(conn=1, channel="room", now=0))
    drive(presence, recovered(1, offset=3))

    def stream(offset: int, epoch: str = "h.1") -> list[dict[str, Any]]:
        message = Message(type="n", payload=offset)
        frame = StreamFrame(channel="room", offset=offset, epoch=epoch, message=message)
        return deliveries(drive(presence, HubFrameReceived(data=encode(frame), now=1))).get(1, [])

    def missed(offset: int, epoch: str = "h.1") -> dict[str, Any]:
        return {"type": "stream.missed", "channel": "room", "offset": offset, "epoch": epoch}

    assert [m["payload"] for m in stream(4)] == [4]
    assert stream(4) == []  # sent already: never twice
    got = stream(7)  # 5 and 6 never came: the subscriber is told, then gets 7
    assert got[0] == missed(7)
    assert [m["payload"] for m in got[1:]] == [7]
    got = stream(1, "h.2")  # a new epoch nobody announced: what came before may be lost
    assert got[0] == missed(1, "h.2")
    assert [m["payload"] for m in got[1:]] == [1]
    assert [m["payload"] for m in stream(2, "h.2")] == [2]


def test_a_bridge_without_history_relays_a_stream_frame_as_numbered() -> None:
    # A hub should not send it one (the bridge did not name ``stream``); if it does, the
    # message still reaches the channel's subscribers, at the hub's position.
    presence = hub_presence(presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    stream = StreamFrame(channel="room", offset=4, epoch="h.1", message=Message(type="n"))
    got = deliveries(drive(presence, HubFrameReceived(data=encode(stream), now=1)))
    assert got[1] == [{"type": "n", "channel": "room", "offset": 4, "epoch": "h.1"}]
