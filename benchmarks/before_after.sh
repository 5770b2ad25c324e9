#!/usr/bin/env bash
# Before/after benchmark runs, side by side on the same machine at the same time.
#
# BASE is another checkout of this repository (for example `git worktree add ../base <rev>`,
# then `make setup` there); this checkout is "after". Every benchmark runs alternately in
# both checkouts (base, after, base, after, ... ROUNDS times each), each with its own .venv,
# so that both see the same load. Each run's results file is kept as
# OUT/<bench>/<base|after>-<round>.md for the ratios to be read from.
#
# Usage: benchmarks/before_after.sh BASE OUT ROUNDS BENCH [BENCH...]
#   e.g. benchmarks/before_after.sh ../base /tmp/ba 2 bench_ppo_update bench_sac_update bench_gateway
set -euo pipefail
if [ "$#" -lt 4 ]; then
  echo "usage: $0 BASE_CHECKOUT OUT_DIR ROUNDS BENCH [BENCH...]" >&2
  exit 2
fi
after="$(cd "$(dirname "$0")/.." && pwd)"
base="$(cd "$1" && pwd)"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
rounds="$3"
shift 3
for checkout in "$base" "$after"; do
  if [ ! -x "$checkout/.venv/bin/python" ]; then
    echo "$checkout has no .venv: run 'make setup' there first" >&2
    exit 2
  fi
done
for bench in "$@"; do
  case "$bench" in
    bench_gateway) flag=--out ;;
    *) flag=--output ;;
  esac
  mkdir -p "$out/$bench"
  for round in $(seq 1 "$rounds"); do
    for side in base after; do
      if [ "$side" = base ]; then checkout="$base"; else checkout="$after"; fi
      echo "== $bench round $round: $side ($checkout)" >&2
      (cd "$checkout" && .venv/bin/python -m "benchmarks.$bench" "$flag" "$out/$bench/$side-$round.md")
    done
  done
done
