#!/bin/sh
# Every figure issue 19 asks for, side by side in one invocation: churn (with server
# CPU per cycle), RSS per idle socket, fan-out and bursts at N = 5,000, TLS fan-out
# at N = 1,000 (every system plain and over TLS), then the reconnect storm of 10,000
# (restart and drop; megapresence-asyncio, -trio, websockets). One repetition by
# default: about 10 minutes on a quiet 2-core machine, up to 20 on a loaded one.
#
#   benchmarks/issue19.sh                  # RUNS=3 for medians of 3 (about 3x as long)
#   benchmarks/issue19.sh --socketio       # also socketio in the storm (+5-10 minutes)
#
# Arguments go to reconnect_storm.py (a later --clients overrides 10000), WRITE_ARGS
# to write_bench.py; a small check of the whole (about 2 minutes):
#   WRITE_ARGS="--tls-clients 300 --clients 300 --deliveries 30000" \
#       benchmarks/issue19.sh --clients 300
# Writes results/issue19.md (the tables) and results/issue19.log (every run). PYTHON
# picks the interpreter (default: the project's .venv); the hard open-file limit must
# allow 10,300 (ulimit -Hn).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
RUNS=${RUNS:-1}
export PYTHONPATH="$ROOT/src:$ROOT/src/shims${PYTHONPATH:+:$PYTHONPATH}"
ulimit -n "$(ulimit -H -n)"
OUT="$HERE/results/issue19.md"
LOG="$HERE/results/issue19.log"
cd "$HERE"
start=$(date +%s)
{
    echo "# Issue 19, $(date -u +%Y-%m-%d), $(nproc) cores, $RUNS run(s) per figure"
    echo
    # shellcheck disable=SC2086  # WRITE_ARGS is a list of options
    "$PYTHON" write_bench.py --runs "$RUNS" ${WRITE_ARGS:-}
    echo
    echo "Reconnect storm"
    "$PYTHON" reconnect_storm.py --clients 10000 --runs "$RUNS" "$@"
    echo
    echo "Took $(( $(date +%s) - start )) s in all."
} 2>&1 | tee "$LOG"
# The log keeps every run's line; the tables are what the file keeps.
grep -v -e '^  ' -e '^restart ' -e '^drop ' -e '^presence\.' "$LOG" >"$OUT"
echo "wrote $OUT"
