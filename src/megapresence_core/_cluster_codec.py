"""Cluster messages (NATS): what instances of one app tell each other, and their codec.

Every message is one JSON object ``{"v": 1, "kind": K, "from": instanceId,
"epoch": bootEpoch, ...}``. ``from`` lets the sender skip its own echo;
``epoch`` (boot time in milliseconds, chosen by the shim) tells a restarted
instance from its previous incarnation. Fan-out kinds travel on the app's
``fanout`` subject, roster kinds on its ``roster`` subject.

==============  =====================================================
``broadcast``   ``ns``, ``channel``, ``message``, ``except?``
``direct``      ``userId``, ``message``
``kick``        ``sessionId``, ``reason?``, ``requeue?``
``add``         ``ns``, ``member: {sessionId, userId, metadata?}`` (also an update)
``remove``      ``sessionId``
``heartbeat``   ``count``, ``digest``: what the sender holds, to spot a gap
``snapshot``    ``snap``, ``part``, ``parts``, ``members: [{ns, sessionId, userId,
                metadata?}]``: every member of the sender, in parts
``resync``      ``target``: an instance id, or ``"*"``: please send a snapshot
``bye``         the sender is stopping: forget its members now
==============  =====================================================
"""

from __future__ import annotations

from typing import Any, Final, final

import attrs

from ._errors import FrameError
from ._hub_frames import (
    check_flag,
    check_message,
    check_name,
    check_names,
    check_object,
    check_text,
)
from ._json import JsonObject, decode_object, dumps
from ._values import Member, Message

__all__ = [
    "CLUSTER_KINDS",
    "CLUSTER_PROTOCOL_VERSION",
    "ClusterEnvelope",
    "RemoteMember",
    "decode_cluster_message",
    "encode_cluster_message",
]

CLUSTER_PROTOCOL_VERSION: Final = 1


@final
@attrs.frozen(kw_only=True)
class RemoteMember:
    """A member of another instance, with the path (ns) it joined on."""

    ns: str
    member: Member


@final
@attrs.frozen(kw_only=True)
class ClusterEnvelope:
    """One decoded cluster message; ``fields`` holds the kind's own fields, validated."""

    kind: str
    sender: str
    epoch: int
    fields: dict[str, Any] = attrs.field(hash=False)


def _member(value: Any) -> Member:
    obj = check_object(value)
    metadata = obj.get("metadata")
    return Member(
        session_id=check_name(obj.get("sessionId")),
        user_id=check_name(obj.get("userId")),
        metadata=None if metadata is None else check_object(metadata),
    )


def _remote_member(value: Any) -> RemoteMember:
    obj = check_object(value)
    return RemoteMember(ns=check_name(obj.get("ns")), member=_member(obj))


def _members(value: Any) -> tuple[RemoteMember, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of members")
    return tuple(_remote_member(item) for item in value)


def _count(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError("must be a non-negative integer")


_REQUIRED: Final = object()

#: kind -> (wire field, check, default or _REQUIRED)
_KINDS: Final[dict[str, tuple[tuple[str, Any, Any], ...]]] = {
    "broadcast": (
        ("ns", check_name, _REQUIRED),
        ("channel", check_name, _REQUIRED),
        ("message", check_message, _REQUIRED),
        ("except", check_names, ()),
    ),
    "direct": (("userId", check_name, _REQUIRED), ("message", check_message, _REQUIRED)),
    "kick": (
        ("sessionId", check_name, _REQUIRED),
        ("reason", check_text, None),
        ("requeue", check_flag, False),
    ),
    "add": (("ns", check_name, _REQUIRED), ("member", _member, _REQUIRED)),
    "remove": (("sessionId", check_name, _REQUIRED),),
    "heartbeat": (("count", _count, _REQUIRED), ("digest", _count, _REQUIRED)),
    "snapshot": (
        ("snap", _count, _REQUIRED),
        ("part", _count, _REQUIRED),
        ("parts", _count, _REQUIRED),
        ("members", _members, _REQUIRED),
    ),
    "resync": (("target", check_name, _REQUIRED),),
    "bye": (),
}

#: The kinds, for fuzz dictionaries and tests.
CLUSTER_KINDS: Final = tuple(_KINDS)


def _wire(value: Any) -> Any:
    if isinstance(value, Message):
        return value.to_json()
    if isinstance(value, Member):
        return value.to_json()
    if isinstance(value, tuple):
        return [_wire(item) for item in value]
    if isinstance(value, RemoteMember):
        return {"ns": value.ns, **value.member.to_json()}
    return value


def encode_cluster_message(kind: str, sender: str, epoch: int, **fields: Any) -> str:
    """The message as compact JSON; optional fields at their default are left out."""
    out: JsonObject = {"v": CLUSTER_PROTOCOL_VERSION, "kind": kind, "from": sender, "epoch": epoch}
    for wire, _, default in _KINDS[kind]:
        value = fields.get(wire, default)
        if default is _REQUIRED or value != default:
            out[wire] = _wire(value)
    return dumps(out)


def decode_cluster_message(data: str | bytes, *, max_bytes: int) -> ClusterEnvelope:
    """Parse and validate one cluster message, or raise ``FrameError`` naming the fault."""
    obj = decode_object(data, max_bytes=max_bytes, what="cluster message")
    if obj.get("v") != CLUSTER_PROTOCOL_VERSION:
        raise FrameError(
            f"cluster protocol {obj.get('v')!r} is not {CLUSTER_PROTOCOL_VERSION}",
            code="unsupported_protocol",
            field="v",
        )
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise FrameError(
            f"unknown cluster message kind {str(kind)[:40]!r}", code="unknown_type", field="kind"
        )
    spec = _KINDS[kind]
    try:
        sender = check_name(obj.get("from"))
        epoch = _count(obj.get("epoch"))
    except ValueError as exc:
        raise FrameError(f"cluster message sender {exc}", field="from/epoch") from None
    fields: dict[str, Any] = {}
    for wire, check, default in spec:
        if wire not in obj:
            if default is _REQUIRED:
                raise FrameError(f"{kind} is missing {wire}", field=wire)
            fields[wire] = default
            continue
        try:
            fields[wire] = check(obj[wire])
        except ValueError as exc:
            raise FrameError(f"{kind} field {wire} {exc}", field=wire) from None
    return ClusterEnvelope(kind=kind, sender=sender, epoch=epoch, fields=fields)
