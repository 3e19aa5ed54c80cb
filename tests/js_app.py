"""The demo app with two test commands, for the JavaScript client's tests in a browser.

A plain-text message ``test:close CODE`` closes the sender's socket with that
code (1013 and the like, which a well-behaved server sends only under load);
``test:send TEXT`` sends TEXT back as a server message (a diff whose version
cannot follow, as a client would see after a missed message, or a snapshot
taken mid-window). Everything else is the demo's protocol. Served by uvicorn
(``asgi_process.asgi_server``).
"""

from __future__ import annotations

from starlette.applications import Starlette

from megapresence_anyio import Client, PresenceServer
from megapresence_anyio._demo import DemoApp


class RulesApp(DemoApp):
    def on_message(self, client: Client, text: str) -> None:
        command, _, argument = text.partition(" ")
        if command == "test:close":
            client.close(int(argument), "test close")
        elif command == "test:send":
            client.send(argument)
        else:
            super().on_message(client, text)


rules = RulesApp(admins=("root",))
server = PresenceServer(
    rules.authenticate, on_open=rules.on_open, on_message=rules.on_message, pages=rules.pages
)
rules.server = server
app = server.asgi(Starlette())
