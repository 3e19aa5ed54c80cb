"""The browser protocol (docs/protocol.md) as an ``on_message`` hook: ``handle_command``.

``PresenceServer(authenticate, on_message=handle_command)`` makes a server speak
what the JavaScript client speaks: ``subscribe`` (through ``authorize_subscription``),
``unsubscribe``, ``publish``, ``sync``, ``broadcast``, ``direct``, ``metadata``,
``roster``, ``ping`` (the answer to a heartbeat) and ``kick`` (admins only: wrap
it, ``lambda client, text: handle_command(client, text, is_admin=client.user_id in
ADMINS)``). The core decides what each command means (``command_event``) and how
many a connection may send (``Limits.command_rate``); a command that is wrong,
refused or over the rate is answered with an ``error`` message and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from megapresence_core import PresenceError
from megapresence_core.wire import (
    ClientCommand,
    CommandRefused,
    PingCommand,
    RosterCommand,
    command_event,
    decode_client_command,
)

if TYPE_CHECKING:
    from ._server import Client

__all__ = ["handle_command"]


def handle_command(client: Client, text: str | ClientCommand, *, is_admin: bool = False) -> None:
    """Do what the browser command ``text`` from ``client`` asks, or tell it why not.

    ``text`` may also be a command already decoded (``decode_client_command``), for an
    application that looks at it or changes it first."""
    server = client.server
    if not server.command_allowed(client):
        return  # over the connection's command rate: told so (rate_limited), not even read
    command = None
    try:
        command = decode_client_command(text) if isinstance(text, str) else text
        outcome = command_event(
            command,
            conn=client,
            ns=client.ns,
            session_id=client.session_id,
            is_admin=is_admin,
            now=anyio.current_time(),
        )
        if isinstance(outcome, CommandRefused):
            client.send(outcome.text)
        elif isinstance(outcome, PingCommand):
            pass  # it has answered the heartbeat by arriving
        elif isinstance(outcome, RosterCommand):
            client.send(server.presence.answer_roster(client))
        else:
            server.dispatch(outcome)
    except PresenceError as exc:  # bad JSON, a field, a limit: the code says which
        client.send(CommandRefused.from_error(exc, command).text)
