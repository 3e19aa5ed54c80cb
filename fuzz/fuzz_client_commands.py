"""Fuzz the browser protocol of ``megapresence serve``.

Invariant: for any bytes, ``decode_client_command`` either raises ``PeerError``
or returns a command that encodes and decodes back to itself (the same engine
as hub frames and cluster messages), and ``command_event`` turns that command
into an event, a roster request or a refusal, for admins and others alike;
nothing else escapes.
"""

from __future__ import annotations

import sys

from megapresence_core import (
    Event,
    PeerError,
)
from megapresence_core.wire import (
    CommandRefused,
    PingCommand,
    RosterCommand,
    command_event,
    decode_client_command,
    encode,
)


def test_one_input(data: bytes) -> None:
    try:
        command = decode_client_command(data)
    except PeerError:
        return
    again = decode_client_command(encode(command))
    if again != command:
        raise AssertionError(f"round trip changed {command!r} into {again!r}")
    for is_admin in (False, True):
        for session in (None, "s1"):
            outcome = command_event(
                command, conn=1, ns="/ws", session_id=session, is_admin=is_admin, now=0.0
            )
            answers = (CommandRefused, RosterCommand, PingCommand, *Event.__args__)
            if not isinstance(outcome, answers):
                raise AssertionError(f"unexpected outcome {outcome!r}")


if __name__ == "__main__":
    from _driver import fuzz

    fuzz(test_one_input, sys.argv)
