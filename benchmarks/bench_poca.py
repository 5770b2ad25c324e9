"""MA-POCA against independent PPO on the stand-in's cooperative task, and the group critic's update time.

The task (``unity_standin/tasks/coop_push.py``, ``pushblockcollab``): groups of 2 agents
must push a block together from the side away from a goal drawn per episode;
the only reward is the group's +1 per push (as in ML-Agents' PushBlockCollab, a group
reward), which independent PPO never sees. Each run trains ``configs/poca/PushBlockCollab.yaml`` (POCA)
or ``configs/poca/PushBlockCollab_ppo.yaml`` (the same hyperparameters with PPO) for the
same budget of agent steps, with the gateway actor's own parts in one process
(``train``): the stand-in through mlagents-envs, ``StepBatch``, ``TrajectoryBuilder``
recording groupmates when the snapshot asks for them, and a ``NumpyPolicy`` from every
new snapshot. The learning test (``tests/trainer_server/learning/test_poca_standin.py``)
runs the same loop. The second table times one POCA update (``buffer_size`` 1024,
``batch_size`` 256, hidden 128, 2 layers) for groups of 2, 4 and 8 agents.

``make bench BENCH=bench_poca`` writes ``benchmarks/results/bench_poca.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.ports import free_base_port
from common.logging import configure_logging, get_logger

RESULTS = Path(__file__).parent / "results" / "bench_poca.md"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "poca"
BEHAVIOR = "PushBlockCollab?team=0"
#: finished agent episodes the group return is measured over
WINDOW = 200


def train(config: str, budget: int, seed: int = 0, task: str = "pushblockcollab"):
    """Trains ``configs/poca/<config>`` on the stand-in's ``task`` for ``budget`` agent steps.

    Returns:
        (list of ``(agent steps so far, the episode's group reward)`` of every agent episode
        that ended with its group's (interrupted at ``MAX_GROUP_STEPS``), in order; the learner).
    """
    from mlagents_envs.base_env import ActionTuple
    from mlagents_envs.exception import UnityEnvironmentException, UnityWorkerInUseException

    import unity_standin
    from common.architecture import make_snapshot
    from common.specs import from_mlagents
    from gateway.actor.numpy_policy import NumpyPolicy
    from gateway.actor.trajectories import TrajectoryBuilder
    from gateway.env.steps import from_decision_steps, from_terminal_steps
    from gateway.env.unity_environment import open_unity_environment
    from trainer_server.config.loading import load_run_options
    from trainer_server.learning.registry import make_learner

    options = load_run_options(CONFIGS / config)
    [(name, settings)] = options.behaviors.items()
    behavior = f"{name}?team=0"
    for attempt in range(3):
        try:
            env = open_unity_environment(
                unity_standin.executable_path(), worker_id=0, base_port=free_base_port(), timeout_wait=30,
                additional_args=["--task", task, "--seed", str(seed)],
            )
            break
        except UnityWorkerInUseException:
            if attempt == 2:
                raise
    try:
        env.reset()
        spec = from_mlagents(behavior, env.behavior_specs[behavior])
        learner = make_learner(spec, settings, seed)
        arch = learner.architecture()
        policy = NumpyPolicy.from_snapshot(make_snapshot(behavior, 0, arch, learner.policy_parameters()))
        builder = TrajectoryBuilder(spec, 0, settings.time_horizon, groupmates=arch.collect_groupmates)
        rng = np.random.default_rng(seed)
        group_returns: dict[int, float] = {}
        episodes: list[tuple[int, float]] = []
        acted = 0
        while learner.step < budget:
            decision_steps, terminal_steps = env.get_steps(behavior)
            dec, term = from_decision_steps(decision_steps, spec), from_terminal_steps(terminal_steps)
            for agent, reward, stopped in zip(term.agent_ids.tolist(), term.group_rewards.tolist(), term.interrupted.tolist()):
                total = group_returns.pop(agent, 0.0) + reward
                if stopped:  # the group's end (an agent removed early ends done, not interrupted)
                    episodes.append((acted, total))
            for agent, reward in zip(dec.agent_ids.tolist(), dec.group_rewards.tolist()):
                group_returns[agent] = group_returns.get(agent, 0.0) + reward
            for trajectory in builder.observe(dec, term):
                learner.process_trajectory(trajectory)
                if learner.ready():
                    learner.update()
                    learner.discard_buffered()  # on-policy, as the trainer's default coupling
                    policy = NumpyPolicy.from_snapshot(
                        make_snapshot(behavior, learner.update_count, arch, learner.policy_parameters())
                    )
            out = policy.act(dec.observations, dec.action_mask, rng)
            builder.record(dec, out.continuous, out.discrete, out.log_probs, learner.update_count)
            acted += len(dec)
            env.set_actions(behavior, ActionTuple(discrete=out.discrete))
            env.step()
    finally:
        try:
            env.close()
        except UnityEnvironmentException:
            pass
    return episodes, learner


def group_return(episodes: list[tuple[int, float]], window: int = WINDOW) -> float:
    """Mean group reward of the last ``window`` agent episodes (blocks the group pushed per episode)."""
    return float(np.mean([r for _, r in episodes[-window:]])) if episodes else 0.0


def critic_update_seconds(agents: int, repeats: int = 3) -> tuple[float, int]:
    """Seconds of one compiled POCA update for groups of ``agents`` (median of ``repeats``), and
    the groupmate capacity it compiled for."""
    import jax

    from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
    from common.trajectory import Groupmates, Trajectory
    from trainer_server.config.loading import trainer_settings_from_dict
    from trainer_server.learning.poca import POCALearner

    spec = BehaviorSpec("Bench?team=0", (ObservationSpec("VectorSensor_size16", (16,)),), ActionSpec(2, (3,)))
    settings = trainer_settings_from_dict({
        "trainer_type": "poca", "time_horizon": 64,
        "hyperparameters": {"buffer_size": 1024, "batch_size": 256},
        "network_settings": {"hidden_units": 128, "num_layers": 2},
    })
    learner = POCALearner(spec, settings, 0)
    rng = np.random.default_rng(0)
    t, m = 64, agents - 1

    def fragment() -> Trajectory:
        mates = Groupmates(
            [rng.normal(size=(t, m, 16)).astype(np.float32)], rng.normal(size=(t, m, 2)).astype(np.float32),
            rng.integers(0, 3, (t, m, 1)).astype(np.int32), np.zeros((t, m), np.float32), np.ones((t, m), bool),
            np.zeros((t, m), bool), [rng.normal(size=(m, 16)).astype(np.float32)],
        )
        return Trajectory(
            0, 0, [rng.normal(size=(t, 16)).astype(np.float32)], [np.zeros(16, np.float32)],
            rng.normal(size=(t, 2)).astype(np.float32), rng.integers(0, 3, (t, 1)).astype(np.int32),
            np.full(t, -3.0, np.float32), rng.normal(size=t).astype(np.float32), np.zeros((t, 3), bool),
            np.zeros(t, np.int64), group_id=1, group_rewards=np.zeros(t, np.float32), groupmates=mates,
        )

    times = []
    for _ in range(repeats + 1):  # the first compiles
        while not learner.ready():
            learner.process_trajectory(fragment())
        started = time.perf_counter()
        jax.block_until_ready(learner.update())
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:])), learner.mates


def main(argv: list[str] | None = None) -> int:
    configure_logging(level=os.environ.get("TANDEM_LOG_LEVEL", "WARNING"))
    log = get_logger("bench_poca")
    parser = argparse.ArgumentParser(prog="bench_poca", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--budget", type=int, default=12_000, help="agent steps per run (default 12000)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per trainer (default 2)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.budget <= 0 or args.seeds <= 0:
        log.error("--budget and --seeds must be positive", budget=args.budget, seeds=args.seeds)
        return 2
    rows = []
    for config in ("PushBlockCollab.yaml", "PushBlockCollab_ppo.yaml"):
        for seed in range(args.seeds):
            started = time.monotonic()
            episodes, learner = train(config, args.budget, seed)
            rows.append((config, seed, group_return(episodes[:WINDOW]), group_return(episodes), learner.update_count, time.monotonic() - started))
            log.warning("cooperative task run", config=config, seed=seed, final=round(rows[-1][3], 3))
    timings = [(agents, *critic_update_seconds(agents)) for agents in (2, 4, 8)]
    lines = [
        "# bench_poca",
        "",
        "Blocks pushed per group episode of 20 steps (mean group reward per agent episode) on the stand-in's "
        "`pushblockcollab` (groups of 2 agents must push a block together; only the group is rewarded), POCA "
        "(`configs/poca/PushBlockCollab.yaml`) against independent PPO with the same hyperparameters "
        f"(`configs/poca/PushBlockCollab_ppo.yaml`), the same budget of {args.budget:,} agent steps per run, "
        "16 agents (8 groups), in one process with the gateway actor's parts (see the module docstring).",
        "",
        "Command: `make bench BENCH=bench_poca` (`python -m benchmarks.run bench_poca`).",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {report.cpu_name()}, {os.cpu_count()} cores visible (shared with other work while measured: load average "
        f"{os.getloadavg()[0]:.1f} at the end), Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        f"| config | seed | first {WINDOW} episodes | last {WINDOW} episodes | updates | wall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config, seed, first, final, updates, wall in rows:
        lines.append(f"| {config} | {seed} | {first:.2f} | {final:.2f} | {updates} | {wall:.0f} s |")
    lines += [
        "",
        "## Group critic: one update",
        "",
        "One POCA update (3 epochs of 4 minibatches of 256 steps, hidden 128, 2 layers, 16 vector observations, "
        "2 continuous actions and a branch of 3), median of 3 after compilation; groupmates are padded to a capacity "
        "of 3, 7, 15... (groups of 2 to 4 agents share one compiled shape).",
        "",
        "| agents per group | groupmate capacity | seconds per update |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {agents} | {capacity} | {seconds:.3f} |" for agents, seconds, capacity in timings]
    lines.append("")
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
