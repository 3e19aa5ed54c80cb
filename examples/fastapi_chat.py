"""A FastAPI chat with presence: log in with a form, get a signed cookie, chat in channels.

    pip install 'megapresence[metrics]' fastapi uvicorn
    uvicorn examples.fastapi_chat:app                # then open http://127.0.0.1:8000/

Identity comes from a cookie the app signed at login (HMAC-SHA256 with
``CHAT_SECRET``, random per start when unset), never from the query string.
The WebSocket shares the page's origin, so the browser sends the cookie with
the upgrade, and ``authenticate`` refuses an upgrade from another origin
(cross-site WebSocket hijacking) before it reads the cookie. The page speaks
the command protocol of ``megapresence serve``'s demo page
(``megapresence_core.wire``): broadcast, direct, metadata, roster.

The server runs for the app's lifetime (``lifespan=presence.lifespan``) and is
mounted at ``/ws``; ``/metrics``, ``/healthz`` and ``/readyz`` are its own.
Under Hypercorn, which never pings, pass ``heartbeat=`` to ``presence.asgi()``
and have the page answer it, or set Hypercorn's ``websocket_ping_interval``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from megapresence_anyio import (
    Client,
    HandshakeRequest,
    Identity,
    PresenceServer,
    Refusal,
    handle_command,
)

SECRET = (os.environ.get("CHAT_SECRET") or secrets.token_hex(32)).encode()
COOKIE = "chat_session"
MAX_AGE = 8 * 3600
CHANNELS = ("lobby", "dev", "random")


# ------------------------------------------------------------- signed cookies


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(user: str, channels: list[str], now: float | None = None) -> str:
    body = _b64(json.dumps({"u": user, "c": channels, "t": int(now or time.time())}).encode())
    return body + "." + _b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())


def verify(token: str | None, now: float | None = None) -> tuple[str, list[str]] | None:
    """The user and channels of a cookie this app signed and that has not expired."""
    if not token or "." not in token:
        return None
    body, _, signature = token.rpartition(".")
    expected = _b64(hmac.new(SECRET, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(signature, expected):
        return None
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if (now or time.time()) - data["t"] > MAX_AGE:
        return None
    return data["u"], data["c"]


def cookie_of(header: str | None) -> str | None:
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


# ------------------------------------------------------------- presence


def authenticate(request: HandshakeRequest) -> Identity | Refusal:
    origin, host = request.header("origin"), request.header("host")
    if origin not in (f"http://{host}", f"https://{host}"):
        return Refusal(status=403, reason="cross-origin WebSocket")
    found = verify(cookie_of(request.header("cookie")))
    if found is None:
        return Refusal(status=401, reason="log in first")
    user, channels = found
    return Identity(
        user_id=user,
        session_id=f"{user}-{secrets.token_hex(4)}",
        channels=channels,
        metadata={"status": "online"},
    )


def on_open(client: Client) -> None:
    welcome = {"userId": client.user_id, "sessionId": client.session_id, "admin": False}
    client.send(json.dumps({"type": "welcome", "payload": welcome}))
    presence.broadcast(client.ns, "presence", {"type": "presence.changed"})


def on_close(client: Client) -> None:
    if presence.running:
        presence.broadcast(client.ns, "presence", {"type": "presence.changed"})


presence = PresenceServer(
    authenticate, paths=["/ws/"], on_open=on_open, on_message=handle_command, on_close=on_close
)

# ------------------------------------------------------------------ the app

app = FastAPI(lifespan=presence.lifespan)
app.mount("/ws", presence.asgi())
for _path in ("/metrics", "/healthz", "/readyz"):
    app.add_route(_path, presence.asgi())


@app.get("/login")
async def login_form() -> HTMLResponse:
    boxes = "".join(
        f'<label><input type="checkbox" name="channel" value="{c}" checked> #{c}</label> '
        for c in CHANNELS
    )
    return HTMLResponse(
        "<!doctype html><title>log in</title><form method=post action=/login>"
        '<input name=user placeholder="your name" required autofocus> '
        f"{boxes}<button>log in</button></form>"
    )


@app.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode())  # no multipart parser needed
    user = (form.get("user") or [""])[0].strip()[:64]
    channels = [c for c in form.get("channel", []) if c in CHANNELS] or ["lobby"]
    if not user:
        return RedirectResponse("/login", status_code=303)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE, sign(user, channels), max_age=MAX_AGE, httponly=True, samesite="lax"
    )
    return response


@app.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@app.get("/")
async def page(request: Request) -> Response:
    found = verify(request.cookies.get(COOKIE))
    if found is None:
        return RedirectResponse("/login", status_code=303)
    _, channels = found
    options = "".join(f"<option>{c}</option>" for c in channels)
    return HTMLResponse(PAGE.replace("{{options}}", options))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chat</title>
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 0; display: grid;
        grid-template-columns: 16rem 1fr; height: 100vh; }
 aside { background: #f3f4f6; padding: 1rem; } main { padding: 1rem; display: flex;
        flex-direction: column; } #log { flex: 1; overflow: auto; border: 1px solid #ddd; }
 form { display: flex; gap: .5rem; margin-top: .5rem; } input[type=text] { flex: 1; }
</style></head>
<body>
<aside><h2 id="who">connecting...</h2><h3>Online</h3><div id="roster"></div>
<form method="post" action="/logout"><button>log out</button></form></aside>
<main><div id="log"></div>
<form id="say"><select id="channel">{{options}}</select>
<input id="text" type="text" placeholder="message"><button>send</button></form>
<form id="dm"><input id="to" type="text" placeholder="user">
<input id="dmtext" type="text" placeholder="direct message"><button>send</button></form>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let me = null;
const url = new URL("/ws/chat", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(url);  // the browser sends the session cookie with it
const send = (command) => ws.readyState === 1 && ws.send(JSON.stringify(command));
function log(text) {
  const line = document.createElement("div");
  line.textContent = text;
  $("log").append(line);
}
ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (msg.type === "welcome") {
    me = msg.payload;
    $("who").textContent = me.userId;
    send({op: "roster"});
  } else if (msg.type === "presence.changed") send({op: "roster"});
  else if (msg.type === "roster") {
    $("roster").replaceChildren(...msg.payload.members.map((m) => {
      const row = document.createElement("div");
      row.className = "member";
      row.textContent = m.userId + (m.sessionId === me.sessionId ? " (you)" : "");
      return row;
    }));
  } else if (msg.type === "chat") {
    log("#" + msg.payload.channel + " " + msg.payload.from + ": " + msg.payload.text);
  }
  else if (msg.type === "direct") log("(direct) " + msg.payload.from + ": " + msg.payload.text);
  else if (msg.type === "error") log("error: " + msg.payload.message);
};
ws.onclose = (event) => {
  document.body.dataset.closeCode = String(event.code);
  log("closed: " + event.code);
};
$("say").onsubmit = (e) => {
  e.preventDefault();
  const channel = $("channel").value;
  const payload = {from: me.userId, channel, text: $("text").value};
  send({op: "broadcast", channel, type: "chat", payload});
  $("text").value = "";
};
$("dm").onsubmit = (e) => {
  e.preventDefault();
  const payload = {from: me.userId, text: $("dmtext").value};
  send({op: "direct", userId: $("to").value, type: "direct", payload});
  $("dmtext").value = "";
};
</script></body></html>
"""
