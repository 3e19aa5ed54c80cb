"""megapresence_anyio: presence over real WebSockets on asyncio and trio (anyio + wsproto).

``PresenceServer`` serves client sockets (on its own port, or mounted in an
ASGI app as ``PresenceASGI``), ``HubServer`` is the hub, and the
``megapresence`` command runs either from a shell.
"""

from megapresence_core import PresenceMode, Sender
from megapresence_core import __version__ as __version__

from ._asgi import PresenceASGI
from ._commands import handle_command
from ._config import DEFAULT_HUB_LIMITS, DEFAULT_SOCKET_LIMITS, SocketLimits
from ._http import HandshakeRequest
from ._hub_server import HubServer
from ._jwt import JwtAuthenticator
from ._ops import DEFAULT_METRICS_ACCESS, MetricsAccess
from ._server import Client, PresenceServer, SubscriptionHook
from ._tls import client_context, server_context
from ._types import (
    ChannelStats,
    ClusterBackend,
    Identity,
    Refusal,
    RosterBackend,
    StreamStoreBackend,
    Verdict,
)

__all__ = [
    "DEFAULT_HUB_LIMITS",
    "DEFAULT_METRICS_ACCESS",
    "DEFAULT_SOCKET_LIMITS",
    "ChannelStats",
    "Client",
    "ClusterBackend",
    "HandshakeRequest",
    "HubServer",
    "Identity",
    "JwtAuthenticator",
    "MetricsAccess",
    "PresenceASGI",
    "PresenceMode",
    "PresenceServer",
    "Refusal",
    "RosterBackend",
    "Sender",
    "SocketLimits",
    "StreamStoreBackend",
    "SubscriptionHook",
    "Verdict",
    "client_context",
    "handle_command",
    "server_context",
]
