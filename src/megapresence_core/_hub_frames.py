"""Hub protocol frames and their codec.

Every frame is ``{"type": T, "payload": {...}}`` with camelCase fields. Each
frame class declares its wire fields once, in ``_SCHEMAS``; the decoder and
the encoder are both driven by that table, so they cannot drift apart.

Decoding is strict where it matters for safety (size first, then JSON, then
every known field's type) and lenient where it matters for evolution: unknown
fields are ignored, so a newer peer may add optional fields without a version
bump.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, final

import attrs

from ._errors import FrameError
from ._json import Json, JsonObject, decode_object, dumps
from ._values import Message

__all__ = [
    "FRAME_TYPES",
    "BroadcastFrame",
    "BulkLeaveFrame",
    "DirectFrame",
    "DisconnectFrame",
    "ErrorFrame",
    "HeartbeatFrame",
    "HubFrame",
    "JoinFrame",
    "LeaveFrame",
    "MetadataFrame",
    "RegisterFrame",
    "RegisteredFrame",
    "decode_hub_frame",
    "encode_hub_frame",
]


@final
@attrs.frozen(kw_only=True)
class RegisterFrame:
    bridge_id: str
    instance_id: str
    capabilities: tuple[str, ...]
    protocol: int


@final
@attrs.frozen(kw_only=True)
class RegisteredFrame:
    hub_id: str
    heartbeat_interval: float


@final
@attrs.frozen(kw_only=True)
class JoinFrame:
    user_id: str
    session_id: str
    channels: tuple[str, ...]
    metadata: JsonObject | None = attrs.field(default=None, hash=False)


@final
@attrs.frozen(kw_only=True)
class LeaveFrame:
    session_id: str


@final
@attrs.frozen(kw_only=True)
class BulkLeaveFrame:
    bridge_id: str
    session_ids: tuple[str, ...]


@final
@attrs.frozen(kw_only=True)
class MetadataFrame:
    session_id: str
    metadata: JsonObject = attrs.field(hash=False)


@final
@attrs.frozen(kw_only=True)
class BroadcastFrame:
    ns: str
    channel: str
    message: Message
    except_session_ids: tuple[str, ...] = ()


@final
@attrs.frozen(kw_only=True)
class DirectFrame:
    user_id: str
    message: Message


@final
@attrs.frozen(kw_only=True)
class DisconnectFrame:
    session_id: str
    reason: str | None = None
    requeue: bool = False


@final
@attrs.frozen(kw_only=True)
class HeartbeatFrame:
    pass


@final
@attrs.frozen(kw_only=True)
class ErrorFrame:
    code: str
    message: str


HubFrame: TypeAlias = (
    RegisterFrame
    | RegisteredFrame
    | JoinFrame
    | LeaveFrame
    | BulkLeaveFrame
    | MetadataFrame
    | BroadcastFrame
    | DirectFrame
    | DisconnectFrame
    | HeartbeatFrame
    | ErrorFrame
)

# A field check takes the wire value and returns the Python value, or raises
# ValueError with a sentence that completes "field X ...".
_Check: TypeAlias = Callable[[Any], Any]


def check_name(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("must be a non-empty string")


def check_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("must be a string")


def check_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of non-empty strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise ValueError("must be a list of non-empty strings")
    return tuple(dict.fromkeys(value))


def check_object(value: Any) -> JsonObject:
    if isinstance(value, dict):
        return value
    raise ValueError("must be an object")


def check_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("must be true or false")


def _protocol(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError("must be a positive integer")


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    raise ValueError("must be a positive number")


def check_message(value: Any) -> Message:
    if not isinstance(value, dict):
        raise ValueError("must be an object with a 'type'")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("must have a non-empty string 'type'")
    # Decoded JSON always re-encodes (the decoder refuses what UTF-8 cannot carry).
    return (
        Message(type=kind, payload=value["payload"]) if "payload" in value else Message(type=kind)
    )


@attrs.frozen
class _Field:
    wire: str
    attr: str
    check: _Check
    #: Value when the field is absent; _REQUIRED if it must be present. An
    #: optional field equal to its default is left out when encoding.
    default: Any


_REQUIRED: Final = object()


def _encode_field(value: Any) -> Json:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Message):
        return value.to_json()
    return value  # type: ignore[no-any-return]


_SCHEMAS: Final[dict[type[Any], tuple[str, tuple[_Field, ...]]]] = {
    RegisterFrame: (
        "REGISTER",
        (
            _Field("bridgeId", "bridge_id", check_name, _REQUIRED),
            _Field("instanceId", "instance_id", check_name, _REQUIRED),
            _Field("capabilities", "capabilities", check_names, ()),
            _Field("protocol", "protocol", _protocol, _REQUIRED),
        ),
    ),
    RegisteredFrame: (
        "REGISTERED",
        (
            _Field("hubId", "hub_id", check_name, _REQUIRED),
            _Field("heartbeatInterval", "heartbeat_interval", _seconds, _REQUIRED),
        ),
    ),
    JoinFrame: (
        "JOIN",
        (
            _Field("userId", "user_id", check_name, _REQUIRED),
            _Field("sessionId", "session_id", check_name, _REQUIRED),
            _Field("channels", "channels", check_names, _REQUIRED),
            _Field("metadata", "metadata", check_object, None),
        ),
    ),
    LeaveFrame: ("LEAVE", (_Field("sessionId", "session_id", check_name, _REQUIRED),)),
    BulkLeaveFrame: (
        "BULK_LEAVE",
        (
            _Field("bridgeId", "bridge_id", check_name, _REQUIRED),
            _Field("sessionIds", "session_ids", check_names, _REQUIRED),
        ),
    ),
    MetadataFrame: (
        "METADATA",
        (
            _Field("sessionId", "session_id", check_name, _REQUIRED),
            _Field("metadata", "metadata", check_object, _REQUIRED),
        ),
    ),
    BroadcastFrame: (
        "BROADCAST",
        (
            _Field("ns", "ns", check_name, _REQUIRED),
            _Field("channel", "channel", check_name, _REQUIRED),
            _Field("message", "message", check_message, _REQUIRED),
            _Field("exceptSessionIds", "except_session_ids", check_names, ()),
        ),
    ),
    DirectFrame: (
        "DIRECT",
        (
            _Field("userId", "user_id", check_name, _REQUIRED),
            _Field("message", "message", check_message, _REQUIRED),
        ),
    ),
    DisconnectFrame: (
        "DISCONNECT",
        (
            _Field("sessionId", "session_id", check_name, _REQUIRED),
            _Field("reason", "reason", check_text, None),
            _Field("requeue", "requeue", check_flag, False),
        ),
    ),
    HeartbeatFrame: ("HEARTBEAT", ()),
    ErrorFrame: (
        "ERROR",
        (
            _Field("code", "code", check_name, _REQUIRED),
            _Field("message", "message", check_text, ""),
        ),
    ),
}

_BY_TYPE: Final[Mapping[str, tuple[type[Any], tuple[_Field, ...]]]] = {
    name: (cls, fields) for cls, (name, fields) in _SCHEMAS.items()
}

#: The frame type names, for fuzz dictionaries and error messages.
FRAME_TYPES: Final = tuple(_BY_TYPE)


def encode_hub_frame(frame: HubFrame) -> str:
    """The frame as compact JSON text, optional fields at their default left out."""
    name, fields = _SCHEMAS[type(frame)]
    payload: JsonObject = {}
    for field in fields:
        value = getattr(frame, field.attr)
        if field.default is _REQUIRED or value != field.default:
            payload[field.wire] = _encode_field(value)
    return dumps({"type": name, "payload": payload})


def decode_hub_frame(data: str | bytes, *, max_bytes: int) -> HubFrame:
    """Parse and validate one hub frame, or raise ``FrameError`` naming what is wrong."""
    obj = decode_object(data, max_bytes=max_bytes, what="hub frame")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise FrameError("hub frame needs a string 'type'", field="type")
    entry = _BY_TYPE.get(kind)
    if entry is None:
        raise FrameError(f"unknown hub frame type {kind[:40]!r}", code="unknown_type", field="type")
    cls, fields = entry
    payload = obj.get("payload", {})
    if not isinstance(payload, dict):
        raise FrameError(f"{kind} payload must be an object", field="payload")
    values: dict[str, Any] = {}
    for field in fields:
        if field.wire not in payload:
            if field.default is _REQUIRED:
                raise FrameError(f"{kind} is missing {field.wire}", field=field.wire)
            values[field.attr] = field.default
            continue
        try:
            values[field.attr] = field.check(payload[field.wire])
        except ValueError as exc:
            raise FrameError(f"{kind} field {field.wire} {exc}", field=field.wire) from None
    frame: HubFrame = cls(**values)
    return frame
