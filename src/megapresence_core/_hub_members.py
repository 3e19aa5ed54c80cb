"""What the hub told this bridge of the other bridges' members, for the channels it tracks.

A bridge *tracks* a channel while it has a local member in it (joined or
lingering) or an interest in it (``HubLinkConfig.channels``): exactly while
the hub routes the channel's JOIN, LEAVE, METADATA, SUBSCRIBE, UNSUBSCRIBE and
PUBLISH to it. So only tracked channels are kept, and a channel that stops
being tracked is forgotten at once: nothing would keep it up to date. When a
bridge starts to track a channel the hub sends its MEMBERS, which say who is in
it now. While the link is down, what the hub said stays (stale, not gone).

Stale, not gone. A member the hub stops vouching for without a LEAVE is kept
for the leave grace, as a session whose socket closed is, and goes only if
nothing confirms it meanwhile (timer ``STALE``, per session and channel): one
the channel's MEMBERS do not list (the hub restarted empty, and the bridge
holding the member has not registered with it yet), or one of a BULK_LEAVE (its
bridge's link went, and may come back). Its bridge's resync JOIN, a SUBSCRIBE
or a later MEMBERS listing it confirm it, so a hub restart or a link blip shows
watchers nothing, in whatever order the bridges register; a member truly gone
leaves once, when the grace ends. A LEAVE or UNSUBSCRIBE is a departure and
goes at once.

A JOIN is a session's whole channel list, so it also says which tracked
channels the session left. The hub never echoes a bridge's own frames, so
when a session joins here, whatever the hub said of it is dropped (it moved
here). For the same reason, while a session is held here (joined or
lingering), what the hub says of it (a SUBSCRIBE or MEMBERS the hub sent
before it heard our JOIN) is stale and never kept: nothing would remove it
once the session leaves here. Only a JOIN (another bridge took the session)
is heard, and of a joined session only one superseding the claim of the
connection holding it (``Presence`` keeps any other, and what a MEMBERS says
of it, as the copy to show if the hub refuses our JOIN, which they crossed).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final, final

from ._rosters import HUB, Arrival, Rosters, SourceTable
from ._timers import ALL, Timer, Timers
from ._values import Member, RemoteMember
from .actions import Action
from .wire import (
    BulkLeaveFrame,
    HubFrame,
    JoinFrame,
    LeaveFrame,
    MembersFrame,
    MetadataFrame,
    SubscribeFrame,
    UnsubscribeFrame,
)

__all__ = ["PRESENCE_FRAMES", "HubMembers"]


@final
class HubMembers:
    """The hub's source table, filtered to the channels this bridge tracks."""

    __slots__ = (
        "_awaited",
        "_grace",
        "_held",
        "_interest",
        "_listing",
        "_rosters",
        "_shadow",
        "_timers",
        "now",
        "table",
    )

    def __init__(
        self,
        rosters: Rosters,
        arrived: Arrival,
        interest: frozenset[str],
        awaited: Callable[[str], bool],
        held: Callable[[str], bool],
        shadow: Callable[[Member, str], None],
        *,
        timers: Timers,
        grace: float,
    ) -> None:
        self._rosters = rosters
        self._interest = interest
        #: A session here is joining the channel through the hub (``_recoveries``).
        self._awaited = awaited
        #: The session is held here, joined or lingering (``Presence``).
        self._held = held
        #: Told what a MEMBERS says of a session held here (``Presence`` keeps it as the
        #: copy to show if the hub refuses our JOIN, which the MEMBERS crossed).
        self._shadow = shadow
        self._timers = timers
        #: How long an unconfirmed member is kept (the leave grace; 0: it goes at once).
        self._grace = grace
        #: channel -> the sessions held in it that its MEMBERS under way have not listed.
        self._listing: dict[str, dict[str, None]] = {}
        #: When the frame being handled arrived (set by ``Presence``).
        self.now = 0.0
        self.table = SourceTable(HUB, rosters, arrived, keep_channelless=False)

    def tracks(self, channel: str) -> bool:
        return (
            channel in self._interest
            or self._rosters.tracked_locally(channel)
            or self._awaited(channel)
        )

    def untrack(self, channel: str) -> None:
        """A local member left ``channel``: forget it if the bridge no longer tracks it."""
        if not self.tracks(channel):
            self.table.drop_channel(channel)
            self._listing.pop(channel, None)

    def receive(self, frame: HubFrame) -> list[Action]:
        return _FRAMES[type(frame)](self, frame)

    def clear(self) -> None:
        """Forget every member (shutdown: nobody watches any more)."""
        self.table.clear()
        self._listing.clear()
        self._timers.cancel(Timer.STALE, ALL)

    def _unconfirmed(self, session_id: str, channel: str) -> None:
        """The hub no longer vouches for ``session_id`` in ``channel``: it goes when the
        grace ends unless confirmed (an earlier deadline stands)."""
        if self._grace:
            deadline = self.now + self._grace
            self._timers.arm_unless_armed(Timer.STALE, deadline, (session_id, channel))
        else:
            self.table.without_channel(session_id, channel)

    def _confirmed(self, session_id: str, channels: tuple[str, ...]) -> None:
        for channel in channels:
            self._timers.cancel(Timer.STALE, (session_id, channel))

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        """Nothing confirmed the member in time: it leaves that channel (if still held)."""
        assert isinstance(owner, tuple)
        session_id, channel = owner
        self.table.without_channel(session_id, channel)
        return []

    def vouched(self, copy: RemoteMember) -> tuple[str, ...]:
        """The channels of ``copy`` (a session in the table) that the hub vouches for: not
        those whose member stays only for the grace, unconfirmed (a MEMBERS did not list
        it: the hub restarted, and its bridge has not registered with it yet, or its
        bridge's link went), as what the session did meanwhile reached no hub."""
        session_id = copy.member.session_id
        return tuple(
            c for c in copy.channels if not self._timers.armed(Timer.STALE, (session_id, c))
        )

    def copy(self, frame: JoinFrame) -> RemoteMember:
        """The session as ``frame`` says another bridge holds it, in the channels tracked here."""
        member = Member(session_id=frame.session_id, user_id=frame.user_id, metadata=frame.metadata)
        channels = tuple(channel for channel in frame.channels if self.tracks(channel))
        return RemoteMember(ns="", member=member, channels=channels)

    def _join(self, frame: JoinFrame) -> list[Action]:
        copy = self.copy(frame)
        self._confirmed(frame.session_id, copy.channels)
        # A JOIN of a session held here says another bridge's connection took it.
        return self.table.put(copy, claim=True)

    def _leave(self, frame: LeaveFrame) -> list[Action]:
        self.table.remove(frame.session_id)
        return []

    def _bulk_leave(self, frame: BulkLeaveFrame) -> list[Action]:
        """A bridge's link went: its sessions may come back with it (see the module)."""
        sessions = self.table.sessions
        for session_id in frame.session_ids:
            held = sessions.get(session_id)
            for channel in held.channels if held is not None else ():
                self._unconfirmed(session_id, channel)
        return []

    def _metadata(self, frame: MetadataFrame) -> list[Action]:
        held = self.table.sessions.get(frame.session_id)
        if held is None:
            return []
        member = Member(
            session_id=frame.session_id, user_id=held.member.user_id, metadata=frame.metadata
        )
        return self.table.put(RemoteMember(ns="", member=member, channels=held.channels))

    def _subscribe(self, frame: SubscribeFrame) -> list[Action]:
        if not self.tracks(frame.channel) or self._held(frame.session_id):
            return []
        member = Member(session_id=frame.session_id, user_id=frame.user_id, metadata=frame.metadata)
        self._confirmed(frame.session_id, (frame.channel,))
        return self.table.with_channel(frame.session_id, frame.channel, member=member)

    def _unsubscribe(self, frame: UnsubscribeFrame) -> list[Action]:
        self.table.without_channel(frame.session_id, frame.channel)
        return []

    def _members(self, frame: MembersFrame) -> list[Action]:
        """Who is in the channel now: each listed member is confirmed, and those we held
        that no part lists are unconfirmed once the last part has come."""
        channel, table = frame.channel, self.table
        if not self.tracks(channel):
            return []
        if frame.part == 0:
            roster = self._rosters.get(channel)
            holders = roster.holders.items() if roster is not None else ()
            self._listing[channel] = {sid: None for sid, held in holders if HUB in held}
        unlisted = self._listing.get(channel, {})
        actions: list[Action] = []
        for member in frame.members:
            unlisted.pop(member.session_id, None)
            if self._held(member.session_id):
                self._shadow(member, channel)
            else:
                self._confirmed(member.session_id, (channel,))
                actions += table.with_channel(member.session_id, channel, member=member)
        if frame.part == frame.parts - 1:
            self._listing.pop(channel, None)
            for session_id in unlisted:
                self._unconfirmed(session_id, channel)
        return actions

    def check(self) -> None:
        self.table.check()
        untracked = {c for c, _, _ in self.table.holdings() if not self.tracks(c)}
        if untracked:
            raise AssertionError(f"the hub's members of untracked channels {untracked} are kept")


_FRAMES: Final[dict[type[Any], Callable[[HubMembers, Any], list[Action]]]] = {
    JoinFrame: HubMembers._join,
    LeaveFrame: HubMembers._leave,
    BulkLeaveFrame: HubMembers._bulk_leave,
    MetadataFrame: HubMembers._metadata,
    SubscribeFrame: HubMembers._subscribe,
    UnsubscribeFrame: HubMembers._unsubscribe,
    MembersFrame: HubMembers._members,
}

#: The frames that carry other bridges' presence.
PRESENCE_FRAMES: Final = tuple(_FRAMES)
