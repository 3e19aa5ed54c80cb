"""The HTTP side of a connection: read one request (bounded), answer it or hand it to wsproto.

megapresence does not offer permessage-deflate: wsproto would inflate a
compressed message without any bound (a 200 KB frame became 200 MiB when this
was measured), and presence traffic is small. A client that offers it simply
gets an uncompressed connection.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import final
from urllib.parse import parse_qsl, urlsplit

import anyio
import attrs
import h11
from wsproto.connection import Connection, ConnectionType
from wsproto.utilities import generate_accept_token

from ._config import SocketLimits
from ._transport import Transport

__all__ = ["HandshakeRequest", "accept_websocket", "read_request", "respond"]

_REASONS: Mapping[int, bytes] = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


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

    @property
    def query(self) -> Mapping[str, str]:
        """The query parameters, first value of each."""
        return dict(parse_qsl(self.query_string))

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        return upgrade == "websocket"


async def read_request(
    transport: Transport, limits: SocketLimits, remote: tuple[str, int] | None
) -> tuple[HandshakeRequest, bytes] | None:
    """Read one request and return it with every byte read so far; or answer it with an
    HTTP error (400, 408, 431) and return None."""
    status = await _read(transport, limits.max_header_bytes, limits.handshake_timeout, remote)
    if isinstance(status, int):
        respond(transport, status)
        return None
    return status


async def _read(
    transport: Transport, max_header_bytes: int, timeout: float, remote: tuple[str, int] | None
) -> tuple[HandshakeRequest, bytes] | int:
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
    raw = bytearray()
    with anyio.move_on_after(timeout):
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                return exc.error_status_hint
            if isinstance(event, h11.Request):
                # h11 bounds only an incomplete head; a complete one read in a
                # single chunk must be measured here.
                if raw.find(b"\r\n\r\n") + 4 > max_header_bytes:
                    return 431
                target = event.target.decode("latin-1")
                parts = urlsplit(target)
                headers = tuple(
                    # Interned: every open socket keeps its request, and the
                    # same dozen header names would otherwise be stored per socket.
                    (sys.intern(name.decode("latin-1").lower()), value.decode("latin-1"))
                    for name, value in event.headers
                )
                request = HandshakeRequest(
                    method=event.method.decode("latin-1"),
                    path=parts.path or "/",
                    query_string=parts.query,
                    headers=headers,
                    remote=remote,
                )
                return request, bytes(raw)
            if event is h11.NEED_DATA:
                data = await transport.receive()
                if not data:
                    return 400
                raw += data
                parser.receive_data(data)
            else:  # ConnectionClosed and the like: nothing sensible to answer
                return 400
    return 408


def respond(
    transport: Transport,
    status: int,
    body: bytes = b"",
    content_type: str = "text/plain",
    *,
    head: bool = False,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    """Write a complete HTTP/1.1 response that closes the connection."""
    if not body and status != 200:
        body = _REASONS.get(status, b"Error") + b"\n"
    head_lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, b'Error').decode()}",
        f"content-type: {content_type}",
        f"content-length: {len(body)}",
        "connection: close",
        "cache-control: no-store",
        *(f"{name}: {value}" for name, value in headers),
    ]
    data = ("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1")
    transport.write(data if head else data + body)


def _upgrade_refusal(request: HandshakeRequest) -> tuple[int, bytes] | None:
    """RFC 6455 4.2.1, the checks wsproto's handshake makes: an HTTP status and a reason,
    or None for a valid upgrade request."""
    if request.method != "GET":
        return 400, b"a WebSocket upgrade must be a GET\n"
    tokens = {t.strip().lower() for t in (request.header("connection") or "").split(",")}
    if "upgrade" not in tokens:
        return 400, b"missing header 'Connection: Upgrade'\n"
    version = request.header("sec-websocket-version")
    if version != "13":
        return (426 if version else 400), b"WebSocket version 13 only\n"
    if not request.header("sec-websocket-key"):
        return 400, b"missing header 'Sec-WebSocket-Key'\n"
    return None


def accept_websocket(
    transport: Transport, request: HandshakeRequest, raw: bytes
) -> Connection | None:
    """Complete the upgrade; None if the request is not a valid one (an HTTP error has
    then been written). The request was parsed once, by h11, to route and authenticate
    it; this answers it directly rather than have wsproto parse it again."""
    refusal = _upgrade_refusal(request)
    if refusal is not None:
        status, reason = refusal
        respond(transport, status, reason, headers=(("sec-websocket-version", "13"),))
        return None
    key = request.header("sec-websocket-key") or ""
    transport.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode("latin-1")) + b"\r\n\r\n"
    )
    # Frames a client sent right behind its request belong to the connection.
    return Connection(ConnectionType.SERVER, trailing_data=raw[raw.find(b"\r\n\r\n") + 4 :])
