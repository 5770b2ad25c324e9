"""PPO update and SAC gradient step, side by side with ML-Agents' own update code.

Why: issue 18's speed goals compare our jit-compiled updates with ML-Agents 1.1.0 (torch on
the CPU) at the same buffer, batch, epochs and network: PPO at 3DBall's config (buffer
12000, batch 64, 3 epochs, 2x128, ``normalize: true``) and at ML-Agents' defaults (buffer
10240, batch 1024, 3 epochs, 2x128), SAC gradient steps at batch 64 / 2x64 and batch 256 /
2x256. The machine is shared, so both run in this one process tree, interleaved per case
(ours, ML-Agents', ours again), and the table gives medians and ratios of the two.

Ours: ``PPOLearner.update`` (buffer full, refilled between updates, refill not timed) and
``SACLearner.update`` over ``--sac-steps`` pending gradient steps (replay sampling,
host-to-device copy, the compiled scan). ML-Agents': ``benchmarks/mlagents_update_worker.py``
run by ML-Agents' interpreter (``--mlagents-python``, default ``$MLAGENTS_PYTHON`` or
``/work/mlagents-venv/bin/python``) in a subprocess; this bench installs nothing, and skips
with a message (exit 0, results left as they are) when that interpreter cannot import
``mlagents``. Both report wall and process CPU seconds: CPU seconds compare the work done
whatever else the cores run; wall seconds are what a user waits.

``make bench BENCH=bench_vs_mlagents`` writes ``benchmarks/results/bench_vs_mlagents.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from benchmarks import report
from benchmarks.bench_ppo_update import SPEC as PPO_SPEC
from benchmarks.bench_ppo_update import _fill as fill_ppo
from benchmarks.bench_sac_update import SPEC as SAC_SPEC
from benchmarks.bench_sac_update import _fragment as sac_fragment
from common.logging import configure_logging, get_logger
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning.ppo import PPOLearner
from trainer_server.learning.sac import SACLearner

RESULTS = Path(__file__).parent / "results" / "bench_vs_mlagents.md"
WORKER = Path(__file__).parent / "mlagents_update_worker.py"
DEFAULT_MLAGENTS_PYTHON = "/work/mlagents-venv/bin/python"
#: transitions in the SAC replay buffer (both sides) while gradient steps are timed
SAC_REPLAY = 10_000

log = get_logger("bench_vs_mlagents")


@dataclass(frozen=True)
class Case:
    """One side-by-side configuration (2 hidden layers on both sides)."""

    label: str
    algorithm: str  # "ppo" | "sac"
    batch_size: int
    hidden_units: int
    normalize: bool
    buffer_size: int = 0  # PPO's buffer (SAC's replay capacity is 50000 on both sides)
    num_epoch: int = 3

    def worker_args(self, repeats: int, sac_steps: int) -> dict:
        return {
            "algorithm": self.algorithm, "batch_size": self.batch_size, "hidden_units": self.hidden_units,
            "num_layers": 2, "normalize": self.normalize, "num_epoch": self.num_epoch,
            "buffer_size": self.buffer_size or 50_000, "replay_steps": SAC_REPLAY, "repeats": repeats,
            "steps": sac_steps,
        }


CASES = (
    Case("PPO, 3DBall's config (buffer 12000, batch 64, 3 epochs, 2x128, normalize)", "ppo", 64, 128, True, 12000),
    Case("PPO, ML-Agents' defaults (buffer 10240, batch 1024, 3 epochs, 2x128)", "ppo", 1024, 128, False, 10240),
    Case("SAC gradient step, batch 64, 2x64, normalize", "sac", 64, 64, True),
    Case("SAC gradient step, batch 256, 2x256, normalize", "sac", 256, 256, True),
)


# -- ours ------------------------------------------------------------------------------------------
class _Timer:
    """Wall and process CPU seconds of repeated calls."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time(self, fn) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)


class OursPPO:
    """A PPO learner at the case's sizes, compiled and warm; ``run`` times one full update."""

    def __init__(self, case: Case) -> None:
        settings = trainer_settings_from_dict(
            {
                "trainer_type": "ppo",
                "hyperparameters": {"batch_size": case.batch_size, "buffer_size": case.buffer_size, "num_epoch": case.num_epoch},
                "network_settings": {"hidden_units": case.hidden_units, "num_layers": 2, "normalize": case.normalize},
                "time_horizon": 1000,
            }
        )
        self.learner = PPOLearner(PPO_SPEC, settings, seed=0)
        self.rng = np.random.default_rng(0)
        self._refill()
        self.learner.update()  # compiles

    def _refill(self) -> None:
        self.learner.discard_buffered()
        fill_ppo(self.learner, self.rng)

    def run(self, timer: _Timer, repeats: int) -> None:
        for _ in range(repeats):
            self._refill()
            timer.time(lambda: jax.block_until_ready(self.learner.update()))
        if self.learner.trace_counts["update"] != 1:
            raise RuntimeError("the PPO update recompiled")


class OursSAC:
    """A SAC learner with 10k replayed transitions; ``run`` times ``steps`` gradient steps a repeat."""

    def __init__(self, case: Case, steps: int) -> None:
        settings = trainer_settings_from_dict(
            {
                "trainer_type": "sac",
                "hyperparameters": {"batch_size": case.batch_size, "buffer_size": 50000, "steps_per_update": 1.0,
                                    "buffer_init_steps": 0},
                "network_settings": {"hidden_units": case.hidden_units, "num_layers": 2, "normalize": case.normalize},
            }
        )
        self.steps = steps
        self.learner = SACLearner(SAC_SPEC, settings, seed=0)
        self.rng = np.random.default_rng(0)
        for _ in range(SAC_REPLAY // 1000):
            self.learner.process_trajectory(sac_fragment(self.rng, 1000))
        self.learner.update_steps = self.learner.pending_updates() + self.learner.update_steps  # none due yet
        self._feed()
        self.learner.update()  # compiles

    def _feed(self) -> None:
        # ``steps`` more agent steps make ``steps`` gradient steps due (steps_per_update 1)
        self.learner.process_trajectory(sac_fragment(self.rng, self.steps))

    def _update(self) -> None:
        self.learner.update()
        jax.block_until_ready(self.learner._state)

    def run(self, timer: _Timer, repeats: int) -> None:
        for _ in range(repeats):
            self._feed()
            timer.time(self._update)
        if self.learner.trace_counts["update"] != 1:
            raise RuntimeError("the SAC update recompiled")


# -- ML-Agents' ------------------------------------------------------------------------------------
def mlagents_available(python: str) -> str | None:
    """None when ``python`` imports mlagents and torch, else why not (the skip message)."""
    if not Path(python).exists():
        return f"no ML-Agents interpreter at {python} (--mlagents-python or $MLAGENTS_PYTHON)"
    probe = subprocess.run([python, "-c", "import mlagents.trainers, torch"], capture_output=True, text=True)
    if probe.returncode:
        return f"{python} cannot import mlagents and torch: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def run_mlagents(python: str, case: Case, repeats: int, sac_steps: int) -> dict:
    """ML-Agents' timings of ``repeats`` updates (PPO) or ``sac_steps``-step rounds (SAC)."""
    args = json.dumps(case.worker_args(repeats, sac_steps))
    done = subprocess.run([python, str(WORKER), args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"ML-Agents worker failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the run ---------------------------------------------------------------------------------------
def measure(case: Case, python: str, repeats: int, sac_steps: int) -> dict:
    """Medians of ours (timed before and after ML-Agents') and ML-Agents', per update or step."""
    load_before = os.getloadavg()[0]
    ours = OursPPO(case) if case.algorithm == "ppo" else OursSAC(case, sac_steps)
    timer = _Timer()
    ours.run(timer, repeats)
    theirs = run_mlagents(python, case, repeats, sac_steps)
    ours.run(timer, repeats)
    per = 1 if case.algorithm == "ppo" else sac_steps  # per update, or per gradient step
    row = {
        "case": case.label,
        "unit": "update" if case.algorithm == "ppo" else "gradient step",
        "ours_wall": statistics.median(timer.wall) / per,
        "ours_wall_min": min(timer.wall) / per,
        "ours_cpu": statistics.median(timer.cpu) / per,
        "theirs_wall": statistics.median(theirs["seconds"]) / per,
        "theirs_wall_min": min(theirs["seconds"]) / per,
        "theirs_cpu": statistics.median(theirs["cpu_seconds"]) / per,
        "torch_threads": theirs["torch_threads"],
        "torch": theirs["torch"],
        "load": (load_before, os.getloadavg()[0]),
    }
    row["ratio_wall"] = row["theirs_wall"] / row["ours_wall"]
    row["ratio_cpu"] = row["theirs_cpu"] / row["ours_cpu"]
    row["ratio_min"] = row["theirs_wall_min"] / row["ours_wall_min"]
    return row


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 0.1 else f"{1e3 * seconds:.2f} ms"


def write(rows: list[dict], args: argparse.Namespace, command: str) -> None:
    device = jax.devices()[0]
    torch_info = f"torch {rows[0]['torch']} ({rows[0]['torch_threads']} thread, ML-Agents' own choice here)"
    lines = [
        "# bench_vs_mlagents: our updates and ML-Agents 1.1.0's, side by side",
        "",
        "Same sizes on both sides: 8 vector observations, 2 continuous actions, 2 hidden layers, "
        "ML-Agents' defaults elsewhere. PPO: one whole update (advantage normalization, epochs x "
        "shuffled minibatches, Adam steps). SAC: one gradient step (replay sampling from 10k "
        f"transitions, reward evaluation, the step itself; {args.sac_steps} steps per timed round). "
        "ML-Agents' side is its own `TorchPPOOptimizer` / `TorchSACOptimizer` and `AgentBuffer` "
        "(benchmarks/mlagents_update_worker.py) in a subprocess; per case ours runs before and after it.",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Machine: {report.cpu_name()}, {os.cpu_count()} cores visible, shared with other agents' work while "
        f"measured (load average per case below); Python {platform.python_version()}, JAX {jax.__version__} on "
        f"{device.platform}; ML-Agents: {torch_info}.",
        f"Medians of {2 * args.repeats} timings of ours and {args.repeats} of ML-Agents' per case.",
        "",
        "| case | ML-Agents wall | ours wall | **x wall** | ML-Agents CPU | ours CPU | **x CPU** | x best wall | load avg (start -> end) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']}, per {r['unit']} | {_fmt(r['theirs_wall'])} | {_fmt(r['ours_wall'])} | **{r['ratio_wall']:.1f}x** "
            f"| {_fmt(r['theirs_cpu'])} | {_fmt(r['ours_cpu'])} | **{r['ratio_cpu']:.1f}x** | {r['ratio_min']:.1f}x "
            f"| {r['load'][0]:.1f} -> {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "CPU = process CPU seconds (all threads): the work each side does, whatever else the shared cores run. "
        "\"x best wall\" compares the fastest timing of each side (the least disturbed one).",
        "",
    ]
    report.write_results(args.output, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="bench_vs_mlagents", description=__doc__.splitlines()[0])
    parser.add_argument("--mlagents-python", default=os.environ.get("MLAGENTS_PYTHON", DEFAULT_MLAGENTS_PYTHON),
                        help="the interpreter that has ML-Agents 1.1.0 (default $MLAGENTS_PYTHON or %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per side and case (ours: twice that)")
    parser.add_argument("--sac-steps", type=int, default=100, help="SAC gradient steps per timed round")
    parser.add_argument("--cases", default="0,1,2,3", help="which cases, by index (default all)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    why = mlagents_available(args.mlagents_python)
    if why is not None:
        log.warning("ML-Agents is not installed beside: bench_vs_mlagents skipped", reason=why)
        return 0
    if args.repeats < 1 or args.sac_steps < 1:
        log.error("--repeats and --sac-steps must be at least 1")
        return 2
    chosen = [CASES[int(i)] for i in args.cases.split(",")]
    rows = []
    for case in chosen:
        row = measure(case, args.mlagents_python, args.repeats, args.sac_steps)
        log.info("measured", **{k: v for k, v in row.items() if k != "case"}, case=case.label)
        rows.append(row)
    command = "python -m benchmarks.bench_vs_mlagents " + " ".join(sys.argv[1:] if argv is None else argv)
    write(rows, args, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
