"""megapresence_nats: fan-out and a cluster-wide roster between instances, over NATS.

Requires the asyncio backend (nats-py is asyncio only).
"""

from megapresence_core import __version__ as __version__

from ._cluster import ClusterUnavailableError, NatsCluster

__all__ = ["ClusterUnavailableError", "NatsCluster"]
