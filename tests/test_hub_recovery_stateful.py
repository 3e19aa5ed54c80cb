"""Recovery through the hub against faults, in the in-memory hub network: a numbered sequence
published while subscribers drop and come back on any bridge, links drop, bridges crash and
the hub restarts. Every subscriber (a ``StreamReader``, the documented client rules) must end
with every number the publisher saw delivered exactly once, in order, or inside a stretch it
was told may be missing: zero silent gaps, zero duplicates."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from megapresence_core import Message, PublishRequested, Subscribe
from megapresence_core.events import StreamPosition

from .recovery_client import StreamReader, check
from .sim import HubNetwork

BRIDGES = ("A", "B", "C")
SUBSCRIBERS = ("s1", "s2", "s3")


class Member:
    """One session of the channel: where it is connected now, and what it has read there."""

    def __init__(self, session: str) -> None:
        self.session = session
        self.bridge: str | None = None
        self.conn: Hashable | None = None
        self.read = 0
        self.reader = StreamReader()


class RecoveryThroughTheHub(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.sim = HubNetwork(dict.fromkeys(BRIDGES, ()), leave_grace=5.0)
        self.sim.settle()
        self.members = {session: Member(session) for session in SUBSCRIBERS}
        for index, member in enumerate(self.members.values()):
            self._connect(member, BRIDGES[index % len(BRIDGES)])
        self.publisher_bridge = "A"
        self.publisher = self.sim.open("A", "/ws", "pub", "p1", ("seq",))
        self.next = 1
        self.confirmed: list[int] = []
        self.uncertain: list[int] = []
        self.refused = 0

    # ------------------------------------------------------------ clients

    def _read(self, member: Member) -> None:
        if member.conn is None or member.bridge is None:
            return
        inbox = self.sim.bridges[member.bridge].inbox.get(member.conn, [])
        for message in inbox[member.read :]:
            member.reader.receive(message)
        member.read = len(inbox)
        if member.reader.resubscribe:  # told stream.missed: recover with since, as documented
            member.reader.resubscribe = False
            self._subscribe(member)

    def _connect(self, member: Member, bridge: str) -> None:
        sim = self.sim
        member.bridge, member.read = bridge, 0
        member.conn = sim.open(bridge, "/ws", member.session, member.session, ("seq",))
        self._subscribe(member)

    def _subscribe(self, member: Member) -> None:
        assert member.bridge is not None
        command = member.reader.subscribe()
        since = command.get("since")
        position = StreamPosition(**since) if since is not None else None
        self.sim.act(
            member.bridge,
            Subscribe(conn=member.conn, channel="seq", now=self.sim.now, since=position),
        )
        self._read(member)

    def _drop(self, member: Member) -> None:
        self._read(member)
        bridge, conn = member.bridge, member.conn
        if bridge is not None and conn is not None and conn in self.sim.open_conns[bridge]:
            self.sim.close(bridge, conn)
        member.conn = member.bridge = None
        member.reader.dropped()

    def _read_all(self) -> None:
        for member in self.members.values():
            self._read(member)

    # -------------------------------------------------------------- rules

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        sim = self.sim
        for _ in range(count):
            n, self.next = self.next, self.next + 1
            inbox = sim.bridges[self.publisher_bridge].inbox
            before = len(inbox.get(self.publisher, []))
            sim.act(
                self.publisher_bridge,
                PublishRequested(
                    channel="seq", message=Message(type="n", payload=n), conn=self.publisher
                ),
            )
            answers = inbox.get(self.publisher, [])[before:]
            if any(m.get("payload") == n and m["type"] == "n" for m in answers):
                self.confirmed.append(n)
            elif any(m["type"] == "error" for m in answers):
                self.refused += 1
            else:
                self.uncertain.append(n)
        self._read_all()

    @rule(session=st.sampled_from(SUBSCRIBERS), bridge=st.sampled_from(BRIDGES))
    def reconnect(self, session: str, bridge: str) -> None:
        member = self.members[session]
        self._drop(member)
        self._connect(member, bridge)

    @rule(session=st.sampled_from(SUBSCRIBERS))
    def drop(self, session: str) -> None:
        self._drop(self.members[session])

    @rule(bridge=st.sampled_from(BRIDGES))
    def move_publisher(self, bridge: str) -> None:
        self.sim.close(self.publisher_bridge, self.publisher)
        self.publisher_bridge = bridge
        self.publisher = self.sim.open(bridge, "/ws", "pub", "p1", ("seq",))

    @rule(bridge=st.sampled_from(BRIDGES))
    def drop_link(self, bridge: str) -> None:
        self.sim.drop_link(bridge)
        self._read_all()

    @rule(bridge=st.sampled_from(BRIDGES), hub_notices=st.booleans())
    def crash_bridge(self, bridge: str, hub_notices: bool) -> None:
        self._read_all()
        for member in self.members.values():
            if member.bridge == bridge:
                member.conn = member.bridge = None
                member.reader.dropped()
        if self.publisher_bridge == bridge:
            self.publisher_bridge = "A" if bridge != "A" else "B"
            self.sim.kill_bridge(bridge, hub_notices=hub_notices)
            self.publisher = self.sim.open(self.publisher_bridge, "/ws", "pub", "p1", ("seq",))
        else:
            self.sim.kill_bridge(bridge, hub_notices=hub_notices)

    @rule()
    def restart_hub(self) -> None:
        self.sim.kill_hub()
        self._read_all()
        self.sim.start_hub()

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.sim.advance(seconds, step=0.5)
        self._read_all()

    @rule()
    def settle(self) -> None:
        self.sim.settle()
        self._read_all()

    @invariant()
    def no_silent_gap_so_far(self) -> None:
        if not hasattr(self, "sim"):
            return
        self._read_all()
        figures = check([m.reader for m in self.members.values()], self.confirmed, self.uncertain)
        assert figures["duplicates"] == figures["out_of_order"] == figures["made_up"] == 0

    def teardown(self) -> None:
        if not hasattr(self, "sim"):
            return
        sim = self.sim
        sim.settle()
        for member in self.members.values():  # everyone comes back and recovers
            self._drop(member)
            self._connect(member, "B")
        sim.settle()
        self._read_all()
        figures = check([m.reader for m in self.members.values()], self.confirmed, self.uncertain)
        assert figures["silent_gaps"] == 0, figures
        assert figures["duplicates"] == 0, figures
        assert figures["out_of_order"] == 0, figures
        assert figures["made_up"] == 0, figures


RecoveryThroughTheHub.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None
)
TestRecoveryThroughTheHub = RecoveryThroughTheHub.TestCase


def test_a_long_run_of_faults_reports_its_figures() -> None:
    """One fixed long run, for the figures: how much recovered, how much was told."""
    machine = RecoveryThroughTheHub()
    machine.start()
    import random

    rng = random.Random(20)
    for _ in range(400):
        choice = rng.random()
        if choice < 0.45:
            machine.publish(rng.randint(1, 4))
        elif choice < 0.75:
            machine.reconnect(rng.choice(SUBSCRIBERS), rng.choice(BRIDGES))
        elif choice < 0.85:
            machine.time_passes(rng.choice([0.5, 2.0]))
        elif choice < 0.9:
            machine.drop_link(rng.choice(BRIDGES))
        elif choice < 0.93:
            machine.restart_hub()
        elif choice < 0.96:
            machine.crash_bridge(rng.choice(BRIDGES), rng.random() < 0.5)
        else:
            machine.settle()
    machine.teardown()
    figures: dict[str, Any] = check(
        [m.reader for m in machine.members.values()], machine.confirmed, machine.uncertain
    )
    print(f"\nhub recovery run: {figures}, refused publishes {machine.refused}")
    assert figures["recovered"] > 0
