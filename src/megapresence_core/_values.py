"""Strict JSON, and the value classes built on it: messages, members, store entries.

Strict JSON is the text rule under every wire form. The encoder is compact and
refuses NaN, infinities, integers too long to print and non-JSON values; the
decoder checks the size before it parses, and refuses NaN/Infinity literals,
numbers that only fit as an infinity (``1e999``), integers past Python's digit
limit, duplicate keys (two readers could disagree on which value wins),
unpaired surrogates and values nested deeper than ``MAX_JSON_DEPTH``, and
reports failures as ``PeerError`` so no caller has to know what ``json``
raises. Whatever it returns re-encodes: a value read from one peer can always
be sent to another, inside any frame, from any call depth.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, NoReturn, TypeAlias, TypeVar, final

import attrs

from .errors import CloseCode, LocalUsageError, PeerError

__all__ = [
    "ABSENT",
    "ENVELOPE_DEPTH",
    "MAX_JSON_DEPTH",
    "RESERVED_PREFIXES",
    "RESERVED_TYPES",
    "Absent",
    "Json",
    "JsonObject",
    "Member",
    "Message",
    "PresenceMode",
    "RemoteMember",
    "Sender",
    "StoreEntry",
    "decode_object",
    "dumps",
    "freeze_json",
    "non_empty_str",
    "reserved_type",
    "str_tuple",
    "utf8_len",
]

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
JsonObject: TypeAlias = "dict[str, Json]"
E = TypeVar("E", bound=enum.Enum)

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: object) -> str:
    """Encode ``value`` compactly; raise ``TypeError``/``ValueError`` if it is not JSON."""
    return _encoder.encode(value)


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding when the answer is obvious.

    Lone surrogates count as three bytes here; they are refused elsewhere.
    """
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


# A JSON escape of a surrogate; only text containing one can decode to a string
# that UTF-8 cannot carry, so only that text pays for the full check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_encodable(value: object) -> None:
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode("utf-8")
            _check_encodable(item)
    elif isinstance(value, list):
        for item in value:
            _check_encodable(item)


#: Arrays and objects nest at most this deep, counting the outermost as 1, in
#: everything decoded from a peer or given by the embedder. Python's C encoder
#: recurses once per level and fails near 1,000 levels, fewer from deep in a call
#: stack; a value that decoded at 970 levels once failed to re-encode at the hub
#: (inside a hub frame) and in a watcher's snapshot. Messages need a handful.
MAX_JSON_DEPTH: Final = 64


#: What a hub frame or a cluster message adds around a client's value: the
#: frame, its payload, the message, a member, its sessions... so that whatever a
#: client or an embedder may send, every hop after it carries (the limits chain).
ENVELOPE_DEPTH: Final = 8


def _too_deep(text: str, value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (which ``text`` encodes) nests deeper than ``limit``."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case, at C speed: not enough brackets to be that deep
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        for child in children:
            if isinstance(child, (dict, list)):
                if depth == limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _nested_too_deep(what: str) -> LocalUsageError:
    return LocalUsageError(
        f"{what} nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
    )


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range (it would be an infinity)")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # pragma: no branch - a duplicate is always found
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


_decoder = json.JSONDecoder(
    object_pairs_hook=_unique_keys, parse_constant=_reject_constant, parse_float=_finite_float
)


def check_size(data: str | bytes, *, max_bytes: int, what: str) -> None:
    """Raise ``PeerError`` (``too_big``) if ``data`` is over ``max_bytes`` bytes of UTF-8."""
    size = len(data) if isinstance(data, bytes) else utf8_len(data)
    if size > max_bytes:
        raise PeerError(
            f"{what} of {size} bytes is over the {max_bytes}-byte limit",
            code="too_big",
            close_code=CloseCode.MESSAGE_TOO_BIG,
            http_status=413,
        )


def decode_object(
    data: str | bytes, *, max_bytes: int, what: str, max_depth: int = MAX_JSON_DEPTH
) -> JsonObject:
    """Decode one JSON object of at most ``max_bytes`` bytes nesting at most
    ``max_depth`` deep, or raise ``PeerError``."""
    check_size(data, max_bytes=max_bytes, what=what)
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = _decoder.decode(text)
        if _SURROGATE_ESCAPE.search(text):
            _check_encodable(value)
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise PeerError(f"{what} is not valid JSON: {exc}", code="bad_json") from None
    if not isinstance(value, dict):
        raise PeerError(
            f"{what} must be a JSON object, not {type(value).__name__}", code="bad_json"
        )
    if _too_deep(text, value, max_depth):
        raise PeerError(f"{what} nests deeper than {max_depth} levels", code="bad_json")
    return value


def freeze_json(value: object, *, what: str, max_bytes: int) -> tuple[Any, str]:
    """Validate a JSON value given by the embedding program.

    Returns a private copy (so later mutation by the caller cannot reach our
    state) and its encoding; raises ``LocalUsageError`` naming ``what``.
    """
    try:
        text = dumps(value)
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise LocalUsageError(
            f"{what} must be JSON-serializable text with finite numbers: {exc}"
        ) from None
    except RecursionError:  # nested past the encoder's reach
        raise _nested_too_deep(what) from None
    if _too_deep(text, value):
        raise _nested_too_deep(what)
    if size > max_bytes:
        raise LocalUsageError(f"{what} is {size} bytes of JSON; the limit is {max_bytes}")
    if value is None or isinstance(value, (str, int, float)):
        return value, text
    return json.loads(text), text


class Absent(enum.Enum):
    """Marks a message without a payload, which differs from ``payload: null``."""

    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = Absent.ABSENT


def enum_member(kind: type[E], owner: str, name: str, value: object) -> E:
    """``value`` if it is a member of ``kind``, the member it spells (its documented
    string), else ``LocalUsageError`` listing the spellings: a wrong one is the
    program's own mistake, caught where it is made rather than at first use."""
    if isinstance(value, kind):
        return value
    for member in kind:
        if member.value == value:
            return member
    names = ", ".join(str(member.value) for member in kind)
    raise LocalUsageError(f"{owner}: {name} must be one of {names}, not {value!r}")


def non_empty_str(owner: str, name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty string UTF-8 can carry, else raise
    ``LocalUsageError``: of the program's own making (500) when it is no string or
    empty; with a lone surrogate, 400, since such text comes from a peer (a token's
    claim, say) that no wire here could carry."""
    if not isinstance(value, str) or not value:
        raise LocalUsageError(f"{owner}: {name} must be a non-empty string, got {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalUsageError(
                f"{owner}: {name} holds a lone surrogate, which UTF-8 cannot carry",
                code="bad_command",
                close_code=CloseCode.POLICY,
                http_status=400,
            ) from None
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


#: The server's own message types: no client may send a message of one of these types,
#: nor may the program (``Message``) or a peer server (a hub or cluster frame's message).
RESERVED_TYPES: Final = frozenset(
    ("error", "subscribed", "unsubscribed", "direct.result", "roster", "welcome")
)
#: Type prefixes kept for the server's messages, now and in future versions.
RESERVED_PREFIXES: Final = ("presence.", "session.", "server.", "stream.")


def reserved_type(kind: str) -> bool:
    """Whether ``kind`` is a server message's type, which an application message (one
    a client, the program or another server sends) must not have: a client would take
    it for the server's."""
    return kind in RESERVED_TYPES or kind.startswith(RESERVED_PREFIXES)


@final
@attrs.frozen(kw_only=True, repr=False)
class Message:
    """An application message ``{"type", "payload"?}``, JSON-encoded once.

    ``payload_json`` is the payload's JSON text (``None`` when absent) and
    ``json`` the whole message's; every wire form (the client frame, the hub
    frame, the cluster message) splices these texts in instead of encoding the
    payload again, so a broadcast's payload is encoded exactly once however
    many sockets, bridges and instances it reaches. ``size`` is ``json`` in
    UTF-8 bytes: what ``Limits.max_message_bytes`` counts.

    A message the program builds is encoded when built, so a payload that is not
    JSON fails there; one read from the wire (:meth:`decoded`) is encoded when
    first needed, since the hub, which only routes it, never needs it.
    """

    type: str
    payload: Json | Absent = ABSENT

    def __attrs_post_init__(self) -> None:
        non_empty_str("Message", "type", self.type)
        if reserved_type(self.type):
            raise LocalUsageError(
                f"Message: type {self.type[:40]!r} is reserved for the server's own messages "
                "(RESERVED_TYPES, RESERVED_PREFIXES): give the application's message a type "
                "of its own"
            )
        try:
            # A lone surrogate cannot travel in UTF-8: measuring says so.
            self.size  # noqa: B018 - encodes now, so misuse fails here
        except (TypeError, ValueError) as exc:
            raise LocalUsageError(
                f"Message: type and payload must be JSON-serializable text with finite "
                f"numbers: {exc}"
            ) from None
        except RecursionError:  # nested past the encoder's reach
            raise _nested_too_deep("Message: payload") from None
        encoded = self.payload_json
        if encoded is not None and _too_deep(encoded, self.payload):
            raise _nested_too_deep("Message: payload")

    @classmethod
    def decoded(cls, kind: str, payload: Json | Absent) -> Message:
        """A message read by the strict decoder (a non-empty ``kind``, JSON that encodes
        again), not encoded until its text is first needed."""
        message = object.__new__(cls)
        object.__setattr__(message, "type", kind)
        object.__setattr__(message, "payload", payload)
        return message

    @functools.cached_property
    def payload_json(self) -> str | None:
        return None if self.payload is ABSENT else dumps(self.payload)

    @functools.cached_property
    def json(self) -> str:
        head = '{"type":' + dumps(self.type)
        encoded = self.payload_json
        return head + "}" if encoded is None else f'{head},"payload":{encoded}}}'

    @functools.cached_property
    def size(self) -> int:
        text = self.json
        return len(text) if text.isascii() else len(text.encode("utf-8"))

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
    """A member of another process (an instance of the cluster, or a bridge behind the hub),
    with the ns it joined on (empty when the hub, which does not say, told us) and its channels.

    ``fingerprint`` is a 64-bit BLAKE2b hash of everything a peer could disagree about
    (session, user, channels in any order, metadata): the cluster's heartbeat digest XORs
    them, so a lost subscribe or metadata change is noticed, not only a lost join. Not a
    CRC: a CRC is linear, so the XOR of several members' CRCs cancels out alike changes
    (two sessions whose ``{"s": 0}`` both became ``{"s": 1}``) and the lost changes would
    never be noticed.
    """

    ns: str
    member: Member
    channels: tuple[str, ...] = ()
    #: The cluster claim of the connection holding it (0: none, its socket closed): of two
    #: instances holding the session at once, the one with the higher (claim, instance id)
    #: keeps it. Not in ``fingerprint``: a claim is not a state peers must agree on.
    claim: int = 0

    @functools.cached_property
    def fingerprint(self) -> int:
        """Computed once, when a digest first needs it (a join without a cluster never does)."""
        member = self.member
        text = "\0".join(
            (
                member.session_id,
                member.user_id,
                ",".join(sorted(self.channels)),
                dumps(member.metadata),
            )
        )
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def to_json(self) -> JsonObject:
        out: JsonObject = {"ns": self.ns, **self.member.to_json()}
        if self.channels:
            out["channels"] = list(self.channels)
        if self.claim:
            out["claim"] = self.claim
        return out


class PresenceMode(enum.Enum):
    """What a subscription receives about the channel's members.

    ``NONE`` is present only: counted and listed, told nothing (the default, and
    the way out of n-squared traffic in big channels); ``USERS`` and ``SESSIONS``
    get a snapshot then diffs, one member per user or per session; ``COUNT`` gets
    coalesced ``{sessions, users}`` counts.
    """

    NONE = "none"
    USERS = "users"
    SESSIONS = "sessions"
    COUNT = "count"

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"PresenceMode.{self.name}"

    @classmethod
    def coerce(cls, owner: str, value: object) -> PresenceMode:
        """A ``PresenceMode`` or its wire name, else ``LocalUsageError`` naming ``owner``."""
        return enum_member(cls, owner, "mode", value)


@final
@attrs.frozen(kw_only=True)
class Sender:
    """Who published a channel message, stamped by the server (never taken from a browser)."""

    user_id: str
    session_id: str

    def to_json(self) -> JsonObject:
        return {"userId": self.user_id, "sessionId": self.session_id}


@final
@attrs.frozen(kw_only=True)
class StreamPosition:
    """A place in a channel's stream: the last ``offset`` a client holds, of stream ``epoch``.

    Offsets count a stream's publications from 1 (0: before the first); the
    epoch names the stream, and a new one means its history was lost.
    """

    offset: int
    epoch: str

    def to_json(self) -> JsonObject:
        return {"offset": self.offset, "epoch": self.epoch}
