"""Several workers are one world only through a hub: ``uvicorn --workers 2`` with the example.

Each uvicorn worker is a process of its own, so a presence server of its own;
``examples/fastapi_chat.py`` joins the hub named in ``CHAT_HUB`` as one bridge
per worker. Round after round, ann and bob connect afresh (the kernel hands each
socket to either worker) and must see each other, and what a third user says in
the lobby must reach both, whichever workers they landed on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .asgi_process import CHAT_ENV, ROOT
from .process_helpers import TOKEN, Command, eventually, stop_process
from .servers import free_port, wait_for_port
from .test_example_fastapi import log_in

ROUNDS = 8


def hub_listing(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/presence", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        listing: dict[str, Any] = json.loads(answer.read())
    return listing


def open_tab(port: int, cookie: str, tab: str) -> ClientConnection:
    ws = connect(
        f"ws://127.0.0.1:{port}/ws/chat?tab={tab}",
        additional_headers={"Cookie": cookie},
        origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
    ).__enter__()  # the form websockets asks for; closed by close()
    ws.send(json.dumps({"op": "subscribe", "channel": "lobby", "presence": "users"}))
    return ws


def sees(ws: ClientConnection, users: set[str]) -> None:
    """Read ``ws``'s lobby presence until it lists exactly ``users``."""
    members: set[str] = set()
    deadline = time.monotonic() + 15
    while members != users:
        assert time.monotonic() < deadline, f"saw {members}, not {users}"
        message = json.loads(ws.recv(15))
        if message.get("channel") != "lobby":
            continue
        if message["type"] == "presence.state":
            members = set(message["members"])
        elif message["type"] == "presence.diff":
            members = (members | set(message["joins"])) - set(message["leaves"])


def receives(ws: ClientConnection, text: str) -> None:
    while True:
        message = json.loads(ws.recv(15))
        if message["type"] == "chat" and message.get("payload") == {"text": text}:
            return


def test_two_uvicorn_workers_with_a_hub_are_one_world(tmp_path: Path) -> None:
    hub = Command(tmp_path, "hub", "hub", "--port", "0")
    port = free_port()
    env = {
        **os.environ,
        **CHAT_ENV,
        "CHAT_HUB": f"ws://127.0.0.1:{hub.port}/",
        "MEGAPRESENCE_HUB_TOKEN": TOKEN,
    }
    with (tmp_path / "uvicorn.log").open("ab") as log:
        workers = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "examples.fastapi_chat:app"),
                *("--port", str(port), "--workers", "2", "--log-level", "warning"),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_port(port, timeout=30)
        eventually(
            lambda: len(hub_listing(hub.port)["interests"]) == 2, what="both workers at the hub"
        )
        ann_cookie, bob_cookie, cat_cookie = (log_in(port, u, "lobby") for u in "abc")
        split = 0  # rounds in which ann and bob were on different workers
        for round_ in range(ROUNDS):
            ann = open_tab(port, ann_cookie, f"a{round_}")
            bob = open_tab(port, bob_cookie, f"b{round_}")
            cat = open_tab(port, cat_cookie, f"c{round_}")
            try:
                for ws in (ann, bob):
                    sees(ws, {"a", "b", "c"})
                bridges = {m["userId"]: m["bridgeId"] for m in hub_listing(hub.port)["members"]}
                split += bridges["a"] != bridges["b"]
                cat.send(
                    json.dumps(
                        {
                            "op": "publish",
                            "channel": "lobby",
                            "type": "chat",
                            "payload": {"text": f"round {round_}"},
                        }
                    )
                )
                for ws in (ann, bob):
                    receives(ws, f"round {round_}")
            finally:
                for ws in (ann, bob, cat):
                    ws.close()
        print(f"ann and bob on different workers in {split} of {ROUNDS} rounds")
        assert split > 0, "every round landed ann and bob on one worker: nothing was tested"
    finally:
        stop_process(workers, signal.SIGINT, 20)
        hub.stop()
