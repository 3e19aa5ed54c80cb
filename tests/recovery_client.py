"""A recovering client's view of one channel of numbered messages, and the check of a run.

``StreamReader`` is the client's side of recovery as docs/protocol.md states it (and the
JavaScript client does it): it keeps its position, holds live messages while a subscribe
with ``since`` is unanswered (dropped when the recovery brings them again), and notes every
stretch it was told may be missing (``recovered: false``, ``stream.reset``). ``EventReader``
notes the same from the events of ``megapresence_client``, which does that work itself.
``check`` then counts, over every reader, the silent gaps (a number missing outside every
told stretch), the duplicates and the messages out of order: all must be zero.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from megapresence_client import ChannelMessage, Event, StreamMissed, StreamReset, Subscribed


class Told:
    """The numbers a subscriber holds, and the stretches it was told may be missing."""

    def __init__(self) -> None:
        self.numbers: list[int] = []
        #: (last number held, first number after): a stretch it was told may be missing.
        self.stretches: list[tuple[int, float]] = []
        self.recovered = 0
        self.not_recovered: dict[str, int] = {}
        #: ``stream.missed`` answers to its position checks.
        self.missed = 0
        self.subscribed = False
        self._told = False

    def last(self) -> int:
        return self.numbers[-1] if self.numbers else 0

    def open_stretch(self) -> bool:
        return self._told

    def _tell(self, reason: str) -> None:
        self.not_recovered[reason] = self.not_recovered.get(reason, 0) + 1
        if not self._told:
            self._told = True
            self.stretches.append((self.last(), math.inf))

    def _note(self, number: int) -> None:
        if self._told:
            self._told = False
            self.stretches[-1] = (self.stretches[-1][0], number)
        self.numbers.append(number)


class EventReader(Told):
    """A subscriber on ``megapresence_client``: it holds, merges and de-duplicates by
    itself; this notes what it delivered and what it was told."""

    def event(self, event: Event) -> None:
        if isinstance(event, Subscribed):
            self.subscribed = True
            if event.recovered is True:
                self.recovered += 1
            elif event.recovered is False:
                self._tell(event.reason or "unknown")
        elif isinstance(event, StreamReset):
            self._tell("reset")
        elif isinstance(event, StreamMissed):
            self.missed += 1
        elif isinstance(event, ChannelMessage) and event.type == "n":
            self._note(event.payload)


class StreamReader(Told):
    def __init__(self) -> None:
        super().__init__()
        self.position: dict[str, Any] | None = None
        #: Channel messages that came while a subscribe with ``since`` was unanswered.
        self._held: list[dict[str, Any]] | None = None
        #: A ``stream.missed`` asked it to subscribe again with ``since`` (not yet sent).
        self.resubscribe = False

    def subscribe(self) -> dict[str, Any]:
        """The subscribe command to send now (with ``since`` once there is a position)."""
        command: dict[str, Any] = {"op": "subscribe", "channel": "seq"}
        if self.position is not None:
            command["since"] = dict(self.position)
            self._held = []
        return command

    def dropped(self) -> None:
        """The connection is gone: an unanswered subscribe is asked again from the same place."""
        self._held = None

    def receive(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribed":
            held, self._held = self._held or [], None
            if message.get("recovered") is True:
                self.recovered += 1  # the position stays: the missed ones move it
            else:
                if "recovered" in message:
                    self._tell(message["reason"])
                for live in held:
                    self._apply(live)
                self.position = {"offset": message["offset"], "epoch": message["epoch"]}
            self.subscribed = True
        elif kind == "stream.reset":
            self._tell("reset")
            self.position = {"offset": message["offset"], "epoch": message["epoch"]}
        elif kind == "stream.missed":
            self.missed += 1
            here = self.position
            caught_up = (
                here is not None
                and here["epoch"] == message["epoch"]
                and here["offset"] >= message["offset"]
            )
            # Asked nothing while a subscribe is unanswered: its answer brings the position.
            self.resubscribe = self.resubscribe or (self._held is None and not caught_up)
        elif kind == "n":
            if self._held is not None:
                self._held.append(message)
            else:
                self._apply(message)

    def _apply(self, message: dict[str, Any]) -> None:
        self._note(message["payload"])
        self.position = {"offset": message["offset"], "epoch": message["epoch"]}


def check(
    readers: Sequence[Told], confirmed: list[int], uncertain: Sequence[int] = ()
) -> dict[str, Any]:
    """The figures of a run: silent gaps, duplicates and reorderings must all be 0."""
    published = set(confirmed)
    figures: dict[str, Any] = {
        "published": len(confirmed),
        "uncertain": len(uncertain),
        "silent_gaps": 0,
        "duplicates": 0,
        "out_of_order": 0,
        "made_up": 0,
        "told_missing": 0,
        "held": 0,
        "recovered": 0,
        "not_recovered": {},
        "stream_missed": 0,
    }
    for reader in readers:
        held = reader.numbers
        have = set(held)
        figures["held"] += len(held)
        figures["duplicates"] += len(held) - len(have)
        figures["out_of_order"] += sum(1 for a, b in itertools.pairwise(held) if b <= a)
        figures["made_up"] += len(have - published - set(uncertain))
        figures["recovered"] += reader.recovered
        figures["stream_missed"] += reader.missed
        for reason, count in reader.not_recovered.items():
            figures["not_recovered"][reason] = figures["not_recovered"].get(reason, 0) + count
        for n in confirmed:
            if n in have:
                continue
            if any(low < n < high for low, high in reader.stretches):
                figures["told_missing"] += 1
            else:
                figures["silent_gaps"] += 1
    return figures
