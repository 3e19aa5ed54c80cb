"""The per-channel permission hook: may this client subscribe to this channel, in this mode?

``PresenceServer(authorize_subscription=hook)`` asks ``hook(client, channel,
mode)`` before every ``Subscribe`` a client's command becomes (a mode change
on a channel already subscribed included). The hook answers ``True`` (allow),
``False`` (refuse) or a ``Refusal`` whose ``reason`` the client is told (its
HTTP ``status`` means nothing here), directly or from a coroutine. The
verdict travels to the core as data (``Subscribe.denied``): the core refuses
with ``forbidden`` and changes nothing, or subscribes as it would have
without a hook.

A hook that raises, or answers something else, is that socket's fault: the
connection's boundary closes it with 1011 and logs the traceback; no other
connection notices. The embedding program's own ``PresenceServer.subscribe``
is not asked: it decides for itself.

A coroutine hook is awaited in a task of its own, so the connection reads on
meanwhile: a client should wait for ``subscribed`` before it publishes to the
channel (the JavaScript client does), as it must anyway for any refusal.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, final

import attrs

from megapresence_core import PresenceError, Subscribe
from megapresence_core.wire import error_reply

if TYPE_CHECKING:
    from ._server import Client, Refusal, SubscriptionHook, Verdict

__all__ = ["DEFAULT_DENIAL", "SubscriptionGate"]

#: What a client refused by a plain ``False`` is told.
DEFAULT_DENIAL = "the server does not allow this subscription"


def denial(verdict: object, refusal_type: type[Refusal]) -> str | None:
    """The reason a verdict refuses with, or None when it allows."""
    if verdict is True:
        return None
    if verdict is False:
        return DEFAULT_DENIAL
    if isinstance(verdict, refusal_type):
        return verdict.reason
    raise TypeError(
        f"authorize_subscription returned {verdict!r}: True, False or a Refusal(reason=...)"
    )


@final
class SubscriptionGate:
    """Asks the hook about a client's ``Subscribe``, then hands the event on with its verdict.

    ``handle`` feeds the core and performs its actions; ``spawn`` starts a task in
    the server's group; ``is_open`` says whether a client is still connected (a
    verdict that comes back after its socket closed is dropped).
    """

    __slots__ = ("_handle", "_hook", "_is_open", "_refusal_type", "_spawn")

    def __init__(
        self,
        hook: SubscriptionHook,
        *,
        refusal_type: type[Refusal],
        handle: Callable[[Subscribe], None],
        spawn: Callable[..., None],
        is_open: Callable[[Client], bool],
    ) -> None:
        self._hook = hook
        self._refusal_type = refusal_type
        self._handle = handle
        self._spawn = spawn
        self._is_open = is_open

    def ask(self, event: Subscribe, client: Client) -> None:
        """Ask about ``event`` (from ``client``); what the hook raises, this raises."""
        verdict = self._hook(client, event.channel, event.mode)
        if inspect.isawaitable(verdict):
            self._spawn(self._settle, event, client, verdict)
            return
        self._handle(attrs.evolve(event, denied=denial(verdict, self._refusal_type)))

    async def _settle(self, event: Subscribe, client: Client, pending: Awaitable[Verdict]) -> None:
        try:
            denied = denial(await pending, self._refusal_type)
        except Exception as exc:
            client.fault(exc)
            return
        if not self._is_open(client):
            return
        try:
            self._handle(attrs.evolve(event, denied=denied))
        except PresenceError as exc:  # a channel name over a limit, say: as if in its task
            client.send(error_reply(exc.code, str(exc), event.channel))
