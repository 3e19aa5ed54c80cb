"""Close reasons, JSON rules, value classes, configuration and reprs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_core import (
    CloseCode,
    CloseConnection,
    ConnectionOpened,
    Deliver,
    DuplicateSessionPolicy,
    HubConfig,
    HubLinkConfig,
    KickRequested,
    Limits,
    LocalUsageError,
    Log,
    LogLevel,
    Message,
    MetadataUpdated,
    PresenceConfig,
    SessionJoined,
    StoreConfig,
    Tick,
)
from megapresence_core._values import (
    ENVELOPE_DEPTH,
    MAX_JSON_DEPTH,
    decode_object,
    dumps,
    freeze_json,
)
from megapresence_core.actions import (
    SendHubFrame,
    StoreEntry,
    StoreRefresh,
)
from megapresence_core.config import (
    redact_url,
)
from megapresence_core.errors import (
    MAX_CLOSE_REASON_BYTES,
    PeerError,
    truncate_reason,
)
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    ClusterMessageReceived,
    HubFrameReceived,
    HubLost,
)


@given(st.text())
def test_truncated_reason_is_a_whole_character_prefix_within_the_limit(reason: str) -> None:
    cut = truncate_reason(reason)
    encoded = cut.encode("utf-8")
    assert len(encoded) <= MAX_CLOSE_REASON_BYTES
    full = reason.encode("utf-8", "replace")
    assert full.startswith(encoded)
    if len(full) <= MAX_CLOSE_REASON_BYTES:
        assert encoded == full
    else:  # as long as possible: the next character would not have fitted
        assert len(encoded) > MAX_CLOSE_REASON_BYTES - 4


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("a" * 200, "a" * 123),
        ("é" * 100, "é" * 61),  # 2 bytes each: 122 bytes, the 62nd would make 124
        ("😀" * 40, "😀" * 30),  # 4 bytes each: 120 bytes
        ("x" + "가" * 50, "x" + "가" * 40),  # 1 + 120 bytes; the 41st Hangul would make 124
        ("short", "short"),
        ("\ud800bad", "?bad"),  # a lone surrogate cannot travel in UTF-8
    ],
)
def test_truncate_reason_examples(reason: str, expected: str) -> None:
    assert truncate_reason(reason) == expected


def test_freeze_json_copies_containers_and_keeps_scalars() -> None:
    value = {"a": [1, 2]}
    frozen, text = freeze_json(value, what="x", max_bytes=100)
    assert frozen == value
    assert frozen is not value
    assert text == '{"a":[1,2]}'
    assert freeze_json("s", what="x", max_bytes=100) == ("s", '"s"')
    assert freeze_json((1, 2), what="x", max_bytes=100) == ([1, 2], "[1,2]")
    with pytest.raises(LocalUsageError, match="x is 11 bytes of JSON; the limit is 10"):
        freeze_json(value, what="x", max_bytes=10)


def test_message_coerce_accepts_a_message_as_is() -> None:
    message = Message(type="t", payload=[1])
    assert Message.coerce(message) is message
    assert Message.coerce({"type": "t", "payload": [1]}) == message
    assert message.json == '{"type":"t","payload":[1]}'
    assert (message.payload_json, message.size) == ("[1]", 26)
    assert Message(type="t").json == '{"type":"t"}'


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Limits(max_message_bytes=0), "max_message_bytes must be a positive number"),
        (lambda: Limits(max_message_bytes=True), "max_message_bytes must be a positive number"),
        (lambda: HubLinkConfig(bridge_id="", instance_id="i"), "bridge_id must be a non-empty"),
        (
            lambda: HubLinkConfig(bridge_id="b", instance_id="i", channels="lobby"),
            "channels must be an iterable of strings",
        ),
        (
            lambda: HubLinkConfig(bridge_id="b", instance_id="i", capabilities=[""]),
            "each of capabilities",
        ),
        (
            lambda: HubLinkConfig(bridge_id="b", instance_id="i", backoff_initial=5, backoff_max=1),
            "backoff_max must be >= backoff_initial",
        ),
        (
            lambda: HubLinkConfig(bridge_id="b", instance_id="i", backoff_multiplier=0.5),
            "backoff_multiplier must be >= 1",
        ),
        (lambda: StoreConfig(ttl=10, refresh_interval=10), "refresh_interval must be shorter"),
        (lambda: PresenceConfig(presence_window=-1), "presence_window must be a number of seconds"),
        (
            lambda: PresenceConfig(leave_grace=float("inf")),
            "leave_grace must be a number of seconds",
        ),
        (lambda: PresenceConfig(leave_grace=True), "leave_grace must be a number of seconds"),
        (
            lambda: PresenceConfig(duplicate_session="bogus"),
            "duplicate_session must be one of detach_prior, close_prior, refuse_new, not 'bogus'",
        ),
        (
            lambda: PresenceConfig(duplicate_session="REFUSE_NEW"),
            "duplicate_session must be one of",
        ),
        (lambda: PresenceConfig(duplicate_session=None), "duplicate_session must be one of"),
        (lambda: Message(type="presence.state"), "'presence.state' is reserved for the server"),
        (lambda: Message(type="welcome"), "'welcome' is reserved for the server"),
        (lambda: Limits(max_members_per_channel=0), "max_members_per_channel must be a positive"),
        (lambda: HubConfig(hub_id="h", tokens=[]), "at least one token"),
        (lambda: HubConfig(hub_id="h", tokens=[""]), "each token must be a non-empty string"),
        (lambda: HubConfig(hub_id="", tokens=["t"]), "hub_id must be a non-empty string"),
        (
            lambda: HubConfig(hub_id="h", tokens=["t"], heartbeat_interval=7200),
            "heartbeat_interval must be from 0.05 to 3600 seconds",
        ),
        (lambda: ConnectionOpened(conn=None, ns="/ws"), "conn must be a hashable id"),
        (lambda: ConnectionOpened(conn=[1], ns="/ws"), "conn must be a hashable id"),
        (lambda: ConnectionOpened(conn=1, ns=""), "ns must be a non-empty string"),
        (lambda: Tick(now=float("nan")), "now must be monotonic seconds"),
        (lambda: Tick(now=True), "now must be monotonic seconds"),
    ],
)
def test_bad_configuration_and_events_fail_when_built(build: object, match: str) -> None:
    with pytest.raises(LocalUsageError, match=match):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
def test_a_duplicate_session_policy_may_be_given_as_its_documented_name(
    policy: DuplicateSessionPolicy,
) -> None:
    assert PresenceConfig(duplicate_session=policy.value).duplicate_session is policy
    assert PresenceConfig(duplicate_session=policy).duplicate_session is policy


def test_reprs_are_short_and_readable() -> None:
    deliver = Deliver(conns=tuple(range(100)), text="x" * 1000)
    assert repr(deliver) == f"Deliver(conns=(0, 1, 2, 3, …+96), text='{'x' * 48}'…(1000))"
    assert repr(Deliver(conns=(1,), text="hi")) == "Deliver(conns=(1,), text='hi')"
    assert repr(SendHubFrame(data="y" * 60)).endswith("…(60))")
    assert repr(HubFrameReceived(data="z" * 500, now=1.0)) == (
        "HubFrameReceived(data=<500 chars>, now=1.0)"
    )
    assert repr(Message(type="t", payload="p" * 100)).startswith("Message(type='t', payload=\"ppp")
    assert len(repr(Message(type="t", payload="p" * 100))) < 70
    assert repr(Message(type="t")) == "Message(type='t')"
    entry = StoreEntry(channel="c", session_id="s", member=None)  # type: ignore[arg-type]
    assert repr(StoreRefresh(entries=(entry,) * 3, ttl=1.0)) == (
        "StoreRefresh(entries=<3 entries>, ttl=1.0)"
    )


def test_codes_and_levels_print_by_name() -> None:
    close = CloseConnection(conn=1, code=CloseCode.REQUEUE, reason="r")
    assert repr(close) == "CloseConnection(conn=1, code=CloseCode.REQUEUE, reason='r')"
    assert close.code == 4503
    log = Log(level=LogLevel.WARNING, event="e", fields={"k": 1})
    assert repr(log) == "Log(level=WARNING, event='e', fields={'k': 1})"


def test_session_joined_dedups_channels_in_first_seen_order() -> None:
    event = SessionJoined(conn=1, user_id="u", session_id="s", channels=["b", "a", "b"], now=0.0)
    assert event.channels == ("b", "a")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:hunter2@db:6379/0", "redis://user:***@db:6379/0"),
        ("nats://s3cret-token@nats", "nats://***@nats"),
        ("redis://:pw@db", "redis://:***@db"),
    ],
)
def test_urls_are_logged_without_their_secret(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "value",
    [
        float("inf"),
        float("-inf"),
        float("nan"),
        1e309,
        [1, {"x": float("inf")}],
        pytest.param(10**5000, id="past-the-int-digits-limit"),
    ],
)
def test_values_from_the_embedder_must_be_finite_json(value: object) -> None:
    with pytest.raises(LocalUsageError, match="JSON-serializable text with finite numbers"):
        Message(type="t", payload=value)  # type: ignore[arg-type]
    with pytest.raises(LocalUsageError, match="finite numbers"):
        SessionJoined(conn=1, user_id="u", session_id="s", metadata={"x": value}, now=0.0)
    with pytest.raises(LocalUsageError, match="finite numbers"):
        MetadataUpdated(session_id="s", metadata={"x": value}, now=0.0)


@pytest.mark.parametrize("value", [-0.0, 1e308, 5e-324, pytest.param(10**4000, id="4001-digits")])
def test_finite_edge_numbers_from_the_embedder_are_accepted(value: object) -> None:
    assert Message(type="t", payload=value).payload == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: HubFrameReceived(data=None, now=1), "data must be str or bytes, not NoneType"),
        (lambda: HubFrameReceived(data=["x"], now=1), "data must be str or bytes"),
        (lambda: ClusterMessageReceived(data=3, now=1), "data must be str or bytes"),
        (lambda: BridgeFrameReceived(bridge=1, data=None, now=1), "data must be str or bytes"),
        (lambda: HubFrameReceived(data="{}", now=float("inf")), "now must be monotonic"),
        (lambda: Tick(now=float("-inf")), "now must be monotonic seconds"),
        (lambda: Tick(now="1"), "now must be monotonic seconds"),
        (lambda: HubLost(now=1, code="1000"), "code must be int or None, not str"),
        (lambda: HubLost(now=1, code=True), "code must be int or None, not bool"),
        (lambda: HubLost(now=1, reason=None), "reason must be str, not NoneType"),
        (lambda: BridgeConnecting(bridge=1, authorization=b"x", now=1), "must be str or None"),
        (lambda: KickRequested(session_id="s", requeue=1), "requeue must be bool, not int"),
        (lambda: KickRequested(session_id="s", reason=5), "reason must be str or None, not int"),
        (lambda: Limits(max_message_bytes=float("inf")), "must be a positive number"),
    ],
)
def test_wrong_typed_event_fields_are_misuse_when_built(build: object, match: str) -> None:
    with pytest.raises(LocalUsageError, match=match):
        build()  # type: ignore[operator]


# ------------------------------------------------------------ nesting depth


def nested(depth: int, leaf: object = "x") -> object:
    """``leaf`` inside ``depth`` arrays and objects, alternating."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_decoded_objects_nest_at_most_max_json_depth() -> None:
    deepest = dumps({"op": nested(MAX_JSON_DEPTH - 1)})
    assert decode_object(deepest, max_bytes=1 << 20, what="command")["op"]
    with pytest.raises(
        PeerError, match=f"command nests deeper than {MAX_JSON_DEPTH} levels"
    ) as info:
        decode_object(dumps({"op": nested(MAX_JSON_DEPTH)}), max_bytes=1 << 20, what="command")
    assert info.value.code == "bad_json"
    # Many brackets but shallow: the walk runs and finds nothing too deep.
    wide = {"a": [[1]] * 100, "b": {"c": [{}] * 100}}
    assert decode_object(dumps(wide), max_bytes=1 << 20, what="command") == wide


def test_a_dialect_adds_its_envelope_to_the_depth() -> None:
    envelope = MAX_JSON_DEPTH + ENVELOPE_DEPTH
    text = dumps({"frame": nested(envelope - 1)})
    assert decode_object(text, max_bytes=1 << 20, what="f", max_depth=envelope)
    with pytest.raises(PeerError, match="nests deeper"):
        decode_object(text, max_bytes=1 << 20, what="f")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 970, 100_000])
def test_values_from_the_embedder_nest_at_most_max_json_depth(depth: int) -> None:
    """970 levels once passed, then failed to re-encode inside a hub frame or a snapshot;
    100,000 is past the encoder's own recursion limit."""
    too_deep = f"nests deeper than {MAX_JSON_DEPTH} levels"
    with pytest.raises(LocalUsageError, match=too_deep):
        Message(type="t", payload=nested(depth))  # type: ignore[arg-type]
    with pytest.raises(LocalUsageError, match=too_deep):
        MetadataUpdated(session_id="s", metadata={"x": nested(depth)}, now=0.0)  # type: ignore[dict-item]


def test_the_deepest_embedder_value_and_bracket_text_are_accepted() -> None:
    deepest = nested(MAX_JSON_DEPTH)
    assert freeze_json(deepest, what="payload", max_bytes=1 << 20)[0] == deepest
    assert freeze_json("[" * 1000, what="payload", max_bytes=1 << 20)[0] == "[" * 1000
