"""Benchmarks of the sans-IO machines alone: no sockets, one process, seeded inputs.

.venv/bin/python benchmarks/core_bench.py     # every figure, medians of 5 runs
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    Event,
    Hub,
    HubConfig,
    HubLinkConfig,
    Presence,
    PresenceConfig,
    SessionJoined,
)
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    ClusterConnected,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
)
from megapresence_core.wire import RegisteredFrame, encode


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
                    now=0.0,
                )
            )
            open_conns.append(next_conn)
            next_conn += 1
        elif roll < 0.55 and len(open_conns) > 500:
            events.append(
                ConnectionClosed(conn=open_conns.pop(rng.randrange(len(open_conns))), now=0.0)
            )
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


def events_per_second(presence: Presence, events: list[Event]) -> float:
    start = time.perf_counter()
    for event in events:
        presence.handle(event)
    return len(events) / (time.perf_counter() - start)


def presence_events_per_second(count: int = 100_000) -> float:
    return events_per_second(Presence(), presence_events(count))


def linked_presence() -> Presence:
    """A ``Presence`` whose hub link is registered and whose cluster link is connected."""
    presence = Presence(
        PresenceConfig(
            hub_link=HubLinkConfig(bridge_id="b", instance_id="i"),
            cluster=ClusterConfig(app="bench", instance_id="i", epoch=1),
        )
    )
    registered = encode(RegisteredFrame(hub_id="h", heartbeat_interval=15.0))
    for event in (
        HubLinkStarted(now=0),
        HubConnected(now=0),
        HubFrameReceived(data=registered, now=0),
        ClusterConnected(now=0),
    ):
        presence.handle(event)
    return presence


def linked_events_per_second(count: int = 100_000) -> float:
    """The same mix, with every join, broadcast and direct fanned out to the hub and cluster."""
    return events_per_second(linked_presence(), presence_events(count))


def fanout_broadcasts_per_second(count: int = 50_000) -> float:
    """A 1 KB payload to 100 local sockets, the hub and the cluster: what encoding once saves."""
    presence = linked_presence()
    for conn in range(100):
        presence.handle(ConnectionOpened(conn=conn, ns="/ws"))
    payload = {"text": "x" * 1000, "n": list(range(20))}
    events: list[Event] = [
        BroadcastRequested(ns="/ws", channel="lobby", message={"type": "m", "payload": payload})
        for _ in range(count)
    ]
    return events_per_second(presence, events)


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


def main() -> None:
    figures: dict[str, Callable[[], float]] = {
        "presence events/s (local)": presence_events_per_second,
        "presence events/s (hub + cluster)": linked_events_per_second,
        "broadcasts/s (1 KB to 100 sockets + hub + cluster)": fanout_broadcasts_per_second,
        "hub frames/s": hub_frames_per_second,
    }
    for name, measure in figures.items():
        print(f"{name}: {statistics.median(measure() for _ in range(5)):,.0f}", flush=True)


if __name__ == "__main__":
    main()
