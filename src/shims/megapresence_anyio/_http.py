"""The HTTP side of a connection: read one request (bounded), answer it or upgrade it.

:class:`RequestReader` is sans-IO (bytes in, a request or the status that
refuses it out), so the fuzzer drives exactly what a socket does. Everything
a peer can send maps to a status here: h11's errors carry their own hint, a
target h11 accepts but we cannot route (``GET //[x``, ``*``, ``host:443``) is
400, and so is a header that must appear once and appears twice.

permessage-deflate is accepted only when ``SocketLimits.permessage_deflate``
is on, and then with megapresence's own bounded inflate (``_deflate.py``):
wsproto's extension inflates without any bound (a 200 KB frame became 200 MiB
when this was measured). Otherwise a client that offers it simply gets an
uncompressed connection.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from collections.abc import Mapping
from typing import Final, final
from urllib.parse import parse_qsl, urlsplit

import attrs
import h11
from wsproto.connection import Connection, ConnectionType
from wsproto.events import Event
from wsproto.extensions import Extension
from wsproto.frame_protocol import (
    CloseReason,
    Frame,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    RsvBits,
)
from wsproto.utilities import generate_accept_token

from ._deflate import BoundedInflate, Deflate
from ._transport import Outlet, Transport

__all__ = [
    "HandshakeRequest",
    "RequestReader",
    "extension_offers",
    "has_dot_segment",
    "read_request",
    "reason_phrase",
    "respond",
    "server_connection",
    "upgrade_refusal",
    "write_upgrade",
]

_REASONS: Mapping[int, bytes] = {
    200: b"OK",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

#: Headers that mean one thing only once. A second Origin could pass the
#: origin check with one value and be read with the other; RFC 6455 4.1 and
#: RFC 9110 say each of these appears once.
_SINGLE_HEADERS: Final = frozenset(
    {"host", "upgrade", "origin", "authorization", "sec-websocket-key", "sec-websocket-version"}
)


#: Headers whose values most sockets of a server share: kept once, not once per socket.
_SHARED_VALUES: Final = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "origin",
        "user-agent",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "pragma",
    }
)


#: RFC 3986 3.3: a path is segments of pchar (unreserved, sub-delims, ':', '@',
#: percent-escapes). ``[``, ``]``, ``#``, ``%`` without two hex digits and the
#: like are not a path; of the query only the escapes are checked (``bad_escape``).
_PATH: Final = re.compile(r"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)+")

#: A ``%`` not followed by two hex digits (RFC 3986 2.1).
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def bad_escape(query: str) -> bool:
    """Whether a query string holds a ``%`` that escapes no byte (``%zz``, a trailing
    ``%``): a malformed request target (400), not a value to hand on as it is."""
    return "%" in query and _BAD_ESCAPE.search(query) is not None


#: A ``.`` or ``..`` segment, plain or percent-escaped: RFC 3986 5.2.4 removes them, and
#: a browser does before it sends, so ``/ws/../x`` names ``/x``, which no path prefix
#: may be taken to hold.
_DOT_SEGMENT: Final = re.compile(r"/(?:\.|%2e){1,2}(?=/|$)", re.IGNORECASE)


def has_dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment (it is then no WebSocket path)."""
    return _DOT_SEGMENT.search(path) is not None


@final
@attrs.frozen(kw_only=True)
class HandshakeRequest:
    """The request that opened a connection, as the ``authenticate`` hook sees it."""

    method: str
    path: str
    #: The raw query string; ``query`` parses it when asked (an open socket keeps
    #: its request, so it keeps the short form).
    query_string: str = ""
    #: Header names lower-cased, in the order received.
    headers: tuple[tuple[str, str], ...]
    remote: tuple[str, int] | None = None
    http_version: str = "1.1"

    @property
    def query(self) -> Mapping[str, str]:
        """The query parameters, first value of each (``?user=a&user=b`` is ``a``, as
        ``header`` gives a header's first). Percent-escaped bytes that are not
        UTF-8 are kept as lone surrogates (``surrogateescape``), not replaced: two raw
        values stay distinct, and an identity made of one is refused (400)."""
        query: dict[str, str] = {}
        for name, value in parse_qsl(self.query_string, errors="surrogateescape"):
            query.setdefault(name, value)
        return query

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        return upgrade == "websocket"


def _split_target(target: str) -> tuple[str, str] | None:
    """(path, query) of a request target, or None if it names no path on this server.

    Origin-form (``/path?q``) is split by hand: ``urlsplit`` would read
    ``//host/x`` as a host and raises on ``//[x``. Absolute-form, which
    RFC 9112 3.2.2 says a server must accept, goes through ``urlsplit``.
    """
    if target.startswith("/"):
        path, _, query = target.partition("?")
    elif target.partition(":")[0].lower() in ("http", "https", "ws", "wss"):
        try:
            parts = urlsplit(target)
        except ValueError:  # e.g. an unbalanced '[' in the host
            return None
        path, query = (parts.path or "/"), parts.query
    else:
        return None  # asterisk-form, authority-form, or nonsense
    return (path, query) if _PATH.fullmatch(path) else None


#: What h11 accepts (its ``_abnf.py``), for a head in one chunk: a request line, then
#: header lines of a token, a colon and a value of visible characters. Anything else
#: (obs-fold, a bare LF, a stray CR, another version) is left to h11.
_REQUEST_LINE: Final = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+) ([\x21-\x7e]+) HTTP/1\.1")
#: A header's name; its value is h11's ``[^\x00\s]+`` runs with spaces and tabs
#: between: once a head has no NUL, VT, FF, or CR and LF but in pairs, that is any
#: value with its outer spaces and tabs stripped.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
#: Headers h11 gives rules of their own (bodies): a head with one is left to it.
_BODY_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})


@final
class RequestReader:
    """Reads one request head: feed it bytes until it returns a request or a status.

    A head that arrives whole in the first chunk (what a browser or a client
    library sends) and is plain HTTP/1.1 with one ``Host`` and no body headers
    is parsed here, in one pass: h11's parser costs more than the rest of a
    connection's setup (a third of a server's time under connection churn).
    Everything else (a head in pieces, anything unusual or invalid) goes to h11,
    so every refusal is h11's as before; on what both accept, both give the same
    request (``tests/test_http_reader.py`` compares them).
    """

    __slots__ = ("_max_header_bytes", "_parser", "_remote", "_size", "error", "trailing")

    def __init__(self, max_header_bytes: int, remote: tuple[str, int] | None = None) -> None:
        #: Made at the first chunk the fast path does not take.
        self._parser: h11.Connection | None = None
        self._max_header_bytes = max_header_bytes
        self._remote = remote
        self._size = 0
        #: Bytes received after the head (frames a client sent right behind its
        #: upgrade request); set with the request.
        self.trailing = b""
        #: Why the request was refused, for the log.
        self.error = ""

    def feed(self, data: bytes) -> HandshakeRequest | int | None:
        """Add bytes received (``b""`` at the end of the stream). Returns the request once
        its head is complete, the HTTP status that refuses it, or None for more."""
        parser = self._parser
        if parser is None:
            if not self._size:
                fast = self._whole(data)
                if fast is not None:
                    return fast
            parser = self._parser = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self._max_header_bytes
            )
        self._size += len(data)
        parser.receive_data(data)
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            return self._refuse(exc.error_status_hint, str(exc))
        if event is h11.NEED_DATA:
            return self._refuse(400, "the peer ended a half request") if not data else None
        if not isinstance(event, h11.Request):
            return self._refuse(400, "the stream ended before a request")
        self.trailing = parser.trailing_data[0]
        # h11 bounds only an incomplete head; a complete one read in a single
        # chunk must be measured here.
        if self._size - len(self.trailing) > self._max_header_bytes:
            return self._refuse(431, "request head too large")
        return self._request(event)

    def _refuse(self, status: int, error: str) -> int:
        self.error = error
        return status

    def _whole(self, data: bytes) -> HandshakeRequest | int | None:
        """The fast path: a plain head whole in ``data``, or None to leave it to h11."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = data[:end]
        crlf = head.count(b"\r\n")
        if (
            head.count(b"\r") != crlf
            or head.count(b"\n") != crlf
            or b"\x00" in head
            or b"\x0b" in head
            or b"\x0c" in head
        ):
            return None
        lines = head.split(b"\r\n")
        line = _REQUEST_LINE.fullmatch(lines[0])
        if line is None:
            return None
        headers = []
        hosts = 0
        token = _TOKEN.fullmatch
        for raw in lines[1:]:
            raw_name, colon, value = raw.partition(b":")
            if not colon or token(raw_name) is None:
                return None
            name = raw_name.decode("latin-1").lower()
            if name in _BODY_HEADERS:
                return None
            hosts += name == "host"
            headers.append((name, value.strip(b" \t")))
        if hosts != 1:
            return None
        self._size = len(data)
        self.trailing = data[end + 4 :]
        if end + 4 > self._max_header_bytes:
            return self._refuse(431, "request head too large")
        return self._head(line[1], line[2], b"1.1", headers)

    def _request(self, event: h11.Request) -> HandshakeRequest | int:
        return self._head(
            event.method,
            event.target,
            event.http_version,
            [(name.decode("latin-1").lower(), value) for name, value in event.headers],
        )

    def _head(
        self, method: bytes, raw_target: bytes, raw_version: bytes, raw: list[tuple[str, bytes]]
    ) -> HandshakeRequest | int:
        """The request, from a head either parser read (names lower-cased)."""
        version = raw_version.decode("latin-1")
        if not version.startswith("1."):  # h11 reads "HTTP/2.0" in a 1.x request line
            return self._refuse(505, f"HTTP/{version} in an HTTP/1 request")
        target = raw_target.decode("latin-1")
        split = _split_target(target)
        if split is None:
            return self._refuse(400, f"no path in the request target {target[:64]!r}")
        if bad_escape(split[1]):
            return self._refuse(400, f"a bad % escape in the query {target[:64]!r}")
        names = [name for name, _ in raw]
        repeated = sorted(n for n in _SINGLE_HEADERS.intersection(names) if names.count(n) > 1)
        if repeated:
            return self._refuse(400, f"repeated header {repeated[0]!r}")
        path, query = split
        text = method.decode("latin-1")
        return HandshakeRequest(
            method=_WORDS.get(text, text),
            path=path,
            query_string=query,
            # Interned: every open socket keeps its request, and the same dozen
            # header names (and the values most sockets share) would otherwise be
            # stored once per socket.
            headers=tuple(
                (
                    sys.intern(name),
                    sys.intern(text) if name in _SHARED_VALUES else text,
                )
                for name, value in raw
                for text in (value.decode("latin-1"),)
            ),
            remote=self._remote,
            http_version=_WORDS.get(version, version),
        )


async def read_request(transport: Transport, reader: RequestReader) -> HandshakeRequest | int:
    """Read until ``reader`` has a request or a refusal (the caller bounds the time)."""
    while True:
        outcome = reader.feed(await transport.receive())
        if outcome is not None:
            return outcome


def reason_phrase(status: int) -> bytes:
    """The reason phrase of ``status`` (``b"Error"`` for one not listed)."""
    return _REASONS.get(status, b"Error")


def default_body(status: int, body: bytes) -> bytes:
    """``body``, or for an error without one its reason phrase (a 304 has none)."""
    if body or status in (200, 304):
        return body
    return reason_phrase(status) + b"\n"


def respond(
    transport: Outlet[bytes],
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain",
    *,
    head: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    """Write a complete HTTP/1.1 response that closes the connection (``no-store``
    unless ``headers`` say how to cache it)."""
    body = default_body(status, body)
    cached = any(name == "cache-control" for name, _ in headers)
    head_lines = [
        f"HTTP/1.1 {status} {reason_phrase(status).decode()}",
        f"content-type: {content_type}",
        *([] if status == 304 else [f"content-length: {len(body)}"]),
        "connection: close",
        *([] if cached else ["cache-control: no-store"]),
        *(f"{name}: {value}" for name, value in headers),
    ]
    data = ("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1")
    transport.write(data if head else data + body)


def _valid_key(key: str | None) -> bool:
    """RFC 6455 4.1: the key is 16 random bytes, base64-encoded."""
    if key is None:
        return False
    try:
        return len(base64.b64decode(key.encode("latin-1"), validate=True)) == 16
    except binascii.Error:
        return False


def upgrade_refusal(request: HandshakeRequest) -> tuple[int, str] | None:
    """RFC 6455 4.2.1, the checks wsproto's handshake makes and a few it does not: an
    HTTP status and a reason, or None for a valid upgrade request."""
    if request.method != "GET":
        return 400, "a WebSocket upgrade must be a GET"
    if request.http_version < "1.1":
        # RFC 6455 4.1: HTTP/1.1 or later. Upgrade is a 1.1 mechanism that a
        # 1.0 intermediary would forward blindly; 505 would claim the major
        # version is unsupported, which it is not, so this is a bad request.
        return 400, "a WebSocket upgrade needs HTTP/1.1"
    tokens = {
        t.strip().lower()
        for name, value in request.headers
        if name == "connection"
        for t in value.split(",")
    }
    if "upgrade" not in tokens:
        return 400, "missing header 'Connection: Upgrade'"
    version = request.header("sec-websocket-version")
    if version != "13":
        return (426 if version else 400), "WebSocket version 13 only"
    if not _valid_key(request.header("sec-websocket-key")):
        return 400, "missing or malformed header 'Sec-WebSocket-Key'"
    if request.header("transfer-encoding") or request.header("content-length") not in (None, "0"):
        # What follows the head is WebSocket frames: a body would be read as one.
        return 400, "an upgrade request has no body"
    return None


class _Pending(list[Event]):
    """wsproto's queue of events made outside a frame (only the abnormal close, once):
    its ``deque`` takes 624 bytes even when empty, on every open socket; this list
    takes 56. ``Connection.events`` calls only ``popleft``, ``append`` and ``bool``."""

    __slots__ = ()

    def popleft(self) -> Event:
        return self.pop(0)


#: The method and version of (almost) every request, kept by every open socket: these
#: strings, not a copy each.
_WORDS: Final = {word: word for word in ("GET", "1.1")}

#: The extensions of every socket that agreed none: one empty list, not one each.
_NO_EXTENSIONS: Final[list[Extension]] = []


@final
class _Frames:
    """wsproto's parser (``FrameProtocol._parse_more``) as an iterator of two slots: its
    generator holds a suspended frame, 216 bytes on every open socket, and makes a copy
    of the extensions' list on its first frame. The same steps: a frame from the
    buffer, a message's frame through the message decoder, a close through its check;
    None when more bytes are needed; nothing after the close."""

    __slots__ = ("_closed", "_proto")

    def __init__(self, proto: FrameProtocol) -> None:
        self._proto = proto
        self._closed = False

    def __iter__(self) -> _Frames:
        return self

    def __next__(self) -> Frame | None:
        if self._closed:
            raise StopIteration
        proto = self._proto
        frame = proto._frame_decoder.process_buffer()
        if frame is not None:
            if not frame.opcode.iscontrol():
                frame = proto._message_decoder.process_frame(frame)
            elif frame.opcode == Opcode.CLOSE:
                frame = proto._process_close(frame)
                self._closed = True
        return frame


@final
class _BoundedDecoder(FrameDecoder):
    """wsproto's frame decoder, refusing (1009) a message whose frame headers announce
    more than ``limit`` bytes before any of that payload is read: a peer announcing a
    gigabyte is closed at once, not once ``limit`` bytes of it came. A compressed
    message is bounded by what it inflates to instead (``BoundedInflate``)."""

    __slots__ = ("compressed", "limit", "size")

    def __init__(self, extensions: list[Extension], limit: int) -> None:
        super().__init__(client=False, extensions=extensions)
        self.extensions = extensions  # not a new empty list when there is none
        self.limit = limit
        self.compressed = False  # the message arriving: its first frame said so
        self.size = 0  # the message's payload announced so far

    def extension_processing(self, opcode: Opcode, rsv: RsvBits, payload_len: int) -> None:
        if opcode is Opcode.CONTINUATION:
            self.size += payload_len
        elif opcode < Opcode.CLOSE:  # text or binary: a message starts (control frames: 8-15)
            self.compressed, self.size = rsv.rsv1, payload_len
        if self.size > self.limit and not self.compressed:
            raise ParseFailed(f"message over {self.limit} bytes", CloseReason.MESSAGE_TOO_BIG)
        FrameDecoder.extension_processing(self, opcode, rsv, payload_len)


def server_connection(trailing: bytes, limit: int, *, deflate: bool = False) -> Connection:
    """The server side of a WebSocket whose request :func:`upgrade_refusal` passed, for
    messages of at most ``limit`` bytes. Frames a client sent right behind its request
    belong to it. With ``deflate`` (permessage-deflate was agreed), compressed messages
    are inflated up to ``limit`` bytes each."""
    extensions: list[Extension] = [BoundedInflate(limit)] if deflate else []
    connection = Connection(ConnectionType.SERVER, extensions=extensions)
    proto = connection._proto
    if not proto.extensions:  # none agreed, or none enabled
        proto.extensions = _NO_EXTENSIONS
    proto._frame_decoder = _BoundedDecoder(proto.extensions, limit)
    proto._parse_more = _Frames(proto)  # type: ignore[assignment]
    connection._events = _Pending(connection._events)  # type: ignore[assignment]
    if trailing:
        connection.receive_data(trailing)
    return connection


def extension_offers(request: HandshakeRequest) -> list[str]:
    """Every ``Sec-WebSocket-Extensions`` value of the request, in order."""
    return [value for name, value in request.headers if name == "sec-websocket-extensions"]


def write_upgrade(
    transport: Outlet[bytes], request: HandshakeRequest, deflate: Deflate | None = None
) -> None:
    """Write the 101. The request was parsed once, by h11, to route and authenticate
    it; this answers it directly rather than have wsproto parse it again."""
    key = request.header("sec-websocket-key") or ""
    extensions = (
        b"Sec-WebSocket-Extensions: " + deflate.response.encode("latin-1") + b"\r\n"
        if deflate is not None
        else b""
    )
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: "
        + generate_accept_token(key.encode("latin-1"))
        + b"\r\n"
        + extensions
        + b"\r\n"
    )
