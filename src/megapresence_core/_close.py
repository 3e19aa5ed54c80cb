"""Close codes and the close-reason rule shared by every machine."""

from __future__ import annotations

import enum

__all__ = ["MAX_CLOSE_REASON_BYTES", "CloseCode", "truncate_reason"]

#: RFC 6455 5.5: a control frame carries at most 125 payload bytes, two of
#: which hold the close code.
MAX_CLOSE_REASON_BYTES = 123


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
