"""Memory and file descriptors per open connection of ``megapresence serve``, measured.

    python benchmarks/memory_bench.py [--clients N] [--backend asyncio|trio]

Starts ``megapresence serve`` (the demo identity, on loopback), reads its resident
memory (``VmRSS``) and open descriptors, opens N WebSocket connections as N users
(each a session in ``lobby``, the demo's default, answered with its ``welcome``),
then another N watching ``lobby``'s presence in the ``count`` mode, and reads
them again. Prints the growth per connection. Linux only (``/proc``). Nothing here
is asserted by the tests; docs/deploy.md quotes a run.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import resource
import socket
import subprocess
import sys
import time


def status(pid: int) -> tuple[int, int]:
    """(resident KiB, open descriptors) of the process."""
    with open(f"/proc/{pid}/status") as file:
        text = file.read()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def upgrade(port: int, query: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/chat?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer[:80]
    return sock


def settle(pid: int) -> tuple[int, int]:
    time.sleep(1.0)  # the welcome messages and the presence window go out
    return status(pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--backend", default="asyncio")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4 * args.clients + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))  # for the server too
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "megapresence_anyio", "--backend", args.backend, "serve"),
            *("--port", "0", "--log-level", "error", "--max-connections", "100000"),
            *("--max-connections-per-address", "100000"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    port = int(re.search(r":(\d+)/", server.stdout.readline()).group(1))  # type: ignore[union-attr]
    sockets: list[socket.socket] = []
    try:
        upgrade(port, "user=warmup").close()
        base = settle(server.pid)
        for n in range(args.clients):
            sockets.append(upgrade(port, f"user=u{n}&session=s{n}"))
        joined = settle(server.pid)
        for n in range(args.clients):
            sock = upgrade(port, f"user=w{n}&session=w{n}")
            # A masked text frame: {"op":"subscribe","channel":"lobby","presence":"count"}
            body = b'{"op":"subscribe","channel":"lobby","presence":"count"}'
            frame = bytes([0x81, 0x80 | len(body)]) + b"\0\0\0\0" + body
            sock.sendall(frame)
            sockets.append(sock)
        watching = settle(server.pid)
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        server.wait()
    n = args.clients
    print(f"backend {args.backend}, {n} sessions then {n} count watchers of one channel")
    print(f"before: {base[0] / 1024:.1f} MiB, {base[1]} descriptors")
    print(
        f"{n} sessions: +{(joined[0] - base[0]) / n:.1f} KiB and "
        f"+{(joined[1] - base[1]) / n:.2f} descriptors per connection"
    )
    print(
        f"{n} watchers more: +{(watching[0] - joined[0]) / n:.1f} KiB and "
        f"+{(watching[1] - joined[1]) / n:.2f} descriptors per connection"
    )


if __name__ == "__main__":
    main()
