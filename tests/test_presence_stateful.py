"""Hypothesis drives ``Presence`` with random events and checks it against a plain model.

The model is deliberately naive (dicts of sets rebuilt by the simplest rules
in DESIGN.md) so that a disagreement points at the machine, not the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from megapresence_core import (
    BroadcastRequested,
    CloseConnection,
    ConnectionClosed,
    ConnectionOpened,
    DirectRequested,
    DuplicateSessionPolicy,
    HubLinkConfig,
    KickRequested,
    MetadataUpdated,
    Presence,
    PresenceConfig,
    SessionJoined,
    Tick,
)
from megapresence_core.config import HistoryConfig
from megapresence_core.events import (
    HubConnected,
    HubFrameReceived,
    HubLinkStarted,
    HubLost,
)

from .helpers import deliveries, hub_frame, registered_frame, sent_frames

NAMESPACES = st.sampled_from(["/a", "/b"])
USERS = st.sampled_from(["ann", "bob", "cid"])
SESSIONS = st.sampled_from(["s1", "s2", "s3", "s4"])
CHANNELS = st.lists(st.sampled_from(["x", "y", "z"]), max_size=3, unique=True)
METADATA = st.none() | st.dictionaries(st.sampled_from(["status", "n"]), st.integers(0, 3))


class PresenceMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.ns: dict[Hashable, str] = {}  # open connections -> ns
        self.identity: dict[Hashable, tuple[str, str]] = {}  # joined conn -> (user, session)
        self.detached: set[Hashable] = set()
        self.sessions: dict[str, Hashable] = {}  # session -> owning conn (dict order = join order)
        self.channels: dict[str, list[str]] = {}
        self.metadata: dict[str, Any] = {}
        #: session -> the number of its join (JOIN ``claim``), counted as the core does
        self.claims: dict[str, int] = {}
        self.joins = 0
        self.registered = True
        self.conn_ids = itertools.count()

    @initialize(policy=st.sampled_from(list(DuplicateSessionPolicy)))
    def start(self, policy: DuplicateSessionPolicy) -> None:
        self.policy = policy
        link = HubLinkConfig(bridge_id="b", instance_id="i", channels=["lobby"])
        # No leave grace: this model announces a closed session's LEAVE at once (the grace
        # has its own tests, and the live presence model below covers it across processes).
        self.presence = Presence(
            PresenceConfig(
                hub_link=link,
                duplicate_session=policy,
                leave_grace=0,
                history=HistoryConfig(boot_id="boot", size=3),
            )
        )
        for event in (HubLinkStarted(now=0), HubConnected(now=0)):
            self.presence.handle(event)
        self.presence.handle(HubFrameReceived(data=registered_frame(interval=1000), now=0))

    def handle(self, event: Any) -> list[Any]:
        actions = self.presence.handle(event)
        presence_frames = [f for f in sent_frames(actions) if f["type"] != "REGISTER"]
        if not self.registered:
            assert presence_frames == [], "sent to the hub while not registered"
        return actions

    # ----------------------------------------------------------------- rules

    def unjoined(self) -> list[Hashable]:
        """Open connections that may still join: neither joined nor detached."""
        return sorted(c for c in self.ns if c not in self.identity and c not in self.detached)

    @precondition(lambda self: len(self.ns) < 8)
    @rule(ns=NAMESPACES)
    def open(self, ns: str) -> None:
        conn = next(self.conn_ids)
        assert self.handle(ConnectionOpened(conn=conn, ns=ns)) == []
        self.ns[conn] = ns

    @precondition(lambda self: self.unjoined())
    @rule(data=st.data(), user=USERS, session=SESSIONS, channels=CHANNELS, metadata=METADATA)
    def join(
        self, data: st.DataObject, user: str, session: str, channels: list[str], metadata: Any
    ) -> None:
        conn = data.draw(st.sampled_from(self.unjoined()))
        actions = self.handle(
            SessionJoined(
                conn=conn,
                user_id=user,
                session_id=session,
                channels=channels,
                metadata=metadata,
                now=0.0,
            )
        )
        closes = [(a.conn, a.reason) for a in actions if isinstance(a, CloseConnection)]
        prior = self.sessions.get(session)
        if prior is not None and self.identity[prior][0] != user:
            # Another user's session id: refused under every policy, the holder untouched.
            assert closes == [(conn, "session id belongs to another user")]
            assert sent_frames(actions) == []
            return
        if prior is not None and self.policy is DuplicateSessionPolicy.REFUSE_NEW:
            assert closes == [(conn, "session id already connected")]
            assert sent_frames(actions) == []
            return
        if prior is not None:
            # The session keeps its channels and gains the new join's.
            del self.identity[prior]
            self.detached.add(prior)
            channels = list(dict.fromkeys([*self.channels[session], *channels]))
        expected_closes = (
            [(prior, "session taken over by a new connection")]
            if prior is not None and self.policy is DuplicateSessionPolicy.CLOSE_PRIOR
            else []
        )
        assert closes == expected_closes
        self.identity[conn] = (user, session)
        self.sessions.pop(session, None)  # the resync sends sessions in the order they joined
        self.sessions[session] = conn
        self.channels[session] = channels
        self.metadata[session] = metadata
        self.joins += 1
        self.claims[session] = self.joins
        joins = [f["payload"] for f in sent_frames(actions) if f["type"] == "JOIN"]
        expected = self.expected_join(session)
        if self.policy is DuplicateSessionPolicy.REFUSE_NEW:
            expected["exclusive"] = True  # the hub refuses it while another bridge holds it
        assert joins == ([expected] if self.registered else [])

    @precondition(lambda self: self.ns)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        self.close_conn(data.draw(st.sampled_from(sorted(self.ns))))

    def close_conn(self, conn: Hashable) -> None:
        actions = self.handle(ConnectionClosed(conn=conn, now=0.0))
        leaves = [f["payload"]["sessionId"] for f in sent_frames(actions) if f["type"] == "LEAVE"]
        del self.ns[conn]
        self.detached.discard(conn)
        identity = self.identity.pop(conn, None)
        expected = []
        if identity is not None:
            session = identity[1]
            assert self.sessions[session] == conn
            del self.sessions[session]
            expected = [session]
        # Never a LEAVE for a session another connection owns.
        assert leaves == (expected if self.registered else [])

    def session_of(self, conn: Hashable) -> str | None:
        identity = self.identity.get(conn)
        return identity[1] if identity else None

    @rule(ns=NAMESPACES, excepted=st.sets(SESSIONS, max_size=2), remote=st.booleans())
    def broadcast(self, ns: str, excepted: set[str], remote: bool) -> None:
        if remote and self.registered:
            data = hub_frame(
                "BROADCAST",
                ns=ns,
                channel="x",
                message={"type": "t"},
                exceptSessionIds=sorted(excepted),
            )
            actions = self.handle(HubFrameReceived(data=data, now=self.now))
        else:
            actions = self.handle(
                BroadcastRequested(
                    ns=ns, channel="x", message={"type": "t"}, except_session_ids=excepted
                )
            )
        expected = {
            conn
            for conn, conn_ns in self.ns.items()
            if conn_ns == ns and conn not in self.detached and self.session_of(conn) not in excepted
        }
        got = deliveries(actions)
        assert set(got) == expected
        assert all(len(messages) == 1 for messages in got.values())

    @rule(user=USERS, remote=st.booleans())
    def direct(self, user: str, remote: bool) -> None:
        if remote and self.registered:
            data = hub_frame("DIRECT", userId=user, message={"type": "d"})
            actions = self.handle(HubFrameReceived(data=data, now=self.now))
        else:
            actions = self.handle(DirectRequested(user_id=user, message={"type": "d"}))
        expected = {conn for conn, (owner, _) in self.identity.items() if owner == user}
        got = deliveries(actions)
        assert set(got) == expected
        assert all(len(messages) == 1 for messages in got.values())

    @rule(session=SESSIONS, metadata=st.dictionaries(st.sampled_from(["a", "b"]), st.booleans()))
    def update_metadata(self, session: str, metadata: dict[str, bool]) -> None:
        actions = self.handle(MetadataUpdated(session_id=session, metadata=metadata, now=0.0))
        if session in self.sessions:
            self.metadata[session] = metadata
            expected = [{"sessionId": session, "metadata": metadata}] if self.registered else []
            assert [f["payload"] for f in sent_frames(actions)] == expected
        else:
            assert [type(a).__name__ for a in actions] == ["Log"]

    @rule(session=SESSIONS, requeue=st.booleans(), remote=st.booleans())
    def kick(self, session: str, requeue: bool, remote: bool) -> None:
        if remote and self.registered:
            data = hub_frame("DISCONNECT", sessionId=session, requeue=requeue)
            actions = self.handle(HubFrameReceived(data=data, now=self.now))
        else:
            actions = self.handle(KickRequested(session_id=session, requeue=requeue))
        closes = [(a.conn, a.code) for a in actions if isinstance(a, CloseConnection)]
        owner = self.sessions.get(session)
        assert closes == ([(owner, 4503 if requeue else 1008)] if owner is not None else [])

    @precondition(lambda self: self.registered)
    @rule()
    def drop_link(self) -> None:
        self.now += 1
        self.handle(HubLost(now=self.now, code=1006, reason="gone"))
        self.registered = False

    @precondition(lambda self: not self.registered)
    @rule(hub_id=st.sampled_from(["h1", "h2"]))
    def relink(self, hub_id: str) -> None:
        self.now += 1000  # past any backoff delay
        self.handle(Tick(now=self.now))
        self.handle(HubConnected(now=self.now))
        self.registered = True
        data = registered_frame(hub_id, interval=1000)
        actions = self.handle(HubFrameReceived(data=data, now=self.now))
        joins = [f["payload"] for f in sent_frames(actions) if f["type"] == "JOIN"]
        assert joins == [self.expected_join(s) for s in self.sessions]

    def expected_join(self, session: str) -> dict[str, Any]:
        conn = self.sessions[session]
        payload = {
            "userId": self.identity[conn][0],
            "sessionId": session,
            "channels": self.channels[session],
            "claim": self.claims[session],
        }
        if self.metadata[session] is not None:
            payload["metadata"] = self.metadata[session]
        return payload

    # ------------------------------------------------------------ invariants

    @invariant()
    def indexes_match_the_model(self) -> None:
        self.presence.check_invariants()
        indexes = self.presence._local
        expected_ns: dict[str, set[Hashable]] = {}
        for conn, ns in self.ns.items():
            if conn not in self.detached:
                expected_ns.setdefault(ns, set()).add(conn)
        expected_users: dict[str, set[Hashable]] = {}
        for conn, (user, _) in self.identity.items():
            expected_users.setdefault(user, set()).add(conn)
        assert {k: set(v) for k, v in indexes.by_ns.items()} == expected_ns
        assert {k: set(v) for k, v in indexes.by_user.items()} == expected_users
        assert {s: r.conn for s, r in indexes.by_session.items()} == self.sessions
        assert set(indexes.records) == set(self.ns)

    @invariant()
    def roster_matches_the_model(self) -> None:
        for ns in ("/a", "/b"):
            roster = {m.session_id: (m.user_id, m.metadata) for m in self.presence.roster(ns)}
            expected = {
                session: (self.identity[conn][0], self.metadata[session])
                for session, conn in self.sessions.items()
                if self.ns[conn] == ns
            }
            assert roster == expected

    def teardown(self) -> None:
        # Once every connection has closed, every index is empty.
        if not hasattr(self, "presence"):
            return
        for conn in list(self.ns):
            self.close_conn(conn)
        indexes = self.presence._local
        assert (indexes.records, indexes.by_ns, indexes.by_user, indexes.by_session) == (
            {},
            {},
            {},
            {},
        )


TestPresenceMachine = PresenceMachine.TestCase
