#!/usr/bin/env python3
"""Set up and run megapresence from a fresh clone: ``python3 dev.py serve|test|bench``.

Creates ``.venv`` on first use (and again whenever pyproject.toml changes),
installs the project into it in editable mode, then runs the command there.
Needs only Python 3.11+. ``serve`` passes its flags on to ``megapresence serve``
(``python3 dev.py serve --backend trio --port 8001``); ``test`` passes them to pytest.

SIGTERM and SIGINT sent to dev.py reach the command it runs, and dev.py exits
with that command's code (128 + N when signal N ended it).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tomllib
import venv
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".installed.json"

CHECKED = ["src", "tests", "examples", "fuzz", "benchmarks", "docs", "dev.py"]
TEST_STEPS = [
    ["ruff", "check", *CHECKED],
    ["ruff", "format", "--check", *CHECKED],
    ["mypy"],
    ["coverage", "erase"],
    ["coverage", "run", "-m", "pytest"],
    ["coverage", "report"],
    ["python", "fuzz/run.py", "--seconds", "6"],  # the fuzz smoke: every target, 6 s each
]
FORWARDED = (signal.SIGTERM, signal.SIGINT)


def _requirements(extras: set[str]) -> set[str]:
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    return {requirement for extra in extras for requirement in optional[extra]}


def ensure_venv(extra: str) -> None:
    """Create the venv and install the project with ``extra``, unless that is done.

    An extra whose requirements an installed one already covers (``trio`` after
    ``test``) installs nothing more, so ``serve`` after ``test`` starts at once.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"megapresence needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    installed: set[str] = set()
    if STAMP.is_file() and PYTHON.exists():
        stamp = json.loads(STAMP.read_text())
        if stamp["pyproject"] == digest:
            installed = set(stamp["extras"])
            if _requirements({extra}) <= _requirements(installed):
                return
    if not PYTHON.exists():
        print(f"creating {VENV.name}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    extras = sorted(installed | {extra})
    target = f".[{','.join(extras)}]"
    print(f"installing megapresence{target[1:]} into {VENV.name}/ ...", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    STAMP.write_text(json.dumps({"pyproject": digest, "extras": extras}))


class Child:
    """Runs one command at a time, in dev.py's process group, and passes signals on.

    Ctrl-C in a terminal reaches every process of the foreground group, the
    command too, so there SIGINT is not sent a second time; SIGTERM, which a
    terminal never sends, always is, and so is SIGINT from anywhere else.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.stopped_by: int | None = None  # a signal came: start nothing more
        self.pending: int | None = None  # ... while the command was being started
        self.terminal_sends_sigint = _in_terminal_foreground()
        for signum in FORWARDED:
            signal.signal(signum, self._forward)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopped_by = signum
        if self.process is None:
            self.pending = signum
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        assert self.process is not None
        if not (signum == signal.SIGINT and self.terminal_sends_sigint):
            self.process.send_signal(signum)

    def run(self, command: list[str]) -> int:
        if self.stopped_by is not None:
            return 128 + self.stopped_by
        self.process = subprocess.Popen(command, cwd=ROOT)
        if self.pending is not None:
            self._send(self.pending)
            self.pending = None
        code = self.process.wait()
        self.process = None
        return 128 - code if code < 0 else code


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # no terminal on stdin (CI, a pipe, a closed stdin)
        return False


def main(argv: list[str]) -> int:
    task = argv[0] if argv else ""
    child = Child()
    if task == "serve":
        ensure_venv("trio")
        return child.run([str(BIN / "megapresence"), "serve", *argv[1:]])
    if task == "bench":
        ensure_venv("bench")
        return child.run([str(PYTHON), str(ROOT / "benchmarks" / "run.py"), *argv[1:]])
    if task == "test":
        ensure_venv("test")
        for step in TEST_STEPS:
            if step[0] == "coverage" and step[1] == "run":
                step = [*step, *argv[1:]]
            print("$", " ".join(step), flush=True)
            code = child.run([str(BIN / step[0]), *step[1:]])
            if code != 0:
                return code
        return 0
    print(__doc__.strip())
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
