"""megapresence_anyio: presence over real WebSockets on asyncio and trio (anyio + wsproto).

``PresenceServer`` serves client sockets, ``HubServer`` is the hub, and the
``megapresence`` command runs either from a shell.
"""

from megapresence_core import __version__ as __version__

from ._config import DEFAULT_HUB_LIMITS, DEFAULT_SOCKET_LIMITS, SocketLimits
from ._http import HandshakeRequest
from ._hub_server import HubServer
from ._server import Client, Identity, PresenceServer, Refusal

__all__ = [
    "DEFAULT_HUB_LIMITS",
    "DEFAULT_SOCKET_LIMITS",
    "Client",
    "HandshakeRequest",
    "HubServer",
    "Identity",
    "PresenceServer",
    "Refusal",
    "SocketLimits",
]
