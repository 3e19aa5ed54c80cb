"""Turns fuzzer bytes into choices, without depending on atheris (tests replay with it too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class ByteReader:
    """Reads small decisions from a byte string; past the end every read is zero."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def below(self, bound: int) -> int:
        return self.byte() % bound

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def chunk(self, limit: int = 64) -> bytes:
        size = self.below(limit + 1)
        piece = self.data[self.pos : self.pos + size]
        self.pos += size
        return piece

    def text(self, limit: int = 16) -> str:
        return self.chunk(limit).decode("utf-8", "replace")
