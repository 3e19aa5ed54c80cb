"""The ``megapresence`` command as a user meets it: flags, failures to start, signals, logs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import megapresence_anyio._cli as cli
from megapresence_anyio._cli import EXIT_CODES, ExitCode, StartupError
from megapresence_core import __version__

from .process_helpers import Command
from .servers import free_port

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def megapresence(
    *args: str, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (it is expected to fail to start, or to print and exit)."""
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("MEGAPRESENCE_")
    }
    code = f"{prelude}import sys; from megapresence_anyio._cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, **(env or {})},
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version_is_the_package_version() -> None:
    result = megapresence("--version")
    assert (result.returncode, result.stdout) == (0, f"megapresence {__version__}\n")


@pytest.mark.parametrize("command", ["serve", "hub"])
def test_help_lists_every_flag_and_the_exit_codes(command: str) -> None:
    result = megapresence(command, "--help")
    assert result.returncode == 0
    flags = {
        option
        for action in subcommands()[command]._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    assert {"--backend", "--log-level", "--log-format", "--host", "--port", "--app"} <= flags
    missing = {flag for flag in flags if flag not in result.stdout}
    assert missing == set()
    for code in ExitCode:
        assert re.search(rf"^\s+{int(code)}  ", result.stdout, re.MULTILINE), code


def test_the_docs_document_every_exit_code() -> None:
    section = CLI_DOC.read_text().split("**Exit codes.**", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.+?) \|$", section, re.MULTILINE))
    assert {int(code) for code in rows} == {int(code) for code in ExitCode}
    assert set(EXIT_CODES) == set(ExitCode)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "70000"], "argument --port: '70000' is not a port number"),
        (["hub", "--port", "http"], "argument --port: 'http' is not a port number"),
        (["serve", "--log-level", "verbose"], "argument --log-level: invalid choice: 'verbose'"),
        (["--log-format", "xml", "hub"], "argument --log-format: invalid choice: 'xml'"),
        (["serve", "--backend", "curio"], "argument --backend: invalid choice: 'curio'"),
        (["serve", "--cluster-ttl", "-1"], "argument --cluster-ttl: '-1' is not a positive"),
        (["hub", "--heartbeat", "nan"], "argument --heartbeat: 'nan' is not a positive"),
        (["serve", "--leave-grace", "-1"], "argument --leave-grace: '-1' is not a number of"),
        (["serve", "--presence-window", "inf"], "argument --presence-window: 'inf' is not a"),
        (["serve", "--host", "a..b"], "argument --host: 'a..b' is not a host name"),
        (["serve", "--verbose"], "unrecognized arguments: --verbose"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = megapresence(*args)
    assert result.returncode == ExitCode.USAGE
    (line,) = result.stderr.splitlines()
    assert "error: " + message in line
    assert line.endswith("--help)")


def test_global_flags_are_taken_before_or_after_the_command() -> None:
    parse = cli._parser().parse_args
    after = parse(["serve", "--backend", "trio", "--log-level", "DEBUG", "--log-format", "json"])
    before = parse(["--backend", "trio", "--log-level", "DEBUG", "--log-format", "json", "serve"])
    for args in (after, before):
        assert (args.backend, args.log_level, args.log_format) == ("trio", "debug", "json")
    defaults = parse(["hub"])
    assert (defaults.backend, defaults.log_level, defaults.log_format) == (
        "asyncio",
        "info",
        "text",
    )
    assert parse(["--backend", "trio", "hub"]).backend == "trio"  # not reset by the command


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def closed_port() -> str:
    return str(free_port())  # nothing listens there


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["hub", "--port", "0"], ExitCode.CONFIG, "hub needs at least one --token"),
        (
            ["serve", "--port", "0", "--hub", "ws://127.0.0.1:9/"],
            ExitCode.CONFIG,
            "serve --hub needs --hub-token",
        ),
        (
            ["serve", "--port", "0", "--hub", "http://x/", "--hub-token", "t"],
            ExitCode.CONFIG,
            "hub URL must look like ws://",
        ),
        (
            ["serve", "--nats", "nats://127.0.0.1:9", "--cluster-heartbeat=20", "--cluster-ttl=10"],
            ExitCode.CONFIG,
            "ClusterConfig",
        ),
        (
            ["serve", "--backend", "trio", "--port", "0", "--redis", "redis://127.0.0.1:9"],
            ExitCode.CONFIG,
            "needs the asyncio backend",
        ),
        (
            ["serve", "--port", "0", "--metrics-allow", "everyone"],
            ExitCode.CONFIG,
            "MetricsAccess: allow: 'everyone' is not an address",
        ),
        (
            ["serve", "--port", "0", "--trusted-proxy", "the-proxy"],
            ExitCode.CONFIG,
            "trusted_proxies: 'the-proxy' is not an address",
        ),
        (
            ["serve", "--port", "0", "--hub", "ws://h:1/", "--hub-token", "t", "--hub-cafile", "c"],
            ExitCode.CONFIG,
            "need a wss:// hub",
        ),
        (
            ["hub", "--port", "0", "--token", "t", "--client-cafile", "ca.pem"],
            ExitCode.CONFIG,
            "--keyfile and --client-cafile need --certfile",
        ),
        (
            [
                "serve",
                "--port",
                "0",
                "--hub",
                "wss://h:1/",
                "--hub-token",
                "t",
                "--hub-cafile",
                "/no/such/ca.pem",
            ],
            ExitCode.CONFIG,
            "cannot load the CA file",
        ),
        (["serve", "--host", "no_such_host!"], ExitCode.UNKNOWN_HOST, "--host does not resolve"),
        (
            ["serve", "--host", "0.0.0.0", "--port", "0"],
            ExitCode.CONFIG,
            "serve --host 0.0.0.0 would let anyone be anyone",
        ),
        (
            ["serve", "--host", "", "--port", "0"],
            ExitCode.CONFIG,
            "would let anyone be anyone",
        ),
        (
            ["serve", "--host", "::", "--port", "0", "--admin", "ann"],
            ExitCode.CONFIG,
            "pass --auth jwt, or --demo",
        ),
        (
            ["serve", "--port", "0", "--trusted-proxy", "127.0.0.1"],
            ExitCode.CONFIG,
            "serve --trusted-proxy would let anyone be anyone",
        ),
        (
            ["serve", "--port", "0", "--auth", "jwt"],
            ExitCode.CONFIG,
            "--auth jwt with HS256 needs its shared key: set MEGAPRESENCE_JWT_SECRET",
        ),
        (
            ["serve", "--port", "0", "--auth", "jwt", "--jwt-algorithm", "ES256"],
            ExitCode.CONFIG,
            "needs its public key (PEM): set MEGAPRESENCE_JWT_PUBLIC_KEY or pass --jwt-key-file",
        ),
        (
            ["serve", "--port", "0", "--auth", "jwt", "--jwt-key-file", "/no/such/key"],
            ExitCode.CONFIG,
            "cannot read --jwt-key-file '/no/such/key'",
        ),
        (
            ["serve", "--port", "0", "--auth", "jwt", "--demo"],
            ExitCode.CONFIG,
            "--demo and --auth jwt contradict each other",
        ),
        (["hub", "--host", "192.0.2.1", "--token", "t"], ExitCode.CANNOT_LISTEN, "192.0.2.1"),
        (
            ["serve", "--port", "0", "--redis", "redis://127.0.0.1:{closed}/0"],
            ExitCode.REDIS_UNREACHABLE,
            "cannot reach Redis at redis://127.0.0.1:",
        ),
        (
            ["serve", "--port", "0", "--nats", "nats://u:secret@127.0.0.1:{closed}"],
            ExitCode.NATS_UNREACHABLE,
            "cannot reach NATS at nats://u:***@127.0.0.1:",
        ),
    ],
    ids=lambda value: value.name.lower() if isinstance(value, ExitCode) else None,
)
def test_each_failure_to_start_is_one_line_with_its_exit_code(
    args: list[str], code: ExitCode, message: str
) -> None:
    closed = closed_port()
    result = megapresence(*(a.format(closed=closed) for a in args), "--log-level", "error")
    assert result.returncode == code, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("megapresence: ")
    assert message in line
    assert "secret" not in line


@pytest.mark.parametrize("command", ["serve", "hub"])
def test_a_port_in_use_is_its_own_failure(busy_port: int, command: str) -> None:
    result = megapresence(
        command,
        "--port",
        str(busy_port),
        "--log-level",
        "error",
        env={"MEGAPRESENCE_HUB_TOKENS": "t"},
    )
    assert result.returncode == ExitCode.ADDRESS_IN_USE
    (line,) = result.stderr.splitlines()
    assert f"cannot listen on 127.0.0.1:{busy_port}: another process is listening" in line


@pytest.mark.parametrize(
    ("flags", "named", "module"),
    [
        (["--nats", "x://127.0.0.1"], "--nats", "nats"),
        (["--redis", "x://127.0.0.1"], "--redis", "redis"),
        (["--backend", "trio"], "--backend trio", "trio"),
        (["--auth", "jwt"], "--auth jwt", "jwt"),
    ],
)
def test_a_missing_extra_names_the_package_to_install(
    flags: list[str], named: str, module: str
) -> None:
    hidden = f"import sys; sys.modules[{module!r}] = None; "  # as if it were not installed
    result = megapresence(
        "serve",
        "--port",
        "0",
        *flags,
        "--log-level",
        "error",
        prelude=hidden,
        env={"MEGAPRESENCE_JWT_SECRET": "s" * 32},
    )
    assert result.returncode == ExitCode.MISSING_EXTRA, result.stderr
    (line,) = result.stderr.splitlines()  # one line, no traceback
    assert f"{named} needs {module}" in line
    assert f"pip install 'megapresence[{module}]'" in line


def test_with_json_logs_a_failure_to_start_is_one_json_line(busy_port: int) -> None:
    result = megapresence(
        "hub", "--port", str(busy_port), "--token", "t", "--log-format", "json", "--app", "chat"
    )
    assert result.returncode == ExitCode.ADDRESS_IN_USE
    (line,) = result.stderr.splitlines()
    failure = json.loads(line)
    assert failure["event"] == "startup.failed"
    assert failure["exit_code"] == ExitCode.ADDRESS_IN_USE
    assert failure["app"] == "chat"
    assert "another process is listening" in failure["error"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=["SIGTERM", "SIGHUP", "SIGINT"]
)
def test_a_signal_drains_and_exits_0_even_when_sent_twice(
    tmp_path: Path, backend: str, sig: signal.Signals
) -> None:
    # Flags after the command: the form dev.py passes on.
    server = Command(
        tmp_path,
        "serve",
        "serve",
        "--port",
        "0",
        "--backend",
        backend,
        "--log-format",
        "json",
        "--app",
        "chat",
        "--instance-id",
        "i-1",
    )
    server.process.send_signal(sig)
    server.process.send_signal(sig)  # a second one during the drain changes nothing
    assert server.stop(sig) == 0
    lines = [json.loads(line) for line in server.log.read_text().splitlines()]
    assert all((line["app"], line["instance"]) == ("chat", "i-1") for line in lines)
    events = {line.get("event"): line for line in lines}
    assert events["server.listening"]["backend"] == backend
    assert events["server.listening"]["version"] == __version__
    assert events["shutdown.started"]["signal"] == sig.name
    assert "shutdown.done" in events
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", server.port))


def test_the_hub_logs_its_id_as_the_instance(tmp_path: Path) -> None:
    hub = Command(tmp_path, "hub", "hub", "--port", "0", "--log-format", "json")
    assert hub.stop() == 0
    lines = [json.loads(line) for line in hub.log.read_text().splitlines()]
    listening = next(line for line in lines if line.get("event") == "hub.listening")
    assert listening["instance"] == listening["hub_id"]
    assert listening["app"] == "megapresence"


def test_a_bug_exits_1_with_its_traceback_in_the_log(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(*args: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "_start_hub", broken)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        code = cli.main(["hub", "--token", "t", "--log-format", "json"])
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert code == ExitCode.INTERNAL
    (line,) = capsys.readouterr().err.splitlines()
    crash = json.loads(line)
    assert crash["level"] == "critical"
    assert crash["exc_type"] == "RuntimeError"
    assert "a bug" in crash["exc"]


def test_a_startup_error_is_found_inside_exception_groups() -> None:
    failure = StartupError(ExitCode.ADDRESS_IN_USE, "busy")
    nested = BaseExceptionGroup("outer", [KeyError("x"), ExceptionGroup("inner", [failure])])
    assert cli._startup_error(nested) is failure
    assert cli._startup_error(ExceptionGroup("other", [KeyError("x")])) is None


def test_metrics_on_a_port_of_their_own_with_a_token(tmp_path: Path) -> None:
    metrics_port = closed_port()
    server = Command(
        tmp_path,
        "serve",
        "serve",
        "--port",
        "0",
        "--metrics-port",
        str(metrics_port),
        "--metrics-token",
        "s3cret",
        "--metrics-allow",
        "192.0.2.0/24",
    )
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
            assert response.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/metrics", timeout=5)
        assert refused.value.code == 403
        refused.value.close()  # it holds the response's socket
        request = urllib.request.Request(
            f"{base}/metrics", headers={"Authorization": "Bearer s3cret"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert b"megapresence_connections 0.0" in response.read()
        for path in ("/metrics", "/healthz", "/readyz"):  # "instead of the main one"
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5)
            assert missing.value.code == 404, path
            missing.value.close()
    finally:
        assert server.stop() == 0


def test_demo_anywhere_caps_and_no_page_come_from_flags(tmp_path: Path) -> None:
    # --demo serves the demo identity on every address: said, not assumed.
    server = Command(
        tmp_path,
        "serve",
        "serve",
        "--host",
        "0.0.0.0",
        "--demo",
        "--port",
        "0",
        "--max-connections-per-address",
        "2",
        "--no-page",
    )
    try:
        with pytest.raises(urllib.error.HTTPError) as no_page:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10)
        assert no_page.value.code == 404
        no_page.value.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/megapresence.js") as js:
            assert js.status == 200  # the client stays: pages of your own import it

        def upgrade(user: str) -> socket.socket:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(
                f"GET /ws/chat?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            return sock

        opened = [upgrade("ann"), upgrade("bob")]
        for sock in opened:
            assert sock.recv(64).startswith(b"HTTP/1.1 101")
        third = upgrade("cat")
        assert third.recv(64).startswith(b"HTTP/1.1 429")
        for sock in (*opened, third):
            sock.close()
    finally:
        assert server.stop() == 0
    assert "demo authenticator" in server.log.read_text()


@pytest.mark.parametrize(("flags", "jetstream"), [((), True), (("--history", "local"), False)])
def test_serve_over_nats_keeps_history_in_jetstream_unless_told_local(
    flags: tuple[str, ...], jetstream: bool
) -> None:
    from megapresence_anyio._cli import _parser, _serve_backends
    from megapresence_nats import JetStreamHistory

    args = _parser().parse_args(["serve", "--nats", "nats://127.0.0.1:1", *flags])
    backends = _serve_backends(args, "instance", 1)
    assert isinstance(backends.stream_store, JetStreamHistory) is jetstream


_REDIS = ("--redis", "redis://127.0.0.1:1")
_NATS = ("--nats", "nats://127.0.0.1:1")


@pytest.mark.parametrize(
    ("flags", "store"),
    [
        ((), "RedisStreams"),
        (_NATS, "RedisStreams"),
        ((*_NATS, "--history", "jetstream"), "JetStreamHistory"),
        (("--history", "local"), "NoneType"),
    ],
)
def test_serve_with_redis_keeps_history_in_redis_unless_told_otherwise(
    flags: tuple[str, ...], store: str
) -> None:
    from megapresence_anyio._cli import _parser, _serve_backends

    args = _parser().parse_args(["serve", *_REDIS, *flags])
    backends = _serve_backends(args, "instance", 1)
    assert type(backends.stream_store).__name__ == store
