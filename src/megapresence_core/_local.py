"""This process's connections and sessions: their records and the indexes over them.

``by_ns`` maps an ns to its open, attached connections; ``by_user`` and
``by_session`` map the users and sessions of joined connections;
``by_channel`` maps a channel to the joined connections subscribed to it
(whom a channel message reaches); ``lingering`` holds, by session id, the
records of sessions whose socket closed and who stay listed for the leave
grace. Sets are dicts (ordered by insertion) so every replay of the same
events yields targets in the same order. No empty set is kept and a closed
connection is in no index: :meth:`LocalIndexes.check` states the invariant by
rebuilding every index from the records, and the property tests and fuzz
targets call it after every event. A record's lifecycle is the
``CONNECTION`` table's; the index changes of each transition are the row's
effect, and the ``GRACE`` timer of a lingering record is keyed by the record.

A session's subscriptions (channel -> presence mode) belong to the session:
a connection that takes a session over (a duplicate join, or a return within
the grace) inherits them in mode ``none``; it watches nothing until it
subscribes again, because it has seen no snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Iterator
from itertools import chain
from typing import Final, final

from ._timers import Timer, Timers
from ._values import JsonObject, Member, PresenceMode, RemoteMember, Sender, StoreEntry
from .actions import Action, StoreDelete, StorePut, StoreRefresh
from .config import SNAPSHOT_CHARS_PER_COMMAND, StoreConfig
from .errors import LocalUsageError
from .lifecycle import CONNECTION, ConnectionEffect, ConnectionInput, ConnectionState, Machine

__all__ = ["ConnectionRecord", "LocalIndexes", "NoStore", "SharedStore"]


def _note(channels: set[str], channel: str, cap: int) -> None:
    """Add ``channel`` to ``channels``, which hold at most ``cap`` (past it, they start
    again)."""
    if len(channels) >= cap:
        channels.clear()
    channels.add(channel)


@final
class ConnectionRecord:
    """What the core knows of one connection, and of its session while that lingers."""

    __slots__ = (
        "claim",
        "closed_at",
        "command_at",
        "command_tokens",
        "conn",
        "displaced",
        "left",
        "lifecycle",
        "metadata",
        "ns",
        "restorable",
        "session_id",
        "subscriptions",
        "unheard",
        "user_id",
    )

    def __init__(self, conn: Hashable, ns: str, timers: Timers) -> None:
        self.conn = conn
        self.ns = ns
        self.lifecycle = Machine(CONNECTION, timers, owner=self)
        self.user_id: str | None = None
        self.session_id: str | None = None
        #: channel -> presence mode, in subscription order
        self.subscriptions: dict[str, PresenceMode] = {}
        self.metadata: JsonObject | None = None
        #: When the socket closed (a lingering session's grace started).
        self.closed_at = 0.0
        #: The command rate's bucket: what it held at the last command, and when.
        #: Full at the first command (``Limits.command_burst``).
        self.command_tokens = 0.0
        self.command_at = -math.inf
        #: What the hub said of the session before this connection joined it, put back
        #: if the hub refuses the join (the session is open on another bridge).
        self.displaced: RemoteMember | None = None
        #: The number ``Presence`` gave its join: the JOIN's ``claim``.
        self.claim = 0
        #: Its join took the session from no connection here: the first cluster
        #: ``restored`` for it brings the channels it keeps.
        self.restorable = False
        #: With a hub or a cluster, the channels the session left here since its last JOIN:
        #: a RESTORED (the hub's answer to that JOIN, sent before it heard the UNSUBSCRIBE)
        #: or a cluster's restored (the hand-over from its prior home) does not take them
        #: back. Emptied by the RESTORED or the next JOIN (a resync); bounded by
        #: :meth:`note_left`.
        self.left: set[str] = set()
        #: With a hub, the channels the session left here before its last JOIN (a resync)
        #: and did not hold when it went: the hub never heard that UNSUBSCRIBE (the link
        #: was down, or the hub restarted since), so a RESTORED answering that JOIN may list
        #: them, from a copy older than our join (one that lingered on a bridge that
        #: registered first). Not taken back, and the hub hears again that the session left
        #: them. Emptied by the RESTORED; bounded as ``left``.
        self.unheard: set[str] = set()

    def note_left(self, channel: str, cap: int) -> None:
        """Remember that the session left ``channel`` here since its JOIN. A session that
        never moves gets no RESTORED to empty this, so it holds at most ``cap`` channels
        (the channel cap): past it, it starts again (a RESTORED that late is long gone)."""
        _note(self.left, channel, cap)

    def rejoined(self, cap: int) -> None:
        """Its resync JOIN goes (its channels as they are now): what it left since its last
        JOIN and does not hold now is unheard from now on (see ``unheard``); what it holds
        now is not."""
        for channel in self.left:
            if channel not in self.subscriptions:
                _note(self.unheard, channel, cap)
        self.unheard.difference_update(self.subscriptions)
        self.left.clear()

    @property
    def state(self) -> ConnectionState:
        return self.lifecycle.state

    def charge(self, answer: str, burst: int) -> None:
        """Take one command more from the command bucket per ``SNAPSHOT_CHARS_PER_COMMAND``
        of ``answer`` (a snapshot or a roster sent it), so large answers come slower: it may
        go below empty, by at most one ``burst``, and the connection's next commands are then
        refused until the rate has filled it again."""
        commands = len(answer) // SNAPSHOT_CHARS_PER_COMMAND
        self.command_tokens = max(-float(burst), self.command_tokens - commands)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.subscriptions)

    def member(self) -> Member:
        assert self.user_id is not None
        assert self.session_id is not None
        return Member(session_id=self.session_id, user_id=self.user_id, metadata=self.metadata)

    def sender(self) -> Sender | None:
        """Who this connection is, as what it sends others is stamped (none: no session)."""
        if self.session_id is None:
            return None
        return Sender(user_id=self.member().user_id, session_id=self.session_id)

    def remote(self) -> RemoteMember:
        """The session as another process holds it (claimed while its socket is open)."""
        claim = self.claim if self.state is not ConnectionState.LINGERING else 0
        return RemoteMember(ns=self.ns, member=self.member(), channels=self.channels, claim=claim)

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
    """Connection records plus the ns, user, session and channel indexes over them."""

    __slots__ = ("_timers", "by_channel", "by_ns", "by_session", "by_user", "lingering", "records")

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        self.records: dict[Hashable, ConnectionRecord] = {}
        self.by_ns: dict[str, dict[Hashable, None]] = {}
        self.by_user: dict[str, dict[Hashable, None]] = {}
        self.by_session: dict[str, ConnectionRecord] = {}
        self.by_channel: dict[str, dict[Hashable, None]] = {}
        self.lingering: dict[str, ConnectionRecord] = {}

    def get(self, conn: Hashable, *, what: str) -> ConnectionRecord:
        record = self.records.get(conn)
        if record is None:
            raise LocalUsageError(f"{what}: unknown connection {conn!r}; open it first")
        return record

    def open(self, conn: Hashable, ns: str) -> None:
        if conn in self.records:
            raise LocalUsageError(f"ConnectionOpened: connection {conn!r} is already open")
        self.records[conn] = ConnectionRecord(conn, ns, self._timers)
        _add(self.by_ns, ns, conn)

    def join(
        self,
        record: ConnectionRecord,
        user_id: str,
        session_id: str,
        subscriptions: dict[str, PresenceMode],
        metadata: JsonObject | None,
    ) -> None:
        record.lifecycle.fire(ConnectionInput.JOIN)
        record.user_id, record.session_id = user_id, session_id
        record.subscriptions, record.metadata = subscriptions, metadata
        _add(self.by_user, user_id, record.conn)
        self.by_session[session_id] = record
        for channel in subscriptions:
            _add(self.by_channel, channel, record.conn)

    def subscribe(self, record: ConnectionRecord, channel: str, mode: PresenceMode) -> None:
        if channel not in record.subscriptions:
            _add(self.by_channel, channel, record.conn)
        record.subscriptions[channel] = mode

    def unsubscribe(self, record: ConnectionRecord, channel: str) -> None:
        del record.subscriptions[channel]
        _remove(self.by_channel, channel, record.conn)

    def detach(self, record: ConnectionRecord) -> None:
        """Strip ``record`` of its session and take it out of every index; it stays open."""
        self._effects[record.lifecycle.fire(ConnectionInput.DETACH)](self, record)

    def kick(self, record: ConnectionRecord) -> None:
        """Mark ``record`` kicked: its session will leave at once when it closes."""
        record.lifecycle.fire(ConnectionInput.KICK)

    def close(self, conn: Hashable, now: float) -> tuple[ConnectionRecord, ConnectionEffect | None]:
        """Forget ``conn``; return its record and the effect: ``LINGER`` (its session
        stays listed), ``LEAVE`` (its session has left), or another (it held none)."""
        record = self.get(conn, what="ConnectionClosed")
        effect = record.lifecycle.fire(ConnectionInput.CLOSE)
        del self.records[conn]
        record.closed_at = now
        self._effects[effect](self, record)
        return record, effect

    def end(self, record: ConnectionRecord, event: ConnectionInput) -> None:
        """End a lingering session (returned, superseded, expired, shut down)."""
        record.lifecycle.fire(event)
        assert record.session_id is not None
        del self.lingering[record.session_id]

    def shut_down(self) -> list[ConnectionRecord]:
        """Take every connection out of every index and forget every lingering session;
        return the open connections, whose closes are still due."""
        for record in list(self.lingering.values()):
            self.end(record, ConnectionInput.SHUTDOWN)
        records = list(self.records.values())
        for record in records:
            self._effects[record.lifecycle.fire(ConnectionInput.SHUTDOWN)](self, record)
        return records

    def _unindex(self, record: ConnectionRecord) -> None:
        _remove(self.by_ns, record.ns, record.conn)

    def _unmap(self, record: ConnectionRecord) -> None:
        """Out of every index; a record without its session cannot unmap or announce the
        session that a newer connection now owns when it closes later."""
        self._leave(record)
        record.user_id = record.session_id = None
        record.subscriptions, record.metadata = {}, None

    def _leave(self, record: ConnectionRecord) -> None:
        assert record.user_id is not None
        assert record.session_id is not None
        _remove(self.by_ns, record.ns, record.conn)
        _remove(self.by_user, record.user_id, record.conn)
        del self.by_session[record.session_id]
        for channel in record.subscriptions:
            _remove(self.by_channel, channel, record.conn)

    def _linger(self, record: ConnectionRecord) -> None:
        self._leave(record)
        assert record.session_id is not None
        self.lingering[record.session_id] = record

    def _nothing(self, record: ConnectionRecord) -> None:
        pass

    _effects: Final[
        dict[ConnectionEffect | None, Callable[[LocalIndexes, ConnectionRecord], None]]
    ] = {
        None: _nothing,
        ConnectionEffect.UNINDEX: _unindex,
        ConnectionEffect.UNMAP: _unmap,
        ConnectionEffect.LEAVE: _leave,
        ConnectionEffect.LINGER: _linger,
    }

    def targets(
        self, conns: dict[Hashable, None] | None, except_session_ids: frozenset[str]
    ) -> tuple[Hashable, ...]:
        """``conns`` (an index's entry) without those holding one of ``except_session_ids``."""
        if not conns:
            return ()
        if not except_session_ids:
            return tuple(conns)
        records = self.records
        return tuple(conn for conn in conns if records[conn].session_id not in except_session_ids)

    def members(self) -> Iterator[ConnectionRecord]:
        """Every session of this process: joined, then lingering."""
        return chain(self.by_session.values(), self.lingering.values())

    def session(self, session_id: str) -> ConnectionRecord | None:
        """The record holding ``session_id``, joined or lingering."""
        return self.by_session.get(session_id) or self.lingering.get(session_id)

    def check(self) -> None:
        """Raise ``AssertionError`` unless the indexes are exactly what the records imply."""
        ns: dict[str, set[Hashable]] = {}
        users: dict[str, set[Hashable]] = {}
        sessions: dict[str, ConnectionRecord] = {}
        channels: dict[str, set[Hashable]] = {}
        for conn, record in self.records.items():
            joined = record.state in _JOINED
            if (
                record.conn != conn
                or joined != (record.session_id is not None)
                or (joined != (record.user_id is not None))
                or (not joined and record.subscriptions)
            ):
                raise AssertionError(f"{record!r} disagrees with its state or key {conn!r}")
            if record.state in _IN_NS_INDEX:
                ns.setdefault(record.ns, set()).add(conn)
            if record.user_id is not None and record.session_id is not None:
                users.setdefault(record.user_id, set()).add(conn)
                sessions[record.session_id] = record
                for channel in record.subscriptions:
                    channels.setdefault(channel, set()).add(conn)
        for session_id, record in self.lingering.items():
            if (
                record.state is not ConnectionState.LINGERING
                or record.session_id != session_id
                or session_id in sessions
            ):
                raise AssertionError(f"lingering {record!r} is filed under {session_id!r}")
        actual_ns = {key: set(conns) for key, conns in self.by_ns.items()}
        actual_users = {key: set(conns) for key, conns in self.by_user.items()}
        actual_channels = {key: set(conns) for key, conns in self.by_channel.items()}
        if actual_ns != ns:
            raise AssertionError(f"ns index {actual_ns!r} should be {ns!r}")
        if actual_users != users:
            raise AssertionError(f"user index {actual_users!r} should be {users!r}")
        if self.by_session != sessions:
            raise AssertionError(f"session index {self.by_session!r} should be {sessions!r}")
        if actual_channels != channels:
            raise AssertionError(f"channel index {actual_channels!r} should be {channels!r}")


#: The invariant check states, independently of the table, where each state belongs.
_IN_NS_INDEX: Final = frozenset(
    {ConnectionState.OPENED, ConnectionState.JOINED, ConnectionState.KICKED}
)
_JOINED: Final = frozenset({ConnectionState.JOINED, ConnectionState.KICKED})


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

    def put(self, record: ConnectionRecord, channels: Iterable[str]) -> list[Action]:
        member = record.member()
        return [
            StorePut(
                channel=channel, session_id=member.session_id, member=member, ttl=self._config.ttl
            )
            for channel in channels
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

    def put(self, record: ConnectionRecord, channels: Iterable[str]) -> list[Action]:
        return []

    def delete(self, session_id: str, channels: Iterable[str]) -> list[Action]:
        return []

    def on_tick(self, now: float) -> None:
        pass

    def shutdown(self) -> list[Action]:
        return []
