"""The two error families.

``LocalUsageError`` means the embedding program misused the API: it is raised
at once, before any state changes, with a message that says what to fix.
``FrameError`` means a peer sent something we cannot accept: the machines never
let it escape ``handle``; they turn it into a warning and, when the peer is
broken, a close with ``close_code``.
"""

from __future__ import annotations

from typing import final

__all__ = ["FrameError", "LocalUsageError"]


@final
class LocalUsageError(ValueError):
    """The embedding program called the API wrongly; nothing was changed."""


@final
class FrameError(ValueError):
    """A frame or message from the network is malformed or over a limit.

    ``code`` is the short string sent back in an ERROR frame, ``field`` names
    the offending wire field when there is one, and ``close_code`` is the
    WebSocket close code to use if the peer has to be dropped.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "bad_frame",
        field: str | None = None,
        close_code: int = 1008,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.close_code = close_code
