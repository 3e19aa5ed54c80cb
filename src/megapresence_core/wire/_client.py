"""The browser's side of the wire: the commands it sends, and the plain frames it receives.

Server to client, one JSON object per text message (presence and channel
messages, replies and errors are in :mod:`._messages`):

======================  ====================================================
broadcast               ``{"type", "ns", "from"?, "payload"?}``: a message to
                        a path (``from``: see below)
direct                  ``{"type", "from"?, "payload"?}``: a message to a user
``roster``              ``{"type": "roster", "payload": {"members": [...],
                        "channels": {channel: [sessionId, ...]}}}``
======================  ====================================================

Client to server (the protocol of ``megapresence serve``), ``op`` naming the
command:

======================  ====================================================
``broadcast``           ``channel``, ``payload``, ``type`` (default "chat"),
                        ``excludeSelf`` (default false): to every connection
                        of this path, on every server
``subscribe``           ``channel``, ``presence`` ("none", the default,
                        "users", "sessions" or "count"); again on a channel
                        already subscribed changes the mode; ``since``
                        (``{offset, epoch}``): recover what was missed
``unsubscribe``         ``channel``
``publish``             ``channel``, ``type``, ``payload``, ``excludeSelf``
                        (default false): to the channel's subscribers, on
                        every server, stamped with the sender
``sync``                ``channel``: a fresh snapshot (or count), after a gap
``position``            ``channel``, ``offset``, ``epoch``: the position the
                        client holds, checked against the stream's (answered
                        ``stream.missed`` only when it is out of step)
``direct``              ``userId``, ``payload``, ``type`` (default "direct");
                        answered with ``direct.result``
``metadata``            ``metadata``: replaces this session's metadata
``roster``              ask for the members of this path
``ping``                nothing: an answer to a server's heartbeat message
                        (any message is one; this one does nothing else)
``kick``                ``sessionId``, ``reason``, ``requeue``: admins only
======================  ====================================================

A client may not ``publish``, ``broadcast`` or ``direct`` a message whose
``type`` is one of the server's (:data:`RESERVED_TYPES`, or a type starting
with one of :data:`RESERVED_PREFIXES`): it is refused with ``bad_command``, so
a receiver can trust what looks like a server message. Every message a client
sends to others reaches them stamped by the server with ``from: {userId,
sessionId}``; the server's own messages carry no ``from``. ``broadcast`` and
``direct`` therefore need a session, as ``publish`` does.

A bad command is answered with an error message (``bad_json``, ``too_big``,
``unknown_op`` or ``bad_command``) and changes nothing. Who may do what is
decided here, with the rest of the rules: :func:`command_event` turns a
command from a given connection into a core event, or refuses it. A shim's
per-channel permission hook (may this user subscribe to or publish in this
channel?) runs on the event before it is handled.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final, TypeAlias, final

import attrs

from .._values import (
    ABSENT,
    RESERVED_PREFIXES,
    RESERVED_TYPES,
    Absent,
    Json,
    JsonObject,
    Member,
    Message,
    PresenceMode,
    Sender,
    StoreEntry,
    StreamPosition,
    dumps,
    reserved_type,
)
from ..errors import PeerError, PresenceError
from ..events import (
    BroadcastRequested,
    DirectRequested,
    KickRequested,
    MetadataUpdated,
    PositionCheck,
    PresenceSync,
    PublishRequested,
    RosterRequested,
    Subscribe,
    Unsubscribe,
)
from ._codec import (
    Dialect,
    Field,
    check_count,
    check_flag,
    check_json,
    check_name,
    check_object,
    check_text,
    names,
    register,
)
from ._codec import decode as _decode
from ._messages import error_reply, spliced

__all__ = [
    "COMMAND_OPS",
    "MAX_CLIENT_COMMAND_BYTES",
    "RESERVED_PREFIXES",
    "RESERVED_TYPES",
    "BroadcastCommand",
    "ClientCommand",
    "CommandRefused",
    "DirectCommand",
    "KickCommand",
    "MetadataCommand",
    "PingCommand",
    "PositionCommand",
    "PublishCommand",
    "RosterCommand",
    "SubscribeCommand",
    "SyncCommand",
    "UnsubscribeCommand",
    "broadcast_text",
    "command_event",
    "decode_client_command",
    "direct_text",
    "roster_reply",
]

#: A browser command is a chat line or a status; anything bigger is abuse.
MAX_CLIENT_COMMAND_BYTES: Final = 16 * 1024
#: An epoch is a boot id (at most 64 characters), a dot and a count.
MAX_EPOCH_CHARS: Final = 96


# ------------------------------------------------------------- server -> client


def broadcast_text(ns: str, message: Message, author: Sender | None) -> str:
    """The client frame ``{"type", "ns", "from"?, "payload"?}``, spliced around the
    encoded payload; ``from`` is the client that sent it (none: the server did)."""
    return spliced(f'{{"type":{dumps(message.type)},"ns":{dumps(ns)}', message, author)


def direct_text(message: Message, author: Sender | None) -> str:
    """The client frame ``{"type", "from"?, "payload"?}`` of a direct message."""
    return spliced(f'{{"type":{dumps(message.type)}', message, author)


def roster_reply(members: Iterable[Member], entries: Iterable[StoreEntry] = ()) -> str:
    """The members of a path, and which of them is in each channel (from ``entries``)."""
    listed = [m.to_json() for m in members]
    sessions = {m["sessionId"] for m in listed}
    channels: dict[str, list[Json]] = {}
    for entry in entries:
        if entry.session_id in sessions:
            channels.setdefault(entry.channel, []).append(entry.session_id)
    return dumps({"type": "roster", "payload": {"members": listed, "channels": channels}})


# ------------------------------------------------------------- client -> server


@final
@attrs.frozen(kw_only=True)
class BroadcastCommand:
    channel: str
    type: str = "chat"
    payload: Json | Absent = ABSENT
    exclude_self: bool = False


@final
@attrs.frozen(kw_only=True)
class DirectCommand:
    user_id: str
    type: str = "direct"
    payload: Json | Absent = ABSENT


@final
@attrs.frozen(kw_only=True)
class MetadataCommand:
    metadata: JsonObject = attrs.field(hash=False)


@final
@attrs.frozen(kw_only=True)
class RosterCommand:
    pass


@final
@attrs.frozen(kw_only=True)
class PingCommand:
    """``{"op": "ping"}``: the client is alive. It asks for nothing and gets no reply;
    like any command, it answers the server's heartbeat message."""


@final
@attrs.frozen(kw_only=True)
class KickCommand:
    session_id: str
    reason: str | None = None
    requeue: bool = False


@final
@attrs.frozen(kw_only=True)
class SubscribeCommand:
    channel: str
    presence: PresenceMode = PresenceMode.NONE
    since: StreamPosition | None = None


@final
@attrs.frozen(kw_only=True)
class UnsubscribeCommand:
    channel: str


@final
@attrs.frozen(kw_only=True)
class PublishCommand:
    channel: str
    type: str
    payload: Json | Absent = ABSENT
    exclude_self: bool = False


@final
@attrs.frozen(kw_only=True)
class SyncCommand:
    channel: str


@final
@attrs.frozen(kw_only=True)
class PositionCommand:
    """``{"op": "position", "channel", "offset", "epoch"}``: the position the client holds,
    sent every so often so that a loss nothing else showed is caught."""

    channel: str
    offset: int
    epoch: str


ClientCommand: TypeAlias = (
    BroadcastCommand
    | DirectCommand
    | MetadataCommand
    | RosterCommand
    | PingCommand
    | KickCommand
    | SubscribeCommand
    | UnsubscribeCommand
    | PublishCommand
    | SyncCommand
    | PositionCommand
)

_C: Final = Dialect(
    what="command",
    tag="op",
    unknown_hint=(
        "; expected broadcast, subscribe, unsubscribe, publish, sync, position, direct, "
        "metadata, roster, ping or kick"
    ),
    unknown_code="unknown_op",
    bad_code="bad_command",
)


def _presence_mode(value: object) -> PresenceMode:
    for mode in PresenceMode:
        if value == mode.value:
            return mode
    raise ValueError('must be "none", "users", "sessions" or "count"')


def _peer_type(value: object) -> str:
    """A message type a client may give what it sends: not one of the server's."""
    name = check_name(value)
    if reserved_type(name):
        raise ValueError(f"must not be {name[:40]!r}: that type is reserved for the server")
    return name


def _epoch(value: object) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_EPOCH_CHARS:
        return value
    raise ValueError(f"must be a non-empty string of at most {MAX_EPOCH_CHARS} characters")


def _since(value: object) -> StreamPosition:
    if isinstance(value, dict):
        try:
            return StreamPosition(
                offset=check_count(value.get("offset")), epoch=_epoch(value.get("epoch"))
            )
        except ValueError:
            pass
    raise ValueError(
        "must be {offset, epoch}: a non-negative integer and a non-empty string "
        f"of at most {MAX_EPOCH_CHARS} characters"
    )


_PAYLOAD = Field("payload", "payload", check_json, ABSENT)
register(
    _C,
    "broadcast",
    BroadcastCommand,
    Field("channel", "channel", check_name),
    Field("type", "type", _peer_type, "chat"),
    _PAYLOAD,
    Field("excludeSelf", "exclude_self", check_flag, False),
)
register(
    _C,
    "subscribe",
    SubscribeCommand,
    Field("channel", "channel", check_name),
    Field("presence", "presence", _presence_mode, PresenceMode.NONE),
    Field("since", "since", _since, None),
)
register(_C, "unsubscribe", UnsubscribeCommand, Field("channel", "channel", check_name))
register(
    _C,
    "publish",
    PublishCommand,
    Field("channel", "channel", check_name),
    Field("type", "type", _peer_type),
    _PAYLOAD,
    Field("excludeSelf", "exclude_self", check_flag, False),
)
register(_C, "sync", SyncCommand, Field("channel", "channel", check_name))
register(
    _C,
    "position",
    PositionCommand,
    Field("channel", "channel", check_name),
    Field("offset", "offset", check_count),
    Field("epoch", "epoch", _epoch),
)
register(
    _C,
    "direct",
    DirectCommand,
    Field("userId", "user_id", check_name),
    Field("type", "type", _peer_type, "direct"),
    _PAYLOAD,
)
register(_C, "metadata", MetadataCommand, Field("metadata", "metadata", check_object))
register(_C, "roster", RosterCommand)
register(_C, "ping", PingCommand)
register(
    _C,
    "kick",
    KickCommand,
    Field("sessionId", "session_id", check_name),
    Field("reason", "reason", check_text, None),
    Field("requeue", "requeue", check_flag, False),
)

#: The command names, for fuzz dictionaries and tests.
COMMAND_OPS: Final = names(_C)
COMMAND_DIALECT: Final = _C


def decode_client_command(data: str | bytes) -> ClientCommand:
    """Parse one command, or raise ``PeerError`` saying what is wrong."""
    command: ClientCommand = _decode(_C, data, max_bytes=MAX_CLIENT_COMMAND_BYTES)
    return command


#: The commands that name a channel: an error answering one names it too.
_CHANNEL_COMMANDS: Final = (
    BroadcastCommand,
    SubscribeCommand,
    UnsubscribeCommand,
    PublishCommand,
    SyncCommand,
)


def _channel(command: ClientCommand) -> str | None:
    return command.channel if isinstance(command, _CHANNEL_COMMANDS) else None


@final
@attrs.frozen(kw_only=True)
class CommandRefused:
    """A command not done: not allowed from this connection (from :func:`command_event`),
    or wrong (:meth:`from_error`). ``channel`` is the command's, named in the error."""

    code: str
    message: str
    channel: str | None = None

    @classmethod
    def from_error(cls, exc: PresenceError, command: ClientCommand | None = None) -> CommandRefused:
        """The refusal of a command that raised ``exc`` (a field, a limit), given the
        command when it was decoded: it names the command's channel whenever one was
        read, also when a later field was wrong."""
        if command is not None:
            channel = _channel(command)
        else:
            channel = exc.channel if isinstance(exc, PeerError) else None
        return cls(code=exc.code, message=str(exc), channel=channel)

    @property
    def text(self) -> str:
        """The ``error`` message that answers the command."""
        return error_reply(self.code, self.message, self.channel)


def _message(command: BroadcastCommand | DirectCommand | PublishCommand) -> Message:
    return Message(type=command.type, payload=command.payload)


CommandEvent: TypeAlias = (
    BroadcastRequested
    | DirectRequested
    | MetadataUpdated
    | KickRequested
    | Subscribe
    | Unsubscribe
    | PublishRequested
    | PresenceSync
    | PositionCheck
    | RosterRequested
)

#: Commands that need a session, with what to tell a connection that holds none.
_NEEDS_SESSION: Final[dict[type[object], str]] = {
    BroadcastCommand: "join a session to broadcast",
    DirectCommand: "join a session to send a direct message",
    MetadataCommand: "join a session to set metadata",
    SubscribeCommand: "join a session to subscribe",
    UnsubscribeCommand: "join a session to unsubscribe",
    PublishCommand: "join a session to publish",
    SyncCommand: "join a session to sync",
    PositionCommand: "join a session to check a position",
}


def command_event(
    command: ClientCommand,
    *,
    conn: Hashable,
    ns: str,
    session_id: str | None,
    is_admin: bool,
    now: float,
) -> CommandEvent | PingCommand | CommandRefused:
    """What ``command`` from connection ``conn`` on ``ns`` means, or why it is refused.

    ``now`` is the shim's monotonic clock. A ping is returned as is: it asks for
    nothing. A roster request becomes ``RosterRequested``, which the core answers.
    The events name ``conn``, so the core answers that connection (``subscribed``, a
    snapshot, ``direct.result``, an error) and stamps what it sends others with its
    session (``from``).
    """
    if session_id is None and type(command) in _NEEDS_SESSION:
        return CommandRefused(
            code="not_joined", message=_NEEDS_SESSION[type(command)], channel=_channel(command)
        )
    if isinstance(command, BroadcastCommand):
        assert session_id is not None
        return BroadcastRequested(
            ns=ns,
            channel=command.channel,
            message=_message(command),
            except_session_ids=(session_id,) if command.exclude_self else (),
            conn=conn,
        )
    if isinstance(command, SubscribeCommand):
        return Subscribe(
            conn=conn, channel=command.channel, mode=command.presence, now=now, since=command.since
        )
    if isinstance(command, UnsubscribeCommand):
        return Unsubscribe(conn=conn, channel=command.channel, now=now)
    if isinstance(command, PublishCommand):
        assert session_id is not None
        return PublishRequested(
            channel=command.channel,
            message=_message(command),
            except_session_ids=(session_id,) if command.exclude_self else (),
            conn=conn,
        )
    if isinstance(command, SyncCommand):
        return PresenceSync(conn=conn, channel=command.channel)
    if isinstance(command, PositionCommand):
        position = StreamPosition(offset=command.offset, epoch=command.epoch)
        return PositionCheck(conn=conn, channel=command.channel, position=position)
    if isinstance(command, RosterCommand):
        return RosterRequested(conn=conn, ns=ns)
    if isinstance(command, DirectCommand):
        return DirectRequested(user_id=command.user_id, message=_message(command), conn=conn)
    if isinstance(command, MetadataCommand):
        assert session_id is not None
        return MetadataUpdated(session_id=session_id, metadata=command.metadata, now=now, conn=conn)
    if isinstance(command, KickCommand):
        if not is_admin:
            return CommandRefused(code="forbidden", message="only admins may kick")
        return KickRequested(
            session_id=command.session_id, reason=command.reason, requeue=command.requeue
        )
    return command
