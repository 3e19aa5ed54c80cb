"""ASGI apps that mount megapresence, for uvicorn and Hypercorn run as processes.

Each is mounted the way its framework's users would: Starlette behind
``server.asgi(app)`` (the server runs from the ASGI lifespan), FastAPI with
``lifespan=server.lifespan``, ``app.mount("/ws", server.asgi())`` and a route that
hands its socket over (``/rooms/{room}``). The environment sets the keepalive
(``MP_HEARTBEAT``, ``MP_PING``) so one module serves every process test; the demo
app (``demo_app``) is the ``megapresence serve`` page and hooks, mounted.
"""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, WebSocket
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from megapresence_anyio import (
    Client,
    HandshakeRequest,
    Identity,
    PresenceServer,
    Refusal,
    SocketLimits,
)
from megapresence_anyio._demo import DemoApp
from megapresence_core import PresenceConfig

USERS = {"t-ann": "ann", "t-bob": "bob", "t-cat": "cat"}

PING = float(os.environ.get("MP_PING", "20"))
HEARTBEAT = os.environ.get("MP_HEARTBEAT") or None
LIMITS = SocketLimits(ping_interval=PING, ping_timeout=PING, max_message_bytes=1000)
#: The tests read ``/members`` right after a socket closes: it leaves at once here
#: (the leave grace has tests of its own).
NO_GRACE = PresenceConfig(leave_grace=0)


def authenticate(request: HandshakeRequest) -> Identity | Refusal:
    """A cookie (``sid=``) or a bearer token: never the query string."""
    cookie = (request.header("cookie") or "").removeprefix("sid=")
    bearer = (request.header("authorization") or "").removeprefix("Bearer ")
    user = USERS.get(cookie) or USERS.get(bearer)
    if user is None:
        return Refusal(status=401, reason="log in first")
    return Identity(user_id=user, session_id=f"{user}-{request.path}", channels=("lobby",))


def make_server() -> PresenceServer:
    def on_message(client: Client, text: str) -> None:
        if text == "whoami":
            client.send(json.dumps({"type": "you", "payload": list(client.request.remote or ())}))
        else:
            server.broadcast(client.ns, "lobby", {"type": "chat", "payload": text})

    server = PresenceServer(
        authenticate,
        paths=("/ws/", "/rooms/"),
        on_message=on_message,
        limits=LIMITS,
        presence=NO_GRACE,
    )
    return server


# ---------------------------------------------------------------- Starlette

starlette_server = make_server()


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the app's own page")


async def members(request: Request) -> JSONResponse:
    return JSONResponse(sorted(m.user_id for m in starlette_server.roster("/ws/chat")))


starlette_app = starlette_server.asgi(
    Starlette(routes=[Route("/", home), Route("/members", members)]), heartbeat=HEARTBEAT
)

# ------------------------------------------------------------------ FastAPI

fastapi_server = make_server()
fastapi_app = FastAPI(lifespan=fastapi_server.lifespan)
fastapi_app.mount("/ws", fastapi_server.asgi(heartbeat=HEARTBEAT))
for path in ("/metrics", "/healthz", "/readyz"):
    fastapi_app.add_route(path, fastapi_server.asgi())


@fastapi_app.get("/")
async def fastapi_home() -> PlainTextResponse:
    return PlainTextResponse("the app's own page")


@fastapi_app.get("/members")
async def fastapi_members() -> list[str]:
    return sorted(m.user_id for m in fastapi_server.roster("/ws/chat"))


@fastapi_app.websocket("/rooms/{room}")
async def room(websocket: WebSocket, room: str) -> None:
    await fastapi_server.handle_asgi(
        websocket.scope, websocket.receive, websocket.send, heartbeat=HEARTBEAT
    )


# ------------------------------------------------- the demo page, mounted

demo = DemoApp(admins=("root",))
demo_server = PresenceServer(
    demo.authenticate,
    on_open=demo.on_open,
    on_message=demo.on_message,
    pages=demo.pages,
)
demo.server = demo_server
demo_app = demo_server.asgi(Starlette())
