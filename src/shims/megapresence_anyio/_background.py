"""The boundary of a server's background tasks: a fault is logged and counted, and the
process serves on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any, final

import anyio.abc

from ._stats import Stats

__all__ = ["Background"]

logger = logging.getLogger("megapresence")


@final
class Background:
    """The boundary of a server's background tasks (a writer, the ticker, the listener):
    a fault is logged with its traceback and counted, and the process goes on. A task
    started as a service (one the server cannot do without) that ends on a fault is
    remembered in :attr:`failed`, and the server says it is not ready."""

    __slots__ = ("_group", "_stats", "failed")

    def __init__(self, stats: Stats, group: Callable[[], anyio.abc.TaskGroup]) -> None:
        self._stats = stats
        self._group = group
        self.failed: set[str] = set()

    def spawn(self, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        """Start a background task in the server's task group, behind its boundary."""
        self._group().start_soon(self._run, None, function, *args)

    def service(
        self, name: str, function: Callable[..., Coroutine[Any, Any, Any]], *args: Any
    ) -> None:
        """Start a task the server cannot do without: if a fault ends it, not ready."""
        self._group().start_soon(self._run, name, function, *args)

    def check(self, checks: dict[str, str], *, ticker_failing: bool) -> bool:
        """Add the background tasks' words to a readiness report; True if all is well."""
        if ticker_failing:
            checks["ticker"] = "failing"
        for service in sorted(self.failed):
            checks[service] = "failed"
        return not (ticker_failing or self.failed)

    async def _run(
        self,
        service: str | None,
        function: Callable[..., Coroutine[Any, Any, Any]],
        *args: Any,
    ) -> None:
        try:
            await function(*args)
        except Exception as exc:
            name = service or str(getattr(function, "__qualname__", type(function).__name__))
            self._stats.faults[name] += 1
            if service is not None:
                self.failed.add(service)
            logger.error(
                "background task %s failed%s: %s: %s",
                name,
                " (not ready from now on)" if service is not None else "",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
