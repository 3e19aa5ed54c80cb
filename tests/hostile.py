"""What a hostile or broken peer sends, and what each must get back; a hub address that lies.

``corpus()`` is a list of raw byte streams with the documented answer to
each: an HTTP status line before the upgrade, a close code after it. The
process tests throw it at ``megapresence serve`` and ``megapresence hub``;
``FakeHub`` answers the hub link's upgrade with garbage and bad 101s.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import NamedTuple

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Hostile(NamedTuple):
    name: str
    data: bytes
    #: The status line answering it, or the close code after a 101.
    expect: bytes | int


def upgrade(path: str, headers: str = "", *, version: str = "1.1", method: str = "GET") -> bytes:
    return (
        f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{headers}\r\n"
    ).encode()


def masked(first: int, payload: bytes, length: bytes | None = None) -> bytes:
    """A client frame; ``length`` overrides the encoded length byte(s)."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = length if length is not None else bytes((0x80 | len(payload),))
    return bytes((first,)) + size + mask + body


def upgraded(port: int, path: str, *, receive_buffer: int | None = None) -> socket.socket:
    """A blocking socket past its upgrade to ``path``, nothing read after the 101
    (``receive_buffer``: a small one, for a reader that falls behind at once)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


@contextmanager
def flooding(sock: socket.socket, frame: bytes, *, read: bool = False) -> Iterator[None]:
    """A thread writing ``frame`` on ``sock`` over and over, as fast as the link takes it
    (with ``read``, another reading all it is sent: greedy, but honest) until the block
    ends, then ``sock`` closed. The server closing the socket ends the flood."""
    burst = frame * (65536 // len(frame))
    stop = threading.Event()

    def write() -> None:
        with suppress(OSError):
            while not stop.is_set():
                sock.sendall(burst)

    def drain() -> None:
        with suppress(OSError):
            while not stop.is_set() and sock.recv(65536):
                pass

    threads = [threading.Thread(target=job, daemon=True) for job in (write, drain)[: 1 + read]]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a write the server does not read
        sock.close()
        for thread in threads:
            thread.join(5)


def corpus(path: str, auth: str = "") -> list[Hostile]:
    """Every case for a server whose WebSocket is at ``path`` (``auth``: headers it needs)."""
    ok = upgrade(path, auth)
    bad = b"HTTP/1.1 400 Bad Request"
    return [
        # Request lines and targets.
        Hostile("ipv6-literal-target", b"GET //[x HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("bad-absolute-target", b"GET http://[::1/ws HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("asterisk-target", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("authority-target", b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("bad-percent-escape", b"GET /ws/%zz HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("space-in-target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", bad),
        Hostile("not-http", b"NONSENSE\r\n\r\n", bad),
        Hostile("empty-lines", b"\r\n\r\n", bad),
        Hostile("tls-client-hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" * 8, bad),
        Hostile(
            "http2-preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"HTTP/1.1 505 HTTP Version Not Supported",
        ),
        # Headers: malformed, repeated, too big.
        Hostile("header-without-colon", b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n", bad),
        Hostile("nul-in-header", b"GET /ws HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n", bad),
        Hostile("two-hosts", b"GET /ws HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", bad),
        Hostile(
            "two-lengths",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            bad,
        ),
        Hostile(
            "huge-header",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large",
        ),
        Hostile("two-keys", upgrade(path, auth + f"Sec-WebSocket-Key: {KEY}\r\n"), bad),
        Hostile("two-origins", upgrade(path, auth + "Origin: a\r\nOrigin: b\r\n"), bad),
        Hostile("two-authorizations", upgrade(path, auth + "Authorization: x\r\n" * 2), bad),
        # Upgrades that RFC 6455 does not allow.
        Hostile("http-1.0-upgrade", upgrade(path, auth, version="1.0"), bad),
        Hostile("post-upgrade", upgrade(path, auth, method="POST"), bad),
        Hostile(
            "short-key",
            ok.replace(KEY.encode(), base64.b64encode(b"short")),
            bad,
        ),
        Hostile(
            "version-8",
            ok.replace(b"Version: 13", b"Version: 8"),
            b"HTTP/1.1 426 Upgrade Required",
        ),
        Hostile("upgrade-with-body", upgrade(path, auth + "Content-Length: 4\r\n") + b"abcd", bad),
        Hostile("upgrade-chunked", upgrade(path, auth + "Transfer-Encoding: chunked\r\n"), bad),
        # Half a handshake, then the peer stops sending.
        Hostile("half-handshake", ok[: len(ok) // 2], bad),
        # A valid upgrade, then bytes that break the WebSocket protocol.
        Hostile("garbage-after-101", ok + b"\xff\xfe\xfd\xfc garbage", 1002),
        Hostile("unmasked-frame", ok + b"\x81\x02hi", 1002),
        Hostile("reserved-opcode", ok + masked(0x83, b"hi"), 1002),
        Hostile("rsv1-without-extension", ok + masked(0xC1, b"hi"), 1002),
        Hostile("fragmented-ping", ok + masked(0x09, b"hi"), 1002),
        Hostile("long-ping", ok + masked(0x89, b"x" * 126, b"\xfe\x00\x7e"), 1002),
        Hostile(
            "length-with-top-bit",
            ok + masked(0x81, b"", b"\xff" + struct.pack("!Q", 1 << 63)),
            1002,
        ),
        # A message announced over every limit (1 TiB): refused at its header.
        Hostile(
            "announced-too-big", ok + masked(0x81, b"x", b"\xff" + struct.pack("!Q", 1 << 40)), 1009
        ),
        Hostile("invalid-utf8", ok + masked(0x81, b"\xff\xfe"), 1007),
        Hostile("binary-message", ok + masked(0x82, b"\x00\x01"), 1003),
    ]


def _read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    def need(size: int) -> bytes:
        while len(buffer) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed without a close frame")
            buffer.extend(chunk)
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    first, second = need(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", need(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", need(8))
    return first & 0x0F, need(size)


def answer(port: int, case: Hostile, timeout: float = 10) -> bytes | int:
    """Send ``case`` and read the answer: a status line, or the close code after a 101."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(case.data)
        if case.name == "half-handshake":
            sock.shutdown(socket.SHUT_WR)
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(buffer.split(b"\r\n", 1)[0])
            buffer.extend(chunk)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101"):
            return status
        buffer = bytearray(rest)
        while True:
            opcode, payload = _read_frame(sock, buffer)
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])


# ------------------------------------------------------- a hub address that lies


def accept_token(request: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


#: What a broken or hostile address answers to the hub link's upgrade; None is a
#: valid 101 followed by bytes that are no WebSocket frame. The first three
#: ended ``serve --hub`` before the link had a fault boundary.
BAD_HUB_ANSWERS: list[bytes | None] = [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",  # the wrong accept token
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # no Upgrade, no accept token
    b"garbage\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS record
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",  # a head over h11's bound
    b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n",
    None,
    b"",  # closed without a word
]


class FakeHub:
    """Answers the n-th upgrade with ``BAD_HUB_ANSWERS[n % len]``, in a thread."""

    def __init__(self) -> None:
        self.seen = 0
        hub = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(2)
                try:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        request += chunk
                    reply = BAD_HUB_ANSWERS[hub.seen % len(BAD_HUB_ANSWERS)]
                    hub.seen += 1
                    if reply is None:
                        reply = (
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                            + accept_token(request)
                            + b"\r\n\r\n\xff\xff\xff\xff garbage"
                        )
                    sock.sendall(reply)
                    while sock.recv(65536):  # until the client hangs up
                        pass
                except OSError:
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]

    @contextmanager
    def running(self) -> Iterator[FakeHub]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()
