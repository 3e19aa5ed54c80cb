"""What the hub told this bridge of the other bridges' members, for the channels it tracks.

A bridge *tracks* a channel while it has a local member in it (joined or
lingering) or an interest in it (``HubLinkConfig.channels``): exactly while
the hub routes the channel's JOIN, LEAVE, METADATA, SUBSCRIBE, UNSUBSCRIBE and
PUBLISH to it. So only tracked channels are kept, and a channel that stops
being tracked is forgotten at once: nothing would keep it up to date. When a
bridge starts to track a channel the hub sends its MEMBERS, whose first part
replaces whatever the bridge held of it (perhaps stale, from before a
reconnect or from a dead hub incarnation). While the link is down, what the
hub said stays (stale, not gone) until then.

A JOIN is a session's whole channel list, so it also says which tracked
channels the session left. The hub never echoes a bridge's own frames, so
when a session joins here, whatever the hub said of it is dropped (it moved
here). For the same reason, while a session is held here (joined or
lingering), what the hub says of it (a SUBSCRIBE or MEMBERS the hub sent
before it heard our JOIN) is stale and never kept: nothing would remove it
once the session leaves here. Only a JOIN (another bridge took the session)
is heard, and of a joined session only one superseding the claim of the
connection holding it (``Presence`` keeps any other as the copy to show if the
hub refuses our JOIN, which it crossed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, final

from ._rosters import HUB, Arrival, Rosters, SourceTable
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

    __slots__ = ("_awaited", "_held", "_interest", "_rosters", "table")

    def __init__(
        self,
        rosters: Rosters,
        arrived: Arrival,
        interest: frozenset[str],
        awaited: Callable[[str], bool],
        held: Callable[[str], bool],
    ) -> None:
        self._rosters = rosters
        self._interest = interest
        #: A session here is joining the channel through the hub (``_recoveries``).
        self._awaited = awaited
        #: The session is held here, joined or lingering (``Presence``).
        self._held = held
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

    def receive(self, frame: HubFrame) -> list[Action]:
        return _FRAMES[type(frame)](self, frame)

    def copy(self, frame: JoinFrame) -> RemoteMember:
        """The session as ``frame`` says another bridge holds it, in the channels tracked here."""
        member = Member(session_id=frame.session_id, user_id=frame.user_id, metadata=frame.metadata)
        channels = tuple(channel for channel in frame.channels if self.tracks(channel))
        return RemoteMember(ns="", member=member, channels=channels)

    def _join(self, frame: JoinFrame) -> list[Action]:
        # A JOIN of a session held here says another bridge's connection took it.
        return self.table.put(self.copy(frame), claim=True)

    def _leave(self, frame: LeaveFrame) -> list[Action]:
        self.table.remove(frame.session_id)
        return []

    def _bulk_leave(self, frame: BulkLeaveFrame) -> list[Action]:
        for session_id in frame.session_ids:
            self.table.remove(session_id)
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
        return self.table.with_channel(frame.session_id, frame.channel, member=member)

    def _unsubscribe(self, frame: UnsubscribeFrame) -> list[Action]:
        self.table.without_channel(frame.session_id, frame.channel)
        return []

    def _members(self, frame: MembersFrame) -> list[Action]:
        """The first part replaces what we held of the channel; the others add to it."""
        channel, table = frame.channel, self.table
        if not self.tracks(channel):
            return []
        if frame.part == 0:
            table.drop_channel(channel)
        actions: list[Action] = []
        for member in frame.members:
            if not self._held(member.session_id):
                actions += table.with_channel(member.session_id, channel, member=member)
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
