"""One session id joined again and again on two bridges (and on two cluster instances), the
joins racing each other to the hub (or crossing on NATS), some made while a link, the hub
or NATS is down, each for one of two users (the same session id claimed by another user).
Against a plain model (which connections are open), the deployment must converge at every
quiet point: at most one connection holds the session, every process shows it exactly
while someone holds it (the hub: on that bridge), as the holder's user, the connection
holding it was never told otherwise, every other one was told at most once, and once every
socket closed and the grace passed, no process lists it (no ghost)."""

from __future__ import annotations

from collections.abc import Container, Mapping
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from megapresence_core import ConnectionOpened, DuplicateSessionPolicy, SessionJoined, Subscribe
from megapresence_core.lifecycle import ConnectionState, HubLinkState

from .cluster_sim import HEARTBEAT, Bus
from .sim import HubNetwork

GRACE = 5.0
BRIDGES = ("A", "B")
POLICIES = st.sampled_from(list(DuplicateSessionPolicy))
#: Up to two joins at once, on any bridge.
JOINS = st.lists(st.sampled_from(BRIDGES), min_size=1, max_size=2)
#: The user of each of those joins: the same one, or another user claiming the same id.
USERS = st.lists(st.sampled_from(["ann", "eve"]), min_size=2, max_size=2)


def told(messages: list[dict[str, Any]], closed: list[tuple[Any, int, str]], conn: Any) -> int:
    """How many times ``conn`` was told it lost the session (detached, or closed 1008)."""
    detached = sum(m["type"] == "session.detached" for m in messages)
    return detached + sum(c == conn and code == 1008 for c, code, _ in closed)


def one_holder(
    places: Mapping[str, Any],
    joined: dict[int, str],
    open_: Container[int],
    users: Mapping[int, str],
) -> list[str]:
    """At a quiet point: s1 is held in one of ``places`` (bridges or instances) at most,
    each shows it in the room exactly while it is held, as the user of the connection
    holding it, and of the connections ``joined`` (whose users are ``users``) the holder
    (open) was never told it lost the session, any other at most once. Returns the
    holders."""
    states = {name: p.presence.session_state("s1") for name, p in places.items()}
    held = [name for name, state in states.items() if state is not ConnectionState.CLOSED]
    assert len(held) <= 1, states
    shows = {
        name
        for name, p in places.items()
        if "s1" in {m.session_id for m in p.presence.channel_members("room")}
    }
    assert shows == (set(places) if held else set()), (shows, states)
    shown = {
        name: {m.user_id for m in p.presence.channel_members("room") if m.session_id == "s1"}
        for name, p in places.items()
    }
    if held:
        holder = places[held[0]].presence.connection_of("s1")  # None: it lingers
        user = users[holder] if holder is not None else min(shown[held[0]])
        assert set(map(frozenset, shown.values())) == {frozenset({user})}, (shown, user)
    for conn, name in joined.items():
        place = places[name]
        count = told(place.inbox.get(conn, []), place.closed, conn)
        assert count <= 1, (conn, count)
        if place.presence.connection_of("s1") == conn:
            assert conn in open_
            assert count == 0
    return held


class RacingJoinsThroughTheHub(RuleBasedStateMachine):
    @initialize(policy=POLICIES)
    def start(self, policy: DuplicateSessionPolicy) -> None:
        sim = self.sim = HubNetwork(
            {"A": (), "B": (), "C": ("room",)}, leave_grace=GRACE, duplicate_session=policy
        )
        sim.settle()
        for name in sim.bridges:
            conn = sim.open(name, "/ws", f"watcher-{name}", f"w-{name}", ("room",))
            sim.act(name, Subscribe(conn=conn, channel="room", mode="users", now=sim.now))
        sim.settle()
        #: the model: bridge -> the connections that joined s1 there and are open
        self.open: dict[int, str] = {}
        self.joined: dict[int, str] = {}
        #: connection -> the user it joined s1 as
        self.users: dict[int, str] = {}
        #: the bridge that registers last after a hub restart, if any
        self.slow: str | None = None

    @rule(
        bridges=JOINS,
        users=USERS,
        cut=st.sampled_from([None, "A", "B", "hub"]),
        at=st.integers(0, 2),
        close=st.booleans(),
        slow=st.sampled_from([None, *BRIDGES]),
    )
    def join(
        self,
        bridges: list[str],
        users: list[str],
        cut: str | None,
        at: int,
        close: bool,
        slow: str | None,
    ) -> None:
        """A connection joins s1 for ``users[i]`` on each of ``bridges`` before the hub hears
        of another; ``cut`` (a link, or the hub) goes down before join number ``at``, and
        then maybe the oldest open connection closes; ``slow`` registers after the others."""
        sim = self.sim
        self.slow = slow
        for index, bridge in enumerate(bridges):
            if index == at and cut == "hub":
                sim.kill_hub()
            elif index == at and cut is not None:
                sim.drop_link(cut)
            if index == at and cut is not None and close and self.open:
                conn = min(self.open)
                sim.close(self.open.pop(conn), conn)
            conn = next(sim.conn_ids)
            sim.open_conns[bridge][conn] = None
            sim.bridges[bridge].handle(ConnectionOpened(conn=conn, ns="/ws"))
            sim.bridges[bridge].handle(
                SessionJoined(
                    conn=conn,
                    user_id=users[index],
                    session_id="s1",
                    channels=("room",),
                    now=sim.now,
                )
            )
            self.open[conn] = self.joined[conn] = bridge
            self.users[conn] = users[index]

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        if self.open:
            conn = data.draw(st.sampled_from(sorted(self.open)))
            self.sim.close(self.open.pop(conn), conn)

    @rule(seconds=st.sampled_from([1.0, GRACE + 0.5]))
    def wait(self, seconds: float) -> None:
        self.sim.advance(seconds, step=0.5)

    @invariant()
    def converges(self) -> None:
        sim = self.sim
        if sim.hub is None:
            sim.start_hub()
            if self.slow is not None:
                fast = sim.bridges["B" if self.slow == "A" else "A"]
                sim.bridges[self.slow].alive = False
                for _ in range(20):
                    if fast.presence.hub_link_state is HubLinkState.REGISTERED:
                        break
                    sim.tick(0.5)
                sim.bridges[self.slow].alive = True
        sim.settle()
        for bridge in sim.bridges.values():  # the connections the servers closed
            for conn, _, _ in bridge.closed:
                self.open.pop(conn, None)
        if not self.open and not any(
            b.presence.session_state("s1") is not ConnectionState.CLOSED
            for b in sim.bridges.values()
        ):
            # Nobody holds s1 (another user's join was refused, say): a bridge whose link
            # was down when it left keeps its stale copy for the grace after it registers.
            sim.advance(GRACE + 0.5)
        held = one_holder(sim.bridges, self.joined, self.open, self.users)
        assert sim.hub is not None
        owner = [m.bridge_id for m in sim.hub.members() if m.session_id == "s1"]
        assert owner == held, owner
        if not self.open:
            sim.advance(GRACE + 0.5)
            for bridge in sim.bridges.values():
                assert bridge.presence.session_state("s1") is ConnectionState.CLOSED
                assert "s1" not in {m.session_id for m in bridge.presence.channel_members("room")}
            assert "s1" not in {m.session_id for m in sim.hub.members()}


RacingJoinsThroughTheHub.TestCase.settings = settings(
    max_examples=100, stateful_step_count=10, deadline=None
)
TestRacingJoinsThroughTheHub = RacingJoinsThroughTheHub.TestCase


class RacingJoinsOverTheCluster(RuleBasedStateMachine):
    @initialize(policy=POLICIES)
    def start(self, policy: DuplicateSessionPolicy) -> None:
        sim = self.sim = Bus(leave_grace=GRACE, duplicate_session=policy)
        for name in BRIDGES:
            sim.add(name)
        for name in BRIDGES:
            conn = sim.join(name, "/ws", f"watcher-{name}", f"w-{name}", ("room",))
            sim.act(name, Subscribe(conn=conn, channel="room", mode="users", now=sim.now))
        self.joined: dict[int, str] = {}
        #: connection -> the user it joined s1 as
        self.users: dict[int, str] = {}

    @rule(
        names=JOINS,
        users=USERS,
        cut=st.sampled_from([None, "A", "B", "nats"]),
        at=st.integers(0, 2),
    )
    def join(self, names: list[str], users: list[str], cut: str | None, at: int) -> None:
        """A connection joins s1 for ``users[i]`` on each of ``names`` before any hears of
        another's; ``cut`` (an instance's NATS link, or NATS) goes down before join number
        ``at``."""
        sim = self.sim
        for index, name in enumerate(names):
            if index == at and cut is not None:
                for lost in BRIDGES if cut == "nats" else (cut,):
                    sim.instances[lost].disconnect()
            conn = next(sim.conns)
            instance = sim.instances[name]
            instance.handle(ConnectionOpened(conn=conn, ns="/ws"))
            sim.sessions[conn] = (name, "/ws", users[index], "s1")
            instance.handle(
                SessionJoined(
                    conn=conn,
                    user_id=users[index],
                    session_id="s1",
                    channels=("room",),
                    now=sim.now,
                )
            )
            self.joined[conn] = name
            self.users[conn] = users[index]

    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        open_ = sorted(conn for conn in self.joined if conn in self.sim.sessions)
        if open_:
            self.sim.close(data.draw(st.sampled_from(open_)))

    @rule(seconds=st.sampled_from([1.0, GRACE + 0.5]))
    def wait(self, seconds: float) -> None:
        self.sim.advance(seconds, step=0.5)

    @invariant()
    def converges(self) -> None:
        sim = self.sim
        sim.run()
        for instance in sim.instances.values():
            if not instance.connected:
                instance.connect()
        sim.advance(2 * HEARTBEAT, step=0.5)  # snapshots, heartbeats: a quiet point
        one_holder(sim.instances, self.joined, sim.sessions, self.users)
        if not any(conn in sim.sessions for conn in self.joined):
            sim.advance(GRACE + HEARTBEAT, step=0.5)
            for instance in sim.instances.values():
                assert instance.presence.session_state("s1") is ConnectionState.CLOSED
                assert "s1" not in {m.session_id for m in instance.presence.roster("/ws")}


RacingJoinsOverTheCluster.TestCase.settings = settings(
    max_examples=100, stateful_step_count=10, deadline=None
)
TestRacingJoinsOverTheCluster = RacingJoinsOverTheCluster.TestCase
