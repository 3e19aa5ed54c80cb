"""Fuzz the hub link's reader of the hub's answer to its upgrade.

Invariant: for any bytes, in any chunking, ``UpgradeReader.feed`` returns None
(more, please), an HTTP status (the hub refused), or an open connection, or
raises ``HandshakeError``; once the stream ends it has answered or raised; and
an open connection takes the bytes that followed the 101 without raising.
Nothing else escapes: a hub address that answers garbage costs a retry, never
the process.

The first input byte sets the chunk size. ``{accept}`` in the input becomes
the accept token for this attempt's random key, so the fuzzer can reach a
valid 101 and what follows it.
"""

from __future__ import annotations

import sys

from wsproto.connection import Connection
from wsproto.utilities import generate_accept_token

from megapresence_anyio._hub_client import HandshakeError, UpgradeReader


def test_one_input(data: bytes) -> None:
    if not data:
        return
    reader = UpgradeReader("127.0.0.1", 9000, "/", "token")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in reader.request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    chunk = data[0] % 64 + 1
    stream = data[1:].replace(b"{accept}", generate_accept_token(key))
    try:
        for start in range(0, len(stream), chunk):
            outcome = reader.feed(stream[start : start + chunk])
            if outcome is not None:
                break
        else:
            outcome = reader.feed(b"")
            raise AssertionError(f"{outcome!r} at the end of the stream, not HandshakeError")
    except HandshakeError:
        return
    if isinstance(outcome, Connection):
        list(outcome.events())  # the frames that came with the 101
    elif not isinstance(outcome, int):
        raise AssertionError(f"unexpected outcome {outcome!r}")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
