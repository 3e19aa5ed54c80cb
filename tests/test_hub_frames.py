"""The hub frame codec: every frame type round-trips; every bad input is refused by name."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_core import (
    Member,
    Message,
    PeerError,
)
from megapresence_core.wire import (
    FRAME_TYPES,
    BroadcastFrame,
    BulkLeaveFrame,
    DirectFrame,
    DisconnectFrame,
    ErrorFrame,
    HeartbeatFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MembersFrame,
    MetadataFrame,
    PublishFrame,
    RegisteredFrame,
    RegisterFrame,
    RestoredFrame,
    Sender,
    SubscribeFrame,
    UnsubscribeFrame,
    decode_hub_frame,
    encode,
)

from .helpers import hub_frame

names = st.text(min_size=1, max_size=8)
name_tuples = st.lists(names, max_size=4, unique=True).map(tuple)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
objects = st.dictionaries(st.text(max_size=4), json_values, max_size=3)
messages = st.builds(Message, type=names) | st.builds(Message, type=names, payload=json_values)

authors = st.none() | st.builds(Sender, user_id=names, session_id=names)
frames: st.SearchStrategy[HubFrame] = st.one_of(
    st.builds(
        RegisterFrame,
        bridge_id=names,
        instance_id=names,
        capabilities=name_tuples,
        protocol=st.integers(1, 5),
        channels=name_tuples,
    ),
    st.builds(
        RegisteredFrame,
        hub_id=names,
        heartbeat_interval=st.floats(0.05, 3600),
        max_frames_per_second=st.none() | st.floats(0.001, 1e9),
        frame_burst=st.none() | st.floats(1, 1e9),
        max_frame_bytes=st.none() | st.integers(1, 1 << 30),
    ),
    st.builds(
        JoinFrame,
        user_id=names,
        session_id=names,
        channels=name_tuples,
        metadata=st.none() | objects,
        lingering=st.booleans(),
        exclusive=st.booleans(),
        claim=st.integers(0, 2**53),
        supersedes=st.integers(0, 2**53),
    ),
    st.builds(LeaveFrame, session_id=names),
    st.builds(BulkLeaveFrame, bridge_id=names, session_ids=name_tuples),
    st.builds(MetadataFrame, session_id=names, metadata=objects),
    st.builds(
        BroadcastFrame,
        ns=names,
        channel=names,
        message=messages,
        except_session_ids=name_tuples,
        author=authors,
    ),
    st.builds(DirectFrame, user_id=names, message=messages, author=authors),
    st.builds(
        DisconnectFrame,
        session_id=names,
        reason=st.none() | st.text(max_size=10),
        requeue=st.booleans(),
    ),
    st.just(HeartbeatFrame()),
    st.builds(ErrorFrame, code=names, message=st.text(max_size=10), session_id=st.none() | names),
    st.builds(RestoredFrame, session_id=names, channels=name_tuples),
    st.builds(
        SubscribeFrame,
        session_id=names,
        user_id=names,
        channel=names,
        metadata=st.none() | objects,
    ),
    st.builds(UnsubscribeFrame, session_id=names, channel=names),
    st.builds(
        PublishFrame,
        channel=names,
        message=messages,
        except_session_ids=name_tuples,
        author=authors,
    ),
    st.builds(
        MembersFrame,
        channel=names,
        part=st.integers(0, 3),
        parts=st.integers(0, 3),
        members=st.lists(
            st.builds(Member, session_id=names, user_id=names, metadata=st.none() | objects),
            max_size=3,
        ).map(tuple),
    ),
)


@given(frames)
def test_every_frame_round_trips(frame: HubFrame) -> None:
    text = encode(frame)
    assert decode_hub_frame(text, max_bytes=1 << 20) == frame
    assert decode_hub_frame(text.encode(), max_bytes=1 << 20) == frame


def test_every_frame_type_is_covered_by_the_strategy() -> None:
    assert set(FRAME_TYPES) == {
        "REGISTER",
        "REGISTERED",
        "JOIN",
        "LEAVE",
        "BULK_LEAVE",
        "METADATA",
        "BROADCAST",
        "DIRECT",
        "DISCONNECT",
        "HEARTBEAT",
        "ERROR",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PUBLISH",
        "MEMBERS",
        "RESTORED",
    }


def test_optional_fields_at_their_default_are_left_out() -> None:
    frame = BroadcastFrame(ns="/ws", channel="c", message=Message(type="t"))
    assert json.loads(encode(frame)) == {
        "type": "BROADCAST",
        "payload": {"ns": "/ws", "channel": "c", "message": {"type": "t"}},
    }
    assert json.loads(encode(DisconnectFrame(session_id="s"))) == {
        "type": "DISCONNECT",
        "payload": {"sessionId": "s"},
    }
    assert encode(HeartbeatFrame()) == '{"type":"HEARTBEAT","payload":{}}'


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = hub_frame("LEAVE", sessionId="s", addedInVersion2=True)
    assert decode_hub_frame(data, max_bytes=1000) == LeaveFrame(session_id="s")


def test_a_missing_payload_means_an_empty_one() -> None:
    assert decode_hub_frame('{"type":"HEARTBEAT"}', max_bytes=100) == HeartbeatFrame()


def test_escaped_surrogate_pairs_are_fine() -> None:
    data = '{"type":"LEAVE","payload":{"sessionId":"\\ud83d\\ude00","n":[1,null]}}'
    assert decode_hub_frame(data, max_bytes=1000) == LeaveFrame(session_id="😀")


def test_duplicate_names_in_a_list_are_folded() -> None:
    data = hub_frame("JOIN", userId="u", sessionId="s", channels=["a", "b", "a"])
    assert decode_hub_frame(data, max_bytes=1000) == JoinFrame(
        user_id="u", session_id="s", channels=("a", "b")
    )


@pytest.mark.parametrize(
    ("data", "code", "field", "match"),
    [
        ('{"type":"LEAVE"', "bad_json", None, "not valid JSON"),
        ("[1]", "bad_json", None, "must be a JSON object, not list"),
        ('{"type":"LEAVE","type":"JOIN"}', "bad_json", None, "duplicate key 'type'"),
        ('{"type":"HEARTBEAT","payload":{"x":NaN}}', "bad_json", None, "NaN is not valid JSON"),
        ('{"type":"LEAVE","payload":{"sessionId":"\\ud800"}}', "bad_json", None, "surrogate"),
        ('{"type":"HEARTBEAT","payload":{"x":[1,"\\udfff"]}}', "bad_json", None, "surrogate"),
        ('{"type":"HEARTBEAT","payload":{"\\uDBFF":1}}', "bad_json", None, "surrogate"),
        ('{"payload":{}}', "bad_frame", "type", "needs a string 'type'"),
        ('{"type":"NOPE"}', "unknown_type", "type", "unknown hub frame type 'NOPE'"),
        ('{"type":"LEAVE","payload":[]}', "bad_frame", "payload", "payload must be an object"),
        (hub_frame("LEAVE"), "bad_frame", "sessionId", "LEAVE is missing sessionId"),
        (hub_frame("LEAVE", sessionId=""), "bad_frame", "sessionId", "must be a non-empty string"),
        (
            hub_frame("MEMBERS", channel="c", part=0, parts=1, members={}),
            "bad_frame",
            "members",
            "must be a list of members",
        ),
        (
            hub_frame("PUBLISH", channel="c", message={"type": "t"}, **{"from": {"userId": "u"}}),
            "bad_frame",
            "from",
            "must be a non-empty string",
        ),
        (
            hub_frame("JOIN", userId="u", sessionId="s", channels="c"),
            "bad_frame",
            "channels",
            "must be a list of non-empty strings",
        ),
        (
            hub_frame("JOIN", userId="u", sessionId="s", channels=[1]),
            "bad_frame",
            "channels",
            "must be a list of non-empty strings",
        ),
        (
            hub_frame("JOIN", userId="u", sessionId="s", channels=[], metadata=[]),
            "bad_frame",
            "metadata",
            "must be an object",
        ),
        (
            hub_frame("DISCONNECT", sessionId="s", requeue="yes"),
            "bad_frame",
            "requeue",
            "must be true or false",
        ),
        (
            hub_frame("DISCONNECT", sessionId="s", reason=5),
            "bad_frame",
            "reason",
            "must be a string",
        ),
        (
            hub_frame("REGISTER", bridgeId="b", instanceId="i", protocol=0),
            "bad_frame",
            "protocol",
            "must be a positive integer",
        ),
        (
            hub_frame("REGISTER", bridgeId="b", instanceId="i", protocol=True),
            "bad_frame",
            "protocol",
            "must be a positive integer",
        ),
        (
            hub_frame("REGISTERED", hubId="h", heartbeatInterval=1, maxFramesPerSecond=0),
            "bad_frame",
            "maxFramesPerSecond",
            "must be a positive number",
        ),
        (
            hub_frame("REGISTERED", hubId="h", heartbeatInterval=1, frameBurst=True),
            "bad_frame",
            "frameBurst",
            "must be a positive number",
        ),
        (
            hub_frame("REGISTERED", hubId="h", heartbeatInterval=1, maxFrameBytes=1.5),
            "bad_frame",
            "maxFrameBytes",
            "must be a positive integer",
        ),
        (
            hub_frame("ERROR", code="too_many_channels", sessionId=""),
            "bad_frame",
            "sessionId",
            "must be a non-empty string",
        ),
        (
            hub_frame("REGISTERED", hubId="h", heartbeatInterval=-1),
            "bad_frame",
            "heartbeatInterval",
            "must be a number of seconds from 0.05 to 3600",
        ),
        (
            hub_frame("DIRECT", userId="u", message="hi"),
            "bad_frame",
            "message",
            "must be an object with a 'type'",
        ),
        (
            hub_frame("DIRECT", userId="u", message={"type": ""}),
            "bad_frame",
            "message",
            "must have a non-empty string 'type'",
        ),
    ],
)
def test_bad_frames_are_refused_naming_the_field(
    data: str, code: str, field: str | None, match: str
) -> None:
    with pytest.raises(PeerError, match=match) as info:
        decode_hub_frame(data, max_bytes=10_000)
    assert (info.value.code, info.value.field) == (code, field)


def test_the_size_limit_is_checked_before_parsing_and_counts_bytes() -> None:
    with pytest.raises(PeerError, match="4 bytes is over the 3-byte limit") as info:
        decode_hub_frame("éé", max_bytes=3)  # two characters, four bytes
    assert (info.value.code, info.value.close_code) == ("too_big", 1009)
    with pytest.raises(PeerError, match="over the 3-byte limit"):
        decode_hub_frame(b"{}  ", max_bytes=3)


def test_invalid_utf8_bytes_are_refused() -> None:
    with pytest.raises(PeerError, match="not valid JSON") as info:
        decode_hub_frame(b'{"type":"\xff"}', max_bytes=100)
    assert info.value.code == "bad_json"


def test_deep_nesting_is_refused_not_a_crash() -> None:
    data = '{"type":"HEARTBEAT","payload":{"x":' + "[" * 100_000 + "]" * 100_000 + "}}"
    with pytest.raises(PeerError):
        decode_hub_frame(data, max_bytes=1 << 20)


# ------------------------------------------------- numbers at the edges of JSON

HUGE = "9" * 5000  # past Python's default 4300-digit limit for int <-> str


@pytest.mark.parametrize(
    ("number", "value"),
    [
        ("-0", 0),
        ("-0.0", -0.0),
        ("1e308", 1e308),
        ("5e-324", 5e-324),
        ("9" * 4000, int("9" * 4000)),
    ],
)
def test_finite_numbers_decode_and_re_encode(number: str, value: object) -> None:
    data = '{"type":"METADATA","payload":{"sessionId":"s","metadata":{"n":NUM}}}'.replace(
        "NUM", number
    )
    frame = decode_hub_frame(data, max_bytes=1 << 20)
    assert isinstance(frame, MetadataFrame)
    assert frame.metadata["n"] == value
    assert decode_hub_frame(encode(frame), max_bytes=1 << 20) == frame


@pytest.mark.parametrize("number", ["1e309", "-1e999", "1e999", "1E400", HUGE, "-" + HUGE])
@pytest.mark.parametrize(
    "template",
    [
        '{"type":"METADATA","payload":{"sessionId":"s","metadata":{"n":NUM}}}',
        '{"type":"JOIN","payload":{"userId":"u","sessionId":"s","channels":[],"metadata":[NUM]}}',
        '{"type":"HEARTBEAT","payload":{"unknown":NUM}}',
        '{"type":"REGISTERED","payload":{"hubId":"h","heartbeatInterval":NUM}}',
    ],
)
def test_numbers_that_are_not_finite_are_refused_wherever_they_appear(
    number: str, template: str
) -> None:
    with pytest.raises(PeerError, match="not valid JSON") as info:
        decode_hub_frame(template.replace("NUM", number), max_bytes=1 << 20)
    assert info.value.code == "bad_json"


@pytest.mark.parametrize("interval", ["0", "0.01", "3601", "1e30", "-5"])
def test_a_registered_heartbeat_interval_out_of_bounds_is_a_bad_frame(interval: str) -> None:
    data = '{"type":"REGISTERED","payload":{"hubId":"h","heartbeatInterval":NUM}}'.replace(
        "NUM", interval
    )
    with pytest.raises(PeerError, match=r"from 0\.05 to 3600") as info:
        decode_hub_frame(data, max_bytes=1000)
    assert info.value.field == "heartbeatInterval"
