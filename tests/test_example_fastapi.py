"""``examples/fastapi_chat.py``: signed-cookie login, same-origin sockets, channels, run by uvicorn.

Its page is driven in Chromium by ``test_browser.py``.
"""

from __future__ import annotations

import http.client
import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .asgi_process import CHAT_ENV, ROOT, asgi_server

APP = "examples.fastapi_chat:app"


@pytest.fixture
def fastapi_chat(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    for key, value in CHAT_ENV.items():
        monkeypatch.setenv(key, value)
    return importlib.import_module("examples.fastapi_chat")


def test_the_example_does_not_start_without_its_cookie_key() -> None:
    # A key drawn per process would differ per worker: a cookie signed by one is
    # refused by the other, and page loads bounce to the login form.
    result = subprocess.run(
        [sys.executable, "-c", "import examples.fastapi_chat"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "set CHAT_SECRET to 32 random characters or more, the same for every worker: "
        "export CHAT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
    ]


def test_a_cookie_is_good_only_as_signed_and_only_until_it_expires(
    fastapi_chat: ModuleType,
) -> None:
    token = fastapi_chat.sign("ann", ["lobby"], now=1000)
    assert fastapi_chat.verify(token, now=1001) == ("ann", ["lobby"])
    signature = token.rpartition(".")[2]
    forged = fastapi_chat.sign("root", ["lobby"], now=1000).rpartition(".")[0] + "." + signature
    assert fastapi_chat.verify(forged, now=1001) is None
    assert fastapi_chat.verify(token, now=1000 + fastapi_chat.MAX_AGE + 1) is None
    assert fastapi_chat.verify("garbage", now=1001) is None
    assert fastapi_chat.verify(None) is None


def log_in(port: int, user: str, *channels: str) -> str:
    """POST the login form as a browser does; return the cookie it sets."""
    form = "&".join([f"user={user}", *(f"channel={c}" for c in channels)])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request(
        "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = connection.getresponse()
    assert (response.status, response.getheader("location")) == (303, "/")
    cookie = response.getheader("set-cookie") or ""
    connection.close()
    assert "HttpOnly" in cookie
    return cookie.split(";")[0]


def socket(
    port: int, cookie: str | None, origin: str | None = None, path: str = "/ws/chat"
) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else {}
    return connect(
        f"ws://127.0.0.1:{port}{path}",
        additional_headers=headers,
        origin=origin or f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
    )


def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(5))
        if message["type"] == kind:
            return message


def test_the_example_logs_in_with_a_form_and_chats_over_the_mounted_server(
    tmp_path: Path,
) -> None:
    with asgi_server("uvicorn", APP, tmp_path, **CHAT_ENV) as (port, _):
        with pytest.raises(InvalidStatus) as refused:
            socket(port, None)
        assert refused.value.response.status_code == 401
        ann_cookie = log_in(port, "ann", "lobby", "dev")
        with pytest.raises(InvalidStatus) as refused:  # another site cannot use ann's cookie
            socket(port, ann_cookie, origin="http://evil.example")
        assert refused.value.response.status_code == 403
        with (
            socket(port, ann_cookie) as ann,
            socket(port, log_in(port, "bob", "dev")) as bob,
        ):
            assert recv_type(ann, "welcome")["payload"]["userId"] == "ann"
            assert recv_type(bob, "welcome")["payload"]["userId"] == "bob"
            bob.send(json.dumps({"op": "roster"}))
            roster = recv_type(bob, "roster")["payload"]
            while len(roster["members"]) < 2:
                bob.send(json.dumps({"op": "roster"}))
                roster = recv_type(bob, "roster")["payload"]
            assert sorted(m["userId"] for m in roster["members"]) == ["ann", "bob"]
            assert len(roster["channels"]["dev"]) == 2
            assert len(roster["channels"]["lobby"]) == 1
            say = {"op": "broadcast", "channel": "dev", "type": "chat", "payload": {"text": "hi"}}
            ann.send(json.dumps(say))
            assert recv_type(bob, "chat")["payload"] == {"text": "hi"}
            bob.send(json.dumps({"op": "direct", "userId": "ann", "payload": {"text": "psst"}}))
            assert recv_type(ann, "direct")["payload"] == {"text": "psst"}
            bob.send(json.dumps({"op": "kick", "sessionId": "x"}))
            assert recv_type(bob, "error")["payload"]["code"] == "forbidden"
            bob.send(json.dumps({"op": "subscribe", "channel": "secret", "presence": "users"}))
            error = recv_type(bob, "error")["payload"]
            assert (error["code"], error["channel"]) == ("forbidden", "secret")
            bob.send(json.dumps({"op": "subscribe", "channel": "random", "presence": "users"}))
            assert list(recv_type(bob, "presence.state")["members"]) in ([], ["bob"])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/megapresence.js")
        answer = connection.getresponse()
        assert answer.status == 200
        assert answer.getheader("content-type") == "text/javascript; charset=utf-8"
        assert b"export class PresenceClient" in answer.read()
        connection.close()


def test_a_tab_names_a_session_of_its_own_user_only(tmp_path: Path) -> None:
    with asgi_server("uvicorn", APP, tmp_path, **CHAT_ENV) as (port, _):
        cookie = log_in(port, "ann", "lobby")
        with socket(port, cookie, path="/ws/chat?tab=t1") as ann:
            assert recv_type(ann, "welcome")["payload"]["sessionId"] == "ann-t1"
        for tab in ("bob-t1", "x" * 17):  # not a tab id: a random one instead
            with socket(port, cookie, path=f"/ws/chat?tab={tab}") as ann:
                session = recv_type(ann, "welcome")["payload"]["sessionId"]
                assert session.startswith("ann-")
                assert session != f"ann-{tab}"
