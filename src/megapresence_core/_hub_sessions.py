"""The hub's session table: every session of every bridge, and who shares a channel.

Routing asks two questions on every frame, "which bridges have a member in
channel C" and "which bridges hold a session of user U", so both are kept as
counted indexes rather than computed by scanning sessions. As with the
bridge's indexes, no empty entry is kept and :meth:`HubSessions.check` states
the invariant by recomputing everything from the sessions.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import final

from ._json import JsonObject

__all__ = ["HubSession", "HubSessions"]


@final
class HubSession:
    __slots__ = ("bridge", "channels", "metadata", "session_id", "user_id")

    def __init__(
        self,
        session_id: str,
        user_id: str,
        bridge: Hashable,
        channels: tuple[str, ...],
        metadata: JsonObject | None,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.bridge = bridge
        self.channels = channels
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"<HubSession {self.session_id!r} of {self.user_id!r} on {self.bridge!r}>"


def _count_up(index: dict[str, dict[Hashable, int]], key: str, bridge: Hashable) -> None:
    counts = index.setdefault(key, {})
    counts[bridge] = counts.get(bridge, 0) + 1


def _count_down(index: dict[str, dict[Hashable, int]], key: str, bridge: Hashable) -> None:
    counts = index[key]
    if counts[bridge] == 1:
        del counts[bridge]
        if not counts:
            del index[key]
    else:
        counts[bridge] -= 1


@final
class HubSessions:
    __slots__ = ("by_bridge", "channel_bridges", "sessions", "user_bridges")

    def __init__(self) -> None:
        self.sessions: dict[str, HubSession] = {}
        self.by_bridge: dict[Hashable, dict[str, None]] = {}
        self.channel_bridges: dict[str, dict[Hashable, int]] = {}
        self.user_bridges: dict[str, dict[Hashable, int]] = {}

    def put(self, session: HubSession) -> None:
        """Add ``session``, replacing any session with its id (wherever it was)."""
        if session.session_id in self.sessions:
            self.remove(session.session_id)
        self.sessions[session.session_id] = session
        self.by_bridge.setdefault(session.bridge, {})[session.session_id] = None
        for channel in session.channels:
            _count_up(self.channel_bridges, channel, session.bridge)
        _count_up(self.user_bridges, session.user_id, session.bridge)

    def remove(self, session_id: str) -> HubSession:
        session = self.sessions.pop(session_id)
        owned = self.by_bridge[session.bridge]
        del owned[session_id]
        if not owned:
            del self.by_bridge[session.bridge]
        for channel in session.channels:
            _count_down(self.channel_bridges, channel, session.bridge)
        _count_down(self.user_bridges, session.user_id, session.bridge)
        return session

    def remove_bridge(self, bridge: Hashable) -> list[HubSession]:
        """Remove every session of ``bridge``; return them in join order."""
        return [self.remove(session_id) for session_id in list(self.by_bridge.get(bridge, ()))]

    def session_count(self, bridge: Hashable) -> int:
        return len(self.by_bridge.get(bridge, ()))

    def bridges_in(self, channels: Iterable[str], *, besides: Hashable) -> tuple[Hashable, ...]:
        """Bridges other than ``besides`` with a member in any of ``channels``."""
        found: dict[Hashable, None] = {}
        for channel in channels:
            found.update(dict.fromkeys(self.channel_bridges.get(channel, ())))
        found.pop(besides, None)
        return tuple(found)

    def bridges_of_user(self, user_id: str, *, besides: Hashable) -> tuple[Hashable, ...]:
        return tuple(bridge for bridge in self.user_bridges.get(user_id, ()) if bridge != besides)

    def check(self) -> None:
        """Raise ``AssertionError`` unless every index is what the sessions imply."""
        by_bridge: dict[Hashable, set[str]] = {}
        channels: dict[str, dict[Hashable, int]] = {}
        users: dict[str, dict[Hashable, int]] = {}
        for session_id, session in self.sessions.items():
            if session.session_id != session_id:
                raise AssertionError(f"{session!r} is filed under {session_id!r}")
            by_bridge.setdefault(session.bridge, set()).add(session_id)
            for channel in session.channels:
                _count_up(channels, channel, session.bridge)
            _count_up(users, session.user_id, session.bridge)
        actual = {bridge: set(ids) for bridge, ids in self.by_bridge.items()}
        if actual != by_bridge:
            raise AssertionError(f"bridge index {actual!r} should be {by_bridge!r}")
        if self.channel_bridges != channels:
            raise AssertionError(f"channel index {self.channel_bridges!r} should be {channels!r}")
        if self.user_bridges != users:
            raise AssertionError(f"user index {self.user_bridges!r} should be {users!r}")
