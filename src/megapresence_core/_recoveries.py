"""Subscribes waiting for the hub's RECOVERED (a hub that numbers channel streams).

Theory of operation. When the hub link is ``streaming``, the hub holds every
channel's stream, so a ``subscribe`` is answered with the hub's position (and,
after ``since``, the missed publications): the bridge sends RECOVER after the
SUBSCRIBE that makes the hub route the channel here, and answers the client when
RECOVERED comes back, in order after every STREAM of the channel up to that
position. Meanwhile the subscription is present-only (mode ``none``), so its
snapshot follows ``subscribed``, as on a single server. If the link goes down
first, the waiting subscribes are answered from this process's own streams
(not recovered: reason ``epoch``, the hub's stream is out of reach).
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

    __slots__ = ("channel", "conn", "mode", "since")

    def __init__(
        self, conn: Hashable, channel: str, mode: PresenceMode, since: StreamPosition | None
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.mode = mode
        self.since = since


@final
class Recoveries:
    __slots__ = ("_last", "pending")

    def __init__(self) -> None:
        self._last = 0
        self.pending: dict[int, PendingRecovery] = {}

    def ask(
        self,
        conn: Hashable,
        channel: str,
        mode: PresenceMode,
        since: StreamPosition | None,
        session_id: str,
    ) -> RecoverFrame:
        self._last += 1
        self.pending[self._last] = PendingRecovery(conn, channel, mode, since)
        return RecoverFrame(request=self._last, session_id=session_id, channel=channel, since=since)

    def answered(self, request: int) -> PendingRecovery | None:
        return self.pending.pop(request, None)

    def abandon(self) -> list[PendingRecovery]:
        """Every waiting subscribe, oldest first (the link went down: no answer will come)."""
        waiting = list(self.pending.values())
        self.pending.clear()
        return waiting
