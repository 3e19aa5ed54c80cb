"""Benchmarks of the sans-IO machines alone: no sockets, one process, seeded inputs."""

from __future__ import annotations

import json
import random
import time

from megapresence_core import (
    BroadcastRequested,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    Event,
    Hub,
    HubConfig,
    Presence,
    SessionJoined,
)
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
)


def presence_events(count: int, seed: int = 1) -> list[Event]:
    """A seeded mix: opens and joins, broadcasts and directs among 500 sockets, closes."""
    rng = random.Random(seed)
    events: list[Event] = []
    open_conns: list[int] = []
    next_conn = 0
    while len(events) < count:
        roll = rng.random()
        if roll < 0.3 or len(open_conns) < 50:
            events.append(ConnectionOpened(conn=next_conn, ns="/ws"))
            events.append(
                SessionJoined(
                    conn=next_conn,
                    user_id=f"u{next_conn % 97}",
                    session_id=f"s{next_conn}",
                    channels=("lobby",),
                )
            )
            open_conns.append(next_conn)
            next_conn += 1
        elif roll < 0.55 and len(open_conns) > 500:
            events.append(ConnectionClosed(conn=open_conns.pop(rng.randrange(len(open_conns)))))
        elif roll < 0.8:
            events.append(
                BroadcastRequested(
                    ns="/ws", channel="lobby", message={"type": "m", "payload": "x" * 60}
                )
            )
        else:
            events.append(
                DirectRequested(
                    user_id=f"u{rng.randrange(97)}", message={"type": "d", "payload": "x" * 60}
                )
            )
    return events


def presence_events_per_second(count: int = 100_000) -> float:
    events = presence_events(count)
    presence = Presence()
    start = time.perf_counter()
    for event in events:
        presence.handle(event)
    return len(events) / (time.perf_counter() - start)


def hub_frames_per_second(count: int = 100_000) -> float:
    """BROADCAST frames routed by the Hub machine from one bridge to another."""
    hub = Hub(HubConfig(hub_id="h", tokens=["t"], max_frames_per_second=1e12, frame_burst=1e12))
    for bridge in ("a", "b"):
        hub.handle(BridgeConnecting(bridge=bridge, authorization="Bearer t", now=0))
        register = {
            "type": "REGISTER",
            "payload": {"bridgeId": bridge, "instanceId": bridge, "protocol": 1},
        }
        hub.handle(BridgeFrameReceived(bridge=bridge, data=json.dumps(register), now=0))
    join = {
        "type": "JOIN",
        "payload": {"userId": "bridge:b", "sessionId": "bridge:b#c", "channels": ["c"]},
    }
    hub.handle(BridgeFrameReceived(bridge="b", data=json.dumps(join), now=0))
    frame = json.dumps(
        {
            "type": "BROADCAST",
            "payload": {"ns": "/ws", "channel": "c", "message": {"type": "m", "payload": "x" * 60}},
        }
    )
    event = BridgeFrameReceived(bridge="a", data=frame, now=0)
    start = time.perf_counter()
    for _ in range(count):
        hub.handle(event)
    return count / (time.perf_counter() - start)
