"""Hypothesis drives a simulated hub network (one hub, three bridges) through joins and faults.

After every step the network is settled (quiet, every bridge registered) and
checked against a plain model of the clients: the hub's presence is exactly
the bridges' open sessions plus their channel subscribers, broadcasts and
directs reach exactly the eligible connections once, and kicks close exactly
their target with the right code.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from megapresence_core import (
    BroadcastRequested,
    DirectRequested,
    KickRequested,
    MetadataUpdated,
)

from .sim import HubNetwork

SUBSCRIPTIONS = {"A": ("room",), "B": (), "C": ("room", "ops")}
BRIDGES = st.sampled_from(sorted(SUBSCRIPTIONS))
NAMESPACES = st.sampled_from(["/ws", "/admin"])
USERS = st.sampled_from(["ann", "bob", "cid"])
SLOTS = st.integers(0, 2)  # session ids are "s-<slot>": any bridge may be asked for any
CHANNELS = st.lists(st.sampled_from(["room", "ops", "misc"]), max_size=2, unique=True)


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = HubNetwork(SUBSCRIPTIONS, unbatched=("B",))  # batching and not, mixed
        self.sim.settle()
        # conn -> its bridge, ns, and identity while it holds one
        self.conns: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------- model

    def owner(self, session: str) -> int | None:
        for conn, info in self.conns.items():
            if info["session"] == session and not info["detached"]:
                return conn
        return None

    def forget_closed(self) -> None:
        for bridge in self.sim.bridges.values():
            for conn, _, _ in bridge.closed:
                self.conns.pop(conn, None)  # type: ignore[call-overload]
        self.sim.clear_inboxes()

    def in_channel(self, bridge: str, channel: str) -> bool:
        if channel in SUBSCRIPTIONS[bridge]:
            return True
        return any(
            info["bridge"] == bridge
            and not info["detached"]
            and info["session"]
            and channel in info["channels"]
            for info in self.conns.values()
        )

    def received(self) -> dict[int, list[dict[str, Any]]]:
        got: dict[int, list[dict[str, Any]]] = {}
        for bridge in self.sim.bridges.values():
            for conn, messages in bridge.inbox.items():
                got[conn] = messages  # type: ignore[index]
        return got

    # ------------------------------------------------------------- rules

    @rule(
        bridge=BRIDGES,
        ns=NAMESPACES,
        joins=st.booleans(),
        user=USERS,
        slot=SLOTS,
        channels=CHANNELS,
        status=st.none() | st.sampled_from(["here", "away"]),
    )
    def open(
        self,
        bridge: str,
        ns: str,
        joins: bool,
        user: str,
        slot: int,
        channels: list[str],
        status: str | None,
    ) -> None:
        session = f"s-{slot}"
        metadata = None if status is None else {"status": status}
        if joins:
            prior = self.owner(session)
            self.sim.clear_inboxes()
            conn = self.sim.open(bridge, ns, user, session, tuple(channels), metadata)
            if prior is not None and self.conns[prior]["user"] != user:
                # Another user's session id: refused (closed 1008) on whichever bridge,
                # the holder untouched, and the link kept.
                closed = (conn, 1008, "session id belongs to another user")
                assert self.sim.bridges[bridge].closed == [closed]
                self.forget_closed()
                self.sim.settle()
                return
            if prior is not None:
                # On any bridge the newer connection takes the session, which keeps its
                # channels and gains the new join's; the prior one is told, and stays open.
                self.sim.settle()
                detached = {"type": "session.detached", "sessionId": session, "reason": "replaced"}
                prior_bridge = self.sim.bridges[self.conns[prior]["bridge"]]
                assert detached in prior_bridge.inbox.get(prior, [])
                assert not any(b.closed for b in self.sim.bridges.values())
                self.conns[prior]["detached"] = True
                channels = list(dict.fromkeys([*self.conns[prior]["channels"], *channels]))
        else:
            conn = self.sim.open(bridge, ns)
        self.conns[conn] = {
            "bridge": bridge,
            "ns": ns,
            "user": user if joins else None,
            "session": session if joins else None,
            "channels": channels,
            "metadata": metadata,
            "detached": False,
        }
        self.sim.settle()

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(sorted(self.conns)))
        self.sim.close(self.conns.pop(conn)["bridge"], conn)
        self.sim.settle()

    @rule(
        bridge=BRIDGES,
        ns=NAMESPACES,
        channel=st.sampled_from(["room", "ops", "misc"]),
        excepted=st.sets(st.sampled_from(["s-0", "s-1", "s-2"]), max_size=2),
    )
    def broadcast(self, bridge: str, ns: str, channel: str, excepted: set[str]) -> None:
        self.sim.clear_inboxes()
        self.sim.act(
            bridge,
            BroadcastRequested(
                ns=ns, channel=channel, message={"type": "b"}, except_session_ids=excepted
            ),
        )
        self.sim.settle()
        reached = {b for b in SUBSCRIPTIONS if b == bridge or self.in_channel(b, channel)}
        expected = {
            conn
            for conn, info in self.conns.items()
            if info["bridge"] in reached
            and info["ns"] == ns
            and not info["detached"]
            and info["session"] not in excepted
        }
        got = self.received()
        assert set(got) == expected
        assert all(messages == [{"type": "b", "ns": ns}] for messages in got.values())

    @rule(bridge=BRIDGES, user=USERS)
    def direct(self, bridge: str, user: str) -> None:
        self.sim.clear_inboxes()
        self.sim.act(bridge, DirectRequested(user_id=user, message={"type": "d"}))
        self.sim.settle()
        expected = {
            conn
            for conn, info in self.conns.items()
            if info["user"] == user and not info["detached"]
        }
        got = self.received()
        assert set(got) == expected
        assert all(messages == [{"type": "d"}] for messages in got.values())

    @rule(bridge=BRIDGES, slot=SLOTS, requeue=st.booleans())
    def kick(self, bridge: str, slot: int, requeue: bool) -> None:
        session = f"s-{slot}"
        owner = self.owner(session)
        self.sim.clear_inboxes()
        self.sim.act(bridge, KickRequested(session_id=session, requeue=requeue))
        self.sim.settle()
        closes = [(conn, code) for b in self.sim.bridges.values() for conn, code, _ in b.closed]
        assert closes == ([(owner, 4503 if requeue else 1008)] if owner is not None else [])
        self.forget_closed()

    @rule(bridge=BRIDGES, slot=SLOTS, status=st.sampled_from(["busy", "idle"]))
    def update_metadata(self, bridge: str, slot: int, status: str) -> None:
        session = f"s-{slot}"
        self.sim.act(
            bridge, MetadataUpdated(session_id=session, metadata={"status": status}, now=0.0)
        )
        owner = self.owner(session)
        if owner is not None and self.conns[owner]["bridge"] == bridge:
            self.conns[owner]["metadata"] = {"status": status}
        self.sim.settle()

    @rule()
    def restart_hub(self) -> None:
        self.sim.kill_hub()
        self.sim.start_hub()
        self.sim.settle()

    @rule()
    def drain_hub(self) -> None:
        self.sim.drain_hub()
        self.sim.settle()

    @rule(bridge=BRIDGES)
    def drop_link(self, bridge: str) -> None:
        self.sim.drop_link(bridge)
        self.sim.settle()

    @rule(bridge=BRIDGES, hub_notices=st.booleans())
    def kill_bridge(self, bridge: str, hub_notices: bool) -> None:
        self.sim.kill_bridge(bridge, hub_notices=hub_notices)
        self.conns = {c: i for c, i in self.conns.items() if i["bridge"] != bridge}
        self.sim.settle()

    # -------------------------------------------------------- invariants

    @invariant()
    def hub_presence_is_exactly_the_bridges_sessions(self) -> None:
        expected = set()
        for info in self.conns.values():
            if info["session"] and not info["detached"]:
                expected.add(
                    (
                        info["bridge"],
                        info["session"],
                        info["user"],
                        tuple(info["channels"]),
                        json.dumps(info["metadata"], sort_keys=True),
                    )
                )
        assert self.sim.hub_members() == expected
        assert self.sim.expected_hub_members() == expected
        assert self.sim.hub is not None
        assert self.sim.hub.interests() == self.sim.expected_interests()


TestCluster = ClusterMachine.TestCase
