"""The hub's session table: every bridge's sessions and interests, and the indexes routing asks.

Routing asks, on every frame, "which bridges track channel C" (a bridge
tracks a channel while it has a member in it or registered an interest in
it), "which bridges hold a session of user U" and, when a bridge starts to
track a channel, "who are C's members". So those are kept as indexes (counted
where several sessions share a key) rather than computed by scanning
sessions. As with the bridge's indexes, no empty entry is kept and
:meth:`HubSessions.check` states the invariant by recomputing every index
from the sessions and interests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import final

from ._values import JsonObject, Member

__all__ = ["HubSession", "HubSessions"]


@final
class HubSession:
    __slots__ = ("bridge", "channels", "claim", "lingering", "metadata", "session_id", "user_id")

    def __init__(
        self,
        session_id: str,
        user_id: str,
        bridge: Hashable,
        channels: tuple[str, ...],
        metadata: JsonObject | None,
        *,
        lingering: bool = False,
        claim: int = 0,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.bridge = bridge
        self.channels = channels
        self.metadata = metadata
        #: Its socket closed and its bridge keeps it for the leave grace: a JOIN from
        #: another bridge restores it there, whatever that bridge's duplicate policy.
        self.lingering = lingering
        #: The JOIN's ``claim``: which of its bridge's connections holds it.
        self.claim = claim

    def member(self) -> Member:
        return Member(session_id=self.session_id, user_id=self.user_id, metadata=self.metadata)

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
    __slots__ = (
        "by_bridge",
        "channel_bridges",
        "channel_sessions",
        "interest",
        "interests",
        "sessions",
        "user_bridges",
    )

    def __init__(self) -> None:
        self.sessions: dict[str, HubSession] = {}
        self.by_bridge: dict[Hashable, dict[str, None]] = {}
        #: channel -> bridge -> how many of its sessions are in the channel
        self.channel_bridges: dict[str, dict[Hashable, int]] = {}
        #: channel -> the sessions in it, in join order
        self.channel_sessions: dict[str, dict[str, None]] = {}
        self.user_bridges: dict[str, dict[Hashable, int]] = {}
        #: channel -> the bridges interested in it without a member
        self.interest: dict[str, dict[Hashable, None]] = {}
        #: bridge -> its interests (what REGISTER said, or version 1 subscriber sessions)
        self.interests: dict[Hashable, dict[str, None]] = {}

    def put(self, session: HubSession) -> None:
        """Add ``session``, replacing any session with its id (wherever it was)."""
        if session.session_id in self.sessions:
            self.remove(session.session_id)
        self.sessions[session.session_id] = session
        self.by_bridge.setdefault(session.bridge, {})[session.session_id] = None
        for channel in session.channels:
            self._enter(session, channel)
        _count_up(self.user_bridges, session.user_id, session.bridge)

    def _enter(self, session: HubSession, channel: str) -> None:
        _count_up(self.channel_bridges, channel, session.bridge)
        self.channel_sessions.setdefault(channel, {})[session.session_id] = None

    def _exit(self, session: HubSession, channel: str) -> None:
        _count_down(self.channel_bridges, channel, session.bridge)
        members = self.channel_sessions[channel]
        del members[session.session_id]
        if not members:
            del self.channel_sessions[channel]

    def remove(self, session_id: str) -> HubSession:
        session = self.sessions.pop(session_id)
        owned = self.by_bridge[session.bridge]
        del owned[session_id]
        if not owned:
            del self.by_bridge[session.bridge]
        for channel in session.channels:
            self._exit(session, channel)
        _count_down(self.user_bridges, session.user_id, session.bridge)
        return session

    def subscribe(self, session: HubSession, channel: str) -> None:
        session.channels = (*session.channels, channel)
        self._enter(session, channel)

    def unsubscribe(self, session: HubSession, channel: str) -> None:
        session.channels = tuple(c for c in session.channels if c != channel)
        self._exit(session, channel)

    def add_interest(self, bridge: Hashable, channel: str) -> None:
        self.interest.setdefault(channel, {})[bridge] = None
        self.interests.setdefault(bridge, {})[channel] = None

    def remove_bridge(self, bridge: Hashable) -> list[HubSession]:
        """Remove every session and interest of ``bridge``; return its sessions in join order."""
        for channel in self.interests.pop(bridge, ()):
            interested = self.interest[channel]
            del interested[bridge]
            if not interested:
                del self.interest[channel]
        return [self.remove(session_id) for session_id in list(self.by_bridge.get(bridge, ()))]

    def session_count(self, bridge: Hashable) -> int:
        return len(self.by_bridge.get(bridge, ()))

    def interest_count(self, bridge: Hashable) -> int:
        return len(self.interests.get(bridge, ()))

    def tracks(self, bridge: Hashable, channel: str) -> bool:
        """Whether ``bridge`` has a member in ``channel`` or an interest in it."""
        return bridge in self.channel_bridges.get(channel, ()) or bridge in self.interest.get(
            channel, ()
        )

    def bridges_in(self, channels: Iterable[str], *, besides: Hashable) -> dict[Hashable, None]:
        """Bridges other than ``besides`` tracking any of ``channels``."""
        found: dict[Hashable, None] = {}
        for channel in channels:
            found.update(dict.fromkeys(self.channel_bridges.get(channel, ())))
            found.update(self.interest.get(channel, {}))
        found.pop(besides, None)
        return found

    def bridges_of_user(self, user_id: str, *, besides: Hashable) -> tuple[Hashable, ...]:
        return tuple(bridge for bridge in self.user_bridges.get(user_id, ()) if bridge != besides)

    def members_of(self, channel: str, *, besides: Hashable) -> list[Member]:
        """The members of ``channel`` on bridges other than ``besides``, in join order."""
        sessions = self.sessions
        return [
            session.member()
            for session_id in self.channel_sessions.get(channel, ())
            if (session := sessions[session_id]).bridge != besides
        ]

    def check(self) -> None:
        """Raise ``AssertionError`` unless every index is what the sessions imply."""
        by_bridge: dict[Hashable, set[str]] = {}
        channels: dict[str, dict[Hashable, int]] = {}
        channel_sessions: dict[str, set[str]] = {}
        users: dict[str, dict[Hashable, int]] = {}
        for session_id, session in self.sessions.items():
            if session.session_id != session_id or len(set(session.channels)) != len(
                session.channels
            ):
                raise AssertionError(f"{session!r} is filed under {session_id!r}")
            by_bridge.setdefault(session.bridge, set()).add(session_id)
            for channel in session.channels:
                _count_up(channels, channel, session.bridge)
                channel_sessions.setdefault(channel, set()).add(session_id)
            _count_up(users, session.user_id, session.bridge)
        actual = {bridge: set(ids) for bridge, ids in self.by_bridge.items()}
        if actual != by_bridge:
            raise AssertionError(f"bridge index {actual!r} should be {by_bridge!r}")
        if self.channel_bridges != channels:
            raise AssertionError(f"channel index {self.channel_bridges!r} should be {channels!r}")
        actual_sessions = {c: set(ids) for c, ids in self.channel_sessions.items()}
        if actual_sessions != channel_sessions:
            raise AssertionError(f"channel members {actual_sessions!r} should be {channels!r}")
        if self.user_bridges != users:
            raise AssertionError(f"user index {self.user_bridges!r} should be {users!r}")
        interest: dict[str, set[Hashable]] = {}
        for bridge, wanted in self.interests.items():
            if not wanted:
                raise AssertionError(f"bridge {bridge!r} keeps an empty interest")
            for channel in wanted:
                interest.setdefault(channel, set()).add(bridge)
        if {c: set(bridges) for c, bridges in self.interest.items()} != interest:
            raise AssertionError(f"interest index {self.interest!r} should be {interest!r}")
