"""End-to-end time to solved: ``tandem-trainer CONFIG --with-gateway`` on the stand-in's 3DBall.

What ``make run`` does, measured: the real trainer process launches the real gateway
(actor mode), which launches the stand-in through mlagents-envs; PPO (and SAC) train with
Tandem's configs (ML-Agents' 3DBall hyperparameters). "Solved" = a console summary with
mean episode reward >= SOLVED_REWARD (the task's maximum is 100: +0.1 for each of 1000
decisions). Each run stops at the first summary at or above the threshold, or at
``max_steps``. Reported: agent steps and the trainer's own elapsed time (from training
start) at the first summary >= 50, >= 90 and >= 100, plus the wall time of the command.

``make bench BENCH=bench_time_to_solved`` writes ``benchmarks/results/bench_time_to_solved.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from common.logging import configure_logging, get_logger
from benchmarks.ports import free_base_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_time_to_solved.md"
SOLVED_REWARD = 90.0
THRESHOLDS = (50.0, 90.0, 100.0)
CONFIGS = (("PPO", "configs/ppo/3DBall.yaml"), ("SAC", "configs/sac/3DBall.yaml"))

_log = get_logger("benchmarks.time_to_solved")


def _trainer() -> str:
    exe = Path(sys.executable).parent / "tandem-trainer"
    return str(exe) if exe.exists() else "tandem-trainer"


def _summaries(log_text: str) -> list[dict]:
    """The trainer's console summaries (JSON log lines), in order."""
    out = []
    for line in log_text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the gateway shares the stream; a line may be torn
        if isinstance(event, dict) and event.get("component") == "trainer_server.summary" and "mean_reward" in event:
            out.append(event)
    return out


def run_one(config: str, seed: int, time_limit_s: float) -> dict:
    """Trains until the first summary >= max(THRESHOLDS) (or max_steps); returns the milestones."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            _trainer(), str(REPO / config), "--run-id", "bench", "--results-dir", tmp, "--seed", str(seed),
            "--with-gateway", "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--log-json",
        ]
        log_path = Path(tmp) / "log.jsonl"
        started = time.monotonic()
        milestones: dict[float, tuple[int, float]] = {}
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            try:
                while process.poll() is None and time.monotonic() - started < time_limit_s:
                    time.sleep(0.5)
                    for event in _summaries(log_path.read_text(errors="replace")):
                        for threshold in THRESHOLDS:
                            if threshold not in milestones and event["mean_reward"] >= threshold:
                                milestones[threshold] = (int(event["step"]), float(event["elapsed_s"]))
                    if len(milestones) == len(THRESHOLDS):
                        break
                wall = time.monotonic() - started
            finally:
                if process.poll() is None:
                    process.terminate()
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()
        summaries = _summaries(log_path.read_text(errors="replace"))
    return {
        "config": config,
        "seed": seed,
        "milestones": milestones,
        "wall_s": wall,
        "last": summaries[-1] if summaries else None,
    }


def _cell(milestones: dict, threshold: float) -> str:
    if threshold not in milestones:
        return "not reached"
    step, elapsed = milestones[threshold]
    return f"{step:,} steps, {elapsed:.0f} s"


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--time-limit-s", type=float, default=300.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for name, config in CONFIGS:
        for seed in args.seeds:
            _log.info("training", algorithm=name, config=config, seed=seed)
            result = run_one(config, seed, args.time_limit_s)
            _log.info("trained", algorithm=name, seed=seed, milestones=result["milestones"], wall_s=round(result["wall_s"], 1))
            rows.append((name, result))
    lines = [
        "# bench_time_to_solved",
        "",
        "End-to-end training on the stand-in's 3DBall task through the real processes (`tandem-trainer CONFIG "
        "--with-gateway`: trainer + gateway in actor mode + stand-in with 12 agents), Tandem's configs with "
        "ML-Agents' 3DBall hyperparameters. Milestones are the first console summary whose mean episode reward "
        f"reaches the threshold (maximum 100; solved = {SOLVED_REWARD:.0f}); time is the trainer's elapsed time "
        "since training start; wall is the whole command until the last milestone (start-up included).",
        "",
        f"Command: `make bench BENCH=bench_time_to_solved`. Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {os.cpu_count()} CPU cores, CPU only.",
        "",
        "| algorithm | config | seed | mean reward >= 50 | >= 90 (solved) | 100 | wall |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for name, r in rows:
        m = r["milestones"]
        lines.append(
            f"| {name} | `{r['config']}` | {r['seed']} | {_cell(m, 50.0)} | {_cell(m, 90.0)} | {_cell(m, 100.0)} "
            f"| {r['wall_s']:.0f} s |"
        )
    lines.append("")
    report.write_results(args.output, "\n".join(lines))
    solved = all(SOLVED_REWARD in r["milestones"] for _, r in rows)
    return 0 if solved else 1


if __name__ == "__main__":
    sys.exit(main())
