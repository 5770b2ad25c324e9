"""Gradient steps per second of the SAC update, excluding compilation.

The SAC learner runs every due gradient step in jit-compiled calls that each scan over
``k`` sampled minibatches (``SACLearner.update``). This measures the whole public path
(uniform sampling from the replay buffer, host-to-device copy, the compiled scan) for a
3DBall-sized behavior (one 8-float vector observation, 2 continuous actions,
``normalize: true``) with batch 64 and 256 and 2x64 and 2x256 MLPs, on the default JAX
backend. Compile time (the first call: tracing + XLA compilation + its ``k`` steps) is
reported separately.

``make bench BENCH=bench_sac_update`` writes ``benchmarks/results/bench_sac_update.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import numpy as np

from benchmarks import report
from common.logging import configure_logging, get_logger
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.learning.sac import SACLearner
from trainer_server.config.loading import trainer_settings_from_dict

RESULTS = Path(__file__).parent / "results" / "bench_sac_update.md"
SPEC = BehaviorSpec("3DBall?team=0", (ObservationSpec("vector", (8,)),), ActionSpec(continuous_size=2))
CASES = [(64, 64), (64, 256), (256, 64), (256, 256)]  # (batch_size, hidden_units), 2 layers
#: with memory (an LSTM in the actor and both Q critics): (batch_size, hidden_units, memory_size,
#: sequence_length), measured beside the same case without memory
MEMORY_CASES = [(64, 64, 64, 16), (256, 64, 64, 16)]
FRAGMENT = 1000  # agent steps per trajectory fragment fed to the learner


def _fragment(rng: np.random.Generator, t: int, memory_size: int = 0) -> Trajectory:
    return Trajectory(
        memories=rng.normal(size=(t, memory_size)).astype(np.float32) if memory_size else None,
        instance=0,
        agent_id=0,
        observations=[rng.normal(size=(t, 8)).astype(np.float32)],
        next_observations=[rng.normal(size=(8,)).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, 2)).astype(np.float32),
        discrete_actions=np.zeros((t, 0), np.int32),
        log_probs=np.zeros(t, np.float32),
        rewards=rng.normal(size=t).astype(np.float32),
        action_masks=np.zeros((t, 0), bool),
        policy_versions=np.zeros(t, np.int64),
        done=True,
    )


def measure(
    batch_size: int, hidden_units: int, steps: int, steps_per_call: int, memory_size: int = 0, sequence_length: int = 0
) -> dict[str, float]:
    """Compile time and steady-state gradient steps per second of one configuration (with
    ``memory_size`` > 0: SAC with memory, minibatches of whole sequences)."""
    rng = np.random.default_rng(0)
    network = {"hidden_units": hidden_units, "num_layers": 2, "normalize": True}
    if memory_size:
        network["memory"] = {"memory_size": memory_size, "sequence_length": sequence_length}
    settings = trainer_settings_from_dict(
        {
            "trainer_type": "sac",
            "hyperparameters": {"batch_size": batch_size, "buffer_size": 50000, "steps_per_update": 1.0},
            "network_settings": network,
        }
    )
    learner = SACLearner(SPEC, settings, seed=0, steps_per_call=steps_per_call)
    for _ in range(10):  # 10k transitions in the replay buffer
        learner.process_trajectory(_fragment(rng, FRAGMENT, memory_size))
    learner.step = learner.step  # count the updates due so far as done (as after a resume)
    learner.process_trajectory(_fragment(rng, steps_per_call, memory_size))
    start = time.perf_counter()
    learner.update()  # compiles, then runs steps_per_call gradient steps
    first_call = time.perf_counter() - start
    learner.process_trajectory(_fragment(rng, steps_per_call, memory_size))
    learner.update()  # one more warm call
    for _ in range(steps // FRAGMENT):
        learner.process_trajectory(_fragment(rng, FRAGMENT, memory_size))
    pending = learner.pending_updates()
    start, cpu_start = time.perf_counter(), time.process_time()
    learner.update()
    jax.block_until_ready(learner._state)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert learner.trace_counts["update"] == 1, "the update recompiled"
    per_step = elapsed / pending
    return {
        "steps": pending,
        "steps_per_s": pending / elapsed,
        "ms_per_step": 1e3 * per_step,
        "cpu_ms_per_step": 1e3 * cpu / pending,
        "compile_s": max(first_call - steps_per_call * per_step, 0.0),
        "samples_per_s": pending * batch_size / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    log = get_logger("bench_sac_update")
    parser = argparse.ArgumentParser(prog="bench_sac_update", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="gradient steps timed per case (default 4000)")
    parser.add_argument("--steps-per-call", type=int, default=32, help="k, gradient steps per compiled call")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.steps < FRAGMENT or args.steps_per_call < 1:
        log.error("--steps must be at least 1000 and --steps-per-call at least 1", steps=args.steps)
        return 2
    device = jax.devices()[0]
    rows = []
    for batch_size, hidden in CASES:
        row = {"batch_size": batch_size, "hidden": hidden, **measure(batch_size, hidden, args.steps, args.steps_per_call)}
        rows.append(row)
        log.info("measured", **row)
    memory_rows = []
    for batch_size, hidden, memory_size, length in MEMORY_CASES:  # side by side: without, then with memory
        plain = measure(batch_size, hidden, args.steps, args.steps_per_call)
        recurrent = measure(batch_size, hidden, args.steps, args.steps_per_call, memory_size, length)
        memory_rows.append((batch_size, hidden, memory_size, length, plain, recurrent))
        log.info("measured memory", batch_size=batch_size, memory_size=memory_size, **recurrent)

    backend = f"{device.platform} ({device.device_kind})"
    lines = [
        "# bench_sac_update",
        "",
        "Gradient steps per second of the SAC update (`SACLearner.update`: replay sampling, host-to-device "
        f"copy, and the jit-compiled `lax.scan` over k={args.steps_per_call} minibatches per call) for a "
        "3DBall-sized behavior: 8 vector observations (normalized), 2 continuous actions, actor + twin Q "
        "critics + target critics, 2 hidden layers. Compile time excluded from the rate and reported apart.",
        "",
        "Command: `make bench BENCH=bench_sac_update` (`python -m benchmarks.run bench_sac_update`), "
        f"{args.steps} gradient steps timed per case after two warm calls.  ",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.  ",
        f"Machine: {report.cpu_name()} ({os.cpu_count()} cores visible, shared with other jobs while measured: "
        f"load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}, JAX {jax.__version__} on {backend}.",
        "",
        "CPU = process CPU seconds (all threads): the work done, whatever else the shared cores run; "
        "the wall figures depend on the load.",
        "",
        "| batch | MLP | gradient steps/s | ms per step (wall) | ms CPU per step | transitions/s | compile (first call) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | 2x{r['hidden']} | {r['steps_per_s']:,.0f} | {r['ms_per_step']:.2f} "
            f"| {r['cpu_ms_per_step']:.2f} | {r['samples_per_s']:,.0f} | {r['compile_s']:.1f} s |"
        )
    lines += [
        "",
        "With memory (`network_settings.memory`: an LSTM after the body of the actor and of both Q critics; "
        "minibatches of `batch_size // sequence_length` whole sequences sampled from the replay buffer, the "
        "actor's LSTM run over each sequence and its next observations, the critics' over the replayed steps "
        "from zero memories, and the target critics' too), the same behavior, 2x64 MLP, measured beside the "
        "same case without memory in the same run:",
        "",
        "| batch | memory | sequence_length | ms per step, no memory | ms per step, memory | ratio | compile (memory) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch_size, hidden, memory_size, length, plain, recurrent in memory_rows:
        lines.append(
            f"| {batch_size} | {memory_size} | {length} | {plain['ms_per_step']:.2f} | {recurrent['ms_per_step']:.2f} "
            f"| {recurrent['ms_per_step'] / plain['ms_per_step']:.1f}x | {recurrent['compile_s']:.1f} s |"
        )
    lines += [
        "",
        "For scale: ML-Agents' SAC 3DBall config (`steps_per_update: 10`, batch 64, 2x64) needs 0.1 gradient "
        "step per agent step, so at the rate above the update keeps up with tens of thousands of agent steps "
        "per second.",
        "",
        "GPU: not measured, this task had no accelerator.",
    ]
    report.write_results(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
