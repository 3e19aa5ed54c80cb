"""A server process whose hooks misbehave on purpose, for the process tests of issue 17.

``python -m tests.stuck_app [asyncio|trio]`` prints ``serving on http://127.0.0.1:PORT/``
and serves ``/ws/`` until killed. A user named ``stuck`` gets an ``on_open`` that
never returns; ``?pad=N`` gives a session N bytes of metadata (to make big
snapshots). The limits are short so the tests are: ``hook_timeout`` 1 s,
``send_stall_timeout`` 1 s, pings every 0.5 s.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import attrs

from megapresence_anyio import (
    HandshakeRequest,
    Identity,
    PresenceServer,
    SocketLimits,
    handle_command,
)
from megapresence_core import Limits, PresenceConfig


def authenticate(request: HandshakeRequest) -> Identity:
    user = request.query.get("user", "anon")
    pad = int(request.query.get("pad", "0"))
    channels = tuple(c for c in request.query.get("channels", "").split(",") if c)
    return Identity(
        user_id=user,
        session_id=f"{user}-s",
        channels=channels,
        metadata={"pad": "x" * pad} if pad else None,
    )


async def on_open(client: Any) -> None:
    if client.user_id == "stuck":
        await anyio.sleep_forever()


async def main() -> None:
    wanted = {
        "hook_timeout": 1.0,
        "send_stall_timeout": 1.0,
        "ping_interval": 0.5,
        "ping_timeout": 5.0,
    }
    # Only the settings this version has, so the same app shows how an older one fails.
    known = attrs.fields_dict(SocketLimits)
    limits = SocketLimits(**{name: value for name, value in wanted.items() if name in known})
    presence = PresenceConfig(leave_grace=0, limits=Limits(max_metadata_bytes=256 * 1024))
    async with PresenceServer(
        authenticate,
        on_open=on_open,
        on_message=handle_command,
        limits=limits,
        presence=presence,
    ) as server:
        port = await server.listen()
        print(f"serving on http://127.0.0.1:{port}/", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
