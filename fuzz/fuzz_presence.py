"""Fuzz ``Presence`` with sequences of events decoded from bytes.

Invariants, after every event:
- only ``LocalUsageError`` escapes ``handle`` (misuse such as an unknown
  connection is expected from random sequences), and it changes nothing: the
  state before and after a refused event is the same;
- every index passes the same check the property tests use (the local
  indexes, the channel rosters and their counts, the source tables, the
  watchers, the open windows, the lingering sessions and their timers);
- the machine is replayable: a second machine fed the same events returns the
  same actions, so hub frames fed one by one or as a batch of events agree.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _reader import ByteReader

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    DuplicateSessionPolicy,
    Event,
    HubLinkConfig,
    KickRequested,
    Limits,
    LocalUsageError,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    PublishRequested,
    Sender,
    SessionJoined,
    ShutdownRequested,
    StoreConfig,
    Subscribe,
    Tick,
    Unsubscribe,
)
from megapresence_core.events import (
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
    PresenceSync,
)
from megapresence_core.wire import CLUSTER_KINDS, FRAME_TYPES, ClusterBye, encode

USERS = ("ann", "bob", "cid")
SESSIONS = ("s1", "s2", "s3", "s4")
CHANNELS = ("lobby", "ops", "x")
NAMESPACES = ("/a", "/b")
#: Every frame type, and one that does not exist.
HUB_TYPES = (*FRAME_TYPES, "NOPE")


def new_presence(policy: DuplicateSessionPolicy) -> Presence:
    return Presence(
        PresenceConfig(
            hub_link=HubLinkConfig(bridge_id="b", instance_id="i", channels=["lobby"]),
            cluster=ClusterConfig(app="f", instance_id="me", epoch=1, heartbeat_interval=1, ttl=3),
            store=StoreConfig(ttl=10, refresh_interval=2),
            duplicate_session=policy,
            limits=Limits(
                max_channels_per_session=2,
                max_metadata_bytes=40,
                max_message_bytes=200,
                max_members_per_channel=3,
            ),
            presence_window=0.25,
            leave_grace=1.0,
        )
    )


def _hub_frame(reader: ByteReader) -> str | bytes:
    if reader.below(8) == 0:
        return reader.chunk(80)  # raw bytes: mostly invalid
    kind = reader.pick(HUB_TYPES)
    payload: dict[str, Any] = {
        "hubId": reader.pick(("h1", "h2")),
        "heartbeatInterval": reader.pick((1, 0, -1, "x")),
        "ns": reader.pick(NAMESPACES),
        "channel": reader.pick(CHANNELS),
        "message": reader.pick(({"type": "t"}, {"type": "t", "payload": [1]}, {"payload": 1})),
        "userId": reader.pick(USERS),
        "sessionId": reader.pick(SESSIONS),
        "reason": reader.text(),
        "requeue": reader.pick((True, False, 1)),
        "code": "c",
        "bridgeId": "b2",
        "sessionIds": ["s1"],
        "channels": [reader.pick(CHANNELS) for _ in range(reader.below(3))],
        "metadata": {"k": reader.below(3)},
        "lingering": reader.pick((False, True)),
        "part": reader.below(3),
        "parts": reader.below(3),
        "members": [{"sessionId": reader.pick((*SESSIONS, "r1")), "userId": reader.pick(USERS)}],
        "from": {"userId": reader.pick(USERS), "sessionId": reader.pick(SESSIONS)},
    }
    for key in list(payload):
        if reader.below(6) == 0:
            del payload[key]
    return json.dumps({"type": kind, "payload": payload})


def _cluster_message(reader: ByteReader) -> str | bytes:
    if reader.below(8) == 0:
        return reader.chunk(80)
    kind = reader.pick(CLUSTER_KINDS)
    member = {"sessionId": reader.pick((*SESSIONS, "r1")), "userId": reader.pick(USERS)}
    fields = {
        "ns": reader.pick(NAMESPACES),
        "channel": "lobby",
        "message": {"type": "m"},
        "userId": reader.pick(USERS),
        "sessionId": reader.pick((*SESSIONS, "r1")),
        "member": member,
        "count": reader.below(4),
        "digest": reader.below(4),
        "snap": reader.below(3),
        "part": reader.below(3),
        "parts": reader.below(3),
        "members": [{"ns": reader.pick(NAMESPACES), "channels": ["lobby"], **member}],
        "target": reader.pick(("*", "me")),
        "channels": [reader.pick(CHANNELS) for _ in range(reader.below(3))],
        "by": {"userId": reader.pick(USERS), "sessionId": reader.pick(SESSIONS)},
    }
    sender = reader.pick(("p1", "p2"))
    data = json.loads(encode(ClusterBye(sender=sender, epoch=reader.below(3))))
    data["kind"] = kind
    data.update(fields)
    return json.dumps(data)


def read_events(reader: ByteReader) -> list[Event]:
    now = 0.0
    events: list[Event] = []
    while not reader.exhausted and len(events) < 200:
        op = reader.below(22)
        conn = reader.below(6)
        if op == 0:
            events.append(ConnectionOpened(conn=conn, ns=reader.pick(NAMESPACES)))
        elif op == 1:
            channels = [reader.pick(CHANNELS) for _ in range(reader.below(4))]
            metadata = reader.pick((None, {"s": 1}, {"long": "x" * 50}))
            events.append(
                SessionJoined(
                    conn=conn,
                    user_id=reader.pick(USERS),
                    session_id=reader.pick(SESSIONS),
                    channels=channels,
                    metadata=metadata,
                    now=now,
                )
            )
        elif op == 2:
            events.append(ConnectionClosed(conn=conn, now=now))
        elif op == 3:
            events.append(
                BroadcastRequested(
                    ns=reader.pick(NAMESPACES),
                    channel=reader.pick(CHANNELS),
                    message={"type": "b", "payload": reader.text(40 * reader.below(8))},
                    except_session_ids=[reader.pick(SESSIONS)] if reader.below(2) else [],
                )
            )
        elif op == 4:
            events.append(
                DirectRequested(
                    user_id=reader.pick(USERS),
                    message={"type": "d"},
                    conn=reader.pick((None, conn)),
                )
            )
        elif op == 5:
            metadata = {"s": reader.below(9)}
            session = reader.pick(SESSIONS)
            events.append(MetadataUpdated(session_id=session, metadata=metadata, now=now))
        elif op == 6:
            events.append(
                KickRequested(
                    session_id=reader.pick((*SESSIONS, "far")),
                    reason=reader.text() or None,
                    requeue=bool(reader.below(2)),
                )
            )
        elif op == 7:
            events.append(HubLinkStarted(now=now))
        elif op == 8:
            events.append(HubConnected(now=now))
        elif op in (9, 10):
            events.append(HubFrameReceived(data=_hub_frame(reader), now=now))
        elif op == 11:
            events.append(HubLost(now=now, code=reader.pick((None, 1006, 1008, 4503))))
        elif op == 12:
            now += reader.below(40) / 8
            events.append(Tick(now=now))
        elif op == 13:
            events.append(ClusterConnected(now=now))
        elif op == 14:
            events.append(ClusterLost(now=now))
        elif op == 15:
            events.append(ClusterMessageReceived(data=_cluster_message(reader), now=now))
        elif op == 16:
            mode = reader.pick(("none", "users", "sessions", "count"))
            events.append(Subscribe(conn=conn, channel=reader.pick(CHANNELS), mode=mode, now=now))
        elif op == 17:
            events.append(Unsubscribe(conn=conn, channel=reader.pick(CHANNELS), now=now))
        elif op == 18:
            events.append(PresenceSync(conn=conn, channel=reader.pick(CHANNELS)))
        elif op == 19:
            by_conn = reader.below(2) == 0
            events.append(
                PublishRequested(
                    channel=reader.pick(CHANNELS),
                    message={"type": "p", "payload": reader.text(40 * reader.below(8))},
                    except_session_ids=[reader.pick(SESSIONS)] if reader.below(2) else [],
                    conn=conn if by_conn else None,
                    sender=None if by_conn else Sender(user_id="srv", session_id="srv-1"),
                )
            )
        elif op == 20:
            now += reader.below(4) / 16  # within a presence window
            events.append(Tick(now=now))
        else:
            events.append(ShutdownRequested())
    return events


def run(events: list[Event], policy: DuplicateSessionPolicy) -> list[str]:
    presence = new_presence(policy)
    transcript = []
    for event in events:
        before = _state(presence)
        try:
            actions = presence.handle(event)
        except LocalUsageError as exc:
            if _state(presence) != before:
                raise AssertionError(f"{event!r} was refused ({exc}) but changed state") from exc
            transcript.append(f"refused {type(event).__name__}")
            continue
        presence.check_invariants()
        transcript.append(repr(actions))
    return transcript


def _state(presence: Presence) -> str:
    indexes = presence._local
    return repr(
        (
            sorted(map(repr, indexes.records.values())),
            sorted((r.session_id, r.subscriptions) for r in indexes.members()),
            {c: (r.holders, r.members) for c, r in presence._rosters.channels.items()},
            {c: (f.watchers, f.versions) for c, f in presence._feed.channels.items()},
            presence.next_deadline(),
            presence.hub_link_state,
            presence.is_shut_down,
        )
    )


def test_one_input(data: bytes) -> None:
    reader = ByteReader(data)
    policy = reader.pick(tuple(DuplicateSessionPolicy))
    events = read_events(reader)
    first = run(events, policy)
    if run(events, policy) != first:
        raise AssertionError("the same events gave different actions")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
