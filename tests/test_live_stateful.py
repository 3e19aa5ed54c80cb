"""Live presence across three processes, with faults: every watcher's map is the truth.

Hypothesis drives random joins, closes, returns within and past the leave grace,
subscribes and unsubscribes in every presence mode, metadata changes and kicks,
with link faults, over two topologies: three bridges behind a hub
(``tests/sim.py``) and three instances over NATS (``tests/cluster_sim.py``).
At random points and at the end, the network is brought to quiescence (links
up, presence windows flushed; after a fault, the healing rounds) and every watcher's
map, built only from the snapshot and diffs it received, must equal the true
roster of its channel in its view (``live_model.Model``), no diff may ever
have failed to follow its predecessor (a skipped version), every count
watcher's last count and every process's ``presence_stats`` of a channel it
tracks must equal the truth.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from megapresence_core import (
    ConnectionOpened,
    KickRequested,
    MetadataUpdated,
    SessionJoined,
    Subscribe,
    Unsubscribe,
)

from .cluster_sim import HEARTBEAT, Bus
from .helpers import scaled
from .live_model import CHANNELS, MODES, SESSIONS, Model
from .sim import Clients, HubNetwork

WINDOW, GRACE = 0.05, 5.0
HOMES = ("A", "B", "C")
INTEREST = {"A": ("room",), "B": (), "C": ()}

homes = st.sampled_from(HOMES)
sessions = st.sampled_from(sorted(SESSIONS))
channel_sets = st.sets(st.sampled_from(CHANNELS), max_size=2)
metadata = st.none() | st.fixed_dictionaries({"s": st.integers(0, 2)})


class LiveMachine(RuleBasedStateMachine):
    """The rules both topologies share; each subclass wires its network."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model(grace=GRACE)
        self.healing = 0.0  # seconds the next check must let pass for the network to heal

    # ------------------------------------------------------------ the network

    @property
    def now(self) -> float:
        raise NotImplementedError

    def clients(self, home: str) -> Clients:
        raise NotImplementedError

    def act(self, home: str, event: Any) -> None:
        raise NotImplementedError

    def open_conn(self, home: str) -> Hashable:
        raise NotImplementedError

    def close_conn(self, home: str, conn: Hashable) -> None:
        raise NotImplementedError

    def quiesce(self) -> None:
        raise NotImplementedError

    def stats(self, home: str, channel: str) -> tuple[int, int]:
        raise NotImplementedError

    def interest(self, home: str) -> tuple[str, ...]:
        return ()

    def reliably(self, action: Callable[[], None]) -> None:
        """Do ``action`` with no message lost: a kick is best-effort, at most once, and
        the model can only say what it did if it arrived."""
        action()

    # ----------------------------------------------------------------- rules

    @initialize()
    def watch_everywhere(self) -> None:
        """Each process starts with a watcher of both channels, in different views, so
        that most changes anywhere are watched somewhere else."""
        views = {"A": ("users", "sessions"), "B": ("sessions", "count"), "C": ("count", "users")}
        for home, modes in views.items():
            self.join(home, f"w{home}", set(), None)
            conn = self.open_conns()[-1]
            for channel, mode in zip(CHANNELS, modes, strict=True):
                self.act(home, Subscribe(conn=conn, channel=channel, mode=mode, now=self.now))
                self.model.sessions[f"w{home}"].channels.add(channel)
                self.model.modes[conn][channel] = mode

    def open_conns(self) -> list[Hashable]:
        return sorted(c for c, (_, sid) in self.model.conns.items() if sid is not None)

    @rule(home=homes, sid=sessions, channels=channel_sets, meta=metadata)
    def join(self, home: str, sid: str, channels: set[str], meta: dict[str, Any] | None) -> None:
        self.model.expire(self.now)  # faults take time: a grace may have ended meanwhile
        session = self.model.sessions.get(sid)
        if session is not None and session.conn is not None and session.home != home:
            return  # one session open on two processes at once is a broken contract
        conn = self.open_conn(home)
        self.act(home, ConnectionOpened(conn=conn, ns="/ws"))
        self.act(
            home,
            SessionJoined(
                conn=conn,
                user_id=SESSIONS[sid],
                session_id=sid,
                channels=sorted(channels),
                metadata=meta,
                now=self.now,
            ),
        )
        self.model.join(home, sid, conn, channels, meta)

    @precondition(lambda self: self.model.conns)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.model.conns)))
        home = self.model.conns[conn][0]
        self.close_conn(home, conn)
        self.model.close(conn, self.now)

    @precondition(lambda self: self.open_conns())
    @rule(data=st.data(), channel=st.sampled_from(CHANNELS), mode=st.sampled_from(MODES))
    def subscribe(self, data: st.DataObject, channel: str, mode: str) -> None:
        conn = data.draw(st.sampled_from(self.open_conns()))
        home, sid = self.model.conns[conn]
        assert sid is not None
        self.act(home, Subscribe(conn=conn, channel=channel, mode=mode, now=self.now))
        self.model.sessions[sid].channels.add(channel)
        self.model.modes[conn][channel] = mode

    @precondition(lambda self: self.open_conns())
    @rule(data=st.data(), channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, data: st.DataObject, channel: str) -> None:
        conn = data.draw(st.sampled_from(self.open_conns()))
        home, sid = self.model.conns[conn]
        assert sid is not None
        self.act(home, Unsubscribe(conn=conn, channel=channel, now=self.now))
        self.model.sessions[sid].channels.discard(channel)
        self.model.modes[conn].pop(channel, None)

    @precondition(lambda self: self.open_conns())
    @rule(data=st.data(), value=st.integers(0, 2))
    def update_metadata(self, data: st.DataObject, value: int) -> None:
        conn = data.draw(st.sampled_from(self.open_conns()))
        home, sid = self.model.conns[conn]
        assert sid is not None
        self.act(home, MetadataUpdated(session_id=sid, metadata={"s": value}, now=self.now))
        self.model.sessions[sid].metadata = {"s": value}

    @rule(home=homes, sid=sessions, requeue=st.booleans())
    def kick(self, home: str, sid: str, requeue: bool) -> None:
        """From any process: a connected session is closed (1008 leaves at once, 4503
        lingers); a lingering one ends its grace at the next tick (unless requeued)."""
        self.model.expire(self.now)
        session = self.model.sessions.get(sid)
        when = self.now
        self.reliably(lambda: self.act(home, KickRequested(session_id=sid, requeue=requeue)))
        self.advance(WINDOW)  # the tick that ends a kicked lingering session's grace
        if session is None:
            return
        if session.conn is not None:
            self.model.close(session.conn, when, kicked=not requeue)
        elif not requeue:
            del self.model.sessions[sid]

    @rule(seconds=st.sampled_from([1.0, 3.0, GRACE + 1]))
    def wait(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ checks
    # A rule rather than an invariant, so that several changes (and subscribes) can fall
    # in one presence window between two checks; the last check runs at teardown.

    @rule()
    def every_watcher_sees_the_truth(self) -> None:
        self.quiesce()
        model = self.model
        model.expire(self.now)
        for home in HOMES:
            clients = self.clients(home)
            assert clients.gaps == [], f"a diff skipped a version at {home}: {clients.gaps}"
        for home, conn, channel, mode in model.watchers():
            clients = self.clients(home)
            if mode == "count":
                assert clients.counts[(conn, channel)] == model.counts(channel), (home, channel)
            else:
                watched = clients.maps[(conn, channel, mode)]
                assert watched.in_sync
                assert watched.members == model.view(channel, mode), (home, conn, channel, mode)
        for home in HOMES:
            for channel in CHANNELS:
                if model.tracks(home, channel, self.interest(home)):
                    assert self.stats(home, channel) == model.counts(channel), (home, channel)

    def teardown(self) -> None:
        self.every_watcher_sees_the_truth()


class HubLive(LiveMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = HubNetwork(INTEREST, leave_grace=GRACE, presence_window=WINDOW, unbatched=("C",))
        self.sim.settle()

    @property
    def now(self) -> float:
        return self.sim.now

    def clients(self, home: str) -> Clients:
        return self.sim.bridges[home].clients

    def act(self, home: str, event: Any) -> None:
        self.sim.act(home, event)

    def open_conn(self, home: str) -> Hashable:
        conn = next(self.sim.conn_ids)
        self.sim.open_conns[home][conn] = None
        return conn

    def close_conn(self, home: str, conn: Hashable) -> None:
        self.sim.close(home, conn)

    def advance(self, seconds: float) -> None:
        self.sim.advance(seconds, step=WINDOW)

    def quiesce(self) -> None:
        self.sim.settle()
        self.sim.advance(2 * WINDOW, step=WINDOW)  # every open window flushes

    def stats(self, home: str, channel: str) -> tuple[int, int]:
        return self.sim.bridges[home].presence.presence_stats(channel)

    def interest(self, home: str) -> tuple[str, ...]:
        return INTEREST[home]

    def watched(self) -> dict[Hashable, int]:
        """How many messages each watcher was sent so far."""
        return {
            conn: len(self.clients(home).inbox.get(conn, []))
            for home, conn, _, _ in self.model.watchers()
        }

    def heal(self, before: dict[Hashable, int]) -> None:
        """After a fault that killed no session (a link blip, a hub restart): no watcher
        was told that a session still connected, or its user, left. Then the members that
        nothing confirmed (gone meanwhile) leave, when their grace ends."""
        self.model.expire(self.now)
        connected = {sid: s for sid, s in self.model.sessions.items() if self.model.connected(sid)}
        for home, conn, channel, mode in self.model.watchers():
            here = {sid: s for sid, s in connected.items() if channel in s.channels}
            present = set(here) if mode == "sessions" else {s.user for s in here.values()}
            for message in self.clients(home).inbox.get(conn, [])[before.get(conn, 0) :]:
                if message["type"] == "presence.diff" and message["channel"] == channel:
                    assert not present & set(message["leaves"]), (home, conn, channel, message)
        self.sim.advance(GRACE, step=WINDOW)

    @rule(home=homes)
    def drop_link(self, home: str) -> None:
        before = self.watched()
        self.sim.drop_link(home)
        self.sim.settle_bridges(home)  # back after its backoff, well within the grace
        self.heal(before)

    @rule(order=st.permutations(HOMES))
    def restart_hub(self, order: tuple[str, ...]) -> None:
        """In any order of registration with the new hub."""
        before = self.watched()
        self.sim.restart_hub_in_order(order)
        self.heal(before)

    @rule(home=homes, hub_notices=st.booleans())
    def kill_bridge(self, home: str, hub_notices: bool) -> None:
        """Its sessions are gone: the other bridges keep them for the grace (their bridge
        may come back), then they leave."""
        self.sim.kill_bridge(home, hub_notices=hub_notices)
        self.model.forget_home(home)
        self.sim.settle()
        self.sim.advance(GRACE, step=WINDOW)


class ClusterLive(LiveMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bus = Bus(leave_grace=GRACE, presence_window=WINDOW)
        self.epochs = dict.fromkeys(HOMES, 1)
        for home in HOMES:
            self.bus.add(home)
        self.conn_ids = itertools.count(1)

    @property
    def now(self) -> float:
        return self.bus.now

    def clients(self, home: str) -> Clients:
        return self.bus.instances[home].clients

    def act(self, home: str, event: Any) -> None:
        self.bus.act(home, event)

    def open_conn(self, home: str) -> Hashable:
        conn = next(self.bus.conns)
        self.bus.sessions[conn] = (home, "/ws", "", "")
        return conn

    def close_conn(self, home: str, conn: Hashable) -> None:
        self.bus.close(conn)  # type: ignore[arg-type]

    def advance(self, seconds: float) -> None:
        self.bus.advance(seconds, step=WINDOW)

    def quiesce(self) -> None:
        self.bus.drop = lambda receiver, message: False
        self.bus.advance(self.healing + 2 * WINDOW, step=WINDOW)
        self.healing = 0.0

    def stats(self, home: str, channel: str) -> tuple[int, int]:
        return self.bus.instances[home].presence.presence_stats(channel)

    def reliably(self, action: Callable[[], None]) -> None:
        drop, self.bus.drop = self.bus.drop, lambda receiver, message: False
        action()
        self.bus.drop = drop

    @rule(lossy=st.booleans())
    def lose_messages(self, lossy: bool) -> None:
        """Until the next check, every third message is lost (NATS is at-most-once)."""
        counter = iter(range(1_000_000))
        self.bus.drop = (lambda r, m: next(counter) % 3 == 0) if lossy else (lambda r, m: False)
        self.healing = max(self.healing, 2 * HEARTBEAT + 1)

    @rule(home=homes)
    def blip(self, home: str) -> None:
        instance = self.bus.instances[home]
        instance.disconnect()
        self.bus.advance(1, step=WINDOW)
        instance.connect()
        self.bus.run()
        self.healing = max(self.healing, 2 * HEARTBEAT + 1)

    @rule(home=homes)
    def crash(self, home: str) -> None:
        """The instance dies and restarts empty with a new epoch; the others sweep it."""
        self.bus.instances[home].alive = False
        self.model.forget_home(home)
        for conn in [c for c, info in self.bus.sessions.items() if info[0] == home]:
            del self.bus.sessions[conn]
        self.epochs[home] += 1
        self.bus.add(home, epoch=self.epochs[home])
        self.healing = max(self.healing, 1)


# An example is hundreds of ticks of simulated time across four machines, checked
# throughout: 100 examples in CI (200 took two of its minutes); the long profile runs 500.
HubLive.TestCase.settings = ClusterLive.TestCase.settings = scaled(100)
TestHubLive = HubLive.TestCase
TestClusterLive = ClusterLive.TestCase
