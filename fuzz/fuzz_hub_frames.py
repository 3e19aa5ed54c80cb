"""Fuzz the hub frame decoder.

Invariant: for any bytes, ``decode_hub_frame`` either raises ``PeerError`` or
returns a frame that encodes and decodes back to itself; nothing else escapes.
"""

from __future__ import annotations

import sys

from megapresence_core import (
    PeerError,
)
from megapresence_core.wire import (
    decode_hub_frame,
    encode,
)

MAX_BYTES = 64 * 1024


def test_one_input(data: bytes) -> None:
    try:
        frame = decode_hub_frame(data, max_bytes=MAX_BYTES)
    except PeerError:
        return
    again = decode_hub_frame(encode(frame), max_bytes=MAX_BYTES * 4)
    if again != frame:
        raise AssertionError(f"round trip changed {frame!r} into {again!r}")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
