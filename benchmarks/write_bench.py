"""The write path side by side: TLS fan-out, fan-out and idle memory, bursts, churn.

    python benchmarks/write_bench.py --tree before=/tmp/old/src --tree after=src

Each ``--tree NAME=SRC`` is a source tree of megapresence (its ``src``; the shims
are found under ``SRC/shims``); every megapresence system runs once per tree in
turn, run after run, so two versions are measured side by side on the same
machine under the same load. websockets does not depend on the tree and runs once
per repetition. Figures are medians of ``--runs`` (min-max), from ``run.py``'s
harness (``fanout_once``, ``churn_once``): TLS fan-out at N = 1,000 (each system
plain and over TLS), fan-out and RSS per idle socket at N = 5,000, bursts of 10
at N = 5,000 and churn. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run import BURST, churn_once, fanout_once, fmt, summary

TLS_SYSTEMS = (
    "websockets",
    "websockets-tls",
    "megapresence-asyncio",
    "megapresence-tls",
    "megapresence-trio",
    "megapresence-tls-trio",
)
SYSTEMS = ("websockets", "megapresence-asyncio", "megapresence-trio")


def rows(
    runs: int, trees: dict[str, str], deliveries: int, big: int, tls_n: int, only: set[str]
) -> dict[str, dict[str, Any]]:
    """Every (row, system, tree) measured ``runs`` times, interleaved."""
    jobs: list[tuple[str, str, Callable[[], dict[str, float]]]] = []
    for system in TLS_SYSTEMS:
        jobs.append(("tls", system, lambda s=system: fanout_once(s, tls_n, deliveries // tls_n)))
    messages = max(BURST, deliveries // big // BURST * BURST)
    for system in SYSTEMS:
        jobs.append(("fanout", system, lambda s=system: fanout_once(s, big, deliveries // big)))
        jobs.append(("burst", system, lambda s=system: fanout_once(s, big, messages, BURST)))
        jobs.append(("churn", system, lambda s=system: churn_once(s, 3.0)))
    jobs = [job for job in jobs if job[0] in only]
    found: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for attempt in range(runs):
        for row, system, once in jobs:
            for tree, src in trees.items() if system.startswith("megapresence") else [("", "")]:
                if src:
                    os.environ["PYTHONPATH"] = f"{src}{os.pathsep}{Path(src) / 'shims'}"
                label = f"{row} {system} {tree}".rstrip()
                try:
                    result = once()
                except (RuntimeError, TimeoutError) as exc:
                    print(f"  {label} run {attempt + 1} failed: {exc}", flush=True)
                    continue
                print(f"  {label} run {attempt + 1}: {result}", flush=True)
                found.setdefault((row, system, tree), []).append(result)
    table: dict[str, dict[str, Any]] = {}
    for (row, system, tree), results in found.items():
        table.setdefault(row, {})[f"{system} {tree}".rstrip()] = summary(results)
    return table


def markdown(table: dict[str, dict[str, Any]], tls_n: int, big: int) -> str:
    lines = []
    for row, key, title in (
        ("tls", "deliveries_per_s", f"TLS fan-out, N = {tls_n}: deliveries/s"),
        ("tls", "cpu_us_per_delivery", f"TLS fan-out, N = {tls_n}: server CPU µs per delivery"),
        ("fanout", "deliveries_per_s", f"Fan-out, N = {big}: deliveries/s"),
        ("fanout", "cpu_us_per_delivery", f"Fan-out, N = {big}: server CPU µs per delivery"),
        ("fanout", "rss_kib_per_conn", f"RSS KiB per idle socket, N = {big}"),
        ("burst", "deliveries_per_s", f"Bursts of {BURST}, N = {big}: deliveries/s"),
        ("churn", "cycles_per_s", "Churn, 32 lanes: cycles/s"),
        ("churn", "cpu_ms", "Churn: server CPU ms per cycle"),
    ):
        by_system = table.get(row, {})
        base = by_system.get("websockets")
        lines += [f"{title}", "", "| system | median (min-max) | x websockets |", "|---|---:|---:|"]
        for system, stat in by_system.items():
            ratio = stat[key]["median"] / base[key]["median"] if base else float("nan")
            lines.append(f"| {system} | {fmt(stat[key], 2)} | {ratio:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="NAME=SRC, repeatable")
    parser.add_argument("--deliveries", type=int, default=150_000)
    parser.add_argument("--tls-clients", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rows", default="tls,fanout,burst,churn", help="which rows to run")
    args = parser.parse_args()
    trees = dict(tree.split("=", 1) for tree in args.tree) or {
        "": str(Path(__file__).resolve().parent.parent / "src")
    }
    trees = {name: str(Path(src).resolve()) for name, src in trees.items()}
    table = rows(
        args.runs, trees, args.deliveries, args.clients, args.tls_clients, set(args.rows.split(","))
    )
    print(markdown(table, args.tls_clients, args.clients))


if __name__ == "__main__":
    main()
