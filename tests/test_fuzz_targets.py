"""Every fuzz target replays its seed corpus and every saved crash input, without atheris.

This keeps the harnesses working between fuzz runs, and turns each crash the
fuzzer ever found (saved under fuzz/regressions/<target>/) into a regression test.
"""

from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


#: What fuzz/run.py runs: one list for the smoke and for these replays.
TARGETS: tuple[str, ...] = runpy.run_path(str(FUZZ / "run.py"))["TARGETS"]


def inputs() -> list[tuple[str, Path]]:
    found = []
    for target in TARGETS:
        for folder in (FUZZ / "corpus" / target, FUZZ / "regressions" / target):
            if folder.is_dir():
                found += [(target, path) for path in sorted(folder.iterdir()) if path.is_file()]
    return found


@pytest.fixture(scope="module", autouse=True)
def fuzz_on_path() -> None:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))


@pytest.mark.parametrize(("target", "path"), inputs(), ids=lambda v: getattr(v, "name", v))
def test_target_accepts_its_inputs(target: str, path: Path) -> None:
    module = importlib.import_module(f"fuzz_{target}")
    module.test_one_input(path.read_bytes())


def test_every_target_has_seeds() -> None:
    assert {target for target, _ in inputs()} == set(TARGETS)


def test_the_presence_harness_notices_a_broken_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(FUZZ))
    module = importlib.import_module("fuzz_presence")
    from megapresence_core._local import LocalIndexes

    def corrupt(self: LocalIndexes) -> None:
        raise AssertionError("corrupted")

    monkeypatch.setattr(LocalIndexes, "check", corrupt)
    seed = (FUZZ / "corpus" / "presence" / "seed0.bin").read_bytes()
    with pytest.raises(AssertionError, match="corrupted"):
        module.test_one_input(seed)
