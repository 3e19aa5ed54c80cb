"""The demo application behind ``megapresence serve``: a page, a demo login, and its commands.

The authenticator here trusts the query string (``?user=ann``): anyone can be
anyone. It exists so the page works with no set-up and says so in the log.
A real deployment passes its own ``authenticate(request)`` to
``PresenceServer``: read a session cookie or a bearer token from
``request.header(...)``, look the user up, and return an ``Identity`` (or a
``Refusal(status=401)``).
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import secrets
from collections.abc import Collection

from ._commands import handle_command
from ._http import HandshakeRequest
from ._server import Client, PresenceServer
from ._types import Identity, Refusal

__all__ = ["DemoApp"]

logger = logging.getLogger("megapresence.demo")

#: What a name typed in a URL never means to hold (a NUL, a newline, ...).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _page() -> bytes:
    return importlib.resources.files(__package__).joinpath("static/index.html").read_bytes()


class DemoApp:
    """Hooks for ``PresenceServer`` that make the demo page work."""

    def __init__(
        self, *, admins: Collection[str] = (), default_channels: tuple[str, ...] = ("lobby",)
    ) -> None:
        self.admins = frozenset(admins)
        self.default_channels = default_channels
        self.server: PresenceServer | None = None

    @staticmethod
    def warn_demo_identity() -> None:
        """Say in the log that ``authenticate`` below lets anyone be anyone."""
        logger.warning(
            "demo authenticator: the user name comes from the query string, so anyone can be "
            "anyone; pass your own authenticate() to PresenceServer for real use"
        )

    @property
    def pages(self) -> dict[str, tuple[str, bytes]]:
        return {"/": ("text/html; charset=utf-8", _page())}

    @staticmethod
    def is_admin(client: Client) -> bool:
        """Whether the client may kick: its identity says ``admin`` (the demo's from
        ``admins``, a token's from its ``admin`` claim), never what it sent later."""
        identity = client.identity
        return identity is not None and (identity.metadata or {}).get("admin") is True

    def authenticate(self, request: HandshakeRequest) -> Identity | Refusal:
        user = request.query.get("user", "").strip()
        if not user:
            return Refusal(status=401, reason="demo: add ?user=NAME")
        channels = tuple(ch for ch in request.query.get("channels", "").split(",") if ch)
        session = request.query.get("session") or f"{user}-{secrets.token_hex(4)}"
        if any(_CONTROL.search(name) for name in (user, session, *channels)):
            return Refusal(status=400, reason="demo: a name may not hold a control character")
        return Identity(
            user_id=user,
            session_id=session,
            channels=channels or self.default_channels,
            metadata={"status": "online", "admin": user in self.admins},
        )

    def _server(self) -> PresenceServer:
        assert self.server is not None, "set DemoApp.server before serving"
        return self.server

    def on_open(self, client: Client) -> None:
        """Tell the page who it is and every channel its session is in: the login's, and
        those of a session restored within its grace (a reload), which the page's URL
        may not name. Sent again when a session taken over from another server turns out
        to have kept channels there (``on_restored``). A server message: it carries no
        ``from``."""
        channels = self._server().presence.subscriptions(client)
        client.send(
            json.dumps(
                {
                    "type": "welcome",
                    "payload": {
                        "userId": client.user_id,
                        "sessionId": client.session_id,
                        "ns": client.ns,
                        "admin": self.is_admin(client),
                        "channels": sorted(channels),
                    },
                }
            )
        )

    def on_message(self, client: Client, text: str) -> None:
        handle_command(client, text, is_admin=self.is_admin(client))
