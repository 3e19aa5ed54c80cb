"""Channel streams in one process: offsets, epochs, bounded history and recovery with ``since``.

The stream's rules one at a time; ``test_streams_stateful`` checks them against a model.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    LocalUsageError,
    Message,
    Presence,
    PresenceConfig,
    PublishRequested,
    Sender,
    SessionJoined,
    ShutdownRequested,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core._streams import NoStreams, Streams
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    ClusterConnected,
    ClusterLost,
    HubConnected,
    HubFrameReceived,
    HubLost,
    PositionCheck,
    StreamPosition,
)
from megapresence_core.wire import (
    PositionCommand,
    PublishFrame,
    StreamMissed,
    StreamReset,
    Subscribed,
    decode_client_command,
    decode_server_message,
    encode,
)
from megapresence_core.wire._client import SubscribeCommand, command_event

from .helpers import deliveries, drive, hub_presence, open_joined, refusals, registered_frame

BOOT = "boot-a"


def history(**settings: Any) -> HistoryConfig:
    return HistoryConfig(boot_id=BOOT, **settings)


def server(**settings: Any) -> Presence:
    """ann (conn 1) and bob (conn 2), both in room; conn 3 joined as cy, in no channel."""
    presence = Presence(
        PresenceConfig(presence_window=0, leave_grace=5, history=history(**settings))
    )
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    open_joined(presence, 2, "bob", "b1", channels=["room"])
    open_joined(presence, 3, "cy", "c1")
    return presence


def publish(presence: Presence, n: int, *, conn: int = 1, exclude_self: bool = False) -> list[Any]:
    return drive(
        presence,
        PublishRequested(
            channel="room",
            message=Message(type="n", payload=n),
            conn=conn,
            except_session_ids=("a1",) if exclude_self and conn == 1 else (),
        ),
    )


def subscribe(
    presence: Presence, conn: int, since: tuple[int, str] | None, now: float = 1.0
) -> list[dict[str, Any]]:
    position = None if since is None else StreamPosition(offset=since[0], epoch=since[1])
    actions = drive(presence, Subscribe(conn=conn, channel="room", now=now, since=position))
    return deliveries(actions).get(conn, [])


def rejoin(presence: Presence, conn: int, user: str, session: str, now: float) -> None:
    drive(
        presence,
        ConnectionOpened(conn=conn, ns="/ws"),
        SessionJoined(conn=conn, user_id=user, session_id=session, now=now),
    )


# -------------------------------------------------------------- offsets


def test_without_history_no_stream_ever_moved() -> None:
    # A probe's answer needs an owner, and an owner needs history: nothing to tell.
    assert NoStreams().moved("room", StreamPosition(offset=3, epoch="hub.1")) is False


def test_every_publication_carries_the_next_offset_and_the_epoch() -> None:
    presence = server()
    first = deliveries(publish(presence, 1))
    second = deliveries(publish(presence, 2, conn=2))
    assert first[2] == [
        {
            "type": "n",
            "channel": "room",
            "from": {"userId": "ann", "sessionId": "a1"},
            "offset": 1,
            "epoch": f"{BOOT}.1",
            "payload": 1,
        }
    ]
    assert [m["offset"] for m in second[1]] == [2]
    assert presence.stream_position("room") == StreamPosition(offset=2, epoch=f"{BOOT}.1")


def test_subscribed_carries_the_position_even_before_any_publication() -> None:
    presence = server()
    assert subscribe(presence, 3, None) == [
        {
            "type": "subscribed",
            "channel": "room",
            "presence": "none",
            "offset": 0,
            "epoch": f"{BOOT}.1",
        }
    ]
    publish(presence, 1)
    assert subscribe(presence, 3, None)[0]["offset"] == 1


def test_each_channel_has_its_own_stream_and_epoch() -> None:
    presence = server()
    open_joined(presence, 4, "dee", "d1", channels=["other"])
    assert presence.stream_position("other") == StreamPosition(offset=0, epoch=f"{BOOT}.2")
    assert presence.stream_position("nowhere") is None


def test_a_server_publication_without_sender_takes_an_offset_too() -> None:
    presence = server()
    actions = drive(presence, PublishRequested(channel="room", message=Message(type="n")))
    assert deliveries(actions)[1] == [
        {"type": "n", "channel": "room", "offset": 1, "epoch": f"{BOOT}.1"}
    ]


# ------------------------------------------------------------- recovery


def test_a_reconnect_recovers_the_missed_publications_in_order_before_live_ones() -> None:
    presence = server()
    publish(presence, 1)
    drive(presence, ConnectionClosed(conn=2, now=1))  # bob lingers, still holding the stream
    for n in (2, 3, 4):
        publish(presence, n)
    rejoin(presence, 5, "bob", "b1", now=2)
    got = subscribe(presence, 5, (1, f"{BOOT}.1"), now=2)
    assert got[0] == {
        "type": "subscribed",
        "channel": "room",
        "presence": "none",
        "offset": 4,
        "epoch": f"{BOOT}.1",
        "recovered": True,
    }
    assert [(m["payload"], m["offset"]) for m in got[1:]] == [(2, 2), (3, 3), (4, 4)]
    assert [m["offset"] for m in deliveries(publish(presence, 5))[5]] == [5]


def test_a_position_at_the_top_recovers_nothing() -> None:
    presence = server()
    publish(presence, 1)
    got = subscribe(presence, 2, (1, f"{BOOT}.1"))
    assert got == [
        {
            "type": "subscribed",
            "channel": "room",
            "presence": "none",
            "offset": 1,
            "epoch": f"{BOOT}.1",
            "recovered": True,
        }
    ]


def test_a_recovery_skips_what_the_session_excluded_itself_from() -> None:
    presence = server()
    publish(presence, 1, exclude_self=True)
    publish(presence, 2, conn=2)
    got = subscribe(presence, 1, (0, f"{BOOT}.1"))
    assert [m["payload"] for m in got[1:]] == [2]
    assert [m["payload"] for m in subscribe(presence, 2, (0, f"{BOOT}.1"))[1:]] == [1, 2]


@pytest.mark.parametrize(
    ("since", "reason"),
    [
        ((1, "boot-old.1"), "epoch"),
        ((9, f"{BOOT}.1"), "epoch"),  # an offset the stream never reached
    ],
)
def test_another_epoch_or_an_offset_beyond_the_top_is_not_recovered(
    since: tuple[int, str], reason: str
) -> None:
    presence = server()
    publish(presence, 1)
    publish(presence, 2)
    got = subscribe(presence, 2, since)
    assert got == [
        {
            "type": "subscribed",
            "channel": "room",
            "presence": "none",
            "offset": 2,
            "epoch": f"{BOOT}.1",
            "recovered": False,
            "reason": reason,
        }
    ]


def test_more_missed_than_one_recovery_returns_is_too_many() -> None:
    presence = server(size=10, max_recovery=3)
    for n in range(1, 5):
        publish(presence, n)
    got = subscribe(presence, 2, (0, f"{BOOT}.1"))
    assert (got[0]["recovered"], got[0]["reason"], len(got)) == (False, "too_many", 1)
    assert len(subscribe(presence, 2, (1, f"{BOOT}.1"))) == 4


def test_more_missed_than_the_history_keeps_is_too_many() -> None:
    presence = server(size=2, max_recovery=10)
    for n in range(1, 5):
        publish(presence, n)
    got = subscribe(presence, 2, (1, f"{BOOT}.1"))
    assert (got[0]["recovered"], got[0]["reason"]) == (False, "too_many")
    got = subscribe(presence, 2, (2, f"{BOOT}.1"))
    assert [m["payload"] for m in got[1:]] == [3, 4]


def test_publications_older_than_the_ttl_expire() -> None:
    presence = server(ttl=10)
    drive(presence, Tick(now=100))
    publish(presence, 1)
    drive(presence, Tick(now=105))
    publish(presence, 2)
    got = subscribe(presence, 2, (0, f"{BOOT}.1"), now=111)  # 1 expired at 110
    assert (got[0]["recovered"], got[0]["reason"]) == (False, "expired")
    got = subscribe(presence, 2, (1, f"{BOOT}.1"), now=111)
    assert [m["payload"] for m in got[1:]] == [2]
    publish(presence, 3)
    drive(presence, Tick(now=200))
    publish(presence, 4)  # the append expires 2 and 3
    got = subscribe(presence, 2, (3, f"{BOOT}.1"), now=200)
    assert [m["payload"] for m in got[1:]] == [4]


def test_a_forgotten_stream_starts_again_under_a_new_epoch() -> None:
    presence = server()
    publish(presence, 1)
    drive(presence, Unsubscribe(conn=1, channel="room", now=1))
    drive(presence, Unsubscribe(conn=2, channel="room", now=1))
    assert presence.stream_position("room") is None
    assert presence.history_bytes == 0
    got = subscribe(presence, 2, (1, f"{BOOT}.1"))
    assert (got[0]["recovered"], got[0]["reason"], got[0]["epoch"], got[0]["offset"]) == (
        False,
        "epoch",
        f"{BOOT}.2",
        0,
    )


def test_a_lingering_session_keeps_the_stream_until_its_grace_ends() -> None:
    presence = server()
    drive(presence, Unsubscribe(conn=1, channel="room", now=1), ConnectionClosed(conn=2, now=1))
    # Nobody connected hears it, but the lingering bob holds the stream.
    assert not drive(presence, PublishRequested(channel="room", message=Message(type="n")))
    assert presence.stream_position("room") == StreamPosition(offset=1, epoch=f"{BOOT}.1")
    drive(presence, Tick(now=7))  # the grace (5 s) ended: nobody holds the stream
    assert presence.stream_position("room") is None


def test_a_restart_is_a_new_epoch_so_an_old_position_never_recovers() -> None:
    before = server()
    publish(before, 1)
    after = Presence(PresenceConfig(history=HistoryConfig(boot_id="boot-b")))
    open_joined(after, 1, "ann", "a1", channels=["room"])
    after.handle(PublishRequested(channel="room", message=Message(type="n", payload=9)))
    got = subscribe(after, 1, (1, f"{BOOT}.1"))
    assert (got[0]["recovered"], got[0]["reason"], got[0]["epoch"]) == (False, "epoch", "boot-b.1")


def test_the_history_memory_is_counted_and_freed() -> None:
    presence = server(size=2)
    assert presence.history_bytes == 0
    publish(presence, 1)
    one = presence.history_bytes
    assert one > 100
    publish(presence, 2)
    publish(presence, 3)  # trimmed to 2
    assert presence.history_bytes == 2 * one
    drive(presence, ShutdownRequested())
    assert presence.history_bytes == 0


def test_the_counted_history_bytes_are_what_the_history_holds() -> None:
    presence = server(size=500)
    message = Message(type="chat", payload={"text": "x" * 60})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            presence.handle(PublishRequested(channel="room", message=message))
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0.85 < presence.history_bytes / allocated < 1.15


# ------------------------------------------------------- links and resets


def test_a_lost_hub_link_resets_every_stream_and_tells_its_subscribers() -> None:
    presence = hub_presence(history=history(), presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    frame = PublishFrame(
        channel="room",
        message=Message(type="n", payload=1),
        author=Sender(user_id="zed", session_id="z1"),
    )
    got = deliveries(drive(presence, HubFrameReceived(data=encode(frame), now=1)))
    assert [(m["offset"], m["epoch"]) for m in got[1]] == [(1, f"{BOOT}.1")]
    lost = deliveries(drive(presence, HubLost(now=2)))
    assert lost[1] == [
        {"type": "stream.reset", "channel": "room", "offset": 0, "epoch": f"{BOOT}.2"}
    ]
    drive(presence, Tick(now=100), HubConnected(now=100))  # backed off, reconnected
    again = deliveries(drive(presence, HubFrameReceived(data=registered_frame("h2"), now=100)))
    assert again[1] == [
        {"type": "stream.reset", "channel": "room", "offset": 0, "epoch": f"{BOOT}.3"}
    ]


def test_a_cluster_link_going_down_or_up_resets_the_streams() -> None:
    from megapresence_core import ClusterConfig

    cluster = ClusterConfig(app="app", instance_id="i1", epoch=1)
    presence = Presence(PresenceConfig(cluster=cluster, history=history()))
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    # Joined, never told a position: nothing to tell her, the epoch changes quietly.
    assert not [a for a in drive(presence, ClusterLost(now=1)) if isinstance(a, Deliver)]
    assert presence.stream_position("room") == StreamPosition(offset=0, epoch=f"{BOOT}.2")
    drive(presence, ClusterConnected(now=1), Subscribe(conn=1, channel="room", now=1))
    resets = [
        m
        for m in deliveries(drive(presence, ClusterLost(now=1), ClusterConnected(now=2)))[1]
        if m["type"] == "stream.reset"
    ]
    assert [m["epoch"] for m in resets] == [f"{BOOT}.4", f"{BOOT}.5"]


def test_a_reset_of_a_stream_whose_only_holder_lingers_tells_nobody_though_it_was_told() -> None:
    presence = hub_presence(history=history(), presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    frame = PublishFrame(channel="room", message=Message(type="n", payload=1))
    drive(presence, HubFrameReceived(data=encode(frame), now=1))  # ann holds (1, epoch 1)
    drive(presence, ConnectionClosed(conn=1, now=1))  # her grace runs: no socket to tell
    assert not [a for a in drive(presence, HubLost(now=2)) if isinstance(a, Deliver)]
    assert presence.stream_position("room") == StreamPosition(offset=0, epoch=f"{BOOT}.2")


def test_a_reset_of_a_stream_held_only_by_a_lingering_session_tells_nobody() -> None:
    presence = hub_presence(history=history(), presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    drive(presence, ConnectionClosed(conn=1, now=1))
    assert not [a for a in drive(presence, HubLost(now=2)) if isinstance(a, Deliver)]
    assert presence.stream_position("room") == StreamPosition(offset=0, epoch=f"{BOOT}.2")


# ------------------------------------------------------ without history


def test_without_history_nothing_carries_a_position_and_since_is_not_recovered() -> None:
    presence = Presence(PresenceConfig(presence_window=0))
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    got = deliveries(publish(presence, 1))
    assert got[1] == [
        {"type": "n", "channel": "room", "from": {"userId": "ann", "sessionId": "a1"}, "payload": 1}
    ]
    assert subscribe(presence, 1, (0, "x.1")) == [
        {
            "type": "subscribed",
            "channel": "room",
            "presence": "none",
            "recovered": False,
            "reason": "epoch",
        }
    ]
    assert presence.history_bytes == 0
    assert presence.stream_position("room") is None


# ------------------------------------------------------- position checks


def check(presence: Presence, conn: int, offset: int, epoch: str) -> list[dict[str, Any]]:
    position = StreamPosition(offset=offset, epoch=epoch)
    actions = drive(presence, PositionCheck(conn=conn, channel="room", position=position))
    return deliveries(actions).get(conn, [])


def test_a_position_the_stream_has_reached_is_in_step_and_answered_with_nothing() -> None:
    presence = server()
    for n in (1, 2, 3):
        publish(presence, n)
    epoch = f"{BOOT}.1"
    # At the top, or behind it: what follows is on its way to the client.
    assert check(presence, 2, 3, epoch) == []
    assert check(presence, 2, 1, epoch) == []
    assert check(presence, 2, 0, epoch) == []


@pytest.mark.parametrize(("offset", "epoch"), [(1, "gone.7"), (4, f"{BOOT}.1")])
def test_another_epoch_or_a_later_offset_is_told_stream_missed(offset: int, epoch: str) -> None:
    presence = server()
    publish(presence, 1)
    assert check(presence, 2, offset, epoch) == [
        {"type": "stream.missed", "channel": "room", "offset": 1, "epoch": f"{BOOT}.1"}
    ]


def test_a_position_from_before_a_reset_is_out_of_step() -> None:
    presence = hub_presence(history=history(), presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    subscribe(presence, 1, None)
    drive(presence, HubLost(now=2))  # the reset is sent; a check crossed it
    assert check(presence, 1, 0, f"{BOOT}.1") == [
        {"type": "stream.missed", "channel": "room", "offset": 0, "epoch": f"{BOOT}.2"}
    ]


def test_a_check_needs_a_session_subscribed_to_the_channel() -> None:
    presence = server()
    drive(presence, ConnectionOpened(conn=9, ns="/ws"))
    position = StreamPosition(offset=0, epoch="e")
    for conn, code in ((9, "not_joined"), (3, "not_subscribed")):
        actions = drive(presence, PositionCheck(conn=conn, channel="room", position=position))
        assert refusals(actions) == [(conn, code, "room")]


def test_without_history_a_check_is_answered_with_nothing() -> None:
    presence = Presence(PresenceConfig(presence_window=0))
    open_joined(presence, 1, "ann", "a1", channels=["room"])
    assert check(presence, 1, 5, "x.1") == []


# ------------------------------------------------------------ the wire


def test_a_position_command_becomes_a_check_and_stream_missed_decodes() -> None:
    text = '{"op":"position","channel":"room","offset":4,"epoch":"e.1"}'
    command = decode_client_command(text)
    assert command == PositionCommand(channel="room", offset=4, epoch="e.1")
    assert encode(command) == text
    event = command_event(command, conn=1, ns="/ws", session_id="a1", is_admin=False, now=3.0)
    assert event == PositionCheck(
        conn=1, channel="room", position=StreamPosition(offset=4, epoch="e.1")
    )
    refused = command_event(command, conn=1, ns="/ws", session_id=None, is_admin=False, now=3.0)
    assert getattr(refused, "code", None) == "not_joined"
    assert decode_server_message(
        '{"type":"stream.missed","channel":"c","offset":2,"epoch":"e.2"}'
    ) == StreamMissed(channel="c", offset=2, epoch="e.2")


@pytest.mark.parametrize(
    "fields", [{"offset": -1, "epoch": "e"}, {"offset": 1, "epoch": ""}, {"offset": 1}]
)
def test_a_bad_position_is_bad_command(fields: dict[str, Any]) -> None:
    from megapresence_core import PeerError

    with pytest.raises(PeerError) as caught:
        decode_client_command(json.dumps({"op": "position", "channel": "room", **fields}))
    assert caught.value.code == "bad_command"


def test_a_subscribe_command_with_since_encodes_and_decodes_back() -> None:
    command = SubscribeCommand(channel="room", since=StreamPosition(offset=7, epoch="e.2"))
    assert encode(command) == (
        '{"op":"subscribe","channel":"room","since":{"offset":7,"epoch":"e.2"}}'
    )
    assert decode_client_command(encode(command)) == command


def test_since_is_read_from_a_subscribe_command() -> None:
    command = decode_client_command(
        '{"op":"subscribe","channel":"room","since":{"offset":4,"epoch":"e.1"}}'
    )
    assert command == SubscribeCommand(channel="room", since=StreamPosition(offset=4, epoch="e.1"))
    event = command_event(command, conn=1, ns="/ws", session_id="a1", is_admin=False, now=3.0)
    assert isinstance(event, Subscribe)
    assert event.since == StreamPosition(offset=4, epoch="e.1")


@pytest.mark.parametrize(
    "since",
    [
        "4",
        {"offset": -1, "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 1},
        {"offset": 1, "epoch": ""},
        {"offset": 1, "epoch": "e" * 97},
        {"offset": 1.5, "epoch": "e"},
    ],
)
def test_a_bad_since_is_bad_command(since: object) -> None:
    from megapresence_core import PeerError

    with pytest.raises(PeerError) as caught:
        decode_client_command(json.dumps({"op": "subscribe", "channel": "room", "since": since}))
    assert caught.value.code == "bad_command"
    assert "since" in str(caught.value)


def test_subscribed_and_stream_reset_decode_for_clients() -> None:
    text = (
        '{"type":"subscribed","channel":"c","presence":"none","offset":3,"epoch":"e.1",'
        '"recovered":false,"reason":"expired"}'
    )
    assert decode_server_message(text) == Subscribed(
        channel="c", presence="none", offset=3, epoch="e.1", recovered=False, reason="expired"
    )
    assert decode_server_message(
        '{"type":"stream.reset","channel":"c","offset":0,"epoch":"e.2"}'
    ) == (StreamReset(channel="c", offset=0, epoch="e.2"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"boot_id": ""}, "boot_id"),
        ({"boot_id": "b" * 65}, "boot_id"),
        ({"boot_id": "b", "size": 0}, "size"),
        ({"boot_id": "b", "size": 2.5}, "size"),
        ({"boot_id": "b", "ttl": -1}, "ttl"),
        ({"boot_id": "b", "max_recovery": 1.5}, "max_recovery"),
    ],
)
def test_history_settings_are_validated(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalUsageError, match=message):
        HistoryConfig(**settings)


def test_a_since_must_be_a_stream_position() -> None:
    with pytest.raises(LocalUsageError):
        Subscribe(conn=1, channel="room", now=0, since={"offset": 1, "epoch": "e"})  # type: ignore[arg-type]


# ------------------------------------------------- the checks can fail


def _corrupt_offsets(presence: Presence) -> None:
    presence._parts.streams.streams()["room"].top += 1


def _corrupt_bytes(presence: Presence) -> None:
    streams = presence._parts.streams
    assert isinstance(streams, Streams)
    streams.bytes += 1


def _corrupt_holders(presence: Presence) -> None:
    presence._parts.streams.streams()["room"].holders.add("ghost")


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_corrupt_offsets, "not contiguous"),
        (_corrupt_bytes, "history bytes"),
        (_corrupt_holders, "holders disagree"),
    ],
)
def test_the_stream_checks_notice(corrupt: Callable[[Presence], None], match: str) -> None:
    presence = server()
    publish(presence, 1)
    presence.check_invariants()
    corrupt(presence)
    with pytest.raises(AssertionError, match=match):
        presence.check_invariants()
