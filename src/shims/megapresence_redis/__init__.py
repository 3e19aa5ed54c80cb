"""megapresence_redis: per-channel rosters in Redis (or Valkey), expiring member by member.

Requires the asyncio backend (redis-py's asyncio client).
"""

from megapresence_core import __version__ as __version__

from ._roster import RedisRoster, RosterUnavailableError

__all__ = ["RedisRoster", "RosterUnavailableError"]
