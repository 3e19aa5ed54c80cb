"""Live presence across processes, as a user runs them: a hub and two ``serve``, and two
``serve --nats``. A watcher on one server sees a member on the other join, update and
leave, and count watchers on both servers agree (with NATS, Redis holds the lists too)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from megapresence_core.wire import PresenceDiff, PresenceMap, PresenceState, decode_server_message

from .process_helpers import hub_pair
from .servers import Server
from .test_cluster_processes import nats_pair

_GRACE = ("--leave-grace", "0.3")


class Watcher:
    """A raw client of the browser protocol that keeps a users-view map per channel."""

    def __init__(self, port: int, user: str, channels: str = "") -> None:
        url = f"ws://127.0.0.1:{port}/ws/chat?user={user}&session={user}-1&channels={channels}"
        self.ws: ClientConnection = connect(url, open_timeout=10).__enter__()
        self.maps: dict[str, PresenceMap] = {}
        self.counts: dict[str, tuple[int, int]] = {}

    def send(self, **command: Any) -> None:
        self.ws.send(json.dumps(command))

    def until(self, wanted: Any, timeout: float = 15) -> dict[str, Any]:
        """Read (applying presence messages) until ``wanted(message)``."""
        while True:
            message: dict[str, Any] = json.loads(self.ws.recv(timeout))
            if message["type"] in ("presence.state", "presence.diff"):
                decoded = decode_server_message(json.dumps(message))
                assert isinstance(decoded, PresenceState | PresenceDiff)
                found = self.maps.setdefault(decoded.channel, PresenceMap(decoded.channel, "users"))
                assert found.apply(decoded), message
            if message["type"] == "presence.count":
                self.counts[message["channel"]] = (message["sessions"], message["users"])
            if wanted(message):
                return message

    def users(self, channel: str) -> set[str]:
        return set(self.maps[channel].members)

    def close(self) -> None:
        self.ws.close()


def _joined(user: str) -> Any:
    return lambda m: m["type"] == "presence.diff" and user in m["joins"]


def _left(user: str) -> Any:
    return lambda m: m["type"] == "presence.diff" and user in m["leaves"]


def _check_live(a: int, b: int) -> None:
    """ann watches "room" on server a; bob joins it on server b, updates, leaves."""
    with ExitStack() as stack:
        ann = Watcher(a, "ann")
        stack.callback(ann.close)
        ann.send(op="subscribe", channel="room", presence="users")
        ann.until(_joined("ann"))
        counter_a, counter_b = Watcher(a, "cnt-a"), Watcher(b, "cnt-b")
        for counter in (counter_a, counter_b):
            stack.callback(counter.close)
            counter.send(op="subscribe", channel="room", presence="count")
            counter.until(lambda m: m["type"] == "subscribed")

        bob = Watcher(b, "bob")
        bob.send(op="subscribe", channel="room", presence="users")
        ann.until(_joined("bob"))
        assert ann.users("room") == {"ann", "bob", "cnt-a", "cnt-b"}
        for counter in (counter_a, counter_b):
            counter.until(lambda m: m.get("sessions") == 4)  # ann, bob, both counters
            assert counter.counts["room"] == (4, 4)

        bob.send(op="metadata", metadata={"status": "away"})
        update = ann.until(lambda m: m["type"] == "presence.diff" and m["updates"])
        assert update["updates"]["bob"]["sessions"][0]["metadata"] == {"status": "away"}

        bob.send(op="publish", channel="room", type="chat", payload="hi")
        said = ann.until(lambda m: m["type"] == "chat")
        assert said["from"] == {"userId": "bob", "sessionId": "bob-1"}

        bob.close()
        ann.until(_left("bob"))
        assert ann.users("room") == {"ann", "cnt-a", "cnt-b"}
        for counter in (counter_a, counter_b):
            counter.until(lambda m: m.get("sessions") == 3)
            assert counter.counts["room"] == (3, 3)


def test_a_watcher_sees_a_member_of_another_bridge_through_the_hub(tmp_path: Path) -> None:
    with hub_pair(tmp_path, ("asyncio", "trio"), *_GRACE) as (a, b):
        _check_live(a, b)


def test_a_watcher_sees_a_member_of_another_instance_through_nats(
    tmp_path: Path, nats_server: Server, redis_server: Server
) -> None:
    with nats_pair(tmp_path, nats_server, redis_server, *_GRACE) as (a, b):
        _check_live(a, b)
