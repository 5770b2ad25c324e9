"""Child process of test_devices.py: the data-parallel update against the single-device one.

Run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the flag must be set before
JAX starts, hence a process of its own): ``python data_parallel_check.py ppo|sac``. Trains
the same learner (same seed, same fragments) twice, on device 0 alone and split across
both devices, and prints one JSON line: the largest parameter and metric differences,
whether the sharded update's compiled code holds a cross-device all-reduce, and the
shardings the parameters came back with.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.config.loading import trainer_settings_from_dict
from trainer_server.learning import devices
from trainer_server.learning.registry import make_learner

SPEC = BehaviorSpec("DP?team=0", (ObservationSpec("v", (5,)),), ActionSpec(2, (3, 2)))
SETTINGS = {
    "ppo": {"batch_size": 32, "buffer_size": 128, "num_epoch": 2, "learning_rate": 3e-3},
    "sac": {"batch_size": 32, "buffer_size": 1000, "buffer_init_steps": 0, "steps_per_update": 4, "learning_rate": 3e-3},
}
UPDATES = 2


def settings(algorithm: str):
    return trainer_settings_from_dict(
        {
            "trainer_type": algorithm,
            "hyperparameters": SETTINGS[algorithm],
            "network_settings": {"hidden_units": 16, "num_layers": 1, "normalize": True},
            "time_horizon": 16,
        }
    )


def fragments(rng: np.random.Generator, n: int, t: int = 16) -> list[Trajectory]:
    a = SPEC.action_spec
    out = []
    for i in range(n):
        obs = [rng.normal(size=(t, *o.shape)).astype(np.float32) for o in SPEC.observations]
        out.append(
            Trajectory(
                instance=0,
                agent_id=i,
                observations=obs,
                next_observations=[rng.normal(size=o.shape).astype(np.float32) for o in SPEC.observations],
                continuous_actions=rng.normal(size=(t, a.continuous_size)).astype(np.float32),
                discrete_actions=np.stack([rng.integers(0, b, t) for b in a.discrete_branches], 1).astype(np.int32),
                log_probs=rng.normal(-2.0, 0.5, t).astype(np.float32),
                rewards=rng.normal(size=t).astype(np.float32),
                action_masks=np.zeros((t, a.mask_size), bool),
                policy_versions=np.zeros(t, np.int64),
                done=bool(i % 2),
                interrupted=False,
            )
        )
    return out


def run_updates(learner) -> list[dict[str, float]]:
    """``UPDATES`` updates, each on 8 new fragments (the same ones for every learner); their metrics."""
    rng = np.random.default_rng(7)
    metrics = []
    for _ in range(UPDATES):
        for fragment in fragments(rng, 8):
            learner.process_trajectory(fragment)
        assert learner.ready()
        metrics.append(learner.update())
        learner.discard_buffered()
    return metrics


def train(algorithm: str, placement: devices.Placement):
    """Two updates on the same fragments; returns (state, metrics, the compiled update's text
    when data-parallel, else "")."""
    previous = devices.use(placement)
    try:
        learner = make_learner(SPEC, settings(algorithm), seed=3)
        compiled, calls = learner._update_fn, []

        def recording(*args):
            calls.append(args)
            return compiled(*args)

        learner._update_fn = recording
        metrics = run_updates(learner)
        hlo = compiled.lower(*calls[-1]).compile().as_text() if placement.data_parallel else ""
        return learner._state, metrics, hlo
    finally:
        devices.use(previous)


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def main(algorithm: str) -> int:
    assert jax.device_count() == 2, "run with XLA_FLAGS=--xla_force_host_platform_device_count=2"
    initial = jax.tree_util.tree_leaves(make_learner(SPEC, settings(algorithm), seed=3)._state.params)
    single, single_metrics, _ = train(algorithm, devices.select("cpu", count=1))
    sharded, sharded_metrics, sharded_hlo = train(algorithm, devices.select("cpu", count=2))
    flat_single = jax.tree_util.tree_leaves(single.params)
    flat_sharded = jax.tree_util.tree_leaves(sharded.params)
    leaf = flat_sharded[0]
    print(
        json.dumps(
            {
                "param_diff": max_abs_diff(flat_single, flat_sharded),
                "changed": max_abs_diff(flat_single, initial),
                "metric_diff": max(
                    abs(m1[k] - m2[k]) / max(1.0, abs(m1[k]))
                    for m1, m2 in zip(single_metrics, sharded_metrics)
                    for k in m1
                ),
                "metric_names": sorted(single_metrics[-1]),
                "sharded_all_reduce": "all-reduce" in sharded_hlo,
                "param_devices": sorted(str(d) for d in leaf.sharding.device_set),
                "param_replicated": bool(leaf.sharding.is_fully_replicated),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
