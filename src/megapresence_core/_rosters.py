"""Channel rosters: every channel's members as this process knows them, cluster-wide.

Theory of operation. A member of a channel is known from one or more sources:
this process (:data:`LOCAL`: a joined or lingering session subscribed to the
channel), the hub (:data:`HUB`: sessions of other bridges, as the hub link
told us), and each other instance of the cluster (its instance id). One source
holds a session at a time, except while the session moves: it returned on
another bridge or instance within its grace, and its old home has not heard
yet. A roster shows one member per session: the local one when there is one,
else the one put last; so a move is at most an update, never a leave and a
join. Counts are kept as the roster changes: sessions are ``len(members)``,
distinct users ``len(by_user)``, both O(1).

Every change of a shown member (it appears, it goes, its value changes) is
reported to the observer (the presence feed) *before* it is applied, with the
value before, so the feed knows what its watchers saw last; a put that changes
nothing shown reports nothing.

A remote source's sessions live in a :class:`SourceTable`: what the source
says it holds, each session with its channels. The table updates the rosters
as its sessions come, change channels and go, and keeps a user index (for
"is this user anywhere?"). The hub's table keeps only the channels this
bridge tracks (the hub routes nothing else to it, so anything else would go
stale); a cluster instance's table keeps every member, channels or not.

As everywhere in the core, no empty entry is kept and ``check`` rebuilds
every index from what the sources hold.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Final, final

from ._values import Member, RemoteMember
from .actions import Action

__all__ = ["HUB", "LOCAL", "ChannelRoster", "Rosters", "Source", "SourceTable"]


class Source(enum.Enum):
    """The sources that are not a cluster instance (those are keyed by instance id)."""

    LOCAL = "local"
    HUB = "hub"

    __hash__ = object.__hash__


LOCAL: Final = Source.LOCAL
HUB: Final = Source.HUB


@final
class ChannelRoster:
    """One channel's members, by session, with the sources that hold each."""

    __slots__ = ("by_user", "holders", "local", "members")

    def __init__(self) -> None:
        #: session id -> source -> member, the source put last at the end
        self.holders: dict[str, dict[Hashable, Member]] = {}
        #: session id -> the member shown
        self.members: dict[str, Member] = {}
        #: user id -> that user's session ids among ``members``
        self.by_user: dict[str, dict[str, None]] = {}
        #: How many sessions LOCAL holds (the bridge tracks the channel while > 0).
        self.local = 0

    @property
    def counts(self) -> tuple[int, int]:
        """(sessions, distinct users)."""
        return len(self.members), len(self.by_user)


#: Told (channel, session id, member shown before or None, roster) before a change.
Observer = Callable[[str, str, "Member | None", ChannelRoster], None]


def _shown(holders: dict[Hashable, Member]) -> Member | None:
    if not holders:
        return None
    local = holders.get(LOCAL)
    return local if local is not None else next(reversed(holders.values()))


@final
class Rosters:
    """Every channel's roster; channels nobody holds are forgotten."""

    __slots__ = ("_observer", "channels")

    def __init__(self, observer: Observer) -> None:
        self._observer = observer
        self.channels: dict[str, ChannelRoster] = {}

    def get(self, channel: str) -> ChannelRoster | None:
        return self.channels.get(channel)

    def counts(self, channel: str) -> tuple[int, int]:
        roster = self.channels.get(channel)
        return roster.counts if roster is not None else (0, 0)

    def tracked_locally(self, channel: str) -> bool:
        roster = self.channels.get(channel)
        return roster is not None and roster.local > 0

    def put(self, channel: str, source: Hashable, member: Member) -> None:
        """``source`` holds ``member`` in ``channel`` (added, or its value replaced)."""
        roster = self.channels.get(channel)
        if roster is None:
            roster = self.channels[channel] = ChannelRoster()
        holders = roster.holders.get(member.session_id)
        if holders is None:
            holders = roster.holders[member.session_id] = {}
        elif holders.pop(source, None) is not None and source is LOCAL:
            roster.local -= 1
        holders[source] = member
        if source is LOCAL:
            roster.local += 1
        self._show(channel, roster, member.session_id, holders)

    def remove(self, channel: str, source: Hashable, session_id: str) -> None:
        """``source`` no longer holds ``session_id`` in ``channel`` (a no-op if it did not)."""
        roster = self.channels.get(channel)
        holders = roster.holders.get(session_id) if roster is not None else None
        if roster is None or holders is None or source not in holders:
            return
        del holders[source]
        if source is LOCAL:
            roster.local -= 1
        self._show(channel, roster, session_id, holders)
        if not holders:
            del roster.holders[session_id]
            if not roster.holders:
                del self.channels[channel]

    def _show(
        self, channel: str, roster: ChannelRoster, session_id: str, holders: dict[Hashable, Member]
    ) -> None:
        before = roster.members.get(session_id)
        after = _shown(holders)
        if after == before:
            return
        self._observer(channel, session_id, before, roster)
        if before is not None:
            users = roster.by_user[before.user_id]
            del users[session_id]
            if not users:
                del roster.by_user[before.user_id]
        if after is None:
            del roster.members[session_id]
        else:
            roster.members[session_id] = after
            roster.by_user.setdefault(after.user_id, {})[session_id] = None

    def check(self, expected: Mapping[str, Mapping[str, Mapping[Hashable, Member]]]) -> None:
        """Raise ``AssertionError`` unless the rosters hold exactly ``expected``
        (channel -> session id -> source -> member) and every derived index agrees."""
        actual = {
            channel: {sid: dict(holders) for sid, holders in roster.holders.items()}
            for channel, roster in self.channels.items()
        }
        if actual != expected:
            raise AssertionError(f"channel rosters {actual!r} should be {expected!r}")
        for channel, roster in self.channels.items():
            members = {sid: _shown(holders) for sid, holders in roster.holders.items()}
            by_user: dict[str, set[str]] = {}
            for sid, member in members.items():
                assert member is not None
                by_user.setdefault(member.user_id, set()).add(sid)
            local = sum(LOCAL in holders for holders in roster.holders.values())
            if (
                roster.members != members
                or {user: set(sids) for user, sids in roster.by_user.items()} != by_user
                or roster.local != local
            ):
                raise AssertionError(f"roster of {channel!r} disagrees with its holders")


#: Told a session id a remote source now holds and, when the source claims it (a
#: connection just took it there), the claiming user; returns what that means here (a
#: lingering local copy is dropped: the session returned elsewhere; a joined one claimed
#: by its own user is given up, and one a cluster instance claims for another user is
#: closed).
Arrival = Callable[[str, "str | None"], list[Action]]


@final
class SourceTable:
    """The sessions one remote source holds, with their channels, mirrored into the rosters."""

    __slots__ = ("_arrived", "_keep_channelless", "_rosters", "sessions", "source", "users")

    def __init__(
        self, source: Hashable, rosters: Rosters, arrived: Arrival, *, keep_channelless: bool
    ) -> None:
        self.source = source
        self._rosters = rosters
        self._arrived = arrived
        self._keep_channelless = keep_channelless
        self.sessions: dict[str, RemoteMember] = {}
        #: user id -> how many of the source's sessions are that user's
        self.users: dict[str, int] = {}

    def put(self, remote: RemoteMember, *, claim: bool = False) -> list[Action]:
        """The source holds ``remote`` (new, or its whole new state); ``claim``: a
        connection just took the session there."""
        claimer = remote.member.user_id if claim else None
        if not remote.channels and not self._keep_channelless:
            self.remove(remote.member.session_id)
            return self._arrived(remote.member.session_id, claimer)
        member = remote.member
        old = self.sessions.get(member.session_id)
        self.sessions[member.session_id] = remote
        if old is None or old.member.user_id != member.user_id:
            self._count_user(member.user_id, 1)
            if old is not None:
                self._count_user(old.member.user_id, -1)
        rosters, source = self._rosters, self.source
        if old is not None:
            for channel in set(old.channels).difference(remote.channels):
                rosters.remove(channel, source, member.session_id)
        for channel in remote.channels:
            rosters.put(channel, source, member)
        return self._arrived(member.session_id, claimer)

    def remove(self, session_id: str) -> None:
        old = self.sessions.pop(session_id, None)
        if old is None:
            return
        self._count_user(old.member.user_id, -1)
        for channel in old.channels:
            self._rosters.remove(channel, self.source, session_id)

    def replace(self, members: Iterable[RemoteMember]) -> list[Action]:
        """The source holds exactly ``members`` now (a snapshot), each a claim (``put``)."""
        fresh = {remote.member.session_id: remote for remote in members}
        for session_id in [sid for sid in self.sessions if sid not in fresh]:
            self.remove(session_id)
        actions: list[Action] = []
        for remote in fresh.values():
            actions += self.put(remote, claim=True)
        return actions

    def clear(self) -> None:
        for session_id in list(self.sessions):
            self.remove(session_id)

    def with_channel(self, session_id: str, channel: str, *, member: Member) -> list[Action]:
        """``session_id`` is (also) in ``channel``; ``member`` is its latest value."""
        old = self.sessions.get(session_id)
        channels = old.channels if old is not None else ()
        if channel not in channels:
            channels = (*channels, channel)
        return self.put(RemoteMember(ns=old.ns if old else "", member=member, channels=channels))

    def without_channel(self, session_id: str, channel: str) -> None:
        old = self.sessions.get(session_id)
        if old is not None and channel in old.channels:
            channels = tuple(c for c in old.channels if c != channel)
            self.put(RemoteMember(ns=old.ns, member=old.member, channels=channels))

    def drop_channel(self, channel: str) -> None:
        """Forget ``channel`` for every session of the source (the bridge stopped tracking it)."""
        roster = self._rosters.get(channel)
        if roster is None or not self.sessions:
            return
        for session_id in [sid for sid, h in roster.holders.items() if self.source in h]:
            self.without_channel(session_id, channel)

    def knows_user(self, user_id: str) -> bool:
        return user_id in self.users

    def _count_user(self, user_id: str, delta: int) -> None:
        count = self.users.get(user_id, 0) + delta
        if count:
            self.users[user_id] = count
        else:
            del self.users[user_id]

    def check(self) -> None:
        users: dict[str, int] = {}
        for session_id, remote in self.sessions.items():
            if remote.member.session_id != session_id or not (
                remote.channels or self._keep_channelless
            ):
                raise AssertionError(f"{remote!r} is filed under {session_id!r} in {self.source}")
            users[remote.member.user_id] = users.get(remote.member.user_id, 0) + 1
        if users != self.users:
            raise AssertionError(f"user index of {self.source!r} {self.users!r} should be {users}")

    def holdings(self) -> Iterable[tuple[str, str, Member]]:
        """(channel, session id, member) for every channel of every session."""
        for session_id, remote in self.sessions.items():
            for channel in remote.channels:
                yield channel, session_id, remote.member
