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
channel (the JavaScript client does), as it must anyway for any refusal. That
work is bounded per connection: at most ``SocketLimits.max_pending_hooks``
calls await at once (past it a ``subscribe`` is answered ``rate_limited``
without asking the hook), each for at most ``SocketLimits.hook_timeout`` (past
it the call is cancelled and the subscription refused), and every call still
awaited when the connection closes is cancelled (:meth:`SubscriptionGate.forget`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar, final

import anyio
import attrs

from megapresence_core import PresenceError, PresenceMode, Subscribe
from megapresence_core.wire import error_reply

from ._types import Refusal, Verdict

__all__ = ["DEFAULT_DENIAL", "SubscriptionGate"]

#: What a client refused by a plain ``False`` is told.
DEFAULT_DENIAL = "the server does not allow this subscription"
_LATE = "the server did not decide on this subscription within {:g} s"
_BUSY = "more than {} subscriptions awaiting authorization: wait for their answers"


class Asker(Hashable, Protocol):
    """What the gate needs of a client (``Client``): a reply, and a fault of its own."""

    def send(self, text: str) -> None: ...

    def fault(self, exc: Exception) -> None: ...


C = TypeVar("C", bound=Asker)


def denial(verdict: object) -> str | None:
    """The reason a verdict refuses with, or None when it allows."""
    if verdict is True:
        return None
    if verdict is False:
        return DEFAULT_DENIAL
    if isinstance(verdict, Refusal):
        return verdict.reason
    raise TypeError(
        f"authorize_subscription returned {verdict!r}: True, False or a Refusal(reason=...)"
    )


@final
class SubscriptionGate(Generic[C]):
    """Asks the hook about a client's ``Subscribe``, then hands the event on with its verdict.

    ``handle`` feeds the core and performs its actions; ``spawn`` starts a task in
    the server's group; ``is_open`` says whether a client is still connected (a
    verdict that comes back after its socket closed is dropped).
    """

    __slots__ = (
        "_handle",
        "_hook",
        "_is_open",
        "_max_pending",
        "_pending",
        "_spawn",
        "_timeout",
    )

    def __init__(
        self,
        hook: Callable[[C, str, PresenceMode], Verdict | Awaitable[Verdict]],
        *,
        handle: Callable[[Subscribe], None],
        spawn: Callable[..., None],
        is_open: Callable[[C], bool],
        timeout: float,
        max_pending: int,
    ) -> None:
        self._hook = hook
        self._handle = handle
        self._spawn = spawn
        self._is_open = is_open
        self._timeout = timeout
        self._max_pending = max_pending
        #: The calls each connection awaits, as the scopes that cancel them.
        self._pending: dict[C, set[anyio.CancelScope]] = {}

    def ask(self, event: Subscribe, client: C) -> None:
        """Ask about ``event`` (from ``client``); what the hook raises, this raises."""
        pending = self._pending.get(client)
        if pending is not None and len(pending) >= self._max_pending:
            client.send(error_reply("rate_limited", _BUSY.format(self._max_pending), event.channel))
            return
        verdict = self._hook(client, event.channel, event.mode)
        if inspect.isawaitable(verdict):
            scope = anyio.CancelScope(deadline=anyio.current_time() + self._timeout)
            self._pending.setdefault(client, set()).add(scope)
            self._spawn(self._settle, event, client, verdict, scope)
            return
        self._handle(attrs.evolve(event, denied=denial(verdict)))

    def forget(self, client: C) -> None:
        """``client`` closed: cancel every call it still awaits."""
        for scope in self._pending.pop(client, ()):
            scope.cancel()

    async def _settle(
        self,
        event: Subscribe,
        client: C,
        pending: Awaitable[Verdict],
        scope: anyio.CancelScope,
    ) -> None:
        try:
            with scope:
                verdict = await pending
        except Exception as exc:
            client.fault(exc)
            return
        finally:
            waiting = self._pending.get(client)
            if waiting is not None:
                waiting.discard(scope)
                if not waiting:
                    del self._pending[client]
        if not self._is_open(client):
            return  # closed meanwhile (and so cancelled, maybe)
        denied: str | None = _LATE.format(self._timeout)
        if not scope.cancelled_caught:
            try:
                denied = denial(verdict)
            except Exception as exc:
                client.fault(exc)
                return
        try:
            self._handle(attrs.evolve(event, denied=denied))
        except PresenceError as exc:  # a channel name over a limit, say: as if in its task
            client.send(error_reply(exc.code, str(exc), event.channel))
