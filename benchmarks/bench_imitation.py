"""GAIL and behavioral cloning from 20 expert episodes against PPO alone on the stand-in's 3DBall.

Why: imitation is worth its cost when demonstrations get the agent to the expert's level in
fewer agent steps than the reward alone does. The scripted expert (``--heuristic 3DBall``)
is recorded through the real gateway (``--record-demo``, 10 agents, two rounds: 20
episodes); then, side by side with the same seeds and budget, PPO trains in process
(``benchmarks.direct_rollout``) with:

* ``ppo``: ``configs/ppo/3DBall.yaml`` (extrinsic reward only);
* ``gail_bc``: ``configs/imitation/3DBall_gail_bc.yaml`` (extrinsic + GAIL + behavioral
  cloning, as ML-Agents' imitation examples combine them);
* ``gail``: ``configs/imitation/3DBall_gail.yaml`` (GAIL alone: the task's reward never seen).

Every ``--eval-every`` agent steps the current policy is evaluated deterministically with the
gateway's numpy actor on a fresh task (one episode per agent); reported: the agent steps
at which that return first reaches 90% of the expert's recorded mean return, and the
final one. ``tests/e2e/test_gail_3dball.py`` uses the same functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks import report
from benchmarks.bench_offline_bc import record_expert
from benchmarks.direct_rollout import DirectRunner, task_spec
from common.logging import configure_logging, get_logger
from gateway.actor.numpy_policy import NumpyPolicy
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import TrainerSettings
from trainer_server.learning.ppo import PPOLearner
from trainer_server.learning.sac import SACLearner
from unity_standin.side_channels import SideChannels
from unity_standin.tasks import TaskOptions, make_task

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_imitation.md"
TASK = "3dball"
#: arm -> config
CONFIGS = {
    "ppo": ROOT / "configs" / "ppo" / "3DBall.yaml",
    "gail_bc": ROOT / "configs" / "imitation" / "3DBall_gail_bc.yaml",
    "gail": ROOT / "configs" / "imitation" / "3DBall_gail.yaml",
}
#: SAC with GAIL alone (tests/e2e/test_gail_3dball.py; not an arm of the benchmark)
SAC_GAIL_CONFIG = ROOT / "configs" / "imitation" / "3DBall_sac_gail.yaml"
#: agents of the recording stand-in: 20 episodes are two whole rounds
RECORD_AGENTS = 10

_log = get_logger("benchmarks.imitation")


def settings_with_demos(config: Path, demos: Path) -> TrainerSettings:
    """The 3DBall behavior's settings of ``config`` with every ``demo_path`` set to ``demos``."""
    settings = load_run_options(config).behaviors["3DBall"]
    signals = {
        name: dataclasses.replace(s, demo_path=str(demos)) if hasattr(s, "demo_path") else s
        for name, s in settings.reward_signals.items()
    }
    bc = settings.behavioral_cloning
    return dataclasses.replace(
        settings, reward_signals=signals, behavioral_cloning=dataclasses.replace(bc, demo_path=str(demos)) if bc else None
    )


def evaluate(learner: PPOLearner | SACLearner | None, seed: int, max_decisions: int = 1000) -> float:
    """Mean return of one episode per agent of a fresh 3DBall: the gateway's numpy actor on
    the learner's current parameters, deterministic; ``learner`` None: uniformly random
    actions (the random policy's return). An episode still running after ``max_decisions``
    counts with what it has (3DBall interrupts at 1000 anyway)."""
    task = make_task(TASK, TaskOptions(seed=10_000 + seed), SideChannels())
    behavior = task.behaviors[0]
    name, n = behavior.name, behavior.num_agents
    policy = NumpyPolicy(learner.architecture(), learner.policy_parameters()) if learner is not None else None
    rng = np.random.default_rng(seed)
    idx = np.arange(n)
    task.begin_episodes(name, idx)
    returns, running = np.zeros(n), np.ones(n, bool)
    for _ in range(max_decisions):
        if policy is None:
            actions = rng.uniform(-1.0, 1.0, (n, behavior.continuous_size)).astype(np.float32)
        else:
            obs = task.observe(name, idx)[0].astype(np.float32)
            actions = policy.act([obs], None, rng, deterministic=True).env_continuous
        result = task.act({name: (actions, np.zeros((n, 0), np.int32))})[name]
        returns += np.where(running, result.reward, 0.0)
        running &= ~np.asarray(result.ended, bool)
        if not running.any():
            break
        ended = np.flatnonzero(result.ended)
        if len(ended):
            task.begin_episodes(name, ended)
    return float(returns.mean())


@dataclasses.dataclass
class Curve:
    """One arm and seed: deterministic evaluation returns along the agent steps."""

    arm: str
    seed: int
    steps: list[int]
    returns: list[float]
    seconds: float

    def steps_to(self, target: float) -> int | None:
        """First evaluated agent step whose return reached ``target`` (None: never)."""
        return next((s for s, r in zip(self.steps, self.returns) if r >= target), None)


def train(
    settings: TrainerSettings, seed: int, budget: int, eval_every: int, stop_at: float | None = None,
    demonstrations=None, arm: str = "",
) -> Curve:
    """Trains the settings' learner (PPO or SAC) on 3DBall in process until ``budget`` agent
    steps (or the evaluation reaches ``stop_at``), evaluating every ``eval_every`` steps."""
    learner_class = SACLearner if str(settings.trainer_type) == "sac" else PPOLearner
    learner = learner_class(task_spec(TASK), settings, seed=seed, demonstrations=demonstrations)
    runner = DirectRunner(TASK, learner, settings.time_horizon, seed=seed)
    curve = Curve(arm, seed, [0], [evaluate(learner, seed)], 0.0)
    started = time.perf_counter()
    while runner.steps < budget:
        runner.run(eval_every)
        curve.steps.append(runner.steps)
        curve.returns.append(evaluate(learner, seed))
        _log.info("evaluated", arm=arm, seed=seed, step=runner.steps, mean_return=round(curve.returns[-1], 1))
        if stop_at is not None and curve.returns[-1] >= stop_at:
            break
    curve.seconds = time.perf_counter() - started
    return curve


def _cell(steps: int | None, budget: int) -> str:
    return f"{steps:,}" if steps is not None else f"not within {budget:,}"


def render(curves: list[Curve], expert: float, episodes: int, demo_steps: int, budget: int, command: str) -> str:
    target = 0.9 * expert
    lines = [
        "# bench_imitation",
        "",
        f"PPO on the stand-in's `3dball`, {episodes} expert episodes ({demo_steps:,} steps, mean return {expert:.1f}) "
        "recorded from the scripted expert through the real gateway (`tandem-gateway --heuristic 3DBall --record-demo`, "
        f"{RECORD_AGENTS} agents); the arms train side by side in one run with the same seeds and budget, stepped in "
        "process (`benchmarks/direct_rollout.py`, 12 agents). Every evaluation is one deterministic episode per agent "
        "with the gateway's numpy actor on a fresh task.",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: {report.cpu_name()} "
        f"({os.cpu_count()} cores visible, shared with other jobs), Python {platform.python_version()}, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}.",
        "",
        "| arm | config | seed | agent steps to 90% of the expert's return | final return | wall s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for c in curves:
        lines.append(
            f"| {c.arm} | `{CONFIGS[c.arm].relative_to(ROOT)}` | {c.seed} | {_cell(c.steps_to(target), budget)} | "
            f"{c.returns[-1]:.1f} | {c.seconds:.0f} |"
        )
    lines += ["", "Evaluation curves (agent steps: return):", ""]
    for c in curves:
        points = ", ".join(f"{s // 1000}k: {r:.0f}" for s, r in zip(c.steps, c.returns))
        lines.append(f"- {c.arm}, seed {c.seed}: {points}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="bench_imitation", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=96_000, help="agent steps per arm and seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes to record")
    parser.add_argument("--eval-every", type=int, default=12_000, help="agent steps between evaluations (one PPO update)")
    parser.add_argument("--arms", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from trainer_server.demonstrations import load_demonstrations

    with tempfile.TemporaryDirectory(prefix="tandem-imitation-") as tmp:
        demos = Path(tmp) / "demos"
        record_expert(demos, args.episodes, num_agents=RECORD_AGENTS)
        loaded = load_demonstrations(demos, task_spec(TASK))
        expert = float(loaded.episode_returns().mean())
        curves = []
        for seed in range(args.seeds):
            for arm in args.arms:
                uses_demos = arm != "ppo"
                settings = settings_with_demos(CONFIGS[arm], demos) if uses_demos else load_run_options(CONFIGS[arm]).behaviors["3DBall"]
                curve = train(settings, seed, args.budget, args.eval_every, demonstrations=loaded if uses_demos else None, arm=arm)
                curves.append(curve)
                _log.info("trained", arm=arm, seed=seed, steps_to_90=curve.steps_to(0.9 * expert), final=curve.returns[-1])
    command = "python -m benchmarks.bench_imitation " + " ".join(sys.argv[1:] if argv is None else argv)
    report.write_results(args.output, render(curves, expert, loaded.num_episodes, loaded.num_steps, args.budget, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
