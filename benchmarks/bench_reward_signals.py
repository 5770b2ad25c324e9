"""PPO with curiosity and with RND against PPO with extrinsic reward only on the sparse ``pyramids`` task.

Why: the exploration bonuses must solve a task where the extrinsic reward alone is too rare
to learn from. The three configs ``configs/ppo/Pyramids_{extrinsic,curiosity,rnd}.yaml``
train side by side in one run with the same agent-step budget and seeds; the stand-in task
is stepped in process (``benchmarks.direct_rollout``) so that only learning is compared.
Reported per config and seed: agent steps until the mean return of the last 100 episodes
first reaches ``--solved`` (0.8: the goal is worth 1), and the final mean return.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax

from benchmarks import report
from benchmarks.direct_rollout import DirectRunner, task_spec
from common.logging import configure_logging, get_logger
from trainer_server.config.loading import load_run_options
from trainer_server.learning.ppo import PPOLearner

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_reward_signals.md"
SIGNALS = ("extrinsic", "curiosity", "rnd")
TASK = "pyramids"
CHUNK = 2048


def train(signal: str, seed: int, budget: int, solved: float) -> dict:
    """One config and seed: steps to ``solved`` (None if never) and the final mean return."""
    options = load_run_options(ROOT / "configs" / "ppo" / f"Pyramids_{signal}.yaml")
    settings = options.behaviors["Pyramids"]
    learner = PPOLearner(task_spec(TASK), settings, seed=seed)
    runner = DirectRunner(TASK, learner, settings.time_horizon, seed=seed)
    steps_to_solve = None
    start = time.perf_counter()
    while runner.steps < budget:
        runner.run(CHUNK)
        if steps_to_solve is None and len(runner.returns) >= 100 and runner.mean_return() >= solved:
            steps_to_solve = runner.steps
    return {
        "signal": signal,
        "seed": seed,
        "steps_to_solve": steps_to_solve,
        "final": runner.mean_return(),
        "episodes": len(runner.returns),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    log = get_logger("bench_reward_signals")
    parser = argparse.ArgumentParser(prog="bench_reward_signals", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=81920, help="agent steps per config and seed (default 81920)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per config (default 2)")
    parser.add_argument("--solved", type=float, default=0.8, help="mean return of 100 episodes that counts as solved")
    parser.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS), help="configs to run (default all)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.budget < CHUNK or args.seeds < 1:
        log.error("--budget must be at least 2048 and --seeds at least 1", budget=args.budget, seeds=args.seeds)
        return 2
    rows = []
    for seed in range(args.seeds):
        for signal in args.signals:
            row = train(signal, seed, args.budget, args.solved)
            rows.append(row)
            log.info("trained", **row)
    device = jax.devices()[0]
    lines = [
        "# bench_reward_signals",
        "",
        "PPO on the stand-in's sparse-reward task `pyramids` (corridor of 15 cells: press the switch at the left "
        "end, then reach the goal at the right end, +1; nothing else is rewarded), with the configs "
        "`configs/ppo/Pyramids_{extrinsic,curiosity,rnd}.yaml`, same budget and seeds, stepped in process "
        "(`benchmarks/direct_rollout.py`, 16 agents).",
        "",
        f"Command: `python -m benchmarks.bench_reward_signals --budget {args.budget} --seeds {args.seeds} "
        f"--solved {args.solved}` (`make bench` runs it with the defaults).",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {report.cpu_name()} "
        f"({os.cpu_count()} cores visible, shared with other jobs), Python {platform.python_version()}, "
        f"JAX {jax.__version__} on {device.platform}.",
        "",
        "| reward signals | seed | agent steps to mean return >= "
        f"{args.solved} (100 episodes) | final mean return (last 100 episodes) | episodes | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        solved = f"{r['steps_to_solve']:,}" if r["steps_to_solve"] is not None else f"not within {args.budget:,}"
        name = "extrinsic" if r["signal"] == "extrinsic" else f"extrinsic + {r['signal']}"
        lines.append(f"| {name} | {r['seed']} | {solved} | {r['final']:.2f} | {r['episodes']} | {r['seconds']:.0f} |")
    report.write_results(args.output, "\n".join(lines) + "\n")
    log.info("wrote", path=str(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
