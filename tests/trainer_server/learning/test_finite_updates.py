"""Updates stay finite: a non-finite result is skipped (PPO, SAC), the run stops loudly after
too many in a row, and no checkpoint is ever written with NaN or infinity (issue 19)."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from learning_helpers import trainer_settings
from trainer_server import behavior_run, stats
from trainer_server.checkpoints import CheckpointManager, NonFiniteStateError, load_file
from trainer_server.learning import shared
from trainer_server.learning.ppo import PPOLearner
from trainer_server.learning.sac import SACLearner

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_service_support import make_options, make_trajectory, prepare_results  # noqa: E402

SPEC = BehaviorSpec(name="B?team=0", observations=(ObservationSpec("v", (3,)),), action_spec=ActionSpec(1))


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_keep_finite_keeps_the_old_state_when_any_float_leaf_is_not_finite():
    old = {"w": jnp.ones(3), "n": jnp.asarray(2, jnp.int32)}
    fine, ok = shared.keep_finite(old, {"w": jnp.full(3, 2.0), "n": jnp.asarray(3, jnp.int32)})
    assert bool(ok) and float(fine["w"][0]) == 2.0 and int(fine["n"]) == 3
    kept, ok = shared.keep_finite(old, {"w": jnp.asarray([1.0, jnp.inf, 0.0]), "n": jnp.asarray(3, jnp.int32)})
    assert not bool(ok) and np.array_equal(kept["w"], np.ones(3)) and int(kept["n"]) == 2
    assert shared.SKIPPED_UPDATE_METRIC == stats.SKIPPED_UPDATES


def _poisoned(steps: int, reward: float, version: int = 1):
    t = make_trajectory(SPEC, steps, version=version)
    t.rewards[:] = reward
    return t


def test_ppo_skips_an_update_whose_result_is_not_finite_then_trains_on_clean_data():
    learner = PPOLearner(SPEC, trainer_settings("ppo", buffer_size=16, batch_size=8, hidden_units=8, num_layers=1,
                                                time_horizon=16), seed=0)
    before = _leaves(learner.state_dict()["params"])
    learner.process_trajectory(_poisoned(16, 3e38))
    metrics = learner.update()
    assert metrics[shared.SKIPPED_UPDATE_METRIC] == 1.0
    after = learner.state_dict()
    assert all(np.array_equal(a, b) for a, b in zip(before, _leaves(after["params"])))
    assert all(np.isfinite(x).all() for x in _leaves(after["opt_state"]) if np.issubdtype(x.dtype, np.inexact))
    learner.process_trajectory(make_trajectory(SPEC, 16))
    metrics = learner.update()
    assert metrics[shared.SKIPPED_UPDATE_METRIC] == 0.0
    assert not all(np.array_equal(a, b) for a, b in zip(before, _leaves(learner.state_dict()["params"])))


def test_sac_skips_gradient_steps_whose_result_is_not_finite():
    learner = SACLearner(SPEC, trainer_settings("sac", batch_size=8, buffer_init_steps=0, hidden_units=8,
                                                num_layers=1), seed=0, steps_per_call=4)
    before = learner.state_dict()
    learner.process_trajectory(_poisoned(32, 3e38))
    assert learner.ready()
    metrics = learner.update()
    assert metrics[shared.SKIPPED_UPDATE_METRIC] > 0
    after = learner.state_dict()
    for key in ("params", "target", "opt_state"):
        assert all(np.isfinite(x).all() for x in _leaves(after[key]) if np.issubdtype(x.dtype, np.inexact)), key
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(before["params"]), _leaves(after["params"])))


def test_a_checkpoint_with_nan_is_never_written(tmp_path):
    manager = CheckpointManager(tmp_path, "B", keep=3)
    manager.save(10, {"params": {"w": np.ones(2, np.float32)}}, {"step": 10}, 0.0)
    with pytest.raises(NonFiniteStateError, match="params/w"):
        manager.save(20, {"params": {"w": np.array([1.0, np.nan], np.float32)}}, {"step": 20}, 0.0)
    assert manager.existing_steps() == [10]
    assert load_file(manager.latest_path)[1]["step"] == 10


def test_a_run_whose_updates_keep_failing_stops_with_an_error_and_finite_checkpoints(tmp_path, monkeypatch):
    from trainer_server.app import TrainingApp
    from trainer_server.timers import HierarchicalTimer

    monkeypatch.setattr(behavior_run, "MAX_CONSECUTIVE_SKIPPED_UPDATES", 3)
    options = make_options(tmp_path / "results", buffer_size=16, time_horizon=16, max_steps=100_000,
                           checkpoint_interval=16)
    results = prepare_results(options)
    app = TrainingApp(options, results, HierarchicalTimer())
    app.start()
    try:
        app.register_behavior(SPEC)
        # submitted past the service's bounds (the app trusts its caller): updates are not finite
        for seq in range(1, 6):
            if app.finished.is_set():
                break
            try:
                # acted by the current version (on-policy: one update per chunk)
                app.submit("gw", seq, SPEC.name, [_poisoned(16, 3e38, version=seq)], [], timeout=120)
            except Exception:
                break
        assert app.wait(300), "the run did not stop"
    finally:
        app.stop()
        app.join(60)
    assert isinstance(app.error, behavior_run.TrainingDivergedError)
    assert "3 updates in a row were not finite" in str(app.error)
    folder = results.behavior_dir(SPEC.name)
    for path in folder.glob("*.npz"):
        state, _ = load_file(path)
        assert all(np.isfinite(x).all() for x in _leaves(state["params"]))
