"""Errors and close codes: one base, two families, each error with the hints a shim needs.

Theory of operation. Everything the core raises is a :class:`PresenceError`,
split like h11's errors into who is at fault:

- :class:`LocalUsageError` (also a ``ValueError``): the embedding program or
  the shim misused the API. It is raised at once, before any state changes,
  with a message that says what to fix. Misuse never leaves a machine half
  changed, so catching it and carrying on is safe.
- :class:`PeerError`: a peer (a bridge, the hub, another instance, a
  browser) sent bytes we cannot accept. The machines never let it escape
  ``handle``: they turn it into a warning and, when the peer is broken, a
  close with the error's close code. Only the decoders raise it, to callers
  that asked to decode something.

Every error carries two hints for the shim that has to answer someone:
``close_code`` (the WebSocket close code to use if that socket must end) and
``http_status`` (the status to answer with if the upgrade has not happened
yet). A shim's fault boundary maps any ``PresenceError`` to one of them
without knowing which rule was broken.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "CloseCode",
    "LocalUsageError",
    "PeerError",
    "PresenceError",
    "truncate_reason",
]

#: RFC 6455 5.5: a control frame carries at most 125 payload bytes, two of
#: which hold the close code.
MAX_CLOSE_REASON_BYTES: Final = 123


class CloseCode(enum.IntEnum):
    """Every close code megapresence sends, with its meaning for the peer."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  #: a binary message where only text is spoken
    INVALID_DATA = 1007
    POLICY = 1008  #: kicked, refused or broke a rule: do not reconnect as is
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  #: slow consumer: send buffer over its limit
    REQUEUE = 4503  #: reconnect now; the session is kept (drain, rebalancing)

    def __repr__(self) -> str:
        return f"CloseCode.{self.name}"


def truncate_reason(reason: str, limit: int = MAX_CLOSE_REASON_BYTES) -> str:
    """Cut ``reason`` to ``limit`` bytes of UTF-8 without splitting a character.

    Lone surrogates (possible in decoded JSON) cannot travel in UTF-8 and are
    replaced, so the result always encodes.
    """
    raw = reason.encode("utf-8", "replace")
    if len(raw) <= limit:
        return raw.decode("utf-8")
    # A cut inside a multi-byte sequence leaves an incomplete tail; "ignore"
    # drops exactly that tail and nothing else, since the rest is valid UTF-8.
    return raw[:limit].decode("utf-8", "ignore")


class PresenceError(Exception):
    """Base of every error the core raises.

    ``code`` is a short stable string (sent in ERROR frames and error
    replies), ``close_code`` the WebSocket close code and ``http_status`` the
    HTTP status a shim uses when this error ends a socket or an upgrade.
    """

    def __init__(self, message: str, *, code: str, close_code: int, http_status: int) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = close_code
        self.http_status = http_status


class LocalUsageError(PresenceError, ValueError):
    """The embedding program called the API wrongly; nothing was changed.

    By default the fault is the server's own (close 1011, HTTP 500). A
    refusal of what a client asked for, such as an identity over a limit, says
    so with its hints (1008 or 1009, HTTP 400 or 413).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "misuse",
        close_code: int = CloseCode.INTERNAL_ERROR,
        http_status: int = 500,
    ) -> None:
        super().__init__(message, code=code, close_code=close_code, http_status=http_status)


def over_limit(message: str, *, close_code: int = CloseCode.POLICY) -> LocalUsageError:
    """A request over a configured limit: the client's doing, refused before anything changes."""
    status = 413 if close_code == CloseCode.MESSAGE_TOO_BIG else 400
    return LocalUsageError(message, code="over_limit", close_code=close_code, http_status=status)


class PeerError(PresenceError):
    """A frame, message or command from the network is malformed or over a limit.

    ``field`` names the offending wire field when there is one; ``channel`` the channel
    the object named, when it was read before the fault (a client's error names it).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "bad_frame",
        field: str | None = None,
        channel: str | None = None,
        close_code: int = CloseCode.POLICY,
        http_status: int = 400,
    ) -> None:
        super().__init__(message, code=code, close_code=close_code, http_status=http_status)
        self.field = field
        self.channel = channel
