"""Channel streams: offsets, epochs and a bounded history, so a client recovers what it missed.

Theory of operation. A channel has a stream on this process while some local
session (joined or lingering) is subscribed to it: :meth:`Streams.hold` and
:meth:`Streams.release` follow the sessions, and a stream nobody holds is
forgotten. Every publication delivered here to a held channel gets the
stream's next offset (1, 2, 3...) and is kept as the exact text its
subscribers received, with the time it was kept and the sessions it was not
for (``excludeSelf``). History is trimmed to ``size`` publications on every
append and to ``ttl`` seconds whenever it is read or appended to (lazily: the
size bounds the memory whatever the clock does).

The epoch names one life of a stream: ``<boot id>.<n>``, ``n`` counting the
streams this process has started. It changes exactly when the stream's history
is lost: the process restarted (a new boot id, chosen by the shim), the stream
was forgotten (nobody held it) or reset (:meth:`Streams.reset`: this process may
have missed publications, its hub link or cluster link went down or came
back). So a position ``(offset, epoch)`` means the same publications wherever
it is read, and a recovery is exact or refused:

- another epoch (or an offset the stream never reached): ``epoch``;
- more missed than ``max_recovery``, or fewer kept than missed because of the
  size: ``too_many``;
- the missed ones expired: ``expired``;
- else the missed publications, in offset order (without those the session
  was excluded from).

The core is single-threaded and a recovery is one event, so the publications a
recovery returns and the live ones after it cannot interleave or overlap: the
race other systems close with a buffer and a merge does not exist here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Final, Literal, TypeAlias, final

from ._values import StreamPosition, utf8_len
from .config import HistoryConfig

__all__ = ["RECOVERY_REASONS", "NoStreams", "Recovery", "Seen", "Stream", "Streams"]

#: How a position numbered elsewhere follows the last one sent (``Streams.saw``).
Seen: TypeAlias = Literal["next", "again", "gap"]

#: Why a recovery failed; the client then reloads what it shows from its own store.
RECOVERY_REASONS: Final[dict[str, str]] = {
    "too_many": "more publications were missed than one recovery returns or the history keeps",
    "expired": "the missed publications are older than the history's time to live",
    "epoch": "the stream's history was lost (a restart, a reset, or nobody subscribed here)",
}

#: The bytes an entry costs beside its text's UTF-8 (measured, CPython 3.11): the str's
#: header (49), a tuple of four (72), its offset (28 past 256), the deque's slot (8); its
#: time is mostly shared (one float per event, whatever it publishes).
ENTRY_OVERHEAD: Final = 160
#: The sessions a publication for everyone was not for: one set shared by every such
#: entry (an empty frozenset of its own costs 216 bytes, more than the tuple around it).
_NOBODY: Final[frozenset[str]] = frozenset()


@final
class Stream:
    """One channel's stream: its epoch, its last offset and its recent publications."""

    __slots__ = ("entries", "epoch", "expired", "holders", "seen", "shown", "top", "trimmed")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        #: (offset, kept at, text, sessions it was not for), oldest first, contiguous.
        self.entries: deque[tuple[int, float, str, frozenset[str]]] = deque()
        #: The last offsets dropped for the size and for the time to live.
        self.trimmed = 0
        self.expired = 0
        self.holders: set[str] = set()
        #: A client may hold a position of this epoch: one was sent (``subscribed``, a
        #: recovery, a publication). Only then does a reset need telling.
        self.shown = False
        #: The last position of this channel sent to clients that the hub numbered (None:
        #: this process numbers it): where an in-step client is at most.
        self.seen: StreamPosition | None = None


@final
class Recovery:
    """What a ``since`` gets: the position, whether it recovered, and the texts or the reason."""

    __slots__ = ("position", "reason", "texts")

    def __init__(
        self, position: StreamPosition | None, texts: list[str], reason: str | None
    ) -> None:
        self.position = position
        self.texts = texts
        self.reason = reason


@final
class Streams:
    """The streams of the channels this process's sessions are subscribed to."""

    __slots__ = ("_config", "_started", "_streams", "bytes", "now")

    #: Positions are promised: a publication that might not reach the whole deployment
    #: is refused rather than delivered here only.
    keeps: Final = True

    def __init__(self, config: HistoryConfig) -> None:
        self._config = config
        self._streams: dict[str, Stream] = {}
        self._started = 0
        #: The latest time an event brought (monotonic seconds): history expires by it.
        self.now = 0.0
        #: What the kept history costs: its texts in UTF-8 plus a fixed cost per entry.
        self.bytes = 0

    def _new_epoch(self) -> str:
        self._started += 1
        return f"{self._config.boot_id}.{self._started}"

    def clock(self, now: float) -> None:
        self.now = max(self.now, now)

    # ------------------------------------------------------------ lifetime

    def hold(self, channel: str, session_id: str) -> None:
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream(self._new_epoch())
        stream.holders.add(session_id)

    def release(self, channel: str, session_id: str) -> None:
        stream = self._streams.get(channel)
        if stream is None:
            return
        stream.holders.discard(session_id)
        if not stream.holders:
            self._drop(stream, len(stream.entries))
            del self._streams[channel]

    def reset(self) -> list[tuple[str, StreamPosition]]:
        """Every stream starts again under a new epoch (this process may have missed
        publications); returns the channels whose clients hold a position of this
        process's (one was sent), with their new positions: those subscribers must be told.
        Where they hold the owner's (the hub's, a store's: ``seen``), it is kept, and the
        owner's next position says whether they missed some (``saw``, ``moved``)."""
        told = []
        for channel, stream in self._streams.items():
            self._drop(stream, len(stream.entries))
            stream.epoch, stream.top, stream.trimmed, stream.expired = self._new_epoch(), 0, 0, 0
            if stream.seen is not None:
                continue
            if stream.shown:  # and still shown: the telling carries the new position
                told.append((channel, self.position_of(stream)))
        return told

    def _drop(self, stream: Stream, count: int) -> int:
        """Forget the ``count`` oldest entries; returns the last offset dropped."""
        entries, last, freed = stream.entries, 0, 0
        for _ in range(count):
            last, _at, text, _excepted = entries.popleft()
            freed += utf8_len(text) + ENTRY_OVERHEAD
        self.bytes -= freed
        return last

    def _expire(self, stream: Stream) -> None:
        entries, horizon, count = stream.entries, self.now - self._config.ttl, 0
        for _offset, at, _text, _excepted in entries:
            if at > horizon:
                break
            count += 1
        if count:
            stream.expired = self._drop(stream, count)

    # ---------------------------------------------------------- publishing

    def append(
        self,
        channel: str,
        except_session_ids: frozenset[str],
        text_at: Callable[[StreamPosition | None], str],
    ) -> str:
        """The text of a publication to ``channel`` (``text_at`` builds it at a position):
        at the stream's next offset and kept, when the channel has a stream."""
        stream = self._streams.get(channel)
        if stream is None:
            return text_at(None)
        stream.top += 1
        stream.shown = True
        text = text_at(StreamPosition(offset=stream.top, epoch=stream.epoch))
        stream.entries.append((stream.top, self.now, text, except_session_ids or _NOBODY))
        self.bytes += utf8_len(text) + ENTRY_OVERHEAD
        over = len(stream.entries) - self._config.size
        if over > 0:
            stream.trimmed = self._drop(stream, over)
        self._expire(stream)
        return text

    # ------------------------------------------------------------ reading

    @staticmethod
    def position_of(stream: Stream) -> StreamPosition:
        return StreamPosition(offset=stream.top, epoch=stream.epoch)

    def position(self, channel: str) -> StreamPosition | None:
        """Where ``channel``'s stream is; None when it has none."""
        stream = self._streams.get(channel)
        return self.position_of(stream) if stream is not None else None

    def saw(self, channel: str, position: StreamPosition) -> Seen:
        """Clients of ``channel`` are sent ``position``, which this process did not number
        (the hub's): a reset must tell them too, and a check compares with it. Whether it
        follows the last one sent: ``"next"``; ``"again"`` (sent already: not to send);
        ``"gap"`` (publications between, or a new epoch unannounced: they missed some)."""
        stream = self._streams.get(channel)
        if stream is None:
            return "next"
        shown, stream.shown = stream.shown, True
        return self._seen(stream, position, shown)

    @staticmethod
    def _seen(stream: Stream, position: StreamPosition, shown: bool) -> Seen:
        """``saw`` of ``stream``, whose clients were sent a position of it if ``shown``
        (left as it is: the caller says whether ``position`` counts as shown)."""
        last = stream.seen
        if last is not None and last.epoch == position.epoch and position.offset <= last.offset:
            return "again"
        stream.seen = position
        if last is None:  # they hold this process's positions, if any was sent
            return "gap" if shown else "next"
        if last.epoch == position.epoch and position.offset == last.offset + 1:
            return "next"
        return "gap"

    def moved(self, channel: str, position: StreamPosition) -> bool:
        """The owner says its stream of ``channel`` is at ``position`` (its link came
        back): whether clients here were sent a position of it and this one is not the
        last they were sent (they may have missed some). It is taken as sent (``saw``)."""
        stream = self._streams.get(channel)
        if stream is None:
            return False
        seen = self._seen(stream, position, stream.shown)
        return stream.shown and seen != "again"

    def reached(self, channel: str) -> StreamPosition:
        """The last position sent to the clients of ``channel`` (held): an in-step client
        holds one of its epoch, at most its offset."""
        stream = self._streams[channel]
        return stream.seen if stream.seen is not None else self.position_of(stream)

    def tell(self, channel: str) -> StreamPosition:
        """Where ``channel``'s stream (held) is, to send to a client (who then holds a
        position of this process's, not the owner's)."""
        stream = self._streams[channel]
        stream.shown, stream.seen = True, None
        return self.position_of(stream)

    def recover(self, channel: str, since: StreamPosition, session_id: str) -> Recovery:
        """What ``session_id`` missed of ``channel`` (held) after ``since``, or why not."""
        stream = self._streams[channel]
        self._expire(stream)
        stream.shown, stream.seen = True, None
        position = self.position_of(stream)
        if since.epoch != stream.epoch or since.offset > stream.top:
            return Recovery(position, [], "epoch")
        missed = stream.top - since.offset
        if missed > self._config.max_recovery or since.offset < stream.trimmed:
            return Recovery(position, [], "too_many")
        if missed > len(stream.entries):
            return Recovery(position, [], "expired")
        missed_entries = islice(stream.entries, len(stream.entries) - missed, None)
        texts = [
            text for _offset, _at, text, excepted in missed_entries if session_id not in excepted
        ]
        return Recovery(position, texts, None)

    def streams(self) -> dict[str, Stream]:
        """Every stream, by channel (for tests and invariant checks; do not change them)."""
        return self._streams

    def check(self) -> None:
        """Raise ``AssertionError`` if a stream's history is not contiguous up to its top,
        or the counted bytes disagree with what is kept."""
        total = 0
        for channel, stream in self._streams.items():
            offsets = [entry[0] for entry in stream.entries]
            expected = list(range(stream.top - len(offsets) + 1, stream.top + 1))
            if offsets != expected or not stream.holders:
                raise AssertionError(f"the stream of {channel!r} is not contiguous or not held")
            total += sum(utf8_len(entry[2]) + ENTRY_OVERHEAD for entry in stream.entries)
        if total != self.bytes:
            raise AssertionError(f"history bytes {self.bytes} != {total} kept")


@final
class NoStreams:
    """The streams of a ``Presence`` without history: no positions, nothing recovers."""

    __slots__ = ()

    bytes: Final = 0
    keeps: Final = False

    def clock(self, now: float) -> None:
        pass

    def hold(self, channel: str, session_id: str) -> None:
        pass

    def release(self, channel: str, session_id: str) -> None:
        pass

    def reset(self) -> list[tuple[str, StreamPosition]]:
        return []

    def append(
        self,
        channel: str,
        except_session_ids: frozenset[str],
        text_at: Callable[[StreamPosition | None], str],
    ) -> str:
        return text_at(None)

    def position(self, channel: str) -> StreamPosition | None:
        return None

    def tell(self, channel: str) -> StreamPosition | None:
        return None

    def saw(self, channel: str, position: StreamPosition) -> Seen:
        return "next"

    def moved(self, channel: str, position: StreamPosition) -> bool:
        return False

    def reached(self, channel: str) -> StreamPosition | None:
        return None

    def recover(self, channel: str, since: StreamPosition, session_id: str) -> Recovery:
        return Recovery(None, [], "epoch")

    def streams(self) -> dict[str, Stream]:
        return {}

    def check(self) -> None:
        pass
