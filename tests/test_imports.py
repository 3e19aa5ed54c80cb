"""The core stays pure, and its public surface is deliberate."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import megapresence_core

CORE = pathlib.Path(megapresence_core.__file__).parent
FORBIDDEN = {
    "socket",
    "select",
    "selectors",
    "asyncio",
    "trio",
    "anyio",
    "threading",
    "time",
    "ssl",
    "subprocess",
    "multiprocessing",
    "os",
    "io",
    "logging.handlers",
    "signal",
    "datetime",
    "megapresence_anyio",
    "megapresence_nats",
    "megapresence_redis",
    "uuid",
    "secrets",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_core_sources_import_nothing_that_does_io() -> None:
    offenders = {}
    for path in sorted(CORE.glob("*.py")):
        bad = {m for m in imported_modules(path) if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_importing_the_core_loads_no_io_module() -> None:
    # The transitive check: what a fresh interpreter loads for the core beyond
    # its one dependency (attrs itself loads threading for its own use).
    probe = (
        "import sys, attrs; before = set(sys.modules); import megapresence_core; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert (
        loaded
        & {
            "socket",
            "select",
            "selectors",
            "asyncio",
            "trio",
            "anyio",
            "threading",
            "ssl",
            "logging.handlers",
        }
        == set()
    )


def test_checker_would_notice_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n", encoding="utf-8")
    assert imported_modules(bad) == {"asyncio", "time"}


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(megapresence_core) if not name.startswith("_")}
    assert set(megapresence_core.__all__) == public
    assert len(megapresence_core.__all__) == len(set(megapresence_core.__all__))
    for name in megapresence_core.__all__:
        assert getattr(megapresence_core, name) is not None


def test_the_package_is_typed() -> None:
    assert (CORE / "py.typed").is_file()
