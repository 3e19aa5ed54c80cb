"""Run every fuzz target for a bounded time; exit non-zero on any crash.

    python fuzz/run.py --seconds 6            # the CI smoke run
    python fuzz/run.py --seconds 3600 presence   # a long run of one target

New inputs go to a temporary corpus (the seeds in corpus/ are read, never
changed); a crash leaves its input in fuzz/crashes/ to be turned into a
regression test (copy it to fuzz/regressions/<target>/).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = (
    "hub_frames",
    "cluster_messages",
    "client_commands",
    "presence",
    "hub",
    "http_request",
    "hub_upgrade",
    "deflate",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6, help="per target")
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(TARGETS)} (default: all)"
    )
    args = parser.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    crashes = HERE / "crashes"
    failed = []
    for target in args.targets or TARGETS:
        with tempfile.TemporaryDirectory() as corpus:
            command = [
                sys.executable,
                str(HERE / f"fuzz_{target}.py"),
                f"-max_total_time={args.seconds}",
                f"-dict={HERE / 'megapresence.dict'}",
                f"-artifact_prefix={crashes}/{target}-",
                "-print_final_stats=1",
                corpus,
                str(HERE / "corpus" / target),
            ]
            crashes.mkdir(exist_ok=True)
            result = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
            stats = [
                line
                for line in result.stderr.splitlines()
                if line.startswith(("stat::number_of_executed_units", "#"))
            ]
            print(f"{target}: exit {result.returncode}; {stats[-1] if stats else ''}", flush=True)
            if result.returncode != 0:
                failed.append(target)
                print(result.stderr[-4000:], file=sys.stderr)
    if failed:
        print(f"crashes in: {', '.join(failed)} (inputs in {crashes})", file=sys.stderr)
        return 1
    if crashes.exists() and not any(crashes.iterdir()):
        crashes.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
