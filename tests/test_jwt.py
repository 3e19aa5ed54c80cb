"""``megapresence serve --auth jwt``: only a valid signed token gets in, and it says who.

The authenticator is tested on handshake requests (every claim, every way a token
is wrong, HS256, RS256 and ES256 keys made here), then as a user meets it: the
command started with its secret in the environment, spoken to over real sockets.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import InvalidStatus

from megapresence_anyio import HandshakeRequest, Identity, Refusal
from megapresence_anyio._jwt import MAX_TOKEN_TIME, JwtAuthenticator, read_key
from megapresence_core import LocalUsageError

from .process_helpers import Command
from .socket_helpers import Client

SECRET = b"s" * 32
DAY = 24 * 3600


def request(query: str = "", authorization: str | None = None) -> HandshakeRequest:
    headers = (("authorization", authorization),) if authorization is not None else ()
    return HandshakeRequest(method="GET", path="/ws/chat", query_string=query, headers=headers)


def token(key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    # Some are made when the tests are collected: valid for the whole run.
    body = {"sub": "ann", "exp": int(time.time()) + DAY, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


HS256 = JwtAuthenticator(key=SECRET, default_channels=("lobby",))


def test_a_token_in_the_header_or_the_query_says_who_the_connection_is() -> None:
    signed = token(sid="s-1", channels=["dev", "ops"], admin=True)
    for where in (request(authorization=f"Bearer {signed}"), request(f"token={signed}")):
        assert HS256(where) == Identity(
            user_id="ann",
            session_id="s-1",
            channels=("dev", "ops"),
            metadata={"status": "online", "admin": True},
        )


def test_without_sid_the_tab_s_session_is_kept_else_a_new_one_is_made() -> None:
    signed = token()
    tab = HS256(request(f"token={signed}&session=tab-7"))
    assert isinstance(tab, Identity)
    assert (tab.session_id, tab.channels, tab.metadata) == (
        "tab-7",
        ("lobby",),
        {"status": "online", "admin": False},
    )
    first, second = HS256(request(f"token={signed}")), HS256(request(f"token={signed}"))
    assert isinstance(first, Identity)
    assert isinstance(second, Identity)
    assert first.session_id.startswith("ann-")
    assert first.session_id != second.session_id


@pytest.mark.parametrize(
    ("signed", "reason"),
    [
        (None, "a token is needed"),
        (token(exp=int(time.time()) - 5), "token expired"),
        (token(key=b"x" * 32), "invalid token"),  # another key
        (token(exp=None), "invalid token"),  # exp is required
        (token(sub=None), "invalid token"),
        (token(sub=""), "invalid token"),
        (token(sub=7), "invalid token"),
        (token(sid=""), "invalid token"),
        (token(channels="lobby"), "invalid token"),
        (token(channels=[""]), "invalid token"),
        (token(admin="yes"), "invalid token"),
        (token(nbf=int(time.time()) + DAY), "invalid token"),
        # Times are JSON numbers (PyJWT alone takes a numeric string) of a sane size.
        (token(exp="9999999999"), "invalid token"),
        (token(exp=" 9999999999 "), "invalid token"),
        (token(exp=10**30), "invalid token"),
        (token(exp=1e300), "invalid token"),
        (token(exp=MAX_TOKEN_TIME + 1), "invalid token"),
        (token(nbf=str(int(time.time()))), "invalid token"),
        (token(iat=str(int(time.time()))), "invalid token"),
        (token(iat=True), "invalid token"),
        (token(key=b"x" * 64, algorithm="HS512"), "invalid token"),  # not the server's algorithm
        (jwt.encode({"sub": "ann", "exp": time.time() + DAY}, None, algorithm="none"), "invalid"),
        ("not.a.token", "invalid token"),
    ],
)
def test_anything_but_a_valid_token_is_refused_with_401(signed: str | None, reason: str) -> None:
    header = None if signed is None else f"Bearer {signed}"
    refusal = HS256(request(authorization=header))
    assert isinstance(refusal, Refusal)
    assert refusal.status == 401
    assert reason in refusal.reason


def test_times_up_to_the_year_9999_are_taken_as_numbers() -> None:
    now = int(time.time())
    for claims in ({"exp": MAX_TOKEN_TIME}, {"exp": now + 60.5, "nbf": now - 1.5, "iat": now}):
        assert isinstance(HS256(request(f"token={token(**claims)}")), Identity)


def test_a_refusal_logs_only_so_much_of_the_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="megapresence.jwt")
    long = HandshakeRequest(
        method="GET", path="/ws/" + "p" * 15_000, query_string="token=x.y.z", headers=()
    )
    refusal = HS256(long)
    assert isinstance(refusal, Refusal)
    assert refusal.status == 401
    [line] = [r.getMessage() for r in caplog.records if r.name == "megapresence.jwt"]
    assert "jwt.refused" in line
    assert len(line) < 1000


def test_audience_and_issuer_are_required_when_the_server_names_them() -> None:
    strict = JwtAuthenticator(key=SECRET, audience="chat", issuer="https://login.example")
    good = token(aud="chat", iss="https://login.example")
    assert isinstance(strict(request(f"token={good}")), Identity)
    for bad in (token(), token(aud="chat"), token(aud="other", iss="https://login.example")):
        assert strict(request(f"token={bad}")) == Refusal(status=401, reason="invalid token")
    # A token meant for an audience is not taken by a server that names none.
    assert HS256(request(f"token={good}")) == Refusal(status=401, reason="invalid token")
    assert isinstance(HS256(request(f"token={token(iss='anyone')}")), Identity)


def test_expiry_allows_the_configured_leeway() -> None:
    late = token(exp=int(time.time()) - 5)
    lenient = JwtAuthenticator(key=SECRET, leeway=30)
    assert isinstance(lenient(request(f"token={late}")), Identity)


def pem_keys(algorithm: str) -> tuple[Any, bytes]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_public_key_algorithms_check_the_signature_with_the_pem_key(algorithm: str) -> None:
    private, public = pem_keys(algorithm)
    server = JwtAuthenticator(key=public, algorithm=algorithm)
    good = token(private, algorithm, sid="k-1")
    assert isinstance(server(request(f"token={good}")), Identity)
    other, _ = pem_keys(algorithm)
    forged = token(other, algorithm)
    assert server(request(f"token={forged}")) == Refusal(status=401, reason="invalid token")
    # The public key used as an HMAC secret (the classic confusion) is refused.
    confused = jwt.encode({"sub": "ann", "exp": time.time() + 60}, b"k" * 32, algorithm="HS256")
    assert server(request(f"token={confused}")) == Refusal(status=401, reason="invalid token")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": b"short"}, "at least 32 bytes"),
        ({"key": SECRET, "algorithm": "HS512"}, "HS512 secret must be at least 64 bytes"),
        ({"key": SECRET, "algorithm": "none"}, "is not one of"),
        ({"key": b"not a pem key", "algorithm": "RS256"}, "cannot read the RS256 public key"),
        ({"key": SECRET, "leeway": -1.0}, "leeway"),
    ],
)
def test_a_bad_configuration_raises_when_built(options: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalUsageError, match=message):
        JwtAuthenticator(**options)


def test_the_key_comes_from_a_file_or_the_environment_never_the_command_line(
    tmp_path: Path,
) -> None:
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(b"PEM")
    assert read_key("RS256", str(keyfile), {}) == b"PEM"
    assert read_key("HS256", None, {"MEGAPRESENCE_JWT_SECRET": "abc"}) == b"abc"
    assert read_key("ES256", None, {"MEGAPRESENCE_JWT_PUBLIC_KEY": "pem"}) == b"pem"
    with pytest.raises(LocalUsageError, match="set MEGAPRESENCE_JWT_SECRET"):
        read_key("HS256", None, {"MEGAPRESENCE_JWT_PUBLIC_KEY": "pem"})
    with pytest.raises(LocalUsageError, match="cannot read --jwt-key-file"):
        read_key("HS256", str(tmp_path / "missing"), {})


# ------------------------------------------------------------ the command


async def recv_type(client: Client, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = await client.recv_json()
        if message["type"] == kind:
            return message


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the process picks its own backend
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_serve_with_jwt_admits_only_valid_tokens_and_takes_admin_from_the_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    monkeypatch.setenv("MEGAPRESENCE_JWT_SECRET", SECRET.decode())
    server = Command(
        tmp_path, "serve", "--backend", backend, "serve", "--port", "0", "--auth", "jwt"
    )
    try:
        url = f"ws://127.0.0.1:{server.port}/ws/chat"
        for forged in ("", f"?user=ann&token={token(key=b'x' * 32)}", f"?token={token(exp=1)}"):
            with pytest.raises(InvalidStatus) as refused:
                await Client.connect(url + forged)
            assert refused.value.response.status_code == 401
        # A user id UTF-8 cannot carry: refused before the upgrade, never a 101 then 1011.
        with pytest.raises(InvalidStatus) as refused:
            await Client.connect(f"{url}?token={token(sub=chr(0xD800))}")
        assert refused.value.response.status_code == 400
        root = await Client.connect(
            url, additional_headers={"Authorization": f"Bearer {token(sub='root', admin=True)}"}
        )
        welcome = await recv_type(root, "welcome")
        assert (welcome["payload"]["userId"], welcome["payload"]["admin"]) == ("root", True)
        # ?user= is ignored: the token says bob, and bob is no admin.
        bob = await Client.connect(f"{url}?user=root&token={token(sub='bob', sid='b-1')}")
        welcome = await recv_type(bob, "welcome")
        assert welcome["payload"] == {**welcome["payload"], "userId": "bob", "admin": False}
        await bob.send(json.dumps({"op": "kick", "sessionId": welcome["payload"]["sessionId"]}))
        assert (await recv_type(bob, "error"))["payload"]["code"] == "forbidden"
        await root.send(json.dumps({"op": "kick", "sessionId": "b-1", "reason": "bye"}))
        assert await bob.closed() == (1008, "bye")
        await root.close()
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "demo authenticator" not in log
    assert "Traceback" not in log
    assert "tick failed" not in log
