"""Several hub frames in one WebSocket message, on a link whose ends both batch.

The core marks each frame it sends on such a link ``batch``; :class:`FrameBatch`
holds those frames until the end of the current turn of the event loop (a flush
task, started with the first frame, runs once every task that is ready now has
run), then writes them as one message, joined by line feeds, in order. Light
traffic waits for no timer: a lone frame leaves in the next turn. A batch never
grows past the link's message limit (the hub frame limit): the frame that would
pass it first sends what is held. A frame that may not share a message (REGISTER,
REGISTERED) and a close first flush what is held, so order is kept on the link.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

from ._outgoing import utf8_len
from ._transport import Spawn

__all__ = ["FrameBatch"]


@final
class FrameBatch:
    """The frames bound for one link in this turn, sent as one message by ``send``."""

    __slots__ = ("_due", "_max_bytes", "_parts", "_send", "_size", "_spawn")

    def __init__(self, send: Callable[[str], None], max_bytes: int, spawn: Spawn) -> None:
        self._send = send
        self._max_bytes = max_bytes
        self._spawn = spawn
        self._parts: list[str] = []
        #: The held frames' bytes, each with its separator.
        self._size = 0
        #: A flush task has been started and has not run yet.
        self._due = False

    def add(self, text: str) -> None:
        size = utf8_len(text)
        if self._parts and self._size + size > self._max_bytes:
            self.flush()
        self._parts.append(text)
        self._size += size + 1
        if not self._due:
            self._due = True
            self._spawn(self._flush_due)

    async def _flush_due(self) -> None:
        self._due = False
        self.flush()

    def flush(self) -> None:
        """Send what is held now, as one message."""
        parts = self._parts
        if parts:
            self._parts = []
            self._size = 0
            self._send(parts[0] if len(parts) == 1 else "\n".join(parts))
