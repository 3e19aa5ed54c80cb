"""The write path side by side: TLS fan-out, fan-out and idle memory, bursts, churn.

    python benchmarks/write_bench.py --tree before=/tmp/old/src --tree after=src

Each ``--tree NAME=SRC`` is a source tree of megapresence (its ``src``; the shims
are found under ``SRC/shims``); every megapresence system runs once per tree in
turn, run after run, so two versions are measured side by side on the same
machine under the same load. websockets does not depend on the tree and runs once
per repetition. Figures are medians of ``--runs`` (min-max), from ``run.py``'s
harness (``fanout_once``, ``churn_once``): TLS fan-out at N = 1,000 (each system
plain and over TLS), fan-out and RSS per idle socket at N = 5,000, bursts of 10
at N = 5,000 and churn (bare-asyncio and bare-trio too: the floor issue 19 sets),
then issue 19's goals against the run. Prints Markdown tables.

The fan-outs' load is spread over ``--client-procs`` processes (``run.CLIENT_PROCS``
by default). Under TLS, read the *server-bound* figure: deliveries per second of
server CPU (1e6 / server CPU µs per delivery). On 2 cores the server and its load
share the machine, so the measured deliveries/s also carries the load's decryption
cost (and the machine's other work); *server cores* near 1.0 says the server bounded
the run, and only then do the measured ratios say the same as the server-bound ones.

    python benchmarks/write_bench.py --runs 1            # one tree: issue 19's rows
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from run import BURST, churn_once, fanout_once, fmt, set_client_procs, summary

TLS_SYSTEMS = (
    "websockets",
    "websockets-tls",
    "megapresence-asyncio",
    "megapresence-tls",
    "megapresence-trio",
    "megapresence-tls-trio",
)
SYSTEMS = ("websockets", "megapresence-asyncio", "megapresence-trio")
#: The churn's floor: a wsproto server of each event loop and nothing else.
BARE = ("bare-asyncio", "bare-trio")


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
    for system in (*SYSTEMS, *BARE):
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


#: Each TLS system's own plain listener, for *x own plain*.
PLAIN = {
    "websockets-tls": "websockets",
    "megapresence-tls": "megapresence-asyncio",
    "megapresence-tls-trio": "megapresence-trio",
}


def tls_markdown(by_system: dict[str, Any], tls_n: int) -> list[str]:
    """The TLS fan-out, with the server-bound figure (deliveries per second of server
    CPU) beside the measured one, and both against websockets-tls and the own plain."""
    lines = [
        f"TLS fan-out, N = {tls_n}, one 100-byte broadcast per turn",
        "",
        "| system | deliveries/s | server CPU µs/delivery | server-bound deliveries/s | "
        "server cores | client cores | x websockets-tls, server-bound (measured) | "
        "x own plain, server-bound (measured) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = by_system.get("websockets-tls")

    def ratios(stat: dict[str, Any], other: dict[str, Any] | None) -> str:
        if other is None:
            return ""
        bound = stat["server_bound_per_s"]["median"] / other["server_bound_per_s"]["median"]
        measured = stat["deliveries_per_s"]["median"] / other["deliveries_per_s"]["median"]
        return f"{bound:.2f} ({measured:.2f})"

    for label, stat in by_system.items():
        system, _, tree = label.partition(" ")
        plain = by_system.get(f"{PLAIN[system]} {tree}".rstrip()) if system in PLAIN else None
        lines.append(
            f"| {label} | {fmt(stat['deliveries_per_s'])} | "
            f"{fmt(stat['cpu_us_per_delivery'], 2)} | {fmt(stat['server_bound_per_s'])} | "
            f"{stat['server_cores']['median']:.2f} | {stat['client_cores']['median']:.2f} | "
            f"{ratios(stat, base)} | {ratios(stat, plain)} |"
        )
    return [*lines, ""]


def markdown(table: dict[str, dict[str, Any]], tls_n: int, big: int) -> str:
    lines = tls_markdown(table.get("tls", {}), tls_n) if table.get("tls") else []
    for row, key, title in (
        ("fanout", "deliveries_per_s", f"Fan-out, N = {big}: deliveries/s"),
        ("fanout", "cpu_us_per_delivery", f"Fan-out, N = {big}: server CPU µs per delivery"),
        ("fanout", "rss_kib_per_conn", f"RSS KiB per idle socket, N = {big}"),
        ("burst", "deliveries_per_s", f"Bursts of {BURST}, N = {big}: deliveries/s"),
        ("burst", "cpu_us_per_delivery", f"Bursts of {BURST}, N = {big}: server CPU µs/delivery"),
        ("churn", "cycles_per_s", "Churn, 32 lanes: cycles/s"),
        ("churn", "cpu_ms", "Churn: server CPU ms per cycle"),
    ):
        by_system = table.get(row, {})
        if not by_system:
            continue
        base = by_system.get("websockets")
        lines += [f"{title}", "", "| system | median (min-max) | x websockets |", "|---|---:|---:|"]
        for system, stat in by_system.items():
            ratio = stat[key]["median"] / base[key]["median"] if base else float("nan")
            lines.append(f"| {system} | {fmt(stat[key], 2)} | {ratio:.2f} |")
        lines.append("")
    return "\n".join(lines + goals(table))


#: Issue 19's goals: (row, system, what, figure, compared with, at least (or at most)).
GOALS = (
    ("churn", "megapresence-asyncio", "churn cycles/s", "cycles_per_s", "websockets", 1.5),
    ("churn", "megapresence-asyncio", "churn cycles/s", "cycles_per_s", "bare-asyncio", 1.0),
    ("churn", "megapresence-trio", "churn cycles/s", "cycles_per_s", "websockets", 1.2),
    ("churn", "megapresence-trio", "churn cycles/s", "cycles_per_s", "bare-trio", 1.0),
    ("fanout", "megapresence-asyncio", "RSS KiB per idle socket", "rss_kib_per_conn", "", -5.0),
    ("fanout", "megapresence-trio", "RSS KiB per idle socket", "rss_kib_per_conn", "", -7.0),
    (
        "fanout",
        "megapresence-asyncio",
        "fan-out deliveries/s",
        "deliveries_per_s",
        "websockets",
        1.46,
    ),
    ("fanout", "megapresence-trio", "fan-out deliveries/s", "deliveries_per_s", "websockets", 1.97),
    ("burst", "megapresence-asyncio", "bursts deliveries/s", "deliveries_per_s", "websockets", 6.6),
    ("burst", "megapresence-trio", "bursts deliveries/s", "deliveries_per_s", "websockets", 8.4),
    ("tls", "megapresence-tls", "TLS, server-bound", "server_bound_per_s", "websockets-tls", 1.5),
    (
        "tls",
        "megapresence-tls-trio",
        "TLS, server-bound",
        "server_bound_per_s",
        "websockets-tls",
        1.5,
    ),
    ("tls", "megapresence-tls", "TLS, server-bound", "server_bound_per_s", "own plain", 0.5),
    ("tls", "megapresence-tls-trio", "TLS, server-bound", "server_bound_per_s", "own plain", 0.5),
)


def goals(table: dict[str, dict[str, Any]]) -> list[str]:
    """Issue 19's goals against this run, per tree. Churn is also shown as the inverse
    ratio of server CPU per cycle: on a shared machine the steadier figure."""
    lines = [
        "Issue 19's goals (the reconnect storm's are in reconnect_storm.py's table)",
        "",
        "| goal | system | measured | goal | met |",
        "|---|---|---:|---:|---|",
    ]
    for row, system, what, key, versus, goal in GOALS:
        for label, stat in table.get(row, {}).items():
            name, _, tree = label.partition(" ")
            if name != system:
                continue
            other = PLAIN[system] if versus == "own plain" else versus
            if other.startswith("megapresence"):
                other = f"{other} {tree}".rstrip()
            base = table[row].get(other)
            if goal < 0:  # at most
                value = stat[key]["median"]
                met = "yes" if value <= -goal else "no"
                lines.append(f"| {what} | {label} | {value:.2f} | <= {-goal} | {met} |")
                continue
            if base is None:
                continue
            value = stat[key]["median"] / base[key]["median"]
            extra = ""
            if key == "cycles_per_s":
                extra = f" (CPU: {base['cpu_ms']['median'] / stat['cpu_ms']['median']:.2f}x)"
            lines.append(
                f"| {what} x {versus} | {label} | {value:.2f}{extra} | >= {goal} | "
                f"{'yes' if value >= goal else 'no'} |"
            )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="NAME=SRC, repeatable")
    parser.add_argument("--deliveries", type=int, default=150_000)
    parser.add_argument("--tls-clients", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--rows", default="tls,fanout,burst,churn", help="which rows to run")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="load processes per fan-out (default: run.CLIENT_PROCS, 2 on 2 cores)",
    )
    args = parser.parse_args()
    set_client_procs(args.client_procs)
    trees = dict(tree.split("=", 1) for tree in args.tree) or {
        "": str(Path(__file__).resolve().parent.parent / "src")
    }
    trees = {name: str(Path(src).resolve()) for name, src in trees.items()}
    first = next(iter(trees.values()))  # websockets-tls makes its certificate with megapresence
    os.environ["PYTHONPATH"] = f"{first}{os.pathsep}{Path(first) / 'shims'}"
    began = time.monotonic()
    table = rows(
        args.runs, trees, args.deliveries, args.clients, args.tls_clients, set(args.rows.split(","))
    )
    print(markdown(table, args.tls_clients, args.clients))
    print(f"{args.runs} runs, {time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
