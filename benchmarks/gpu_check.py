"""Update times of PPO and SAC at the 3DBall and a visual size, on the devices JAX sees.

Why: the trainer is meant to run on GPU boxes; this is the figure to put beside the CPU
ones (``bench_ppo_update``, ``bench_sac_update``), for the vector task those measure and
for a visual task (one 84x84x3 camera through the ``simple`` encoder plus 8 floats), on
one device and split across all local devices (``--devices all``). Part of
``benchmarks/gpu_check.sh``; it runs on a CPU too (then it measures the CPU).

``python -m benchmarks.gpu_check [--output PATH]`` writes ``benchmarks/results/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import numpy as np

from benchmarks.report import cpu_name, write_results
from common.logging import configure_logging, get_logger
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning import devices
from trainer_server.learning.registry import make_learner

RESULTS = Path(__file__).parent / "results" / "gpu_check.md"
VECTOR = BehaviorSpec("3DBall?team=0", (ObservationSpec("vector", (8,)),), ActionSpec(continuous_size=2))
VISUAL = BehaviorSpec(
    "Visual?team=0", (ObservationSpec("camera", (3, 84, 84)), ObservationSpec("vector", (8,))), ActionSpec(2, (3,))
)
#: (name, spec, trainer type, hyperparameters, hidden units, fragment length)
CASES = [
    ("PPO 3DBall (buffer 12000, batch 64, 3 epochs, 2x128)", VECTOR, "ppo",
     {"batch_size": 64, "buffer_size": 12000, "num_epoch": 3}, 128, 1000),
    ("PPO visual 84x84x3 (buffer 2048, batch 128, 3 epochs, 2x256)", VISUAL, "ppo",
     {"batch_size": 128, "buffer_size": 2048, "num_epoch": 3}, 256, 256),
    ("SAC 3DBall (batch 64, 2x64; 32 gradient steps)", VECTOR, "sac",
     {"batch_size": 64, "buffer_size": 50000, "buffer_init_steps": 0, "steps_per_update": 1}, 64, 32),
    ("SAC visual 84x84x3 (batch 128, 2x256; 32 gradient steps)", VISUAL, "sac",
     {"batch_size": 128, "buffer_size": 1024, "buffer_init_steps": 0, "steps_per_update": 1}, 256, 32),
]

_log = get_logger("benchmarks.gpu_check")


def _fragment(spec: BehaviorSpec, rng: np.random.Generator, t: int) -> Trajectory:
    a = spec.action_spec
    return Trajectory(
        instance=0,
        agent_id=0,
        observations=[rng.random((t, *o.shape), np.float32) for o in spec.observations],
        next_observations=[rng.random(o.shape, np.float32) for o in spec.observations],
        continuous_actions=rng.normal(size=(t, a.continuous_size)).astype(np.float32),
        discrete_actions=np.stack([rng.integers(0, b, t) for b in a.discrete_branches], 1).astype(np.int32)
        if a.num_branches
        else np.zeros((t, 0), np.int32),
        log_probs=np.full(t, -2.0, np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        action_masks=np.zeros((t, a.mask_size), bool),
        policy_versions=np.zeros(t, np.int64),
        done=True,
    )


def measure(spec, trainer_type, hyperparameters, hidden, fragment, updates: int) -> tuple[float, float]:
    """(first update incl. compile, median steady update) in seconds on the current placement."""
    settings = trainer_settings_from_dict(
        {
            "trainer_type": trainer_type,
            "hyperparameters": hyperparameters,
            "network_settings": {"hidden_units": hidden, "num_layers": 2, "normalize": True},
            "time_horizon": fragment,
            "max_steps": 10**8,
        }
    )
    learner = make_learner(spec, settings, seed=0)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(updates + 1):
        while not learner.ready():
            learner.process_trajectory(_fragment(spec, rng, fragment))
        start = time.perf_counter()
        learner.update()
        times.append(time.perf_counter() - start)
        learner.discard_buffered()
    return times[0], float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=3, help="timed updates after the first")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    local = jax.local_devices()
    placements = [("1 device", devices.select(None, None, 1))]
    if len(local) > 1:
        placements.append((f"{len(local)} devices (--devices all)", devices.select(None, None, None)))
    rows = []
    for label, placement in placements:
        previous = devices.use(placement)
        try:
            for name, spec, kind, hp, hidden, fragment in [c for c in CASES if args.only in c[0]]:
                first, steady = measure(spec, kind, hp, hidden, fragment, args.updates)
                rows.append((name, label, first, steady))
                _log.info("measured", case=name, devices=label, first_s=round(first, 3), steady_s=round(steady, 4))
        finally:
            devices.use(previous)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# gpu_check: PPO and SAC update times on the devices JAX sees",
        "",
        f"Command: `python -m benchmarks.gpu_check {' '.join(argv)}`".rstrip() + "  ",
        f"Date: {now}  ",
        f"Machine: {cpu_name()}; JAX {jax.__version__}, backend {jax.default_backend()}, devices "
        f"{[f'{d.platform}:{d.id} {d.device_kind}' for d in local]}",
        "",
        "| case | devices | first update (compile + run) s | steady update s (median) |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {name} | {label} | {first:.2f} | {steady:.4f} |" for name, label, first, steady in rows]
    write_results(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
