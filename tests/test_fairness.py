"""One socket cannot take the event loop from the others (issue 17, item 6).

A client that writes small valid frames as fast as the link takes them and never
reads must not delay another client's round trip: the read loop yields once per
chunk it reads and every few messages, on asyncio and trio alike.
"""

from __future__ import annotations

import json
import os

import anyio
import pytest

from megapresence_anyio import handle_command

from .hostile import flooding, masked, upgraded
from .process_helpers import worst_round_trip
from .socket_helpers import Client, running_server, wait_for

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "frame",
    [
        masked(0x81, json.dumps({"op": "metadata", "metadata": {"x": 1}}).encode()),
        bytes((0x89, 0x80)) + os.urandom(4),  # an empty ping (its pongs are never read)
    ],
    ids=["metadata", "ping"],
)
async def test_a_socket_writing_at_line_rate_does_not_delay_another(frame: bytes) -> None:
    async with running_server(on_message=handle_command) as (server, url):
        port = server.port
        assert port is not None
        bystander = await Client.connect(f"{url}/ws?user=bob&channels=lobby")
        mallory = await anyio.to_thread.run_sync(upgraded, port, "/ws?user=mallory")
        with flooding(mallory, frame):
            await wait_for(lambda: len(server.clients) == 2)
            worst = await anyio.to_thread.run_sync(worst_round_trip, bystander.ws, 2.0)
        # Generous: the flood's writer thread, this probe and the server share one process
        # (and its GIL) on a 2-core machine; a round trip of 0.5 s was seen under CI. Without
        # the yields no ping is answered while the flood lasts (30 s, then the wait fails).
        # The process test (test_fairness_processes.py) holds the server alone to 0.5 s.
        assert worst < 2.0, f"a round trip took {worst:.3f} s beside the flood"
        await bystander.close()
