"""The hub's channel streams: one place numbers every channel's publications.

Theory of operation. With ``HubConfig.history``, every PUBLISH the hub accepts
gets its channel's next offset here and becomes a STREAM frame routed to every
bridge tracking the channel that speaks ``stream``, its origin included; what
is kept for recovery is the channel message as a client receives it. A RECOVER
is answered with RECOVERED from the same stream: the position, and after
``since`` the missed channel messages as JSON strings (a bridge relays them
without decoding them), or the reason they cannot come (``too_many`` also when
they would not fit in one frame). The history's rules
(size, TTL, epochs) are ``_streams.Streams``'s; the epochs come from the
history's boot id, new at every hub start. A stream lives while some bridge
tracks its channel (swept on ticks); one forgotten starts again under a new
epoch. The hub sees every publication of the deployment, so no other event
can make a stream miss one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

from ._streams import Streams
from ._values import StreamPosition, utf8_len
from .config import HistoryConfig
from .wire import (
    PublishFrame,
    RecoverFrame,
    StreamFrame,
    channel_text,
    encode,
    recovered_text,
)

__all__ = ["HubStreams"]

#: What one STREAM frame adds to the PUBLISH it numbers, at most: the offset (20 digits),
#: the epoch (96 characters, escaped) and their keys; a PUBLISH within this much of the
#: frame limit is refused, so no bridge is ever sent a frame it cannot read.
STREAM_OVERHEAD = 40 + 6 * 96


@final
class HubStreams:
    __slots__ = ("_max_frame_bytes", "streams")

    def __init__(self, history: HistoryConfig, max_frame_bytes: int) -> None:
        self.streams = Streams(history)
        self._max_frame_bytes = max_frame_bytes

    def fits(self, publish_text: str) -> bool:
        """Whether the STREAM frame of this PUBLISH fits within the frame limit."""
        return utf8_len(publish_text) + STREAM_OVERHEAD <= self._max_frame_bytes

    def publish(self, frame: PublishFrame) -> str:
        """The STREAM frame of ``frame``, at its channel's next offset; what is kept is the
        channel message as clients receive it, for RECOVERED to carry as it is."""
        channel = frame.channel
        kept: list[StreamPosition] = []

        def client_text(position: StreamPosition | None) -> str:
            assert position is not None  # the stream is held just below
            kept.append(position)
            return channel_text(channel, frame.message, frame.author, position)

        self.streams.hold(channel, "hub")
        self.streams.append(channel, frozenset(frame.except_session_ids), client_text)
        [position] = kept
        return encode(
            StreamFrame(
                channel=channel,
                offset=position.offset,
                epoch=position.epoch,
                message=frame.message,
                except_session_ids=frame.except_session_ids,
                author=frame.author,
            )
        )

    def recover(self, frame: RecoverFrame) -> str:
        """RECOVERED for ``frame``: the position, and the missed publications or why not."""
        streams, channel = self.streams, frame.channel
        streams.hold(channel, "hub")
        if frame.since is None:
            position = streams.tell(channel)
            return recovered_text(frame.request, channel, position, None, None, [])
        found = streams.recover(channel, frame.since, frame.session_id)
        assert found.position is not None
        recovered = found.reason is None
        text = recovered_text(
            frame.request, channel, found.position, recovered, found.reason, found.texts
        )
        if utf8_len(text) <= self._max_frame_bytes:
            return text
        return recovered_text(frame.request, channel, found.position, False, "too_many", [])

    def sweep(self, tracked: Callable[[str], bool]) -> None:
        """Forget the streams of channels no bridge tracks any more."""
        for channel in [c for c in self.streams.streams() if not tracked(c)]:
            self.streams.release(channel, "hub")
