"""The small JSON protocol a browser speaks to ``megapresence serve``, and what each command means.

Client to server, one JSON object per text message, ``op`` naming the command:

======================  ====================================================
``broadcast``           ``channel``, ``payload``, ``type`` (default "chat"),
                        ``excludeSelf`` (default false)
``direct``              ``userId``, ``payload``, ``type`` (default "direct")
``metadata``            ``metadata``: replaces this session's metadata
``roster``              ask for the members of this path; answered with
                        ``{"type": "roster", "payload": {"members": [...],
                        "channels": {channel: [sessionId, ...]}}}``
``kick``                ``sessionId``, ``reason``, ``requeue``: admins only
======================  ====================================================

A bad command is answered ``{"type": "error", "payload": {"code", "message"}}``
and changes nothing. Who may do what is decided here, with the rest of the
rules: :func:`command_event` turns a command from a given connection into a
core event, or refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeAlias, final

import attrs

from ._errors import FrameError
from ._events import BroadcastRequested, DirectRequested, KickRequested, MetadataUpdated
from ._json import Json, JsonObject, decode_object, dumps
from ._values import ABSENT, Member, Message, RosterEntry

__all__ = [
    "MAX_CLIENT_COMMAND_BYTES",
    "BroadcastCommand",
    "ClientCommand",
    "CommandRefused",
    "DirectCommand",
    "KickCommand",
    "MetadataCommand",
    "RosterCommand",
    "command_event",
    "decode_client_command",
    "error_reply",
    "roster_reply",
]

#: A browser command is a chat line or a status; anything bigger is abuse.
MAX_CLIENT_COMMAND_BYTES: Final = 16 * 1024


@final
@attrs.frozen(kw_only=True)
class BroadcastCommand:
    channel: str
    message: Message
    exclude_self: bool = False


@final
@attrs.frozen(kw_only=True)
class DirectCommand:
    user_id: str
    message: Message


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
class KickCommand:
    session_id: str
    reason: str | None = None
    requeue: bool = False


ClientCommand: TypeAlias = (
    BroadcastCommand | DirectCommand | MetadataCommand | RosterCommand | KickCommand
)


@final
@attrs.frozen(kw_only=True)
class CommandRefused:
    """The command is well-formed but not allowed from this connection."""

    code: str
    message: str


def _get(
    obj: JsonObject, key: str, kind: type | tuple[type, ...], what: str, default: Any = ABSENT
) -> Any:
    if key not in obj:
        if default is ABSENT:
            raise FrameError(f"{obj.get('op')!s} needs {key} ({what})", field=key)
        return default
    value = obj[key]
    if (
        not isinstance(value, kind)
        or (kind is str and not value)
        or (kind is not bool and isinstance(value, bool))
    ):
        raise FrameError(f"{key} must be {what}", field=key)
    return value


def _message(obj: JsonObject, default_type: str) -> Message:
    kind = _get(obj, "type", str, "a non-empty string", default_type)
    if "payload" in obj:
        return Message(type=kind, payload=obj["payload"])
    return Message(type=kind)


def decode_client_command(data: str | bytes) -> ClientCommand:
    """Parse one command, or raise ``FrameError`` saying what is wrong."""
    obj = decode_object(data, max_bytes=MAX_CLIENT_COMMAND_BYTES, what="command")
    op = obj.get("op")
    if op == "broadcast":
        return BroadcastCommand(
            channel=_get(obj, "channel", str, "a non-empty string"),
            message=_message(obj, "chat"),
            exclude_self=_get(obj, "excludeSelf", bool, "true or false", False),
        )
    if op == "direct":
        return DirectCommand(
            user_id=_get(obj, "userId", str, "a non-empty string"), message=_message(obj, "direct")
        )
    if op == "metadata":
        return MetadataCommand(metadata=_get(obj, "metadata", dict, "an object"))
    if op == "roster":
        return RosterCommand()
    if op == "kick":
        return KickCommand(
            session_id=_get(obj, "sessionId", str, "a non-empty string"),
            reason=_get(obj, "reason", str, "a string", None),
            requeue=_get(obj, "requeue", bool, "true or false", False),
        )
    raise FrameError(
        f"unknown op {str(op)[:40]!r}; expected broadcast, direct, metadata, roster or kick",
        code="unknown_op",
        field="op",
    )


CommandEvent: TypeAlias = BroadcastRequested | DirectRequested | MetadataUpdated | KickRequested


def command_event(
    command: ClientCommand, *, ns: str, session_id: str | None, is_admin: bool
) -> CommandEvent | RosterCommand | CommandRefused:
    """What ``command`` from a connection on ``ns`` means, or why it is refused.

    A roster request is returned as is: answering it is a query, not an event.
    """
    if isinstance(command, BroadcastCommand):
        excluded = (session_id,) if command.exclude_self and session_id is not None else ()
        return BroadcastRequested(
            ns=ns, channel=command.channel, message=command.message, except_session_ids=excluded
        )
    if isinstance(command, DirectCommand):
        return DirectRequested(user_id=command.user_id, message=command.message)
    if isinstance(command, MetadataCommand):
        if session_id is None:
            return CommandRefused(code="not_joined", message="join a session to set metadata")
        return MetadataUpdated(session_id=session_id, metadata=command.metadata)
    if isinstance(command, KickCommand):
        if not is_admin:
            return CommandRefused(code="forbidden", message="only admins may kick")
        return KickRequested(
            session_id=command.session_id, reason=command.reason, requeue=command.requeue
        )
    return command


def error_reply(code: str, message: str) -> str:
    return dumps({"type": "error", "payload": {"code": code, "message": message}})


def roster_reply(members: Iterable[Member], entries: Iterable[RosterEntry] = ()) -> str:
    """The members of a path, and which of them is in each channel (from ``entries``)."""
    listed = [m.to_json() for m in members]
    sessions = {m["sessionId"] for m in listed}
    channels: dict[str, list[Json]] = {}
    for entry in entries:
        if entry.session_id in sessions:
            channels.setdefault(entry.channel, []).append(entry.session_id)
    return dumps({"type": "roster", "payload": {"members": listed, "channels": channels}})
