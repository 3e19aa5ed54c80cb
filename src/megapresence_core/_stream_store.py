"""The stream store: channel streams numbered by an engine every process shares.

Theory of operation. A stream has one *owner*, who gives each publication its
offset: this process (``Streams``, a single server, or a cluster whose
processes each number their own), the hub (a streaming hub link), or a stream
store the shim drives (JetStream over NATS, Redis Streams). The two last share
one path in ``Channels`` and ``Presence``: a publish goes to the owner and is
delivered nothing here; the owner numbers it and every process delivers it with
its position; a ``subscribe`` asks the owner (RECOVER, or ``StreamRead``) and
takes effect only when the answer comes (``Recoveries``). The hub wins when both
are there.

What a stream store backend (the shim) does:

- ``StreamStoreChanged``: say ``READY`` when the store holds the streams (at
  start and after every reconnect), ``DOWN`` when it is out of reach (a publish
  is then ``unavailable``, waiting subscribes are answered here, not
  recovered), ``ABSENT`` when there is none (each process numbers its own).
- ``StreamAppend(channel, data)``: append ``data`` at the channel stream's next
  offset, atomically (two processes never get one offset); a stream with no
  entries left starts a new epoch at 1. Then every process, this one included,
  gets ``StreamPublished(channel, offset, epoch, data)``: per channel in offset
  order, each once (a process that may have missed some says ``DOWN``, then
  ``READY``: its subscribers are told ``stream.reset``).
- ``StreamRead(request, channel, since, limit)``: answer ``StreamReadDone`` with
  the stream's position (a stream with no entries gets a new epoch at offset 0,
  kept in the store, so the next append continues it) and, when ``since`` is of
  that epoch and at most ``limit`` behind, the entries after it that the store
  keeps; ``position`` None if the store could not be read. The answer comes
  after every ``StreamPublished`` of that channel up to its position and before
  any later one (as the hub's RECOVERED after its STREAMs): what the read
  returns and what is delivered live then neither overlap nor leave a gap.
- The epoch changes exactly when the history is lost (an epoch is drawn
  anew, never reused, whenever a stream has no entries: created, purged, its
  entries expired, the store restarted without them).

The core judges the answer as ``Streams.recover`` does (``epoch``, ``too_many``,
``expired``) and builds the client texts; ``data`` is a PUBLISH frame's text,
the publication as the hub would be sent it.
"""

from __future__ import annotations

from typing import final

from ._streams import Recovery
from ._values import Message, Sender, StreamPosition
from .actions import Action, Log, LogLevel, StreamAppend, StreamRead
from .config import HistoryConfig
from .errors import LocalUsageError, PeerError
from .events import StreamStoreState
from .wire import PublishFrame, RecoverFrame, channel_text, decode_hub_frame, encode

__all__ = ["StreamStore"]

_READY, _DOWN = StreamStoreState.READY, StreamStoreState.DOWN


@final
class StreamStore:
    """This process's view of the shim's stream store (``ABSENT`` until told otherwise)."""

    __slots__ = ("_config", "_max_bytes", "state")

    def __init__(self, config: HistoryConfig | None, *, max_bytes: int) -> None:
        self._config = config
        #: What a stored publication may weigh when it comes back (a PUBLISH frame's limit).
        self._max_bytes = max_bytes
        self.state = StreamStoreState.ABSENT

    @property
    def streaming(self) -> bool:
        """The store numbers the streams: publishes and recoveries go to it."""
        return self.state is _READY

    @property
    def reachable(self) -> bool:
        """Not configured-but-down: a publication now reaches every process's streams."""
        return self.state is not _DOWN

    def change(self, state: StreamStoreState) -> bool:
        """Take the shim's word for the store's state; whether it changed."""
        if state is _READY and self._config is None:
            raise LocalUsageError(
                "StreamStoreChanged(READY): this Presence keeps no history "
                "(PresenceConfig.history is None)"
            )
        changed, self.state = state is not self.state, state
        return changed

    def append(
        self,
        channel: str,
        message: Message,
        except_session_ids: frozenset[str],
        author: Sender | None,
    ) -> list[Action]:
        frame = PublishFrame(
            channel=channel,
            message=message,
            except_session_ids=tuple(sorted(except_session_ids)),
            author=author,
        )
        return [StreamAppend(channel=channel, data=encode(frame))]

    def recover(self, frame: RecoverFrame) -> list[Action]:
        assert self._config is not None  # READY needs history: see ``change``
        limit = self._config.max_recovery
        read = StreamRead(
            request=frame.request, channel=frame.channel, since=frame.since, limit=limit
        )
        return [read]

    def decode(self, data: str | bytes) -> PublishFrame | Log:
        """A stored publication, or the warning that it is not one."""
        try:
            frame = decode_hub_frame(data, max_bytes=self._max_bytes)
        except PeerError as exc:
            fields = {"code": exc.code, "field": exc.field, "error": str(exc)}
            return Log(level=LogLevel.WARNING, event="stream.entry.invalid", fields=fields)
        if not isinstance(frame, PublishFrame):
            fields = {"code": "bad_type", "field": "type", "error": "not a PUBLISH"}
            return Log(level=LogLevel.WARNING, event="stream.entry.invalid", fields=fields)
        return frame

    def recovery(
        self,
        channel: str,
        since: StreamPosition | None,
        position: StreamPosition,
        entries: tuple[tuple[int, str | bytes], ...],
        session_id: str,
    ) -> tuple[Recovery, list[Log]]:
        """What ``session_id`` gets for ``since`` from a read of the store (judged as
        ``Streams.recover`` judges), and the warnings for entries that were not publications."""
        assert self._config is not None
        if since is None:
            return Recovery(position, [], None), []
        if since.epoch != position.epoch or since.offset > position.offset:
            return Recovery(position, [], "epoch"), []
        missed = position.offset - since.offset
        if missed > self._config.max_recovery:
            return Recovery(position, [], "too_many"), []
        kept = [(offset, data) for offset, data in entries if since.offset < offset]
        if [offset for offset, _data in kept] != list(range(since.offset + 1, position.offset + 1)):
            return Recovery(
                position, [], "too_many" if missed > self._config.size else "expired"
            ), []
        texts: list[str] = []
        for offset, data in kept:
            frame = self.decode(data)
            if isinstance(frame, Log):
                return Recovery(position, [], "epoch"), [frame]
            if session_id not in frame.except_session_ids:
                at = StreamPosition(offset=offset, epoch=position.epoch)
                texts.append(channel_text(channel, frame.message, frame.author, at))
        return Recovery(position, texts, None), []
