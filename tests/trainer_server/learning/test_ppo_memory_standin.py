"""PPO with memory solves the stand-in's ``hallway`` task; the same PPO without memory cannot.

The task (``unity_standin/tasks/hallway.py``) shows a cue only at the first of an
episode's four decisions, and the goal picked at the last one pays +1 if it matches the
cue, -1 if not: a feed-forward policy sees the same last observation whatever the cue, so
its mean reward stays about 0. The loop (``benchmarks.bench_memory_task.train``) is the
gateway's actor loop in small, with its real parts: the stand-in through mlagents-envs,
``StepBatch`` conversion, the per-agent ``AgentMemories`` (forgotten at terminal steps),
``TrajectoryBuilder`` recording the memories each step acted from, and a ``NumpyPolicy``
built from every new snapshot. Settings are ``configs/ppo/Hallway.yaml`` and
``Hallway_no_memory.yaml``, with the same budget of agent steps.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_memory_task import SOLVED, WINDOW, train

#: agent steps each run may use (the memory run was at a mean of 0.9 by about 2k, 1.0 by 4k)
BUDGET = 6_000


@pytest.mark.slow
def test_ppo_with_memory_solves_the_hallway_and_without_memory_does_not():
    with_memory, learner = train("Hallway.yaml", BUDGET)
    assert learner.trace_counts["update"] == 1 and learner.trace_counts["process"] == 1
    without, _ = train("Hallway_no_memory.yaml", BUDGET)
    first, last = [r for _, r in with_memory[:WINDOW]], [r for _, r in with_memory[-WINDOW:]]
    assert np.mean(last) >= SOLVED, (np.mean(first), np.mean(last))
    assert abs(np.mean([r for _, r in without[-WINDOW:]])) < 0.3
