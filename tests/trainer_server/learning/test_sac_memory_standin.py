"""SAC with memory solves the stand-in's ``hallway`` task; the same SAC without memory cannot.

The task (``unity_standin/tasks/hallway.py``) shows a cue only at the first of an
episode's four decisions, and the goal picked at the last one pays +1 if it matches the
cue, -1 if not: a feed-forward policy sees the same last observation whatever the cue, so
its mean reward stays about 0. The loop is ``benchmarks.bench_memory_task.train`` (the
gateway actor's parts in one process: the stand-in through mlagents-envs, per-agent
``AgentMemories``, ``TrajectoryBuilder`` recording the memories each step acted from, a
``NumpyPolicy`` from every new snapshot), here with ``SACLearner`` and
``configs/sac/Hallway.yaml`` / ``Hallway_no_memory.yaml``, the same budget of agent steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_memory_task import SOLVED, WINDOW, train

#: agent steps each run may use (5 seeds with a busy core beside them solved it, a mean of
#: 0.9 over 200 episodes, by 1,344-1,472 steps; a mean of 0.97-1.0 at 4,000)
BUDGET = 3_000


@pytest.mark.slow
def test_sac_with_memory_solves_the_hallway_and_without_memory_does_not():
    with_memory, learner = train("sac/Hallway.yaml", BUDGET)
    assert learner.trace_counts["update"] == 1  # one compilation for every gradient step
    assert learner.update_steps >= (BUDGET - 256) // 4 - 1  # steps_per_update 4 after buffer_init_steps 256
    without, _ = train("sac/Hallway_no_memory.yaml", BUDGET)
    first, last = [r for _, r in with_memory[:WINDOW]], [r for _, r in with_memory[-WINDOW:]]
    assert np.mean(last) >= SOLVED, (np.mean(first), np.mean(last))
    assert abs(np.mean([r for _, r in without[-WINDOW:]])) < 0.3
