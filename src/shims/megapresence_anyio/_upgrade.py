"""Read an upgrade request by its deadline, and answer it unless it is a valid upgrade."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import attrs

from ._config import SocketLimits
from ._forwarded import forwarded_for
from ._guard import Guard
from ._http import HandshakeRequest, RequestReader, read_request, upgrade_refusal
from ._transport import Transport

__all__ = ["read_upgrade"]


async def read_upgrade(
    guard: Guard[Transport],
    limits: SocketLimits,
    serve_http: Callable[[Guard[Transport], HandshakeRequest], None],
    *,
    swept: bool = False,
) -> tuple[HandshakeRequest, bytes] | None:
    """Read the request by the handshake deadline and answer it unless it is a valid
    upgrade: plain HTTP goes to ``serve_http``, the rest gets its status. Returns the
    upgrade request and the bytes read behind it, or None once answered. Behind a
    trusted proxy, the request's ``remote`` is the client the proxy forwarded for.
    ``swept``: the admission's :meth:`~Admission.expire_handshakes` runs, and keeps
    the deadline (no timer here)."""
    reader = RequestReader(limits.max_header_bytes, guard.remote)
    outcome: HandshakeRequest | int | None = None
    if swept:
        outcome = await read_request(guard.transport, reader)
        if guard.answered is not None:
            return None  # expired (408) or evicted (503) while it read
    else:
        with anyio.CancelScope(deadline=guard.deadline):
            outcome = await read_request(guard.transport, reader)
    if outcome is None:
        guard.refuse(408, f"no complete request within {limits.handshake_timeout:g}s")
        return None
    if isinstance(outcome, int):
        guard.refuse(outcome, reader.error)
        return None
    guard.path = outcome.path
    if guard.remote is not None and limits.trusted_proxies:
        guard.client = forwarded_for(outcome, guard.remote, limits.trusted_proxies)
        if guard.client is not None:
            outcome = attrs.evolve(outcome, remote=guard.client)
    if not outcome.is_websocket:
        serve_http(guard, outcome)
        return None
    refusal = upgrade_refusal(outcome)
    if refusal is not None:
        status, why = refusal
        guard.refuse(status, why, headers=(("sec-websocket-version", "13"),))
        return None
    return outcome, reader.trailing
