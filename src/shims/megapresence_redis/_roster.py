"""``RedisRoster``: the core's roster actions, applied to Redis atomically.

Layout, per app and channel (one Redis Cluster slot per channel, by hash tag):

- ``megapresence:roster:{<app>:<channel>}``: a HASH, session id -> member JSON
  ``{"userId", "metadata"?, "instanceId", "epoch", "expiresAt"}``;
- ``megapresence:roster:{<app>:<channel>}:exp``: a ZSET, session id -> expiresAt.

Expiry is per member, never per key: a whole-key TTL would keep a crashed
instance's members alive as long as any other instance refreshed the key.
``expiresAt`` is computed from Redis's own clock (``TIME``) inside each script,
so instances with skewed clocks agree. Readers purge expired members first
(lazy expiry). A member is removed only by the instance that wrote it.
Works on Redis >= 6 and Valkey: the scripts use HSET/HGET/HDEL/ZADD/ZREM/
ZRANGEBYSCORE/ZREMRANGEBYSCORE/HGETALL and effects replication only.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from typing import Any, Final, final

import anyio
import redis.asyncio as aioredis
import sniffio
from redis.exceptions import RedisError

from megapresence_core import LocalUsageError, Member
from megapresence_core.actions import StoreEntry
from megapresence_core.config import redact_url

__all__ = ["RedisRoster", "RosterUnavailableError"]

logger = logging.getLogger("megapresence.redis")

# ARGV: session id, member JSON without expiresAt (an object), ttl in ms.
_PUT: Final = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3])
local value = string.sub(ARGV[2], 1, -2) .. ',"expiresAt":' .. expires .. '}'
redis.call('HSET', KEYS[1], ARGV[1], value)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
return expires
"""

# ARGV: session id, '"instanceId":"<ours>"' as it appears in our member JSON.
_DELETE: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value and string.find(value, ARGV[2], 1, true) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Purge what has expired, then return everything left.
_READ: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
return redis.call('HGETALL', KEYS[1])
"""


class RosterUnavailableError(ConnectionError):
    """Redis cannot be reached: at start, or when a roster read is asked for during an outage.

    ``presence_list`` raises it rather than quietly answering with this
    process's members only, which would look like everyone else had left.
    """


@final
class RedisRoster:
    """One Redis client applying one instance's roster actions, in order."""

    def __init__(
        self, url: str, *, app: str, instance_id: str, epoch: int, timeout: float = 5.0
    ) -> None:
        self._url = url
        self._app = app
        self._instance_id = instance_id
        self._epoch = epoch
        self._timeout = timeout
        self._redis: aioredis.Redis | None = None
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = anyio.Event()
        self._failing = False
        self._owner_marker = '"instanceId":' + json.dumps(instance_id)

    @property
    def url(self) -> str:
        return redact_url(self._url)

    def _keys(self, channel: str) -> list[str]:
        base = f"megapresence:roster:{{{self._app}:{channel}}}"
        return [base, base + ":exp"]

    def _value(self, member: Member) -> str:
        value: dict[str, Any] = {"userId": member.user_id}
        if member.metadata is not None:
            value["metadata"] = member.metadata
        value["instanceId"] = self._instance_id
        value["epoch"] = self._epoch
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    async def start(self) -> None:
        """Connect and check the server (or raise ``RosterUnavailableError`` with the cause)."""
        if sniffio.current_async_library() != "asyncio":
            raise LocalUsageError(
                "megapresence_redis needs the asyncio backend (redis-py's "
                "asyncio client); run the server with anyio's asyncio backend"
            )
        client = aioredis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        try:
            with anyio.fail_after(self._timeout):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise RosterUnavailableError(f"cannot reach Redis at {self.url}: {exc!r}") from None
        self._redis = client
        self._scripts = (
            client.register_script(_PUT),
            client.register_script(_DELETE),
            client.register_script(_READ),
        )
        logger.info("roster connected to %s", self.url)

    # ------------------------------------------------------------- writes

    def put(self, channel: str, session_id: str, member: Member, ttl: float) -> None:
        self._enqueue("put", (channel, session_id, self._value(member), int(ttl * 1000)))

    def refresh(self, entries: Iterable[StoreEntry], ttl: float) -> None:
        ms = int(ttl * 1000)
        for entry in entries:
            self._enqueue("put", (entry.channel, entry.session_id, self._value(entry.member), ms))

    def delete(self, channel: str, session_id: str) -> None:
        self._enqueue("delete", (channel, session_id))

    def _enqueue(self, op: str, args: Any) -> None:
        self._queue.append((op, args))
        self._wake.set()

    async def run(self) -> None:
        """The writer task: applies queued operations in order, pipelined, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush()

    async def _flush(self) -> bool:
        """Apply everything queued; False if Redis failed (logged once per outage)."""
        assert self._redis is not None
        put, delete, _ = self._scripts
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            pipe = self._redis.pipeline(transaction=False)
            for op, args in batch:
                if op == "put":
                    channel, session_id, value, ms = args
                    await put(keys=self._keys(channel), args=[session_id, value, ms], client=pipe)
                else:
                    channel, session_id = args
                    await delete(
                        keys=self._keys(channel), args=[session_id, self._owner_marker], client=pipe
                    )
            try:
                await pipe.execute()
            except (RedisError, OSError) as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "roster writes failing at %s (delivery continues; members "
                        "are re-put on the next refresh): %r",
                        self.url,
                        exc,
                    )
                return False
            if self._failing:
                self._failing = False
                logger.info("roster writes recovered at %s", self.url)
        return True

    # -------------------------------------------------------------- reads

    async def members(self, channels: Iterable[str]) -> list[Member]:
        """Every live member of ``channels``, read concurrently; ``RosterUnavailableError`` if Redis
        does not answer."""
        assert self._redis is not None
        read = self._scripts[2]
        results: list[list[Member]] = []

        async def one(channel: str) -> None:
            raw = await read(keys=self._keys(channel), args=[])
            results.append(_parse(raw))

        try:
            with anyio.fail_after(self._timeout):
                async with anyio.create_task_group() as tg:
                    for channel in dict.fromkeys(channels):
                        tg.start_soon(one, channel)
        except (RedisError, OSError, TimeoutError, ExceptionGroup) as exc:
            raise RosterUnavailableError(
                f"the roster at {self.url} is unavailable: {exc!r}"
            ) from None
        return [member for found in results for member in found]

    async def aclose(self) -> None:
        """Apply what is queued (our members' removals at shutdown), then disconnect."""
        if self._redis is None:
            return
        with anyio.move_on_after(self._timeout) as scope:
            flushed = await self._flush()
        if scope.cancelled_caught or not flushed or self._queue:
            logger.warning(
                "roster: some removals did not reach %s; those members expire by their TTL instead",
                self.url,
            )
        await self._redis.aclose()
        self._redis = None


def _parse(raw: list[bytes]) -> list[Member]:
    members = []
    for field, value in zip(raw[::2], raw[1::2], strict=True):
        try:
            data = json.loads(value)
            user, metadata = data["userId"], data.get("metadata")
            if not isinstance(user, str) or not (metadata is None or isinstance(metadata, dict)):
                raise TypeError("userId must be a string and metadata an object")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("roster: skipping malformed member %r: %s", field, exc)
            continue
        members.append(Member(session_id=field.decode(), user_id=user, metadata=metadata))
    return members
