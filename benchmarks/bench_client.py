"""The load side of the benchmarks: raw sockets on one selector loop, the same for every system.

    fanout --port P --clients N --messages M [--socketio] [--sentinel TEXT]
        open N WebSockets, print CONNECTED, then count bytes until every client has
        all M broadcasts (or, with --sentinel, until every client's stream ends
        with TEXT and the frame's end); print DONE <monotonic time of the last byte>
        <this process's CPU seconds since CONNECTED>. run.py may split N over several
        such processes (--client-procs), each with its share of the clients.
        With --deflate it offers permessage-deflate and counts frames (compressed
        ones differ in size), then prints BYTES <bytes received>.
    churn --port P --seconds S --concurrency C
        open, upgrade and close sockets in C parallel lanes for S seconds; print CYCLES <n>.
    hub --port P --token T --frames M [--batch]
        two bridges on a hub: A sends M BROADCAST frames, B counts them; print RATE <frames/s>.
        --batch: both bridges offer the batch capability, and A packs its frames.

It parses as little as it can (all broadcast frames of a run have one size, so
it counts bytes), so that on a 2-core machine it leaves the other core to the server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

#: --tls: the benchmark's server has a certificate made for the run; it is not checked.
TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


def upgrade_request(port: int, path: str, headers: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{headers}\r\n"
    ).encode()


def masked_text(text: str) -> bytes:
    """A client frame; the zero mask leaves the payload as is (and is a valid mask)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        head = bytes((0x81, 0x80 | size))
    elif size < 65536:
        head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + data


def frame_length(buffer: bytes) -> int | None:
    """Length of the first whole server frame in ``buffer`` (header and payload)."""
    if len(buffer) < 2:
        return None
    size = buffer[1] & 0x7F
    if size == 126:
        return None if len(buffer) < 4 else 4 + int.from_bytes(buffer[2:4], "big")
    if size == 127:
        return None if len(buffer) < 10 else 10 + int.from_bytes(buffer[2:10], "big")
    return 2 + size


def take_frame(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """Take the first whole server frame off ``buffer``: its opcode, payload and length
    (header and payload); None while it is incomplete."""
    length = frame_length(bytes(buffer[:10]))
    if length is None or len(buffer) < length:
        return None
    size = buffer[1] & 0x7F
    header = 2 if size < 126 else (4 if size == 126 else 10)
    opcode, payload = buffer[0] & 0x0F, bytes(buffer[header:length])
    del buffer[:length]
    return opcode, payload, length


def apply_diff(members: dict[str, Any], diff: dict[str, Any]) -> None:
    """A decoded ``presence.diff`` applied to a map of members by key, as docs/protocol.md
    says: leaves, then updates, then joins."""
    for key in diff["leaves"]:
        members.pop(key, None)
    members.update(diff["updates"])
    members.update(diff["joins"])


def read_frames(sock: socket.socket, buffer: bytearray, count: int) -> list[bytes]:
    """Blocking: read ``count`` whole server frames (used during handshakes only)."""
    out = []
    while len(out) < count:
        length = frame_length(bytes(buffer[:10]))
        if length is not None and len(buffer) >= length:
            out.append(bytes(buffer[:length]))
            del buffer[:length]
            continue
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        buffer += chunk
    return out


#: Loopback source addresses the clients are spread over: one address has ~28k
#: ephemeral ports, fewer once earlier runs leave sockets in TIME_WAIT.
SOURCES = tuple(f"127.0.0.{n}" for n in range(1, 9))

#: What Chrome and Firefox offer.
DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def open_clients(
    port: int, count: int, path: str, socketio: bool, tls: bool = False, headers: str = ""
) -> list[socket.socket]:
    """Open and upgrade ``count`` sockets, in waves so the listen backlog never overflows."""
    clients: list[socket.socket] = []
    wave = 200
    for start in range(0, count, wave):
        batch = []
        for index in range(start, min(start + wave, count)):
            source = (SOURCES[index % len(SOURCES)], 0)
            sock = socket.create_connection(("127.0.0.1", port), source_address=source)
            if tls:
                sock = TLS.wrap_socket(sock, server_hostname="127.0.0.1")
            sock.sendall(upgrade_request(port, path, headers))
            batch.append(sock)
        for sock in batch:
            buffer = bytearray()
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("refused during the upgrade")
                buffer += chunk
            head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(head.decode(errors="replace"))
            leftover = bytearray(rest)
            if socketio:
                read_frames(sock, leftover, 1)  # Engine.IO open packet
                sock.sendall(masked_text("40"))  # connect to the default namespace
                read_frames(sock, leftover, 1)  # its answer
            if leftover:
                raise ConnectionError(
                    f"unexpected data before the benchmark started: {bytes(leftover[:200])!r}"
                )
            sock.setblocking(False)
            clients.append(sock)
    return clients


#: This process's CPU seconds when its clients were connected (a run's start).
CONNECTED_CPU = 0.0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def done() -> None:
    """The last byte's time and the CPU this process spent receiving: whether the load
    side, not the server, bounded the run shows in run.py's *client cores*."""
    print("DONE", time.monotonic(), cpu_seconds() - CONNECTED_CPU, flush=True)


def fanout(args: argparse.Namespace) -> None:
    path = "/socket.io/?EIO=4&transport=websocket" if args.socketio else "/ws/bench"
    headers = DEFLATE_OFFER if args.deflate else ""
    clients = open_clients(args.port, args.clients, path, args.socketio, args.tls, headers)
    selector = selectors.DefaultSelector()
    for sock in clients:
        selector.register(sock, selectors.EVENT_READ)
    print("CONNECTED", flush=True)
    global CONNECTED_CPU
    CONNECTED_CPU = cpu_seconds()
    received = 0
    expected: int | None = None
    first = b""
    deadline = time.monotonic() + args.timeout
    if args.sentinel:
        until_sentinel(selector, len(clients), args.sentinel.encode() + b'"}', deadline)
        return
    if args.deflate:
        count_frames(selector, len(clients), args.messages, deadline)
        return
    while expected is None or received < expected:
        if time.monotonic() > deadline:
            print("PARTIAL", received, expected, flush=True)
            return
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            try:
                data = sock.recv(1 << 20)  # type: ignore[union-attr]
                while isinstance(sock, ssl.SSLSocket) and sock.pending():
                    data += sock.recv(1 << 20)  # decrypted already: select would not wake
            except ssl.SSLWantReadError:  # a TLS record not yet whole
                continue
            if not data:
                print("CLOSED", flush=True)
                return
            received += len(data)
            if expected is None:
                first += data
                length = frame_length(first)
                if length is not None:
                    expected = length * args.clients * args.messages
    done()


def read_until(
    selector: selectors.BaseSelector,
    count: int,
    deadline: float,
    finished: Callable[[int, bytes], bool],
) -> bool:
    """Read every ready socket, passing (its fd, the bytes) to ``finished``, until
    ``count`` sockets are finished; False, after saying why, on a timeout or a close."""
    done = 0
    while done < count:
        if time.monotonic() > deadline:
            print("PARTIAL", done, count, flush=True)
            return False
        for key, _ in selector.select(timeout=1):
            sock = key.fileobj
            data = sock.recv(1 << 20)  # type: ignore[union-attr]
            if not data:
                print("CLOSED", flush=True)
                return False
            if finished(key.fd, data):
                done += 1
                selector.unregister(sock)
    return True


def until_sentinel(
    selector: selectors.BaseSelector, count: int, ending: bytes, deadline: float
) -> None:
    """Read every socket until its stream ends with ``ending`` (frames vary in size)."""
    tails: dict[int, bytes] = {}

    def finished(fd: int, data: bytes) -> bool:
        tail = tails[fd] = (tails.get(fd, b"") + data)[-len(ending) :]
        return tail == ending

    if read_until(selector, count, deadline, finished):
        done()


def count_frames(
    selector: selectors.BaseSelector, count: int, messages: int, deadline: float
) -> None:
    """Read every socket until it has ``messages`` frames, whatever their sizes."""
    frames: dict[int, int] = {}
    rests: dict[int, bytes] = {}
    total = 0

    def finished(fd: int, data: bytes) -> bool:
        nonlocal total
        total += len(data)
        buffer = rests.pop(fd, b"") + data
        seen, at = frames.get(fd, 0), 0
        while True:
            length = frame_length(buffer[at : at + 10])
            if length is None or at + length > len(buffer):
                break
            at += length
            seen += 1
        frames[fd] = seen
        if at < len(buffer):
            rests[fd] = buffer[at:]
        return seen >= messages

    if read_until(selector, count, deadline, finished):
        done()
        print("BYTES", total, flush=True)


def churn(args: argparse.Namespace) -> None:
    """Sequential lanes of connect, upgrade, close: the server joins and leaves each one."""
    selector = selectors.DefaultSelector()
    close_frame = bytes((0x88, 0x82)) + b"\x00\x00\x00\x00" + (1000).to_bytes(2, "big")
    cycles = 0
    end = time.monotonic() + args.seconds

    def start_lane() -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", args.port))
        selector.register(sock, selectors.EVENT_WRITE, ["connecting", bytearray()])

    for _ in range(args.concurrency):
        start_lane()
    while selector.get_map():
        for key, _ in selector.select(timeout=1):
            sock, state = key.fileobj, key.data
            assert isinstance(sock, socket.socket)
            if state[0] == "connecting":
                sock.send(upgrade_request(args.port, "/ws/bench"))
                state[0] = "upgrading"
                selector.modify(sock, selectors.EVENT_READ, state)
                continue
            data = sock.recv(65536)
            state[1] += data
            if state[0] == "upgrading" and b"\r\n\r\n" in state[1]:
                sock.send(close_frame)
                state[0] = "closing"
            elif not data:  # the server finished the close: one cycle done
                selector.unregister(sock)
                sock.close()
                cycles += 1
                if time.monotonic() < end:
                    start_lane()
    print("CYCLES", cycles, flush=True)


def count_hub_frames(buffer: bytearray) -> int:
    """Hub frames in the whole server messages at the start of ``buffer`` (removed from
    it): one per message, plus one per line feed in a batch."""
    count = pos = 0
    end = len(buffer)
    while end - pos >= 2:
        size, head = buffer[pos + 1] & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(buffer[pos + 2 : pos + 4], "big"), 4
        elif size == 127:
            size, head = int.from_bytes(buffer[pos + 2 : pos + 10], "big"), 10
        if end - pos < head + size:
            break
        count += buffer.count(b"\n", pos + head, pos + head + size) + 1
        pos += head + size
    del buffer[:pos]
    return count


def hub(args: argparse.Namespace) -> None:
    auth = f"Authorization: Bearer {args.token}\r\n"
    capabilities = ["batch"] if args.batch else []
    bridges = []
    for name in ("a", "b"):
        sock = socket.create_connection(("127.0.0.1", args.port))
        sock.sendall(upgrade_request(args.port, "/", auth))
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        rest = bytearray(bytes(buffer).partition(b"\r\n\r\n")[2])
        register = {"bridgeId": name, "instanceId": name, "protocol": 1}
        sock.sendall(
            masked_text(
                json.dumps(
                    {"type": "REGISTER", "payload": {**register, "capabilities": capabilities}}
                )
            )
        )
        read_frames(sock, rest, 1)
        bridges.append((sock, rest))
    (a, _), (b, rest_b) = bridges
    b.sendall(
        masked_text(
            json.dumps(
                {
                    "type": "JOIN",
                    "payload": {"userId": "bridge:b", "sessionId": "bridge:b#c", "channels": ["c"]},
                }
            )
        )
    )
    time.sleep(0.2)
    text = json.dumps(
        {
            "type": "BROADCAST",
            "payload": {"ns": "/ws", "channel": "c", "message": {"type": "m", "payload": "x" * 60}},
        }
    )
    # A batching bridge packs as many frames as the hub's frame limit (80 KiB) holds.
    per_message = (80 * 1024 + 1) // (len(text) + 1) if args.batch else 1
    messages = []
    for first in range(0, args.frames, per_message):
        messages.append(masked_text("\n".join([text] * min(per_message, args.frames - first))))
    pending = b"".join(messages)
    a.setblocking(False)
    b.setblocking(False)
    start = time.monotonic()
    buffer = rest_b
    received = count_hub_frames(buffer)
    while received < args.frames:
        if pending:
            with contextlib.suppress(BlockingIOError):
                pending = pending[a.send(pending[: 1 << 20]) :]
        try:
            data = b.recv(1 << 20)
        except BlockingIOError:
            continue
        buffer += data
        received += count_hub_frames(buffer)
    print("RATE", args.frames / (time.monotonic() - start), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["fanout", "churn", "hub"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--messages", type=int, default=0)
    parser.add_argument("--socketio", action="store_true")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--sentinel", default="")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--token", default="")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--batch", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    {"fanout": fanout, "churn": churn, "hub": hub}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
