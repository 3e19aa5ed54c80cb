"""A client that sends its upgrade and its first frame in one write, against each server.

Hypercorn 0.18's trio worker stops serving after one such request (its own bug:
an h11 ``LocalProtocolError`` ends the worker; reproduced without megapresence,
docs/asgi.md). The workarounds the documentation gives are what is checked here:
Hypercorn's asyncio worker and uvicorn answer the request and go on serving, and
``megapresence serve --backend trio`` (its own listener) upgrades the socket and
reads the frame.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .asgi_process import ROOT
from .process_helpers import Command
from .servers import free_port, wait_for_port

FRAME_BODY = b'{"op":"roster"}'
#: A masked text frame (the zero mask leaves the body as it is).
FRAME = bytes([0x81, 0x80 | len(FRAME_BODY)]) + b"\0\0\0\0" + FRAME_BODY


def upgrade_with_a_frame(port: int, query: str = "", cookie: str = "") -> bytes:
    """Send the upgrade and a frame in one write; return what arrives within 3 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"GET /ws/chat{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\n{cookie}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            + FRAME
        )
        sock.settimeout(3)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b'"type":"roster"' in answer:
                    break
        except TimeoutError:
            pass
        return answer


def healthz(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(64)


@pytest.mark.parametrize(
    "command",
    [
        ["hypercorn", "--worker-class", "asyncio", "--bind", "127.0.0.1:{port}"],
        ["uvicorn", "--port", "{port}"],
    ],
    ids=["hypercorn-asyncio", "uvicorn"],
)
def test_the_asgi_servers_of_the_workaround_keep_serving(
    tmp_path: Path, command: list[str]
) -> None:
    port = free_port()
    with (tmp_path / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", *(a.format(port=port) for a in command)),
                "tests.asgi_apps:starlette_app",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=30)
        upgrade_with_a_frame(port, cookie="Cookie: sid=t-ann\r\n")
        for _ in range(3):  # the worker is still there, for this request and the next
            assert healthz(port).startswith(b"HTTP/1.1 200")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_upgrades_and_reads_a_frame_sent_with_the_request(
    tmp_path: Path, backend: str
) -> None:
    server = Command(tmp_path, "serve", "--backend", backend, "serve", "--port", "0")
    try:
        answer = upgrade_with_a_frame(server.port, query="?user=ann")
        assert answer.startswith(b"HTTP/1.1 101")
        assert b'"type":"roster"' in answer
        assert healthz(server.port).startswith(b"HTTP/1.1 200")
    finally:
        assert server.stop() == 0
