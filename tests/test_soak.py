"""A short run of the chaos soak (tests/soak.py), and its checker noticing a divergence."""

from __future__ import annotations

import json
from pathlib import Path

from megapresence_client import PresenceClient

from . import soak


def test_a_short_chaos_soak_converges(tmp_path: Path) -> None:
    # About a minute and a half: the hub, NATS and then servers are killed or stopped in
    # turn while 120 clients churn.
    args = soak.parse(
        [
            *("--duration", "40", "--clients", "120", "--chaos-min", "2", "--chaos-max", "4"),
            *("--settle", "20", "--seed", "11", "--log-dir", str(tmp_path)),
        ]
    )
    report = soak.run(args)
    assert report["converged"], json.dumps(report, indent=2)
    kills = report["kills"]
    assert kills["hub"] >= 1, kills
    assert kills["nats"] >= 1, kills
    assert sum(kills.values()) >= 3, kills
    assert report["sessions_checked"]["hub"] > 0
    assert report["sessions_checked"]["nats"] > 0


def test_the_checker_names_what_diverged(tmp_path: Path) -> None:
    args = soak.parse(["--clients", "2", "--log-dir", str(tmp_path)])
    checker = soak.Soak(args, tmp_path)
    deployment = checker.deployments[0]
    watcher = soak.Watcher(deployment.servers[0], deployment)
    client = PresenceClient("ws://127.0.0.1:1/ws")
    subscription = client.subscribe("c1", "sessions")
    assert subscription.map is not None
    member = {"sessionId": "s1", "userId": "u0", "metadata": None}
    subscription.map.members = {"s1": member, "s9": member}
    subscription.map.in_sync = True
    truth = {"s1": {**member, "metadata": {"v": 1}}, "s2": member}
    [problem] = checker.compare_map(watcher, "c1", subscription, truth)
    assert "missing ['s2'] (1), extra ['s9'] (1), different ['s1'] (1)" in problem
    assert "truth {'sessionId': 's1', 'userId': 'u0', 'metadata': {'v': 1}}" in problem
    subscription.map.in_sync = False
    assert checker.compare_map(watcher, "c1", subscription, truth) == [
        f"{watcher.session} c1: the map is not in sync"
    ]
