"""The channel streams against a model that keeps every publication forever.

Properties, over any sequence of holds, releases, publications, resets, clock
moves and recoveries from any position ever seen:

- offsets are contiguous: a stream's publications are 1, 2, 3... within an epoch;
- the epoch changes exactly when history is lost (the stream was forgotten or
  reset), and an epoch never comes back;
- a recovery returns exactly the publications after the position (without those
  the session was excluded from), in order, or says it cannot, and then with a
  reason that holds (another epoch, too many missed, or the missed ones expired);
- the counted history bytes equal what is kept;
- a position check compares with the last position sent to clients: the hub's when the
  hub numbered one since the stream's last loss, else the stream's own; a hub position is
  "again" at or before the last one of its epoch, a "gap" after a skip or a new epoch.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from megapresence_core._streams import Streams
from megapresence_core._values import StreamPosition
from megapresence_core.config import HistoryConfig

CHANNELS = ("a", "b")
SESSIONS = ("s1", "s2", "s3")


class StreamModel(RuleBasedStateMachine):
    @initialize(
        size=st.integers(1, 6), ttl=st.sampled_from([1.0, 5.0, 50.0]), cap=st.integers(1, 8)
    )
    def start(self, size: int, ttl: float, cap: int) -> None:
        self.config = HistoryConfig(boot_id="boot", size=size, ttl=ttl, max_recovery=cap)
        self.streams = Streams(self.config)
        self.now = 0.0
        #: channel -> its current epoch's publications: (offset, time, text, excluded).
        self.published: dict[str, list[tuple[int, float, str, frozenset[str]]]] = {}
        self.epoch: dict[str, str] = {}
        self.holders: dict[str, set[str]] = {}
        self.seen_epochs: set[str] = set()
        #: Channels whose position was sent since their last reset (or start).
        self.shown: set[str] = set()
        #: Every position a client could hold: (channel, offset, epoch).
        self.positions: list[tuple[str, int, str]] = [("a", 0, "elsewhere.1")]
        #: channel -> the last hub position its clients were sent (since its last loss).
        self.seen: dict[str, StreamPosition] = {}

    def _observe(self, channel: str) -> None:
        """The stream exists: its epoch is the one we know, or new (and then never seen)."""
        position = self.streams.position(channel)
        assert position is not None
        known = self.epoch.get(channel)
        if known is None:
            assert position.epoch not in self.seen_epochs, "an epoch came back"
            assert position.offset == 0
            self.seen_epochs.add(position.epoch)
            self.epoch[channel] = position.epoch
            self.published[channel] = []
        else:
            assert position.epoch == known, "the epoch changed without a loss"
        self.positions.append((channel, position.offset, position.epoch))

    @rule(channel=st.sampled_from(CHANNELS), session=st.sampled_from(SESSIONS))
    def hold(self, channel: str, session: str) -> None:
        self.streams.hold(channel, session)
        self.holders.setdefault(channel, set()).add(session)
        self._observe(channel)

    @rule(channel=st.sampled_from(CHANNELS), session=st.sampled_from(SESSIONS))
    def release(self, channel: str, session: str) -> None:
        self.streams.release(channel, session)
        holders = self.holders.get(channel, set())
        holders.discard(session)
        if not holders:  # forgotten: its history is lost
            self.holders.pop(channel, None)
            self.epoch.pop(channel, None)
            self.shown.discard(channel)
            self.seen.pop(channel, None)
            assert self.streams.position(channel) is None

    @rule(channel=st.sampled_from(CHANNELS))
    def tell(self, channel: str) -> None:
        if channel in self.holders:
            assert self.streams.tell(channel) == self.streams.position(channel)
            self.shown.add(channel)
            self.seen.pop(channel, None)  # the client holds this process's position now

    @rule()
    def reset(self) -> None:
        told = dict(self.streams.reset())
        # Only a position of this process's that someone may hold needs telling; an
        # owner's (seen) is kept: the owner's next one says what was missed.
        assert set(told) == self.shown - set(self.seen)
        for channel in self.holders:  # but every stream starts again
            self.epoch.pop(channel)
            self._observe(channel)
            assert told.get(channel, self.streams.position(channel)) == (
                self.streams.position(channel)
            )

    @rule(
        channel=st.sampled_from(CHANNELS),
        offset=st.integers(0, 9),
        epoch=st.sampled_from(["hub.1", "hub.2"]),
    )
    def saw(self, channel: str, offset: int, epoch: str) -> None:
        position = StreamPosition(offset=offset, epoch=epoch)
        seen = self.streams.saw(channel, position)
        if channel not in self.holders:
            assert seen == "next"  # nobody here to tell
            return
        shown = channel in self.shown
        self.shown.add(channel)
        last = self.seen.get(channel)
        if last is not None and last.epoch == epoch and offset <= last.offset:
            assert seen == "again"  # sent already: the last one stays
            return
        # With none seen, they hold this process's position, if one was sent.
        follows = not shown if last is None else last.epoch == epoch and offset == last.offset + 1
        assert seen == ("next" if follows else "gap")
        self.seen[channel] = position

    @rule(
        channel=st.sampled_from(CHANNELS),
        offset=st.integers(0, 9),
        epoch=st.sampled_from(["hub.1", "hub.2"]),
    )
    def moved(self, channel: str, offset: int, epoch: str) -> None:
        position = StreamPosition(offset=offset, epoch=epoch)
        moved = self.streams.moved(channel, position)
        if channel not in self.holders:
            assert moved is False  # nobody here to tell
            return
        last = self.seen.get(channel)
        again = last is not None and last.epoch == epoch and offset <= last.offset
        assert moved == (channel in self.shown and not again)
        if not again:
            self.seen[channel] = position

    @rule(channel=st.sampled_from(CHANNELS))
    def reached(self, channel: str) -> None:
        if channel in self.holders:
            own = StreamPosition(offset=len(self.published[channel]), epoch=self.epoch[channel])
            assert self.streams.reached(channel) == self.seen.get(channel, own)

    @rule(step=st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0]))
    def tick(self, step: float) -> None:
        self.now += step
        self.streams.clock(self.now)
        self.streams.clock(self.now - 1)  # the clock never goes back

    @rule(
        channel=st.sampled_from(CHANNELS),
        excluded=st.frozensets(st.sampled_from(SESSIONS), max_size=1),
    )
    def publish(self, channel: str, excluded: frozenset[str]) -> None:
        text = self.streams.append(
            channel, excluded, lambda p: "none" if p is None else f"{p.offset}@{p.epoch}"
        )
        if channel not in self.holders:
            assert text == "none"
            return
        history = self.published[channel]
        offset = len(history) + 1  # contiguous
        assert text == f"{offset}@{self.epoch[channel]}"
        history.append((offset, self.now, text, excluded))
        self.shown.add(channel)
        self.positions.append((channel, offset, self.epoch[channel]))

    @precondition(lambda self: self.holders)
    @rule(data=st.data(), session=st.sampled_from(SESSIONS))
    def recover(self, data: Any, session: str) -> None:
        channel = data.draw(st.sampled_from(sorted(self.holders)))
        _, offset, epoch = data.draw(st.sampled_from(self.positions))
        got = self.streams.recover(channel, StreamPosition(offset=offset, epoch=epoch), session)
        self.shown.add(channel)
        self.seen.pop(channel, None)  # the client holds this process's position now
        history, config = self.published[channel], self.config
        top = len(history)
        assert got.position == StreamPosition(offset=top, epoch=self.epoch[channel])
        reasons = set()
        if epoch != self.epoch[channel] or offset > top:
            reasons.add("epoch")
        else:
            missed = history[offset:]
            if len(missed) > config.max_recovery or len(missed) > config.size:
                reasons.add("too_many")
            if any(at <= self.now - config.ttl for _o, at, _t, _e in missed):
                reasons.add("expired")
        if not reasons:
            assert got.reason is None
            assert got.texts == [text for _o, _a, text, ex in history[offset:] if session not in ex]
        else:
            assert got.reason in reasons
            assert got.texts == []

    @invariant()
    def checks(self) -> None:
        if hasattr(self, "streams"):
            self.streams.check()
            assert set(self.streams.streams()) == set(self.holders)


StreamModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestStreams = StreamModel.TestCase
