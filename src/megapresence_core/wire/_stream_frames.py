"""Hub frames of channel streams: the hub numbers every channel's publications, so a client
recovers on any bridge (capability ``stream``, named by both ends at registration).

==============  ==========  ===================================================
``STREAM``      hub→bridge  ``channel``, ``offset``, ``epoch``, ``message``,
                            ``exceptSessionIds?``, ``from?``: a publication at
                            its place in the channel's stream, to every bridge
                            tracking the channel, its origin included (a
                            bridge in stream mode delivers its own publishes
                            when they come back numbered)
``RECOVER``     bridge→hub  ``request``, ``sessionId``, ``channel``,
                            ``since?: {offset, epoch}``: a subscribe's answer
``RECOVERED``   hub→bridge  ``request``, ``channel``, ``offset``, ``epoch``,
                            ``recovered?``, ``reason?``, ``publications``: the
                            stream's position and, after ``since``, the missed
                            publications (each the client's channel message, as a
                            JSON string: relayed as it is, never re-encoded;
                            oldest first) or why not; answered in order on the
                            link, after every STREAM of the channel up to
                            ``offset``
==============  ==========  ===================================================

The hub's streams start with epochs made from its hub id, new at every hub
start, so a hub restart is ``recovered: false`` (reason ``epoch``) for every
position, never a wrong recovery. A recovery whose publications would not fit
in one frame is ``too_many``.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any, Final, TypeAlias, final

import attrs

from .._values import Message, Sender, StreamPosition
from ._codec import (
    _VALUE_ENCODERS,
    Field,
    check_count,
    check_flag,
    check_message,
    check_name,
    check_names,
    check_object,
    encode,
    register,
)
from ._frames import HUB_DIALECT, _sender

__all__ = [
    "HUB_STREAM",
    "STREAM_FRAME_TYPES",
    "RecoverFrame",
    "RecoveredFrame",
    "StreamFrame",
    "StreamHubFrame",
    "recovered_text",
]

#: The capability both ends name in REGISTER / REGISTERED for hub-numbered streams.
HUB_STREAM: Final = "stream"


@final
@attrs.frozen(kw_only=True)
class StreamFrame:
    """Hub to bridge: a publication at its place in its channel's stream."""

    channel: str
    offset: int
    epoch: str
    message: Message
    except_session_ids: tuple[str, ...] = ()
    author: Sender | None = None

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(offset=self.offset, epoch=self.epoch)


@final
@attrs.frozen(kw_only=True)
class RecoverFrame:
    """Bridge to hub: where ``channel``'s stream is and, after ``since``, what
    ``session_id`` missed (the answer to a client's ``subscribe``)."""

    request: int
    session_id: str
    channel: str
    since: StreamPosition | None = None


@final
@attrs.frozen(kw_only=True)
class RecoveredFrame:
    """Hub to bridge: the answer to RECOVER ``request``."""

    request: int
    channel: str
    offset: int
    epoch: str
    recovered: bool | None = None
    reason: str | None = None
    #: The missed channel messages, as the client receives them (JSON texts).
    publications: tuple[str, ...] = ()


#: The hub frames of channel streams and recovery (STREAM, RECOVER, RECOVERED).
StreamHubFrame: TypeAlias = StreamFrame | RecoverFrame | RecoveredFrame


def _position(value: Any) -> StreamPosition:
    obj = check_object(value)
    offset, epoch = check_count(obj.get("offset")), check_name(obj.get("epoch"))
    return StreamPosition(offset=offset, epoch=epoch)


_STREAM_FIELDS: Final = (
    Field("channel", "channel", check_name),
    Field("offset", "offset", check_count),
    Field("epoch", "epoch", check_name),
    Field("message", "message", check_message),
    Field("exceptSessionIds", "except_session_ids", check_names, ()),
    Field("from", "author", _sender, None),
)


def _publications(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(text, str) and text.startswith("{") for text in value
    ):
        raise ValueError("must be a list of channel messages, each a JSON object in a string")
    return tuple(value)


def _encode_texts(texts: tuple[str, ...]) -> str:
    return "[" + ",".join(map(encode_basestring, texts)) + "]"


# Before RECOVERED is registered: its schema reads how to write each field then.
_VALUE_ENCODERS[_publications] = _encode_texts

register(HUB_DIALECT, "STREAM", StreamFrame, *_STREAM_FIELDS)
register(
    HUB_DIALECT,
    "RECOVER",
    RecoverFrame,
    Field("request", "request", check_count),
    Field("sessionId", "session_id", check_name),
    Field("channel", "channel", check_name),
    Field("since", "since", _position, None),
)
register(
    HUB_DIALECT,
    "RECOVERED",
    RecoveredFrame,
    Field("request", "request", check_count),
    Field("channel", "channel", check_name),
    Field("offset", "offset", check_count),
    Field("epoch", "epoch", check_name),
    Field("recovered", "recovered", check_flag, None),
    Field("reason", "reason", check_name, None),
    Field("publications", "publications", _publications, ()),
)


#: The stream frames' type names (the hub protocol's others are ``FRAME_TYPES``).
STREAM_FRAME_TYPES: Final = ("STREAM", "RECOVER", "RECOVERED")


def recovered_text(
    request: int,
    channel: str,
    position: StreamPosition,
    recovered: bool | None,
    reason: str | None,
    texts: list[str],
) -> str:
    """RECOVERED, with the kept channel messages' texts spliced in as JSON strings."""
    frame = RecoveredFrame(
        request=request,
        channel=channel,
        offset=position.offset,
        epoch=position.epoch,
        recovered=recovered,
        reason=reason,
        publications=tuple(texts),
    )
    return encode(frame)
