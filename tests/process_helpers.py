"""Run ``megapresence`` commands as processes, the way a user would."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection

TOKEN = "process-test-token"


class Command:
    """One ``megapresence`` process; its banner gives the bound port."""

    def __init__(
        self,
        log_dir: Path,
        name: str,
        *args: str,
        program: Sequence[str] = (sys.executable, "-m", "megapresence_anyio"),
    ) -> None:
        self.log = log_dir / f"{name}.log"
        env = {**os.environ, "MEGAPRESENCE_HUB_TOKEN": TOKEN, "MEGAPRESENCE_HUB_TOKENS": TOKEN}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*program, *args],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
        assert self.process.stdout is not None
        banner = self.process.stdout.readline()
        match = re.search(r":(\d+)/", banner)
        assert match, f"no banner from {name}: {banner!r}; log: {self.log.read_text()}"
        self.port = int(match.group(1))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=15)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def stop_process(process: subprocess.Popen[Any], sig: int, timeout: float) -> None:
    """Send ``sig`` to ``process`` if it still runs; past ``timeout`` seconds, kill it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bridge_command(log_dir: Path, name: str, backend: str, hub_url: str, *extra: str) -> Command:
    """``megapresence serve`` on ``backend``, bridged to the hub at ``hub_url`` as ``name``
    (``extra``: more flags of ``serve``)."""
    return Command(
        log_dir,
        name,
        "--backend",
        backend,
        "serve",
        "--port",
        "0",
        "--hub",
        hub_url,
        "--bridge-id",
        name,
        "--channels",
        "lobby",
        *extra,
    )


def eventually(check: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.05)


@contextmanager
def running(*commands: Command) -> Iterator[None]:
    """Stop ``commands`` when the block ends, the last one first."""
    try:
        yield
    finally:
        for command in reversed(commands):
            command.stop()


@contextmanager
def hub_pair(log_dir: Path, backends: tuple[str, str], *extra: str) -> Iterator[tuple[int, int]]:
    """A hub and two ``serve`` bridged to it, ``A`` on ``backends[0]`` and ``B`` on
    ``backends[1]`` (``extra``: more flags of both): the two servers' ports."""
    with ExitStack() as stack:
        hub = Command(log_dir, "hub", "hub", "--port", "0")
        stack.callback(hub.stop)
        hub_url = f"ws://127.0.0.1:{hub.port}/"
        ports = []
        for name, backend in zip("AB", backends, strict=True):
            bridge = bridge_command(log_dir, name, backend, hub_url, *extra)
            stack.callback(bridge.stop)
            ports.append(bridge.port)
        yield ports[0], ports[1]


def worst_round_trip(ws: ClientConnection, seconds: float) -> float:
    """The slowest of the pings ``ws`` gets answered in ``seconds``, one after another."""
    worst = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        assert ws.ping().wait(30), "no pong within 30 s"
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.01)
    return worst
