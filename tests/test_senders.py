"""Who sent it: every message a client sends others carries the server's ``from``.

``publish``, ``broadcast`` and ``direct`` from a client arrive stamped with its
session, on this server, through the hub and through the cluster; what the
embedding program sends itself carries none (or the sender it names), so a
client tells a server message (no ``from``) from a peer's (always one). A
signature travels between processes only from the process holding the session.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionOpened,
    DirectRequested,
    LocalUsageError,
    Message,
    PublishRequested,
    RequestRefused,
    Sender,
)
from megapresence_core.actions import ClusterPublish
from megapresence_core.events import ClusterConnected, ClusterMessageReceived, HubFrameReceived
from megapresence_core.wire import (
    BroadcastFrame,
    ClusterBroadcast,
    ClusterDirect,
    DirectFrame,
    encode,
    error_reply,
)

from .helpers import deliveries, drive, hub_presence, open_joined, refusals, sent_frames
from .test_hub import frames_to, join, new_hub, send
from .test_hub_v2 import register, types_to

ANN = {"userId": "ann", "sessionId": "a1"}


def served() -> Any:
    """ann (conn 1) and bob (conn 2) joined on /ws, conn 3 open and anonymous; a hub link
    and a cluster, so every hop's text can be read."""
    presence = hub_presence(cluster=ClusterConfig(app="t", instance_id="me", epoch=1))
    drive(presence, ClusterConnected(now=0))
    open_joined(presence, 1, "ann", "a1", channels=["lobby"])
    open_joined(presence, 2, "bob", "b1", channels=["lobby"])
    drive(presence, ConnectionOpened(conn=3, ns="/ws"))
    return presence


def cluster_sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.data) for a in actions if isinstance(a, ClusterPublish)]


def test_a_client_broadcast_carries_its_session_everywhere() -> None:
    presence = served()
    message = {"type": "chat", "payload": "hi"}
    actions = drive(
        presence, BroadcastRequested(ns="/ws", channel="lobby", message=message, conn=1)
    )
    expected = {"type": "chat", "ns": "/ws", "from": ANN, "payload": "hi"}
    assert deliveries(actions) == {1: [expected], 2: [expected], 3: [expected]}
    [frame] = sent_frames(actions)
    assert (frame["type"], frame["payload"]["from"]) == ("BROADCAST", ANN)
    [published] = cluster_sent(actions)
    assert (published["kind"], published["by"]) == ("broadcast", ANN)


def test_a_client_direct_carries_its_session_everywhere_and_is_answered() -> None:
    presence = served()
    message = {"type": "direct", "payload": {"text": "psst"}}
    actions = drive(presence, DirectRequested(user_id="bob", message=message, conn=1))
    assert deliveries(actions) == {
        2: [{"type": "direct", "from": ANN, "payload": {"text": "psst"}}],
        1: [{"type": "direct.result", "userId": "bob", "found": True}],
    }
    [frame] = sent_frames(actions)
    assert (frame["type"], frame["payload"]["from"]) == ("DIRECT", ANN)
    [published] = cluster_sent(actions)
    assert (published["kind"], published["by"]) == ("direct", ANN)


@pytest.mark.parametrize(
    ("event", "what"),
    [
        (BroadcastRequested(ns="/ws", channel="lobby", message={"type": "t"}, conn=3), "broadcast"),
        (DirectRequested(user_id="bob", message={"type": "t"}, conn=3), "send a direct message"),
    ],
)
def test_a_connection_without_a_session_cannot_speak_to_others(event: Any, what: str) -> None:
    presence = served()
    actions = drive(presence, event)
    channel = "lobby" if isinstance(event, BroadcastRequested) else None
    assert refusals(actions) == [(3, "not_joined", channel)]
    reply = error_reply("not_joined", f"join a session to {what}", channel)
    assert [a.text for a in actions if isinstance(a, RequestRefused)] == [reply]
    assert deliveries(actions) == {}
    assert sent_frames(actions) == []
    assert cluster_sent(actions) == []


def test_the_embedding_program_sends_without_a_sender_or_with_its_own() -> None:
    presence = served()
    actions = drive(presence, BroadcastRequested(ns="/ws", channel="lobby", message={"type": "n"}))
    assert deliveries(actions)[3] == [{"type": "n", "ns": "/ws"}]
    assert "from" not in sent_frames(actions)[0]["payload"]
    assert "by" not in cluster_sent(actions)[0]
    actions = drive(presence, DirectRequested(user_id="bob", message={"type": "n"}))
    assert deliveries(actions) == {2: [{"type": "n"}]}
    assert "from" not in sent_frames(actions)[0]["payload"]
    bot = Sender(user_id="bot", session_id="bot-1")
    actions = drive(
        presence, BroadcastRequested(ns="/ws", channel="lobby", message={"type": "n"}, sender=bot)
    )
    assert deliveries(actions)[3][0]["from"] == bot.to_json()
    actions = drive(presence, DirectRequested(user_id="bob", message={"type": "n"}, sender=bot))
    assert deliveries(actions)[2][0]["from"] == bot.to_json()


@pytest.mark.parametrize("event", [BroadcastRequested, DirectRequested, PublishRequested])
def test_sender_and_conn_together_are_misuse(event: Any) -> None:
    fields = {"ns": "/ws", "channel": "c"} if event is BroadcastRequested else {}
    fields |= {"user_id": "u"} if event is DirectRequested else {}
    fields |= {"channel": "c"} if event is PublishRequested else {}
    with pytest.raises(LocalUsageError, match="give sender or conn, not both"):
        event(message={"type": "t"}, conn=1, sender=Sender(user_id="u", session_id="s"), **fields)


def test_signed_broadcasts_and_directs_from_the_hub_and_the_cluster_keep_their_sender() -> None:
    presence = served()
    bob = Sender(user_id="bob", session_id="b9")
    message = Message(type="chat", payload=1)
    frames = [
        BroadcastFrame(ns="/ws", channel="lobby", message=message, author=bob),
        DirectFrame(user_id="ann", message=message, author=bob),
    ]
    for frame in frames:
        got = deliveries(drive(presence, HubFrameReceived(data=encode(frame), now=1)))
        assert got[1][0]["from"] == bob.to_json()
        assert got[1][0]["payload"] == 1
    header = {"sender": "other", "epoch": 1}
    for cluster in [
        ClusterBroadcast(**header, ns="/ws", channel="lobby", message=message, author=bob),
        ClusterDirect(**header, user_id="ann", message=message, author=bob),
    ]:
        got = deliveries(drive(presence, ClusterMessageReceived(data=encode(cluster), now=1)))
        assert got[1][0]["from"] == bob.to_json()
    unsigned = ClusterDirect(**header, user_id="ann", message=message)
    got = deliveries(drive(presence, ClusterMessageReceived(data=encode(unsigned), now=1)))
    assert got == {1: [{"type": "chat", "payload": 1}]}


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("BROADCAST", {"ns": "/ws", "channel": "room", "message": {"type": "t"}}),
        ("DIRECT", {"userId": "bob", "message": {"type": "t"}}),
    ],
)
def test_the_hub_passes_a_signature_only_from_the_sessions_bridge(
    kind: str, fields: dict[str, Any]
) -> None:
    hub = new_hub()
    for bridge in ("A", "B", "C"):
        register(hub, bridge)
    join(hub, "A", "ann", "a1", "room")
    join(hub, "B", "bob", "b1", "room")
    assert types_to(send(hub, "A", kind, **fields, **{"from": ANN})) == {"B": [kind]}
    assert send(hub, "C", kind, **fields, **{"from": ANN}) == []  # not C's session
    forged = send(hub, "A", kind, **fields, **{"from": {"userId": "eve", "sessionId": "a1"}})
    assert [f["payload"]["code"] for f in frames_to(forged)["A"]] == ["session_taken"]
    assert list(frames_to(forged)) == ["A"]
    assert "B" in types_to(send(hub, "C", kind, **fields))  # unsigned: the bridge's own
