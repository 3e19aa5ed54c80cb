"""This process's connections: their records and the three local indexes over them.

``by_ns`` maps an ns to its open, attached connections; ``by_user`` and
``by_session`` map the users and sessions of joined connections. Sets are
dicts (ordered by insertion) so every replay of the same events yields
targets in the same order. No empty set is kept and a closed connection is
in no index: :meth:`LocalIndexes.check` states the invariant by rebuilding
every index from the records, and the property tests and fuzz targets call it
after every event. A record's lifecycle is the ``CONNECTION`` table's; the
index changes of each transition are the row's effect.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Final, final

from ._values import JsonObject, Member, StoreEntry
from .actions import Action, StoreDelete, StorePut, StoreRefresh
from .config import StoreConfig
from .errors import LocalUsageError
from .lifecycle import CONNECTION, ConnectionInput, ConnectionState, Machine, Timer, Timers

__all__ = ["ConnectionRecord", "LocalIndexes", "NoStore", "SharedStore"]


@final
class ConnectionRecord:
    """What the core knows of one open connection."""

    __slots__ = ("channels", "conn", "lifecycle", "metadata", "ns", "session_id", "user_id")

    def __init__(self, conn: Hashable, ns: str) -> None:
        self.conn = conn
        self.ns = ns
        self.lifecycle: Machine[ConnectionState, ConnectionInput] = Machine(CONNECTION)
        self.user_id: str | None = None
        self.session_id: str | None = None
        self.channels: tuple[str, ...] = ()
        self.metadata: JsonObject | None = None

    @property
    def state(self) -> ConnectionState:
        return self.lifecycle.state

    def member(self) -> Member:
        assert self.user_id is not None
        assert self.session_id is not None
        return Member(session_id=self.session_id, user_id=self.user_id, metadata=self.metadata)

    def __repr__(self) -> str:
        who = f" {self.user_id}/{self.session_id}" if self.session_id else ""
        return f"<ConnectionRecord {self.conn!r} {self.state.value} ns={self.ns!r}{who}>"


def _add(index: dict[str, dict[Hashable, None]], key: str, conn: Hashable) -> None:
    index.setdefault(key, {})[conn] = None


def _remove(index: dict[str, dict[Hashable, None]], key: str, conn: Hashable) -> None:
    members = index[key]
    del members[conn]
    if not members:
        del index[key]


@final
class LocalIndexes:
    """Connection records plus the ns, user and session indexes over them."""

    __slots__ = ("by_ns", "by_session", "by_user", "records")

    def __init__(self) -> None:
        self.records: dict[Hashable, ConnectionRecord] = {}
        self.by_ns: dict[str, dict[Hashable, None]] = {}
        self.by_user: dict[str, dict[Hashable, None]] = {}
        self.by_session: dict[str, ConnectionRecord] = {}

    def get(self, conn: Hashable, *, what: str) -> ConnectionRecord:
        record = self.records.get(conn)
        if record is None:
            raise LocalUsageError(f"{what}: unknown connection {conn!r}; open it first")
        return record

    def open(self, conn: Hashable, ns: str) -> None:
        if conn in self.records:
            raise LocalUsageError(f"ConnectionOpened: connection {conn!r} is already open")
        self.records[conn] = ConnectionRecord(conn, ns)
        _add(self.by_ns, ns, conn)

    def join(
        self,
        record: ConnectionRecord,
        user_id: str,
        session_id: str,
        channels: tuple[str, ...],
        metadata: JsonObject | None,
    ) -> None:
        record.lifecycle.fire(ConnectionInput.JOIN)
        record.user_id, record.session_id = user_id, session_id
        record.channels, record.metadata = channels, metadata
        _add(self.by_user, user_id, record.conn)
        self.by_session[session_id] = record

    def detach(self, record: ConnectionRecord) -> None:
        """Strip ``record`` of its session and take it out of every index; it stays open."""
        self._effects[record.lifecycle.fire(ConnectionInput.DETACH)](self, record)

    def close(self, conn: Hashable) -> ConnectionRecord | None:
        """Forget ``conn``; return its record if its session has just left."""
        record = self.get(conn, what="ConnectionClosed")
        effect = record.lifecycle.fire(ConnectionInput.CLOSE)
        del self.records[conn]
        self._effects[effect](self, record)
        return record if effect == "leave" else None

    def shut_down(self) -> list[ConnectionRecord]:
        """Take every connection out of every index; their closes are still due."""
        records = list(self.records.values())
        for record in records:
            self._effects[record.lifecycle.fire(ConnectionInput.SHUTDOWN)](self, record)
        return records

    def _unindex(self, record: ConnectionRecord) -> None:
        _remove(self.by_ns, record.ns, record.conn)

    def _unmap(self, record: ConnectionRecord) -> None:
        """Out of every index; a record without its session cannot unmap or announce the
        session that a newer connection now owns when it closes later."""
        assert record.user_id is not None
        assert record.session_id is not None
        _remove(self.by_ns, record.ns, record.conn)
        _remove(self.by_user, record.user_id, record.conn)
        del self.by_session[record.session_id]
        record.user_id = record.session_id = None
        record.channels, record.metadata = (), None

    def _leave(self, record: ConnectionRecord) -> None:
        assert record.user_id is not None
        assert record.session_id is not None
        _remove(self.by_ns, record.ns, record.conn)
        _remove(self.by_user, record.user_id, record.conn)
        del self.by_session[record.session_id]

    def _nothing(self, record: ConnectionRecord) -> None:
        pass

    _effects: Final[dict[str, Callable[[LocalIndexes, ConnectionRecord], None]]] = {
        "": _nothing,
        "unindex": _unindex,
        "unmap": _unmap,
        "leave": _leave,
    }

    def joined(self) -> Iterator[ConnectionRecord]:
        """Joined connections, in the order their sessions were mapped."""
        return iter(self.by_session.values())

    def check(self) -> None:
        """Raise ``AssertionError`` unless the indexes are exactly what the records imply."""
        ns: dict[str, set[Hashable]] = {}
        users: dict[str, set[Hashable]] = {}
        sessions: dict[str, ConnectionRecord] = {}
        for conn, record in self.records.items():
            joined = record.state is ConnectionState.JOINED
            if (
                record.conn != conn
                or joined != (record.session_id is not None)
                or (joined != (record.user_id is not None))
            ):
                raise AssertionError(f"{record!r} disagrees with its state or key {conn!r}")
            if record.state in _IN_NS_INDEX:
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


#: The invariant check states, independently of the table, where each state belongs.
_IN_NS_INDEX: Final = frozenset({ConnectionState.OPENED, ConnectionState.JOINED})


@final
class SharedStore:
    """This process's members as the shared per-channel store (Redis) must hold them.

    It emits ``StorePut``/``StoreDelete`` as sessions join, change and leave,
    and a ``StoreRefresh`` of every member each ``refresh_interval`` (timer
    ``STORE_REFRESH``, armed by the first tick: the core has no clock before).
    """

    __slots__ = ("_config", "_entries", "_timers")

    def __init__(
        self, config: StoreConfig, timers: Timers, entries: Callable[[], list[StoreEntry]]
    ) -> None:
        self._config = config
        self._timers = timers
        self._entries = entries

    def put(self, record: ConnectionRecord) -> list[Action]:
        member = record.member()
        return [
            StorePut(
                channel=channel, session_id=member.session_id, member=member, ttl=self._config.ttl
            )
            for channel in record.channels
        ]

    def delete(self, session_id: str, channels: Iterable[str]) -> list[Action]:
        return [StoreDelete(channel=channel, session_id=session_id) for channel in channels]

    def on_tick(self, now: float) -> None:
        self._timers.arm_unless_armed(Timer.STORE_REFRESH, now + self._config.refresh_interval)

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        self._timers.arm(Timer.STORE_REFRESH, now + self._config.refresh_interval)
        entries = tuple(self._entries())
        return [StoreRefresh(entries=entries, ttl=self._config.ttl)] if entries else []

    def shutdown(self) -> list[Action]:
        """Remove our members while the indexes still say which are ours; stop refreshing."""
        self._timers.cancel(Timer.STORE_REFRESH)
        return [StoreDelete(channel=e.channel, session_id=e.session_id) for e in self._entries()]


@final
class NoStore:
    """The store of a ``Presence`` without a shared store: it writes nothing."""

    __slots__ = ()

    def put(self, record: ConnectionRecord) -> list[Action]:
        return []

    def delete(self, session_id: str, channels: Iterable[str]) -> list[Action]:
        return []

    def on_tick(self, now: float) -> None:
        pass

    def shutdown(self) -> list[Action]:
        return []
