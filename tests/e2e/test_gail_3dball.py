"""Learning test: GAIL without extrinsic reward learns the demonstrated behaviour on 3DBall.

The scripted expert is recorded through the real gateway (``--heuristic 3DBall
--record-demo``); PPO then trains ``configs/imitation/3DBall_gail.yaml`` (reward signals:
``gail`` alone) in process on the stand-in's 3DBall. The learned policy's return in the
task's own reward, which GAIL never sees, must rise from a random policy's to most of the
expert's (deterministic evaluation with the gateway's numpy actor, one episode per agent).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_imitation import CONFIGS, settings_with_demos, train
from benchmarks.bench_offline_bc import record_expert
from benchmarks.direct_rollout import task_spec
from trainer_server.demonstrations import load_demonstrations

#: agent steps at most; evaluated after every PPO update (buffer_size 12000)
BUDGET = 144_000
EVAL_EVERY = 12_000


@pytest.mark.slow
def test_gail_alone_learns_to_balance_the_ball_like_the_expert(tmp_path: Path) -> None:
    learn_from_the_expert(tmp_path, seed=0)


def learn_from_the_expert(tmp_path: Path, seed: int) -> None:
    """Records, trains with GAIL alone and checks the returns (the test, for any seed)."""
    demos = tmp_path / "demos"
    record_expert(demos, episodes=12)
    loaded = load_demonstrations(demos, task_spec("3dball"))
    expert = float(loaded.episode_returns().mean())
    assert loaded.num_episodes >= 12 and expert > 95.0
    settings = settings_with_demos(CONFIGS["gail"], demos)
    assert list(settings.reward_signals) == ["gail"]  # the task's reward is never seen
    curve = train(settings, seed=seed, budget=BUDGET, eval_every=EVAL_EVERY, stop_at=0.8 * expert, demonstrations=loaded, arm="gail")
    random_return = curve.returns[0]
    assert random_return < 0.3 * expert, curve
    assert curve.returns[-1] >= 0.8 * expert, curve
