"""What a user installs: the sdist and the wheel, built here and used as a user would.

The wheel goes into a fresh virtual environment WITHOUT extras, where
``megapresence serve`` and ``megapresence hub`` must start and talk to a client
written with the standard library alone; the sdist must hold every tracked file
and run its own tests unpacked. Both are built once per run (``python -m build``
without isolation, from the test extra's setuptools); pip's cache makes the
install of the dependencies quick after the first time.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import megapresence_anyio
import megapresence_client
import megapresence_core
import megapresence_nats
import megapresence_redis

from .process_helpers import TOKEN, Command, eventually

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PACKAGES = {
    megapresence_core: (),
    # prometheus_client, imported when /metrics is asked; trio, when running on trio;
    # jwt, by serve --auth jwt.
    megapresence_anyio: ("metrics", "trio", "jwt"),
    megapresence_nats: ("nats",),
    megapresence_redis: ("redis",),
    megapresence_client: (),  # the Python client: the base dependencies only (wsproto, anyio)
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        normalized(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        for requirement in requirements
    }


def imported_top_levels(package: Path) -> set[str]:
    """Every absolute import of the package's modules, at any depth (lazy ones too)."""
    found: set[str] = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_package_has_the_one_version() -> None:
    versions = {package.__name__: package.__version__ for package in PACKAGES}
    assert set(versions.values()) == {importlib.metadata.version("megapresence")}


def test_every_third_party_import_is_declared_in_the_package_s_requirements() -> None:
    distributions = importlib.metadata.packages_distributions()
    base = requirement_names(PYPROJECT["dependencies"])
    undeclared = {}
    for package, extras in PACKAGES.items():
        allowed = base | requirement_names(
            [r for extra in extras for r in PYPROJECT["optional-dependencies"][extra]]
        )
        for module in imported_top_levels(Path(package.__file__).parent):
            if module in sys.stdlib_module_names or module.startswith("megapresence_"):
                continue
            owners = {normalized(d) for d in distributions.get(module, [module])}
            if not owners & allowed:
                undeclared[f"{package.__name__} imports {module}"] = sorted(owners)
    assert undeclared == {}
    assert imported_top_levels(Path(megapresence_core.__file__).parent) - set(
        sys.stdlib_module_names
    ) <= {"attrs", "megapresence_core"}  # the core needs attrs only


def test_the_metadata_says_what_a_user_looks_for() -> None:
    assert PYPROJECT["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    assert {"Homepage", "Source", "Issues", "Changelog"} <= set(PYPROJECT["urls"])
    assert "Typing :: Typed" in PYPROJECT["classifiers"]
    assert PYPROJECT["scripts"] == {"megapresence": "megapresence_anyio._cli:main"}


# ---------------------------------------------------------------- the builds


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it (``python -m build``'s default)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def only(directory: Path, pattern: str) -> Path:
    (path,) = directory.glob(pattern)
    return path


def test_the_sdist_holds_every_tracked_file(dist: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        if os.environ.get("CI"):
            raise AssertionError("CI runs from a git clone with git installed")
        pytest.skip("needs a git checkout to know the tracked files")
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    with tarfile.open(only(dist, "*.tar.gz")) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert sorted(set(tracked) - names) == []
    assert not any("__pycache__" in name or name.startswith(".venv") for name in names)


@pytest.fixture(scope="module")
def unpacked(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("sdist")
    with tarfile.open(only(dist, "*.tar.gz")) as archive:
        archive.extractall(target, filter="data")
    return only(target, "megapresence-*")


def test_the_unpacked_sdist_runs_its_own_tests_on_its_own_sources(unpacked: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(unpacked / p) for p in ("src", "src/shims")),
    }
    probe = "import megapresence_core, megapresence_anyio; print(megapresence_anyio.__file__)"
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert Path(where.strip()).is_relative_to(unpacked)
    pytest_in_sdist = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run(
        [*pytest_in_sdist, "--collect-only"], cwd=unpacked, env=env, capture_output=True, text=True
    )
    assert collected.returncode == 0, collected.stdout[-3000:]
    assert re.search(r"^\d{3,} tests collected", collected.stdout, re.MULTILINE)
    ran = subprocess.run(
        [
            *pytest_in_sdist,
            "tests/test_imports.py",
            "tests/test_helpers.py",
            "tests/test_sim.py",
            "tests/test_fuzz_targets.py",
            "tests/test_readme.py",
        ],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert " passed" in ran.stdout
    assert " skipped" not in ran.stdout


# ------------------------------------------------- the wheel, without extras


@pytest.fixture(scope="module")
def bare_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its declared dependencies, nothing else."""
    home = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=False).create(home)  # pip from outside installs into it
    python, wheel = home / "bin" / "python", str(only(dist, "*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", wheel],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home


def test_the_bare_install_has_no_extra(bare_venv: Path) -> None:
    probe = (
        "import importlib.util as u, megapresence_client, megapresence_anyio as m; "
        "print(m.__file__, [n for n in ('trio', 'nats', 'redis') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [str(bare_venv / "bin" / "python"), "-c", probe],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert Path(out[0]).is_relative_to(bare_venv)
    assert out[1:] == ["[]"]


class StdlibWebSocket:
    """The smallest WebSocket client: the standard library, text frames, no extensions."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status = self.reader.readline()
        assert status.startswith(b"HTTP/1.1 101"), status
        answer = {}
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            answer[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
        assert answer["sec-websocket-accept"] == accept

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        assert len(payload) < 65536
        size = (
            bytes((0x80 | len(payload),))
            if len(payload) < 126
            else struct.pack("!BH", 0xFE, len(payload))
        )
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def recv(self) -> dict[str, Any]:
        """The next message, a whole JSON text frame (what both servers send)."""
        first, second = self.reader.read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self.reader.read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self.reader.read(8))
        assert first == 0x81, f"expected a whole text frame, got {first:#x}"
        message: dict[str, Any] = json.loads(self.reader.read(size))
        return message

    def recv_type(self, kind: str) -> dict[str, Any]:
        while (message := self.recv())["type"] != kind:
            pass
        return message

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def installed(bare_venv: Path, tmp_path: Path) -> Iterator[tuple[Command, Command]]:
    program = [str(bare_venv / "bin" / "megapresence")]
    hub = Command(tmp_path, "hub", "hub", "--port", "0", program=program)
    hub_url = f"ws://127.0.0.1:{hub.port}/"
    serve = Command(
        tmp_path,
        "serve",
        "serve",
        "--port",
        "0",
        "--hub",
        hub_url,
        "--bridge-id",
        "smoke",
        program=program,
    )
    yield hub, serve
    assert serve.stop() == 0
    assert hub.stop() == 0


def test_the_wheel_without_extras_runs_serve_and_hub(
    bare_venv: Path, installed: tuple[Command, Command]
) -> None:
    hub, serve = installed
    version = subprocess.run(
        [str(bare_venv / "bin" / "megapresence"), "--version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert version == f"megapresence {megapresence_core.__version__}\n"

    client = StdlibWebSocket(serve.port, "/ws/chat?user=ann")
    assert client.recv()["type"] == "welcome"
    client.send(json.dumps({"op": "roster"}))
    assert "ann" in json.dumps(client.recv_type("roster")["payload"])
    client.close()
    # The page and the JavaScript client it imports are in the wheel, and served.
    static = ROOT / "src" / "shims" / "megapresence_anyio" / "static"
    for path, name in (("/", "index.html"), ("/megapresence.js", "megapresence.js")):
        with urllib.request.urlopen(f"http://127.0.0.1:{serve.port}{path}", timeout=10) as page:
            assert page.read() == (static / name).read_bytes()

    bridge = StdlibWebSocket(hub.port, "/", {"Authorization": f"Bearer {TOKEN}"})
    register = {"bridgeId": "stdlib", "instanceId": "i", "capabilities": [], "protocol": 1}
    bridge.send(json.dumps({"type": "REGISTER", "payload": register}))
    assert bridge.recv()["type"] == "REGISTERED"
    bridge.close()
    # And the two processes found each other: the server's hub link registered.
    eventually(lambda: "hub.link.registered" in serve.log.read_text(), what="the hub link")
