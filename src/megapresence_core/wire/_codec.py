"""The one encoder and the one decoder behind every wire form, driven by schemas.

Theory of operation. Three dialects travel as JSON objects: hub frames
``{"type": T, "payload": {...}}``, cluster messages ``{"v": 1, "kind": K,
"from": ..., "epoch": ..., ...}`` and browser commands ``{"op": O, ...}``.
A :class:`Dialect` says where the discriminator and the fields live; each
typed frozen class declares its wire name and fields once, in a
:class:`Schema`, registered in one type-keyed table. :func:`encode` looks the
class up by exact type, :func:`decode` looks the name up in the dialect, and
both walk the same fields, so they cannot drift apart.

Encoding splices rather than re-encodes: a :class:`~megapresence_core.Message`
brings its JSON text, encoded once when it was built, and every other value is
small (names, flags, counts). Optional fields equal to their default are left
out. Decoding is strict where it matters for safety (size first, then strict
JSON, then every known field's type, naming the field at fault) and lenient
where it matters for evolution: unknown fields are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from json.encoder import encode_basestring
from typing import Any, Final, TypeAlias, final

import attrs

from .._values import (
    ABSENT,
    MAX_JSON_DEPTH,
    Json,
    JsonObject,
    Member,
    Message,
    PresenceMode,
    RemoteMember,
    Sender,
    StreamPosition,
    decode_object,
    dumps,
    reserved_type,
)
from ..errors import PeerError

__all__ = [
    "REQUIRED",
    "Dialect",
    "Field",
    "Schema",
    "check_count",
    "check_flag",
    "check_json",
    "check_message",
    "check_name",
    "check_names",
    "check_object",
    "check_text",
    "decode",
    "encode",
    "register",
    "wire_name",
]

# A field check takes the wire value and returns the Python value, or raises
# ValueError with a sentence that completes "field X ...".
Check: TypeAlias = Callable[[Any], Any]


def check_name(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise ValueError("must be a non-empty string")


def check_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError("must be a string")


def check_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
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


def check_count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError("must be a non-negative integer")


def check_json(value: Any) -> Json:
    return value  # type: ignore[no-any-return]  # the decoder only returns JSON


def check_message(value: Any) -> Message:
    if not isinstance(value, dict):
        raise ValueError("must be an object with a 'type'")
    kind = value.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValueError("must have a non-empty string 'type'")
    if reserved_type(kind):  # a server's message: no peer may send one as its own
        raise ValueError(f"must not have the type {kind[:40]!r}: it is reserved for the server")
    # Decoded JSON always re-encodes (the decoder refuses what UTF-8 cannot carry).
    return Message.decoded(kind, value.get("payload", ABSENT))


#: The default of a field that must be present.
REQUIRED: Final = object()


@final
@attrs.frozen
class Field:
    wire: str
    attr: str
    check: Check
    #: Value when the field is absent, or REQUIRED. An optional field equal to
    #: its default is left out when encoding.
    default: Any = REQUIRED


@final
@attrs.frozen
class Dialect:
    """Where one family of wire objects keeps its name and its fields."""

    what: str  #: for error messages: "hub frame", "cluster message", "command"
    tag: str  #: the key holding the name: "type", "kind", "op"
    #: The key holding the fields ("payload"), or None when they sit beside the tag.
    nested: str | None = None
    #: A constant ("v", 1) every object carries and every reader checks.
    version: tuple[str, int] | None = None
    #: Fields every object of the dialect carries, before its own.
    header: tuple[Field, ...] = ()
    #: How an unknown name is described, e.g. "; expected broadcast, ...".
    unknown_hint: str = ""
    unknown_code: str = "unknown_type"
    #: The error code of a known object with a field missing or wrong.
    bad_code: str = "bad_frame"
    #: How deep an object may nest: what a client or an embedder may give
    #: (``MAX_JSON_DEPTH``), plus the levels this dialect's envelope wraps it in.
    max_depth: int = MAX_JSON_DEPTH


@final
@attrs.frozen
class Schema:
    dialect: Dialect
    name: str
    cls: type[Any]
    fields: tuple[Field, ...]
    #: Per field: (attribute, '"wire":', how to encode the value, default, required).
    plan: tuple[tuple[str, str, Callable[[Any], str], Any, bool], ...] = attrs.field(
        init=False, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        plan = tuple(
            (
                field.attr,
                f'"{field.wire}":',
                _VALUE_ENCODERS.get(field.check, _encode_value),
                field.default,
                field.default is REQUIRED,
            )
            for field in self.fields
        )
        object.__setattr__(self, "plan", plan)


_BY_TYPE: dict[type[Any], Schema] = {}
_BY_NAME: dict[tuple[int, str], Schema] = {}


def register(dialect: Dialect, name: str, cls: type[Any], *fields: Field) -> Schema:
    """Declare ``cls`` as the wire object ``name`` of ``dialect`` (at import time only)."""
    schema = Schema(dialect, name, cls, (*dialect.header, *fields))
    _BY_TYPE[cls] = schema
    _BY_NAME[(id(dialect), name)] = schema
    return schema


def wire_name(obj: Any) -> str:
    """The name ``obj`` travels under (``"BROADCAST"``, ``"add"``, ``"kick"``...)."""
    return _BY_TYPE[type(obj)].name


def names(dialect: Dialect) -> tuple[str, ...]:
    """Every name of ``dialect``, in declaration order."""
    return tuple(schema.name for schema in _BY_TYPE.values() if schema.dialect is dialect)


def _encode_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(map(_encode_value, value)) + "]"
    if isinstance(value, Member | RemoteMember | Sender | StreamPosition):
        return dumps(value.to_json())
    if isinstance(value, PresenceMode):
        return dumps(value.value)
    return dumps(value)


def _encode_message(message: Message) -> str:
    return message.json  # spliced: encoded once, when the message was built


def _encode_names(names: tuple[str, ...]) -> str:
    return "[" + ",".join(map(encode_basestring, names)) + "]"


def _encode_flag(flag: bool) -> str:
    return "true" if flag else "false"


#: How a field's value is written, by the check that reads it: the common cases
#: skip the general encoder (names and flags are most of every frame).
_VALUE_ENCODERS: Final[dict[Check, Callable[[Any], str]]] = {
    check_name: encode_basestring,
    check_text: encode_basestring,
    check_names: _encode_names,
    check_message: _encode_message,
    check_flag: _encode_flag,
    check_count: int.__repr__,
}


def _encode_fields(schema: Schema, obj: Any, parts: list[str]) -> str:
    for attr, prefix, encode_value, default, required in schema.plan:
        value = getattr(obj, attr)
        if required or value != default:
            parts.append(prefix + encode_value(value))
    return "{" + ",".join(parts) + "}"


def encode(obj: Any) -> str:
    """The wire text of a frame, cluster message or command (compact JSON)."""
    schema = _BY_TYPE[type(obj)]
    dialect = schema.dialect
    head = f'"{dialect.tag}":{encode_basestring(schema.name)}'
    if dialect.nested is not None:
        return "{" + head + f',"{dialect.nested}":' + _encode_fields(schema, obj, []) + "}"
    if dialect.version is not None:
        key, version = dialect.version
        head = f'"{key}":{version},{head}'
    return _encode_fields(schema, obj, [head])


def decode_fields(
    fields: tuple[Field, ...], source: Mapping[str, Any], name: str, code: str
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field in fields:
        if field.wire not in source:
            if field.default is REQUIRED:
                raise PeerError(
                    f"{name} is missing {field.wire}",
                    code=code,
                    field=field.wire,
                    channel=values.get("channel"),
                )
            values[field.attr] = field.default
            continue
        try:
            values[field.attr] = field.check(source[field.wire])
        except ValueError as exc:
            raise PeerError(
                f"{name} field {field.wire} {exc}",
                code=code,
                field=field.wire,
                channel=values.get("channel"),
            ) from None
    return values


def decode(dialect: Dialect, data: str | bytes, *, max_bytes: int) -> Any:
    """Parse and validate one object of ``dialect``, or raise ``PeerError`` naming the fault."""
    obj = decode_object(data, max_bytes=max_bytes, max_depth=dialect.max_depth, what=dialect.what)
    if dialect.version is not None:
        key, version = dialect.version
        if obj.get(key) != version or isinstance(obj.get(key), bool):
            raise PeerError(
                f"{dialect.what} protocol {obj.get(key)!r} is not {version}",
                code="unsupported_protocol",
                field=key,
            )
    name = obj.get(dialect.tag)
    if not isinstance(name, str):
        raise PeerError(
            f"{dialect.what} needs a string {dialect.tag!r}",
            code=dialect.bad_code,
            field=dialect.tag,
        )
    schema = _BY_NAME.get((id(dialect), name))
    if schema is None:
        raise PeerError(
            f"unknown {dialect.what} {dialect.tag} {name[:40]!r}{dialect.unknown_hint}",
            code=dialect.unknown_code,
            field=dialect.tag,
        )
    source: Any = obj
    if dialect.nested is not None:
        source = obj.get(dialect.nested, {})
        if not isinstance(source, dict):
            raise PeerError(
                f"{name} {dialect.nested} must be an object",
                code=dialect.bad_code,
                field=dialect.nested,
            )
    return schema.cls(**decode_fields(schema.fields, source, name, dialect.bad_code))
