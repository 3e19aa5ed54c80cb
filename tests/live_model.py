"""The truth the live presence tests compare every watcher with: who is in which channel now.

A plain model, rebuilt by the simplest rules (a session is in a channel from its
join or subscribe until it unsubscribes, is kicked, or its socket has been closed
for the leave grace; a return within the grace keeps it), so that a disagreement
points at the machines, not at the model.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import attrs

USERS = ("ann", "bob", "cid")
#: Session ids, each always of the same user (a session never changes user); each process
#: starts with a watcher session ``w<home>`` of user ``eve``.
SESSIONS = {f"s{i}": USERS[i % len(USERS)] for i in range(6)} | {f"w{h}": "eve" for h in "ABC"}
CHANNELS = ("room", "dev")
MODES = ("none", "users", "sessions", "count")


@attrs.define
class ModelSession:
    user: str
    home: str  #: the bridge or instance holding it
    channels: set[str]
    metadata: dict[str, Any] | None
    conn: Hashable | None  #: its open connection, or None while it lingers
    closed_at: float = 0.0


@attrs.define
class Model:
    grace: float
    sessions: dict[str, ModelSession] = attrs.field(factory=dict)
    #: open connection -> (home, session id or None once detached)
    conns: dict[Hashable, tuple[str, str | None]] = attrs.field(factory=dict)
    #: open connection -> channel -> mode
    modes: dict[Hashable, dict[str, str]] = attrs.field(factory=dict)

    def expire(self, now: float) -> None:
        """Sessions whose grace is over have left (a tick at or after the deadline)."""
        for sid, session in list(self.sessions.items()):
            if session.conn is None and now >= session.closed_at + self.grace:
                del self.sessions[sid]

    def connected(self, sid: str) -> bool:
        session = self.sessions.get(sid)
        return session is not None and session.conn is not None

    def join(
        self,
        home: str,
        sid: str,
        conn: Hashable,
        channels: set[str],
        metadata: dict[str, Any] | None,
    ) -> None:
        prior = self.sessions.get(sid)
        kept: set[str] = set()
        if prior is not None:
            kept = prior.channels  # restored (on any process), or taken over
            if prior.conn is not None:
                self.conns[prior.conn] = (home, None)  # detached: it stays open, watches nothing
                self.modes.pop(prior.conn, None)
        self.sessions[sid] = ModelSession(SESSIONS[sid], home, kept | channels, metadata, conn)
        self.conns[conn] = (home, sid)
        self.modes[conn] = {}

    def close(self, conn: Hashable, now: float, *, kicked: bool = False) -> None:
        _, sid = self.conns.pop(conn)
        self.modes.pop(conn, None)
        if sid is None:
            return
        if kicked:
            del self.sessions[sid]
        else:
            session = self.sessions[sid]
            session.conn, session.closed_at = None, now

    def forget_home(self, home: str) -> None:
        """The process died: its sessions and connections are gone."""
        for sid in [sid for sid, s in self.sessions.items() if s.home == home]:
            del self.sessions[sid]
        for conn in [conn for conn, (h, _) in self.conns.items() if h == home]:
            del self.conns[conn]
            self.modes.pop(conn, None)

    def watchers(self) -> list[tuple[str, Hashable, str, str]]:
        """(home, conn, channel, mode) of every connection watching a channel."""
        return [
            (self.conns[conn][0], conn, channel, mode)
            for conn, channels in self.modes.items()
            for channel, mode in channels.items()
            if mode != "none"
        ]

    def members(self, channel: str) -> dict[str, ModelSession]:
        return {sid: s for sid, s in self.sessions.items() if channel in s.channels}

    def counts(self, channel: str) -> tuple[int, int]:
        members = self.members(channel)
        return len(members), len({s.user for s in members.values()})

    def view(self, channel: str, view: str) -> dict[str, Any]:
        members = self.members(channel)
        if view == "sessions":
            return {
                sid: {"sessionId": sid, "userId": s.user, "metadata": s.metadata}
                for sid, s in members.items()
            }
        users: dict[str, Any] = {}
        for sid in sorted(members):
            s = members[sid]
            entry = users.setdefault(s.user, {"userId": s.user, "sessions": []})
            entry["sessions"].append({"sessionId": sid, "metadata": s.metadata})
        return users

    def tracks(self, home: str, channel: str, interest: tuple[str, ...] = ()) -> bool:
        """Whether ``home`` has a connected subscriber of ``channel`` or an interest in it
        (what presence_stats promises to be cluster-wide for)."""
        return channel in interest or any(
            s.home == home and s.conn is not None and channel in s.channels
            for s in self.sessions.values()
        )
