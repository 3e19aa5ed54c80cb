"""Fuzz the cluster message decoder.

Invariant: for any bytes, ``decode_cluster_message`` either raises ``PeerError``
or returns a message that encodes and decodes back to the same kind, sender,
epoch and fields; nothing else escapes.
"""

from __future__ import annotations

import sys

from megapresence_core import (
    PeerError,
)
from megapresence_core.wire import decode_cluster_message, encode

MAX_BYTES = 64 * 1024


def test_one_input(data: bytes) -> None:
    try:
        message = decode_cluster_message(data, max_bytes=MAX_BYTES)
    except PeerError:
        return
    text = encode(message)
    again = decode_cluster_message(text, max_bytes=MAX_BYTES * 4)
    if again != message:
        raise AssertionError(f"round trip changed {message!r} into {again!r}")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
