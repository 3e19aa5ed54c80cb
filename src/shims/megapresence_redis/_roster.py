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

Each member records the epoch (boot) of the instance that wrote it: at start,
an instance removes what an earlier incarnation of it (same id, smaller epoch)
left, at once rather than after the TTL, as the NATS cluster roster does.
Writes that fail during an outage are not lost silently: puts come back with
the next refresh, removals are kept (in order) and applied when Redis answers
again, and whatever is still unapplied at shutdown is counted in a warning.

Works on Redis >= 6 and Valkey: the scripts use HSET/HGET/HDEL/HGETALL/ZADD/
ZREM/ZRANGEBYSCORE, cjson, and effects replication only.
"""

from __future__ import annotations

import json
import logging
import re
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

# Lua's unpack() has a stack limit: delete fields in slices.
_DELETE_FIELDS: Final = """
local function delete_fields(fields)
  for i = 1, #fields, 1000 do
    local slice = {unpack(fields, i, math.min(i + 999, #fields))}
    redis.call('HDEL', KEYS[1], unpack(slice))
    redis.call('ZREM', KEYS[2], unpack(slice))
  end
end
"""

# ARGV: session id, our instance id. The member's JSON is decoded, not searched:
# metadata may hold any text, "instanceId" included.
_DELETE: Final = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
  local ok, member = pcall(cjson.decode, value)
  if ok and type(member) == 'table' and member.instanceId == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 1
  end
end
return 0
"""

# ARGV: our instance id, our epoch. Removes the members an earlier incarnation of
# this instance (same id, smaller epoch) left behind; returns how many.
_PURGE: Final = (
    _DELETE_FIELDS
    + """
local fields = redis.call('HGETALL', KEYS[1])
local gone = {}
for i = 1, #fields, 2 do
  local ok, member = pcall(cjson.decode, fields[i + 1])
  if ok and type(member) == 'table' and member.instanceId == ARGV[1]
      and type(member.epoch) == 'number' and member.epoch < tonumber(ARGV[2]) then
    gone[#gone + 1] = fields[i]
  end
end
delete_fields(gone)
return #gone
"""
)

# Purge what has expired, then return everything left.
_READ: Final = (
    _DELETE_FIELDS
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
delete_fields(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now))
return redis.call('HGETALL', KEYS[1])
"""
)

#: Removals kept for Redis to come back; past this, the oldest are left to their TTL.
MAX_KEPT_REMOVALS: Final = 100_000


class RosterUnavailableError(ConnectionError):
    """Redis cannot be reached: at start, or when a roster read is asked for during an outage.

    ``presence_list`` raises it rather than quietly answering with this
    process's members only, which would look like everyone else had left.
    """


def _describe(exc: BaseException) -> str:
    """One readable clause for an error, however deep in exception groups it sits."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time"
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_APP: Final = re.compile(r"[A-Za-z0-9_-]+")


def app_name(app: str, what: str) -> str:
    """``app`` as a part of Redis keys, or ``LocalUsageError``: with a ``:`` or a brace in
    it, one app's keys could be another's (app ``a:b`` channel ``c`` is app ``a`` channel
    ``b:c``), so the names a cluster's NATS subjects allow are the only ones allowed."""
    if not isinstance(app, str) or not _APP.fullmatch(app):
        raise LocalUsageError(f"{what}: app must be letters, digits, '_' or '-', got {app!r}")
    return app


@final
class RedisRoster:
    """One Redis client applying one instance's roster actions, in order."""

    def __init__(
        self, url: str, *, app: str, instance_id: str, epoch: int, timeout: float = 5.0
    ) -> None:
        self._url = url
        self._app = app_name(app, "RedisRoster")
        self._instance_id = instance_id
        self._epoch = epoch
        self._timeout = timeout
        self._redis: aioredis.Redis | None = None
        self._queue: deque[tuple[str, Any]] = deque()
        self._wake = anyio.Event()
        self._failing = False
        #: Removals given up on during this outage (past MAX_KEPT_REMOVALS).
        self._dropped_removals = 0
        #: Failed writes and reads since start: a metric.
        self.errors = 0

    @property
    def url(self) -> str:
        return redact_url(self._url)

    @property
    def healthy(self) -> bool:
        """False from a failed write until one succeeds again (``/readyz`` reads it)."""
        return not self._failing

    @property
    def queued(self) -> int:
        """Writes waiting for the writer task (kept removals included): a metric."""
        return len(self._queue)

    def _base(self, channel: str) -> str:
        return f"megapresence:roster:{{{self._app}:{channel}}}"

    def _keys(self, channel: str) -> list[str]:
        base = self._base(channel)
        return [base, base + ":exp"]

    def _value(self, member: Member) -> str:
        value: dict[str, Any] = {"userId": member.user_id}
        if member.metadata is not None:
            value["metadata"] = member.metadata
        value["instanceId"] = self._instance_id
        value["epoch"] = self._epoch
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    async def start(self) -> None:
        """Connect, check the server (or raise ``RosterUnavailableError`` with the cause),
        then remove what an earlier incarnation of this instance left behind."""
        if sniffio.current_async_library() != "asyncio":
            raise LocalUsageError(
                "megapresence_redis needs the asyncio backend (redis-py's "
                "asyncio client); run the server with anyio's asyncio backend"
            )
        client = aioredis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )
        self._scripts = {
            "put": client.register_script(_PUT),
            "delete": client.register_script(_DELETE),
            "read": client.register_script(_READ),
            "purge": client.register_script(_PURGE),
        }
        try:
            with anyio.fail_after(self._timeout):
                await client.ping()
            purged = await self._purge_earlier_incarnations(client)
        except (RedisError, OSError, TimeoutError) as exc:
            await client.aclose()
            raise RosterUnavailableError(
                f"cannot reach Redis at {self.url}: {_describe(exc)}"
            ) from None
        self._redis = client
        logger.info("roster connected to %s", self.url)
        if purged:
            logger.info(
                "roster: removed %d members an earlier incarnation of instance %r left in %s",
                purged,
                self._instance_id,
                self.url,
            )

    async def _purge_earlier_incarnations(self, client: aioredis.Redis) -> int:
        # SCAN, not KEYS: it does not block Redis, whatever the size of the keyspace.
        pattern = _glob_escape(self._base("")[:-1]) + "*}"
        purge, purged = self._scripts["purge"], 0
        async for key in client.scan_iter(match=pattern, count=1000):
            base = key.decode() if isinstance(key, bytes) else key
            result = await purge(keys=[base, base + ":exp"], args=[self._instance_id, self._epoch])
            purged += int(result)
        return purged

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

    @property
    def pending_removals(self) -> int:
        """Removals queued or kept through an outage, not yet applied."""
        return sum(1 for op, _ in self._queue if op == "delete")

    async def _flush(self) -> bool:
        """Apply everything queued; False if Redis failed (logged once per outage)."""
        assert self._redis is not None
        scripts = self._scripts
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), 500))]
            applied = False
            try:
                # As a context manager the pipeline gives its connection back even
                # when loading the scripts fails, which execute() alone does not.
                async with self._redis.pipeline(transaction=False) as pipe:
                    for op, args in batch:
                        if op == "put":
                            channel, session_id, value, ms = args
                            await scripts["put"](
                                keys=self._keys(channel), args=[session_id, value, ms], client=pipe
                            )
                        else:
                            channel, session_id = args
                            await scripts["delete"](
                                keys=self._keys(channel),
                                args=[session_id, self._instance_id],
                                client=pipe,
                            )
                    await pipe.execute()
                applied = True
            except (RedisError, OSError) as exc:
                self.errors += 1
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "roster writes failing at %s: %s (delivery continues; members are "
                        "re-put on the next refresh, and %d removals are kept to apply when "
                        "it is back)",
                        self.url,
                        _describe(exc),
                        self.pending_removals + sum(op == "delete" for op, _ in batch),
                    )
                return False
            finally:
                if not applied:  # failed, or cancelled (a bounded shutdown)
                    self._keep_removals(batch)
            if self._failing:
                self._failing = False
                logger.info(
                    "roster writes recovered at %s; removals given up on during the "
                    "outage (they expired by their TTL): %d",
                    self.url,
                    self._dropped_removals,
                )
                self._dropped_removals = 0
        return True

    def _keep_removals(self, batch: list[tuple[str, Any]]) -> None:
        """Back to the front of the queue, in order: the removals of a failed batch. Its
        puts are not kept: the next refresh puts every live member again."""
        removals = [item for item in batch if item[0] == "delete"]
        room = MAX_KEPT_REMOVALS - self.pending_removals
        if len(removals) > room:
            self._dropped_removals += len(removals) - max(room, 0)
            removals = removals[len(removals) - max(room, 0) :]
        self._queue.extendleft(reversed(removals))

    # -------------------------------------------------------------- reads

    async def members(self, channels: Iterable[str]) -> list[Member]:
        """Every live member of ``channels``, read concurrently; ``RosterUnavailableError`` if Redis
        does not answer."""
        assert self._redis is not None
        read = self._scripts["read"]
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
            self.errors += 1
            raise RosterUnavailableError(
                f"the roster at {self.url} is unavailable: {_describe(exc)}"
            ) from None
        return [member for found in results for member in found]

    async def aclose(self) -> None:
        """Apply what is queued (our members' removals at shutdown), then disconnect."""
        if self._redis is None:
            return
        with anyio.move_on_after(self._timeout):
            await self._flush()
        lost = self.pending_removals + self._dropped_removals
        if lost:
            logger.warning(
                "roster: %d removals of this instance's members did not reach %s; "
                "those members stay listed until their TTL",
                lost,
                self.url,
            )
        await self._redis.aclose()
        self._redis = None


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern (SCAN MATCH)."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


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
