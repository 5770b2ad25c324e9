"""Where the trainer's CPU goes per agent step: recorded chunks replayed through its parts in-process.

Why: ``bench_ingestion`` measures the whole trainer process over the wire (gRPC, threads and
all); this one splits the training path's cost into its parts, CPU seconds per 10k agent
steps: decoding and validating each trajectory (as the service's reader threads do),
PPO's per-fragment processing (normalizer, values, GAE), and the updates. A real gateway
with one stand-in instance records the chunks (``bench_ingestion.record``); they are
then replayed ``--rounds`` times after one warm-up round (compilations), fragments fed the
way ``BehaviorRun`` does (batches up to the next update, ``process_trajectories``: packed row
after row in one call, ``ppo_packed``, where fragments come in several padded lengths) and,
side by side in the same run,
the previous batched path (one call per run of fragments of one padded length,
``make_batch_process_fn``, which memory still uses) and one ``process_trajectory`` call per
fragment.

Run: ``python -m benchmarks.bench_trainer_parts [--tasks gridworld,3dball] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import yaml

from benchmarks.bench_ingestion import TASKS, Recording, record
from benchmarks.report import cpu_name, write_results
from common import specs as specs_mod
from common import trajectory as trajectory_mod
from common.logging import configure_logging, get_logger
from tandem.v1 import trainer_pb2
from trainer_server import validation
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning.ppo import PPOLearner

RESULTS = Path(__file__).parent / "results" / "bench_trainer_parts.md"
PARTS = ("decode", "process", "update")
#: how the fragments are fed: label -> description
MODES = {
    "one by one": "a compiled call per fragment (`process_trajectory`)",
    "by padded length": "the previous batched path: a call per run of fragments of one padded length (`make_batch_process_fn`)",
    "as the trainer": "as the trainer feeds them now (`process_trajectories`: a batch's fragments packed row after row, `ppo_packed`, where they come in several padded lengths, else by padded length)",
}

_log = get_logger("benchmarks.bench_trainer_parts")


def _decode(recording: Recording, spec: specs_mod.BehaviorSpec) -> list[list[trajectory_mod.Trajectory]]:
    """Every recorded chunk's trajectories, decoded and validated as the service does."""
    chunks = []
    for raw in recording.chunks:
        chunk = trainer_pb2.ExperienceChunk.FromString(raw)
        trajectories = []
        for i, message in enumerate(chunk.trajectories):
            name = f"chunk: trajectories[{i}]"
            trajectory = trajectory_mod.from_proto(message, spec, name=name)
            validation.check_trajectory_values(trajectory, name, spec.name)
            trajectories.append(replace(trajectory, source="recorded"))
        chunks.append(trajectories)
    return chunks


def _by_padded_length(learner: PPOLearner, batch: list) -> None:
    """The previous ``process_trajectories`` without memory: a call per run of one padded length."""
    for trajectory in batch:
        learner._check(trajectory)
    for group in learner._batch_groups(batch):
        learner._process_group(group)


def _learn(learner: PPOLearner, trajectories: list, mode: str, seconds: dict[str, float]) -> None:
    """One chunk into the learner (``mode`` of ``MODES``), updating when ready; CPU seconds
    added to ``seconds``."""
    index = 0
    while index < len(trajectories):
        if mode != "one by one":  # as BehaviorRun: a batch ends with the fragment that makes the update due
            budget, steps, batch = max(1, learner.steps_until_ready()), 0, []
            while index < len(trajectories) and steps < budget:
                batch.append(trajectories[index])
                steps += len(trajectories[index])
                index += 1
            start = time.process_time()
            if mode == "as the trainer":
                learner.process_trajectories(batch)
            else:
                _by_padded_length(learner, batch)
        else:
            start = time.process_time()
            learner.process_trajectory(trajectories[index])
            index += 1
        seconds["process"] += time.process_time() - start
        if learner.ready():
            start = time.process_time()
            learner.update()
            learner.discard_buffered()
            seconds["update"] += time.process_time() - start


def replay(recording: Recording, rounds: int, mode: str) -> dict[str, float]:
    """CPU seconds per 10k agent steps of each part over ``rounds`` replays after a warm-up one."""
    _, behavior, config = TASKS[recording.task]
    settings = trainer_settings_from_dict(yaml.safe_load(config.read_text())["behaviors"][behavior])
    spec = specs_mod.from_proto(recording.hello.behaviors[0])
    learner = PPOLearner(spec, settings, seed=0)
    seconds = dict.fromkeys(PARTS, 0.0)
    steps = 0
    for round_ in range(rounds + 1):
        if round_ == 1:  # the warm-up round compiled what the replay needs
            seconds, steps = dict.fromkeys(PARTS, 0.0), 0
        start = time.process_time()
        chunks = _decode(recording, spec)
        seconds["decode"] += time.process_time() - start
        for trajectories in chunks:
            _learn(learner, trajectories, mode, seconds)
            steps += sum(len(t) for t in trajectories)
    out = {part: value / steps * 10_000 for part, value in seconds.items()}
    out["total"] = sum(out.values())
    out["steps"] = steps
    out["updates_per_10k"] = learner.update_count / ((rounds + 1) * sum(recording.steps)) * 10_000
    return out


def _render(argv: list[str], rows: list[tuple[str, Recording, dict[str, dict]]]) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# bench_trainer_parts: the trainer's CPU per agent step, by part",
        "",
        f"Command: `{' '.join(['python -m benchmarks.bench_trainer_parts', *argv])}`  ",
        f"Date: {now}  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, CPU only; load average at the end "
        f"{os.getloadavg()[0]:.1f} (CPU seconds compare across loads)",
        "",
        "Recorded chunks of one gateway with one stand-in instance, replayed in-process (no gRPC): CPU "
        "seconds per 10k agent steps of decoding and validating them, of PPO's per-fragment processing "
        "and of the updates, the task's `configs/ppo` settings, the fragments fed in three ways side by side: "
        + "; ".join(f"\"{label}\": {text}" for label, text in MODES.items())
        + ". The compilations of the warm-up round are left out (a shape first seen later counts). The last column divides the recording gateway's CPU (gateway, worker, stand-in) by these parts' "
        "alone: the whole trainer process also spends CPU on gRPC and its threads (bench_ingestion.md).",
        "",
        "| task | fragments fed | decode | process | update | total | updates per 10k steps | "
        "gateway CPU s per 10k (recording) | gateway CPU / these parts' CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for task, rec, results in rows:
        for label, r in results.items():
            lines.append(
                f"| {task} | {label} | {r['decode']:.2f} | {r['process']:.2f} | {r['update']:.2f} | {r['total']:.2f} "
                f"| {r['updates_per_10k']:.1f} | {rec.cpu_per_10k():.2f} | {rec.cpu_per_10k() / r['total']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bench_trainer_parts", description=__doc__.splitlines()[0])
    parser.add_argument("--record-seconds", type=float, default=10.0, help="recording per task")
    parser.add_argument("--rounds", type=int, default=3, help="timed replays of the recording after a warm-up one")
    parser.add_argument("--tasks", default="gridworld,3dball", help="comma-separated tasks: " + ", ".join(TASKS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown tasks {unknown}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rows = []
    for task in tasks:
        recording = record(task, args.record_seconds)
        results = {mode: replay(recording, args.rounds, mode) for mode in MODES}
        _log.info("measured", task=task, **{mode.replace(" ", "_"): r for mode, r in results.items()})
        rows.append((task, recording, results))
    write_results(args.output, _render(argv, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
