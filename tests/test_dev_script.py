"""``python3 dev.py serve``: flags reach the server, signals reach it, its exit code comes back."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevServe:
    """``dev.py serve ...`` as a developer starts it (no terminal: signals are passed on)."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "dev.py"), "serve", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        for line in self.process.stdout:  # "installing ..." first, if the venv needed it
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                return
        raise AssertionError(f"no banner; exit {self.process.wait()}; log: {log.read_text()}")

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_dev_py_stops_the_server_and_frees_the_port(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # The global flags after the command: dev.py passes them on as they are.
    serve = DevServe(
        tmp_path / "serve.log", "--port", "0", "--backend", "trio", "--log-format", "json"
    )
    assert not port_is_free(serve.port)
    assert serve.stop(sig) == 0  # the server's own code, after its drain
    assert port_is_free(serve.port)
    # The log holds the server's JSON lines, and pip's when dev.py had to reinstall first.
    lines = [json.loads(line) for line in serve.log.read_text().splitlines() if line[:1] == "{"]
    events = {line["event"]: line for line in lines if "event" in line}
    assert events["server.listening"]["backend"] == "trio"
    assert events["shutdown.started"]["signal"] == sig.name


def test_dev_py_exits_with_the_command_s_code() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "dev.py"), "serve", "--port", "70000"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is not a port number" in result.stderr


def test_the_test_extra_covers_serve_so_serve_after_test_installs_nothing() -> None:
    dev = load_dev()
    assert dev._requirements({"trio"}) <= dev._requirements({"test"})
    assert not dev._requirements({"bench"}) <= dev._requirements({"test"})
