#!/usr/bin/env python3
"""Set up and run megapresence from a fresh clone: ``python3 dev.py serve|test|bench``.

Creates ``.venv`` on first use (and again whenever pyproject.toml changes),
installs the project into it in editable mode, then runs the command there.
Needs only Python 3.11+.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

CHECKED = ["src", "tests", "examples", "fuzz", "benchmarks", "dev.py"]
TEST_STEPS = [
    ["ruff", "check", *CHECKED],
    ["ruff", "format", "--check", *CHECKED],
    ["mypy"],
    ["coverage", "erase"],
    ["coverage", "run", "-m", "pytest"],
    ["coverage", "report"],
    ["python", "fuzz/run.py", "--seconds", "6"],  # the fuzz smoke: every target, 6 s each
]


def ensure_venv(extras: str) -> None:
    """Create the venv and install the project with ``extras``, unless already done."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"megapresence needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating {VENV.name}/ ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extras}]" if extras else "."
    print(
        f"installing megapresence{f'[{extras}]' if extras else ''} into {VENV.name}/ ...",
        flush=True,
    )
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp.write_text(digest)


def run(command: list[str]) -> int:
    print("$", " ".join(command), flush=True)
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    task = argv[0] if argv else ""
    if task == "serve":
        ensure_venv("trio")
        return subprocess.run([str(BIN / "megapresence"), "serve", *argv[1:]], cwd=ROOT).returncode
    if task == "bench":
        ensure_venv("bench")
        return subprocess.run(
            [str(PYTHON), str(ROOT / "benchmarks" / "run.py"), *argv[1:]], cwd=ROOT
        ).returncode
    if task == "test":
        ensure_venv("test")
        for step in TEST_STEPS:
            if step[0] == "coverage" and step[1] == "run":
                step = [*step, *argv[1:]]
            code = run(step)
            if code != 0:
                return code
        return 0
    print(__doc__.strip())
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
