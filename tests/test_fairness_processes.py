"""``megapresence serve`` as a process under the attacks of issue 17, items 6 and 10.

A socket writing small frames at line rate beside a client whose round trip is
measured, on both backends; and a server out of file descriptors, which says so
(one warning per interval, a metric) and serves again once they come back.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .process_helpers import Command, eventually
from .test_fairness import masked_text

BACKENDS = ["asyncio", "trio"]


def upgrade(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def http_get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_line_rate_writer_does_not_stall_serve(backend: str, tmp_path: Path) -> None:
    server = Command(tmp_path, "serve", "--backend", backend, "serve", "--port", "0")
    try:
        frame = masked_text(json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode())
        burst = frame * (65536 // len(frame))
        attacker = upgrade(server.port, "/ws/?user=mallory&channels=solo")
        stop = threading.Event()

        def flood() -> None:
            try:
                while not stop.is_set():
                    attacker.sendall(burst)
            except OSError:
                pass

        thread = threading.Thread(target=flood, daemon=True)
        with connect(f"ws://127.0.0.1:{server.port}/ws/?user=bob", open_timeout=10) as bob:
            thread.start()
            time.sleep(0.5)  # the flood is on
            worst = 0.0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                start = time.monotonic()
                assert bob.ping().wait(30), "no pong within 30 s"
                worst = max(worst, time.monotonic() - start)
                time.sleep(0.02)
        stop.set()
        attacker.close()
        thread.join(10)
        assert worst < 0.5, f"a round trip took {worst:.3f} s beside the flood"
    finally:
        server.stop()


#: Starts ``megapresence`` with at most this many file descriptors.
LIMITED = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)); "
    "sys.argv[0] = 'megapresence'; "
    "runpy.run_module('megapresence_anyio', run_name='__main__')"
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_descriptors_serve_says_so_and_recovers(backend: str, tmp_path: Path) -> None:
    server = Command(
        tmp_path,
        "serve",
        "--backend",
        backend,
        "serve",
        "--port",
        "0",
        program=(sys.executable, "-c", LIMITED),
    )
    try:
        # Sockets that never send their request: each holds a descriptor on the
        # server until its handshake times out (5 s).
        hogs = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
        eventually(
            lambda: "cannot accept connections" in server.log.read_text(),
            timeout=10,
            what="the out-of-descriptors warning",
        )
        time.sleep(1)
        for hog in hogs:
            hog.close()
        # Descriptors come back: the server serves again.
        eventually(lambda: _joins(server.port), timeout=20, what="a client served again")
        metrics = http_get(server.port, "/metrics")
        failures = [
            line
            for line in metrics.splitlines()
            if line.startswith('megapresence_accept_failures_total{error="EMFILE"}')
        ]
        assert failures, metrics
        assert float(failures[0].split()[-1]) > 0
        # Once per interval (10 s), not once per failed accept (ten a second).
        assert server.log.read_text().count("cannot accept connections") <= 2
    finally:
        server.stop()


def _joins(port: int) -> bool:
    try:
        with connect(f"ws://127.0.0.1:{port}/ws/?user=late", open_timeout=3) as ws:
            return json.loads(ws.recv(3))["type"] == "welcome"
    except (OSError, TimeoutError):
        return False
