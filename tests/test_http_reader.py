"""The request reader's one-pass path for a whole plain head agrees with h11's.

``RequestReader`` parses a head that arrives whole in its first chunk itself and
leaves every other head to h11. Fed the same bytes with the first one apart,
every head goes to h11: both ways must give the same request, or the same status.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megapresence_anyio._http import HandshakeRequest, RequestReader

BIG = 1 << 20

UPGRADE = (
    b"GET /ws/room?token=abc HTTP/1.1\r\nHost: example.org:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: https://example.org\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nX-Empty:\r\nX-Spaced:  a \t b  \r\n\r\n"
)


def whole(data: bytes, limit: int = BIG) -> tuple[HandshakeRequest | int | None, RequestReader]:
    reader = RequestReader(limit, ("127.0.0.1", 1))
    outcome = reader.feed(data)
    if outcome is None:
        outcome = reader.feed(b"")
    return outcome, reader


def by_h11(data: bytes, limit: int = BIG) -> tuple[HandshakeRequest | int | None, RequestReader]:
    """One byte, then the rest: the first chunk holds no whole head, so h11 reads it."""
    reader = RequestReader(limit, ("127.0.0.1", 1))
    for chunk in (data[:1], data[1:], b""):
        outcome = reader.feed(chunk)
        if outcome is not None:
            return outcome, reader
    return None, reader


def agree(data: bytes, limit: int = BIG) -> HandshakeRequest | int | None:
    fast, fast_reader = whole(data, limit)
    slow, slow_reader = by_h11(data, limit)
    assert fast == slow
    if isinstance(fast, HandshakeRequest):
        assert fast_reader.trailing == slow_reader.trailing
    return fast


def test_a_browser_upgrade_takes_the_fast_path_and_matches_h11() -> None:
    reader = RequestReader(BIG, ("127.0.0.1", 1))
    request = reader.feed(UPGRADE + b"\x81\x80frame")
    assert isinstance(request, HandshakeRequest)
    assert reader._parser is None  # h11 was never made
    assert reader.trailing == b"\x81\x80frame"
    assert request.path == "/ws/room"
    assert request.query_string == "token=abc"
    assert request.header("x-spaced") == "a \t b"
    assert request.header("x-empty") == ""
    assert agree(UPGRADE + b"\x81\x80frame") == request


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host: h11's 400
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
        b"GET / HTTP/1.0\r\n\r\n",  # another version
        b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\nHost: a\n\n",  # bare LFs
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",  # a bare LF inside
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",  # a stray CR
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",  # no path
        b"GET //[x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # a leading empty line
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: x\r\norigin: y\r\n\r\n",  # a single header twice
        b"GET http://example.org/ws?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"POST /ws HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_every_unusual_head_is_answered_as_h11_answers_it(head: bytes) -> None:
    agree(head)


def test_a_whole_head_over_the_limit_is_431_both_ways() -> None:
    assert whole(UPGRADE, limit=100)[0] == 431
    assert whole(UPGRADE, limit=len(UPGRADE))[0] != 431
    assert whole(UPGRADE, limit=len(UPGRADE) - 1)[0] == 431


_TOKEN = st.text("abcXYZ-_!#~09", min_size=1, max_size=6)
_VALUE = st.text("ab \t:/,;=\x80\xff\x7f\x01\x00\r\n\x0b\x0c\x1f\x85\xa0", max_size=8)
_NAME = st.one_of(_TOKEN, st.sampled_from(["host", "Host", "origin", "content-length", "a b"]))


@given(
    method=st.sampled_from(["GET", "POST", "G@T", ""]),
    target=st.sampled_from(["/", "/ws?a=b", "//x", "/a%zz", "*", "http://h/p", "/\x7f"]),
    version=st.sampled_from(["1.1", "1.0", "2.0", "1.1 "]),
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=5),
    host=st.booleans(),
    trailing=st.binary(max_size=4),
)
def test_any_head_reads_the_same_whole_as_in_pieces(
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str]],
    host: bool,
    trailing: bytes,
) -> None:
    lines = [f"{method} {target} HTTP/{version}"]
    lines += ["Host: example.org"] if host else []
    lines += [f"{name}:{value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        agree(head + trailing)
    except h11.LocalProtocolError:  # pragma: no cover - h11 refuses with its own error
        pytest.fail("h11 raised past the reader")
