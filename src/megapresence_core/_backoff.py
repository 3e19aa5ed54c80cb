"""Exponential backoff with full jitter, drawn from a seeded RNG.

Full jitter (a uniform draw in ``[0, ceiling]``) spreads a herd of bridges
reconnecting to a restarted hub over the whole window instead of at its edge.
The RNG is seeded and owned here, so a replay draws the same delays.
"""

from __future__ import annotations

import random
from typing import final

__all__ = ["Backoff"]


@final
class Backoff:
    __slots__ = ("_attempt", "_initial", "_maximum", "_multiplier", "_rng")

    def __init__(self, *, initial: float, maximum: float, multiplier: float, seed: int) -> None:
        self._initial = initial
        self._maximum = maximum
        self._multiplier = multiplier
        self._rng = random.Random(seed)
        self._attempt = 0

    @property
    def ceiling(self) -> float:
        """The largest delay the next draw can give."""
        return min(self._maximum, self._initial * self._multiplier**self._attempt)

    def next_delay(self) -> float:
        ceiling = self.ceiling
        if ceiling < self._maximum:  # past the cap the exponent no longer matters
            self._attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Start again from the initial ceiling, after a link that worked."""
        self._attempt = 0
