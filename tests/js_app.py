"""The demo app with test commands, for the JavaScript client's tests in a browser.

A plain-text message ``test:close CODE`` closes the sender's socket with that
code (1013 and the like, which a well-behaved server sends only under load);
``test:send TEXT`` sends TEXT back as a server message (a diff whose version
cannot follow, as a client would see after a missed message, or a snapshot
taken mid-window); ``test:to USER TEXT`` sends TEXT to every connection of
USER, as a server that let a client's message through unchecked would (a
message with a forged type, carrying its sender's ``from``). Everything else
is the demo's protocol. Served by uvicorn (``asgi_process.asgi_server``).

``/cached`` and ``/away`` are plain pages a browser may keep in its
back/forward cache (no ``no-store``, unlike the server's own pages).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse

from megapresence_anyio import Client, PresenceServer
from megapresence_anyio._demo import DemoApp


class RulesApp(DemoApp):
    def on_message(self, client: Client, text: str) -> None:
        command, _, argument = text.partition(" ")
        if command == "test:close":
            client.close(int(argument), "test close")
        elif command == "test:send":
            client.send(argument)
        elif command == "test:to":
            user, _, message = argument.partition(" ")
            for other in server.clients:
                if other.user_id == user:
                    other.send(message)
        else:
            super().on_message(client, text)


async def plain_page(request: Request) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{request.url.path}</title><p>a plain page")


rules = RulesApp(admins=("root",))
server = PresenceServer(
    rules.authenticate, on_open=rules.on_open, on_message=rules.on_message, pages=rules.pages
)
rules.server = server
site = Starlette()
site.add_route("/cached", plain_page)
site.add_route("/away", plain_page)
app = server.asgi(site)
