"""Channels as subscriptions: subscribe, unsubscribe, sync, publish, direct replies, caps.

One process here; the hub and cluster sides have their own tests.
"""

from __future__ import annotations

import json

import pytest

from megapresence_core import (
    ClusterConfig,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    Limits,
    LocalUsageError,
    Member,
    Message,
    Presence,
    PresenceConfig,
    PresenceMode,
    PublishRequested,
    RequestRefused,
    Sender,
    ShutdownRequested,
    StoreConfig,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.actions import ClusterPublish, SendHubFrame, StoreDelete, StorePut
from megapresence_core.events import (
    ClusterConnected,
    ClusterMessageReceived,
    HubFrameReceived,
    PresenceSync,
)
from megapresence_core.wire import (
    CLIENT_ERROR_CODES,
    ClusterAdd,
    ClusterChannelPublish,
    PublishFrame,
    encode,
)

from .helpers import (
    deliveries,
    drive,
    hub_frame,
    hub_presence,
    open_joined,
    presence_messages,
    refusals,
    sent_frames,
)


def watching(config: PresenceConfig | None = None) -> Presence:
    """ann (conn 1) in lobby; bob (conn 2) joined, in no channel; conn 3 open, unjoined."""
    presence = Presence(config or PresenceConfig(presence_window=0))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"], metadata={"s": "here"})
    open_joined(presence, 2, "bob", "b1")
    drive(presence, ConnectionOpened(conn=3, ns="/ws"))
    return presence


# ----------------------------------------------------------------- subscribe


def test_subscribe_replies_then_sends_a_snapshot_of_the_view() -> None:
    presence = watching()
    actions = drive(presence, Subscribe(conn=2, channel="lobby", mode="users", now=1))
    got = deliveries(actions)[2]
    assert got[0] == {"type": "subscribed", "channel": "lobby", "presence": "users"}
    assert got[1] == {
        "type": "presence.state",
        "channel": "lobby",
        "view": "users",
        "version": 0,
        "members": {
            "ann": {"userId": "ann", "sessions": [{"sessionId": "a1", "metadata": {"s": "here"}}]}
        },
    }
    # bob joined the channel: a diff follows at the end of the event (window 0).
    assert got[2]["type"] == "presence.diff"
    assert got[2]["joins"] == {
        "bob": {"userId": "bob", "sessions": [{"sessionId": "b1", "metadata": None}]}
    }
    assert presence.subscriptions(2) == {"lobby": PresenceMode.USERS}
    assert presence.presence_stats("lobby") == (2, 2)


def test_the_sessions_view_and_the_count_view() -> None:
    presence = watching()
    actions = drive(presence, Subscribe(conn=1, channel="lobby", mode="sessions", now=1))
    assert presence_messages(actions, 1) == [
        {
            "type": "presence.state",
            "channel": "lobby",
            "view": "sessions",
            "version": 0,
            "members": {"a1": {"sessionId": "a1", "userId": "ann", "metadata": {"s": "here"}}},
        }
    ]
    actions = drive(presence, Subscribe(conn=2, channel="lobby", mode="count", now=1))
    assert presence_messages(actions, 2) == [
        {"type": "presence.count", "channel": "lobby", "sessions": 1, "users": 1},
        {"type": "presence.count", "channel": "lobby", "sessions": 2, "users": 2},
    ]


def test_subscribing_again_changes_the_mode_and_resends_a_snapshot_only() -> None:
    presence = hub_presence(presence_window=0)
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    actions = drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=1))
    assert presence_messages(actions, 1)[0]["view"] == "users"
    actions = drive(presence, Subscribe(conn=1, channel="lobby", mode="sessions", now=2))
    assert [m["type"] for m in deliveries(actions)[1]] == ["subscribed", "presence.state"]
    assert sent_frames(actions) == []  # no membership change: the hub hears nothing
    actions = drive(presence, Subscribe(conn=1, channel="lobby", mode="none", now=3))
    assert deliveries(actions)[1] == [
        {"type": "subscribed", "channel": "lobby", "presence": "none"}
    ]
    assert presence.subscriptions(1) == {"lobby": PresenceMode.NONE}


def test_subscribe_and_unsubscribe_reach_the_hub_the_cluster_and_the_store() -> None:
    cluster = ClusterConfig(app="t", instance_id="me", epoch=1)
    presence = hub_presence(cluster=cluster, store=StoreConfig(ttl=60))
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", metadata={"s": 1})
    actions = drive(presence, Subscribe(conn=1, channel="lobby", now=1))
    assert sent_frames(actions) == [
        {
            "type": "SUBSCRIBE",
            "payload": {
                "sessionId": "a1",
                "userId": "ann",
                "channel": "lobby",
                "metadata": {"s": 1},
            },
        }
    ]
    [add] = [json.loads(a.data) for a in actions if isinstance(a, ClusterPublish)]
    assert (add["kind"], add["channels"]) == ("add", ["lobby"])
    member = Member(session_id="a1", user_id="ann", metadata={"s": 1})
    assert [a for a in actions if isinstance(a, StorePut)] == [
        StorePut(channel="lobby", session_id="a1", member=member, ttl=60)
    ]
    actions = drive(presence, Unsubscribe(conn=1, channel="lobby", now=2))
    assert deliveries(actions)[1] == [{"type": "unsubscribed", "channel": "lobby"}]
    assert sent_frames(actions) == [
        {"type": "UNSUBSCRIBE", "payload": {"sessionId": "a1", "channel": "lobby"}}
    ]
    [add] = [json.loads(a.data) for a in actions if isinstance(a, ClusterPublish)]
    assert (add["kind"], "channels" in add) == ("add", False)
    assert [a for a in actions if isinstance(a, StoreDelete)] == [
        StoreDelete(channel="lobby", session_id="a1")
    ]
    assert presence.presence_stats("lobby") == (0, 0)


def test_unsubscribing_from_a_channel_not_subscribed_is_answered_and_changes_nothing() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "a1")
    actions = drive(presence, Unsubscribe(conn=1, channel="nope", now=1))
    # The hub hears it too: it may hold the channel, kept from the bridge the session
    # moved from (it ignores it otherwise).
    assert actions == [
        Deliver(conns=(1,), text='{"type":"unsubscribed","channel":"nope"}'),
        SendHubFrame(data='{"type":"UNSUBSCRIBE","payload":{"sessionId":"a1","channel":"nope"}}'),
    ]
    assert presence.subscriptions(1) == {}
    alone = Presence()
    open_joined(alone, 1, "ann", "a1")
    assert drive(alone, Unsubscribe(conn=1, channel="nope", now=1)) == actions[:1]


def test_an_unsubscribe_is_a_leave_for_the_watchers_at_once() -> None:
    presence = watching()
    drive(presence, Subscribe(conn=2, channel="lobby", mode="sessions", now=1))
    actions = drive(presence, Unsubscribe(conn=1, channel="lobby", now=2))
    [diff] = presence_messages(actions, 2)
    assert diff["leaves"] == {"a1": {"sessionId": "a1", "userId": "ann", "metadata": {"s": "here"}}}
    assert diff["version"] == 2


def test_unsubscribing_a_watcher_stops_its_feed() -> None:
    presence = watching(PresenceConfig(presence_window=0.05))
    drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=0))
    open_joined(presence, 4, "cid", "c1", channels=["lobby"], now=0.01)
    assert presence.next_deadline() == pytest.approx(0.06)
    drive(presence, Unsubscribe(conn=1, channel="lobby", now=0.02))
    assert presence.next_deadline() is None  # nobody watches: the window is dropped


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (Subscribe(conn=3, channel="lobby", now=1), "not_joined"),
        (Unsubscribe(conn=3, channel="lobby", now=1), "not_joined"),
        (PresenceSync(conn=3, channel="lobby"), "not_joined"),
        (Subscribe(conn=2, channel="lobby", now=1, denied="members only"), "forbidden"),
        (Subscribe(conn=1, channel="lobby", mode="users", now=1, denied="no"), "forbidden"),
        (PresenceSync(conn=2, channel="lobby"), "not_subscribed"),
        (PresenceSync(conn=1, channel="lobby"), "not_watching"),
        (PublishRequested(channel="lobby", message={"type": "t"}, conn=3), "not_joined"),
        (PublishRequested(channel="lobby", message={"type": "t"}, conn=2), "not_subscribed"),
    ],
)
def test_requests_nobody_could_check_beforehand_are_refused_as_actions(
    event: object, code: str
) -> None:
    presence = watching()
    actions = drive(presence, event)  # type: ignore[arg-type]
    [refusal] = actions
    assert isinstance(refusal, RequestRefused)
    assert (refusal.code, refusal.channel) == (code, "lobby")
    assert json.loads(refusal.text) == {
        "type": "error",
        "payload": {"code": code, "message": refusal.message, "channel": "lobby"},
    }
    assert code in CLIENT_ERROR_CODES
    assert presence.presence_stats("lobby") == (1, 1)


def test_a_denied_subscription_changes_nothing_and_says_why() -> None:
    presence = watching()
    actions = drive(presence, Subscribe(conn=1, channel="lobby", mode="users", now=1, denied="no"))
    assert [a.message for a in actions if isinstance(a, RequestRefused)] == ["no"]
    assert presence.subscriptions(1) == {"lobby": PresenceMode.NONE}  # the mode is kept


def test_the_connection_of_a_session_is_its_joined_one() -> None:
    presence = watching()
    assert (presence.connection_of("a1"), presence.connection_of("zz")) == (1, None)


def test_a_channel_at_its_member_cap_refuses_subscriptions_and_joins() -> None:
    presence = Presence(PresenceConfig(limits=Limits(max_members_per_channel=2)))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    open_joined(presence, 2, "bob", "b1", channels=["lobby"])
    open_joined(presence, 3, "cid", "c1")
    actions = drive(presence, Subscribe(conn=3, channel="lobby", mode="users", now=1))
    assert refusals(actions) == [(3, "channel_full", "lobby")]
    assert "max_members_per_channel 2" in actions[0].message  # type: ignore[union-attr]
    actions = open_joined(presence, 4, "dan", "d1", channels=["lobby", "other"])
    assert refusals(actions) == [(4, "channel_full", "lobby")]
    assert presence.subscriptions(4) == {"other": PresenceMode.NONE}  # joined all the same
    assert presence.presence_stats("lobby") == (2, 2)


def test_a_session_at_its_channel_cap_refuses_one_more() -> None:
    presence = Presence(PresenceConfig(limits=Limits(max_channels_per_session=2)))
    open_joined(presence, 1, "ann", "a1", channels=["x", "y"])
    actions = drive(presence, Subscribe(conn=1, channel="z", now=1))
    assert refusals(actions) == [(1, "too_many_channels", "z")]
    # A session taken over keeps its channels; the join's extra one is refused.
    actions = open_joined(presence, 2, "ann", "a1", channels=["z"])
    assert refusals(actions) == [(2, "too_many_channels", "z")]
    assert list(presence.subscriptions(2)) == ["x", "y"]


def test_misuse_raises_and_changes_nothing() -> None:
    presence = watching()
    with pytest.raises(LocalUsageError, match="Subscribe: unknown connection 9"):
        presence.handle(Subscribe(conn=9, channel="lobby", now=1))
    with pytest.raises(LocalUsageError, match="mode must be one of none, users"):
        Subscribe(conn=1, channel="lobby", mode="everyone", now=1)
    with pytest.raises(LocalUsageError, match="channel is 300 bytes"):
        presence.handle(Unsubscribe(conn=1, channel="c" * 300, now=1))
    with pytest.raises(LocalUsageError, match="give sender or conn, not both"):
        PublishRequested(
            channel="lobby",
            message={"type": "t"},
            conn=1,
            sender=Sender(user_id="u", session_id="s"),
        )
    with pytest.raises(LocalUsageError, match="PublishRequested: unknown connection"):
        presence.handle(PublishRequested(channel="lobby", message={"type": "t"}, conn=9))
    with pytest.raises(LocalUsageError, match="DirectRequested: unknown connection"):
        presence.handle(DirectRequested(user_id="bob", message={"type": "t"}, conn=9))
    with pytest.raises(LocalUsageError, match="subscriptions: unknown connection"):
        presence.subscriptions(9)
    assert presence.presence_stats("lobby") == (1, 1)
    drive(presence, ShutdownRequested())
    with pytest.raises(LocalUsageError, match="shut down"):
        presence.handle(Subscribe(conn=1, channel="lobby", now=1))


# -------------------------------------------------------------------- sync


def test_sync_answers_with_a_fresh_snapshot_or_count() -> None:
    presence = watching()
    drive(presence, Subscribe(conn=1, channel="lobby", mode="sessions", now=1))
    drive(presence, Subscribe(conn=2, channel="lobby", mode="count", now=1))
    [state] = presence_messages(drive(presence, PresenceSync(conn=1, channel="lobby")), 1)
    assert (state["type"], state["version"], sorted(state["members"])) == (
        "presence.state",
        1,
        ["a1", "b1"],
    )
    assert presence_messages(drive(presence, PresenceSync(conn=2, channel="lobby")), 2) == [
        {"type": "presence.count", "channel": "lobby", "sessions": 2, "users": 2}
    ]


# ----------------------------------------------------------------- publish


def test_a_publish_reaches_exactly_the_channel_s_subscribers_with_the_sender() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    open_joined(presence, 2, "bob", "b1", ns="/other", channels=["lobby"])
    open_joined(presence, 3, "cid", "c1", channels=["dev"])
    drive(presence, ConnectionOpened(conn=4, ns="/ws"))
    drive(presence, Subscribe(conn=2, channel="lobby", mode="count", now=1))
    actions = drive(
        presence,
        PublishRequested(channel="lobby", message={"type": "chat", "payload": "hi"}, conn=1),
    )
    expected = {
        "type": "chat",
        "channel": "lobby",
        "from": {"userId": "ann", "sessionId": "a1"},
        "payload": "hi",
    }
    assert deliveries(actions) == {1: [expected], 2: [expected]}
    assert sent_frames(actions) == [
        {
            "type": "PUBLISH",
            "payload": {
                "channel": "lobby",
                "message": {"type": "chat", "payload": "hi"},
                "from": {"userId": "ann", "sessionId": "a1"},
            },
        }
    ]
    actions = drive(
        presence,
        PublishRequested(
            channel="lobby", message={"type": "chat"}, conn=1, except_session_ids=["a1"]
        ),
    )
    assert list(deliveries(actions)) == [2]
    assert sent_frames(actions)[0]["payload"]["exceptSessionIds"] == ["a1"]


def test_the_embedding_program_publishes_with_its_own_sender_or_none() -> None:
    presence = watching()
    actions = drive(presence, PublishRequested(channel="lobby", message={"type": "notice"}))
    assert deliveries(actions) == {1: [{"type": "notice", "channel": "lobby"}]}
    bot = Sender(user_id="bot", session_id="bot-1")
    actions = drive(
        presence, PublishRequested(channel="lobby", message={"type": "notice"}, sender=bot)
    )
    assert deliveries(actions)[1][0]["from"] == {"userId": "bot", "sessionId": "bot-1"}
    assert drive(presence, PublishRequested(channel="empty", message={"type": "t"})) == []
    assert (
        drive(
            presence,
            PublishRequested(channel="lobby", message={"type": "t"}, except_session_ids=["a1"]),
        )
        == []
    )


def test_a_publish_over_the_message_limit_is_refused_before_anything_happens() -> None:
    presence = Presence(
        PresenceConfig(limits=Limits(max_message_bytes=100, max_hub_frame_bytes=10_000))
    )
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    with pytest.raises(LocalUsageError, match="message is 1"):
        presence.handle(
            PublishRequested(channel="lobby", message={"type": "t", "payload": "x" * 100})
        )


def test_a_publish_reaches_the_cluster_too() -> None:
    presence = Presence(PresenceConfig(cluster=ClusterConfig(app="t", instance_id="me", epoch=1)))
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    actions = drive(
        presence,
        PublishRequested(channel="lobby", message={"type": "t"}, conn=1, except_session_ids=["x"]),
    )
    [published] = [json.loads(a.data) for a in actions if isinstance(a, ClusterPublish)]
    assert (published["kind"], published["by"], published["except"]) == (
        "publish",
        {"userId": "ann", "sessionId": "a1"},
        ["x"],
    )


def test_publishes_from_the_hub_and_the_cluster_are_delivered_here() -> None:
    cluster = ClusterConfig(app="t", instance_id="me", epoch=1)
    presence = hub_presence(cluster=cluster)
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    frame = encode(
        PublishFrame(
            channel="lobby",
            message=Message(type="chat", payload=1),
            except_session_ids=("x",),
            author=Sender(user_id="bob", session_id="b1"),
        )
    )
    actions = drive(presence, HubFrameReceived(data=frame, now=1))
    assert deliveries(actions) == {
        1: [
            {
                "type": "chat",
                "channel": "lobby",
                "from": {"userId": "bob", "sessionId": "b1"},
                "payload": 1,
            }
        ]
    }
    message = ClusterChannelPublish(
        sender="other",
        epoch=1,
        channel="lobby",
        message=Message(type="m"),
        except_session_ids=("a1",),
    )
    assert drive(presence, ClusterMessageReceived(data=encode(message), now=1)) == []
    message = ClusterChannelPublish(
        sender="other", epoch=1, channel="lobby", message=Message(type="m")
    )
    actions = drive(presence, ClusterMessageReceived(data=encode(message), now=1))
    assert deliveries(actions) == {1: [{"type": "m", "channel": "lobby"}]}


# ------------------------------------------------------------------ direct


def test_a_client_s_direct_is_answered_with_whether_the_user_was_found() -> None:
    cluster = ClusterConfig(app="t", instance_id="me", epoch=1)
    presence = hub_presence(cluster=cluster)
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    drive(
        presence,
        HubFrameReceived(
            data=hub_frame("JOIN", userId="bob", sessionId="b1", channels=["lobby"]), now=1
        ),
        ClusterMessageReceived(
            data=encode(
                ClusterAdd(
                    sender="other", epoch=1, ns="/ws", member=Member(session_id="c1", user_id="cid")
                )
            ),
            now=1,
        ),
    )

    def result(user: str) -> object:
        actions = drive(presence, DirectRequested(user_id=user, message={"type": "dm"}, conn=1))
        return [m for m in deliveries(actions)[1] if m["type"] == "direct.result"]

    assert result("ann") == [{"type": "direct.result", "userId": "ann", "found": True}]
    assert result("bob") == [{"type": "direct.result", "userId": "bob", "found": True}]
    assert result("cid") == [{"type": "direct.result", "userId": "cid", "found": True}]
    assert result("dan") == [{"type": "direct.result", "userId": "dan", "found": False}]
    assert presence.knows_user("bob")
    assert not Presence().knows_user("bob")
