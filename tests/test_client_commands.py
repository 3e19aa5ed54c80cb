"""The browser protocol of ``megapresence serve``: parsing, permissions, replies."""

from __future__ import annotations

import json

import pytest

from megapresence_core import (
    BroadcastRequested,
    DirectRequested,
    KickRequested,
    Member,
    Message,
    MetadataUpdated,
    PeerError,
)
from megapresence_core.actions import (
    StoreEntry,
)
from megapresence_core.wire import (
    BroadcastCommand,
    CommandRefused,
    DirectCommand,
    KickCommand,
    MetadataCommand,
    RosterCommand,
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
        (
            '{"op":"kick","sessionId":"s","reason":"r","requeue":true}',
            KickCommand(session_id="s", reason="r", requeue=True),
        ),
        ('{"op":"kick","sessionId":"s"}', KickCommand(session_id="s")),
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
        ("{}", "bad_frame", "command needs a string 'op'"),
        ('{"op":"broadcast"}', "bad_frame", "broadcast is missing channel"),
        ('{"op":"broadcast","channel":""}', "bad_frame", "channel must be a non-empty string"),
        ('{"op":"broadcast","channel":"c","excludeSelf":1}', "bad_frame", "true or false"),
        ('{"op":"broadcast","channel":"c","type":7}', "bad_frame", "type must be"),
        ('{"op":"direct","userId":true}', "bad_frame", "userId must be"),
        ('{"op":"metadata","metadata":[]}', "bad_frame", "metadata must be an object"),
        ('{"op":"kick","sessionId":"s","requeue":"yes"}', "bad_frame", "requeue must be"),
        ('{"op":"kick","sessionId":"s","reason":5}', "bad_frame", "reason must be a string"),
        ('{"op":"roster","pad":"' + "x" * 17000 + '"}', "too_big", "over the 16384-byte"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(text: str, code: str, match: str) -> None:
    with pytest.raises(PeerError, match=match) as info:
        decode_client_command(text)
    assert info.value.code == code


def test_commands_become_core_events_for_this_connection() -> None:
    message = Message(type="chat", payload=1)
    assert command_event(
        BroadcastCommand(channel="c", payload=1, exclude_self=True),
        ns="/ws",
        session_id="me",
        is_admin=False,
    ) == BroadcastRequested(ns="/ws", channel="c", message=message, except_session_ids=["me"])
    assert command_event(
        BroadcastCommand(channel="c", payload=1, exclude_self=True),
        ns="/ws",
        session_id=None,
        is_admin=False,
    ) == BroadcastRequested(ns="/ws", channel="c", message=message)
    assert command_event(
        DirectCommand(user_id="u", type="chat", payload=1),
        ns="/ws",
        session_id=None,
        is_admin=False,
    ) == DirectRequested(user_id="u", message=message)
    assert command_event(
        MetadataCommand(metadata={"a": 1}), ns="/ws", session_id="me", is_admin=False
    ) == MetadataUpdated(session_id="me", metadata={"a": 1})
    assert command_event(RosterCommand(), ns="/ws", session_id=None, is_admin=False) == (
        RosterCommand()
    )


def test_only_admins_kick_and_only_joined_connections_set_metadata() -> None:
    kick = KickCommand(session_id="s", reason="r")
    assert command_event(kick, ns="/ws", session_id="me", is_admin=False) == CommandRefused(
        code="forbidden", message="only admins may kick"
    )
    assert command_event(kick, ns="/ws", session_id="me", is_admin=True) == KickRequested(
        session_id="s", reason="r"
    )
    assert command_event(
        MetadataCommand(metadata={}), ns="/ws", session_id=None, is_admin=True
    ) == CommandRefused(code="not_joined", message="join a session to set metadata")


def test_replies() -> None:
    assert json.loads(error_reply("forbidden", "no")) == {
        "type": "error",
        "payload": {"code": "forbidden", "message": "no"},
    }
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
