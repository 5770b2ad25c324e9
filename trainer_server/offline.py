"""``tandem-trainer CONFIG --demos PATH``: behavioral cloning from demonstrations alone.

Why: ML-Agents removed its ``offline_bc`` trainer; its users still ask to train a policy
from recorded demonstrations without running the environment. Here the trainer reads the
``.demo`` files of PATH (a file or a folder; files are grouped by the behavior they
record), and for each behavior trains its ``trainer_type``'s policy (PPO's Gaussian or
SAC's squashed one, so that the result can go on with ``--initialize-from`` under RL) with
the behavioral cloning update of ``trainer_server.learning.behavioral_cloning``, and no
gateway. The run writes ML-Agents' usual results folder: configuration, TensorBoard
(``Losses/Pretraining Loss``), checkpoints, ``training_status.json``, ONNX models.

Counting: an update is one BC update (``num_epoch`` passes over the demonstrations,
``behavioral_cloning`` settings or their defaults, strength 1 unless given); it counts
the demonstration samples it trained on as steps, so ``max_steps``, ``summary_freq``,
``checkpoint_interval`` and the ``steps`` of the learning rate's decay are in samples.
With ``normalize``, the observation normalizer is set from every demonstration step first.
"""

from __future__ import annotations

import dataclasses
import random
import time
import zlib
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from common.demonstration_file import DemonstrationError, DemonstrationFile, demonstration_files, read_demonstration_file
from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.behavior_run import BehaviorRun, RunContext
from trainer_server.collection import CollectionControl
from trainer_server.config.schema import BehavioralCloningSettings, NotSupportedError, RunOptions, TrainerSettings
from trainer_server.config.support import check_behavior_supported
from trainer_server.demonstrations import demonstrations_of
from trainer_server.learning import behavioral_cloning
from trainer_server.learning import normalizer as norm_mod
from trainer_server.learning.registry import make_learner
from trainer_server.results import RunDirectoryError, RunResults
from trainer_server.timers import HierarchicalTimer

EXIT_OK = 0
EXIT_FAILED = 1

_log = get_logger("trainer_server.offline")


class OfflineLearner:
    """A PPO or SAC learner trained by behavioral cloning only (implements ``Learner``).

    Checkpoints hold the inner learner's state plus the cloning optimizer's, so
    ``--resume`` continues the offline run and ``--initialize-from`` starts RL from it.

    Args:
        inner: a new learner of the behavior's ``trainer_type``.
        cloning: its BC over the demonstrations.
    """

    on_policy = False
    buffered_steps = 0

    def __init__(self, inner: Any, cloning: behavioral_cloning.BehavioralCloning) -> None:
        self.inner = inner
        self.cloning = cloning
        #: demonstration samples one update trains on (its step count)
        self.steps_per_update = cloning.num_epoch * cloning.num_batches * cloning.batch_rows

    @property
    def step(self) -> int:
        return int(self.inner.step)

    @step.setter
    def step(self, value: int) -> None:
        self.inner.step = value

    def fit_normalizer(self) -> None:
        """Folds every demonstration observation into the normalizer (when ``normalize``)."""
        if not self.inner.architecture().normalize:
            return
        observations = [jnp.asarray(o) for o in self.cloning.demonstrations.observations]
        mask = jnp.ones((self.cloning.demonstrations.num_steps,), bool)
        state = self.inner._state  # PPO and SAC both keep ``normalizer`` and ``params["actor"]`` there
        self.inner._state = state._replace(normalizer=norm_mod.update(state.normalizer, observations, mask))
        if hasattr(self.inner, "_acting_normalizer"):  # PPO exports the statistics its snapshots act with
            self.inner._acting_normalizer = self.inner._state.normalizer

    def discard_buffered(self) -> int:
        return 0

    def process_trajectory(self, trajectory: Trajectory) -> None:
        raise ValueError("offline behavioral cloning takes no experience")

    def ready(self) -> bool:
        return True

    def update(self) -> dict[str, float]:
        """One BC update; the step count grows by the samples it trained on."""
        state = self.inner._state
        params, metrics = behavioral_cloning.after_rl_update(
            self.cloning, state.params, state.normalizer, self.inner.architecture().normalize, self.step
        )
        self.inner._state = state._replace(params=params)
        self.step = self.step + self.steps_per_update
        metrics["Policy/Learning Rate"] = self.cloning.learning_rate(self.step)
        return metrics

    def architecture(self):
        return self.inner.architecture()

    def policy_parameters(self):
        return self.inner.policy_parameters()

    def state_dict(self) -> dict[str, Any]:
        return {**self.inner.state_dict(), **behavioral_cloning.state_entry(self.cloning)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        behavioral_cloning.load_entry(self.cloning, state)

    def load_weights(self, state: dict[str, Any]) -> None:
        self.inner.load_weights(state)

    def save_extra(self, folder: Path) -> None:
        """Nothing beside the checkpoint: the demonstrations are the data."""

    def load_extra(self, folder: Path) -> None:
        """Nothing to load beside the checkpoint."""


def group_by_behavior(demos_path: str | Path) -> dict[str, list[DemonstrationFile]]:
    """The ``.demo`` files of ``demos_path`` (a file or a folder) by the behavior they record.

    Raises:
        DemonstrationError: a file cannot be read, or none is there.
    """
    groups: dict[str, list[DemonstrationFile]] = {}
    for path in demonstration_files(demos_path):
        demo = read_demonstration_file(path)
        groups.setdefault(demo.spec.brain_name, []).append(demo)
    return groups


def cloning_settings(settings: TrainerSettings, demo_path: str) -> TrainerSettings:
    """``settings`` with a ``behavioral_cloning`` section for ``demo_path``: the behavior's own
    (its strength, batch size, epochs, ``steps``) when it has one, else the defaults."""
    section = settings.behavioral_cloning
    section = BehavioralCloningSettings(demo_path=demo_path) if section is None else dataclasses.replace(section, demo_path=demo_path)
    return dataclasses.replace(settings, behavioral_cloning=section)


def _seed(options: RunOptions, name: str) -> int:
    seed = options.env_settings.seed
    seed = seed if seed >= 0 else random.SystemRandom().randrange(2**31)
    return (seed + zlib.crc32(name.encode())) % (2**31)


def make_offline_learner(spec: BehaviorSpec, settings: TrainerSettings, demos: list[DemonstrationFile], seed: int) -> OfflineLearner:
    """A behavior's offline learner over ``demos`` (already checked against ``spec``)."""
    plain = dataclasses.replace(settings, behavioral_cloning=None)
    inner = make_learner(spec, plain, seed)
    with_bc = cloning_settings(settings, ", ".join(str(d.path) for d in demos))
    learning_rate = float(settings.hyperparameters.learning_rate)  # type: ignore[union-attr]
    cloning = behavioral_cloning.BehavioralCloning(
        spec, with_bc, inner.architecture(), learning_rate, inner._state.params["actor"], seed,
        demonstrations=demonstrations_of(demos, spec),
    )
    learner = OfflineLearner(inner, cloning)
    learner.fit_normalizer()
    return learner


def run_offline(options: RunOptions, demos_path: str | Path) -> int:
    """Trains every behavior found in ``demos_path`` by behavioral cloning, without a gateway.

    Returns:
        0 when every behavior reached ``max_steps`` (or was stopped after saving), 1 when
        the run could not start (the reason is logged).
    """
    cs = options.checkpoint_settings
    try:
        groups = group_by_behavior(demos_path)
    except DemonstrationError as e:
        _log.error(f"--demos: {e}")
        return EXIT_FAILED
    try:
        for name in groups:
            check_behavior_supported(name, options.behavior_settings(name), options.config_path)
    except NotSupportedError as e:
        _log.error(str(e))
        return EXIT_FAILED
    missing = sorted(set(options.behaviors) - set(groups))
    if missing:
        _log.warning("behaviors of the configuration without demonstrations are not trained", behaviors=missing)
    timer = HierarchicalTimer()
    try:
        results = RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force, inference=False)
        results.write_configuration(options)
    except RunDirectoryError as e:
        _log.error(str(e), run_id=cs.run_id)
        return EXIT_FAILED
    context = RunContext(
        run_id=cs.run_id, results=results, timer=timer, inference=False, resume=cs.resume,
        initialize_from=cs.initialize_from, started=time.monotonic(), collection=CollectionControl(),
    )
    runs: list[BehaviorRun] = []
    try:
        for brain, demos in groups.items():
            spec = dataclasses.replace(demos[0].spec, name=f"{brain}?team=0")
            settings = options.behavior_settings(brain)
            learner = make_offline_learner(spec, settings, demos, _seed(options, spec.name))
            _log.info(
                "offline behavioral cloning", behavior=spec.name, files=[str(d.path) for d in demos],
                steps=learner.cloning.demonstrations.num_steps, samples_per_update=learner.steps_per_update,
                max_steps=settings.max_steps,
            )
            runs.append(BehaviorRun(spec, settings, learner, context, lambda snapshot: None))  # type: ignore[arg-type]
    except (DemonstrationError, ValueError) as e:
        _log.error(f"--demos: {e}")
        return EXIT_FAILED
    try:
        while not all(run.done for run in runs):
            for run in runs:
                if not run.done:
                    run.update_offline()
    except KeyboardInterrupt:
        _log.info("stopping: saving final checkpoints")
    finally:
        for run in runs:
            run.finish()
        results.write_training_status()
        results.write_timers(timer)
    _log.info("training complete", run_id=cs.run_id, results=str(results.run_dir))
    return EXIT_OK


__all__ = ["OfflineLearner", "cloning_settings", "group_by_behavior", "make_offline_learner", "run_offline"]
