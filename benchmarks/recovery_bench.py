"""Recovery in the core, without sockets: N subscribers of one channel drop together (a blip),
M publications go by while they linger, and all come back with ``since``.

Then the same storm through a hub that keeps the stream (RECOVER, RECOVERED). Prints the
time the core takes to answer every recovering ``subscribe`` (``subscribed``, then
the M missed messages, ready to write), per recovery and in all, the time of one recovery of
a full history, and what a channel's history costs in memory: as counted
(``megapresence_history_bytes``) and as allocated (``tracemalloc``). Seeded, single-threaded, no
I/O: the core's share of a reconnect storm; the sockets' share is the fan-out benchmark's.

    python benchmarks/recovery_bench.py [--subscribers 10000] [--missed 100]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

from megapresence_core import (
    ConnectionClosed,
    ConnectionOpened,
    Hub,
    HubConfig,
    HubLinkConfig,
    Message,
    Presence,
    PresenceConfig,
    PublishRequested,
    SessionJoined,
    Subscribe,
)
from megapresence_core.actions import SendBridgeFrame, SendHubFrame
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    BridgeConnecting,
    BridgeFrameReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    StreamPosition,
)
from megapresence_core.wire import PublishFrame, RegisterFrame, encode

PAYLOAD = {"text": "x" * 60}  # a chat line: about 100 bytes as a channel message


def storm(subscribers: int, missed: int) -> None:
    presence = Presence(
        PresenceConfig(leave_grace=60, presence_window=0, history=HistoryConfig(boot_id="bench"))
    )
    for i in range(subscribers):
        presence.handle(ConnectionOpened(conn=i, ns="/ws"))
        presence.handle(
            SessionJoined(conn=i, user_id=f"u{i}", session_id=f"s{i}", channels=("c",), now=0)
        )
    position = presence.stream_position("c")
    assert position is not None
    for i in range(subscribers):  # the blip: every socket drops, the sessions linger
        presence.handle(ConnectionClosed(conn=i, now=1))
    for _ in range(missed):
        presence.handle(
            PublishRequested(channel="c", message=Message(type="chat", payload=PAYLOAD))
        )
    per_recovery: list[float] = []
    sent = 0
    began = time.perf_counter()
    for i in range(subscribers):
        conn = subscribers + i
        presence.handle(ConnectionOpened(conn=conn, ns="/ws"))
        presence.handle(
            SessionJoined(conn=conn, user_id=f"u{i}", session_id=f"s{i}", channels=("c",), now=2)
        )
        start = time.perf_counter()
        actions = presence.handle(Subscribe(conn=conn, channel="c", now=2, since=position))
        per_recovery.append(time.perf_counter() - start)
        sent += len(actions)
    total = time.perf_counter() - began
    assert sent == subscribers * (missed + 1)
    per_recovery.sort()
    p99 = per_recovery[int(len(per_recovery) * 0.99)]
    print(
        f"{subscribers} subscribers, {missed} missed each: every rejoin and recovery in "
        f"{total:.2f} s of core time; recovery alone median "
        f"{statistics.median(per_recovery) * 1e6:.0f} us, p99 {p99 * 1e6:.0f} us"
    )
    print(
        f"history of 1 channel, {missed} messages of ~100 bytes: "
        f"{presence.history_bytes / 1024:.1f} KiB ({presence.history_bytes // missed} B each)"
    )


def full_history(size: int = 300, runs: int = 200) -> None:
    presence = Presence(
        PresenceConfig(presence_window=0, history=HistoryConfig(boot_id="bench", size=size))
    )
    presence.handle(ConnectionOpened(conn=0, ns="/ws"))
    presence.handle(SessionJoined(conn=0, user_id="u", session_id="s", channels=("c",), now=0))
    for _ in range(size):
        presence.handle(
            PublishRequested(channel="c", message=Message(type="chat", payload=PAYLOAD))
        )
    since = StreamPosition(offset=0, epoch="bench.1")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        presence.handle(Subscribe(conn=0, channel="c", now=1, since=since))
        times.append(time.perf_counter() - start)
    times.sort()
    print(
        f"one recovery of {size} publications: median {statistics.median(times) * 1e3:.2f} ms, "
        f"p99 {times[int(runs * 0.99)] * 1e3:.2f} ms; history "
        f"{presence.history_bytes / 1024:.1f} KiB"
    )


def history_memory(size: int = 300) -> None:
    """A full history of one channel: the bytes the server counts, and those allocated."""
    presence = Presence(
        PresenceConfig(presence_window=0, history=HistoryConfig(boot_id="bench", size=size))
    )
    presence.handle(ConnectionOpened(conn=0, ns="/ws"))
    presence.handle(SessionJoined(conn=0, user_id="u", session_id="s", channels=("c",), now=0))
    message = Message(type="chat", payload=PAYLOAD)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(size):
        presence.handle(PublishRequested(channel="c", message=message))
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(
        f"history of 1 channel, {size} messages of ~100 bytes: counted "
        f"{presence.history_bytes / 1024:.1f} KiB, allocated {allocated / 1024:.1f} KiB "
        f"({allocated // size} B each, tracemalloc)"
    )


def through_the_hub(subscribers: int, missed: int) -> None:
    """The same storm where the hub keeps the stream: each recovering subscribe is a RECOVER
    to the hub, answered with RECOVERED (``missed`` publications spliced into one frame),
    read by the bridge into ``subscribed`` and the client texts."""
    hub = Hub(
        HubConfig(
            hub_id="h",
            tokens=["t"],
            history=HistoryConfig(boot_id="hub"),
            # One bridge sends every RECOVER of the storm at once: no rate limit here.
            max_frames_per_second=1e9,
            frame_burst=1e9,
        )
    )
    hub.handle(BridgeConnecting(bridge="B", authorization="Bearer t", now=0))
    register = RegisterFrame(
        bridge_id="B", instance_id="B", capabilities=("stream",), protocol=2, channels=("c",)
    )
    registered = next(  # then MEMBERS of the interest channel
        a.data
        for a in hub.handle(BridgeFrameReceived(bridge="B", data=encode(register), now=0))
        if isinstance(a, SendBridgeFrame)
    )
    link = HubLinkConfig(bridge_id="B", instance_id="B", channels=("c",))
    bridge = Presence(
        PresenceConfig(
            hub_link=link, leave_grace=60, presence_window=0, history=HistoryConfig(boot_id="b")
        )
    )
    bridge.handle(HubLinkStarted(now=0))
    bridge.handle(HubConnected(now=0))
    bridge.handle(HubFrameReceived(data=registered, now=0))
    publish = encode(PublishFrame(channel="c", message=Message(type="chat", payload=PAYLOAD)))
    for _ in range(missed):
        hub.handle(BridgeFrameReceived(bridge="B", data=publish, now=1))
    since = StreamPosition(offset=0, epoch="hub.1")
    for i in range(subscribers):
        bridge.handle(ConnectionOpened(conn=i, ns="/ws"))
        bridge.handle(
            SessionJoined(conn=i, user_id=f"u{i}", session_id=f"s{i}", channels=("c",), now=2)
        )
    hub_time = bridge_time = 0.0
    sent = 0
    for i in range(subscribers):
        start = time.perf_counter()
        [recover] = [
            a.data
            for a in bridge.handle(Subscribe(conn=i, channel="c", now=2, since=since))
            if isinstance(a, SendHubFrame)
        ]
        middle = time.perf_counter()
        [answer] = [
            a.data
            for a in hub.handle(BridgeFrameReceived(bridge="B", data=recover, now=2))
            if isinstance(a, SendBridgeFrame)
        ]
        end = time.perf_counter()
        actions = bridge.handle(HubFrameReceived(data=answer, now=2))
        bridge_time += (middle - start) + (time.perf_counter() - end)
        hub_time += end - middle
        sent += len(actions)
    assert sent == subscribers * (missed + 1)
    print(
        f"through the hub, {subscribers} subscribers, {missed} missed each: hub "
        f"{hub_time:.2f} s ({hub_time / subscribers * 1e6:.0f} us per RECOVERED), bridge "
        f"{bridge_time:.2f} s ({bridge_time / subscribers * 1e6:.0f} us per recovery); hub "
        f"history {hub.history_bytes / 1024:.1f} KiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--missed", type=int, default=100)
    args = parser.parse_args()
    storm(args.subscribers, args.missed)
    full_history()
    history_memory()
    through_the_hub(args.subscribers, args.missed)


if __name__ == "__main__":
    main()
