"""Learning tests: GAIL without extrinsic reward learns the demonstrated behaviour on 3DBall,
beside PPO and beside SAC.

The scripted expert is recorded through the real gateway (``--heuristic 3DBall
--record-demo``); PPO then trains ``configs/imitation/3DBall_gail.yaml`` (reward signals:
``gail`` alone) in process on the stand-in's 3DBall, and SAC trains
``configs/imitation/3DBall_sac_gail.yaml`` (SAC evaluates the discriminator's reward on
every replayed minibatch and trains it once per ``reward_signal_steps_per_update`` agent
steps). The learned policy's return in the task's own reward, which GAIL never sees, must
rise from a random policy's (about 16) to most of the expert's (100; half of it with SAC,
slower from this reward alone): deterministic evaluation with the gateway's numpy actor,
one episode per agent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_imitation import CONFIGS, SAC_GAIL_CONFIG, evaluate, settings_with_demos, train
from benchmarks.bench_offline_bc import record_expert
from benchmarks.direct_rollout import task_spec
from trainer_server.demonstrations import load_demonstrations

#: PPO: agent steps at most, evaluated after every update (buffer_size 12000); the seeds
#: tried reached 80% of the expert's return within 72,000-108,000 steps
BUDGET = 144_000
EVAL_EVERY = 12_000
#: SAC: slower and more varied from the discriminator's reward alone (seeds 0-3 reached 80%
#: at 60,000, 36,000, not within 96,000 and 96,000 steps): the test asks for half the
#: expert's return (still about three times a random policy's), which they reached within
#: 42,000-78,000 steps
SAC_BUDGET = 120_000
SAC_EVAL_EVERY = 6_000


@pytest.mark.slow
def test_gail_alone_learns_to_balance_the_ball_like_the_expert(tmp_path: Path) -> None:
    learn_from_the_expert(tmp_path, CONFIGS["gail"], seed=0, budget=BUDGET, eval_every=EVAL_EVERY, fraction=0.8)


@pytest.mark.slow
def test_sac_with_gail_alone_learns_to_balance_the_ball_like_the_expert(tmp_path: Path) -> None:
    learn_from_the_expert(tmp_path, SAC_GAIL_CONFIG, seed=0, budget=SAC_BUDGET, eval_every=SAC_EVAL_EVERY, fraction=0.5)


def learn_from_the_expert(tmp_path: Path, config: Path, seed: int, budget: int, eval_every: int, fraction: float) -> None:
    """Records the expert, trains ``config`` (GAIL alone) until the deterministic return
    reaches ``fraction`` of the expert's (the test, for any seed)."""
    demos = tmp_path / "demos"
    record_expert(demos, episodes=12)
    loaded = load_demonstrations(demos, task_spec("3dball"))
    expert = float(loaded.episode_returns().mean())
    assert loaded.num_episodes >= 12 and expert > 95.0
    settings = settings_with_demos(config, demos)
    assert list(settings.reward_signals) == ["gail"]  # the task's reward is never seen
    curve = train(settings, seed=seed, budget=budget, eval_every=eval_every, stop_at=fraction * expert, demonstrations=loaded)
    random_return = evaluate(None, seed)  # uniformly random actions
    assert random_return < 0.3 * expert, random_return
    assert curve.returns[-1] >= fraction * expert, curve
