"""What a server sends: text messages and the frames that carry them.

An :class:`Outgoing` is one text message on its way to one socket or many. It
holds the text, and builds each form a writer needs at most once, when the
first socket that needs it is written: the UTF-8 payload, its frame, and its
compressed frame per window size (permessage-deflate). So a broadcast is
encoded once, framed once and compressed once for all its sockets, a message for ASGI
connections only is never framed, and no path parses a frame back into text.

Server frames are never masked; a client-side session frames through wsproto,
which masks (``_session.py``).
"""

from __future__ import annotations

import struct
import zlib
from typing import final

__all__ = ["Outgoing", "deflated_frame", "frame", "text_frame", "utf8_len"]

_FIN_TEXT = 0x81
_FIN_TEXT_DEFLATED = 0xC1
#: Compression level and zlib memory level: memLevel 5 makes a compressor in a
#: fifth of the time of the default 8, for messages of a few kilobytes at most.
_LEVEL = 6
_MEM_LEVEL = 5


def frame(first: int, payload: bytes) -> bytes:
    """One unmasked frame: ``first`` is its first byte (FIN, RSV and opcode)."""
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (UTF-8)."""
    return frame(_FIN_TEXT, payload)


def deflated_frame(payload: bytes, bits: int) -> bytes:
    """One final text frame carrying ``payload`` compressed on its own (RSV1 set)."""
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -bits, _MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return frame(_FIN_TEXT_DEFLATED, data[:-4])


def utf8_len(text: str) -> int:
    # str.isascii() is O(1) in CPython: most messages are measured for free.
    return len(text) if text.isascii() else len(text.encode("utf-8"))


@final
class Outgoing:
    """One text message for one socket or many; its encodings are built on first use."""

    __slots__ = ("_deflated", "_frame", "_payload", "_size", "compress", "text")

    def __init__(self, text: str, *, compress: bool = False) -> None:
        self.text = text
        #: Worth compressing for a peer that agreed to permessage-deflate: a delivery,
        #: compressed once for all its sockets; not a reply to one socket, whose
        #: compressor would be made for one small message.
        self.compress = compress
        self._payload: bytes | None = None
        self._frame: bytes | None = None
        self._size = -1
        #: Window bits -> the frame for a socket that agreed to permessage-deflate.
        self._deflated: dict[int, bytes] | None = None

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"Outgoing({text!r})"

    @property
    def payload(self) -> bytes:
        """The text in UTF-8."""
        payload = self._payload
        if payload is None:
            payload = self._payload = self.text.encode("utf-8")
        return payload

    @property
    def size(self) -> int:
        """The payload's length in bytes (what a send queue counts for the text)."""
        if self._size < 0:
            self._size = len(self._payload) if self._payload is not None else utf8_len(self.text)
        return self._size

    @property
    def frame_size(self) -> int:
        """The length of its frame, header included, built or not (what the metrics count)."""
        size = self.size
        return size + (2 if size < 126 else 4 if size < 65536 else 10)

    @property
    def frame(self) -> bytes:
        """The text frame."""
        built = self._frame
        if built is None:
            built = self._frame = text_frame(self.payload)
        return built

    def deflated(self, bits: int) -> bytes:
        """The frame for a socket that agreed to permessage-deflate with a window of
        ``bits``: the compressed frame, or the plain one where compressing does not
        make it smaller. Compressed once per window size (usually one)."""
        frames = self._deflated
        if frames is None:
            frames = self._deflated = {}
        built = frames.get(bits)
        if built is None:
            plain = self.frame
            compressed = deflated_frame(self.payload, bits)
            built = frames[bits] = compressed if len(compressed) < len(plain) else plain
        return built
