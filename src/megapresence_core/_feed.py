"""The presence feed: a snapshot, then coalesced diffs (or counts), to each channel's watchers.

Theory of operation. A watcher is a connection subscribed to a channel in
mode users, sessions or count; the mode is the view it watches. Each channel
with a watcher has a :class:`ChannelFeed`: its watchers by view, a version
per view, and at most one open window. The rosters report every change of a
shown member before applying it (:meth:`PresenceFeed.touched`); the first
change to a watched channel opens its window, which remembers, for each
session touched, its member before the window (None if absent), and the
counts before.

A window ends at its ``FLUSH`` timer (``now + presence_window``, armed by
:meth:`PresenceFeed.settle` at the end of the event that opened it), or, with
a window of 0, at the end of that event. Then each view's diff is computed
from the before-values and the roster as it is now: absent then present is a
join, present then absent a leave, present both times and different an
update, equal nothing (a join then a leave cancel out). A diff that is not
empty is encoded once, labelled with the view's next version and delivered to
every watcher of the view in one action; count watchers get the counts if
they changed. So a watcher gets at most one message per window, however many
changes the window held.

A snapshot taken mid-window (a new watcher, a sync) is the state as of the
last version sent: the roster with the window's touched sessions put back to
their before-values, labelled with that version, so the window's diff applies
to it exactly.

Cost: per change, a dict lookup and, the first time in its window, an insert;
per window, the touched sessions' diff, one encoding per view and one action
per view whose target tuple is cached. Only the shim's writes grow with the
number of watchers.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Final, final

from ._rosters import ChannelRoster, Rosters
from ._timers import ALL, Timer, Timers
from ._values import JsonObject, Member, PresenceMode
from .actions import Action, Deliver
from .wire import (
    PresenceCount,
    PresenceDiff,
    PresenceState,
    encode,
    session_json,
    user_json,
)

__all__ = ["ChannelFeed", "PresenceFeed"]

_SESSIONS, _USERS, _COUNT = PresenceMode.SESSIONS, PresenceMode.USERS, PresenceMode.COUNT
#: The views, in the order their messages go out at a flush.
VIEWS: Final = (_SESSIONS, _USERS, _COUNT)


@final
class _Window:
    __slots__ = ("before", "counts")

    def __init__(self, counts: tuple[int, int]) -> None:
        #: session id -> its member before the window (None: absent)
        self.before: dict[str, Member | None] = {}
        self.counts = counts


@final
class ChannelFeed:
    """One watched channel: its watchers by view, versions, and open window."""

    __slots__ = ("_targets", "versions", "watchers", "window")

    def __init__(self) -> None:
        self.watchers: dict[PresenceMode, dict[Hashable, None]] = {view: {} for view in VIEWS}
        self.versions: dict[PresenceMode, int] = {_SESSIONS: 0, _USERS: 0}
        self.window: _Window | None = None
        self._targets: dict[PresenceMode, tuple[Hashable, ...]] = {}

    def targets(self, view: PresenceMode) -> tuple[Hashable, ...]:
        """The watchers of ``view`` as one tuple, rebuilt only when they change."""
        cached = self._targets.get(view)
        if cached is None:
            cached = self._targets[view] = tuple(self.watchers[view])
        return cached

    def changed(self, view: PresenceMode) -> None:
        self._targets.pop(view, None)


def _as_sent(roster: ChannelRoster | None, window: _Window | None) -> dict[str, Member]:
    """The members as of the last version sent: the window's changes undone."""
    members = dict(roster.members) if roster is not None else {}
    if window is not None:
        for session_id, before in window.before.items():
            if before is None:
                members.pop(session_id, None)
            else:
                members[session_id] = before
    return members


def _by_user(members: Iterable[Member]) -> dict[str, list[Member]]:
    grouped: dict[str, list[Member]] = {}
    for member in members:
        grouped.setdefault(member.user_id, []).append(member)
    return grouped


def _view_json(view: PresenceMode, members: Mapping[str, Member]) -> JsonObject:
    if view is _SESSIONS:
        return {sid: session_json(member) for sid, member in members.items()}
    grouped = _by_user(members.values())
    return {user: user_json(user, sessions) for user, sessions in grouped.items()}


@final
class PresenceFeed:
    """Every watched channel's feed, over the rosters it observes."""

    __slots__ = ("_fresh", "_timers", "_window", "channels", "rosters")

    def __init__(self, timers: Timers, window: float) -> None:
        self._timers = timers
        self._window = window
        self.channels: dict[str, ChannelFeed] = {}
        #: Channels whose window opened during the current event (not yet armed).
        self._fresh: dict[str, None] = {}
        self.rosters = Rosters(self.touched)

    # ------------------------------------------------------------ changes

    def touched(
        self, channel: str, session_id: str, before: Member | None, roster: ChannelRoster
    ) -> None:
        """The rosters' observer: ``session_id``'s shown member in ``channel`` is changing."""
        feed = self.channels.get(channel)
        if feed is None:
            return
        window = feed.window
        if window is None:
            window = feed.window = _Window(roster.counts)
            self._fresh[channel] = None
        window.before.setdefault(session_id, before)

    def settle(self, now: float) -> list[Action]:
        """At the end of an event: start the windows it opened, or (window 0) flush them."""
        if not self._fresh:
            return []
        fresh, self._fresh = self._fresh, {}
        if self._window == 0:
            actions: list[Action] = []
            for channel in fresh:
                actions += self._flush(channel)
            return actions
        for channel in fresh:
            self._timers.arm(Timer.FLUSH, now + self._window, channel)
        return []

    def on_timer(self, kind: Timer, owner: Hashable, now: float) -> list[Action]:
        assert isinstance(owner, str)
        return self._flush(owner)

    def _flush(self, channel: str) -> list[Action]:
        feed = self.channels[channel]
        window = feed.window
        assert window is not None
        feed.window = None
        roster = self.rosters.get(channel)
        members = roster.members if roster is not None else {}
        actions: list[Action] = []
        if feed.watchers[_SESSIONS]:
            actions += self._diff(channel, feed, _SESSIONS, self._session_changes(window, members))
        if feed.watchers[_USERS]:
            changes = self._user_changes(window, roster)
            actions += self._diff(channel, feed, _USERS, changes)
        counts = roster.counts if roster is not None else (0, 0)
        if feed.watchers[_COUNT] and counts != window.counts:
            text = encode(PresenceCount(channel=channel, sessions=counts[0], users=counts[1]))
            actions.append(Deliver(conns=feed.targets(_COUNT), text=text))
        return actions

    def _diff(
        self,
        channel: str,
        feed: ChannelFeed,
        view: PresenceMode,
        changes: Iterable[tuple[str, JsonObject | None, JsonObject | None]],
    ) -> list[Action]:
        joins: JsonObject = {}
        leaves: JsonObject = {}
        updates: JsonObject = {}
        for key, before, after in changes:
            if before is None:
                if after is not None:
                    joins[key] = after
            elif after is None:
                leaves[key] = before
            elif after != before:
                updates[key] = after
        if not (joins or leaves or updates):
            return []
        version = feed.versions[view] = feed.versions[view] + 1
        text = encode(
            PresenceDiff(
                channel=channel,
                view=view.value,
                version=version,
                joins=joins,
                leaves=leaves,
                updates=updates,
            )
        )
        return [Deliver(conns=feed.targets(view), text=text)]

    def _session_changes(
        self, window: _Window, members: Mapping[str, Member]
    ) -> Iterable[tuple[str, JsonObject | None, JsonObject | None]]:
        for session_id, before in window.before.items():
            after = members.get(session_id)
            yield (
                session_id,
                None if before is None else session_json(before),
                None if after is None else session_json(after),
            )

    def _user_changes(
        self, window: _Window, roster: ChannelRoster | None
    ) -> Iterable[tuple[str, JsonObject | None, JsonObject | None]]:
        members = roster.members if roster is not None else {}
        touched: dict[str, dict[str, None]] = {}  # user -> its touched sessions
        for session_id, before in window.before.items():
            after = members.get(session_id)
            for member in (before, after):
                if member is not None:
                    touched.setdefault(member.user_id, {})[session_id] = None
        for user, sessions in touched.items():
            now = {sid: members[sid] for sid in roster.by_user.get(user, ())} if roster else {}
            then = dict(now)
            for session_id in sessions:
                before = window.before[session_id]
                if before is not None and before.user_id == user:
                    then[session_id] = before
                else:
                    then.pop(session_id, None)
            yield (
                user,
                user_json(user, then.values()) if then else None,
                user_json(user, now.values()) if now else None,
            )

    # ----------------------------------------------------------- watchers

    def watch(self, conn: Hashable, channel: str, view: PresenceMode) -> Deliver:
        """``conn`` watches ``view`` of ``channel`` from now: here is its snapshot (or count)."""
        feed = self.channels.get(channel)
        if feed is None:
            feed = self.channels[channel] = ChannelFeed()
        feed.watchers[view][conn] = None
        feed.changed(view)
        return self.snapshot(conn, channel, view)

    def unwatch(self, conn: Hashable, channel: str, view: PresenceMode) -> None:
        feed = self.channels[channel]
        del feed.watchers[view][conn]
        feed.changed(view)
        if not any(feed.watchers.values()):
            del self.channels[channel]
            self._fresh.pop(channel, None)
            self._timers.cancel(Timer.FLUSH, channel)

    def snapshot(self, conn: Hashable, channel: str, view: PresenceMode) -> Deliver:
        """The state of ``view`` as of its last version sent (mid-window too), for ``conn``."""
        feed = self.channels[channel]
        roster = self.rosters.get(channel)
        if view is _COUNT:
            window = feed.window
            sessions, users = (
                window.counts
                if window is not None
                else (roster.counts if roster is not None else (0, 0))
            )
            text = encode(PresenceCount(channel=channel, sessions=sessions, users=users))
        else:
            members = _view_json(view, _as_sent(roster, feed.window))
            text = encode(
                PresenceState(
                    channel=channel, view=view.value, version=feed.versions[view], members=members
                )
            )
        return Deliver(conns=(conn,), text=text)

    def shutdown(self) -> None:
        self.channels.clear()
        self._fresh.clear()
        self._timers.cancel(Timer.FLUSH, ALL)

    # ---------------------------------------------------------------- checks

    def check(self, expected: Mapping[str, Mapping[PresenceMode, set[Hashable]]]) -> None:
        """Raise ``AssertionError`` unless the watchers are exactly ``expected`` (channel ->
        view -> connections, from the subscriptions) and every window is open exactly when
        it will be flushed."""
        actual = {
            channel: {view: set(conns) for view, conns in feed.watchers.items() if conns}
            for channel, feed in self.channels.items()
        }
        if actual != expected:
            raise AssertionError(f"watchers {actual!r} should be {expected!r}")
        armed = self._timers.owners(Timer.FLUSH)
        for channel, feed in self.channels.items():
            for view in VIEWS:
                cached = feed._targets.get(view)
                if cached is not None and cached != tuple(feed.watchers[view]):
                    raise AssertionError(f"cached targets of {channel!r} {view.value} are stale")
            window = feed.window
            pending = channel in self._fresh or channel in armed
            if (window is not None) != pending or (channel in self._fresh and channel in armed):
                raise AssertionError(f"the window of {channel!r} is open without a flush, or not")
            if window is not None and any(
                before is not None and before.session_id != sid
                for sid, before in window.before.items()
            ):
                raise AssertionError(f"the window of {channel!r} misfiles a member")
        if not set(armed) <= set(self.channels) or not set(self._fresh) <= set(self.channels):
            raise AssertionError("a flush is due for a channel nobody watches")
