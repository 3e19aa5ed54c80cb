"""Runs a harness under atheris (coverage-guided), instrumenting megapresence_core."""

from __future__ import annotations

from collections.abc import Callable


def fuzz(test_one_input: Callable[[bytes], None], argv: list[str]) -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
