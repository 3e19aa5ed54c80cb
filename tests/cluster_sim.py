"""An in-memory NATS for cluster tests: every published message reaches every connected
subscriber of its subject, except those the test chooses to drop (NATS is at-most-once).

Each instance's clients keep what they were sent (``sim.Clients``: inboxes, and the
presence maps built only from the snapshots and diffs received)."""

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
    DuplicateSessionPolicy,
    Event,
    Presence,
    PresenceConfig,
    SessionJoined,
    Tick,
)
from megapresence_core.actions import (
    ChannelsRestored,
    CloseConnection,
    ClusterPublish,
    RequestRefused,
)
from megapresence_core.events import (
    ClusterConnected,
    ClusterLost,
    ClusterMessageReceived,
)

from .sim import Clients, idle_tick

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
        self.presence = Presence(
            PresenceConfig(
                cluster=config,
                leave_grace=bus.leave_grace,
                presence_window=bus.presence_window,
                duplicate_session=bus.duplicate_session,
            )
        )
        self.connected = False
        self.alive = True
        self.clients = Clients()
        self.closed: list[tuple[Hashable, int, str]] = []
        #: The channels each connection was told it kept, taken over from elsewhere.
        self.restored: list[ChannelsRestored] = []

    @property
    def inbox(self) -> dict[Hashable, list[dict[str, Any]]]:
        return self.clients.inbox

    def handle(self, event: Event) -> None:
        if not self.alive:
            return
        idle = idle_tick(self.presence, event)  # see sim.idle_tick: a check would repeat the last
        actions = self.presence.handle(event)
        assert not (idle and actions), f"a tick before any deadline did something: {actions}"
        for action in actions:
            if isinstance(action, ClusterPublish):
                if self.connected:
                    self.bus.publish(self, action.data)
            elif isinstance(action, Deliver):
                self.clients.deliver(action)
            elif isinstance(action, RequestRefused):
                self.inbox.setdefault(action.conn, []).append(json.loads(action.text))
            elif isinstance(action, CloseConnection):
                self.closed.append((action.conn, action.code, action.reason))
                self.bus.queue.append(lambda conn=action.conn: self.bus.close(conn))
            elif isinstance(action, ChannelsRestored):
                self.restored.append(action)
        if self.bus.checks and not idle:
            self.presence.check_invariants()

    def connect(self) -> None:
        self.connected = True
        self.handle(ClusterConnected(now=self.bus.now))

    def disconnect(self) -> None:
        self.connected = False
        self.handle(ClusterLost(now=self.bus.now))


class Bus:
    def __init__(
        self,
        *,
        leave_grace: float = 0.0,
        presence_window: float = 0.0,
        duplicate_session: DuplicateSessionPolicy = DuplicateSessionPolicy.DETACH_PRIOR,
    ) -> None:
        self.leave_grace = leave_grace
        self.duplicate_session = duplicate_session
        self.presence_window = presence_window
        self.now = 0.0
        self.instances: dict[str, Instance] = {}
        self.queue: deque[Callable[[], None]] = deque()
        self.drop: Callable[[Instance, dict[str, Any]], bool] = lambda receiver, message: False
        self.conns = itertools.count(1)
        self.sessions: dict[int, tuple[str, str, str, str]] = {}  # conn -> instance, ns, user, sid
        #: Check every instance's invariants after each event it handles (a test that only
        #: builds a large state turns this off meanwhile, then checks once).
        self.checks = True

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

    def join(
        self,
        instance_id: str,
        ns: str,
        user: str,
        session: str,
        channels: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> int:
        conn = next(self.conns)
        instance = self.instances[instance_id]
        instance.handle(ConnectionOpened(conn=conn, ns=ns))
        self.sessions[conn] = (instance_id, ns, user, session)
        instance.handle(
            SessionJoined(
                conn=conn,
                user_id=user,
                session_id=session,
                channels=channels,
                metadata=metadata,
                now=self.now,
            )
        )
        self.run()
        return conn

    def close(self, conn: int) -> None:
        """The client's socket is gone (a no-op if it already was)."""
        if conn not in self.sessions:
            return
        instance = self.instances[self.sessions.pop(conn)[0]]
        instance.clients.forget(conn)
        instance.handle(ConnectionClosed(conn=conn, now=self.now))
        self.run()

    def act(self, instance_id: str, event: Event) -> None:
        self.instances[instance_id].handle(event)
        self.run()

    def expected(self, ns: str) -> set[tuple[str, str]]:
        return {
            (user, sid)
            for (inst, n, user, sid) in self.sessions.values()
            if n == ns and self.instances[inst].alive
        }

    def roster(self, instance_id: str, ns: str) -> set[tuple[str, str]]:
        return {(m.user_id, m.session_id) for m in self.instances[instance_id].presence.roster(ns)}
