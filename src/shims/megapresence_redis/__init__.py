"""megapresence_redis: per-channel rosters in Redis (or Valkey), expiring member by member,
and channel streams in Redis Streams (history for recovery, and live delivery in offset order).

Requires the asyncio backend (redis-py's asyncio client).
"""

from megapresence_core import __version__ as __version__

from ._roster import RedisRoster, RosterUnavailableError
from ._streams import RedisStreams

__all__ = ["RedisRoster", "RedisStreams", "RosterUnavailableError"]
