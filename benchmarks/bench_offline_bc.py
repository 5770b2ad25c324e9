"""Offline behavioral cloning on the stand-in's 3DBall: the cloned policy's return against the expert's.

The whole path with the real processes, no environment interaction while learning:

1. record: ``tandem-gateway --heuristic 3DBall --record-demo DIR`` (the stand-in's scripted
   expert, through the real gateway) until the file holds ``--episodes`` episodes;
2. train: ``tandem-trainer configs/imitation/3DBall_offline_bc.yaml --demos DIR`` (no gateway);
3. evaluate: ``tandem-gateway --policy 3DBall=<run>/3DBall.onnx`` on the stand-in, the mean
   return of ``--eval-episodes`` episodes, beside the expert's recorded mean return.

Reported: expert and cloned returns, the ratio, demonstration steps, and the wall time of
each phase. ``make bench BENCH=bench_offline_bc`` writes ``benchmarks/results/bench_offline_bc.md``;
``tests/e2e/test_offline_bc_3dball.py`` runs the same functions with fewer evaluation episodes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.ports import free_base_port
from common.demonstration_file import DemonstrationError, read_meta
from common.logging import configure_logging, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_offline_bc.md"
CONFIG = REPO / "configs" / "imitation" / "3DBall_offline_bc.yaml"

_log = get_logger("benchmarks.offline_bc")


def _exe(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def _stop(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGINT (the gateway closes its files on the way out), then kill if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def record_expert(folder: Path, episodes: int, timeout_s: float = 600.0, num_agents: int | None = None) -> float:
    """Records ``episodes`` expert episodes of 3DBall into ``folder``; returns the seconds it took.

    ``num_agents`` (the stand-in's ``--num-agents``; default its 12) sets how many episodes
    end together: with 10 agents, 20 episodes are exactly two rounds.

    Raises:
        RuntimeError: the gateway exited early or the episodes did not come in time.
    """
    started = time.monotonic()
    cmd = [
        _exe("tandem-gateway"), "--heuristic", "3DBall", "--record-demo", str(folder),
        "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--env-args", "--task", "3dball",
    ]
    if num_agents is not None:
        cmd += ["--num-agents", str(num_agents)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True).start()  # type: ignore[arg-type]
    path = folder / "3DBall.demo"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the recording gateway exited ({process.returncode}): {''.join(errors[-20:])}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{episodes} episodes not recorded within {timeout_s} s")
            try:
                if path.is_file() and read_meta(path).number_episodes >= episodes:
                    break
            except DemonstrationError:
                pass  # caught while the meta record was being rewritten
            time.sleep(0.2)  # polling a file the gateway writes (no event to wait on across processes)
    finally:
        _stop(process)
    return time.monotonic() - started


def train_offline(demos: Path, results_dir: Path, run_id: str, config: Path = CONFIG, extra: tuple[str, ...] = ()) -> tuple[float, Path]:
    """``tandem-trainer CONFIG --demos DEMOS``; returns (seconds, the exported model).

    Raises:
        RuntimeError: the trainer failed (its output in the message).
    """
    started = time.monotonic()
    cmd = [
        _exe("tandem-trainer"), str(config), "--demos", str(demos), "--run-id", run_id,
        "--results-dir", str(results_dir), "--force", *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"tandem-trainer --demos failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.monotonic() - started, results_dir / run_id / "3DBall.onnx"


def evaluate(model: Path, episodes: int, timeout_s: float = 600.0) -> tuple[float, int]:
    """Mean return of the model over at least ``episodes`` episodes of the stand-in's 3DBall
    (``tandem-gateway --policy``, deterministic); returns (mean return, episodes counted)."""
    cmd = [
        _exe("tandem-gateway"), "--policy", f"3DBall={model}", "--summary-interval-s", "1", "--log-json",
        "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--env-args", "--task", "3dball",
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    total, count = 0.0, 0
    deadline = time.monotonic() + timeout_s
    try:
        for line in process.stderr:  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{episodes} evaluation episodes not done within {timeout_s} s")
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "inference summary" and event.get("episodes"):
                total += float(event["mean_reward"]) * int(event["episodes"])
                count += int(event["episodes"])
                if count >= episodes:
                    break
    finally:
        _stop(process)
    if count == 0:
        raise RuntimeError("the evaluating gateway reported no episode")
    return total / count, count


@dataclass
class Outcome:
    expert_return: float
    cloned_return: float
    episodes: int
    demo_steps: int
    eval_episodes: int
    record_s: float
    train_s: float
    eval_s: float


def run_once(workdir: Path, episodes: int, eval_episodes: int) -> Outcome:
    """Record, train offline, evaluate (the three phases above) in ``workdir``."""
    from trainer_server.demonstrations import load_demonstrations

    demos = workdir / "demos"
    record_s = record_expert(demos, episodes)
    loaded = load_demonstrations(demos)
    expert = float(loaded.episode_returns().mean())
    train_s, model = train_offline(demos, workdir / "results", "offline-bc")
    started = time.monotonic()
    cloned, counted = evaluate(model, eval_episodes)
    return Outcome(
        expert_return=expert, cloned_return=cloned, episodes=loaded.num_episodes, demo_steps=loaded.num_steps,
        eval_episodes=counted, record_s=record_s, train_s=train_s, eval_s=time.monotonic() - started,
    )


def render(outcome: Outcome, command: str) -> str:
    o = outcome
    return "\n".join(
        [
            "# Offline behavioral cloning: 3DBall (stand-in), cloned policy against the scripted expert",
            "",
            f"Command: `{command}`  ",
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  ",
            f"Machine: {report.cpu_name()}, {os.cpu_count()} logical CPUs (shared; JAX on CPU)",
            "",
            "Expert demonstrations recorded through the real gateway (`--heuristic 3DBall --record-demo`),",
            f"policy trained with `tandem-trainer {CONFIG.relative_to(REPO)} --demos` (no environment),",
            "its exported ONNX model evaluated by the real gateway (`--policy`, deterministic) on the stand-in.",
            "",
            "| expert episodes | demo steps | expert return | cloned return | cloned / expert | eval episodes | record s | train s | eval s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {o.episodes} | {o.demo_steps} | {o.expert_return:.1f} | {o.cloned_return:.1f} | "
            f"{o.cloned_return / o.expert_return:.2f} | {o.eval_episodes} | {o.record_s:.0f} | {o.train_s:.0f} | {o.eval_s:.0f} |",
            "",
            "Train s is the whole `tandem-trainer --demos` command: start-up, reading the demonstrations, JAX",
            "compilation (about 10 s), the updates, checkpoints and ONNX export.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_offline_bc", description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=12, help="expert episodes to record (12 agents: one round)")
    parser.add_argument("--eval-episodes", type=int, default=24)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    configure_logging()
    with tempfile.TemporaryDirectory(prefix="tandem-offline-bc-") as tmp:
        outcome = run_once(Path(tmp), args.episodes, args.eval_episodes)
    command = "python -m benchmarks.bench_offline_bc " + " ".join(argv or [])
    report.write_results(args.output, render(outcome, command.strip()))
    _log.info("offline bc", **outcome.__dict__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
