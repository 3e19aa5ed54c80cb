"""Strict JSON: the text rules under every wire format.

The encoder is compact and refuses NaN, infinities, integers too long to
print and non-JSON values; the decoder checks the size before it parses, and
refuses NaN/Infinity literals, numbers that only fit as an infinity (``1e999``),
integers past Python's digit limit, duplicate keys (two readers could disagree
on which value wins) and unpaired surrogates, and reports failures as
``PeerError`` so no caller has to know what ``json`` raises. Whatever it
returns re-encodes: a value read from one peer can always be sent to another.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn, TypeAlias

from .errors import CloseCode, LocalUsageError, PeerError

__all__ = ["Json", "JsonObject", "decode_object", "dumps", "freeze_json", "utf8_len"]

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
JsonObject: TypeAlias = "dict[str, Json]"

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


def decode_object(data: str | bytes, *, max_bytes: int, what: str) -> JsonObject:
    """Decode one JSON object of at most ``max_bytes`` bytes, or raise ``PeerError``."""
    size = len(data) if isinstance(data, bytes) else utf8_len(data)
    if size > max_bytes:
        raise PeerError(
            f"{what} of {size} bytes is over the {max_bytes}-byte limit",
            code="too_big",
            close_code=CloseCode.MESSAGE_TOO_BIG,
            http_status=413,
        )
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
    if size > max_bytes:
        raise LocalUsageError(f"{what} is {size} bytes of JSON; the limit is {max_bytes}")
    if value is None or isinstance(value, (str, int, float)):
        return value, text
    return json.loads(text), text
