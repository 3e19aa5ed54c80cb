"""Run the benchmark suite; write a Markdown table, a JSON file and a PNG chart.

    python benchmarks/run.py                 # the full suite, 3 runs per figure
    python benchmarks/run.py --quick         # smaller, for a first look

Every figure is the median of ``--runs`` runs, with min and max, and every
system runs in the same invocation on the same machine, so the ratios between
them are what to read; the absolute numbers move with the machine's load.
Servers and the load client are separate processes (bench_server.py,
bench_client.py); the core figures run in this process (core_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import core_bench

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PYTHON = sys.executable

FANOUT_SYSTEMS = (
    "megapresence-asyncio",
    "megapresence-uvloop",
    "megapresence-trio",
    "websockets",
    "socketio",
    "bare-asyncio",
    "bare-trio",
)
CHURN_SYSTEMS = (
    "megapresence-asyncio",
    "megapresence-trio",
    "websockets",
    "bare-asyncio",
    "bare-trio",
)
#: Bursts (10 broadcasts per turn of the loop) and the presence storm: against websockets.
BURST_SYSTEMS = ("megapresence-asyncio", "megapresence-uvloop", "megapresence-trio", "websockets")
BURST = 10
BURST_SIZES = (1000, 5000)
#: Every watcher gets the snapshot of all N members first: N² bytes of setup.
STORM_SIZES = (1000,)
#: One process, many sockets: the curve of deliveries/s and memory per N. The file
#: limit bounds N (each side holds N sockets): 50,000 needs a hard limit above it.
SCALE_SYSTEMS = ("megapresence-asyncio", "megapresence-trio", "websockets")
SCALE_SIZES = (10_000, 20_000, 50_000)
#: Compressed broadcasts (permessage-deflate, each system's defaults): against websockets.
DEFLATE_SYSTEMS = ("megapresence-asyncio", "megapresence-trio", "websockets")
#: The encode-once ceiling each system is compared with, by event loop.
CEILING = {
    "megapresence-asyncio": "bare-asyncio",
    "megapresence-uvloop": "bare-asyncio",
    "megapresence-trio": "bare-trio",
    "websockets": "bare-asyncio",
    "socketio": "bare-asyncio",
    "bare-asyncio": "bare-asyncio",
    "bare-trio": "bare-trio",
}


class Process:
    def __init__(self, *args: str) -> None:
        self.popen = subprocess.Popen(
            [PYTHON, *args], cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def expect(self, word: str, timeout: float = 180) -> list[str]:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                raise RuntimeError(f"process ended waiting for {word}")
            parts = line.split()
            if parts and parts[0] == word:
                return parts[1:]
            if parts and parts[0] in ("PARTIAL", "CLOSED"):
                raise RuntimeError(line.strip())
        raise TimeoutError(word)

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()


#: Load processes of a fan-out, each with its share of the N clients: on 2 cores two
#: keep the load side from bounding a TLS run (one process decrypting every record
#: with ``ssl`` did); more cores, more of them, leaving one core to the server.
CLIENT_PROCS = max(2, min(4, (os.cpu_count() or 2) - 1))


def set_client_procs(procs: int) -> None:
    """Every later fan-out's load processes (0 leaves the default)."""
    global CLIENT_PROCS
    CLIENT_PROCS = procs or CLIENT_PROCS


def fanout_once(
    system: str,
    clients: int,
    messages: int,
    burst: int = 1,
    storm: bool = False,
    deflate: bool = False,
    client_procs: int | None = None,
) -> dict[str, float]:
    """One fan-out run: single broadcasts, bursts of ``burst`` per turn, a storm, or
    compressed broadcasts, received by ``client_procs`` load processes (``CLIENT_PROCS`` if None).

    Beside deliveries/s: *server_bound_per_s*, the deliveries one second of server
    CPU makes (what the server would do with a core of its own, whatever bounded the
    run), and the cores the server and the load processes were busy over the run:
    a server near 1.0 bounded it, load processes near their share of the machine
    did."""
    options = ["--burst", str(burst)] + (["--mode", "storm"] if storm else [])
    options += ["--deflate"] if deflate else []
    extra = ["--socketio"] if system == "socketio" else ["--tls"] if "-tls" in system else []
    if storm:
        extra = ["--sentinel", "END-OF-RUN"]
    if deflate:
        extra = ["--deflate"]
    procs = max(1, min(client_procs or CLIENT_PROCS, clients))
    shares = [clients // procs + (k < clients % procs) for k in range(procs)]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            Process(
                "bench_server.py",
                system,
                "--clients",
                str(clients),
                "--messages",
                str(messages),
                *options,
            )
        )
        port, base_rss = server.expect("READY")
        loads = [
            stack.enter_context(
                Process(
                    "bench_client.py",
                    "fanout",
                    "--port",
                    port,
                    "--clients",
                    str(share),
                    "--messages",
                    str(messages),
                    *extra,
                )
            )
            for share in shares
        ]
        for load in loads:
            load.expect("CONNECTED", timeout=600)
        (rss,) = server.expect("CONNECTED", timeout=600)
        time.sleep(0.5)  # let both sides go idle
        server.send("GO")
        (start,) = server.expect("START")
        ends = [load.expect("DONE", timeout=600) for load in loads]
        server.send("STOP")
        (cpu,) = server.expect("CPU")
        deliveries = int(server.expect("DELIVERIES")[0]) if storm else clients * messages
        wire = sum(int(load.expect("BYTES")[0]) for load in loads) / deliveries if deflate else 0
    span = max(float(end) for end, _ in ends) - float(start)
    found = {
        "deliveries_per_s": deliveries / span,
        "cpu_us_per_delivery": float(cpu) / deliveries * 1e6,
        "rss_kib_per_conn": (int(rss) - int(base_rss)) / clients,
        "server_bound_per_s": deliveries / float(cpu),
        "server_cores": float(cpu) / span,
        "client_cores": sum(float(used) for _, used in ends) / span,
    }
    if deflate:
        found["wire_bytes_per_delivery"] = wire
    return found


def fanouts(
    clients: int, systems: Sequence[str], deliveries: int, runs: int
) -> dict[str, dict[str, dict[str, float]] | None]:
    """Single broadcasts to ``clients`` sockets, each system ``runs`` times."""
    messages = max(10, deliveries // clients)
    return {
        system: repeat(
            system,
            runs,
            lambda system=system: fanout_once(system, clients, messages),
        )
        for system in systems
    }


def ops_once(clients: int) -> dict[str, float]:
    with Process(
        "bench_server.py", "megapresence-asyncio", "--clients", str(clients), "--mode", "ops"
    ) as server:
        (port, _) = server.expect("READY")
        with Process(
            "bench_client.py",
            "fanout",
            "--port",
            port,
            "--clients",
            str(clients),
            "--messages",
            "1000000",
            "--timeout",
            "30",
        ) as client:
            client.expect("CONNECTED")
            server.expect("CONNECTED")
            server.send("GO")
            direct, excepting = server.expect("OPS")
    return {"direct_us": float(direct) * 1e6, "except_us": float(excepting) * 1e6}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process, from ``/proc``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def churn_once(system: str, seconds: float) -> dict[str, float]:
    with Process("bench_server.py", system, "--clients", "0", "--mode", "serve") as server:
        (port, _) = server.expect("READY")
        cpu = process_cpu(server.popen.pid)
        with Process(
            "bench_client.py",
            "churn",
            "--port",
            port,
            "--seconds",
            str(seconds),
            "--concurrency",
            "32",
        ) as client:
            (cycles,) = client.expect("CYCLES", timeout=seconds + 60)
        cpu = process_cpu(server.popen.pid) - cpu
    return {"cycles_per_s": int(cycles) / seconds, "cpu_ms": cpu * 1000 / max(int(cycles), 1)}


def hub_once(frames: int, *batch: str) -> dict[str, float]:
    with Process("bench_server.py", "megapresence-hub") as server:
        (port, _) = server.expect("READY")
        with Process(
            "bench_client.py",
            "hub",
            "--port",
            port,
            "--token",
            "bench",
            "--frames",
            str(frames),
            *batch,
        ) as client:
            (rate,) = client.expect("RATE")
    return {"frames_per_s": float(rate)}


def summary(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: the median, min and max over the runs."""
    return {
        key: {
            "median": statistics.median(r[key] for r in runs),
            "min": min(r[key] for r in runs),
            "max": max(r[key] for r in runs),
        }
        for key in runs[0]
    }


def repeat(
    label: str, runs: int, once: Callable[[], dict[str, float]]
) -> dict[str, dict[str, float]] | None:
    results = []
    for attempt in range(runs):
        try:
            results.append(once())
        except (RuntimeError, TimeoutError) as exc:
            print(f"  {label} run {attempt + 1} failed: {exc}", flush=True)
    if not results:
        return None
    found = summary(results)
    shown = ", ".join(f"{k}={v['median']:,.2f}" for k, v in found.items())
    print(f"  {label}: {shown}", flush=True)
    return found


def fmt(stat: dict[str, float] | None, digits: int = 0) -> str:
    if stat is None:
        return "failed"
    return f"{stat['median']:,.{digits}f} ({stat['min']:,.{digits}f}-{stat['max']:,.{digits}f})"


def median_ratio(stat: dict[str, Any], base: dict[str, Any] | None, key: str) -> float:
    """``stat``'s median of ``key`` over ``base``'s (NaN without a base)."""
    return stat[key]["median"] / base[key]["median"] if base else float("nan")


def versus_websockets(
    n: int,
    by_system: dict[str, Any],
    extra: Callable[[dict[str, Any], dict[str, Any] | None], list[str]],
) -> list[str]:
    """Table rows at ``n``: deliveries/s, its ratio to websockets, CPU per delivery,
    then the ``extra`` columns."""
    base = by_system.get("websockets")
    rows = []
    for system, stat in by_system.items():
        if stat is None:
            rows.append(f"| {n} | {system} | failed |")
            continue
        cells = [
            fmt(stat["deliveries_per_s"]),
            f"{median_ratio(stat, base, 'deliveries_per_s'):.2f}",
            fmt(stat["cpu_us_per_delivery"], 2),
            *extra(stat, base),
        ]
        rows.append(f"| {n} | {system} | " + " | ".join(cells) + " |")
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {results['when']} on {results['machine']}; "
        f"{results['runs']} runs per figure: median (min-max).",
        "",
    ]
    lines += [
        "### Fan-out: one 100-byte broadcast to N WebSocket clients",
        "",
        "| N | system | deliveries/s | x websockets | server CPU µs/delivery | "
        "x encode-once ceiling | RSS KiB per idle socket |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, by_system in results["fanout"].items():
        base = by_system.get("websockets")
        for system, stat in by_system.items():
            if stat is None:
                lines.append(f"| {n} | {system} | failed | | | | |")
                continue
            ratio = (
                stat["deliveries_per_s"]["median"] / base["deliveries_per_s"]["median"]
                if base
                else float("nan")
            )
            ceiling = by_system.get(CEILING[system])
            cpu_ratio = (
                stat["cpu_us_per_delivery"]["median"] / ceiling["cpu_us_per_delivery"]["median"]
                if ceiling
                else float("nan")
            )
            lines.append(
                f"| {n} | {system} | {fmt(stat['deliveries_per_s'])} | {ratio:.2f} | "
                f"{fmt(stat['cpu_us_per_delivery'], 2)} | {cpu_ratio:.2f} | "
                f"{stat['rss_kib_per_conn']['median']:.1f} |"
            )
    lines += [
        "",
        "### Direct to one user, and broadcast excepting 10% of sessions (megapresence on asyncio)",
        "",
        "| N | direct µs/call | broadcast with except µs/call |",
        "|---:|---:|---:|",
    ]
    for n, stat in results["ops"].items():
        if stat is None:
            lines.append(f"| {n} | failed | failed |")
        else:
            lines.append(f"| {n} | {fmt(stat['direct_us'], 2)} | {fmt(stat['except_us'], 0)} |")
    for key, title in (
        ("burst", f"### Bursts: {BURST} broadcasts of 100 bytes back to back, to N clients"),
        (
            "storm",
            f"### Presence storm: N watchers of a channel, each turn {BURST // 2} presence diffs "
            f"and {BURST // 2} channel messages",
        ),
    ):
        lines += [
            "",
            title,
            "",
            "| N | system | deliveries/s | x websockets | server CPU µs/delivery |",
            "|---:|---|---:|---:|---:|",
        ]
        for n, by_system in results.get(key, {}).items():
            lines += versus_websockets(n, by_system, lambda stat, base: [])
    lines += [
        "",
        "### Compressed broadcasts: permessage-deflate, varied chat messages of ~330 bytes",
        "",
        "| N | system | deliveries/s | x websockets | server CPU µs/delivery | "
        "x websockets CPU | bytes on the wire per delivery |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, by_system in results.get("deflate", {}).items():
        lines += versus_websockets(
            n,
            by_system,
            lambda stat, base: [
                f"{median_ratio(stat, base, 'cpu_us_per_delivery'):.2f}",
                f"{stat['wire_bytes_per_delivery']['median']:.0f}",
            ],
        )
    if results.get("scale"):
        lines += [
            "",
            "### Scale: one 100-byte broadcast to N sockets on one process",
            "",
            "| N | system | deliveries/s | x websockets | server CPU µs/delivery | "
            "RSS KiB per idle socket |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for n, by_system in results["scale"].items():
            if by_system is None:
                lines.append(f"| {n} | (all) | not run: over the open-file limit | | | |")
                continue
            lines += versus_websockets(
                n, by_system, lambda stat, base: [f"{stat['rss_kib_per_conn']['median']:.1f}"]
            )
    lines += [
        "",
        "### Churn: connect, upgrade, join, close (32 lanes)",
        "",
        "| system | cycles/s | x websockets | server CPU µs/cycle | x websockets CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    base = results["churn"].get("websockets")
    for system, stat in results["churn"].items():
        if stat is None:
            lines.append(f"| {system} | failed | | | |")
            continue
        lines.append(
            f"| {system} | {fmt(stat['cycles_per_s'])} "
            f"| {median_ratio(stat, base, 'cycles_per_s'):.2f} "
            f"| {stat['cpu_ms']['median'] * 1000:,.0f} "
            f"| {median_ratio(stat, base, 'cpu_ms'):.2f} |"
        )
    core = results["core"]
    lines += [
        "",
        "### The machines alone, and the hub over sockets",
        "",
        "| what | per second |",
        "|---|---:|",
        f"| `Presence.handle`, seeded mix of events | {fmt(core['presence_events'])} |",
        f"| `Hub.handle`, BROADCAST routed to one bridge | {fmt(core['hub_frames'])} |",
        f"| `megapresence hub`, BROADCAST frames between two bridges over sockets | "
        f"{fmt(results['hub']['frames_per_s']) if results['hub'] else 'failed'} |",
        f"| the same, both bridges batching (`batch` capability, up to 80 KiB a message) | "
        f"{fmt(results['hub_batched']['frames_per_s']) if results['hub_batched'] else 'failed'} |",
    ]
    return "\n".join(lines) + "\n"


def _bars(ax: Any, by_size: dict[Any, Any], systems: Sequence[str], title: str) -> None:
    sizes = list(by_size)
    shown = [s for s in systems if any((by_size[n] or {}).get(s) for n in sizes)]
    width = 0.8 / max(1, len(shown))
    for index, system in enumerate(shown):
        medians, lows, highs = [], [], []
        for n in sizes:
            stat = (by_size[n] or {}).get(system)
            value = stat["deliveries_per_s"] if stat else {"median": 0, "min": 0, "max": 0}
            medians.append(value["median"] / 1000)
            lows.append((value["median"] - value["min"]) / 1000)
            highs.append((value["max"] - value["median"]) / 1000)
        xs = [i + index * width for i in range(len(sizes))]
        ax.bar(xs, medians, width, yerr=[lows, highs], capsize=2, label=system)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], [f"N = {n}" for n in sizes])
    ax.set_ylabel("thousand deliveries per second (median, min-max)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bursts = results.get("burst") or {}
    fig, axes = plt.subplots(1, 2 if bursts else 1, figsize=(15 if bursts else 10, 5))
    first = axes[0] if bursts else axes
    _bars(
        first, results["fanout"], FANOUT_SYSTEMS, "One 100-byte broadcast, same machine, same run"
    )
    if bursts:
        _bars(axes[1], bursts, BURST_SYSTEMS, f"Bursts of {BURST} broadcasts per turn, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_readme(table: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    readme.write_text(f"{head}{start}\n{table}{end}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument(
        "--deliveries",
        type=int,
        default=150_000,
        help="deliveries per fan-out run (messages = this / N)",
    )
    parser.add_argument("--quick", action="store_true", help="sizes 100,1000 and fewer messages")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
    parser.add_argument(
        "--scale", action="store_true", help="also fan out to 10,000-50,000 sockets (minutes)"
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="load processes per fan-out (default: run.CLIENT_PROCS, 2 on 2 cores)",
    )
    args = parser.parse_args()
    set_client_procs(args.client_procs)
    sizes = [100, 1000] if args.quick else [int(n) for n in args.sizes.split(",")]
    deliveries = 30_000 if args.quick else args.deliveries
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d"),
        "runs": args.runs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "fanout": {},
        "ops": {},
        "churn": {},
    }
    for n in sizes:
        print(f"fan-out N={n}", flush=True)
        results["fanout"][n] = fanouts(n, FANOUT_SYSTEMS, deliveries, args.runs)
        results["ops"][n] = repeat(f"ops N={n}", args.runs, lambda n=n: ops_once(n))
    for key, storm, burst_sizes in (
        ("burst", False, BURST_SIZES),
        ("storm", True, STORM_SIZES),
    ):
        results[key] = {}
        for n in [n for n in burst_sizes if n in sizes] or sizes[-1:]:
            messages = max(BURST, deliveries // n // BURST * BURST)
            print(f"{key} N={n}, {messages} messages", flush=True)
            results[key][n] = {
                system: repeat(
                    system,
                    args.runs,
                    lambda system=system, n=n, messages=messages, storm=storm: fanout_once(
                        system, n, messages, BURST, storm
                    ),
                )
                for system in BURST_SYSTEMS
                if not (storm and system == "megapresence-uvloop")
            }
    results["deflate"] = {}
    for n in [n for n in BURST_SIZES if n in sizes] or sizes[-1:]:
        messages = max(10, deliveries // n)
        print(f"deflate N={n}, {messages} messages", flush=True)
        results["deflate"][n] = {
            system: repeat(
                system,
                args.runs,
                lambda system=system, n=n, messages=messages: fanout_once(
                    system, n, messages, deflate=True
                ),
            )
            for system in DEFLATE_SYSTEMS
        }
    if args.scale:
        # Each process holds N sockets and a few more files.
        most = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 128
        fits = [n for n in SCALE_SIZES if n <= most]
        results["scale"] = {}
        for n in fits + ([most] if len(fits) < len(SCALE_SIZES) else []):
            print(f"scale N={n}", flush=True)
            results["scale"][n] = fanouts(n, SCALE_SYSTEMS, deliveries, args.runs)
        for n in SCALE_SIZES[len(fits) :]:
            print(f"scale N={n}: over the open-file limit, not run", flush=True)
            results["scale"][n] = None
    print("churn", flush=True)
    results["churn"] = {
        system: repeat(system, args.runs, lambda system=system: churn_once(system, 3.0))
        for system in CHURN_SYSTEMS
    }
    print("core and hub", flush=True)
    results["core"] = {
        "presence_events": summary(
            [{"v": core_bench.presence_events_per_second()} for _ in range(args.runs)]
        )["v"],
        "hub_frames": summary(
            [{"v": core_bench.hub_frames_per_second()} for _ in range(args.runs)]
        )["v"],
    }
    results["hub"] = repeat("hub", args.runs, lambda: hub_once(20_000))
    results["hub_batched"] = repeat("hub batched", args.runs, lambda: hub_once(100_000, "--batch"))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    table = markdown(results)
    (RESULTS / "latest.md").write_text(table, encoding="utf-8")
    chart(results, RESULTS / "fanout.png")
    if not args.no_readme:
        update_readme(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
