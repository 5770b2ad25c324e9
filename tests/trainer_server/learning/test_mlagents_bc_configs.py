"""ML-Agents' example configs with ``behavioral_cloning`` load, and train with a demonstration of
their environment's spec (``demo_path`` rewritten to a file made here).

Their environments' specs are ML-Agents' (Crawler: 172 observations, 20 continuous actions);
here the learner is fed trajectories of that shape directly (tests/e2e/test_crawler_configs.py
trains the same configs through the real processes on the stand-in's ``crawler`` task).
Their reward signals train as configured (Crawler's ``gail`` on the same demonstration);
one this build could not train would be swapped for ``extrinsic``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from common.demonstration_file import DemonstrationWriter, Record
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from tests.trainer_server.config.config_helpers import SHARED_CONFIGS, SHARED_FILES, needs_shared
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import RewardSignalSettings
from trainer_server.config.support import unsupported_features
from trainer_server.learning.registry import make_learner

#: ML-Agents' example environments' specs (Learning-Environment-Examples)
EXAMPLE_SPECS = {
    "Crawler": BehaviorSpec("Crawler?team=0", (ObservationSpec("obs", (172,)),), ActionSpec(continuous_size=20)),
}
STEPS = 300


def _bc_configs() -> list[tuple[Path, str]]:
    found = []
    for path in SHARED_FILES:
        options = load_run_options(path)
        found += [(path, name) for name, settings in options.behaviors.items() if settings.behavioral_cloning is not None]
    return found


def _demo(path: Path, spec: BehaviorSpec, rng: np.random.Generator) -> Path:
    size, a = spec.observations[0].shape[0], spec.action_spec
    with DemonstrationWriter(path, spec) as writer:
        for _ in range(3):
            records = [
                Record((rng.normal(size=size).astype(np.float32),), 0.1, t == 40, False,
                       rng.uniform(-1, 1, a.continuous_size).astype(np.float32), np.zeros(a.num_branches, np.int32))
                for t in range(41)
            ]
            writer.write_episode(records)
    return path


def _trajectory(spec: BehaviorSpec, t: int, rng: np.random.Generator) -> Trajectory:
    a, size = spec.action_spec, spec.observations[0].shape[0]
    return Trajectory(
        instance=0, agent_id=0,
        observations=[rng.normal(size=(t, size)).astype(np.float32)],
        next_observations=[rng.normal(size=(size,)).astype(np.float32)],
        continuous_actions=rng.normal(size=(t, a.continuous_size)).astype(np.float32),
        discrete_actions=np.zeros((t, a.num_branches), np.int32),
        log_probs=np.full((t,), -20.0, np.float32),
        rewards=np.full((t,), 0.1, np.float32),
        action_masks=np.zeros((t, a.mask_size), bool),
        policy_versions=np.zeros((t,), np.int64),
        done=False,
    )


@needs_shared
def test_the_shared_configs_with_behavioral_cloning_are_found() -> None:
    assert {name for _, name in _bc_configs()} >= {"Crawler"}


@needs_shared
@pytest.mark.parametrize(("path", "behavior"), _bc_configs() if SHARED_FILES else [], ids=lambda v: getattr(v, "name", v))
def test_config_trains_a_few_hundred_steps_with_a_matching_demonstration(tmp_path: Path, path: Path, behavior: str) -> None:
    spec = EXAMPLE_SPECS.get(behavior)
    if spec is None:
        pytest.skip(f"no known spec for ML-Agents' {behavior} example")
    rng = np.random.default_rng(0)
    demo = str(_demo(tmp_path / f"{behavior}.demo", spec, rng))
    settings = load_run_options(path).behaviors[behavior]
    signals = {
        name: (dataclasses.replace(signal, demo_path=demo) if getattr(signal, "demo_path", None) else signal)
        for name, signal in settings.reward_signals.items()
    }
    settings = dataclasses.replace(
        settings,
        reward_signals=signals,
        behavioral_cloning=dataclasses.replace(settings.behavioral_cloning, demo_path=demo),
        # a few hundred steps: updates as soon as they are there
        hyperparameters=dataclasses.replace(settings.hyperparameters, buffer_size=STEPS, batch_size=100),
    )
    if any(key.startswith("reward_signals.") for key, _ in unsupported_features(settings)):
        settings = dataclasses.replace(settings, reward_signals={"extrinsic": RewardSignalSettings()})
    assert unsupported_features(settings) == []
    learner = make_learner(spec, settings, seed=0)
    for _ in range(STEPS // 100):
        learner.process_trajectory(_trajectory(spec, 100, rng))
    assert learner.ready()
    metrics = learner.update()
    assert np.isfinite(metrics["Losses/Pretraining Loss"]) and metrics["Losses/Pretraining Loss"] > 0
    if "gail" in settings.reward_signals:  # the discriminator trained on the demonstration too
        assert np.isfinite(metrics["Losses/GAIL Loss"]) and 0.0 < metrics["Policy/GAIL Expert Estimate"] < 1.0
    assert learner.step == STEPS


#: every shared ML-Agents config with a learned reward signal or behavioral cloning -> the test
#: that trains it for a few hundred steps
SIGNAL_CONFIG_TESTS = {
    "imitation/Crawler.yaml": "tests/e2e/test_crawler_configs.py (gail + BC on the stand-in's crawler task) and "
    "test_config_trains_a_few_hundred_steps_with_a_matching_demonstration",
    "imitation/Hallway.yaml": "tests/e2e/test_memory_configs.py (memory with gail and BC on the stand-in's hallway)",
    "ppo/Pyramids.yaml": "test_reward_signals.py::test_mlagents_pyramids_config_is_supported_and_trains_on_the_standin_task",
}


@needs_shared
def test_every_shared_config_with_learned_signals_or_cloning_has_a_training_test() -> None:
    """A config added to shared/ with ``gail``, ``curiosity``, ``rnd`` or ``behavioral_cloning``
    fails here until a test trains it."""
    found = set()
    for path in SHARED_FILES:
        for settings in load_run_options(path).behaviors.values():
            if settings.behavioral_cloning is not None or set(settings.reward_signals) - {"extrinsic"}:
                found.add(str(path.relative_to(SHARED_CONFIGS)))
    assert found == set(SIGNAL_CONFIG_TESTS)
