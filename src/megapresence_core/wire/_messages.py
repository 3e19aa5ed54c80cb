"""What a server sends a browser about channels and presence, and a client's map built from it.

Server to client, one JSON object per text message:

====================  ======================================================
``presence.state``    ``channel``, ``view`` ("users" or "sessions"), ``version``,
                      ``members: {key: member}``: a snapshot
``presence.diff``     ``channel``, ``view``, ``version``, ``joins``, ``leaves``,
                      ``updates``: each ``{key: member}``, full member values
``presence.count``    ``channel``, ``sessions``, ``users``
``subscribed``        ``channel``, ``presence`` (the subscription's mode),
                      ``offset`` and ``epoch`` (the stream's position, with
                      history), ``recovered`` and ``reason`` (after ``since``)
``stream.reset``      ``channel``, ``offset``, ``epoch``: the stream started
                      again; what came before may be missing (reason ``epoch``)
``stream.missed``     ``channel``, ``offset``, ``epoch``: the answer to a
                      ``position`` out of step; recover with ``since``
``unsubscribed``      ``channel``
``direct.result``     ``userId``, ``found``: whether the server knew the user
channel message       ``{"type": T, "channel", "from"?: {userId, sessionId},
                      "offset"?, "epoch"?, "payload"?}``: a message published
                      to a channel, at its place in the channel's stream
``error``             ``{"type": "error", "payload": {"code", "message",
                      "channel"?}}`` (codes in :data:`CLIENT_ERROR_CODES`)
====================  ======================================================

Keys and members: in the users view the key is the user id and a member is
``{"userId", "sessions": [{"sessionId", "metadata"}]}`` (sessions sorted by
id); in the sessions view the key is the session id and a member is
``{"sessionId", "userId", "metadata"}``. ``metadata`` is null when unset.

Versions are per (channel, view) on one connection and consecutive: applying
diff ``v + 1`` to the state of version ``v`` gives the state of ``v + 1``
exactly. A client that sees any other version (it cannot happen on one
connection, but a client library should not trust that) asks for a ``sync``
and gets a fresh ``presence.state``. :class:`PresenceMap` is that client
logic, for Python clients and for the tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeAlias, final

import attrs

from .._values import (
    ENVELOPE_DEPTH,
    MAX_JSON_DEPTH,
    Json,
    JsonObject,
    Member,
    Message,
    Sender,
    StreamPosition,
    dumps,
)
from ..errors import PeerError
from ._codec import (
    Dialect,
    Field,
    check_count,
    check_flag,
    check_name,
    check_object,
    names,
    register,
)
from ._codec import decode as _decode

__all__ = [
    "CLIENT_ERROR_CODES",
    "MAX_SERVER_MESSAGE_BYTES",
    "SERVER_MESSAGE_TYPES",
    "DirectResult",
    "PresenceCount",
    "PresenceDiff",
    "PresenceMap",
    "PresenceState",
    "ServerMessage",
    "SessionDetached",
    "StreamMissed",
    "StreamReset",
    "Subscribed",
    "Unsubscribed",
    "channel_text",
    "decode_server_message",
    "error_reply",
    "session_json",
    "user_json",
]

#: Every error code a client can receive, and what it should do about it.
CLIENT_ERROR_CODES: Final[dict[str, str]] = {
    "bad_json": "the command was not one JSON object: fix the client",
    "too_big": "the command was over the size limit: send less",
    "unknown_op": "no such command: fix the client (or it is newer than the server)",
    "bad_command": "a field of the command was missing or wrong: fix the client",
    "over_limit": "a name, message or metadata was over a configured limit: send less",
    "not_joined": "the connection holds no session: join (authenticate) first",
    "not_subscribed": "the session is not subscribed to that channel: subscribe first",
    "not_watching": "the subscription is in mode none: subscribe with a presence mode to sync",
    "forbidden": "the server does not allow this (a kick by a non-admin, a refused channel)",
    "channel_full": "the channel is at its member cap: try later, or watch counts elsewhere",
    "too_many_channels": "the session is at its channel cap: unsubscribe from one first",
    "rate_limited": "too many commands at once on this connection: slow down, then retry",
    "busy": "the link to the other servers holds too much to take this: retry later",
    "unavailable": "the server cannot reach the other servers now: publish again later",
}

#: What a client should accept: the largest snapshot a member cap allows, and more.
MAX_SERVER_MESSAGE_BYTES: Final = 16 * 1024 * 1024

VIEWS: Final = ("users", "sessions")


def _view(value: Any) -> str:
    if value in VIEWS:
        return str(value)
    raise ValueError('must be "users" or "sessions"')


@final
@attrs.frozen(kw_only=True)
class PresenceState:
    channel: str
    view: str
    version: int
    members: JsonObject = attrs.field(hash=False)


@final
@attrs.frozen(kw_only=True)
class PresenceDiff:
    channel: str
    view: str
    version: int
    joins: JsonObject = attrs.field(hash=False)
    leaves: JsonObject = attrs.field(hash=False)
    updates: JsonObject = attrs.field(hash=False)


@final
@attrs.frozen(kw_only=True)
class PresenceCount:
    channel: str
    sessions: int
    users: int


@final
@attrs.frozen(kw_only=True)
class Subscribed:
    channel: str
    presence: str
    #: The stream's position (with history): its last offset (0: nothing yet) and epoch.
    offset: int | None = None
    epoch: str | None = None
    #: Only after a ``since``: whether the missed publications follow, and if not why
    #: (``too_many``, ``expired`` or ``epoch``).
    recovered: bool | None = None
    reason: str | None = None


@final
@attrs.frozen(kw_only=True)
class StreamReset:
    """The channel's stream on this server started again at ``epoch``: publications
    between the subscriber's last offset and this may be missing (as ``recovered:
    false``, reason ``epoch``)."""

    channel: str
    offset: int
    epoch: str


@final
@attrs.frozen(kw_only=True)
class StreamMissed:
    """A ``position`` the client sent is not one of the stream's here (another epoch, or
    beyond its last offset): the client missed something. It subscribes again with its
    ``since`` (recovering, or told why not); ``offset`` and ``epoch`` are where the stream
    is, so a client whose position caught up meanwhile (a ``stream.reset`` crossed the
    check) knows it is in step."""

    channel: str
    offset: int
    epoch: str


@final
@attrs.frozen(kw_only=True)
class Unsubscribed:
    channel: str


@final
@attrs.frozen(kw_only=True)
class DirectResult:
    user_id: str
    found: bool


@final
@attrs.frozen(kw_only=True)
class SessionDetached:
    """A newer connection took this connection's session (here or on another server);
    this one stays open without a session."""

    session_id: str
    reason: str = "replaced"


ServerMessage: TypeAlias = (
    PresenceState
    | PresenceDiff
    | PresenceCount
    | Subscribed
    | StreamReset
    | StreamMissed
    | Unsubscribed
    | DirectResult
    | SessionDetached
)

#: A snapshot wraps each member's metadata in the message, members, member,
#: sessions and session: the envelope's levels come on top of what a client may send.
_S: Final = Dialect(what="server message", tag="type", max_depth=MAX_JSON_DEPTH + ENVELOPE_DEPTH)
_CHANNEL = Field("channel", "channel", check_name)
_VIEW = Field("view", "view", _view)
_VERSION = Field("version", "version", check_count)
register(
    _S,
    "presence.state",
    PresenceState,
    _CHANNEL,
    _VIEW,
    _VERSION,
    Field("members", "members", check_object),
)
register(
    _S,
    "presence.diff",
    PresenceDiff,
    _CHANNEL,
    _VIEW,
    _VERSION,
    Field("joins", "joins", check_object),
    Field("leaves", "leaves", check_object),
    Field("updates", "updates", check_object),
)
register(
    _S,
    "presence.count",
    PresenceCount,
    _CHANNEL,
    Field("sessions", "sessions", check_count),
    Field("users", "users", check_count),
)
_OFFSET = Field("offset", "offset", check_count)
_EPOCH = Field("epoch", "epoch", check_name)
register(
    _S,
    "subscribed",
    Subscribed,
    _CHANNEL,
    Field("presence", "presence", check_name),
    Field("offset", "offset", check_count, None),
    Field("epoch", "epoch", check_name, None),
    Field("recovered", "recovered", check_flag, None),
    Field("reason", "reason", check_name, None),
)
register(_S, "stream.reset", StreamReset, _CHANNEL, _OFFSET, _EPOCH)
register(_S, "stream.missed", StreamMissed, _CHANNEL, _OFFSET, _EPOCH)
register(_S, "unsubscribed", Unsubscribed, _CHANNEL)
register(
    _S,
    "direct.result",
    DirectResult,
    Field("userId", "user_id", check_name),
    Field("found", "found", check_flag),
)
register(
    _S,
    "session.detached",
    SessionDetached,
    Field("sessionId", "session_id", check_name),
    Field("reason", "reason", check_name),
)


#: The typed server messages' names (the others: channel messages, ``error``, broadcasts).
SERVER_MESSAGE_TYPES: Final = names(_S)


def decode_server_message(data: str | bytes) -> ServerMessage:
    """Parse one of the typed server messages above, or raise ``PeerError``."""
    message: ServerMessage = _decode(_S, data, max_bytes=MAX_SERVER_MESSAGE_BYTES)
    return message


def session_json(member: Member) -> JsonObject:
    """A member of the sessions view."""
    return {"sessionId": member.session_id, "userId": member.user_id, "metadata": member.metadata}


def user_json(user_id: str, members: Iterable[Member]) -> JsonObject:
    """A member of the users view: the user and its sessions, sorted by session id."""
    sessions: list[Json] = [
        {"sessionId": m.session_id, "metadata": m.metadata}
        for m in sorted(members, key=lambda m: m.session_id)
    ]
    return {"userId": user_id, "sessions": sessions}


def spliced(
    head: str, message: Message, author: Sender | None, position: StreamPosition | None = None
) -> str:
    """``head`` (an open JSON object) with ``from`` (when a client sent it), the stream
    position (a channel message of a stream) and the message's encoded payload, closed."""
    if author is not None:
        head += f',"from":{dumps(author.to_json())}'
    if position is not None:
        head += f',"offset":{position.offset},"epoch":{dumps(position.epoch)}'
    if message.payload_json is None:
        return head + "}"
    return f'{head},"payload":{message.payload_json}}}'


def channel_text(
    channel: str,
    message: Message,
    author: Sender | None,
    position: StreamPosition | None = None,
) -> str:
    """``{"type", "channel", "from"?, "offset"?, "epoch"?, "payload"?}``, spliced around the
    encoded payload."""
    head = f'{{"type":{dumps(message.type)},"channel":{dumps(channel)}'
    return spliced(head, message, author, position)


def error_reply(code: str, message: str, channel: str | None = None) -> str:
    payload: JsonObject = {"code": code, "message": message}
    if channel is not None:
        payload["channel"] = channel
    return dumps({"type": "error", "payload": payload})


@final
class PresenceMap:
    """One watcher's map of one channel's members, built only from what it received.

    :meth:`apply` takes the channel's ``presence.state`` and ``presence.diff``
    messages of one view; it returns False when the map is out of step (a diff
    that does not follow, or does not fit the map), and the client should then
    ask for a ``sync``. Until the next snapshot, ``in_sync`` stays False.
    """

    __slots__ = ("channel", "in_sync", "members", "version", "view")

    def __init__(self, channel: str, view: str) -> None:
        self.channel = channel
        self.view = view
        self.members: dict[str, Json] = {}
        self.version: int | None = None
        self.in_sync = False

    def apply(self, message: PresenceState | PresenceDiff) -> bool:
        if (message.channel, message.view) != (self.channel, self.view):
            raise PeerError(
                f"a {message.view} message of {message.channel!r} is not for this map",
                code="bad_message",
            )
        if isinstance(message, PresenceState):
            self.members = dict(message.members)
            self.version = message.version
            self.in_sync = True
            return True
        members = self.members
        fits = (
            self.in_sync
            and message.version == (self.version or 0) + 1
            and all(
                key in members and members[key] == value for key, value in message.leaves.items()
            )
            and all(key in members for key in message.updates)
            and not any(key in members for key in message.joins)
        )
        if not fits:
            self.in_sync = False
            return False
        for key in message.leaves:
            del members[key]
        members.update(message.updates)
        members.update(message.joins)
        self.version = message.version
        return True
