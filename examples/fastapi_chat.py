"""A FastAPI chat with presence: log in with a form, get a signed cookie, chat in channels.

    pip install '.[metrics]' fastapi uvicorn         # from the repository's root
    export CHAT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    uvicorn examples.fastapi_chat:app                # then open http://127.0.0.1:8000/

Identity comes from a cookie the app signed at login (HMAC-SHA256 with
``CHAT_SECRET``, read from the environment: every worker and every restart must
sign with the same key, so the app does not start without one), never from the
query string.

Several workers (``uvicorn --workers 2``) are several presence servers: each
worker sees only its own sockets unless they share a hub. With ``CHAT_HUB``
(``ws://127.0.0.1:9000/``, a ``megapresence hub`` whose token is in
``MEGAPRESENCE_HUB_TOKEN``) every worker joins it as a bridge of its own, and
the workers are one world.
The WebSocket shares the page's origin, so the browser sends the cookie with
the upgrade, and ``authenticate`` refuses an upgrade from another origin
(cross-site WebSocket hijacking) before it reads the cookie. The only thing the
page chooses is its tab id (kept in ``sessionStorage``), which names the session
within the user's own: a reload comes back as the same session within the
server's leave grace, so nobody sees the user leave and join again.

The page is built on the JavaScript client the server ships (``/megapresence.js``,
routed to the server like ``/metrics``): it watches the channels of the login
(``subscribe`` with ``presence: "users"``), lists their members live, publishes
to a channel (the server signs each message with the sender's session) and tells
when a direct message found nobody. Subscriptions are limited to ``CHANNELS``.

The server runs for the app's lifetime (``lifespan=presence.lifespan``) and is
mounted at ``/ws``; ``/metrics``, ``/healthz``, ``/readyz`` and
``/megapresence.js`` are its own. Hypercorn never pings, so the mount passes
``heartbeat=``: after a silence the server sends ``{"type": "server.ping"}``,
which the JavaScript client answers, and a client that does not answer is
closed (1011). Under uvicorn, which pings, it is only a second check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import secrets
import socket
import time
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from megapresence_anyio import (
    Client,
    HandshakeRequest,
    Identity,
    PresenceMode,
    PresenceServer,
    Refusal,
    handle_command,
)
from megapresence_core import HubLinkConfig, PresenceConfig

SECRET = os.environ.get("CHAT_SECRET", "").encode()
if len(SECRET) < 32:
    raise SystemExit(
        "set CHAT_SECRET to 32 random characters or more, the same for every worker: "
        "export CHAT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
    )
HUB = os.environ.get("CHAT_HUB")  # e.g. ws://127.0.0.1:9000/: needed by several workers
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
    tab = request.query.get("tab", "")
    if not (tab.isalnum() and len(tab) <= 16):
        tab = secrets.token_hex(4)
    return Identity(
        user_id=user,
        session_id=f"{user}-{tab}",  # a tab names a session of its own user only
        channels=channels,
        metadata={"status": "online"},
    )


def on_open(client: Client) -> None:
    welcome = {"userId": client.user_id, "sessionId": client.session_id, "admin": False}
    client.send(json.dumps({"type": "welcome", "payload": welcome}))


def may_subscribe(client: Client, channel: str, mode: PresenceMode) -> bool | Refusal:
    """Only this app's channels: a browser cannot make up channels of its own."""
    return channel in CHANNELS or Refusal(reason="no such channel here")


def hub_link() -> PresenceConfig:
    """Each worker is a bridge of its own (its pid in its id) following every channel."""
    if HUB is None:
        return PresenceConfig()
    worker = f"chat-{socket.gethostname()}-{os.getpid()}"
    link = HubLinkConfig(bridge_id=worker, instance_id=secrets.token_hex(8), channels=CHANNELS)
    return PresenceConfig(hub_link=link)


presence = PresenceServer(
    authenticate,
    paths=["/ws/"],
    on_open=on_open,
    on_message=handle_command,  # the browser protocol the JavaScript client speaks
    authorize_subscription=may_subscribe,
    presence=hub_link(),
    hub_url=HUB,
    hub_token=os.environ.get("MEGAPRESENCE_HUB_TOKEN"),
)

# ------------------------------------------------------------------ the app

app = FastAPI(lifespan=presence.lifespan)
app.mount("/ws", presence.asgi(heartbeat='{"type": "server.ping"}'))
for _path in ("/metrics", "/healthz", "/readyz", "/megapresence.js"):
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
    user, channels = found
    options = "".join(f"<option>{html.escape(c)}</option>" for c in channels)
    return HTMLResponse(PAGE.replace("{{options}}", options).replace("{{user}}", html.escape(user)))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font: 15px/1.4 system-ui, sans-serif; margin: 0; display: grid;
        grid-template-columns: 16rem 1fr; height: 100vh; }
 aside { background: #f3f4f6; padding: 1rem; overflow: auto; }
 main { padding: 1rem; display: flex; flex-direction: column; min-width: 0; }
 #log { flex: 1; overflow: auto; border: 1px solid #ddd; padding: .25rem; }
 #state { font-size: 85%; color: #6b7280; }
 form { display: flex; gap: .5rem; margin-top: .5rem; } input[type=text] { flex: 1; min-width: 0; }
 @media (max-width: 640px) { body { grid-template-columns: 1fr; height: auto; }
                             #log { min-height: 14rem; } }
</style></head>
<body>
<aside><h2 id="who">{{user}}</h2><div id="state">connecting</div><div id="rosters"></div>
<form method="post" action="/logout"><button>log out</button></form></aside>
<main><div id="log"></div>
<form id="say"><select id="channel">{{options}}</select>
<input id="text" type="text" placeholder="message"><button>send</button></form>
<form id="dm"><input id="to" type="text" placeholder="user">
<input id="dmtext" type="text" placeholder="direct message"><button>send</button></form>
</main>
<script type="module">
import { PresenceClient } from "/megapresence.js";
const $ = (id) => document.getElementById(id);
const line = (text) => Object.assign(document.createElement("div"), {textContent: text});
const log = (text) => $("log").append(line(text));
// The tab's id survives a reload: the server keeps its session through the leave grace.
const tab = sessionStorage.tab || (sessionStorage.tab = Math.random().toString(36).slice(2, 10));
let me = null;
const client = new PresenceClient("/ws/chat?tab=" + tab, {  // the cookie goes with it
  onState: (s) => {
    $("state").textContent = s.state === "reconnecting" ? `reconnecting in ${s.delay / 1000} s`
      : s.state === "closed" ? `closed (${s.code})` : s.state;
    if (s.state === "closed") document.body.dataset.closeCode = String(s.code);
  },
  onMessage: (msg) => {  // who sent it is the server's `from`; none: the server itself
    if (msg.from) log(`(${msg.type}) ${msg.from.userId}: ${msg.payload?.text ?? ""}`);
    else if (msg.type === "welcome") me = msg.payload;
  },
  onError: (error) => log("error: " + error.message),
});
for (const channel of [...$("channel").options].map((o) => o.value)) {
  const box = document.createElement("div");
  $("rosters").append(box);
  const sub = client.subscribe(channel, {
    presence: "users",
    onSync: (members) => {
      box.replaceChildren(Object.assign(document.createElement("h3"),
        {textContent: `#${channel} (${members.size})`}));
      for (const user of [...members.keys()].sort()) {
        box.append(Object.assign(document.createElement("div"), {className: "member",
          textContent: user + (me && user === me.userId ? " (you)" : "")}));
      }
    },
    onJoin: (user) => log(`${user} joined #${channel}`),
    onLeave: (user) => log(`${user} left #${channel}`),
    onMessage: (msg) => log(`#${channel} ${msg.from?.userId ?? "server"}: ${msg.payload?.text}`),
  });
}
client.connect();
$("say").onsubmit = (e) => {
  e.preventDefault();
  client.publish($("channel").value, "chat", {text: $("text").value});
  $("text").value = "";
};
$("dm").onsubmit = async (e) => {
  e.preventDefault();
  const to = $("to").value, text = $("dmtext").value;
  $("dmtext").value = "";
  const found = await client.direct(to, "direct", {text}).catch(() => false);
  log(found ? `(to ${to}) ${text}` : `${to} is not online: not delivered`);
};
</script></body></html>
"""
