"""Fuzz the HTTP request reader of the servers (client sockets and the hub alike).

Invariant: for any bytes, in any chunking, ``RequestReader.feed`` returns None
(more, please), one of the statuses it documents (400, 431, 501, 505), or a request
whose path is a path; once the stream ends it has answered; and
``upgrade_refusal`` of that request is None or (400 or 426, a reason). Nothing
else escapes: this is everything a peer can make the reader do before its
request is whole.

The first input byte sets the chunk size, so the fuzzer explores where reads
split the request as well as what it says.
"""

from __future__ import annotations

import sys

from megapresence_anyio._http import _PATH, HandshakeRequest, RequestReader, upgrade_refusal

MAX_HEADER_BYTES = 1024  # small, so the fuzzer reaches the 431 paths too
STATUSES = frozenset({400, 431, 501, 505})


def test_one_input(data: bytes) -> None:
    if not data:
        return
    chunk, stream = data[0] % 64 + 1, data[1:]
    reader = RequestReader(MAX_HEADER_BYTES, ("127.0.0.1", 1))
    outcome: HandshakeRequest | int | None = None
    for start in range(0, len(stream), chunk):
        outcome = reader.feed(stream[start : start + chunk])
        if outcome is not None:
            break
    else:
        outcome = reader.feed(b"")  # the peer is done: an answer is due
        if outcome is None:
            raise AssertionError("no answer once the stream ended")
    if isinstance(outcome, int):
        if outcome not in STATUSES or not reader.error:
            raise AssertionError(f"status {outcome} ({reader.error!r}) is not documented")
        return
    if not _PATH.fullmatch(outcome.path):
        raise AssertionError(f"{outcome.path!r} is not a path")
    refusal = upgrade_refusal(outcome)
    if refusal is not None and (refusal[0] not in (400, 426) or not refusal[1]):
        raise AssertionError(f"unexpected refusal {refusal!r}")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
