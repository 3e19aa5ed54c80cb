"""Benchmarks of the sans-IO machines alone: no sockets, one process, seeded inputs.

.venv/bin/python benchmarks/core_bench.py          # every figure, medians of 5 runs
.venv/bin/python benchmarks/core_bench.py storm    # the join storm only

The join storm: 10,000 sessions join one channel within one (simulated) second
while W connections watch it (users view), with the presence window at its
default (50 ms) and at 0. Time is simulated: each join carries its ``now`` and
a ``Tick`` comes whenever ``next_deadline()`` is due, as the shim's ticker does.
It reports, per watcher, the messages and bytes received, when its map was
complete (the last diff's time, after the last join), and the core's
wall-clock time per join (every diff encoded and every ``Deliver`` built, but
no socket written: that cost is the shim's, per message and watcher). Run for
W = 10, 100 and 1,000: the time per join must not grow with W.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from megapresence_core import (
    BroadcastRequested,
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    DirectRequested,
    Event,
    Hub,
    HubConfig,
    HubLinkConfig,
    Limits,
    Presence,
    PresenceConfig,
    SessionJoined,
    Subscribe,
    Tick,
)
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    ClusterConnected,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
)
from megapresence_core.wire import (
    PresenceDiff,
    PresenceMap,
    PresenceState,
    RegisteredFrame,
    decode_server_message,
    encode,
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


def join_storm(
    watchers: int, window: float, joins: int = 10_000, seconds: float = 1.0
) -> dict[str, float]:
    """``joins`` sessions join one channel over ``seconds`` while ``watchers`` watch it."""
    limits = Limits(max_members_per_channel=joins + watchers)
    presence = Presence(PresenceConfig(presence_window=window, limits=limits))
    watched = PresenceMap("lobby", "users")
    for conn in range(watchers):
        presence.handle(ConnectionOpened(conn=conn, ns="/ws"))
        presence.handle(
            SessionJoined(conn=conn, user_id=f"w{conn}", session_id=f"w{conn}", now=0.0)
        )
        for action in presence.handle(Subscribe(conn=conn, channel="lobby", mode="users", now=0)):
            if isinstance(action, Deliver) and action.conns[0] == 0 and "presence." in action.text:
                watched.apply(_presence_message(action.text))
    storm: list[Event] = []
    for i in range(joins):
        conn = watchers + i
        storm.append(ConnectionOpened(conn=conn, ns="/ws"))
        storm.append(
            SessionJoined(
                conn=conn,
                user_id=f"u{i}",
                session_id=f"s{i}",
                channels=("lobby",),
                now=1.0 + seconds * i / joins,
            )
        )
    last_join = 1.0 + seconds * (joins - 1) / joins
    received: list[tuple[float, str]] = []  # (when, text) of each message to watcher 0
    now = 1.0

    def handle(event: Event) -> None:
        for action in presence.handle(event):
            if isinstance(action, Deliver) and action.conns and action.conns[0] == 0:
                received.append((now, action.text))

    start = time.perf_counter()
    for event in storm:
        now = getattr(event, "now", now)
        while (due := presence.next_deadline()) is not None and due <= now:
            now_before, now = now, due
            handle(Tick(now=due))
            now = now_before
        handle(event)
    while (due := presence.next_deadline()) is not None:
        now = due
        handle(Tick(now=due))
    elapsed = time.perf_counter() - start
    for _, text in received:
        assert watched.apply(_presence_message(text))
    assert len(watched.members) == joins + watchers  # the map is complete and exact
    diffs = [(when, text) for when, text in received if '"presence.diff"' in text]
    return {
        "messages per watcher": len(diffs),
        "KiB per watcher": sum(len(text.encode()) for _, text in diffs) / 1024,
        "map complete after the storm (ms)": (diffs[-1][0] - last_join) * 1000,
        "core µs per join": elapsed / joins * 1e6,
    }


def _presence_message(text: str) -> PresenceState | PresenceDiff:
    message = decode_server_message(text)
    assert isinstance(message, PresenceState | PresenceDiff)
    return message


def storm_table(runs: int = 3) -> None:
    print("join storm: 10,000 joins in 1 s into one channel, watchers in the users view")
    print(
        f"{'watchers':>8} {'window':>7} {'msgs/watcher':>12} {'KiB/watcher':>12} "
        f"{'complete after':>14} {'core µs/join':>13}"
    )
    for watchers in (10, 100, 1000):
        for window in (0.05, 0.0):
            figures = [join_storm(watchers, window) for _ in range(runs)]
            median = {k: statistics.median(f[k] for f in figures) for k in figures[0]}
            print(
                f"{watchers:>8} {window * 1000:>5.0f}ms {median['messages per watcher']:>12,.0f} "
                f"{median['KiB per watcher']:>12,.0f} "
                f"{median['map complete after the storm (ms)']:>12.1f}ms "
                f"{median['core µs per join']:>13.1f}",
                flush=True,
            )


def main() -> None:
    if sys.argv[1:] == ["storm"]:
        storm_table()
        return
    figures: dict[str, Callable[[], float]] = {
        "presence events/s (local)": presence_events_per_second,
        "presence events/s (hub + cluster)": linked_events_per_second,
        "broadcasts/s (1 KB to 100 sockets + hub + cluster)": fanout_broadcasts_per_second,
        "hub frames/s": hub_frames_per_second,
    }
    for name, measure in figures.items():
        print(f"{name}: {statistics.median(measure() for _ in range(5)):,.0f}", flush=True)
    storm_table()


if __name__ == "__main__":
    main()
