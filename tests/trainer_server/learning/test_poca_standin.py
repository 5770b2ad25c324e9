"""POCA solves the stand-in's cooperative ``pushblockcollab``; independent PPO, same budget, does not.

The task (``unity_standin/tasks/coop_push.py``) rewards only the group (+1 when its two
agents push the block together to the end), as ML-Agents' PushBlockCollab: independent PPO
learns from the agents' own rewards and sees nothing, POCA learns from the group reward
with its group critic. The loop (``benchmarks.bench_poca.train``) is the gateway's actor
loop in small, with its real parts: the stand-in through mlagents-envs, ``StepBatch``
conversion, ``TrajectoryBuilder`` recording groupmates (the snapshot of a POCA learner asks
for them), and a ``NumpyPolicy`` built from every new snapshot. Settings are
``configs/poca/PushBlockCollab.yaml`` and ``PushBlockCollab_ppo.yaml`` (the same with PPO).
"""

from __future__ import annotations

import os

import pytest

from benchmarks.bench_poca import success_rate, train

#: agent steps each run may use (POCA: a share of 0.9 after 8k to 12k)
BUDGET = 16_000
SEED = int(os.environ.get("TANDEM_TEST_SEED", "0"))


@pytest.mark.slow
def test_poca_solves_the_cooperative_task_and_independent_ppo_does_not():
    poca, learner = train("PushBlockCollab.yaml", BUDGET, SEED)
    assert learner.trace_counts["update"] == 1 and learner.trace_counts["process"] == 1
    ppo, _ = train("PushBlockCollab_ppo.yaml", BUDGET, SEED)
    assert success_rate(poca) >= 0.8, (success_rate(poca[:200]), success_rate(poca))
    assert success_rate(ppo) <= 0.5, success_rate(ppo)  # a uniformly random policy scores about 0.2
