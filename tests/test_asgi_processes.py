"""megapresence mounted in Starlette and FastAPI, on uvicorn (asyncio) and Hypercorn (trio).

Real processes (``asgi_process.py``) and a real client (the ``websockets`` library):
a cookie or a bearer token opens a session, a request without either is refused
with the documented status, broadcasts cross between clients, the message limit
and the keepalive heartbeat are ours, and ``/metrics`` counts what happened.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .asgi_process import SERVERS, asgi_server
from .process_helpers import eventually

APPS = {"starlette": "tests.asgi_apps:starlette_app", "fastapi": "tests.asgi_apps:fastapi_app"}


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        body = response.read()
    return json.loads(body) if path == "/members" else body.decode()


def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(5))
        if message["type"] == kind:
            return message


def closed(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    try:
        while True:
            ws.recv(timeout)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


@pytest.mark.parametrize("app", sorted(APPS))
@pytest.mark.parametrize("server", sorted(SERVERS))
def test_sessions_refusals_broadcasts_limits_and_metrics(
    tmp_path: Path, server: str, app: str
) -> None:
    with asgi_server(server, APPS[app], tmp_path) as (port, _):
        url = f"ws://127.0.0.1:{port}"
        assert get(port, "/") == "the app's own page"  # the app is still the app
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{url}/ws/chat?user=ann")  # no identity from the query string
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == b"log in first\n"

        with (
            connect(f"{url}/ws/chat", additional_headers={"Cookie": "sid=t-ann"}) as ann,
            connect(f"{url}/ws/chat", additional_headers={"Authorization": "Bearer t-bob"}) as bob,
        ):
            eventually(lambda: get(port, "/members") == ["ann", "bob"], what="both joined")
            ann.send("hi")
            for ws in (ann, bob):
                assert recv_type(ws, "chat") == {"type": "chat", "ns": "/ws/chat", "payload": "hi"}
            ann.send("whoami")
            assert recv_type(ann, "you")["payload"][0] == "127.0.0.1"
            if app == "fastapi":  # a route of the app that hands its socket over
                with connect(f"{url}/rooms/1", additional_headers={"Cookie": "sid=t-cat"}) as cat:
                    cat.send("in room 1")
                    assert recv_type(cat, "chat")["ns"] == "/rooms/1"
            bob.send("x" * 1001)  # over the app's 1000-byte limit, far below the server's
            assert closed(bob) == (1009, "message over 1000 bytes")
            eventually(lambda: get(port, "/members") == ["ann"], what="bob gone")

            metrics = get(port, "/metrics")
            chats = 2 + (1 if app == "fastapi" else 0)
            assert metric(metrics, "megapresence_deliveries_total") == chats
            assert metric(metrics, "megapresence_connections") == 1
            assert metric(metrics, "megapresence_sessions") == 1
            assert 'megapresence_refusals_total{status="401"} 1.0' in metrics
            assert 'megapresence_closes_total{by="server",code="1009"} 1.0' in metrics


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_the_heartbeat_closes_a_silent_client_and_keeps_one_that_answers(
    tmp_path: Path, server: str
) -> None:
    # Hypercorn never pings: the app's heartbeat is what finds a client gone silent.
    env = {"MP_HEARTBEAT": '{"type":"ping"}', "MP_PING": "0.3"}
    with asgi_server(server, APPS["starlette"], tmp_path, **env) as (port, _):
        url = f"ws://127.0.0.1:{port}/ws/chat"
        with (
            connect(url, additional_headers={"Cookie": "sid=t-ann"}) as silent,
            connect(url, additional_headers={"Cookie": "sid=t-bob"}) as answering,
        ):
            pings = 0
            started = time.monotonic()
            while pings < 4 or time.monotonic() - started < 2:  # bob answers every ping
                if json.loads(answering.recv(10))["type"] == "ping":
                    pings += 1
                    answering.send('{"type":"pong"}')
            assert closed(silent) == (1011, "keepalive ping timeout")
            answering.send("still here")
            while recv_type(answering, "chat")["payload"] != "still here":
                pass  # the pongs, which this app broadcasts like any message
            assert get(port, "/members") == ["bob"]
