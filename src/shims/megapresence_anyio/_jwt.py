"""Server-side identity from signed tokens (JWT), for ``megapresence serve --auth jwt``.

The token comes from the ``Authorization: Bearer`` header or, since a browser
cannot set headers on a WebSocket, from a query parameter (``?token=``). PyJWT
(the ``jwt`` extra) checks the signature and the times; nothing here is crypto.

Claims (docs/deploy.md has the table):

- ``sub`` (required): the user id;
- ``exp`` (required): checked, with ``leeway`` seconds of clock skew; like ``nbf``
  and ``iat``, a JSON number (not a numeric string, which PyJWT would take) and
  at most ``MAX_TOKEN_TIME`` (the last second of the year 9999);
- ``sid``: the session id; without it the client's ``?session=`` is used (the
  per-tab id the JavaScript client sends back, so a reload keeps its session;
  the core never lets one user take over another user's session), else a new one;
- ``channels``: the session's first channels (a list of names; default the
  server's);
- ``admin``: true lets the session kick;
- ``aud`` and ``iss``: checked when the server is given an audience or issuer
  (then required); a token with an ``aud`` is refused by a server given none.

A token that is missing, badly signed, expired or of the wrong shape gets HTTP
401 with a short reason; what was wrong with it goes to the log at info level,
never to the peer in more detail than "invalid token".
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any, Final, final

import attrs

from megapresence_core import LocalUsageError

from ._http import HandshakeRequest
from ._logging import bounded, log_event
from ._types import Identity, Refusal

__all__ = [
    "HMAC_ALGORITHMS",
    "JWT_ALGORITHMS",
    "MAX_TOKEN_TIME",
    "PUBLIC_KEY_ENV",
    "SECRET_ENV",
    "JwtAuthenticator",
    "read_key",
]

logger = logging.getLogger("megapresence.jwt")

#: Algorithms signed with a shared secret; the others need a public key (PEM).
HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
#: Every algorithm ``serve --auth jwt`` accepts: "none" is not one of them.
JWT_ALGORITHMS: Final = (
    *HMAC_ALGORITHMS,
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def min_secret_bytes(algorithm: str) -> int:
    """An HMAC secret shorter than its hash is refused when the server is built (RFC 7518
    3.2): 32 bytes for HS256, 48 for HS384, 64 for HS512."""
    return int(algorithm[2:]) // 8


def _bearer(request: HandshakeRequest, query_parameter: str) -> str | None:
    header = request.header("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return request.query.get(query_parameter) or None


#: The latest time a token may name (``exp``, ``nbf``, ``iat``): 9999-12-31T23:59:59Z.
#: Past it a date is no date, and a token that never expires is no token.
MAX_TOKEN_TIME: Final = 253_402_300_799


def _check_times(claims: Mapping[str, object]) -> None:
    """Refuse an ``exp``, ``nbf`` or ``iat`` that is not a JSON number (PyJWT takes
    ``"9999999999"``, even with spaces) or names a time past ``MAX_TOKEN_TIME``."""
    for claim in ("exp", "nbf", "iat"):
        if claim not in claims:
            continue
        value = claims[claim]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"claim {claim!r} must be a number of seconds since the epoch")
        if not value <= MAX_TOKEN_TIME:
            raise ValueError(f"claim {claim!r} is past the year 9999")


def _names(value: object, claim: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"claim {claim!r} must be a list of names")
    return tuple(value)


@final
@attrs.frozen(kw_only=True)
class JwtAuthenticator:
    """An ``authenticate`` hook that admits a connection on a valid signed token only.

    ``key`` is the HMAC secret (bytes, at least as long as the hash) for the HS algorithms, or the
    public key in PEM for the others. ``default_channels`` are given to a token
    without ``channels``.
    """

    key: bytes = attrs.field(repr=False)
    algorithm: str = "HS256"
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0
    query_parameter: str = "token"
    default_channels: tuple[str, ...] = ()
    _jwt: Any = attrs.field(init=False, repr=False, eq=False)
    _key: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        import jwt  # the jwt extra: pip install 'megapresence[jwt]'

        if self.algorithm not in JWT_ALGORITHMS:
            raise LocalUsageError(
                f"JWT algorithm {self.algorithm!r} is not one of {', '.join(JWT_ALGORITHMS)}"
            )
        if not (self.leeway >= 0):
            raise LocalUsageError(f"JWT leeway must be 0 or more seconds, not {self.leeway!r}")
        key: Any = self.key
        if self.algorithm in HMAC_ALGORITHMS:
            if len(self.key) < min_secret_bytes(self.algorithm):
                raise LocalUsageError(
                    f"a {self.algorithm} secret must be at least "
                    f"{min_secret_bytes(self.algorithm)} bytes "
                    f"(this one is {len(self.key)})"
                )
        else:
            try:
                key = jwt.get_algorithm_by_name(self.algorithm).prepare_key(self.key)
            except (ValueError, TypeError, jwt.InvalidKeyError) as exc:
                raise LocalUsageError(
                    f"cannot read the {self.algorithm} public key (PEM): {exc}"
                ) from None
        object.__setattr__(self, "_jwt", jwt)
        object.__setattr__(self, "_key", key)

    def claims(self, token: str) -> dict[str, Any]:
        """The verified claims of ``token``; raises ``jwt.InvalidTokenError`` otherwise, or
        ``ValueError`` for a time that is no JSON number or past ``MAX_TOKEN_TIME``."""
        required = ["exp", "sub"]
        if self.audience is not None:
            required.append("aud")
        if self.issuer is not None:
            required.append("iss")
        claims: dict[str, Any] = self._jwt.decode(
            token,
            self._key,
            algorithms=[self.algorithm],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            options={"require": required},
        )
        _check_times(claims)
        return claims

    def identity(self, claims: dict[str, Any], request: HandshakeRequest) -> Identity:
        """The connection's identity from verified claims; ``ValueError`` on a bad shape."""
        user = claims["sub"]
        if not isinstance(user, str) or not user:
            raise ValueError("claim 'sub' must be a non-empty string")
        session = claims.get("sid")
        if session is None:
            session = request.query.get("session") or f"{user}-{secrets.token_hex(8)}"
        elif not isinstance(session, str) or not session:
            raise ValueError("claim 'sid' must be a non-empty string")
        channels = self.default_channels
        if "channels" in claims:
            channels = _names(claims["channels"], "channels")
        admin = claims.get("admin", False)
        if not isinstance(admin, bool):
            raise ValueError("claim 'admin' must be true or false")
        return Identity(
            user_id=user,
            session_id=session,
            channels=channels,
            metadata={"status": "online", "admin": admin},
        )

    def __call__(self, request: HandshakeRequest) -> Identity | Refusal:
        token = _bearer(request, self.query_parameter)
        if token is None:
            where = f"Authorization: Bearer, or ?{self.query_parameter}="
            return Refusal(status=401, reason=f"a token is needed ({where})")
        try:
            return self.identity(self.claims(token), request)
        except self._jwt.ExpiredSignatureError:
            return Refusal(status=401, reason="token expired")
        except (self._jwt.InvalidTokenError, ValueError) as exc:
            fields = {"path": bounded(request.path), "why": bounded(str(exc))}
            log_event(logger, logging.INFO, "jwt.refused", fields)
            return Refusal(status=401, reason="invalid token")


#: Where ``serve --auth jwt`` reads its key when no ``--jwt-key-file`` is given.
SECRET_ENV: Final = "MEGAPRESENCE_JWT_SECRET"
PUBLIC_KEY_ENV: Final = "MEGAPRESENCE_JWT_PUBLIC_KEY"


def read_key(algorithm: str, key_file: str | None, environ: Mapping[str, str]) -> bytes:
    """The key for ``algorithm``: the file's bytes, else its environment variable's
    (``MEGAPRESENCE_JWT_SECRET`` for HS*, ``MEGAPRESENCE_JWT_PUBLIC_KEY`` for the others).
    Never a command-line value: a secret there shows in every process listing."""
    if key_file is not None:
        try:
            with open(key_file, "rb") as file:
                return file.read()
        except OSError as exc:
            raise LocalUsageError(
                f"cannot read --jwt-key-file {key_file!r}: {exc.strerror or exc}"
            ) from None
    hmac = algorithm in HMAC_ALGORITHMS
    name = SECRET_ENV if hmac else PUBLIC_KEY_ENV
    value = environ.get(name)
    if not value:
        kind = "shared key" if hmac else "public key (PEM)"
        raise LocalUsageError(
            f"--auth jwt with {algorithm} needs its {kind}: set {name} or pass --jwt-key-file"
        )
    return value.encode("utf-8")
