"""megapresence_nats: fan-out and a cluster-wide roster between instances, over NATS.

Requires the asyncio backend (nats-py is asyncio only).
"""

from ._cluster import ClusterUnavailableError, NatsCluster

__all__ = ["ClusterUnavailableError", "NatsCluster"]
