"""TLS: listeners with a certificate, ``wss://`` hub links, client certificates.

A CA and certificates are made in the test (``trustme``); nothing is read from the
machine's trust store except where the test shows that it is used by default.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from websockets.sync.client import connect

from megapresence_anyio import HubServer, PresenceServer, client_context, server_context
from megapresence_core import HubConfig, HubLinkConfig, LocalUsageError, PresenceConfig
from megapresence_core.lifecycle import HubLinkState

from .process_helpers import TOKEN, Command, eventually
from .socket_helpers import Client, query_login, wait_for

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """PEM files: the CA, a server certificate with its key, a client certificate."""
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(paths["server"])
    ca.issue_cert("bridge-1").private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return {name: str(path) for name, path in paths.items()}


def client_ssl(files: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=files["ca"])


pytestmark = pytest.mark.anyio


async def test_a_tls_listener_serves_wss_and_drops_a_plain_peer(
    anyio_backend: str, files: dict[str, str]
) -> None:
    no_grace = PresenceConfig(leave_grace=0)  # a closed session leaves the roster at once
    async with PresenceServer(query_login, paths=None, presence=no_grace) as server:
        port = await server.listen(HOST, 0, ssl_context=server_context(files["server"]))
        # A peer that speaks plain HTTP to the TLS port is dropped, and counts nowhere.
        async with await anyio.connect_tcp(HOST, port) as plain:
            await plain.send(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            with (
                anyio.fail_after(10),
                contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError),
            ):
                while await plain.receive():  # a TLS alert at most, then the end
                    pass
        # Counted as a bad request (it never was a request), and not kept pending.
        await wait_for(lambda: server.stats.refusals == {400: 1})
        ssl_context = client_ssl(files)
        ann = await Client.connect(f"wss://{HOST}:{port}/ws/chat?user=ann", ssl=ssl_context)
        bob = await Client.connect(f"wss://{HOST}:{port}/ws/chat?user=bob", ssl=ssl_context)
        await wait_for(lambda: len(server.roster("/ws/chat")) == 2)
        assert not server._host.readers  # a TLS socket keeps its task
        server.broadcast("/ws/chat", "lobby", {"type": "hello", "payload": "x" * 60_000})
        for client in (ann, bob):
            assert json.loads(await client.recv())["payload"] == "x" * 60_000
        await ann.close()
        await bob.close()
        await wait_for(lambda: server.roster("/ws/chat") == [])


@pytest.mark.parametrize("client_cert", [False, True], ids=["server-auth", "mutual"])
async def test_a_wss_hub_link_registers_with_the_ca_it_is_given(
    anyio_backend: str, files: dict[str, str], client_cert: bool
) -> None:
    hub_context = server_context(files["server"])
    if client_cert:  # the hub asks bridges for a certificate of its CA
        hub_context.load_verify_locations(files["ca"])
        hub_context.verify_mode = ssl.CERT_REQUIRED
    async with HubServer(HubConfig(hub_id="h", tokens=[TOKEN])) as hub:
        port = await hub.listen(HOST, 0, ssl_context=hub_context)
        link = client_context(files["ca"], files["client"] if client_cert else None)
        config = PresenceConfig(
            hub_link=HubLinkConfig(bridge_id="b", instance_id="i", backoff_initial=0.05)
        )
        async with PresenceServer(
            query_login,
            presence=config,
            hub_url=f"wss://{HOST}:{port}/",
            hub_token=TOKEN,
            hub_ssl_context=link,
        ) as server:
            await wait_for(lambda: server.presence.hub_link_state is HubLinkState.REGISTERED, 10)
            assert server.readiness().ready


async def test_a_wss_hub_link_refuses_a_certificate_it_cannot_trust_and_retries(
    anyio_backend: str, files: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    async with HubServer(HubConfig(hub_id="h", tokens=[TOKEN])) as hub:
        port = await hub.listen(HOST, 0, ssl_context=server_context(files["server"]))
        config = PresenceConfig(
            hub_link=HubLinkConfig(
                bridge_id="b", instance_id="i", backoff_initial=0.02, backoff_max=0.05
            )
        )
        # No context given: the system's trust store, which does not hold the test's CA.
        async with PresenceServer(
            query_login, presence=config, hub_url=f"wss://{HOST}:{port}/", hub_token=TOKEN
        ) as server:
            await wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, 10)
            assert server.presence.hub_link_state is not HubLinkState.REGISTERED
            assert not server.readiness().ready
            assert server.readiness().checks["hub"] != "registered"


def test_tls_settings_that_cannot_work_are_refused_at_once(files: dict[str, str]) -> None:
    with pytest.raises(LocalUsageError, match="cannot load the TLS certificate"):
        server_context(files["ca"] + ".missing")
    with pytest.raises(LocalUsageError, match="needs its certificate"):
        client_context(keyfile=files["client"])
    with pytest.raises(LocalUsageError, match="needs a wss:// URL"):
        PresenceServer(
            query_login,
            presence=PresenceConfig(hub_link=HubLinkConfig(bridge_id="b", instance_id="i")),
            hub_url="ws://127.0.0.1:1/",
            hub_token=TOKEN,
            hub_ssl_context=client_context(files["ca"]),
        )


@pytest.fixture
def tls_commands(tmp_path: Path, files: dict[str, str]) -> Iterator[dict[str, Command]]:
    commands: dict[str, Command] = {}
    try:
        commands["hub"] = Command(
            tmp_path,
            "hub",
            "hub",
            "--port",
            "0",
            "--certfile",
            files["server"],
            "--client-cafile",
            files["ca"],
        )
        commands["serve"] = Command(
            tmp_path,
            "serve",
            "--backend",
            "trio",
            "serve",
            "--port",
            "0",
            "--certfile",
            files["server"],
            "--hub",
            f"wss://{HOST}:{commands['hub'].port}/",
            "--bridge-id",
            "web-1",
            "--hub-cafile",
            files["ca"],
            "--hub-certfile",
            files["client"],
        )
        yield commands
    finally:
        for command in commands.values():
            command.stop()


def test_serve_and_hub_with_certificates_as_processes(
    tls_commands: dict[str, Command], files: dict[str, str]
) -> None:
    hub, serve = tls_commands["hub"], tls_commands["serve"]
    context = client_ssl(files)
    with connect(
        f"wss://{HOST}:{serve.port}/ws/chat?user=ann", ssl=context, open_timeout=10
    ) as ann:
        welcome = json.loads(ann.recv(10))
        assert welcome["type"] == "welcome"
        session = welcome["payload"]["sessionId"]
        request = urllib.request.Request(
            f"https://{HOST}:{hub.port}/presence", headers={"Authorization": f"Bearer {TOKEN}"}
        )

        def at_the_hub() -> bool:
            # The hub asks every client for a certificate: this one shows the bridge's.
            https = client_ssl(files)
            https.load_cert_chain(files["client"])
            with urllib.request.urlopen(request, context=https, timeout=5) as response:
                members = json.load(response)["members"]
            return session in {m["sessionId"] for m in members}

        eventually(at_the_hub, what="ann at the hub over wss")
        with urllib.request.urlopen(
            f"https://{HOST}:{serve.port}/readyz", context=context, timeout=5
        ) as response:
            assert json.load(response)["checks"]["hub"] == "registered"


def test_a_certificate_that_cannot_be_loaded_fails_the_start_with_exit_code_3(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "megapresence_anyio", "serve", "--port", "0"),
            *("--certfile", str(tmp_path / "missing.pem")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1
    assert "cannot load the TLS certificate" in done.stderr
