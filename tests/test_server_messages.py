"""The server-to-client presence messages: typed, one engine both ways, and a client's map."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_core import Member, Message, PeerError, Sender
from megapresence_core.wire import (
    CLIENT_ERROR_CODES,
    DirectResult,
    PresenceCount,
    PresenceDiff,
    PresenceMap,
    PresenceState,
    ServerMessage,
    Subscribed,
    Unsubscribed,
    channel_text,
    decode_server_message,
    encode,
    session_json,
    user_json,
)

names = st.text(min_size=1, max_size=6)
objects = st.dictionaries(names, st.integers(0, 3) | st.none(), max_size=3)
views = st.sampled_from(["users", "sessions"])
counts = st.integers(0, 10**6)

messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(PresenceState, channel=names, view=views, version=counts, members=objects),
    st.builds(
        PresenceDiff,
        channel=names,
        view=views,
        version=counts,
        joins=objects,
        leaves=objects,
        updates=objects,
    ),
    st.builds(PresenceCount, channel=names, sessions=counts, users=counts),
    st.builds(Subscribed, channel=names, presence=st.sampled_from(["none", "users", "count"])),
    st.builds(Unsubscribed, channel=names),
    st.builds(DirectResult, user_id=names, found=st.booleans()),
)


@given(messages)
def test_every_server_message_round_trips(message: ServerMessage) -> None:
    assert decode_server_message(encode(message)) == message


def test_the_wire_shape_of_each_message() -> None:
    diff = PresenceDiff(channel="c", view="users", version=3, joins={}, leaves={}, updates={})
    assert json.loads(encode(diff)) == {
        "type": "presence.diff",
        "channel": "c",
        "view": "users",
        "version": 3,
        "joins": {},
        "leaves": {},
        "updates": {},
    }
    assert json.loads(encode(DirectResult(user_id="u", found=False))) == {
        "type": "direct.result",
        "userId": "u",
        "found": False,
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"type":"presence.state","channel":"c","view":"all","version":1,"members":{}}', "view"),
        ('{"type":"presence.count","channel":"c","sessions":-1,"users":0}', "sessions"),
        ('{"type":"chat"}', "unknown server message type 'chat'"),
    ],
)
def test_bad_server_messages_are_refused(text: str, match: str) -> None:
    with pytest.raises(PeerError, match=match):
        decode_server_message(text)


def test_members_of_each_view() -> None:
    a2 = Member(session_id="a2", user_id="ann", metadata={"s": 1})
    a1 = Member(session_id="a1", user_id="ann")
    assert session_json(a2) == {"sessionId": "a2", "userId": "ann", "metadata": {"s": 1}}
    assert user_json("ann", [a2, a1]) == {
        "userId": "ann",
        "sessions": [
            {"sessionId": "a1", "metadata": None},
            {"sessionId": "a2", "metadata": {"s": 1}},
        ],
    }


def test_a_channel_message_carries_the_sender_stamped_by_the_server() -> None:
    message = Message(type="chat", payload={"t": "hi"})
    assert json.loads(channel_text("lobby", message, Sender(user_id="u", session_id="s"))) == {
        "type": "chat",
        "channel": "lobby",
        "from": {"userId": "u", "sessionId": "s"},
        "payload": {"t": "hi"},
    }
    assert json.loads(channel_text("lobby", Message(type="ping"), None)) == {
        "type": "ping",
        "channel": "lobby",
    }


def test_presence_modes_have_short_reprs() -> None:
    from megapresence_core import PresenceMode, Subscribe

    assert repr(Subscribe(conn=1, channel="c", mode="users", now=0)) == (
        "Subscribe(conn=1, channel='c', mode=PresenceMode.USERS, now=0, denied=None, since=None)"
    )
    assert PresenceMode.coerce("x", PresenceMode.COUNT) is PresenceMode.COUNT


def test_every_error_code_says_what_a_client_should_do() -> None:
    assert {"forbidden", "channel_full", "too_many_channels", "not_joined", "bad_command"} <= set(
        CLIENT_ERROR_CODES
    )
    assert all(advice for advice in CLIENT_ERROR_CODES.values())


# ------------------------------------------------------------ the client's map


def state(version: int, **members: object) -> PresenceState:
    return PresenceState(channel="c", view="sessions", version=version, members=dict(members))


def diff(
    version: int, joins: dict[str, object] | None = None, **kw: dict[str, object]
) -> PresenceDiff:
    return PresenceDiff(
        channel="c",
        view="sessions",
        version=version,
        joins=joins or {},
        leaves=kw.get("leaves", {}),
        updates=kw.get("updates", {}),
    )


def test_a_map_applies_a_snapshot_then_consecutive_diffs() -> None:
    watched = PresenceMap("c", "sessions")
    assert not watched.in_sync
    assert not watched.apply(diff(1, {"x": 1}))  # a diff before any snapshot
    assert watched.apply(state(4, a=1, b=2))
    assert watched.apply(diff(5, {"c": 3}, leaves={"a": 1}, updates={"b": 20}))
    assert (watched.version, watched.members) == (5, {"b": 20, "c": 3})


@pytest.mark.parametrize(
    "bad",
    [
        diff(7, {"z": 1}),  # a version skipped
        diff(5, {"a": 1}),  # a join of a member it has
        diff(5, leaves={"z": 1}),  # a leave of a member it lacks
        diff(5, leaves={"z": None}),  # ... even one said to be null
        diff(5, leaves={"a": 99}),  # a leave of another value than the one it has
        diff(5, updates={"z": 1}),  # an update of a member it lacks
    ],
)
def test_a_diff_that_does_not_fit_puts_the_map_out_of_sync_until_a_snapshot(
    bad: PresenceDiff,
) -> None:
    watched = PresenceMap("c", "sessions")
    watched.apply(state(4, a=1))
    assert not watched.apply(bad)
    assert not watched.in_sync
    assert not watched.apply(diff(5, {"q": 1}))  # ignored until a sync
    assert watched.apply(state(9, a=1))
    assert watched.in_sync


def test_a_map_takes_only_its_channel_and_view() -> None:
    with pytest.raises(PeerError, match="not for this map"):
        PresenceMap("c", "users").apply(state(1))
