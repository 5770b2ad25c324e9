"""Reward per agent step: Tandem against ``mlagents-learn`` on the same YAML and the same stand-in.

Why: Tandem's learners should learn at least as much per agent step as ML-Agents' own
trainer with the same hyperparameters (issue 13). Both sides run the real processes one at
a time on the stand-in (``tandem-unity-standin``), which ``mlagents-learn`` launches like a
Unity build (``--env=<script>``, ``--env-args --task gridworld``) and ``tandem-trainer
--with-gateway`` launches through its gateway. Each side is read from its console summaries
(``[INFO] 3DBall. Step: 12000. Time Elapsed: ... Mean Reward: ...``, the same line on both).

Reported per case (algorithm x task): the mean over seeds (min..max) of the summary's mean
reward at each ``summary_freq`` milestone, and the first step whose summary reaches the
case's solved threshold, Tandem beside mlagents-learn. Raw runs are kept in
``benchmarks/results/bench_learning_vs_mlagents.json``: ``--only tandem`` re-measures the
Tandem side and keeps the mlagents-learn runs recorded there (mlagents-learn lives in its
own virtual environment and is never a dependency of the project).

Run: ``python -m benchmarks.bench_learning_vs_mlagents --mlagents-learn /path/to/venv/bin/mlagents-learn``
(``--only tandem`` without it; ``--cases``, ``--seeds``, ``--max-steps CASE=N``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import report
from benchmarks.ports import free_base_port
from common.logging import configure_logging, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_learning_vs_mlagents.md"
RAW = RESULTS.with_suffix(".json")
#: ML-Agents' example configs (the SAC GridWorld one has no copy in configs/)
MLAGENTS_CONFIGS = Path("/work/shared/mlagents-configs")
SIDES = ("tandem", "mlagents")

_log = get_logger("benchmarks.learning_vs_mlagents")
_SUMMARY = re.compile(
    r"\[INFO\] (?P<behavior>[^\s.]+)\. Step: (?P<step>\d+)\. Time Elapsed: (?P<elapsed>[\d.]+) s\. "
    r"(?:Mean Reward: (?P<reward>-?\d+(?:\.\d+)?(?:e-?\d+)?)|No episode was completed)"
)


@dataclass(frozen=True)
class Case:
    """One algorithm on one task.

    Attributes:
        name: e.g. "ppo-3dball".
        config: the trainer YAML both sides read (relative to the repo, or absolute).
        behavior: the behavior name in the YAML and in the console lines.
        task: the stand-in's task (``--task``).
        max_steps: the default run length (the YAML's ``max_steps`` is replaced by it).
        solved: the mean reward that counts as solved.
    """

    name: str
    config: str
    behavior: str
    task: str
    max_steps: int
    solved: float


CASES = {
    c.name: c
    for c in (
        Case("ppo-3dball", "configs/ppo/3DBall.yaml", "3DBall", "3dball", 180_000, 100.0),
        Case("sac-3dball", "configs/sac/3DBall.yaml", "3DBall", "3dball", 72_000, 100.0),
        Case("ppo-gridworld", "configs/ppo/GridWorld.yaml", "GridWorld", "gridworld", 100_000, 0.9),
        Case("sac-gridworld", str(MLAGENTS_CONFIGS / "sac" / "GridWorld.yaml"), "GridWorld", "gridworld", 60_000, 0.9),
        # SAC with memory (an LSTM) on the memory task: only a policy that remembers the cue beats 0
        Case("sac-hallway-memory", "configs/sac/Hallway.yaml", "Hallway", "hallway", 6_000, 0.9),
    )
}


# -- parsing and aggregation (no process needed: tests/benchmarks cover these) -------------
def parse_console(text: str, behavior: str) -> list[tuple[int, float | None]]:
    """The ``(step, mean reward)`` summaries of ``behavior`` in a console log, in order
    (reward None for "No episode was completed since last summary")."""
    out = []
    for match in _SUMMARY.finditer(text):
        if match["behavior"] == behavior:
            reward = match["reward"]
            out.append((int(match["step"]), None if reward is None else float(reward)))
    return out


def reward_at(summaries: list[tuple[int, float | None]], milestone: int, spacing: int) -> float | None:
    """The reward of the summary nearest to ``milestone`` within ``spacing / 2`` (Tandem's
    summaries fall a few steps after each multiple of ``summary_freq``), else None."""
    best = None
    for step, reward in summaries:
        distance = abs(step - milestone)
        if distance <= spacing / 2 and reward is not None and (best is None or distance < best[0]):
            best = (distance, reward)
    return None if best is None else best[1]


def first_solved(summaries: list[tuple[int, float | None]], threshold: float) -> int | None:
    """The first step whose summary's mean reward is at least ``threshold``."""
    for step, reward in summaries:
        if reward is not None and reward >= threshold:
            return step
    return None


def spread(values: list[float | None], digits: int) -> str:
    """``mean (min..max)`` of the known values, with how many are missing."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    text = f"{sum(known) / len(known):,.{digits}f} ({min(known):,.{digits}f}..{max(known):,.{digits}f})"
    missing = len(values) - len(known)
    return text + (f", {missing} n/a" if missing else "")


def merge_runs(previous: list[dict], new: list[dict]) -> list[dict]:
    """``previous`` runs with those of the same (side, case, seed) replaced by ``new``'s."""
    replaced = {(r["side"], r["case"], r["seed"]) for r in new}
    return [r for r in previous if (r["side"], r["case"], r["seed"]) not in replaced] + new


def case_table(case: Case, runs: list[dict], summary_freq: int) -> list[str]:
    """Markdown lines for one case: reward at each milestone and the first solved step, per side."""
    by_side = {side: sorted((r for r in runs if r["side"] == side), key=lambda r: r["seed"]) for side in SIDES}
    last = max((s for r in runs for s, _ in r["summaries"]), default=0)
    digits = 1 if case.solved >= 10 else 3
    lines = [
        f"### {case.name} (`{case.config}`, max_steps {runs[0]['max_steps']:,}, solved = mean reward >= {case.solved:g})",
        "",
        "| agent steps | " + " | ".join(f"{side} (seeds {','.join(str(r['seed']) for r in by_side[side]) or '-'})" for side in SIDES) + " |",
        "|---:|" + "---|" * len(SIDES),
    ]
    for milestone in range(summary_freq, last + summary_freq // 2 + 1, summary_freq):
        cells = [spread([reward_at(r["summaries"], milestone, summary_freq) for r in by_side[side]], digits) for side in SIDES]
        lines.append(f"| {milestone:,} | " + " | ".join(cells) + " |")
    solved_cells = []
    for side in SIDES:
        steps = [first_solved(r["summaries"], case.solved) for r in by_side[side]]
        per_seed = ", ".join("not reached" if s is None else f"{s:,}" for s in steps) or "-"
        solved_cells.append(f"{spread([float(s) if s is not None else None for s in steps], 0)} [{per_seed}]")
    lines.append("| **first step solved** | " + " | ".join(solved_cells) + " |")
    lines.append("")
    return lines


def render(runs: list[dict]) -> str:
    """The results file: one table per case present in ``runs``, and the commands that made them."""
    commands = sorted({(r.get("date", "?"), r.get("command", "?"), r["side"]) for r in runs})
    made = {}
    for date, command, side in commands:
        made.setdefault(command, [date, date, set()])
        made[command][1] = date
        made[command][2].add(side)
    lines = [
        "# bench_learning_vs_mlagents",
        "",
        "Reward per agent step, Tandem (`tandem-trainer CONFIG --with-gateway`) against `mlagents-learn` 1.1.0 "
        "(`--env=<tandem-unity-standin>`), the same YAML (only `max_steps` shortened) on the same stand-in task. "
        "One command runs its runs one at a time; series from separate commands may have overlapped (their times "
        "below): that changes `mlagents-learn`'s wall time only (its environment waits for each update), Tandem's "
        "policy lag possibly. Cells: mean over seeds of the console summary's mean episode reward at each "
        "`summary_freq` milestone (min..max); last row: first summary step at or above the solved threshold, mean "
        "(min..max) [per seed].",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({report.cpu_name()}), CPU only, shared with other jobs. Commands "
        "(runs from several commands are merged by side, case and seed):",
        "",
        *(f"- `{command}` ({', '.join(sorted(sides))}; {first} to {last})" for command, (first, last, sides) in made.items()),
        "",
    ]
    for case in CASES.values():
        case_runs = [r for r in runs if r["case"] == case.name]
        if case_runs:
            lines += case_table(case, case_runs, case_runs[0]["summary_freq"])
    return "\n".join(lines)


# -- running one side ------------------------------------------------------------------------
def _config_path(case: Case) -> Path:
    path = Path(case.config)
    return path if path.is_absolute() else REPO / path


def write_config(case: Case, max_steps: int, folder: Path, side: str = "tandem") -> tuple[Path, int]:
    """The case's YAML with ``max_steps`` replaced (and ``checkpoint_interval`` past it),
    written to ``folder``; returns it and ``summary_freq``. For ``mlagents-learn`` the
    Tandem-only ``tandem:`` section is removed (it refuses keys it does not know)."""
    data = yaml.safe_load(_config_path(case).read_text())
    behavior = data["behaviors"][case.behavior]
    if side == "mlagents":
        behavior.pop("tandem", None)
    behavior["max_steps"] = max_steps
    # no checkpoint within the run: mlagents-learn 1.1.0 exports ONNX at each checkpoint,
    # which the newer torch of its venv may fail at (it would end the run early)
    behavior["checkpoint_interval"] = max_steps + 1
    path = folder / f"{case.name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, int(behavior.get("summary_freq", 50000))


def _standin() -> str:
    exe = Path(sys.executable).parent / "tandem-unity-standin"
    return str(exe) if exe.exists() else "tandem-unity-standin"


def _trainer() -> str:
    exe = Path(sys.executable).parent / "tandem-trainer"
    return str(exe) if exe.exists() else "tandem-trainer"


def command_for(side: str, case: Case, config: Path, seed: int, results: Path, mlagents_learn: str | None) -> list[str]:
    """The command line of one run (the stand-in's task through ``--env-args``)."""
    run_id = f"{case.name}-s{seed}"
    port = str(free_base_port())
    env_args = ["--env-args", "--task", case.task]
    if side == "tandem":
        return [
            _trainer(), str(config), "--with-gateway", "--seed", str(seed), "--run-id", run_id, "--force",
            "--results-dir", str(results), "--base-port", port, "--listen", "127.0.0.1:0", *env_args,
        ]
    if not mlagents_learn:
        raise ValueError("--mlagents-learn is required to run the mlagents side")
    return [
        mlagents_learn, str(config), f"--env={_standin()}", "--seed", str(seed), "--run-id", run_id, "--force",
        "--results-dir", str(results), "--base-port", port, "--no-graphics", *env_args,
    ]


def run_one(
    side: str, case: Case, max_steps: int, seed: int, mlagents_learn: str | None, timeout_s: float, logs: Path | None = None
) -> dict:
    """One training run to ``max_steps``; its console summaries and wall time (the whole
    console kept as ``logs/<side>-<case>-s<seed>.log`` when ``logs`` is given)."""
    with tempfile.TemporaryDirectory(prefix="bench_lvm_") as tmp:
        folder = Path(tmp)
        config, summary_freq = write_config(case, max_steps, folder, side)
        cmd = command_for(side, case, config, seed, folder / "results", mlagents_learn)
        started = datetime.datetime.now(datetime.UTC)
        try:
            done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s, check=False)
            text, rc = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            text, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""), None
        wall = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{side}-{case.name}-s{seed}.log").write_text(text)
    summaries = parse_console(text, case.behavior)
    if not summaries:
        _log.warning("no summary parsed", side=side, case=case.name, seed=seed, rc=rc, tail=text[-2000:])
    return {
        "side": side, "case": case.name, "seed": seed, "max_steps": max_steps, "summary_freq": summary_freq,
        "rc": rc, "wall_s": round(wall, 1), "summaries": summaries,
    }


def _max_steps(pairs: list[str]) -> dict[str, int]:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in CASES or not value.isdigit():
            raise SystemExit(f"--max-steps: expected CASE=N with CASE in {sorted(CASES)}, got {pair!r}")
        out[name] = int(value)
    return out


def _save(path: Path, runs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1))


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlagents-learn", help="path of mlagents-learn 1.1.0 (its own virtual environment)")
    parser.add_argument("--only", choices=("tandem", "mlagents", "both"), default="both")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-steps", nargs="*", default=[], metavar="CASE=N", help="shorter or longer runs")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="per run")
    parser.add_argument("--raw", type=Path, default=RAW, help="runs recorded so far (kept and merged)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--logs-dir", type=Path, help="keep each run's console output there")
    parser.add_argument("--merge", type=Path, nargs="*", default=[], help="more raw files whose runs join --raw's first")
    parser.add_argument("--render-only", action="store_true", help="train nothing: write the table from the raw runs")
    args = parser.parse_args(argv)
    sides = SIDES if args.only == "both" else (args.only,)
    if "mlagents" in sides and not args.mlagents_learn and not args.render_only:
        parser.error("--mlagents-learn PATH is required unless --only tandem")
    lengths = _max_steps(args.max_steps)
    command = "python -m benchmarks.bench_learning_vs_mlagents " + " ".join(argv if argv is not None else sys.argv[1:])
    previous: list[dict[str, Any]] = json.loads(args.raw.read_text()) if args.raw.is_file() else []
    for extra in args.merge:
        previous = merge_runs(previous, json.loads(extra.read_text()))
    new: list[dict[str, Any]] = []
    for name in [] if args.render_only else args.cases:
        case = CASES[name]
        if not _config_path(case).is_file():
            _log.warning("config not found: case skipped", case=name, config=case.config)
            continue
        for seed in args.seeds:
            for side in sides:  # one at a time: the machine is small
                _log.info("training", side=side, case=name, seed=seed)
                run = run_one(
                    side, case, lengths.get(name, case.max_steps), seed, args.mlagents_learn, args.timeout_s, args.logs_dir
                )
                _log.info("trained", side=side, case=name, seed=seed, summaries=len(run["summaries"]), wall_s=run["wall_s"])
                new.append({**run, "command": command, "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"})
                _save(args.raw, merge_runs(previous, new))  # after every run: an interrupted series keeps its runs
    runs = merge_runs(previous, new)
    _save(args.raw, runs)
    report.write_results(args.output, render(runs))
    return 0 if all(r["summaries"] for r in new) else 1


if __name__ == "__main__":
    sys.exit(main())
