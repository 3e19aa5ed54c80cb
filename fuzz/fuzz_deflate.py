"""Fuzz permessage-deflate: the negotiation of a client's offers, and the bounded
inflate of what a client sends.

Invariant: for any ``Sec-WebSocket-Extensions`` value, ``negotiate`` declines
(None) or agrees on a window of 9 to 15 bits, and its own answer would be
agreed to again; never an exception. For any bytes sent as frames to a server
connection with the bounded inflate (limit 1,024 bytes), wsproto yields
events and nothing escapes but its close events, and no message's text grows
past the limit or the input's length (a compressed message that would is a
close with 1009).

The input is ``offer \\n frames``; the first byte of the frames sets the chunk
size. Frames are unmasked here for the fuzzer's sake and masked before feeding.
"""

from __future__ import annotations

import os
import sys
import zlib

from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from megapresence_anyio._deflate import BoundedInflate, negotiate

LIMIT = 1024


def _mask(frames: bytes) -> bytes:
    """Set the mask bit of each frame header (zero key), so wsproto reads them as a client's."""
    out = bytearray()
    at = 0
    while at + 2 <= len(frames):
        first, second = frames[at], frames[at + 1]
        size = second & 0x7F
        head = 2 + (2 if size == 126 else 8 if size == 127 else 0)
        if at + head > len(frames):
            break
        length = size if size < 126 else int.from_bytes(frames[at + 2 : at + head], "big")
        out += bytes((first, second | 0x80)) + frames[at + 2 : at + head] + b"\x00\x00\x00\x00"
        out += frames[at + head : at + head + length]
        at += head + length
    return bytes(out + frames[at:])


def test_one_input(data: bytes) -> None:
    offer, _, frames = data.partition(b"\n")
    agreed = negotiate([offer.decode("latin-1")])
    if agreed is not None:
        assert 9 <= agreed.server_bits <= 15, agreed
        assert negotiate([agreed.response]) == agreed
    if not frames:
        return
    chunk = frames[0] % 64 + 1
    stream = _mask(frames[1:])
    ws = Connection(ConnectionType.SERVER, extensions=[BoundedInflate(LIMIT)])
    size = 0
    for start in range(0, len(stream), chunk):
        ws.receive_data(stream[start : start + chunk])
        for event in ws.events():
            if isinstance(event, TextMessage):
                size += len(event.data.encode("utf-8"))
                # Plain text is no longer than the input; inflated text no longer than the limit.
                assert size <= max(LIMIT, len(stream)), size
                if event.message_finished:
                    size = 0
            elif isinstance(event, CloseConnection):
                return


def seeds() -> dict[str, bytes]:
    """The corpus: a plain and a compressed message, fragments, a bomb, bad offers."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    hello = (compressor.compress(b"hello " * 50) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = (compressor.compress(b"\x00" * 100_000) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    return {
        "compressed": b"permessage-deflate\n\x07" + bytes((0xC1, len(hello))) + hello,
        "fragments": b"permessage-deflate; server_max_window_bits=10\n\x03"
        + bytes((0x41, 10))
        + hello[:10]
        + bytes((0x89, 0))
        + bytes((0x80, len(hello) - 10))
        + hello[10:],
        "bomb": b"permessage-deflate; client_max_window_bits\n\x3f"
        + bytes((0xC1, 126))
        + len(bomb).to_bytes(2, "big")
        + bomb,
        "plain": b"x-webkit-deflate-frame, permessage-deflate; mystery\n\x01\x81\x02hi",
        "bad-offer": b'permessage-deflate; server_max_window_bits="08"; server_max_window_bits\n',
    }


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-seeds"]:
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "deflate")
        for name, data in seeds().items():
            with open(os.path.join(here, name), "wb") as seed:
                seed.write(data)
    else:
        from _driver import fuzz

        fuzz(test_one_input, sys.argv)
