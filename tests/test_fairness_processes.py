"""``megapresence serve`` as a process under the attacks of issue 17, items 6 and 10.

A socket writing small frames at line rate beside a client whose round trip is
measured, on both backends; and a server out of file descriptors, which says so
(one warning per interval, a metric) and serves again once they come back.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .hostile import flooding, masked, upgraded
from .process_helpers import Command, eventually, worst_round_trip

BACKENDS = ["asyncio", "trio"]
#: A small valid command, which the server must read and answer.
METADATA = masked(0x81, json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode())


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
        attacker = upgraded(server.port, "/ws/?user=mallory&channels=solo")
        with (
            connect(f"ws://127.0.0.1:{server.port}/ws/?user=bob", open_timeout=10) as bob,
            flooding(attacker, METADATA),
        ):
            time.sleep(0.5)  # the flood is on
            worst = worst_round_trip(bob, 3)
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
        eve = upgraded(app.port, "/ws/?user=eve", receive_buffer=4096)
        subscribe = json.dumps({"op": "subscribe", "channel": "big", "presence": "users"})
        eve.sendall(masked(0x81, subscribe.encode()))
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_under_saturating_load_exits_promptly(backend: str, tmp_path: Path) -> None:
    """A client that writes as fast as it can and reads everything it is sent (honest,
    if greedy): SIGTERM still ends ``serve`` within seconds."""
    server = Command(tmp_path, "serve", "--backend", backend, "serve", "--port", "0")
    greedy = upgraded(server.port, "/ws/?user=greedy&channels=solo")
    with flooding(greedy, METADATA, read=True):
        time.sleep(1.5)
        start = time.monotonic()
        server.stop()  # SIGTERM, and wait (at most 15 s)
        took = time.monotonic() - start
    assert took < 8, f"serve took {took:.1f} s to exit after SIGTERM"
