"""``app.steps_by_version``: the agent steps per acting policy version of a chunk's trajectories
(the collection's accounting), with its fast path for one version per trajectory."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from trainer_server.app import steps_by_version


def _counted(trajectories) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in trajectories:
        for v in np.asarray(t.policy_versions).tolist():
            out[v] = out.get(v, 0) + 1
    return out


def test_one_version_per_trajectory_and_mixed_ones_count_every_step():
    rng = np.random.default_rng(0)
    trajectories = [SimpleNamespace(policy_versions=np.full(n, v, np.int64)) for n, v in ((5, 3), (1, 4), (7, 3))]
    trajectories += [SimpleNamespace(policy_versions=rng.integers(2, 6, 40).astype(np.int64)) for _ in range(3)]
    got = steps_by_version(trajectories)
    assert got == _counted(trajectories)
    assert all(isinstance(k, int) and isinstance(v, int) for k, v in got.items())
    assert steps_by_version([]) == {}
