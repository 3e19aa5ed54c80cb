"""Subscribes waiting for the stream owner's answer (the hub's RECOVERED, a store's read).

Theory of operation. When a stream owner numbers the channel streams (a
streaming hub link, or a ready stream store: see ``_stream_store``), a
``subscribe`` is answered with the owner's position (and, after ``since``, the
missed publications): the bridge asks (RECOVER after the SUBSCRIBE that makes
the hub route the channel here, or ``StreamRead``) and answers the client when
the answer comes back, in order after every publication of the channel up to
that position. Only then does the subscription take effect here (a new one
joins the channel, a mode changes): ``subscribed``, the recovered messages and
the snapshot come in that order, and the live ones after, as on a single
server. If the owner goes first (the link down, the store down), the waiting
subscribes are answered from this process's own streams (not recovered: reason
``epoch``, the owner's stream is out of reach).

When the owner comes back (the link registers again, the store is ready), the
bridge *probes* each channel its clients are subscribed to: a read without
``since`` whose answer is only the owner's position. Publications may have been
numbered meanwhile that nobody here delivered; if the position is past the last
one its clients were sent, they are told ``stream.missed`` and recover them
from the owner with ``since``, exactly.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import final

from ._values import PresenceMode, StreamPosition
from .wire import RecoverFrame

__all__ = ["PendingRecovery", "Recoveries"]


@final
class PendingRecovery:
    """A subscribe sent on as RECOVER: whom to answer, and the mode it asked for."""

    __slots__ = ("channel", "conn", "fresh", "mode", "since")

    def __init__(
        self,
        conn: Hashable,
        channel: str,
        mode: PresenceMode,
        since: StreamPosition | None,
        *,
        fresh: bool,
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.mode = mode
        self.since = since
        #: The session was not in the channel: it joins it here when the answer comes.
        self.fresh = fresh


@final
class Recoveries:
    __slots__ = ("_awaited", "_last", "pending", "probes")

    def __init__(self) -> None:
        self._last = 0
        self.pending: dict[int, PendingRecovery] = {}
        #: request -> channel: the owner's position asked after it came back.
        self.probes: dict[int, str] = {}
        #: channel -> waiting subscribes that would join it: the hub routes it here already.
        self._awaited: dict[str, int] = {}

    def awaits(self, channel: str) -> bool:
        """A session here is joining ``channel`` (its SUBSCRIBE is at the hub): the bridge
        tracks it, so what the hub says of its members is kept."""
        return channel in self._awaited

    def _take(self, request: int) -> PendingRecovery:
        pending = self.pending.pop(request)
        if pending.fresh:
            left = self._awaited[pending.channel] - 1
            if left:
                self._awaited[pending.channel] = left
            else:
                del self._awaited[pending.channel]
        return pending

    def ask(
        self,
        conn: Hashable,
        channel: str,
        mode: PresenceMode,
        since: StreamPosition | None,
        session_id: str,
        *,
        fresh: bool,
    ) -> RecoverFrame:
        frame = self._frame(channel, since, session_id)
        self.pending[frame.request] = PendingRecovery(conn, channel, mode, since, fresh=fresh)
        if fresh:
            self._awaited[channel] = self._awaited.get(channel, 0) + 1
        return frame

    def probe(self, channel: str, session_id: str) -> RecoverFrame:
        """Ask the owner where ``channel``'s stream is (``session_id``: one of its
        subscribers here, as the frame must name a session)."""
        frame = self._frame(channel, None, session_id)
        self.probes[frame.request] = channel
        return frame

    def _frame(self, channel: str, since: StreamPosition | None, session_id: str) -> RecoverFrame:
        """A RECOVER frame under the next request number (asks and probes share them)."""
        self._last += 1
        return RecoverFrame(request=self._last, session_id=session_id, channel=channel, since=since)

    def probed(self, request: int) -> str | None:
        """The channel a probe's answer is for, or None if ``request`` is no probe."""
        return self.probes.pop(request, None)

    def answered(self, request: int) -> PendingRecovery | None:
        return self._take(request) if request in self.pending else None

    def waits(self, conn: Hashable, channel: str) -> bool:
        """Whether a subscribe of ``conn`` that would join ``channel`` waits for the owner
        (its SUBSCRIBE went to the hub)."""
        return any(
            p.conn == conn and p.channel == channel and p.fresh for p in self.pending.values()
        )

    def cancel(self, conn: Hashable, channel: str) -> bool:
        """Forget the waiting subscribes of ``conn`` to ``channel`` (it unsubscribed);
        whether there was one."""
        found = [r for r, p in self.pending.items() if p.conn == conn and p.channel == channel]
        for request in found:
            self._take(request)
        return bool(found)

    def abandon(self) -> list[PendingRecovery]:
        """Every waiting subscribe, oldest first (the link went down: no answer will come);
        the probes are forgotten."""
        self.probes.clear()
        return [self._take(request) for request in list(self.pending)]
