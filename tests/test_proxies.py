"""Behind a reverse proxy: whose ``X-Forwarded-For`` / ``Forwarded`` is believed, and for what."""

from __future__ import annotations

import ipaddress

import pytest

from megapresence_anyio import HandshakeRequest, Identity, PresenceServer, SocketLimits
from megapresence_anyio._forwarded import forwarded_for
from megapresence_core import LocalUsageError

from .socket_helpers import RawClient, upgrade_answer, wait_for

PROXY = ("10.0.0.5", 40000)
TRUSTED = frozenset({ipaddress.ip_network("10.0.0.0/8")})


def request(*headers: tuple[str, str]) -> HandshakeRequest:
    return HandshakeRequest(method="GET", path="/ws", headers=headers)


@pytest.mark.parametrize(
    ("headers", "client"),
    [
        ((("x-forwarded-for", "203.0.113.7"),), ("203.0.113.7", 0)),
        # The client wrote the left part; the nearest untrusted entry is the client.
        ((("x-forwarded-for", "1.1.1.1, 203.0.113.7, 10.0.0.9"),), ("203.0.113.7", 0)),
        # Every header line counts, in order.
        ((("x-forwarded-for", "1.1.1.1"), ("x-forwarded-for", "203.0.113.7")), ("203.0.113.7", 0)),
        ((("forwarded", 'for="[2001:db8::1]:4711";proto=https'),), ("2001:db8::1", 4711)),
        ((("forwarded", "for=192.0.2.60:8080, for=10.0.0.9"),), ("192.0.2.60", 8080)),
        # Forwarded wins over X-Forwarded-For.
        ((("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=192.0.2.60")), ("192.0.2.60", 0)),
        # Nothing usable: keep the proxy.
        ((), None),
        ((("x-forwarded-for", "unknown"),), None),
        ((("forwarded", "for=_hidden, for=10.0.0.9"),), ("10.0.0.9", 0)),
    ],
)
def test_the_client_is_the_nearest_address_no_trusted_proxy_wrote(
    headers: tuple[tuple[str, str], ...], client: tuple[str, int] | None
) -> None:
    assert forwarded_for(request(*headers), PROXY, TRUSTED) == client


def test_a_peer_that_is_not_a_trusted_proxy_is_not_believed() -> None:
    spoofed = request(("x-forwarded-for", "203.0.113.7"))
    assert forwarded_for(spoofed, ("198.51.100.1", 1), TRUSTED) is None


def test_trusted_proxies_must_be_addresses_or_ranges() -> None:
    with pytest.raises(LocalUsageError, match="'nope' is not an address"):
        SocketLimits(trusted_proxies=["nope"])
    with pytest.raises(LocalUsageError, match="collection"):
        SocketLimits(trusted_proxies="10.0.0.0/8")


@pytest.mark.anyio
@pytest.mark.parametrize("trusted", [True, False], ids=["behind-a-trusted-proxy", "not-trusted"])
async def test_the_per_address_cap_counts_forwarded_clients(
    anyio_backend: str, trusted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, int] | None] = []

    def login(request: HandshakeRequest) -> Identity:
        seen.append(request.remote)
        user = request.query["user"]
        return Identity(user_id=user, session_id=user)

    limits = SocketLimits(
        max_connections_per_address=1, trusted_proxies=["127.0.0.1"] if trusted else []
    )
    async with PresenceServer(login, paths=None, limits=limits) as server:
        port = await server.listen()
        forwarded = "X-Forwarded-For: {}\r\n"
        # ann holds one socket open, through the proxy, for 203.0.113.1.
        async with await RawClient.connect(port, "/ws?user=ann", forwarded.format("203.0.113.1")):
            await wait_for(lambda: len(server.clients) == 1)
            same = await upgrade_answer(port, forwarded.format("203.0.113.1"), "/ws?user=bob")
            other = await upgrade_answer(port, forwarded.format("203.0.113.2"), "/ws?user=cat")
            assert same.startswith(b"HTTP/1.1 429")
            if trusted:  # another client behind the same proxy is not ann
                assert other.startswith(b"HTTP/1.1 101")
                assert seen == [("203.0.113.1", 0), ("203.0.113.2", 0)]
                assert "peer 203.0.113.1:0 via 127.0.0.1:" in caplog.text
            else:  # every socket has the proxy's address
                assert other.startswith(b"HTTP/1.1 429")
                assert [remote[0] for remote in seen if remote] == ["127.0.0.1"]
