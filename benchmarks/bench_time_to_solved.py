"""End-to-end time to solved: ``tandem-trainer CONFIG --with-gateway`` on the stand-in's 3DBall.

What ``make run`` does, measured: the real trainer process launches the real gateway
(actor mode), which launches the stand-in through mlagents-envs; PPO (and SAC) train with
Tandem's configs (ML-Agents' 3DBall hyperparameters). "Solved" = a console summary with
mean episode reward >= SOLVED_REWARD (the task's maximum is 100: +0.1 for each of 1000
decisions). Each run stops at the first summary at or above the threshold, or at
``max_steps``. Reported: agent steps and the trainer's own elapsed time (from training
start) at the first summary >= 50, >= 90 and >= 100, plus the wall time of the command.

The coupling part (issue 13): the same training with the trainer slowed down
(``--slow-updates``: a sleep after every update) and with one or two gateways (the second
one a separate ``tandem-gateway`` process, 12 more agents): flow control must keep the
learning per agent step the same, so the milestones in agent steps must match the fast
single-gateway run within seed noise, while the wall time grows.

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


def _trainer_address(log_text: str) -> str | None:
    for line in log_text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "trainer ready":
            return str(event["address"])
    return None


def run_one(config: str, seed: int, time_limit_s: float, gateways: int = 1, slow_updates_s: float = 0.0) -> dict:
    """Trains until the first summary >= max(THRESHOLDS) (or max_steps); returns the milestones.

    Args:
        gateways: gateway processes (the trainer's local one, and more started beside it).
        slow_updates_s: ``--slow-updates`` of the trainer.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            _trainer(), str(REPO / config), "--run-id", "bench", "--results-dir", tmp, "--seed", str(seed),
            "--with-gateway", "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--log-json",
        ]
        if slow_updates_s:
            cmd += ["--slow-updates", str(slow_updates_s)]
        log_path = Path(tmp) / "log.jsonl"
        started = time.monotonic()
        milestones: dict[float, tuple[int, float]] = {}
        extra: list[subprocess.Popen] = []
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
            try:
                while process.poll() is None and time.monotonic() - started < time_limit_s:
                    time.sleep(0.5)
                    if len(extra) < gateways - 1:
                        address = _trainer_address(log_path.read_text(errors="replace"))
                        if address is not None:
                            gateway_cmd = [
                                str(Path(_trainer()).with_name("tandem-gateway")), "--trainer", address,
                                "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()),
                                "--seed", str(seed + 100 * (len(extra) + 1)),
                            ]
                            extra.append(subprocess.Popen(gateway_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    for event in _summaries(log_path.read_text(errors="replace")):
                        for threshold in THRESHOLDS:
                            if threshold not in milestones and (event["mean_reward"] or 0.0) >= threshold:
                                milestones[threshold] = (int(event["step"]), float(event["elapsed_s"]))
                    if len(milestones) == len(THRESHOLDS):
                        break
                wall = time.monotonic() - started
            finally:
                for p in (process, *extra):
                    if p.poll() is None:
                        p.terminate()
                        try:
                            p.wait(30)
                        except subprocess.TimeoutExpired:
                            p.kill()
        summaries = _summaries(log_path.read_text(errors="replace"))
    return {
        "config": config,
        "seed": seed,
        "milestones": milestones,
        "wall_s": wall,
        "last": summaries[-1] if summaries else None,
        "curve": [(int(e["step"]), float(e["mean_reward"])) for e in summaries if e.get("mean_reward") is not None],
        "lags": [float(e["policy_lag"]) for e in summaries if e.get("policy_lag") is not None],
        "gateways": gateways,
        "slow_updates_s": slow_updates_s,
    }


#: (gateways, --slow-updates seconds) per algorithm: the fast single-gateway run first
COUPLING_RUNS = {"PPO": ((1, 0.0), (1, 1.0), (2, 1.0)), "SAC": ((1, 0.0), (1, 0.05), (2, 0.05))}


def _coupling_lines(results: list[tuple[str, dict]]) -> list[str]:
    lines = [
        "## Coupling: a slow trainer and two gateways learn the same per agent step",
        "",
        "Same configs, seed 1. `slow` is the trainer's `--slow-updates` (a sleep after every update: "
        "PPO updates once per `buffer_size`, SAC after every trajectory it takes in). Two gateways = "
        "24 agents. The reward curve is the console's mean reward at each summary (agent steps).",
        "",
        "| algorithm | gateways | slow | >= 50 | >= 90 | 100 | max lag | curve (step: mean reward) | wall |",
        "|---|---:|---:|---|---|---|---:|---|---:|",
    ]
    for name, r in results:
        m = r["milestones"]
        curve = ", ".join(f"{step // 1000}k: {reward:.1f}" for step, reward in r["curve"][:6])
        lag = f"{max(r['lags']):.2f}" if r["lags"] else "-"
        lines.append(
            f"| {name} | {r['gateways']} | {r['slow_updates_s']:g} s | {_cell(m, 50.0)} | {_cell(m, 90.0)} "
            f"| {_cell(m, 100.0)} | {lag} | {curve} | {r['wall_s']:.0f} s |"
        )
    return lines


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
    parser.add_argument("--no-coupling", action="store_true", help="skip the slow-trainer / two-gateway runs")
    args = parser.parse_args(argv)
    rows = []
    for name, config in CONFIGS:
        for seed in args.seeds:
            _log.info("training", algorithm=name, config=config, seed=seed)
            result = run_one(config, seed, args.time_limit_s)
            _log.info("trained", algorithm=name, seed=seed, milestones=result["milestones"], wall_s=round(result["wall_s"], 1))
            rows.append((name, result))
    coupling = []
    if not args.no_coupling:
        for name, config in CONFIGS:
            for gateways, slow in COUPLING_RUNS[name]:
                if (gateways, slow) == (1, 0.0) and 1 in args.seeds:  # the fast run above
                    coupling.append((name, next(r for n, r in rows if n == name and r["seed"] == 1)))
                    continue
                _log.info("training", algorithm=name, gateways=gateways, slow_updates_s=slow)
                result = run_one(config, 1, args.time_limit_s * 3, gateways=gateways, slow_updates_s=slow)
                _log.info("trained", algorithm=name, gateways=gateways, slow_updates_s=slow, milestones=result["milestones"])
                coupling.append((name, result))
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
    if coupling:
        lines += _coupling_lines(coupling) + [""]
    report.write_results(args.output, "\n".join(lines))
    solved = all(SOLVED_REWARD in r["milestones"] for _, r in rows)
    return 0 if solved else 1


if __name__ == "__main__":
    sys.exit(main())
