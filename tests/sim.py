"""An in-memory hub network: one ``Hub``, several bridges (``Presence`` + hub link), clients.

Frames travel through one FIFO queue, so every run is deterministic. Faults are
explicit: a link can drop (both ends notice), a bridge can die with or without
the hub noticing (a half-open link that only the hub's heartbeat timeout or a
newer incarnation can clear), the hub can die and restart empty with a new
epoch, or drain. ``settle`` advances time in steps, ticking every machine,
until the network is quiet and every live bridge is registered; ``advance``
moves time on by a given amount in finer steps (presence windows, graces).

Frames marked ``batch`` travel as the shims send them: held on their end of
the link from the first until the queue reaches the flush queued with it (the
simulation's end of a turn), then delivered as one message joined by line
feeds; a frame that travels alone first closes the batch before it, so order
holds. Bridges named in ``unbatched`` do not offer ``batch``, so batching and
unbatched links mix on one hub.

Every client keeps what it was sent: ``inbox`` (cleared by tests) and, for
the presence messages, one ``PresenceMap`` per (connection, channel, view)
built only from the snapshots and diffs it received, plus its last count per
channel (``Clients``, shared with the cluster simulation).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from megapresence_core import (
    CloseConnection,
    ConnectionClosed,
    ConnectionOpened,
    Deliver,
    DuplicateSessionPolicy,
    Event,
    Hub,
    HubConfig,
    HubLinkConfig,
    Log,
    Presence,
    PresenceConfig,
    RequestRefused,
    SessionJoined,
    ShutdownRequested,
    Tick,
)
from megapresence_core.actions import (
    AcceptBridge,
    ChannelsRestored,
    CloseBridge,
    CloseHubLink,
    ConnectHub,
    HubAction,
    RefuseBridge,
    SendBridgeFrame,
    SendHubFrame,
)
from megapresence_core.config import DEFAULT_MAX_HUB_FRAME_BYTES, HistoryConfig
from megapresence_core.events import (
    BridgeClosed,
    BridgeConnecting,
    BridgeFrameReceived,
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)
from megapresence_core.lifecycle import (
    HubLinkState,
)
from megapresence_core.wire import (
    PresenceCount,
    PresenceDiff,
    PresenceMap,
    PresenceState,
    decode_server_message,
)

TOKEN = "sim-token"
STEP = 5.0  # seconds of simulated time per settle step


def idle_tick(presence: Presence, event: object) -> bool:
    """``event`` is a ``Tick`` before every deadline of ``presence``: it must do nothing.

    Most of the simulations' ticks are such (time moves in presence-window steps).
    Such a tick only moves the streams' clock and (with a store) arms the refresh
    timer, which ``check_invariants`` does not read: the check made after the last
    other event still holds, and checking again after each idle tick was most of
    the stateful tests' time. The handlers check that the tick did nothing instead.
    """
    if not isinstance(event, Tick):
        return False
    deadline = presence.next_deadline()
    return deadline is None or deadline > event.now


class Clients:
    """What the clients of one process were sent: inboxes, presence maps, counts."""

    def __init__(self) -> None:
        self.inbox: dict[Hashable, list[dict[str, Any]]] = {}
        self.maps: dict[tuple[Hashable, str, str], PresenceMap] = {}
        self.counts: dict[tuple[Hashable, str], tuple[int, int]] = {}
        #: (conn, channel, view, version) of every diff that did not fit its map
        self.gaps: list[tuple[Hashable, str, str, int]] = []

    def deliver(self, action: Deliver) -> None:
        message = json.loads(action.text)
        presence = message.get("type") in ("presence.state", "presence.diff", "presence.count")
        typed = decode_server_message(action.text) if presence else None
        for conn in action.conns:
            self.inbox.setdefault(conn, []).append(message)
            if isinstance(typed, PresenceCount):
                self.counts[(conn, typed.channel)] = (typed.sessions, typed.users)
            elif isinstance(typed, PresenceState | PresenceDiff):
                key = (conn, typed.channel, typed.view)
                watched = self.maps.setdefault(key, PresenceMap(typed.channel, typed.view))
                if not watched.apply(typed):
                    assert isinstance(typed, PresenceDiff)
                    self.gaps.append((conn, typed.channel, typed.view, typed.version))

    def forget(self, conn: Hashable) -> None:
        """``conn`` closed: what it was sent no longer matters."""
        self.inbox.pop(conn, None)
        for key in [key for key in self.maps if key[0] == conn]:
            del self.maps[key]
        for count in [key for key in self.counts if key[0] == conn]:
            del self.counts[count]


class Outbox:
    """One end of a link: frames marked ``batch`` leave together, in order."""

    def __init__(self, network: HubNetwork, deliver: Callable[[str], None]) -> None:
        self.network = network
        self.deliver = deliver
        self.parts: list[str] = []
        self.size = 0
        #: Messages sent, and how many held more than one frame.
        self.messages = self.batches = 0

    def send(self, data: str, batch: bool) -> None:
        size = len(data.encode("utf-8"))
        if not batch or self.size + size > DEFAULT_MAX_HUB_FRAME_BYTES:
            self.parts, self.size = [], 0  # the flush already queued takes what it holds
        if not batch:
            self.network.later(lambda: self.flush([data]))
            return
        parts = self.parts
        if not parts:
            self.network.later(lambda: self.flush(parts))
        parts.append(data)
        self.size += size + 1

    def flush(self, parts: list[str]) -> None:
        if parts is self.parts:
            self.parts, self.size = [], 0
        self.messages += 1
        self.batches += len(parts) > 1
        self.deliver("\n".join(parts))


class Link:
    """One hub transport; each end knows only whether its own side is still open."""

    def __init__(self, link_id: int, bridge: SimBridge) -> None:
        self.id = link_id
        self.bridge = bridge
        self.hub_open = True
        self.bridge_open = True
        network = bridge.network
        self.up = Outbox(network, lambda data: network.to_hub(self, data))
        self.down = Outbox(network, lambda data: network.to_bridge(self, data))


class SimBridge:
    """A bridge process: its ``Presence``, its current link and its clients' inboxes."""

    def __init__(self, network: HubNetwork, bridge_id: str, channels: tuple[str, ...]) -> None:
        self.network = network
        self.bridge_id = bridge_id
        self.channels = channels
        self.boot = 0
        self.alive = False
        self.presence: Presence
        self.link: Link | None = None
        self.clients = Clients()
        self.closed: list[tuple[Hashable, int, str]] = []
        self.logs: list[Log] = []
        #: The channels each connection was told it kept, taken over from elsewhere.
        self.restored: list[ChannelsRestored] = []
        self.start()

    @property
    def inbox(self) -> dict[Hashable, list[dict[str, Any]]]:
        return self.clients.inbox

    def start(self) -> None:
        self.boot += 1
        self.alive = True
        config = HubLinkConfig(
            bridge_id=self.bridge_id,
            instance_id=f"{self.bridge_id}-boot{self.boot}",
            channels=self.channels,
            backoff_initial=0.5,
            backoff_max=2.0,
            connect_timeout=10.0,
            capabilities=("broadcast",) if self.bridge_id in self.network.unbatched else ("batch",),
        )
        self.presence = Presence(
            PresenceConfig(
                hub_link=config,
                leave_grace=self.network.leave_grace,
                presence_window=self.network.presence_window,
                duplicate_session=self.network.duplicate_session,
                history=HistoryConfig(boot_id=f"{self.bridge_id}-boot{self.boot}"),
            )
        )
        self.handle(HubLinkStarted(now=self.network.now))

    def handle(self, event: Event) -> None:
        if not self.alive:
            return
        idle = idle_tick(self.presence, event)
        actions = self.presence.handle(event)
        if idle:
            assert actions == [], f"a tick before any deadline did something: {actions}"
        else:
            self.presence.check_invariants()
        for action in actions:
            self.perform(action)

    def perform(self, action: object) -> None:
        network = self.network
        if isinstance(action, Deliver):
            self.clients.deliver(action)
        elif isinstance(action, RequestRefused):
            self.inbox.setdefault(action.conn, []).append(json.loads(action.text))
        elif isinstance(action, CloseConnection):
            self.closed.append((action.conn, action.code, action.reason))
            network.later(lambda: self.close(action.conn))
        elif isinstance(action, ConnectHub):
            network.later(self.connect)
        elif isinstance(action, SendHubFrame):
            link = self.link
            if link is not None and link.bridge_open:
                link.up.send(action.data, action.batch)
        elif isinstance(action, CloseHubLink):
            link = self.link
            assert link is not None
            self.close_link(link, action.code, action.reason)
        elif isinstance(action, Log):
            self.logs.append(action)
        elif isinstance(action, ChannelsRestored):
            self.restored.append(action)
        # The reconnect is a timer: settle() ticks every STEP seconds.

    def close(self, conn: Hashable) -> None:
        """The client's socket is gone (it closed, or we closed it)."""
        if conn in self.network.open_conns.get(self.bridge_id, {}):
            del self.network.open_conns[self.bridge_id][conn]
            self.clients.forget(conn)
            self.handle(ConnectionClosed(conn=conn, now=self.network.now))

    def connect(self) -> None:
        network = self.network
        if not self.alive or self.presence.hub_link_state is not HubLinkState.CONNECTING:
            return
        admitted = network.admitting is None or self.bridge_id in network.admitting
        if network.hub is None or not admitted:
            self.handle(HubLost(now=network.now, code=None, reason="connection refused"))
            return
        link = Link(next(network.link_ids), self)
        network.links[link.id] = link
        self.link = link
        network.hub_handle(
            BridgeConnecting(bridge=link.id, authorization=f"Bearer {TOKEN}", now=network.now)
        )

    def close_link(self, link: Link, code: int | None, reason: str) -> None:
        """This end closed (or lost) the link: tell the hub's end, then ourselves."""
        if not link.bridge_open:
            return
        link.bridge_open = False
        network = self.network
        if link.hub_open:
            network.later(lambda: network.hub_closed(link))
        network.later(lambda: self.handle(HubLost(now=network.now, code=code, reason=reason)))


class HubNetwork:
    def __init__(
        self,
        bridges: dict[str, tuple[str, ...]],
        *,
        leave_grace: float = 0.0,
        presence_window: float = 0.0,
        unbatched: tuple[str, ...] = (),
        duplicate_session: DuplicateSessionPolicy = DuplicateSessionPolicy.DETACH_PRIOR,
    ) -> None:
        self.unbatched = unbatched
        self.duplicate_session = duplicate_session
        self.leave_grace = leave_grace
        self.presence_window = presence_window
        #: bridge -> its open client connections
        self.open_conns: dict[str, dict[Hashable, None]] = {name: {} for name in bridges}
        self.now = 0.0
        self.queue: deque[Callable[[], None]] = deque()
        self.link_ids = itertools.count(1)
        self.links: dict[int, Link] = {}
        self.hub_epoch = 0
        self.hub: Hub | None = None
        self.hub_logs: list[Log] = []
        self.conn_ids = itertools.count(1)
        #: The bridges whose connections the hub accepts (None: all), to order registrations.
        self.admitting: set[str] | None = None
        self.start_hub()
        self.bridges = {name: SimBridge(self, name, channels) for name, channels in bridges.items()}

    # ------------------------------------------------------------ plumbing

    def later(self, thunk: Callable[[], None]) -> None:
        self.queue.append(thunk)

    def run(self) -> None:
        steps = 0
        while self.queue:
            steps += 1
            assert steps < 100_000, "the network never went quiet"
            self.queue.popleft()()

    def hub_handle(self, event: Any) -> None:
        if self.hub is None:
            return
        actions = self.hub.handle(event)
        self.hub.check_invariants()  # even after a tick: the hub sweeps its streams on each
        for action in actions:
            self.hub_perform(action)

    def hub_perform(self, action: HubAction) -> None:
        if isinstance(action, AcceptBridge):
            link = self.links[action.bridge]  # type: ignore[index]
            self.later(lambda: link.bridge.handle(HubConnected(now=self.now)))
        elif isinstance(action, RefuseBridge):
            link = self.links[action.bridge]  # type: ignore[index]
            link.hub_open = False
            link.bridge.close_link(link, 1008, f"HTTP {action.status}")
        elif isinstance(action, SendBridgeFrame):
            for link_id in action.bridges:
                self.links[link_id].down.send(action.data, action.batch)  # type: ignore[index]
        elif isinstance(action, CloseBridge):
            link = self.links[action.bridge]  # type: ignore[index]
            self.later(lambda: self.hub_closed(link))
            if link.bridge_open:
                link.bridge_open = False
                bridge = link.bridge
                self.later(
                    lambda: bridge.handle(
                        HubLost(now=self.now, code=action.code, reason=action.reason)
                    )
                )
        elif isinstance(action, Log):
            self.hub_logs.append(action)

    def to_hub(self, link: Link, data: str) -> None:
        if link.hub_open:
            self.hub_handle(BridgeFrameReceived(bridge=link.id, data=data, now=self.now))

    def to_bridge(self, link: Link, data: str) -> None:
        if link.bridge_open and link.bridge.link is link:
            link.bridge.handle(HubFrameReceived(data=data, now=self.now))

    def hub_closed(self, link: Link) -> None:
        if link.hub_open:
            link.hub_open = False
            self.hub_handle(BridgeClosed(bridge=link.id, now=self.now))

    # ------------------------------------------------------------- faults

    def start_hub(self) -> None:
        self.hub_epoch += 1
        self.hub = Hub(
            HubConfig(
                hub_id=f"hub-{self.hub_epoch}",
                tokens=[TOKEN],
                heartbeat_interval=10.0,
                dead_after_intervals=3.0,
                history=HistoryConfig(boot_id=f"hub-boot-{self.hub_epoch}"),
            )
        )

    def kill_hub(self) -> None:
        """The hub process dies: every link breaks, its state is gone."""
        self.hub = None
        for link in self.links.values():
            link.hub_open = False
            if link.bridge_open:
                link.bridge.close_link(link, None, "connection reset")
        self.run()

    def drain_hub(self) -> None:
        """A graceful hub restart: drain (4503), then a new incarnation."""
        self.hub_handle(ShutdownRequested())
        self.run()
        self.kill_hub()
        self.start_hub()

    def settle_bridges(self, *names: str) -> None:
        """Tick in small steps until the bridges ``names`` are registered."""
        for name in names:
            bridge = self.bridges[name]
            while bridge.presence.hub_link_state is not HubLinkState.REGISTERED:
                self.tick(0.05)

    def restart_hub_in_order(self, order: tuple[str, ...]) -> None:
        """The hub dies and restarts empty; the bridges register with it one after the
        other in ``order`` (each as soon as its backoff lets it), then ``settle``."""
        self.kill_hub()
        self.start_hub()
        self.admitting = set()
        for name in order:
            self.admitting.add(name)
            self.settle_bridges(name)
        self.admitting = None
        self.settle()

    def drop_link(self, name: str) -> None:
        bridge = self.bridges[name]
        link = bridge.link
        if link is not None and link.bridge_open:
            bridge.close_link(link, 1006, "network")
            self.run()

    def kill_bridge(self, name: str, *, hub_notices: bool) -> None:
        """The bridge process dies; it restarts at once with a new instance id."""
        bridge = self.bridges[name]
        link = bridge.link
        bridge.alive = False
        if link is not None:
            link.bridge_open = False
            if hub_notices and link.hub_open:
                self.later(lambda: self.hub_closed(link))
        self.run()
        bridge.link = None
        bridge.clients = Clients()
        self.open_conns[name] = {}
        bridge.start()
        self.run()

    # ------------------------------------------------------------ clients

    def open(
        self,
        name: str,
        ns: str,
        user: str | None = None,
        session: str | None = None,
        channels: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
    ) -> int:
        bridge = self.bridges[name]
        conn = next(self.conn_ids)
        self.open_conns[name][conn] = None
        bridge.handle(ConnectionOpened(conn=conn, ns=ns))
        if user is not None and session is not None:
            bridge.handle(
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

    def close(self, name: str, conn: Hashable) -> None:
        """The client closes its socket."""
        self.bridges[name].close(conn)
        self.run()

    def act(self, name: str, event: Event) -> None:
        self.bridges[name].handle(event)
        self.run()

    # ---------------------------------------------------------------- time

    def tick(self, step: float = STEP) -> None:
        self.now += step
        for bridge in self.bridges.values():
            bridge.handle(Tick(now=self.now))
        self.run()
        self.hub_handle(Tick(now=self.now))
        self.run()

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Let ``seconds`` pass in steps of ``step``, ticking every machine each step."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.tick(min(step, end - self.now))

    def converged(self) -> bool:
        if self.queue or self.hub is None:
            return False
        registered = self.hub.registered_bridges()
        for bridge in self.bridges.values():
            link = bridge.link
            if bridge.presence.hub_link_state is not HubLinkState.REGISTERED or link is None:
                return False
            if registered.get(bridge.bridge_id) != link.id:
                return False
        return len(registered) == len(self.bridges)

    def settle(self, max_steps: int = 60) -> int:
        """Tick until every bridge is registered with the live hub; return the steps taken."""
        self.run()
        for step in range(max_steps):
            if self.converged():
                return step
            self.tick()
        raise AssertionError("the network did not converge")

    # ------------------------------------------------------------- views

    def expected_hub_members(self) -> set[tuple[str, str, str, tuple[str, ...], str]]:
        """What the hub must hold: every bridge's sessions (lingering ones too)."""
        members = set()
        for bridge in self.bridges.values():
            for record in bridge.presence._local.members():
                assert record.session_id is not None
                assert record.user_id is not None
                members.add(
                    (
                        bridge.bridge_id,
                        record.session_id,
                        record.user_id,
                        record.channels,
                        json.dumps(record.metadata, sort_keys=True),
                    )
                )
        return members

    def expected_interests(self) -> dict[str, tuple[str, ...]]:
        return {name: b.channels for name, b in self.bridges.items() if b.channels}

    def hub_members(self) -> set[tuple[str, str, str, tuple[str, ...], str]]:
        assert self.hub is not None
        return {
            (
                m.bridge_id,
                m.session_id,
                m.user_id,
                m.channels,
                json.dumps(m.metadata, sort_keys=True),
            )
            for m in self.hub.members()
        }

    def clear_inboxes(self) -> None:
        for bridge in self.bridges.values():
            bridge.inbox.clear()
            bridge.closed.clear()
