"""The core stays pure, and its public surface is deliberate."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys
import types

import pytest

import megapresence_core

CORE = pathlib.Path(megapresence_core.__file__).parent
FORBIDDEN = {
    "socket",
    "select",
    "selectors",
    "asyncio",
    "trio",
    "anyio",
    "threading",
    "time",
    "ssl",
    "subprocess",
    "multiprocessing",
    "os",
    "io",
    "logging.handlers",
    "signal",
    "datetime",
    "megapresence_anyio",
    "megapresence_nats",
    "megapresence_redis",
    "uuid",
    "secrets",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_core_sources_import_nothing_that_does_io() -> None:
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = {m for m in imported_modules(path) if m in FORBIDDEN or m.split(".")[0] in FORBIDDEN}
        if bad:
            offenders[str(path.relative_to(CORE))] = sorted(bad)
    assert offenders == {}


def test_importing_the_core_loads_no_io_module() -> None:
    # The transitive check: what a fresh interpreter loads for the core beyond
    # its one dependency (attrs itself loads threading for its own use).
    probe = (
        "import sys, attrs; before = set(sys.modules); import megapresence_core; "
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout))
    assert (
        loaded
        & {
            "socket",
            "select",
            "selectors",
            "asyncio",
            "trio",
            "anyio",
            "threading",
            "ssl",
            "logging.handlers",
        }
        == set()
    )


def test_checker_would_notice_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom time import monotonic\n", encoding="utf-8")
    assert imported_modules(bad) == {"asyncio", "time"}


SUBMODULES = ("actions", "config", "errors", "events", "hub", "lifecycle", "wire")


def test_all_lists_exactly_what_an_embedder_needs() -> None:
    public = {
        name
        for name, value in vars(megapresence_core).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(megapresence_core.__all__) == public
    assert len(megapresence_core.__all__) == len(set(megapresence_core.__all__))
    # h11 exports 23; the core used to export 101. Live presence added six an embedder needs:
    # Subscribe, Unsubscribe, PublishRequested, PresenceMode, Sender, RequestRefused.
    assert len(megapresence_core.__all__) <= 36
    for name in megapresence_core.__all__:
        assert getattr(megapresence_core, name) is not None


@pytest.mark.parametrize("name", SUBMODULES)
def test_each_public_submodule_exports_what_it_lists(name: str) -> None:
    module = importlib.import_module(f"megapresence_core.{name}")
    assert len(module.__all__) == len(set(module.__all__))
    for key in module.__all__:
        assert getattr(module, key) is not None, key


def test_the_glossary_defines_each_word_once() -> None:
    doc = megapresence_core.__doc__ or ""
    for word in (
        "ns",
        "channel",
        "subscription",
        "watcher",
        "connection",
        "user",
        "session",
        "member",
        "roster",
        "grace",
        "window",
        "store",
        "hub",
        "hub link",
        "bridge",
        "interest",
        "cluster",
        "instance",
        "epoch",
    ):
        assert f"\n{word}\n    " in doc, word


def test_every_name_the_old_top_level_had_is_still_importable() -> None:
    # The narrowed surface moved names, it did not drop them.
    moved = {
        "events": [
            "HubConnected",
            "HubFrameReceived",
            "HubLinkStarted",
            "HubLost",
            "ClusterConnected",
            "ClusterLost",
            "ClusterMessageReceived",
            "BridgeClosed",
            "BridgeConnecting",
            "BridgeFrameReceived",
            "HubEvent",
        ],
        "actions": [
            "ClusterPublish",
            "ConnectHub",
            "CloseHubLink",
            "SendHubFrame",
            "StorePut",
            "StoreRefresh",
            "StoreDelete",
            "StoreEntry",
            "AcceptBridge",
            "RefuseBridge",
            "SendBridgeFrame",
            "CloseBridge",
            "HubAction",
        ],
        "wire": [
            "FRAME_TYPES",
            "CLUSTER_KINDS",
            "encode",
            "decode_hub_frame",
            "RemoteMember",
            "decode_cluster_message",
            "decode_client_command",
            "command_event",
            "ABSENT",
        ],
        "errors": ["MAX_CLOSE_REASON_BYTES", "truncate_reason"],
        "lifecycle": ["ConnectionState", "HubLinkState", "BridgeState"],
        "config": ["redact_url", "DEFAULT_MAX_MESSAGE_BYTES"],
        "hub": ["HubMember", "Bridge"],
    }
    for module, names in moved.items():
        imported = importlib.import_module(f"megapresence_core.{module}")
        for name in names:
            assert name in imported.__all__, (module, name)


def test_the_package_is_typed() -> None:
    assert (CORE / "py.typed").is_file()
