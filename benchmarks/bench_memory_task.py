"""Agent steps to solve the stand-in's memory task (``hallway``), PPO and SAC with and without memory.

The task shows a cue only at the first of an episode's four decisions; the goal picked at
the last one pays +1 if it matches the cue, -1 if not (``unity_standin/tasks/hallway.py``).
"Solved" = a window of ``WINDOW`` consecutive finished episodes with a mean return >=
``SOLVED``. Each run trains ``configs/ppo/Hallway.yaml`` (LSTM, memory 32, sequences of 4)
or ``configs/ppo/Hallway_no_memory.yaml`` (the same without memory) for the same budget of
agent steps, with the gateway actor's own parts in one process (``train``): the stand-in
through mlagents-envs, ``StepBatch``, per-agent ``AgentMemories``, ``TrajectoryBuilder``
and a ``NumpyPolicy`` from every new snapshot. The learning test
(``tests/trainer_server/learning/test_ppo_memory_standin.py``) runs the same loop. SAC's
runs train ``configs/sac/Hallway.yaml`` and ``configs/sac/Hallway_no_memory.yaml`` the
same way (``tests/trainer_server/learning/test_sac_memory_standin.py``); ``--configs``
picks which configs run (``--output`` where the table goes).

``make bench BENCH=bench_memory_task`` writes ``benchmarks/results/bench_memory_task.md``.
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

RESULTS = Path(__file__).parent / "results" / "bench_memory_task.md"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ppo"
HALLWAY = "Hallway?team=0"
WINDOW = 200
SOLVED = 0.9
#: every config the benchmark knows (``--configs``): PPO's under configs/ppo, SAC's under configs/sac
ALL_CONFIGS = ("Hallway.yaml", "Hallway_no_memory.yaml", "sac/Hallway.yaml", "sac/Hallway_no_memory.yaml")


def train(config: str, budget: int, seed: int = 0):
    """Trains with ``configs/ppo/<config>`` (or ``configs/<config>`` when it names a folder,
    e.g. ``sac/Hallway.yaml``) on the stand-in's hallway for ``budget`` agent steps; the
    config's ``trainer_type`` picks the learner (PPO or SAC). The actor acts with a snapshot
    of the learner's policy after every update (PPO: and drops what it buffered, as the
    trainer's default on-policy coupling; SAC: the replay buffer keeps everything).

    Returns:
        (list of ``(agent steps so far, return)`` of every finished episode in order, the learner).
    """
    from mlagents_envs.base_env import ActionTuple
    from mlagents_envs.exception import UnityEnvironmentException, UnityWorkerInUseException

    import unity_standin
    from common.architecture import make_snapshot
    from common.specs import from_mlagents
    from gateway.actor.memories import AgentMemories
    from gateway.actor.numpy_policy import NumpyPolicy
    from gateway.actor.trajectories import TrajectoryBuilder
    from gateway.env.steps import from_decision_steps, from_terminal_steps
    from gateway.env.unity_environment import open_unity_environment
    from trainer_server.config.loading import load_run_options
    from trainer_server.learning.ppo import PPOLearner
    from trainer_server.learning.sac import SACLearner

    path = CONFIGS.parent / config if "/" in config else CONFIGS / config
    settings = load_run_options(path).behaviors["Hallway"]
    make_learner = {"ppo": PPOLearner, "sac": SACLearner}[settings.trainer_type]
    for attempt in range(3):
        try:
            env = open_unity_environment(
                unity_standin.executable_path(), worker_id=0, base_port=free_base_port(), timeout_wait=30,
                additional_args=["--task", "hallway", "--seed", str(seed)],
            )
            break
        except UnityWorkerInUseException:
            if attempt == 2:
                raise
    try:
        env.reset()
        spec = from_mlagents(HALLWAY, env.behavior_specs[HALLWAY])
        learner = make_learner(spec, settings, seed=seed)
        arch = learner.architecture()
        policy = NumpyPolicy.from_snapshot(make_snapshot(HALLWAY, 0, arch, learner.policy_parameters()))
        version = 0
        builder = TrajectoryBuilder(spec, 0, settings.time_horizon, memory_size=arch.memory_size)
        memories = AgentMemories(arch.memory_size) if arch.memory_size else None
        rng = np.random.default_rng(seed)
        episodes: list[tuple[int, float]] = []
        acted = 0
        while learner.step < budget:
            decision_steps, terminal_steps = env.get_steps(HALLWAY)
            dec, term = from_decision_steps(decision_steps, spec), from_terminal_steps(terminal_steps)
            for trajectory in builder.observe(dec, term):
                if trajectory.done:
                    episodes.append((acted, trajectory.episode_return))
                learner.process_trajectory(trajectory)
                if learner.ready():
                    learner.update()
                    learner.discard_buffered()  # on-policy, as the trainer's default coupling (SAC: nothing)
                    version += 1
                    policy = NumpyPolicy.from_snapshot(make_snapshot(HALLWAY, version, arch, learner.policy_parameters()))
            before = None
            if memories is not None:  # forgotten at terminal steps, before the same id acts again
                memories.forget(term.agent_ids)
                before = memories.take(dec.agent_ids)
            out = policy.act(dec.observations, dec.action_mask, rng, memories=before)
            if memories is not None:
                memories.keep(dec.agent_ids, out.memories)
            builder.record(dec, out.continuous, out.discrete, out.log_probs, version, before)
            acted += len(dec)
            env.set_actions(HALLWAY, ActionTuple(discrete=out.discrete))
            env.step()
    finally:
        try:
            env.close()
        except UnityEnvironmentException:
            pass
    return episodes, learner


def steps_to_solve(episodes: list[tuple[int, float]]) -> int | None:
    """Agent steps at the end of the first window of ``WINDOW`` episodes with mean >= ``SOLVED``."""
    returns = np.asarray([r for _, r in episodes])
    for end in range(WINDOW, len(returns) + 1):
        if returns[end - WINDOW : end].mean() >= SOLVED:
            return episodes[end - 1][0]
    return None


def main(argv: list[str] | None = None) -> int:
    configure_logging(level=os.environ.get("TANDEM_LOG_LEVEL", "WARNING"))
    log = get_logger("bench_memory_task")
    parser = argparse.ArgumentParser(prog="bench_memory_task", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--budget", type=int, default=16_000, help="agent steps per run (default 16000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3)")
    parser.add_argument("--configs", nargs="+", choices=ALL_CONFIGS, default=list(ALL_CONFIGS), help="configs to run (default: all)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.budget <= 0 or args.seeds <= 0:
        log.error("--budget and --seeds must be positive", budget=args.budget, seeds=args.seeds)
        return 2
    rows = []
    for config in args.configs:
        for seed in range(args.seeds):
            started = time.monotonic()
            episodes, learner = train(config, args.budget, seed)
            solved = steps_to_solve(episodes)
            final = float(np.mean([r for _, r in episodes[-WINDOW:]]))
            updates = learner.update_steps if hasattr(learner, "update_steps") else learner.update_count  # SAC: gradient steps
            rows.append((config, seed, solved, final, updates, time.monotonic() - started))
            log.warning("memory task run", config=config, seed=seed, solved_at=solved, final=round(final, 3))
    lines = [
        "# bench_memory_task",
        "",
        f"Agent steps until the mean return of {WINDOW} consecutive episodes of the stand-in's `hallway` "
        f"(cue at the first of 4 decisions, +1/-1 at the last) reaches {SOLVED}, PPO with memory "
        "(`configs/ppo/Hallway.yaml`: LSTM of memory 32, sequence_length 4) and without "
        "(`configs/ppo/Hallway_no_memory.yaml`), SAC with memory (`configs/sac/Hallway.yaml`: the same LSTM "
        "in the actor and both Q critics) and without (`configs/sac/Hallway_no_memory.yaml`), "
        f"the same budget of {args.budget:,} agent steps per run, "
        "16 agents, in one process with the gateway actor's parts (see the module docstring).",
        "",
        "Command: `make bench BENCH=bench_memory_task` (`python -m benchmarks.run bench_memory_task`)"
        + ("" if args.configs == list(ALL_CONFIGS) and argv is None else
           f"; this table: `python -m benchmarks.bench_memory_task {' '.join(sys.argv[1:] if argv is None else argv)}`")
        + ".",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {report.cpu_name()}, {os.cpu_count()} cores visible (shared with other work while measured: load average "
        f"{os.getloadavg()[0]:.1f} at the end), "
        f"Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        f"| config | seed | agent steps to solve | mean return, last {WINDOW} episodes | updates (PPO) / gradient steps (SAC) | wall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for config, seed, solved, final, updates, wall in rows:
        cell = f"{solved:,}" if solved is not None else "not solved"
        lines.append(f"| {config} | {seed} | {cell} | {final:.2f} | {updates} | {wall:.0f} s |")
    lines += [
        "",
        "Without memory the last decision's observation is the same whatever the cue, so no policy can "
        "beat a mean of 0 (right goal half of the time); with memory the task's maximum is 1.",
        "",
    ]
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
