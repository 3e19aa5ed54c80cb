"""megapresence_nats: fan-out, a cluster-wide roster and channel history (JetStream) between
instances, over NATS.

Requires the asyncio backend (nats-py is asyncio only).
"""

from megapresence_core import __version__ as __version__

from ._cluster import ClusterUnavailableError, NatsCluster
from ._history import JetStreamHistory

__all__ = ["ClusterUnavailableError", "JetStreamHistory", "NatsCluster"]
