"""Value classes shared by events, actions and wire forms: messages, members, store entries."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final, final

import attrs

from ._json import Json, JsonObject, dumps
from .errors import LocalUsageError

__all__ = [
    "ABSENT",
    "Absent",
    "Member",
    "Message",
    "RemoteMember",
    "StoreEntry",
    "non_empty_str",
    "str_tuple",
]


class Absent(enum.Enum):
    """Marks a message without a payload, which differs from ``payload: null``."""

    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent.ABSENT


def non_empty_str(owner: str, name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty string, else raise ``LocalUsageError``."""
    if not isinstance(value, str) or not value:
        raise LocalUsageError(f"{owner}: {name} must be a non-empty string, got {value!r}")
    return value


def str_tuple(owner: str, name: str, value: object) -> tuple[str, ...]:
    """Non-empty strings as a duplicate-free tuple in first-seen order.

    A bare string is refused: iterating it would give one entry per letter.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise LocalUsageError(
            f"{owner}: {name} must be an iterable of strings, not {type(value).__name__}"
        )
    return tuple(dict.fromkeys(non_empty_str(owner, f"each of {name}", item) for item in value))


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@final
@attrs.frozen(kw_only=True, repr=False)
class Message:
    """An application message ``{"type", "payload"?}``, JSON-encoded once, when built.

    ``payload_json`` is the payload's JSON text (``None`` when absent) and
    ``json`` the whole message's; every wire form (the client frame, the hub
    frame, the cluster message) splices these texts in instead of encoding the
    payload again, so a broadcast's payload is encoded exactly once however
    many sockets, bridges and instances it reaches. ``size`` is ``json`` in
    UTF-8 bytes: what ``Limits.max_message_bytes`` counts.
    """

    type: str
    payload: Json | Absent = ABSENT
    payload_json: str | None = attrs.field(init=False, eq=False)
    json: str = attrs.field(init=False, eq=False)
    size: int = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        non_empty_str("Message", "type", self.type)
        try:
            head = '{"type":' + dumps(self.type)
            encoded = None if self.payload is ABSENT else dumps(self.payload)
            text = head + "}" if encoded is None else f'{head},"payload":{encoded}}}'
            # A lone surrogate cannot travel in UTF-8: encoding says so.
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
        except (TypeError, ValueError) as exc:
            raise LocalUsageError(
                f"Message: type and payload must be JSON-serializable text with finite "
                f"numbers: {exc}"
            ) from None
        object.__setattr__(self, "payload_json", encoded)
        object.__setattr__(self, "json", text)
        object.__setattr__(self, "size", size)

    @classmethod
    def coerce(cls, value: Message | Mapping[str, Any]) -> Message:
        """Accept a ``Message`` or a mapping such as ``{"type": "chat", "payload": {...}}``."""
        if isinstance(value, Message):
            return value
        if not isinstance(value, Mapping):
            raise LocalUsageError(
                f"message must be a Message or a mapping with a 'type', not {type(value).__name__}"
            )
        extra = set(value) - {"type", "payload"}
        if extra:
            raise LocalUsageError(f"message has unknown keys {sorted(extra)}; only type, payload")
        if "type" not in value:
            raise LocalUsageError("message needs a 'type' (a non-empty string)")
        return cls(type=value["type"], payload=value.get("payload", ABSENT))

    def __repr__(self) -> str:
        payload = "" if self.payload_json is None else f", payload={_short(self.payload_json)}"
        return f"Message(type={self.type!r}{payload})"


@final
@attrs.frozen(kw_only=True)
class Member:
    """One session in a roster: who, and the latest metadata they published."""

    session_id: str
    user_id: str
    metadata: JsonObject | None = attrs.field(default=None, hash=False)

    def to_json(self) -> JsonObject:
        out: JsonObject = {"sessionId": self.session_id, "userId": self.user_id}
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out


@final
@attrs.frozen(kw_only=True)
class StoreEntry:
    """One (channel, session) membership of this process, as the shared store holds it."""

    channel: str
    session_id: str
    member: Member


@final
@attrs.frozen(kw_only=True)
class RemoteMember:
    """A member of another instance of the cluster, with the ns it joined on."""

    ns: str
    member: Member

    def to_json(self) -> JsonObject:
        return {"ns": self.ns, **self.member.to_json()}
