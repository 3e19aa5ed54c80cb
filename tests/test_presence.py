"""Unit tests: one test (or a few) per rule of ``Presence``."""

from __future__ import annotations

from typing import Any

import pytest

from megapresence_core import (
    BroadcastRequested,
    CloseCode,
    CloseConnection,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    DuplicateSessionPolicy,
    HubLinkConfig,
    KickRequested,
    Limits,
    LocalUsageError,
    Log,
    LogLevel,
    Member,
    Message,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    PresenceMode,
    SessionJoined,
    ShutdownRequested,
    StoreConfig,
    Tick,
)
from megapresence_core.actions import (
    StoreDelete,
    StoreEntry,
    StorePut,
    StoreRefresh,
)
from megapresence_core.config import DEFAULT_LEAVE_GRACE
from megapresence_core.events import (
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import (
    ConnectionState,
    HubLinkState,
)

from .helpers import (
    deliveries,
    drive,
    hub_frame,
    hub_presence,
    open_joined,
    refusals,
    registered_frame,
    sent_frames,
)

# ---------------------------------------------------------------- indexes


def test_open_puts_the_connection_in_its_ns_only() -> None:
    presence = Presence()
    drive(presence, ConnectionOpened(conn=1, ns="/a"), ConnectionOpened(conn=2, ns="/b"))
    assert presence.connection_state(1) is ConnectionState.OPENED
    actions = drive(presence, BroadcastRequested(ns="/a", channel="c", message={"type": "t"}))
    assert deliveries(actions) == {1: [{"type": "t", "ns": "/a"}]}


def test_opening_the_same_connection_twice_is_misuse() -> None:
    presence = Presence()
    drive(presence, ConnectionOpened(conn=1, ns="/a"))
    with pytest.raises(LocalUsageError, match="already open"):
        presence.handle(ConnectionOpened(conn=1, ns="/b"))


def test_close_removes_the_connection_from_every_index() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1", channels=["c"])
    drive(presence, ConnectionClosed(conn=1, now=0.0))
    assert presence.connection_state(1) is ConnectionState.CLOSED
    indexes = presence._local
    assert (indexes.records, indexes.by_ns, indexes.by_user, indexes.by_session) == ({}, {}, {}, {})


@pytest.mark.parametrize(
    "event",
    [
        SessionJoined(conn=9, user_id="u", session_id="s", now=0.0),
        ConnectionClosed(conn=9, now=0.0),
    ],
)
def test_unknown_connection_is_misuse(event: object) -> None:
    with pytest.raises(LocalUsageError, match="unknown connection 9"):
        Presence().handle(event)  # type: ignore[arg-type]


# ------------------------------------------------------------------- join


def test_join_maps_user_and_session_and_keeps_metadata() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1", channels=["c", "d"], metadata={"status": "away"})
    assert presence.connection_state(1) is ConnectionState.JOINED
    assert presence.roster("/ws") == [
        Member(session_id="s1", user_id="ann", metadata={"status": "away"})
    ]


def test_join_copies_metadata_so_later_mutation_by_the_caller_does_not_leak_in() -> None:
    presence = Presence()
    metadata = {"status": "here", "tags": ["a"]}
    open_joined(presence, 1, "ann", "s1", metadata=metadata)
    metadata["tags"].append("b")  # type: ignore[attr-defined]
    assert presence.roster("/ws")[0].metadata == {"status": "here", "tags": ["a"]}


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("user_id", "", "user_id must be a non-empty string"),
        ("session_id", "", "session_id must be a non-empty string"),
        ("user_id", None, "user_id must be a non-empty string"),
        ("channels", "room", "channels must be an iterable of strings"),
        ("channels", ["ok", ""], "each of channels must be a non-empty string"),
        ("metadata", ["not", "a", "mapping"], "metadata must be a mapping"),
        ("metadata", {"x": object()}, "must be JSON-serializable"),
        ("metadata", {"x": "\ud800"}, "must be JSON-serializable text"),
    ],
)
def test_join_validates_its_arguments_when_built(field: str, value: object, match: str) -> None:
    arguments: dict[str, object] = {"conn": 1, "user_id": "u", "session_id": "s", "now": 0.0}
    arguments[field] = value
    with pytest.raises(LocalUsageError, match=match):
        SessionJoined(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user_id", "\ud800"),
        ("session_id", "s\udfff"),
        ("channels", ["ok", "\udc80room"]),
    ],
)
def test_a_name_utf8_cannot_carry_is_refused_when_built_as_the_peers_doing(
    field: str, value: object
) -> None:
    """A lone surrogate (a JWT claim may hold one) never reaches a frame: refused when the
    join is built, with the hints of a peer's bad value (400 before an upgrade)."""
    arguments: dict[str, object] = {"conn": 1, "user_id": "u", "session_id": "s", "now": 0.0}
    arguments[field] = value
    with pytest.raises(LocalUsageError, match="lone surrogate, which UTF-8 cannot carry") as info:
        SessionJoined(**arguments)  # type: ignore[arg-type]
    assert (info.value.http_status, info.value.close_code) == (400, 1008)
    assert "\\u" not in str(info.value)  # the value is not repeated


def test_names_utf8_can_carry_are_kept() -> None:
    joined = SessionJoined(conn=1, user_id="\U0001f600", session_id="\u00e9t\u00e9", now=0.0)
    assert (joined.user_id, joined.session_id) == ("\U0001f600", "\u00e9t\u00e9")


def test_local_usage_error_is_a_value_error() -> None:
    assert issubclass(LocalUsageError, ValueError)


def test_join_twice_on_one_connection_is_misuse_and_changes_nothing() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1")
    with pytest.raises(LocalUsageError, match="already joined"):
        presence.handle(SessionJoined(conn=1, user_id="bob", session_id="s2", now=0.0))
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann")]


def test_join_over_the_channel_limit_is_misuse_and_changes_nothing() -> None:
    presence = Presence(PresenceConfig(limits=Limits(max_channels_per_session=2)))
    drive(presence, ConnectionOpened(conn=1, ns="/ws"))
    with pytest.raises(LocalUsageError, match="3 channels; the limit is 2"):
        presence.handle(
            SessionJoined(conn=1, user_id="u", session_id="s", channels=["a", "b", "c"], now=0.0)
        )
    assert presence.connection_state(1) is ConnectionState.OPENED


def test_join_over_the_metadata_limit_is_misuse() -> None:
    presence = Presence(PresenceConfig(limits=Limits(max_metadata_bytes=10)))
    drive(presence, ConnectionOpened(conn=1, ns="/ws"))
    with pytest.raises(LocalUsageError, match="metadata is 15 bytes of JSON; the limit is 10"):
        presence.handle(
            SessionJoined(conn=1, user_id="u", session_id="s", metadata={"k": "0123456"}, now=0.0)
        )
    assert presence.connection_state(1) is ConnectionState.OPENED


def test_duplicate_session_detaches_the_prior_connection_without_closing_it() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    actions = open_joined(presence, 2, "ann", "s1")
    assert not [a for a in actions if isinstance(a, CloseConnection)]
    assert [a.event for a in actions if isinstance(a, Log)] == ["presence.session.duplicate"]
    assert presence.connection_state(1) is ConnectionState.DETACHED
    # The detached connection is in no index: no broadcast, no direct reaches it.
    actions = drive(
        presence,
        BroadcastRequested(ns="/ws", channel="c", message={"type": "b"}),
        DirectRequested(user_id="ann", message={"type": "d"}),
    )
    assert set(deliveries(actions)) == {2}


def test_a_detached_connection_cannot_set_the_metadata_of_the_session_it_lost() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1", channels=["c"])
    open_joined(presence, 2, "ann", "s1")
    # The shim still knows connection 1 by the identity it joined with.
    metadata = MetadataUpdated(session_id="s1", metadata={"x": 1}, now=0.0, conn=1)
    actions = drive(presence, metadata)
    assert refusals(actions) == [(1, "not_joined", None)]  # answered, and nothing changed
    assert sent_frames(actions) == []
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann")]
    assert [m.metadata for m in presence.channel_members("c")] == [None]


def test_closing_the_detached_connection_neither_unmaps_nor_leaves_the_new_owner() -> None:
    presence = hub_presence(store=StoreConfig())
    open_joined(presence, 1, "ann", "s1", channels=["c"])
    open_joined(presence, 2, "ann", "s1", channels=["c"])
    actions = drive(presence, ConnectionClosed(conn=1, now=0.0))
    assert actions == []  # no LEAVE, no roster removal for s1
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann")]
    actions = drive(presence, DirectRequested(user_id="ann", message={"type": "d"}))
    assert set(deliveries(actions)) == {2}


def test_duplicate_session_keeps_its_channels_and_gains_the_new_join_s() -> None:
    presence = Presence(PresenceConfig(store=StoreConfig()))
    open_joined(presence, 1, "ann", "s1", channels=["a", "b"])
    actions = open_joined(presence, 2, "ann", "s1", channels=["b", "c"])
    # The subscriptions belong to the session, not to the connection that carried it.
    assert [a for a in actions if isinstance(a, StoreDelete)] == []
    assert [a.channel for a in actions if isinstance(a, StorePut)] == ["a", "b", "c"]
    assert presence.subscriptions(2) == dict.fromkeys("abc", PresenceMode.NONE)


def test_duplicate_session_close_prior_policy_closes_it_with_1008() -> None:
    presence = Presence(PresenceConfig(duplicate_session=DuplicateSessionPolicy.CLOSE_PRIOR))
    open_joined(presence, 1, "ann", "s1")
    actions = open_joined(presence, 2, "ann", "s1", metadata={"tab": 2})
    assert CloseConnection(conn=1, code=1008, reason="session taken over by a new connection") in (
        actions
    )
    assert presence.connection_state(1) is ConnectionState.DETACHED
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann", metadata={"tab": 2})]


def test_duplicate_session_refuse_new_policy_closes_the_new_one_and_keeps_the_prior() -> None:
    presence = hub_presence(duplicate_session=DuplicateSessionPolicy.REFUSE_NEW)
    open_joined(presence, 1, "ann", "s1")
    actions = open_joined(presence, 2, "ann", "s1")
    assert CloseConnection(conn=2, code=1008, reason="session id already connected") in actions
    assert sent_frames(actions) == []
    assert presence.connection_state(2) is ConnectionState.OPENED
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann")]


@pytest.mark.parametrize("policy", list(DuplicateSessionPolicy))
def test_another_users_session_id_is_refused_under_every_policy(
    policy: DuplicateSessionPolicy,
) -> None:
    presence = hub_presence(duplicate_session=policy, store=StoreConfig())
    open_joined(presence, 1, "ann", "s1", channels=["c"], metadata={"m": 1})
    actions = open_joined(presence, 2, "mallory", "s1", channels=["c"])
    assert actions == [
        Log(
            level=LogLevel.WARNING,
            event="presence.session.foreign",
            fields={
                "session_id": "s1",
                "prior_user_id": "ann",
                "user_id": "mallory",
                "policy": "refuse_new",
            },
        ),
        CloseConnection(conn=2, code=1008, reason="session id belongs to another user"),
    ]
    # The holder is untouched: still joined, still reached, still the roster's.
    assert presence.connection_state(1) is ConnectionState.JOINED
    assert presence.connection_state(2) is ConnectionState.OPENED
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann", metadata={"m": 1})]
    reached = drive(presence, DirectRequested(user_id="ann", message={"type": "d"}))
    assert set(deliveries(reached)) == {1}


# -------------------------------------------------------------- broadcast


def test_broadcast_reaches_joined_and_unjoined_connections_of_the_ns_except_sessions() -> None:
    presence = Presence()
    drive(presence, ConnectionOpened(conn="anon", ns="/ws"))
    open_joined(presence, "a", "ann", "s1")
    open_joined(presence, "b", "bob", "s2")
    open_joined(presence, "elsewhere", "cid", "s3", ns="/other")
    actions = drive(
        presence,
        BroadcastRequested(
            ns="/ws",
            channel="c",
            message={"type": "chat", "payload": {"text": "hi"}},
            except_session_ids=["s2"],
        ),
    )
    expected = {"type": "chat", "ns": "/ws", "payload": {"text": "hi"}}
    assert deliveries(actions) == {"anon": [expected], "a": [expected]}


def test_broadcast_encodes_once_into_one_action_for_all_targets() -> None:
    presence = Presence()
    for conn in range(50):
        drive(presence, ConnectionOpened(conn=conn, ns="/ws"))
    actions = drive(presence, BroadcastRequested(ns="/ws", channel="c", message={"type": "t"}))
    assert actions == [Deliver(conns=tuple(range(50)), text='{"type":"t","ns":"/ws"}')]


def test_broadcast_keeps_payload_null_distinct_from_no_payload() -> None:
    presence = Presence()
    drive(presence, ConnectionOpened(conn=1, ns="/ws"))
    actions = drive(
        presence,
        BroadcastRequested(ns="/ws", channel="c", message={"type": "t", "payload": None}),
        BroadcastRequested(ns="/ws", channel="c", message={"type": "t"}),
    )
    assert [a.text for a in actions if isinstance(a, Deliver)] == [
        '{"type":"t","ns":"/ws","payload":null}',
        '{"type":"t","ns":"/ws"}',
    ]


def test_broadcast_to_an_empty_ns_or_all_excepted_delivers_nothing() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1")
    assert drive(presence, BroadcastRequested(ns="/none", channel="c", message={"type": "t"})) == []
    assert (
        drive(
            presence,
            BroadcastRequested(
                ns="/ws", channel="c", message={"type": "t"}, except_session_ids=["s1"]
            ),
        )
        == []
    )


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"payload": 1}, "needs a 'type'"),
        ({"type": 3}, "type must be a non-empty string"),
        ({"type": ""}, "type must be a non-empty string"),
        ({"type": "t", "extra": 1}, "unknown keys"),
        ({"type": "t", "payload": {1, 2}}, "must be JSON-serializable"),
        ({"type": "t", "payload": float("nan")}, "must be JSON-serializable"),
        ("chat", "must be a Message or a mapping"),
    ],
)
def test_broadcast_message_is_validated_when_built(message: object, match: str) -> None:
    with pytest.raises(LocalUsageError, match=match):
        BroadcastRequested(ns="/ws", channel="c", message=message)  # type: ignore[arg-type]


def test_message_over_the_size_limit_is_misuse_and_nothing_is_sent() -> None:
    presence = hub_presence(limits=Limits(max_message_bytes=44))
    open_joined(presence, 1, "ann", "s1")
    # {"type":"t","payload":"éééééééééé"}: 23 ASCII bytes and ten 2-byte characters.
    big = Message(type="t", payload="é" * 10)
    assert big.size == 45
    with pytest.raises(
        LocalUsageError, match="message is 45 bytes of JSON; the limit is 44"
    ) as info:
        presence.handle(BroadcastRequested(ns="/ws", channel="c", message=big))
    assert (info.value.close_code, info.value.http_status) == (1009, 413)
    with pytest.raises(LocalUsageError, match=r"45 bytes .* \(Limits.max_message_bytes\)"):
        presence.handle(DirectRequested(user_id="ann", message=big))
    assert deliveries(drive(presence, DirectRequested(user_id="ann", message={"type": "t"})))


def test_broadcast_fans_out_to_the_hub_omitting_an_empty_except_list() -> None:
    presence = hub_presence()
    actions = drive(
        presence,
        BroadcastRequested(ns="/ws", channel="c", message={"type": "t", "payload": [1]}),
        BroadcastRequested(
            ns="/ws", channel="c", message={"type": "t"}, except_session_ids=["s2", "s1"]
        ),
    )
    assert sent_frames(actions) == [
        {
            "type": "BROADCAST",
            "payload": {"ns": "/ws", "channel": "c", "message": {"type": "t", "payload": [1]}},
        },
        {
            "type": "BROADCAST",
            "payload": {
                "ns": "/ws",
                "channel": "c",
                "message": {"type": "t"},
                "exceptSessionIds": ["s1", "s2"],
            },
        },
    ]


def test_local_delivery_comes_before_fan_out() -> None:
    presence = hub_presence()
    drive(presence, ConnectionOpened(conn=1, ns="/ws"))
    actions = drive(presence, BroadcastRequested(ns="/ws", channel="c", message={"type": "t"}))
    assert [type(a).__name__ for a in actions] == ["Deliver", "SendHubFrame"]


def test_nothing_is_sent_to_the_hub_while_the_link_is_not_registered() -> None:
    link = HubLinkConfig(bridge_id="b", instance_id="i")
    presence = Presence(PresenceConfig(hub_link=link))
    events = [
        ConnectionOpened(conn=1, ns="/ws"),
        SessionJoined(conn=1, user_id="u", session_id="s", now=0.0),
        BroadcastRequested(ns="/ws", channel="c", message={"type": "t"}),
        DirectRequested(user_id="u", message={"type": "t"}),
        MetadataUpdated(session_id="s", metadata={}, now=0.0),
        KickRequested(session_id="elsewhere"),
        ConnectionClosed(conn=1, now=0.0),
        HubLinkStarted(now=0),
        HubConnected(now=0),
    ]
    frames = sent_frames(drive(presence, *events))
    assert [f["type"] for f in frames] == ["REGISTER"]  # the link's own frame only


# ----------------------------------------------------------------- direct


def test_direct_reaches_only_that_users_connections() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1")
    open_joined(presence, 2, "ann", "s2", ns="/other")
    open_joined(presence, 3, "bob", "s3")
    drive(presence, ConnectionOpened(conn=4, ns="/ws"))
    actions = drive(presence, DirectRequested(user_id="ann", message={"type": "dm", "payload": 1}))
    assert deliveries(actions) == {
        1: [{"type": "dm", "payload": 1}],
        2: [{"type": "dm", "payload": 1}],
    }


def test_direct_to_an_unknown_user_is_a_local_no_op_but_still_fans_out() -> None:
    presence = hub_presence()
    drive(presence, ConnectionOpened(conn=1, ns="/ws"))
    actions = drive(presence, DirectRequested(user_id="nobody", message={"type": "dm"}))
    assert deliveries(actions) == {}
    assert sent_frames(actions) == [
        {"type": "DIRECT", "payload": {"userId": "nobody", "message": {"type": "dm"}}}
    ]


# --------------------------------------------------------------- metadata


def test_metadata_update_is_kept_and_sent_to_the_hub_and_the_store() -> None:
    presence = hub_presence(store=StoreConfig(ttl=30, refresh_interval=10))
    open_joined(presence, 1, "ann", "s1", channels=["c"])
    actions = drive(
        presence, MetadataUpdated(session_id="s1", metadata={"status": "busy"}, now=0.0)
    )
    assert sent_frames(actions) == [
        {"type": "METADATA", "payload": {"sessionId": "s1", "metadata": {"status": "busy"}}}
    ]
    member = Member(session_id="s1", user_id="ann", metadata={"status": "busy"})
    assert [a for a in actions if isinstance(a, StorePut)] == [
        StorePut(channel="c", session_id="s1", member=member, ttl=30)
    ]
    assert presence.roster("/ws") == [member]


def test_metadata_update_of_an_unknown_session_is_a_logged_no_op() -> None:
    presence = hub_presence()
    actions = drive(presence, MetadataUpdated(session_id="ghost", metadata={"a": 1}, now=0.0))
    assert actions == [
        Log(
            level=LogLevel.DEBUG,
            event="presence.metadata.unknown_session",
            fields={"session_id": "ghost"},
        )
    ]


def test_metadata_update_must_be_a_mapping_within_the_limit() -> None:
    with pytest.raises(LocalUsageError, match="metadata must be a mapping"):
        MetadataUpdated(session_id="s", metadata=None, now=0.0)  # type: ignore[arg-type]
    presence = Presence(PresenceConfig(limits=Limits(max_metadata_bytes=8)))
    open_joined(presence, 1, "ann", "s1")
    with pytest.raises(LocalUsageError, match="the limit is 8"):
        presence.handle(MetadataUpdated(session_id="s1", metadata={"long": "value"}, now=0.0))
    assert presence.roster("/ws")[0].metadata is None


def test_metadata_is_encoded_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """The size an event reports is that of the one encoding its copy is made from."""
    import megapresence_core._values as values
    import megapresence_core.events as events

    encodings: list[object] = []
    real = values.dumps

    def counting(value: object) -> str:
        encodings.append(value)
        return real(value)

    monkeypatch.setattr(values, "dumps", counting)
    monkeypatch.setattr(events, "dumps", counting, raising=False)
    given = {"name": "Ann é"}
    joined = SessionJoined(conn=1, user_id="u", session_id="s", metadata=given, now=0.0)
    updated = MetadataUpdated(session_id="s", metadata=given, now=0.0)
    assert len(encodings) == 2
    for event in (joined, updated):
        assert event.metadata == given
        assert event.metadata is not given
        assert event.metadata_bytes == len('{"name":"Ann é"}'.encode())
    assert SessionJoined(conn=1, user_id="u", session_id="s", now=0.0).metadata_bytes == 0


# ------------------------------------------------------------------- kick


@pytest.mark.parametrize(
    ("requeue", "code", "default_reason"),
    [(False, CloseCode.POLICY, "kicked"), (True, CloseCode.REQUEUE, "requeued: reconnect")],
)
def test_kick_of_a_local_session_closes_its_connection(
    requeue: bool, code: int, default_reason: str
) -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    assert drive(presence, KickRequested(session_id="s1", requeue=requeue)) == [
        CloseConnection(conn=1, code=code, reason=default_reason)
    ]
    # The core does not believe the socket closed until the shim says so; a kick's
    # session will leave at once then, a requeued one will linger for its grace.
    expected = ConnectionState.JOINED if requeue else ConnectionState.KICKED
    assert presence.connection_state(1) is expected


def test_kick_of_a_remote_session_goes_to_the_hub() -> None:
    presence = hub_presence()
    actions = drive(presence, KickRequested(session_id="far", reason="spam", requeue=True))
    assert sent_frames(actions) == [
        {"type": "DISCONNECT", "payload": {"sessionId": "far", "reason": "spam", "requeue": True}}
    ]


def test_kick_of_an_unknown_session_without_a_hub_is_a_logged_no_op() -> None:
    actions = Presence().handle(KickRequested(session_id="far"))
    assert [a.event for a in actions if isinstance(a, Log)] == ["presence.kick.unknown_session"]


# -------------------------------------------------------------- hub frames


@pytest.mark.parametrize(("requeue", "code"), [(None, 1008), (False, 1008), (True, 4503)])
def test_hub_disconnect_closes_the_local_session(requeue: bool | None, code: int) -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    payload: dict[str, object] = {"sessionId": "s1", "reason": "bye"}
    if requeue is not None:
        payload["requeue"] = requeue
    actions = drive(presence, HubFrameReceived(data=hub_frame("DISCONNECT", **payload), now=1))
    assert actions == [CloseConnection(conn=1, code=code, reason="bye")]


def test_hub_disconnect_default_reasons() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    open_joined(presence, 2, "bob", "s2")
    actions = drive(
        presence,
        HubFrameReceived(data=hub_frame("DISCONNECT", sessionId="s1"), now=1),
        HubFrameReceived(data=hub_frame("DISCONNECT", sessionId="s2", requeue=True), now=1),
    )
    assert [(a.code, a.reason) for a in actions if isinstance(a, CloseConnection)] == [
        (1008, "kicked"),
        (4503, "requeued: reconnect"),
    ]


def test_hub_disconnect_reason_is_cut_to_123_bytes_without_splitting_a_character() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    reason = "가" * 60  # 180 bytes of UTF-8, three per character
    actions = drive(
        presence,
        HubFrameReceived(data=hub_frame("DISCONNECT", sessionId="s1", reason=reason), now=1),
    )
    [close] = actions
    assert isinstance(close, CloseConnection)
    assert close.reason == "가" * 41
    assert len(close.reason.encode()) == 123


def test_hub_disconnect_for_an_unknown_session_is_a_debug_no_op() -> None:
    presence = hub_presence()
    actions = drive(presence, HubFrameReceived(data=hub_frame("DISCONNECT", sessionId="x"), now=1))
    assert [(a.level, a.event) for a in actions if isinstance(a, Log)] == [
        (LogLevel.DEBUG, "hub.disconnect.unknown_session")
    ]


def test_hub_broadcast_and_direct_are_delivered_locally_and_not_echoed() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    open_joined(presence, 2, "bob", "s2")
    actions = drive(
        presence,
        HubFrameReceived(
            data=hub_frame(
                "BROADCAST",
                ns="/ws",
                channel="c",
                message={"type": "b", "payload": {"x": 1}},
                exceptSessionIds=["s2"],
            ),
            now=1,
        ),
        HubFrameReceived(data=hub_frame("DIRECT", userId="bob", message={"type": "d"}), now=1),
    )
    assert deliveries(actions) == {
        1: [{"type": "b", "ns": "/ws", "payload": {"x": 1}}],
        2: [{"type": "d"}],
    }
    assert sent_frames(actions) == []


@pytest.mark.parametrize(
    "frame",
    [
        hub_frame("JOIN", userId="u", sessionId="s", channels=["c"]),
        hub_frame("LEAVE", sessionId="s"),
        hub_frame("BULK_LEAVE", bridgeId="b2", sessionIds=["s"]),
        hub_frame("METADATA", sessionId="s", metadata={}),
        hub_frame("HEARTBEAT"),
    ],
)
def test_hub_presence_frames_are_accepted_silently(frame: str) -> None:
    presence = hub_presence()
    assert drive(presence, HubFrameReceived(data=frame, now=1)) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (hub_frame("SURPRISE"), "unknown_type"),
        ("{not json", "bad_json"),
        ("[]", "bad_json"),
        (hub_frame("DISCONNECT"), "bad_frame"),
        (hub_frame("BROADCAST", ns="/ws", channel="c", message={"payload": 1}), "bad_frame"),
        (b"\xff\xfe", "bad_json"),
    ],
)
def test_a_bad_hub_frame_gives_one_warning_and_changes_nothing(
    data: str | bytes, code: str
) -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    actions = drive(presence, HubFrameReceived(data=data, now=1))
    assert len(actions) == 1
    [warning] = actions
    assert isinstance(warning, Log)
    assert (warning.level, warning.event, warning.fields["code"]) == (
        LogLevel.WARNING,
        "hub.frame.invalid",
        code,
    )
    assert presence.roster("/ws") == [Member(session_id="s1", user_id="ann")]


def test_hub_frame_over_the_size_limit_is_refused_before_parsing() -> None:
    limits = Limits(max_message_bytes=100, max_name_bytes=8, max_hub_frame_bytes=264)
    presence = hub_presence(limits=limits)
    actions = drive(presence, HubFrameReceived(data="x" * 265, now=1))
    assert [a.fields["code"] for a in actions if isinstance(a, Log)] == ["too_big"]


def test_hub_error_and_unexpected_frames_are_logged() -> None:
    presence = hub_presence()
    actions = drive(
        presence,
        HubFrameReceived(data=hub_frame("ERROR", code="rate_limited", message="slow"), now=1),
        HubFrameReceived(
            data=hub_frame("REGISTER", bridgeId="x", instanceId="y", protocol=1), now=1
        ),
        HubFrameReceived(data=registered_frame(), now=1),
    )
    assert [(a.event, a.fields) for a in actions if isinstance(a, Log)] == [
        ("hub.error", {"code": "rate_limited", "message": "slow"}),
        ("hub.frame.unexpected", {"type": "REGISTER"}),
        ("hub.frame.unexpected", {"type": "REGISTERED"}),
    ]


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (HubLinkStarted(now=0), "HubLinkStarted: no hub is configured"),
        (HubConnected(now=0), "HubConnected: no hub is configured"),
        (HubFrameReceived(data="{}", now=0), "HubFrameReceived: no hub is configured"),
        (HubLost(now=0), "HubLost: no hub is configured"),
        (ClusterConnected(now=0), "ClusterConnected: no cluster is configured"),
        (ClusterLost(now=0), "ClusterLost: no cluster is configured"),
        (ClusterMessageReceived(data="{}", now=0), "ClusterMessageReceived: no cluster"),
    ],
)
def test_link_events_without_that_link_configured_are_misuse(event: Any, match: str) -> None:
    presence = Presence()
    with pytest.raises(LocalUsageError, match=match):
        presence.handle(event)
    assert presence.next_deadline() is None


# ----------------------------------------------------------------- resync


def test_registration_says_the_interest_then_resyncs_every_session_with_latest_metadata() -> None:
    link = HubLinkConfig(bridge_id="b1", instance_id="i1", channels=["lobby", "ops"])
    presence = Presence(PresenceConfig(hub_link=link))
    open_joined(presence, 1, "ann", "s1", channels=["lobby"], metadata={"v": 1})
    open_joined(presence, 2, "bob", "s2")
    open_joined(presence, 3, "cid", "s3")
    drive(
        presence,
        MetadataUpdated(session_id="s1", metadata={"v": 2}, now=0.0),
        ConnectionClosed(conn=3, now=0.0),
    )
    actions = drive(presence, HubLinkStarted(now=0), HubConnected(now=0))
    assert sent_frames(actions)[0]["payload"]["channels"] == ["lobby", "ops"]
    actions = drive(presence, HubFrameReceived(data=registered_frame(), now=0))
    # cid's socket closed, but its session lingers for the grace: still announced.
    assert [f["payload"] for f in sent_frames(actions) if f["type"] == "JOIN"] == [
        {
            "userId": "ann",
            "sessionId": "s1",
            "channels": ["lobby"],
            "metadata": {"v": 2},
            "claim": 1,  # which join: the hub names it when another bridge takes the session
        },
        {"userId": "bob", "sessionId": "s2", "channels": [], "claim": 2},
        {"userId": "cid", "sessionId": "s3", "channels": [], "lingering": True, "claim": 3},
    ]


def test_re_registration_after_a_lost_link_resyncs_again() -> None:
    presence = hub_presence(channels=["lobby"])
    open_joined(presence, 1, "ann", "s1")
    actions = drive(
        presence,
        HubLost(now=1, code=1006),
        Tick(now=100),
        HubConnected(now=100),
        HubFrameReceived(data=registered_frame("hub-2"), now=100),
    )
    assert [f["payload"]["sessionId"] for f in sent_frames(actions) if f["type"] == "JOIN"] == [
        "s1"
    ]


# ------------------------------------------------------------ roster, queries


def test_store_actions_follow_joins_and_closes() -> None:
    presence = Presence(PresenceConfig(store=StoreConfig(ttl=60)))
    actions = open_joined(presence, 1, "ann", "s1", channels=["a", "b"], metadata={"m": 1})
    member = Member(session_id="s1", user_id="ann", metadata={"m": 1})
    assert actions == [
        StorePut(channel="a", session_id="s1", member=member, ttl=60),
        StorePut(channel="b", session_id="s1", member=member, ttl=60),
    ]
    assert drive(presence, ConnectionClosed(conn=1, now=0.0)) == []  # the grace
    assert drive(presence, Tick(now=DEFAULT_LEAVE_GRACE)) == [
        StoreDelete(channel="a", session_id="s1"),
        StoreDelete(channel="b", session_id="s1"),
    ]


def test_no_store_actions_without_a_store() -> None:
    presence = Presence()
    actions = open_joined(presence, 1, "ann", "s1", channels=["a"])
    actions += drive(presence, ConnectionClosed(conn=1, now=0.0))
    assert actions == []


def test_store_refresh_is_due_every_refresh_interval_on_ticks() -> None:
    presence = Presence(PresenceConfig(store=StoreConfig(ttl=30, refresh_interval=10)))
    assert drive(presence, Tick(now=100)) == []  # the first tick starts the clock
    assert presence.next_deadline() == 110
    assert drive(presence, Tick(now=109)) == []
    assert drive(presence, Tick(now=110)) == []  # due, but nobody to refresh
    open_joined(presence, 1, "ann", "s1", channels=["a"])
    actions = drive(presence, Tick(now=120))
    entry = StoreEntry(channel="a", session_id="s1", member=Member(session_id="s1", user_id="ann"))
    assert actions == [StoreRefresh(entries=(entry,), ttl=30)]
    assert presence.next_deadline() == 130


def test_no_deadline_without_timers() -> None:
    assert Presence().next_deadline() is None
    assert drive(Presence(), Tick(now=1)) == []


def test_presence_list_puts_fresh_local_members_first_and_dedups() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1", channels=["a"], metadata={"fresh": True})
    open_joined(presence, 2, "bob", "s2", channels=["b"])
    open_joined(presence, 3, "cid", "s3", channels=["z"])
    remote = [
        Member(session_id="s1", user_id="ann", metadata={"fresh": False}),
        Member(session_id="r1", user_id="dan"),
    ]
    assert presence.presence_list(["a", "b"], remote) == [
        Member(session_id="s1", user_id="ann", metadata={"fresh": True}),
        Member(session_id="s2", user_id="bob"),
        Member(session_id="r1", user_id="dan"),
    ]


def test_local_store_entries_lists_one_entry_per_channel_and_session() -> None:
    presence = Presence()
    open_joined(presence, 1, "ann", "s1", channels=["a", "b"])
    open_joined(presence, 2, "bob", "s2")
    ann = Member(session_id="s1", user_id="ann")
    assert presence.local_store_entries() == [
        StoreEntry(channel="a", session_id="s1", member=ann),
        StoreEntry(channel="b", session_id="s1", member=ann),
    ]


# --------------------------------------------------------------- shutdown


def test_shutdown_closes_hub_then_store_then_clients_then_clears_indexes() -> None:
    presence = hub_presence(store=StoreConfig())
    open_joined(presence, 1, "ann", "s1", channels=["a"])
    drive(presence, ConnectionOpened(conn=2, ns="/ws"))
    actions = drive(presence, ShutdownRequested())
    assert [type(a).__name__ for a in actions] == [
        "CloseHubLink",
        "StoreDelete",
        "CloseConnection",
        "CloseConnection",
    ]
    assert [(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)] == [
        (1, 1001),
        (2, 1001),
    ]
    assert presence.is_shut_down
    assert presence.roster("/ws") == []


def test_after_shutdown_only_due_closes_hub_drain_and_ticks_are_accepted() -> None:
    presence = hub_presence()
    open_joined(presence, 1, "ann", "s1")
    drive(presence, ShutdownRequested())
    assert drive(presence, ShutdownRequested()) == []  # idempotent
    assert presence.connection_state(1) is ConnectionState.CLOSING  # its close is due
    assert (
        drive(presence, ConnectionClosed(conn=1, now=0.0)) == []
    )  # no LEAVE: the hub link is gone
    assert presence.connection_state(1) is ConnectionState.CLOSED
    [closed] = drive(presence, HubLost(now=2, code=1001))
    assert isinstance(closed, Log)
    assert closed.event == "hub.link.closed"
    assert presence.hub_link_state is HubLinkState.CLOSED
    assert drive(presence, Tick(now=3)) == []
    assert presence.next_deadline() is None
    with pytest.raises(LocalUsageError, match="unknown connection 1"):
        presence.handle(ConnectionClosed(conn=1, now=0.0))
    # A socket that opens now is closed at once as every other was (a shim refuses its
    # upgrade with 503), as the hub refuses a bridge once it drains; nothing is opened.
    assert presence.handle(ConnectionOpened(conn=5, ns="/ws")) == [
        CloseConnection(conn=5, code=CloseCode.GOING_AWAY, reason="server shutting down")
    ]
    assert presence.connection_state(5) is ConnectionState.CLOSED
    with pytest.raises(LocalUsageError, match="shut down"):
        presence.handle(SessionJoined(conn=5, user_id="u", session_id="s", now=0.0))


def test_handle_refuses_what_is_not_an_event() -> None:
    with pytest.raises(LocalUsageError, match="not an event"):
        Presence().handle("ConnectionOpened")  # type: ignore[arg-type]
