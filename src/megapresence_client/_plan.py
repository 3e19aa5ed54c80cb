"""What the client decides without I/O: when to reconnect, and which channel messages to deliver.

Both are plain objects driven by the connection loop, so the tests drive them
with a fake clock and a fixed random source.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

#: What a close (or a refused upgrade) means for the next attempt.
Plan = Literal["stop", "now", "back-off", "prompt"]

#: Close codes after which the client does not reconnect (docs/protocol.md, "Close codes"):
#: a normal close, the client broke the protocol, or a policy close (kicked, refused).
STOP_CLOSE_CODES: Final = frozenset({1000, 1002, 1003, 1007, 1008})
#: Reconnect later: the client read too slowly.
BACK_OFF_CLOSE_CODES: Final = frozenset({1013})
#: Reconnect at once (a little jitter): the server drains and keeps the session.
NOW_CLOSE_CODES: Final = frozenset({4503})

#: Refused upgrades (an HTTP status, docs/protocol.md "Connecting") worth retrying.
RETRY_STATUSES: Final = frozenset({408, 503})
BACK_OFF_STATUSES: Final = frozenset({429})


def plan_for_close(code: int | None) -> Plan:
    """What to do after the server closed with ``code`` (None: the connection dropped)."""
    if code in STOP_CLOSE_CODES:
        return "stop"
    if code in NOW_CLOSE_CODES:
        return "now"
    if code in BACK_OFF_CLOSE_CODES:
        return "back-off"
    return "prompt"


def plan_for_status(status: int) -> Plan:
    """What to do after the server refused the upgrade with HTTP ``status``."""
    if status in RETRY_STATUSES:
        return "prompt"
    if status in BACK_OFF_STATUSES:
        return "back-off"
    return "stop"


@dataclass
class Backoff:
    """Jittered exponential backoff ("equal jitter": a uniform draw in ``[d/2, d)``).

    ``first`` is the prompt plan's first delay (seconds), doubled per failed attempt
    up to ``cap``; the back-off plan starts at ``first_back_off``, and the attempts
    after it keep backing off (2-4 s, 4-8 s, ...: docs/protocol.md's close codes); the
    "now" plan waits at most ``now_jitter``. A successful open resets both.
    """

    first: float = 1.0
    first_back_off: float = 4.0
    cap: float = 30.0
    now_jitter: float = 0.25
    random: Callable[[], float] = field(default=_random.random)
    attempt: int = 0
    backing_off: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or not 0 < self.first_back_off <= self.cap:
            raise ValueError("Backoff needs 0 < first, first_back_off <= cap")
        if self.now_jitter < 0:
            raise ValueError("Backoff.now_jitter must be >= 0")

    def delay(self, plan: Plan) -> float:
        """The wait before the next attempt under ``plan`` (not "stop"); counts the attempt."""
        if plan == "stop":
            raise ValueError("no delay for a plan that stops")
        self.attempt += 1
        if plan == "now" and self.attempt == 1:
            return float(self.now_jitter * self.random())
        self.backing_off = self.backing_off or plan == "back-off"
        base = self.first_back_off if self.backing_off else self.first
        # The doubling stops at the cap: past 64 doublings any base is over any cap (and a
        # client that has tried for long enough would overflow a float).
        ceiling = min(self.cap, base * 2 ** min(self.attempt - 1, 64))
        return float(ceiling / 2 + ceiling / 2 * self.random())

    def reset(self) -> None:
        self.attempt, self.backing_off = 0, False


@dataclass
class Position:
    """Where a client is in one channel's stream: the last offset it delivered, and the epoch."""

    offset: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass
class Stream:
    """Delivers one channel's messages once each, in order, across recoveries (issue 20).

    The client's position is the last channel message's ``(offset, epoch)``, or the
    stream position ``subscribed`` or ``stream.reset`` gave. Offsets tell order, not
    loss (a publication made with ``excludeSelf`` leaves its sender a gap of one): a
    message at or before the position is a duplicate and dropped, any later one is
    delivered. While a ``subscribe`` is in flight (:meth:`expect`) messages are held
    (a session restored within the grace hears its channels before the answer); with
    ``recovered: true`` the held ones are dropped, since the missed messages that
    follow include them; otherwise they are delivered as they are. Messages without
    an offset (a server without recovery) pass straight through.
    """

    position: Position | None = None
    waiting: bool = False
    since: bool = False
    held: list[dict[str, Any]] = field(default_factory=list)

    def expect(self, since: bool) -> None:
        """A ``subscribe`` was sent (with ``since`` or not): hold messages until its answer."""
        self.waiting, self.since = True, since

    def disconnected(self) -> None:
        """The connection is gone: what was held will come again (or be recovered)."""
        self.waiting, self.held = False, []

    def answered(self, offset: Any, epoch: Any, recovered: Any) -> list[dict[str, Any]]:
        """``subscribed`` arrived with the stream's ``offset`` and ``epoch``; ``recovered``
        is its ``recovered`` field. Returns the held messages to deliver now."""
        self.waiting = False
        held, self.held = self.held, []
        if not isinstance(offset, int) or not isinstance(epoch, str):
            self.position = None  # a server without recovery
            return held
        if self.since and recovered is True:
            return []  # the missed ones follow, the held ones among them
        self.position = Position(offset, epoch)
        out = []
        for message in held:
            out += self.receive(message, force=True)
        return out

    def reset(self, offset: Any, epoch: Any) -> None:
        """``stream.reset``: the server started the stream again at this position."""
        if isinstance(offset, int) and isinstance(epoch, str):
            self.position = Position(offset, epoch)

    def missed(self, offset: Any, epoch: Any) -> bool:
        """``stream.missed``: whether to subscribe again with ``since`` (not when a
        ``subscribe`` is in flight, or the position reached the stream's meanwhile)."""
        position = self.position
        caught_up = (
            position is not None
            and position.epoch == epoch
            and isinstance(offset, int)
            and position.offset >= offset
        )
        return not (self.waiting or caught_up)

    def receive(self, message: dict[str, Any], force: bool = False) -> list[dict[str, Any]]:
        """A channel message arrived; returns it when it is to be delivered now.
        (``force``: a held message delivered as it is, even at or before the position.)"""
        offset, epoch = message.get("offset"), message.get("epoch")
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return [message]
        if self.waiting:
            self.held.append(message)
            return []
        position = self.position
        if position is not None and position.epoch == epoch:
            if offset <= position.offset and not force:
                return []  # a duplicate
            position.offset = max(position.offset, offset)
        else:
            self.position = Position(offset, epoch)
        return [message]
