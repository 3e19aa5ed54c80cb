"""An in-memory NATS for cluster tests: every published message reaches every connected
subscriber of its subject, except those the test chooses to drop (NATS is at-most-once)."""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from megapresence_core import (
    ClusterConfig,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    Event,
    Presence,
    PresenceConfig,
    SessionJoined,
    Tick,
)
from megapresence_core.actions import (
    ClusterPublish,
)
from megapresence_core.events import (
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
)

HEARTBEAT, TTL = 5.0, 15.0


class Instance:
    def __init__(self, bus: Bus, instance_id: str, epoch: int, sync_members: bool = True) -> None:
        self.bus = bus
        self.instance_id = instance_id
        config = ClusterConfig(
            app="test",
            instance_id=instance_id,
            epoch=epoch,
            sync_members=sync_members,
            heartbeat_interval=HEARTBEAT,
            ttl=TTL,
        )
        self.presence = Presence(PresenceConfig(cluster=config))
        self.connected = False
        self.alive = True
        self.inbox: dict[Hashable, list[dict[str, Any]]] = {}

    def handle(self, event: Event) -> None:
        if not self.alive:
            return
        for action in self.presence.handle(event):
            if isinstance(action, ClusterPublish):
                if self.connected:
                    self.bus.publish(self, action.data)
            elif isinstance(action, Deliver):
                for conn in action.conns:
                    self.inbox.setdefault(conn, []).append(json.loads(action.text))
        self.presence.check_invariants()

    def connect(self) -> None:
        self.connected = True
        self.handle(ClusterConnected(now=self.bus.now))

    def disconnect(self) -> None:
        self.connected = False
        self.handle(ClusterLost(now=self.bus.now))


class Bus:
    def __init__(self) -> None:
        self.now = 0.0
        self.instances: dict[str, Instance] = {}
        self.queue: deque[Callable[[], None]] = deque()
        self.drop: Callable[[Instance, dict[str, Any]], bool] = lambda receiver, message: False
        self.conns = itertools.count(1)
        self.sessions: dict[int, tuple[str, str, str, str]] = {}  # conn -> instance, ns, user, sid

    def add(self, instance_id: str, epoch: int = 1, sync_members: bool = True) -> Instance:
        instance = self.instances[instance_id] = Instance(self, instance_id, epoch, sync_members)
        instance.connect()
        self.run()
        return instance

    def publish(self, sender: Instance, data: str) -> None:
        message = json.loads(data)
        for receiver in list(self.instances.values()):
            if receiver.connected and receiver.alive and not self.drop(receiver, message):
                self.queue.append(
                    lambda receiver=receiver: receiver.handle(
                        ClusterMessageReceived(data=data, now=self.now)
                    )
                )

    def run(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < 100_000
            self.queue.popleft()()

    def advance(self, seconds: float, step: float = 1.0) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for instance in list(self.instances.values()):
                instance.handle(Tick(now=self.now))
            self.run()

    def join(self, instance_id: str, ns: str, user: str, session: str) -> int:
        conn = next(self.conns)
        instance = self.instances[instance_id]
        instance.handle(ConnectionOpened(conn=conn, ns=ns))
        instance.handle(SessionJoined(conn=conn, user_id=user, session_id=session))
        self.sessions[conn] = (instance_id, ns, user, session)
        self.run()
        return conn

    def close(self, conn: int) -> None:
        instance_id = self.sessions.pop(conn)[0]
        self.instances[instance_id].handle(ConnectionClosed(conn=conn))
        self.run()

    def expected(self, ns: str) -> set[tuple[str, str]]:
        return {
            (user, sid)
            for (inst, n, user, sid) in self.sessions.values()
            if n == ns and self.instances[inst].alive
        }

    def roster(self, instance_id: str, ns: str) -> set[tuple[str, str]]:
        return {(m.user_id, m.session_id) for m in self.instances[instance_id].presence.roster(ns)}
