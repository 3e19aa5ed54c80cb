"""docs/deploy.md, its Containerfile and the README's commands: what they run is valid.

No container runtime, systemd or nginx runs here; what can be checked is that each
command they give is one ``megapresence`` accepts, that each would start (an
address other than loopback comes with an identity), that the files the image
copies exist, and that the token-minting example makes a token ``serve --auth
jwt`` admits.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from megapresence_anyio import HandshakeRequest, Identity
from megapresence_anyio._cli import _is_loopback, _parser
from megapresence_anyio._jwt import JwtAuthenticator

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
README = (ROOT / "README.md").read_text()
CONTAINERFILE = (ROOT / "docs" / "Containerfile").read_text()


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.M | re.S)


def commands(text: str) -> list[list[str]]:
    """Every ``megapresence ...`` command of the text's shell blocks, continuations joined."""
    found = []
    for block in blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words.pop(0)  # the environment the command is given
            if words[:1] == ["megapresence"]:
                found.append(words[1:])
    return found


def would_start(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve" and not (args.auth or args.demo):
        assert _is_loopback(args.host), f"{argv}: the demo identity on {args.host}"
        assert not args.trusted_proxy, f"{argv}: the demo identity behind a proxy"


@pytest.mark.parametrize("argv", commands(README) + commands(DEPLOY), ids=" ".join)
def test_every_megapresence_command_of_the_docs_is_accepted(argv: list[str]) -> None:
    would_start(argv)


def test_the_docs_give_serve_commands_with_jwt() -> None:
    assert any("--auth" in argv for argv in commands(README))
    assert any("--jwt-key-file" in argv for argv in commands(DEPLOY))


def test_the_systemd_unit_starts_a_server_with_an_identity() -> None:
    (unit,) = blocks(DEPLOY, "ini")
    (exec_start,) = re.findall(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    assert exec_start[0].endswith("/bin/megapresence")
    argv = shlex.split(exec_start[1].replace("%i", "01"))
    would_start(argv)
    assert _parser().parse_args(argv).port == 8001
    assert "KillSignal=SIGTERM" in unit
    assert re.search(r"^LimitNOFILE=\d+$", unit, re.M)


def test_the_container_image_copies_files_that_exist_and_runs_a_server_with_an_identity() -> None:
    for sources in re.findall(r"^COPY (.+) \S+$", CONTAINERFILE, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), source
    (cmd,) = re.findall(r"^CMD (\[.*\])$", CONTAINERFILE, re.M)
    (entry,) = re.findall(r"^ENTRYPOINT (\[.*\])$", CONTAINERFILE, re.M)
    assert json.loads(entry) == ["megapresence"]
    argv = json.loads(cmd)
    would_start(argv)
    assert _parser().parse_args(argv).auth == "jwt"


def test_the_nginx_configuration_passes_the_upgrade_headers() -> None:
    (nginx,) = blocks(DEPLOY, "nginx")
    for line in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ):
        assert line in nginx


def test_the_token_example_mints_a_token_serve_admits(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "k" * 64
    monkeypatch.setenv("MEGAPRESENCE_JWT_SECRET", secret)
    (example,) = blocks(DEPLOY, "python")
    namespace: dict[str, object] = {"__name__": "deploy_example"}
    exec(compile(example, "docs/deploy.md", "exec"), namespace)
    token = namespace["presence_token"]("ann", "t1", ["lobby", "dev"], admin=True)  # type: ignore[operator]
    server = JwtAuthenticator(key=secret.encode())
    request = HandshakeRequest(
        method="GET", path="/ws/chat", query_string=f"token={token}", headers=()
    )
    assert server(request) == Identity(
        user_id="ann",
        session_id="ann-t1",
        channels=("lobby", "dev"),
        metadata={"status": "online", "admin": True},
    )
