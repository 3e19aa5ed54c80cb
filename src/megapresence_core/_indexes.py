"""The three local indexes and the per-connection records behind them.

``by_ns`` maps a WS path to its open, attached connections; ``by_user`` and
``by_session`` map identities of joined connections. Sets are dicts (ordered
by insertion) so every replay of the same events yields targets in the same
order. No empty set is kept and a closed connection is in no index:
:meth:`Indexes.check` states the invariant, and the property tests and fuzz
targets call it after every event.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import final

from ._errors import LocalUsageError
from ._json import JsonObject
from ._lifecycle import CONN_REFUSALS, CONN_TRANSITIONS, ConnInput, ConnState, advance
from ._values import Member

__all__ = ["ConnRecord", "Indexes"]


@final
class ConnRecord:
    """What the core knows of one open connection."""

    __slots__ = ("channels", "conn", "metadata", "ns", "session_id", "state", "user_id")

    def __init__(self, conn: Hashable, ns: str) -> None:
        self.conn = conn
        self.ns = ns
        self.state = ConnState.OPENED
        self.user_id: str | None = None
        self.session_id: str | None = None
        self.channels: tuple[str, ...] = ()
        self.metadata: JsonObject | None = None

    def member(self) -> Member:
        assert self.user_id is not None
        assert self.session_id is not None
        return Member(session_id=self.session_id, user_id=self.user_id, metadata=self.metadata)

    def __repr__(self) -> str:
        who = f" {self.user_id}/{self.session_id}" if self.session_id else ""
        return f"<ConnRecord {self.conn!r} {self.state.value} ns={self.ns!r}{who}>"


def _add(index: dict[str, dict[Hashable, None]], key: str, conn: Hashable) -> None:
    index.setdefault(key, {})[conn] = None


def _remove(index: dict[str, dict[Hashable, None]], key: str, conn: Hashable) -> None:
    members = index[key]
    del members[conn]
    if not members:
        del index[key]


@final
class Indexes:
    """Connection records plus the ns, user and session indexes over them."""

    __slots__ = ("by_ns", "by_session", "by_user", "records")

    def __init__(self) -> None:
        self.records: dict[Hashable, ConnRecord] = {}
        self.by_ns: dict[str, dict[Hashable, None]] = {}
        self.by_user: dict[str, dict[Hashable, None]] = {}
        self.by_session: dict[str, ConnRecord] = {}

    def get(self, conn: Hashable, *, what: str) -> ConnRecord:
        record = self.records.get(conn)
        if record is None:
            raise LocalUsageError(f"{what}: unknown connection {conn!r}; open it first")
        return record

    def check_transition(self, record: ConnRecord, event: ConnInput) -> ConnState:
        return advance(
            CONN_TRANSITIONS, record.state, event, what="connection", refusals=CONN_REFUSALS
        )

    def open(self, conn: Hashable, ns: str) -> None:
        self.records[conn] = ConnRecord(conn, ns)
        _add(self.by_ns, ns, conn)

    def join(
        self,
        record: ConnRecord,
        user_id: str,
        session_id: str,
        channels: tuple[str, ...],
        metadata: JsonObject | None,
    ) -> None:
        record.state = self.check_transition(record, ConnInput.JOIN)
        record.user_id, record.session_id = user_id, session_id
        record.channels, record.metadata = channels, metadata
        _add(self.by_user, user_id, record.conn)
        self.by_session[session_id] = record

    def detach(self, record: ConnRecord) -> None:
        """Strip ``record`` of its identity and take it out of every index; it stays open."""
        record.state = self.check_transition(record, ConnInput.DETACH)
        assert record.user_id is not None
        _remove(self.by_user, record.user_id, record.conn)
        _remove(self.by_ns, record.ns, record.conn)
        record.user_id = record.session_id = None
        record.channels, record.metadata = (), None

    def close(self, record: ConnRecord) -> None:
        attached = record.state is not ConnState.DETACHED
        record.state = self.check_transition(record, ConnInput.CLOSE)
        del self.records[record.conn]
        if attached:
            _remove(self.by_ns, record.ns, record.conn)
        if record.user_id is not None:
            _remove(self.by_user, record.user_id, record.conn)
        # A detached record has no identity left, so its close cannot unmap or
        # announce the session that a newer connection now owns.
        if record.session_id is not None:
            del self.by_session[record.session_id]

    def joined(self) -> Iterator[ConnRecord]:
        """Joined connections, in the order their sessions were mapped."""
        return iter(self.by_session.values())

    def clear(self) -> None:
        self.records.clear()
        self.by_ns.clear()
        self.by_user.clear()
        self.by_session.clear()

    def check(self) -> None:
        """Raise ``AssertionError`` unless the indexes are exactly what the records imply."""
        ns: dict[str, set[Hashable]] = {}
        users: dict[str, set[Hashable]] = {}
        sessions: dict[str, ConnRecord] = {}
        for conn, record in self.records.items():
            joined = record.state is ConnState.JOINED
            if (
                record.conn != conn
                or joined != (record.session_id is not None)
                or (joined != (record.user_id is not None))
            ):
                raise AssertionError(f"{record!r} disagrees with its state or key {conn!r}")
            if record.state is not ConnState.DETACHED:
                ns.setdefault(record.ns, set()).add(conn)
            if record.user_id is not None and record.session_id is not None:
                users.setdefault(record.user_id, set()).add(conn)
                sessions[record.session_id] = record
        actual_ns = {key: set(conns) for key, conns in self.by_ns.items()}
        actual_users = {key: set(conns) for key, conns in self.by_user.items()}
        if actual_ns != ns:
            raise AssertionError(f"ns index {actual_ns!r} should be {ns!r}")
        if actual_users != users:
            raise AssertionError(f"user index {actual_users!r} should be {users!r}")
        if self.by_session != sessions:
            raise AssertionError(f"session index {self.by_session!r} should be {sessions!r}")
