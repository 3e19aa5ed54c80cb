"""What deployment choices cost the fan-out path, measured in one run.

    python benchmarks/deploy_bench.py [--clients N] [--runs R]

Same load as ``run.py``'s fan-out (N clients, 150,000 deliveries of a 100-byte
broadcast; the load client in its own process), for four servers in the same
invocation: ``PresenceServer.listen`` (the in-place write path), the same server
mounted as an ASGI app under uvicorn (``server.asgi()``), its own listener with
TLS, and ``listen`` with the ``/metrics`` counters switched off. Prints a
Markdown table of deliveries/s and server CPU per delivery (median, min-max)
and writes it to ``results/deploy.md``. Nothing here is asserted by the tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from run import fanout_once

HERE = Path(__file__).resolve().parent
SYSTEMS = {
    "megapresence-asyncio": "listen (in-place writes)",
    "megapresence-uncounted": "listen, counters off",
    "megapresence-asgi": "ASGI under uvicorn",
    "megapresence-tls": "listen with TLS",
}


def figure(values: list[float], digits: int) -> str:
    low, mid, high = (
        f"{v:,.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )
    return f"{mid} ({low}-{high})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    messages = 150_000 // args.clients
    rows = []
    results: dict[str, list[tuple[float, float]]] = {system: [] for system in SYSTEMS}
    for _ in range(args.runs):  # interleaved, so a busy moment hits every system alike
        for system in SYSTEMS:
            run = fanout_once(system, args.clients, messages)
            results[system].append((run["deliveries_per_s"], run["cpu_us_per_delivery"]))
    base = statistics.median(rate for rate, _ in results["megapresence-asyncio"])
    for system, label in SYSTEMS.items():
        rates = [rate for rate, _ in results[system]]
        cpus = [cpu for _, cpu in results[system]]
        rows.append(
            f"| {label} | {figure(rates, 0)} | {statistics.median(rates) / base:.2f} "
            f"| {figure(cpus, 2)} |"
        )
    table = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
            f"{args.clients} clients, {args.runs} runs: median (min-max).",
            "",
            "| server | deliveries/s | x listen | server CPU µs/delivery |",
            "|---|---:|---:|---:|",
            *rows,
        ]
    )
    print(table)
    (HERE / "results" / "deploy.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
