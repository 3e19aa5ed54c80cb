"""permessage-deflate (RFC 7692), bounded and shared.

Offered only when ``SocketLimits.permessage_deflate`` is on. A server that
accepts it always answers ``server_no_context_takeover`` and
``client_no_context_takeover``: every message is compressed on its own, in
both directions. So:

- a broadcast is compressed **once** per message (and per window size a
  client asked for, usually one), and that one frame is written to every
  connection that negotiated the extension (``Outgoing.deflated``, ``_outgoing.py``);
- an idle connection holds no compressor and no inflater: a message's
  inflater lives while that message arrives, and is dropped at its end;
- inflating is bounded by ``max_message_bytes``: zlib is asked for at most one
  byte past what the message may still hold, so a decompression bomb (a few
  kilobytes that inflate to gigabytes) is refused with 1009 after at most
  ``max_message_bytes`` of output, before memory grows (wsproto's own
  extension inflates without a bound, and is not used).

Negotiation (:func:`negotiate`) takes the first acceptable offer of the
client's ``Sec-WebSocket-Extensions`` and declines the others, as RFC 7692
section 5 says: an offer with an unknown or repeated parameter, or a value
that is missing, extra or out of range, is declined (the connection is then
uncompressed; the handshake does not fail). ``server_max_window_bits=8`` is
declined too: zlib cannot write a raw deflate stream with a 256-byte window
(it uses 512), and the client could not read it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final, final

import attrs
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["BoundedInflate", "Deflate", "negotiate"]

NAME: Final = "permessage-deflate"
#: What a message compressed with a sync flush ends with; RFC 7692 7.2.1 drops it.
_TAIL: Final = b"\x00\x00\xff\xff"
_NO_VALUE: Final = frozenset({"server_no_context_takeover", "client_no_context_takeover"})
_BITS: Final = frozenset({"server_max_window_bits", "client_max_window_bits"})


@final
@attrs.frozen
class Deflate:
    """permessage-deflate as agreed with one client."""

    #: The window of what this server compresses for it: its
    #: ``server_max_window_bits``, 15 when it named none.
    server_bits: int = 15
    #: Whether the client named ``server_max_window_bits`` (the answer then names it too).
    bits_offered: bool = False

    @property
    def response(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value of the 101."""
        answer = f"{NAME}; server_no_context_takeover; client_no_context_takeover"
        if self.bits_offered:
            answer += f"; server_max_window_bits={self.server_bits}"
        return answer


def _offer(text: str) -> Deflate | None:
    """One offer (``permessage-deflate; param; param=value``): agreed, or None to decline."""
    name, *parameters = (part.strip() for part in text.split(";"))
    if name.lower() != NAME:
        return None
    seen: set[str] = set()
    server_bits: int | None = None
    for parameter in parameters:
        key, equals, raw = (p.strip() for p in parameter.partition("="))
        key = key.lower()
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        if key in seen or key not in _NO_VALUE | _BITS:
            return None  # unknown or repeated
        seen.add(key)
        if key in _NO_VALUE:
            if equals:
                return None
            continue
        if not equals:
            if key == "server_max_window_bits":
                return None  # the server's bits must have a value
            continue  # client_max_window_bits alone: the client can honour a limit
        # Bounded before int(): Python refuses to convert over 4,300 digits, and a
        # 5,000-digit value is a declined offer, not a 500.
        if not (value.isascii() and value.isdigit() and len(value) <= 2 and 8 <= int(value) <= 15):
            return None
        if key == "server_max_window_bits":
            server_bits = int(value)
    if server_bits == 8:
        return None
    return Deflate(server_bits or 15, server_bits is not None)


def negotiate(header_values: Iterable[str]) -> Deflate | None:
    """The first acceptable permessage-deflate offer among the values of every
    ``Sec-WebSocket-Extensions`` header, or None (no compression)."""
    for value in header_values:
        for text in value.split(","):
            agreed = _offer(text)
            if agreed is not None:
                return agreed
    return None


@final
class BoundedInflate(Extension):
    """The inbound half of permessage-deflate for wsproto, inflating at most
    ``limit`` bytes per message (1009 past it). Outbound frames pass unchanged:
    the server frames its compressed messages itself (``Outgoing.deflated``)."""

    name = NAME

    def __init__(self, limit: int) -> None:
        self._limit = limit
        #: The inflater of the compressed message arriving; None between messages.
        self._inflater: zlib._Decompress | None = None
        #: Bytes that message has inflated to so far.
        self._size = 0
        #: The frame being read is part of a compressed message.
        self._frame_compressed = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:  # the client side's; this is a server's extension
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol() or opcode is Opcode.CONTINUATION:
            if rsv.rsv1:  # RFC 7692 6.1: only a message's first frame says it is compressed
                return CloseReason.PROTOCOL_ERROR
            if opcode.iscontrol():
                self._frame_compressed = False  # a control frame between fragments
            else:
                self._frame_compressed = self._inflater is not None
        else:
            self._frame_compressed = rsv.rsv1
            if rsv.rsv1:
                self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
                self._size = 0
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        return self._inflate(data) if self._frame_compressed else data

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not (fin and self._frame_compressed):
            return None
        rest = self._inflate(_TAIL)
        self._inflater = None  # no context takeover: the next message starts afresh
        return rest

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        inflater = self._inflater
        assert inflater is not None
        try:
            # At most one byte past what the message may still hold: enough to know.
            out = inflater.decompress(data, self._limit - self._size + 1)
        except zlib.error:
            self._inflater = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._size += len(out)
        if self._size > self._limit:
            self._inflater = None
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        return rsv, data
