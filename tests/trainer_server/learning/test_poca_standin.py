"""POCA solves the stand-in's cooperative ``pushblockcollab``; independent PPO, same budget, does not.

The task (``unity_standin/tasks/coop_push.py``) rewards only the group (+1 each time its
two agents push the block together from the side away from the goal), as ML-Agents'
PushBlockCollab: independent PPO learns from the agents' own rewards and sees nothing, POCA learns from the group reward
with its group critic. The loop (``benchmarks.bench_poca.train``) is the gateway's actor
loop in small, with its real parts: the stand-in through mlagents-envs, ``StepBatch``
conversion, ``TrajectoryBuilder`` recording groupmates (the snapshot of a POCA learner asks
for them), and a ``NumpyPolicy`` built from every new snapshot. Settings are
``configs/poca/PushBlockCollab.yaml`` and ``PushBlockCollab_ppo.yaml`` (the same with PPO).
"""

from __future__ import annotations

import os

import pytest

from benchmarks.bench_poca import group_return, train

#: agent steps each run may use (by then POCA pushed 4.0 to 14.6 blocks per episode, seeds 0 to 4;
#: PPO 0.1 to 0.5, seeds 0 to 2)
BUDGET = 12_000
SEED = int(os.environ.get("TANDEM_TEST_SEED", "0"))


@pytest.mark.slow
def test_poca_solves_the_cooperative_task_and_independent_ppo_does_not():
    poca, learner = train("PushBlockCollab.yaml", BUDGET, SEED)
    assert learner.trace_counts["update"] == 1 and learner.trace_counts["process"] == 1
    ppo, _ = train("PushBlockCollab_ppo.yaml", BUDGET, SEED)
    # blocks pushed per group episode of 20 steps: a uniformly random policy pushes about 0.4
    assert group_return(poca) >= 2.0, (group_return(poca[:200]), group_return(poca))
    assert group_return(ppo) <= 1.0, group_return(ppo)
