"""Real Redis and NATS servers for the tests, each on its own free loopback port.

Under CI the binaries must exist (``.ci/run`` installs Debian's ``redis-server``
and ``nats-server``); elsewhere a missing binary skips the test and says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def find_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing under CI: .ci/run must install it")
        pytest.skip(f"needs {name} (Debian: apt-get install {name}); CI installs it")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class Server:
    """A server process that can be killed (-9) and started again on the same port."""

    def __init__(self, name: str, command: list[str], port: int, log: Path) -> None:
        self.name, self.command, self.port, self.log = name, command, port, log
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Server]:
    binary, port = find_binary("redis-server"), free_port()
    server = Server(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        port,
        tmp_path / "redis.log",
    )
    yield server
    server.stop()


def _nats(tmp_path: Path, *options: str) -> Server:
    binary, port = find_binary("nats-server"), free_port()
    command = [binary, "-a", "127.0.0.1", "-p", str(port), *options]
    return Server("nats", command, port, tmp_path / "nats.log")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Server]:
    """NATS with JetStream, its store in ``tmp_path`` (kept across a kill and a start)."""
    server = _nats(tmp_path, "-js", "-sd", str(tmp_path / "jetstream"))
    yield server
    server.stop()


@pytest.fixture
def plain_nats_server(tmp_path: Path) -> Iterator[Server]:
    """NATS without JetStream."""
    server = _nats(tmp_path)
    yield server
    server.stop()
