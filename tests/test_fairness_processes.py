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
from contextlib import ExitStack, suppress
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


def metric(port: int, line_start: str) -> float:
    """The value of the first /metrics sample whose line starts with ``line_start``."""
    for line in http_get(port, "/metrics").splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def stuck_app(tmp_path: Path, backend: str) -> Command:
    return Command(tmp_path, "stuck", backend, program=(sys.executable, "-m", "tests.stuck_app"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_on_open_that_never_returns_does_not_keep_its_session(
    backend: str, tmp_path: Path
) -> None:
    app = stuck_app(tmp_path, backend)
    try:
        url = f"ws://127.0.0.1:{app.port}/ws/"
        with connect(f"{url}?user=ann&channels=lobby", open_timeout=10):
            with connect(f"{url}?user=stuck&channels=lobby", open_timeout=10):
                eventually(lambda: metric(app.port, "megapresence_sessions ") == 2, timeout=10)
            # The client left while its on_open hung: hook_timeout (1 s) ends it.
            eventually(
                lambda: metric(app.port, "megapresence_connections ") == 1,
                timeout=10,
                what="the stuck connection gone",
            )
            assert metric(app.port, "megapresence_sessions ") == 1
    finally:
        app.stop()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_silent_reader_of_a_big_snapshot_is_closed(backend: str, tmp_path: Path) -> None:
    app = stuck_app(tmp_path, backend)
    members = ExitStack()
    try:
        url = f"ws://127.0.0.1:{app.port}/ws/"
        # 16 members with 200 KB of metadata each: a 3 MB snapshot in mode users.
        for n in range(16):
            members.enter_context(
                connect(f"{url}?user=m{n}&channels=big&pad=200000", open_timeout=10)
            )
        eve = _small_buffer_upgrade(app.port, "/ws/?user=eve")
        subscribe = json.dumps({"op": "subscribe", "channel": "big", "presence": "users"})
        eve.sendall(masked_text(subscribe.encode()))
        pong = bytes((0x8A, 0x80)) + b"\x00\x00\x00\x00"
        deadline = time.monotonic() + 15
        closed = 0.0
        while time.monotonic() < deadline and not closed:
            with suppress(OSError):  # heard, so the keepalive never gives up on it
                eve.sendall(pong)
            time.sleep(0.3)
            closed = metric(app.port, 'megapresence_closes_total{by="server",code="1013"}')
        assert closed >= 1, "the silent reader was never closed"
        eve.close()
    finally:
        members.close()
        app.stop()


def _small_buffer_upgrade(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_under_saturating_load_exits_promptly(backend: str, tmp_path: Path) -> None:
    """A client that writes as fast as it can and reads everything it is sent (honest,
    if greedy): SIGTERM still ends ``serve`` within seconds."""
    server = Command(tmp_path, "serve", "--backend", backend, "serve", "--port", "0")
    frame = masked_text(json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode())
    burst = frame * (65536 // len(frame))
    greedy = upgrade(server.port, "/ws/?user=greedy&channels=solo")
    stop = threading.Event()

    def write() -> None:
        with suppress(OSError):
            while not stop.is_set():
                greedy.sendall(burst)

    def read() -> None:
        with suppress(OSError):
            while not stop.is_set() and greedy.recv(65536):
                pass

    threads = [threading.Thread(target=f, daemon=True) for f in (write, read)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        start = time.monotonic()
        server.stop()  # SIGTERM, and wait (at most 15 s)
        took = time.monotonic() - start
    finally:
        stop.set()
        greedy.close()
        for thread in threads:
            thread.join(5)
    assert took < 8, f"serve took {took:.1f} s to exit after SIGTERM"
