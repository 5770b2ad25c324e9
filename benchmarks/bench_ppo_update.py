"""PPO update throughput on a 3DBall-sized config, and the gateway's numpy acting cost.

Update: a ``PPOLearner`` with 8 vector observations, 2 continuous actions, buffer 12000,
batch 64, 3 epochs, 2x128 MLP, ``normalize: true`` (ML-Agents' 3DBall.yaml sizes). The
buffer is filled with synthetic 1000-step trajectories; the first ``update()`` (compile +
run) is timed on its own, then ``--updates`` more are timed one by one (refilling the
buffer in between is not counted). Also timed: ``process_trajectory`` (normalizer, values,
GAE) per step. Acting: ``NumpyPolicy.act`` of the same 2x128 policy for 12 and 256 agents.
Per encoder (``--encoders``): the update and the acting cost per agent of a Visual3DBall-like
behavior at the stand-in's camera sides (24x24, 84x84) for every ML-Agents visual encoder,
and of a Sorter-like behavior through the entity attention.

Memory (``bench_memory_update``): ML-Agents' Hallway.yaml network and hyperparameters (2x128,
LSTM memory 128, sequence_length 64, buffer 1024, batch 128, 3 epochs) on 36 vector
observations and one discrete branch of 5, filled with 64-step fragments (whole sequences),
measured side by side with the same config without memory; and the numpy acting cost per
agent with and without the LSTM.

``make bench BENCH=bench_ppo_update`` writes ``benchmarks/results/bench_ppo_update.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import report
from common.logging import configure_logging, get_logger
from gateway.actor.numpy_policy import NumpyPolicy
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory

RESULTS = Path(__file__).parent / "results" / "bench_ppo_update.md"
ENCODER_RESULTS = RESULTS.with_name("bench_ppo_update_encoders.md")
SPEC = BehaviorSpec("3DBall?team=0", (ObservationSpec("VectorSensor_size8", (8,)),), ActionSpec(continuous_size=2))
TRAJECTORY_LENGTH = 1000
ENCODERS = ("simple", "nature_cnn", "resnet", "match3", "fully_connected")
#: camera sides of the encoder tables: the stand-in's GridWorld camera and the 84x84 of gridworld84
IMAGE_SIDES = (24, 84)
#: the visual update's buffer (images make 12000 steps too big to hold here) and trajectory length
VISUAL_BUFFER, VISUAL_LENGTH = 512, 64
SORTER_SPEC = BehaviorSpec(
    "Sorter?team=0",
    (ObservationSpec("BufferSensor", (20, 23)), ObservationSpec("VectorSensor_size3", (3,))),
    ActionSpec(discrete_branches=(5,)),
)


def encoder_cases(encoders: tuple[str, ...]) -> list[tuple[str, BehaviorSpec, str]]:
    """(label, spec, vis_encode_type) of the encoder tables: a Visual3DBall-like behavior (one RGB
    camera, 2 continuous actions) per encoder and image side, and the Sorter-like entity attention.
    An encoder is left out below its minimum side (nature_cnn at 24x24), and match3 at 84x84: it
    keeps the full resolution into its dense layer (80 * 80 * 144 inputs x 128 units: 118M parameters)."""
    from common.architecture import MIN_VISUAL_SIZE

    cases = [("attention, 20 entities x 23 + vector 3 (Sorter)", SORTER_SPEC, "simple")]
    for side in IMAGE_SIDES:
        spec = BehaviorSpec("Visual3DBall?team=0", (ObservationSpec("CameraSensor", (3, side, side)),), ActionSpec(continuous_size=2))
        cases += [
            (f"{e} {side}x{side}", spec, e)
            for e in encoders
            if MIN_VISUAL_SIZE[e] <= side and not (e == "match3" and side > 24)
        ]
    return cases


def _observations(spec: BehaviorSpec, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Synthetic observations ``[n, *shape]``: images in [0, 1], entity buffers half padding."""
    out = []
    for o in spec.observations:
        if len(o.shape) == 3:
            out.append(rng.random((n, *o.shape), dtype=np.float32))
            continue
        x = rng.standard_normal((n, *o.shape)).astype(np.float32)
        if len(o.shape) == 2:
            x[:, o.shape[0] // 2 :] = 0.0
        out.append(x)
    return out


def _fill(learner, rng: np.random.Generator, spec: BehaviorSpec = SPEC, length: int = TRAJECTORY_LENGTH) -> float:
    """Feeds synthetic trajectories until an update is ready; returns seconds per processed step."""
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    seconds = 0.0
    steps = 0
    while not learner.ready():
        t = length
        obs = _observations(spec, t, rng)
        out = policy.act(obs, None, rng)
        traj = Trajectory(
            instance=0,
            agent_id=steps,
            observations=obs,
            next_observations=[o[0] for o in _observations(spec, 1, rng)],
            continuous_actions=out.continuous,
            discrete_actions=out.discrete,
            log_probs=out.log_probs,
            rewards=(0.1 - np.abs(out.env_continuous).mean(axis=1)).astype(np.float32),
            action_masks=np.zeros((t, spec.action_spec.mask_size), bool),
            policy_versions=np.zeros(t, np.int64),
            done=True,
        )
        start = time.perf_counter()
        learner.process_trajectory(traj)
        seconds += time.perf_counter() - start
        steps += t
    return seconds / steps


def _time_updates(learner, fill, updates: int) -> tuple[float, list[float], list[float], list[float]]:
    """(the first update's seconds, each later update's seconds, processing seconds per step
    of each fill, each later update's process CPU seconds) with the buffer refilled by
    ``fill(learner, rng)`` before every update."""
    rng = np.random.default_rng(0)
    per_step = [fill(learner, rng)]
    start = time.perf_counter()
    learner.update()
    first = time.perf_counter() - start
    times, cpu = [], []
    for _ in range(updates):
        per_step.append(fill(learner, rng))
        start, cpu_start = time.perf_counter(), time.process_time()
        learner.update()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return first, times, per_step, cpu


def bench_update(
    updates: int,
    spec: BehaviorSpec = SPEC,
    buffer_size: int = 12000,
    vis_encode_type: str = "simple",
    length: int = TRAJECTORY_LENGTH,
) -> dict[str, float]:
    """Times ``PPOLearner.update`` (batch 64, 3 epochs, 2x128, normalize) on synthetic
    trajectories of ``length`` steps of ``spec``."""
    import jax

    from trainer_server.learning.ppo import PPOLearner
    from trainer_server.config.loading import trainer_settings_from_dict

    settings = trainer_settings_from_dict(
        {
            "trainer_type": "ppo",
            "hyperparameters": {
                "batch_size": 64, "buffer_size": buffer_size, "num_epoch": 3, "learning_rate": 3e-4, "beta": 1e-3,
                "epsilon": 0.2, "lambd": 0.99,
            },
            "network_settings": {"hidden_units": 128, "num_layers": 2, "normalize": True, "vis_encode_type": vis_encode_type},
            "reward_signals": {"extrinsic": {"gamma": 0.99}},
            "max_steps": 500000,
            "time_horizon": length,
        }
    )
    hp = settings.hyperparameters
    learner = PPOLearner(spec, settings, seed=0)
    first, times, per_step, cpu = _time_updates(learner, lambda lrn, rng: _fill(lrn, rng, spec, length), updates)
    steady = float(np.median(times))
    minibatches = hp.buffer_size // hp.batch_size
    return {
        "backend": f"{jax.default_backend()} ({jax.devices()[0].device_kind})",
        "first_update_s": first,
        "compile_s": max(0.0, first - steady),
        "update_s": steady,
        "update_min_s": float(np.min(times)),
        "update_cpu_s": float(np.median(cpu)),
        "buffer_steps_per_s": hp.buffer_size / steady,
        "gradient_samples_per_s": hp.num_epoch * minibatches * hp.batch_size / steady,
        "minibatch_steps": hp.num_epoch * minibatches,
        "process_us_per_step": 1e6 * float(np.median(per_step[1:] or per_step)),
        "updates": updates,
        "traces": learner.trace_counts["update"],
    }


MEMORY_SPEC = BehaviorSpec("Hallway?team=0", (ObservationSpec("RayPerceptionSensor", (36,)),), ActionSpec(0, (5,)))


def _memory_settings(memory: bool):
    from trainer_server.config.loading import trainer_settings_from_dict

    network = {"hidden_units": 128, "num_layers": 2, "normalize": False}
    if memory:
        network["memory"] = {"memory_size": 128, "sequence_length": 64}
    return trainer_settings_from_dict(
        {
            "trainer_type": "ppo",
            "hyperparameters": {"batch_size": 128, "buffer_size": 1024, "num_epoch": 3, "learning_rate": 3e-4, "beta": 0.03},
            "network_settings": network,
            "reward_signals": {"extrinsic": {"gamma": 0.99}},
            "max_steps": 1_000_000,
            "time_horizon": 64,
        }
    )


def _fill_memory(learner, rng: np.random.Generator) -> float:
    """Feeds synthetic 64-step fragments (acted step by step, memories carried) until an update
    is ready; returns seconds per processed step."""
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters())
    m, seconds, steps = policy.memory_size, 0.0, 0
    while not learner.ready():
        t = 64
        obs = rng.standard_normal((t, 36)).astype(np.float32)
        memories = np.zeros((t, m), np.float32)
        outs, mem = [], np.zeros((1, m), np.float32)
        for i in range(t):
            memories[i] = mem[0] if m else 0.0
            outs.append(policy.act([obs[i : i + 1]], None, rng, memories=mem if m else None))
            mem = outs[-1].memories
        traj = Trajectory(
            instance=0, agent_id=steps, observations=[obs], next_observations=[obs[0]],
            continuous_actions=np.zeros((t, 0), np.float32),
            discrete_actions=np.concatenate([o.discrete for o in outs]),
            log_probs=np.concatenate([o.log_probs for o in outs]),
            rewards=rng.standard_normal(t).astype(np.float32) * 0.1, action_masks=np.zeros((t, 5), bool),
            policy_versions=np.zeros(t, np.int64), memories=memories if m else None,
        )
        start = time.perf_counter()
        learner.process_trajectory(traj)
        seconds += time.perf_counter() - start
        steps += t
    return seconds / steps


def bench_memory_update(updates: int) -> list[dict]:
    """Update time of the Hallway-sized config with and without memory, side by side."""
    from trainer_server.learning.ppo import PPOLearner

    rows = []
    for memory in (True, False):
        learner = PPOLearner(MEMORY_SPEC, _memory_settings(memory), seed=0)
        first, times, per_step, cpu = _time_updates(learner, _fill_memory, updates)
        rows.append({
            "memory": memory, "first_update_s": first, "update_s": float(np.median(times)),
            "update_cpu_s": float(np.median(cpu)),
            "update_min_s": float(np.min(times)), "process_us_per_step": 1e6 * float(np.median(per_step[1:])),
            "traces": learner.trace_counts["update"],
        })
    return rows


def bench_memory_acting(agents: int, calls: int) -> dict[str, float]:
    """us per agent of ``NumpyPolicy.act`` for the Hallway-sized policy, with and without the LSTM."""
    import jax

    from common.architecture import PolicyArchitecture
    from trainer_server.learning import networks

    out: dict[str, float] = {"agents": agents}
    rng = np.random.default_rng(0)
    obs = [rng.standard_normal((agents, 36)).astype(np.float32)]
    for memory in (128, 0):
        arch = PolicyArchitecture(MEMORY_SPEC, 128, 2, memory_size=memory, sequence_length=64 if memory else 0)
        policy = NumpyPolicy(arch, {k: np.asarray(v) for k, v in networks.init_actor(jax.random.key(0), arch).items()})
        mem = np.zeros((agents, memory), np.float32) if memory else None
        for _ in range(20):
            policy.act(obs, None, rng, memories=mem)
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                policy.act(obs, None, rng, memories=mem)
            samples.append((time.perf_counter() - start) / calls)
        out["memory_us_per_agent" if memory else "plain_us_per_agent"] = 1e6 * float(np.median(samples)) / agents
    return out


def bench_acting(agents: int, calls: int, spec: BehaviorSpec = SPEC, vis_encode_type: str = "simple") -> dict[str, float]:
    """Times ``NumpyPolicy.act`` (sampling) of a 2x128 normalized policy of ``spec`` for ``agents``."""
    import jax

    from common.architecture import PolicyArchitecture, vector_indices
    from trainer_server.learning import networks

    arch = PolicyArchitecture(spec, hidden_units=128, num_layers=2, normalize=True, vis_encode_type=vis_encode_type)
    params = {k: np.asarray(v) for k, v in networks.init_actor(jax.random.key(0), arch).items()}
    for i in vector_indices(spec):
        params[f"normalizer/mean/{i}"] = np.zeros(spec.observations[i].shape, np.float32)
        params[f"normalizer/var/{i}"] = np.ones(spec.observations[i].shape, np.float32)
    policy = NumpyPolicy(arch, params)
    rng = np.random.default_rng(0)
    obs = _observations(spec, agents, rng)
    for _ in range(min(50, calls)):
        policy.act(obs, None, rng)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            policy.act(obs, None, rng)
        samples.append((time.perf_counter() - start) / calls)
    per_call = float(np.median(samples))
    return {"agents": agents, "us_per_call": 1e6 * per_call, "us_per_agent": 1e6 * per_call / agents}


def bench_acting_single_blas_thread(calls: int) -> list[dict[str, float]]:
    """The acting figures in a fresh process with ``OPENBLAS_NUM_THREADS=1`` (read at numpy import)."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ppo_update", "--acting-json", "--calls", str(calls)],
        env=env, cwd=root, capture_output=True, text=True, check=True, timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def provenance(argv: list[str], backend: str) -> list[str]:
    """The command, date and machine lines of a results file."""
    return [
        f"Command: `{' '.join(['python -m benchmarks.bench_ppo_update', *argv])}` "
        "(the defaults: `make bench BENCH=bench_ppo_update`, `python -m benchmarks.run bench_ppo_update`).",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {report.cpu_name()}, {os.cpu_count()} cores visible (shared with other work while measured: "
        f"load average {os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}, numpy {np.__version__}; JAX backend: {backend}.",
    ]


def measure_encoders(
    args: argparse.Namespace, encoders: tuple[str, ...], log, on_case=None
) -> list[tuple[str, dict, list[dict]]]:
    """(label, update figures, acting figures at 1 and 12 agents) per case of ``encoder_cases``;
    ``on_case(rows so far)`` after each case (the encoders-only mode writes its file then)."""
    per_encoder = []
    for label, spec, encoder in encoder_cases(encoders):
        upd = bench_update(args.encoder_updates, spec, args.encoder_buffer, encoder, VISUAL_LENGTH)
        act = [bench_acting(n, args.encoder_calls, spec, encoder) for n in (1, 12)]
        log.warning("encoder measured", case=label, update_s=round(upd["update_s"], 3),
                    us_per_agent=[round(a["us_per_agent"], 1) for a in act])
        per_encoder.append((label, upd, act))
        if on_case is not None:
            on_case(per_encoder)
    return per_encoder


def encoder_table(args: argparse.Namespace, per_encoder: list[tuple[str, dict, list[dict]]]) -> list[str]:
    """The markdown section of the per-encoder figures (empty without them)."""
    if not per_encoder:
        return []
    lines = [
        "",
        "## Per visual encoder, and with entity attention",
        "",
        "Update: `PPOLearner.update` of a Visual3DBall-like behavior (one RGB camera, 2 continuous "
        f"actions; 2x128, normalize) with buffer {args.encoder_buffer}, batch 64, 3 epochs "
        f"({3 * (args.encoder_buffer // 64)} minibatch steps), trajectories of {VISUAL_LENGTH} steps, "
        f"median of {args.encoder_updates} after the first; the "
        "Sorter-like row (20 entities of 23 plus a vector of 3, 5 discrete actions) through the same "
        "update. Acting: the gateway's `NumpyPolicy.act` (sampling) at default BLAS threads, per agent "
        "at 1 and 12 agents per call. 24x24 is the stand-in GridWorld camera, 84x84 gridworld84's. "
        "The rows are measured one after another in one run on a machine shared with other work: "
        "compare them with each other rather than with other runs.",
        "",
        "| case | first update (compile + run) | steady update (median) | steady update CPU (median) "
        "| acting us/agent, 1 agent | acting us/agent, 12 agents |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, upd, act in per_encoder:
        lines.append(
            f"| {label} | {upd['first_update_s']:.2f} s | {upd['update_s']:.3f} s | {upd['update_cpu_s']:.3f} s | "
            f"{act[0]['us_per_agent']:,.0f} | {act[1]['us_per_agent']:,.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    configure_logging(level=os.environ.get("TANDEM_LOG_LEVEL", "WARNING"))
    log = get_logger("bench_ppo_update")
    parser = argparse.ArgumentParser(prog="bench_ppo_update", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--updates", type=int, default=3, help="timed updates after the first (default 3)")
    parser.add_argument("--calls", type=int, default=500, help="acting calls per timing sample (default 500)")
    parser.add_argument("--encoders", default=",".join(ENCODERS),
                        help="visual encoders of the per-encoder tables, comma-separated (default all; '' for none)")
    parser.add_argument("--encoder-updates", type=int, default=2, help="timed updates per encoder (default 2)")
    parser.add_argument("--encoder-buffer", type=int, default=VISUAL_BUFFER,
                        help=f"buffer_size of the per-encoder updates (default {VISUAL_BUFFER}, batch 64)")
    parser.add_argument("--encoder-calls", type=int, default=20, help="acting calls per sample per encoder (default 20)")
    parser.add_argument("--encoders-only", action="store_true",
                        help=f"measure only the per-encoder tables, written to {ENCODER_RESULTS.name} unless --output")
    parser.add_argument("--acting-json", action="store_true", help=argparse.SUPPRESS)  # child process mode
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    encoders = tuple(e for e in args.encoders.split(",") if e)
    unknown = sorted(set(encoders) - set(ENCODERS))
    if unknown:
        log.error("--encoders: unknown", unknown=unknown, known=list(ENCODERS))
        return 2
    if args.updates <= 0 or args.calls <= 0 or args.encoder_updates <= 0 or args.encoder_calls <= 0 or args.encoder_buffer < 64:
        log.error("--updates and --calls must be positive", updates=args.updates, calls=args.calls)
        return 2
    if args.acting_json:
        print(json.dumps([bench_acting(n, args.calls) for n in (12, 256)]))  # read by the parent process
        return 0

    if args.encoders_only:
        import jax

        header = ["# bench_ppo_update: per encoder", "", *provenance(argv, jax.default_backend())]
        path = ENCODER_RESULTS if args.output == RESULTS else args.output

        def write(rows):  # after every case, so a long run leaves what it measured
            report.write_results(path, "\n".join(header + encoder_table(args, rows) + [""]))

        measure_encoders(args, encoders, log, write)
        return 0

    memory_rows = bench_memory_update(args.updates)
    memory_acting = [bench_memory_acting(n, max(args.calls // 5, 1)) for n in (12, 256)]
    update = bench_update(args.updates)
    log.warning("update measured", **{k: round(v, 4) if isinstance(v, float) else v for k, v in update.items()})
    acting = [bench_acting(n, args.calls) for n in (12, 256)]
    single = bench_acting_single_blas_thread(args.calls)
    for threads, rows in (("default", acting), ("1", single)):
        for row in rows:
            log.warning("acting measured", blas_threads=threads, **{k: round(v, 2) for k, v in row.items()})
    per_encoder = measure_encoders(args, encoders, log)

    lines = [
        "# bench_ppo_update",
        "",
        "PPO update throughput of a 3DBall-sized config (8 vector observations, 2 continuous actions, "
        "buffer 12000, batch 64, 3 epochs, 2x128 MLP, `normalize: true`; separate actor and critic), "
        "and the gateway's numpy acting cost for the same policy.",
        "",
        *provenance(argv, update["backend"]),
        "",
        "## One full PPO update (`PPOLearner.update`)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| first update (compile + run) | {update['first_update_s']:.2f} s |",
        f"| compile (first minus steady) | {update['compile_s']:.2f} s |",
        f"| steady update, median of {update['updates']} (min) | {update['update_s']:.3f} s ({update['update_min_s']:.3f} s) |",
        f"| steady update, process CPU seconds (median) | {update['update_cpu_s']:.3f} s |",
        f"| buffer steps per second (12000 / update time) | {update['buffer_steps_per_s']:,.0f} |",
        f"| gradient samples per second (3 epochs x 187 minibatches x 64) | {update['gradient_samples_per_s']:,.0f} |",
        f"| minibatch Adam steps per update | {update['minibatch_steps']} |",
        f"| `process_trajectory` (normalizer, values, GAE) per step | {update['process_us_per_step']:.2f} us |",
        f"| compilations of the update over {update['updates'] + 1} updates | {update['traces']} |",
        "",
        "## Numpy acting (`NumpyPolicy.act`, sampling, 2x128 MLP, normalize)",
        "",
        "| agents | BLAS threads | us per call | us per agent |",
        "|---:|---|---:|---:|",
    ]
    for threads, rows in (("default (all cores)", acting), ("1 (`OPENBLAS_NUM_THREADS=1`)", single)):
        for row in rows:
            lines.append(f"| {row['agents']} | {threads} | {row['us_per_call']:.1f} | {row['us_per_agent']:.2f} |")
    lines += encoder_table(args, per_encoder)
    lines += [
        "",
        "## Memory (LSTM): PPO update and acting, Hallway-sized",
        "",
        "ML-Agents' Hallway.yaml network and hyperparameters (2x128, `memory_size` 128, `sequence_length` 64, "
        "buffer 1024, batch 128 = 2 sequences, 3 epochs) on 36 vector observations and one branch of 5, "
        "fed 64-step fragments; the same config without memory beside it.",
        "",
        "| network | first update (compile + run) | steady update, median (min) | steady update CPU (median) "
        "| `process_trajectory` per step | compilations |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {'LSTM (memory 128)' if r['memory'] else 'no memory'} | {r['first_update_s']:.2f} s | "
            f"{r['update_s']:.3f} s ({r['update_min_s']:.3f} s) | {r['update_cpu_s']:.3f} s | "
            f"{r['process_us_per_step']:.1f} us | {r['traces']} |"
            for r in memory_rows
        ),
        "",
        "| agents | numpy acting with LSTM, us per agent | without, us per agent |",
        "|---:|---:|---:|",
        *(f"| {r['agents']} | {r['memory_us_per_agent']:.2f} | {r['plain_us_per_agent']:.2f} |" for r in memory_acting),
        "",
        "The LSTM runs along each sequence in a `lax.scan` of 64 steps inside every minibatch step, so the "
        "memory update is sequential in time where the feed-forward one is not. The acting rows use the "
        "default BLAS threads: at 256 agents on a busy machine their noise outweighs the LSTM's cost "
        "(see the BLAS rows above).",
        "",
        "The update is one jit-compiled function (epochs x minibatches in `lax.scan`), so its time is "
        "compute only; on CPU it is dominated by the 561 small sequential Adam steps. Acting at 12 "
        "agents is dominated by numpy's per-call overhead, not by arithmetic. On a busy machine a "
        "multi-threaded BLAS makes these small matmuls several times slower: gateway workers should run "
        "with `OPENBLAS_NUM_THREADS=1` (set before numpy is imported).",
        "",
    ]
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
