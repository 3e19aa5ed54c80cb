"""The browser protocol of ``megapresence serve``: parsing, permissions, replies."""

from __future__ import annotations

import json

import pytest

from megapresence_core import (
    BroadcastRequested,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    KickRequested,
    LocalUsageError,
    Member,
    Message,
    MetadataUpdated,
    PeerError,
    Presence,
    PresenceMode,
    PublishRequested,
    SessionJoined,
    Subscribe,
    Unsubscribe,
)
from megapresence_core.actions import (
    StoreEntry,
)
from megapresence_core.errors import over_limit
from megapresence_core.events import PresenceSync, RosterRequested
from megapresence_core.wire import (
    RESERVED_PREFIXES,
    RESERVED_TYPES,
    SERVER_MESSAGE_TYPES,
    BroadcastCommand,
    ClientCommand,
    CommandRefused,
    DirectCommand,
    KickCommand,
    MetadataCommand,
    PingCommand,
    PublishCommand,
    RosterCommand,
    SubscribeCommand,
    SyncCommand,
    UnsubscribeCommand,
    command_event,
    decode_client_command,
    encode,
    error_reply,
    roster_reply,
)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        (
            '{"op":"broadcast","channel":"lobby","payload":{"t":1}}',
            BroadcastCommand(channel="lobby", payload={"t": 1}),
        ),
        (
            '{"op":"broadcast","channel":"c","type":"x","excludeSelf":true}',
            BroadcastCommand(channel="c", type="x", exclude_self=True),
        ),
        (
            '{"op":"direct","userId":"bob","payload":"hi"}',
            DirectCommand(user_id="bob", payload="hi"),
        ),
        (
            '{"op":"metadata","metadata":{"status":"away"}}',
            MetadataCommand(metadata={"status": "away"}),
        ),
        ('{"op":"roster"}', RosterCommand()),
        ('{"op":"ping"}', PingCommand()),
        (
            '{"op":"kick","sessionId":"s","reason":"r","requeue":true}',
            KickCommand(session_id="s", reason="r", requeue=True),
        ),
        ('{"op":"kick","sessionId":"s"}', KickCommand(session_id="s")),
        ('{"op":"subscribe","channel":"c"}', SubscribeCommand(channel="c")),
        (
            '{"op":"subscribe","channel":"c","presence":"users"}',
            SubscribeCommand(channel="c", presence=PresenceMode.USERS),
        ),
        ('{"op":"unsubscribe","channel":"c"}', UnsubscribeCommand(channel="c")),
        (
            '{"op":"publish","channel":"c","type":"t","payload":[1],"excludeSelf":true}',
            PublishCommand(channel="c", type="t", payload=[1], exclude_self=True),
        ),
        ('{"op":"sync","channel":"c"}', SyncCommand(channel="c")),
    ],
)
def test_commands_parse(text: str, command: object) -> None:
    assert decode_client_command(text) == command
    assert decode_client_command(encode(command)) == command  # one engine both ways


@pytest.mark.parametrize(
    ("text", "code", "match"),
    [
        ("nope", "bad_json", "not valid JSON"),
        ('{"op":"dance"}', "unknown_op", "unknown command op 'dance'; expected broadcast"),
        ("{}", "bad_command", "command needs a string 'op'"),
        ('{"op":"broadcast"}', "bad_command", "broadcast is missing channel"),
        ('{"op":"broadcast","channel":""}', "bad_command", "channel must be a non-empty string"),
        ('{"op":"broadcast","channel":"c","excludeSelf":1}', "bad_command", "true or false"),
        ('{"op":"broadcast","channel":"c","type":7}', "bad_command", "type must be"),
        ('{"op":"direct","userId":true}', "bad_command", "userId must be"),
        ('{"op":"metadata","metadata":[]}', "bad_command", "metadata must be an object"),
        ('{"op":"kick","sessionId":"s","requeue":"yes"}', "bad_command", "requeue must be"),
        ('{"op":"kick","sessionId":"s","reason":5}', "bad_command", "reason must be a string"),
        ('{"op":"subscribe","channel":"c","presence":"all"}', "bad_command", "presence must be"),
        ('{"op":"publish","channel":"c"}', "bad_command", "publish is missing type"),
        ('{"op":"sync"}', "bad_command", "sync is missing channel"),
        ('{"op":"roster","pad":"' + "x" * 17000 + '"}', "too_big", "over the 16384-byte"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(text: str, code: str, match: str) -> None:
    with pytest.raises(PeerError, match=match) as info:
        decode_client_command(text)
    assert info.value.code == code


RESERVED_EXAMPLES = (
    *sorted(RESERVED_TYPES),
    *(prefix + "x" for prefix in RESERVED_PREFIXES),
    "presence.diff",
    "presence.state",
    "session.detached",
)


@pytest.mark.parametrize("op", ["publish", "broadcast", "direct"])
@pytest.mark.parametrize("kind", RESERVED_EXAMPLES)
def test_no_client_may_send_a_message_of_a_server_type(op: str, kind: str) -> None:
    command = {"op": op, "channel": "c", "userId": "u", "type": kind, "payload": {"x": 1}}
    with pytest.raises(PeerError, match="reserved for the server") as info:
        decode_client_command(json.dumps(command))
    assert info.value.code == "bad_command"


def test_the_reserved_types_are_the_servers() -> None:
    assert {
        "error",
        "subscribed",
        "unsubscribed",
        "direct.result",
        "roster",
        "welcome",
    } == RESERVED_TYPES
    assert RESERVED_PREFIXES == ("presence.", "session.", "server.", "stream.")
    # Every typed server message is covered, so a new one cannot be forgotten.
    for kind in SERVER_MESSAGE_TYPES:
        assert kind in RESERVED_TYPES or kind.startswith(RESERVED_PREFIXES)


@pytest.mark.parametrize(
    "kind", ["chat", "presence", "errors", "Error", "x.presence.y", "sessions"]
)
def test_types_that_only_look_like_the_servers_pass(kind: str) -> None:
    text = json.dumps({"op": "publish", "channel": "c", "type": kind})
    assert decode_client_command(text) == PublishCommand(channel="c", type=kind)


def event_of(command: ClientCommand, session_id: str | None = "me", admin: bool = False) -> object:
    return command_event(command, conn=7, ns="/ws", session_id=session_id, is_admin=admin, now=3.0)


def test_commands_become_core_events_for_this_connection() -> None:
    message = Message(type="chat", payload=1)
    # What a client sends others is stamped with its session by the core (``conn``).
    assert event_of(
        BroadcastCommand(channel="c", payload=1, exclude_self=True)
    ) == BroadcastRequested(
        ns="/ws", channel="c", message=message, except_session_ids=["me"], conn=7
    )
    assert event_of(BroadcastCommand(channel="c", payload=1)) == BroadcastRequested(
        ns="/ws", channel="c", message=message, conn=7
    )
    assert event_of(DirectCommand(user_id="u", type="chat", payload=1)) == DirectRequested(
        user_id="u", message=message, conn=7
    )
    assert event_of(MetadataCommand(metadata={"a": 1})) == MetadataUpdated(
        session_id="me", metadata={"a": 1}, now=3.0, conn=7
    )
    # Any connection may ask for its path's roster; the core answers it (a query of the
    # core's, as an event naming the connection).
    assert event_of(RosterCommand(), session_id=None) == RosterRequested(conn=7, ns="/ws")
    assert event_of(PingCommand(), session_id=None) == PingCommand()  # nothing to do
    assert event_of(SubscribeCommand(channel="c", presence=PresenceMode.COUNT)) == Subscribe(
        conn=7, channel="c", mode="count", now=3.0
    )
    assert event_of(UnsubscribeCommand(channel="c")) == Unsubscribe(conn=7, channel="c", now=3.0)
    assert event_of(SyncCommand(channel="c")) == PresenceSync(conn=7, channel="c")
    # The sender is never taken from the browser: the core stamps it from the connection.
    assert event_of(
        PublishCommand(channel="c", type="chat", payload=1, exclude_self=True)
    ) == PublishRequested(channel="c", message=message, except_session_ids=["me"], conn=7)
    assert event_of(PublishCommand(channel="c", type="chat", payload=1)) == PublishRequested(
        channel="c", message=message, conn=7
    )


def test_the_core_answers_the_roster_command_with_the_path_s_members_and_channels() -> None:
    presence = Presence()
    for conn, user, session, channels in ((1, "ann", "s1", ["a"]), (2, "bob", "s2", [])):
        presence.handle(ConnectionOpened(conn=conn, ns="/ws"))
        presence.handle(
            SessionJoined(conn=conn, user_id=user, session_id=session, channels=channels, now=0)
        )
    presence.handle(ConnectionOpened(conn=3, ns="/other"))
    text = roster_reply(presence.roster("/ws"), presence.local_store_entries())
    assert presence.handle(RosterRequested(conn=3, ns="/ws")) == [Deliver(conns=(3,), text=text)]
    assert json.loads(text)["payload"]["channels"] == {"a": ["s1"]}
    with pytest.raises(LocalUsageError, match="unknown connection 9"):
        presence.handle(RosterRequested(conn=9, ns="/ws"))


def test_only_admins_kick_and_only_joined_connections_use_a_session() -> None:
    kick = KickCommand(session_id="s", reason="r")
    assert event_of(kick) == CommandRefused(code="forbidden", message="only admins may kick")
    assert event_of(kick, admin=True) == KickRequested(session_id="s", reason="r")
    for command, what, channel in [
        (MetadataCommand(metadata={}), "set metadata", None),
        (SubscribeCommand(channel="c"), "subscribe", "c"),
        (UnsubscribeCommand(channel="c"), "unsubscribe", "c"),
        (PublishCommand(channel="c", type="t"), "publish", "c"),
        (SyncCommand(channel="c"), "sync", "c"),
        (BroadcastCommand(channel="c"), "broadcast", "c"),
        (DirectCommand(user_id="u"), "send a direct message", None),
    ]:
        refused = event_of(command, session_id=None, admin=True)
        assert refused == CommandRefused(
            code="not_joined", message=f"join a session to {what}", channel=channel
        )
        assert isinstance(refused, CommandRefused)
        assert json.loads(refused.text)["payload"] == {
            "code": "not_joined",
            "message": f"join a session to {what}",
            **({"channel": channel} if channel else {}),
        }


@pytest.mark.parametrize(
    ("text", "channel"),
    [
        ('{"op":"publish","channel":"c","type":"error"}', "c"),  # reserved type
        ('{"op":"broadcast","channel":"c","type":"presence.x"}', "c"),
        ('{"op":"subscribe","channel":"c","since":{"offset":-1,"epoch":"e"}}', "c"),
        ('{"op":"subscribe","channel":"c","presence":"all"}', "c"),
        ('{"op":"publish","channel":"c"}', "c"),  # a field missing after the channel
        ('{"op":"publish","channel":"","type":"t"}', None),  # no channel it could read
        ('{"op":"sync","channel":5}', None),
        ('{"op":"direct","userId":"u","type":"error"}', None),  # names no channel
        ('{"op":"dance","channel":"c"}', None),  # not a command it knows
        ('{"channel":"c"}', None),
        ("nope", None),
    ],
)
def test_an_error_names_the_channel_whenever_the_command_named_one_it_read(
    text: str, channel: str | None
) -> None:
    with pytest.raises(PeerError) as info:
        decode_client_command(text)
    payload = json.loads(CommandRefused.from_error(info.value).text)["payload"]
    assert payload.get("channel") == channel
    assert payload["code"] == info.value.code


def test_an_error_after_decoding_names_the_decoded_command_s_channel() -> None:
    over = over_limit("channel is 300 bytes")
    assert json.loads(CommandRefused.from_error(over, SubscribeCommand(channel="c")).text)[
        "payload"
    ] == {
        "code": "over_limit",
        "message": "channel is 300 bytes",
        "channel": "c",
    }
    assert (
        "channel"
        not in json.loads(CommandRefused.from_error(over, MetadataCommand(metadata={})).text)[
            "payload"
        ]
    )


def test_replies() -> None:
    assert json.loads(error_reply("forbidden", "no")) == {
        "type": "error",
        "payload": {"code": "forbidden", "message": "no"},
    }
    assert json.loads(error_reply("channel_full", "full", "c"))["payload"]["channel"] == "c"
    ann, bob = Member(session_id="s1", user_id="ann"), Member(session_id="s2", user_id="bob")
    entries = [
        StoreEntry(channel="a", session_id="s1", member=ann),
        StoreEntry(channel="b", session_id="s1", member=ann),
        StoreEntry(channel="a", session_id="s2", member=bob),
        StoreEntry(channel="a", session_id="elsewhere", member=bob),
    ]
    assert json.loads(roster_reply([ann, bob], entries)) == {
        "type": "roster",
        "payload": {
            "members": [{"sessionId": "s1", "userId": "ann"}, {"sessionId": "s2", "userId": "bob"}],
            "channels": {"a": ["s1", "s2"], "b": ["s1"]},
        },
    }
    assert json.loads(roster_reply([]))["payload"] == {"members": [], "channels": {}}
