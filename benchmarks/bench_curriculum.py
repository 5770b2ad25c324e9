"""What environment parameters buy: a curriculum on WallJump, randomization on 3DBall.

1. Curriculum: ``tandem-trainer configs/ppo/WallJump.yaml --with-gateway`` (the wall rises
   2, 4, 6, 8, 10 on ML-Agents' completion criteria) against the same config whose
   ``wall_height`` is the final lesson's 10 from the start, with the same budget of agent
   steps. Reported: the agent steps at the first console summary whose mean reward reaches
   ``TARGET_REWARD`` while the wall is at its final height (or "not reached").
2. Randomization: PPO on the stand-in's 3DBall with gravity fixed (9.81) and with gravity
   drawn per episode (``uniform`` sampler), then each exported model acts through
   ``tandem-gateway --policy 3DBall=<model> --env-parameter gravity=<g>`` at gravities
   neither run trained on; reported: the mean episode reward of each (maximum 100).

Both runs of each part go one after the other in one invocation (same machine, same load).
``make bench BENCH=bench_curriculum`` writes ``benchmarks/results/bench_curriculum.md``.
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

import yaml

from benchmarks import report
from benchmarks.bench_time_to_solved import _summaries, _trainer
from benchmarks.ports import free_base_port
from common.logging import configure_logging, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_curriculum.md"
WALLJUMP_CONFIG = REPO / "configs" / "ppo" / "WallJump.yaml"
BALL_CONFIG = REPO / "configs" / "ppo" / "3DBall.yaml"
TARGET_REWARD = 0.6
TRAIN_GRAVITY = (6.0, 16.0)
TEST_GRAVITIES = (3.0, 22.0, 40.0)
LESSON_COMPONENT = "trainer_server.environment_parameters"

_log = get_logger("benchmarks.curriculum")


def _events(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # the gateway shares the stream; a line may be torn
        if isinstance(event, dict):
            out.append(event)
    return out


def train(config: dict, workdir: Path, seed: int, time_limit_s: float, stop=None) -> tuple[Path, list[dict], float]:
    """Runs ``tandem-trainer`` on ``config`` until it ends, ``stop(events)`` says so, or the time limit.

    Returns:
        the run's results folder, its JSON log events, and the wall time.
    """
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        _trainer(), str(path), "--run-id", "bench", "--results-dir", str(workdir / "results"), "--seed", str(seed),
        "--with-gateway", "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--log-json",
    ]
    log_path = workdir / "log.jsonl"
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        try:
            while process.poll() is None and time.monotonic() - started < time_limit_s:
                time.sleep(1.0)
                if stop is not None and stop(_events(log_path)):
                    break
        finally:
            if process.poll() is None:
                process.terminate()  # the final checkpoint and model are written on the way out
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
    return workdir / "results" / "bench", _events(log_path), time.monotonic() - started


def final_lesson_milestone(events: list[dict], final_lesson: int) -> tuple[int, float] | None:
    """(steps, elapsed s) of the first summary >= TARGET_REWARD once the final lesson is on, else None."""
    lesson = 0
    for event in events:
        if event.get("component") == LESSON_COMPONENT and "lesson" in event:
            lesson = int(event["lesson"])
        elif event.get("component") == "trainer_server.summary" and "mean_reward" in event:
            if lesson == final_lesson and event["mean_reward"] >= TARGET_REWARD:
                return int(event["step"]), float(event["elapsed_s"])
    return None


def curriculum_part(budget: int, seed: int, time_limit_s: float) -> list[dict]:
    base = yaml.safe_load(WALLJUMP_CONFIG.read_text())
    base["behaviors"]["WallJump"].update(max_steps=budget, summary_freq=2000, checkpoint_interval=budget)
    lessons = base["environment_parameters"]["wall_height"]["curriculum"]
    final_only = json.loads(json.dumps(base))
    final_only["environment_parameters"] = {"wall_height": lessons[-1]["value"]}
    rows = []
    for name, config, final_lesson in (("curriculum", base, len(lessons) - 1), ("final lesson only", final_only, 0)):
        with tempfile.TemporaryDirectory() as tmp:
            _log.info("training WallJump", variant=name, budget=budget)
            _, events, wall = train(
                config, Path(tmp), seed, time_limit_s, stop=lambda ev, f=final_lesson: final_lesson_milestone(ev, f)
            )
            summaries = _summaries("\n".join(json.dumps(e) for e in events))
            rows.append({
                "variant": name,
                "milestone": final_lesson_milestone(events, final_lesson),
                "last": summaries[-1] if summaries else None,
                "wall_s": wall,
            })
            _log.info("trained WallJump", **{k: v for k, v in rows[-1].items() if k != "last"})
    return rows


def evaluate(model: Path, gravity: float, episodes: int, time_limit_s: float) -> dict:
    """Mean episode reward of ``model`` acting through ``tandem-gateway --policy`` at ``gravity``.

    Stops once the gateway's summaries (every 2 s) counted ``episodes`` episodes, or at the time limit;
    returns its "inference totals" event.
    """
    exe = Path(sys.executable).with_name("tandem-gateway")
    cmd = [
        str(exe), "--listen", "127.0.0.1:0", "--log-json", "--base-port", str(free_base_port()), "--no-graphics",
        "--policy", f"3DBall={model}", "--env-parameter", f"gravity={gravity}", "--summary-interval-s", "2",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "gateway.jsonl"
        with open(log_path, "w") as log:
            process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
            started = time.monotonic()
            while process.poll() is None and time.monotonic() - started < time_limit_s:
                time.sleep(1.0)
                counted = sum(e.get("episodes") or 0 for e in _events(log_path) if e.get("event") == "inference summary")
                if counted >= episodes:
                    break
            process.terminate()
            process.wait(60)
        totals = [e for e in _events(log_path) if e.get("event") == "inference totals"]
    return totals[-1] if totals else {}


def randomization_part(budget: int, seed: int, time_limit_s: float, eval_episodes: int) -> list[dict]:
    base = yaml.safe_load(BALL_CONFIG.read_text())
    base["behaviors"]["3DBall"].update(max_steps=budget, checkpoint_interval=budget)
    randomized = json.loads(json.dumps(base))
    low, high = TRAIN_GRAVITY
    randomized["environment_parameters"] = {
        "gravity": {"sampler_type": "uniform", "sampler_parameters": {"min_value": low, "max_value": high}}
    }
    rows = []
    for name, config in (("gravity 9.81 (fixed)", base), (f"gravity uniform({low:g}, {high:g})", randomized)):
        with tempfile.TemporaryDirectory() as tmp:
            _log.info("training 3DBall", variant=name, budget=budget)
            run, events, wall = train(config, Path(tmp), seed, time_limit_s)
            summaries = _summaries("\n".join(json.dumps(e) for e in events))
            row = {"variant": name, "trained": summaries[-1] if summaries else None, "wall_s": wall, "eval": {}}
            model = run / "3DBall.onnx"
            for gravity in (9.81, *TEST_GRAVITIES):
                row["eval"][gravity] = evaluate(model, gravity, eval_episodes, time_limit_s) if model.is_file() else {}
            _log.info("evaluated 3DBall", variant=name, eval=row["eval"])
            rows.append(row)
    return rows


def _reward(event: dict | None) -> str:
    if not event or event.get("mean_reward") is None:
        return "—"
    return f"{event['mean_reward']:.2f} ({event.get('episodes', '?')} episodes)" if "episodes" in event else f"{event['mean_reward']:.2f}"


def render(walljump: list[dict], ball: list[dict], args) -> str:
    lines = [
        "# bench_curriculum",
        "",
        f"Command: `make bench BENCH=bench_curriculum` (`python -m benchmarks.bench_curriculum "
        f"--walljump-steps {args.walljump_steps} --ball-steps {args.ball_steps} --seed {args.seed}`). "
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Machine: {os.cpu_count()} CPU cores ({report.cpu_name()}), CPU only, shared with other jobs.",
        "",
        "## Curriculum: WallJump (stand-in), final wall height 10",
        "",
        f"`configs/ppo/WallJump.yaml` (lessons 2, 4, 6, 8, 10 on mean reward > 0.6 over 50 episodes) against the "
        f"same config with `wall_height: 10` from the start; budget {args.walljump_steps:,} agent steps each. "
        f"Milestone: the first summary (every 2,000 steps) with mean reward >= {TARGET_REWARD} while the wall is "
        "at 10 (a random policy clears 10 in about one episode in a thousand; each climb costs 0.01).",
        "",
        "| variant | agent steps to mean reward >= 0.6 at the final height | trainer time | last summary | wall |",
        "|---|---:|---:|---|---:|",
    ]
    for r in walljump:
        m = r["milestone"]
        last = r["last"]
        lines.append(
            f"| {r['variant']} | {f'{m[0]:,}' if m else f'not reached in {args.walljump_steps:,}'} "
            f"| {f'{m[1]:.0f} s' if m else '—'} "
            f"| {'step ' + format(int(last['step']), ',') + ': ' + _reward(last) if last else '—'} | {r['wall_s']:.0f} s |"
        )
    gravities = (9.81, *TEST_GRAVITIES)
    lines += [
        "",
        "## Randomization: 3DBall (stand-in), evaluated at unseen gravities",
        "",
        f"PPO with `configs/ppo/3DBall.yaml` for {args.ball_steps:,} agent steps, gravity fixed or drawn per episode "
        f"from uniform{TRAIN_GRAVITY}; each final model then acts deterministically through "
        "`tandem-gateway --policy 3DBall=<model> --env-parameter gravity=<g>` for at least "
        f"{args.eval_episodes} episodes per gravity. Mean episode reward (maximum 100; episodes end at 1000 decisions "
        "or a drop).",
        "",
        "| trained with | last training summary | " + " | ".join(f"gravity {g:g}" for g in gravities) + " |",
        "|---|---|" + "---|" * len(gravities),
    ]
    for r in ball:
        cells = " | ".join(_reward(r["eval"].get(g)) for g in gravities)
        lines.append(f"| {r['variant']} | {_reward(r['trained'])} | {cells} |")
    if ball and all((r["eval"].get(g) or {}).get("mean_reward") == 100.0 for r in ball[:1] for g in TEST_GRAVITIES):
        lines += [
            "",
            "Reading: the model trained at the fixed gravity already holds every ball at the unseen gravities, so on "
            "the stand-in's 3DBall (a level platform keeps the ball whatever pulls it) randomization has nothing to "
            "win; the path itself works: each evaluation's values reach the stand-in through "
            "`--env-parameter`, and training with the sampler draws a gravity per episode.",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walljump-steps", type=int, default=60_000)
    parser.add_argument("--ball-steps", type=int, default=150_000)
    parser.add_argument("--eval-episodes", type=int, default=24, help="episodes per evaluated gravity")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit-s", type=float, default=300.0, help="per training run")
    parser.add_argument("--skip-ball", action="store_true", help="only the curriculum part")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    walljump = curriculum_part(args.walljump_steps, args.seed, args.time_limit_s)
    ball = [] if args.skip_ball else randomization_part(args.ball_steps, args.seed, args.time_limit_s, args.eval_episodes)
    report.write_results(args.output, render(walljump, ball, args))
    curriculum, final_only = walljump
    won = curriculum["milestone"] is not None and (
        final_only["milestone"] is None or curriculum["milestone"][0] < final_only["milestone"][0]
    )
    return 0 if won else 1


if __name__ == "__main__":
    sys.exit(main())
