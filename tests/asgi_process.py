"""Run an ASGI app of ``asgi_apps.py`` under uvicorn (asyncio) or Hypercorn (trio), as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .process_helpers import stop_process
from .servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]

#: What ``examples/fastapi_chat.py`` reads from the environment: its cookie key.
CHAT_ENV = {"CHAT_SECRET": "example-cookie-key-" + "k" * 32}

#: The ASGI servers the adapter is tested on, each with the event loop it runs.
SERVERS = {
    "uvicorn": lambda app, port: [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--log-level",
        "info",
    ],
    "hypercorn-trio": lambda app, port: [
        sys.executable,
        "-m",
        "hypercorn",
        "--worker-class",
        "trio",
        "--bind",
        f"127.0.0.1:{port}",
        app,
    ],
}


@contextmanager
def asgi_server(
    server: str, app: str, log_dir: Path, **env: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``app`` (``module:attribute``) served by ``server`` on a free loopback port."""
    port = free_port()
    log = log_dir / f"{server}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            SERVERS[server](app, port),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        try:
            wait_for_port(port, timeout=30)
        except OSError:
            raise AssertionError(f"{server} did not start: {log.read_text()}") from None
        yield port, process
    finally:
        stop_process(process, signal.SIGINT, 15)
