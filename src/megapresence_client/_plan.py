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
    up to ``cap``; the back-off plan starts at ``first_back_off``; the "now" plan
    waits at most ``now_jitter``. A successful open resets the attempt count.
    """

    first: float = 1.0
    first_back_off: float = 4.0
    cap: float = 30.0
    now_jitter: float = 0.25
    random: Callable[[], float] = field(default=_random.random)
    attempt: int = 0

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
        base = self.first_back_off if plan == "back-off" else self.first
        ceiling = min(self.cap, base * 2 ** (self.attempt - 1))
        return float(ceiling / 2 + ceiling / 2 * self.random())

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Position:
    """Where a client is in one channel's stream: the last offset it delivered, and the epoch."""

    offset: int
    epoch: str

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "epoch": self.epoch}


@dataclass
class Stream:
    """Delivers one channel's messages exactly once, in offset order (issue 20's merge).

    While a ``subscribe`` is in flight (:meth:`expect`), every channel message is held;
    ``subscribed`` (:meth:`answered`) says where the stream is; held and later messages
    are then delivered in offset order from the client's position, de-duplicated.
    A message whose offset leaves a hole is held too and :meth:`gap` says so: the
    client then re-subscribes with ``since`` to get the missing ones (or hears
    ``recovered: false``). Messages without an offset (a server without recovery)
    pass straight through.
    """

    position: Position | None = None
    waiting: bool = False
    since: bool = False
    #: False after a reconnect until a ``subscribed`` answered (the position is then stale).
    live: bool = False
    #: The stream's end when ``subscribed`` answered: recovered messages up to it follow.
    end: int = 0
    held: dict[int, dict[str, Any]] = field(default_factory=dict)

    def expect(self, since: bool) -> None:
        """A ``subscribe`` was sent (with ``since`` or not): hold messages until its answer."""
        self.waiting, self.since = True, since

    def disconnected(self) -> None:
        """The connection is gone: the position is only good for a ``since`` now."""
        self.live, self.waiting = False, False
        self.held = {}

    def answered(self, offset: Any, epoch: Any, recovered: Any) -> list[dict[str, Any]]:
        """``subscribed`` arrived with the stream's ``offset`` and ``epoch``; ``recovered``
        is its ``recovered`` field. Returns what can be delivered now, in order."""
        self.waiting = False
        if not isinstance(offset, int) or not isinstance(epoch, str):
            # A server without recovery: deliver what was held, in arrival order.
            held, self.held, self.position = list(self.held.values()), {}, None
            return held
        keep = recovered is True if self.since else self.live
        if not keep or self.position is None or self.position.epoch != epoch:
            # Start from the stream's end: what was before it is not coming.
            self.position = Position(offset, epoch)
        self.live, self.end = True, offset
        return self._release()

    def receive(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """A channel message arrived; returns the messages deliverable now, in order."""
        offset, epoch = message.get("offset"), message.get("epoch")
        if not isinstance(offset, int):
            return [message]
        if self.waiting or self.position is None or not self.live:
            self.held[offset] = message
            return []
        if isinstance(epoch, str) and epoch != self.position.epoch:
            # The stream's history was lost: a new stream starts at this message.
            self.position = Position(offset - 1, epoch)
            self.held = {}
        self.held[offset] = message
        return self._release()

    def gap(self) -> bool:
        """Whether messages are held behind a hole (re-subscribe with ``since``)."""
        return (
            self.live
            and not self.waiting
            and bool(self.held)
            and self.position is not None
            and self.position.offset >= self.end
        )

    def _release(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        assert self.position is not None
        for stale in [k for k in self.held if k <= self.position.offset]:
            del self.held[stale]
        while (following := self.held.pop(self.position.offset + 1, None)) is not None:
            out.append(following)
            self.position.offset += 1
        return out
