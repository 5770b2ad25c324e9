"""One behavior's life in a run: learner, policy version, snapshot, statistics and results.

Why: ``TrainingApp`` takes experience in and owns the training thread; what happens to one
behavior's experience (learner steps and updates, snapshots, summaries, checkpoints,
ONNX models, restore) is the same for every behavior and every algorithm, and lives here.
Everything algorithm-specific stays behind the Learner protocol
(``trainer_server.learning.learner``): this module never names an algorithm.

A ``BehaviorRun`` is touched by the training thread only, except ``spec`` and
``snapshot``: a published snapshot is never modified (each update builds a new one), so
gRPC handler threads may read the latest one at any time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from common.architecture import PolicyArchitecture, make_snapshot
from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server import checkpoints as ckpt
from trainer_server import stats as stats_mod
from trainer_server.collection import CollectionControl, coupling_for, inference_coupling
from trainer_server.learning.learner import Learner
from trainer_server.onnx_export import export_policy_bytes
from trainer_server.results import RunResults, behavior_folder_name, to_plain
from trainer_server.config.schema import TrainerSettings
from trainer_server.timers import HierarchicalTimer
from tandem.v1 import trainer_pb2

#: the events keep the component they had before BehaviorRun left app.py (log filters, console lines)
_log = get_logger("trainer_server.app")

#: ``listener(snapshot)``: called on the training thread with every new snapshot.
SnapshotListener = Callable[[trainer_pb2.PolicySnapshot], None]

#: consecutive skipped (non-finite) updates after which a behavior cannot continue
MAX_CONSECUTIVE_SKIPPED_UPDATES = 10


class TrainingDivergedError(RuntimeError):
    """A behavior's updates keep producing non-finite values: the run cannot continue."""


@dataclass(frozen=True)
class RunContext:
    """What every behavior of a run shares.

    Attributes:
        run_id: ``--run-id`` (recorded in checkpoint metadata).
        results: the run's results folder.
        timer: the run's hierarchical timer (``timers.json``).
        inference: ``--inference``: no updates, no checkpoints; steps are counted and
            summaries written past ``max_steps``, as ML-Agents does ("Not Training.").
        resume: ``--resume``: restore each behavior's latest checkpoint exactly.
        initialize_from: ``--initialize-from``: a previous run-id whose weights start
            each behavior (unless its ``init_path`` is set).
        started: ``time.monotonic()`` at the run's start (the console's elapsed time).
        collection: the run's flow control (grants to gateways); each behavior registers
            its coupling there and reports its updates and its end.
        slow_updates_s: a sleep after every update (``--slow-updates``: a slow trainer, emulated).
    """

    run_id: str
    results: RunResults
    timer: HierarchicalTimer
    inference: bool
    resume: bool
    initialize_from: str | None
    started: float
    collection: CollectionControl = field(default_factory=CollectionControl)
    slow_updates_s: float = 0.0


def extrinsic_strength(settings: TrainerSettings) -> float:
    """``reward_signals.extrinsic.strength``; 1.0 when the behavior has no extrinsic signal."""
    extrinsic = settings.reward_signals.get("extrinsic")
    return 1.0 if extrinsic is None else extrinsic.strength


class BehaviorRun:
    """One behavior: its learner and everything the run records about it.

    Args:
        spec: the behavior's spec (as first registered).
        settings: the behavior's trainer settings.
        learner: a new learner for ``spec``; restored here from ``--resume``,
            ``init_path`` or ``--initialize-from``.
        context: what the run's behaviors share.
        publish: called (on the training thread) with each snapshot an update produced.
    """

    def __init__(
        self,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        learner: Learner,
        context: RunContext,
        publish: SnapshotListener,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.settings = settings
        self.learner = learner
        self._context = context
        self._publish = publish
        self._folder_name = behavior_folder_name(spec.name)
        self._extrinsic_strength = extrinsic_strength(settings)
        self.stats = stats_mod.BehaviorStats()
        folder = context.results.behavior_dir(spec.name)
        self.checkpoints = ckpt.CheckpointManager(
            folder, self._folder_name, settings.keep_checkpoints, adopt_existing=context.resume
        )
        self.last_reward: float | None = None
        #: updates skipped in a row because their result was not finite
        self.skipped_updates = 0
        restored_from = self._restore()
        resumed = restored_from is not None and context.resume
        self.version = self._resumed_version() if resumed else 1
        #: the step of the checkpoint on disk (-1: none written by or resumed into this run)
        self.saved_step = learner.step if resumed else -1
        self.done = not context.inference and learner.step >= settings.max_steps
        #: ``--inference``: agent steps acted (from the restored checkpoint's step); the
        #: learner's own step stays where the checkpoint left it
        self.inference_step = learner.step
        self._progress = _FirstSummaryProgress(spec.name, learner.step, settings.summary_freq)
        #: how gateways' collection follows this learner, and which experience is still trained
        self.coupling = (
            inference_coupling() if context.inference else coupling_for(settings, learner.on_policy)
        )
        #: the policy versions that acted the last step of the episodes since the last summary
        self._episode_versions: tuple[int, int] | None = None
        self._final_model: Path | None = None  # the model "Copied" was printed for
        #: the latest snapshot's architecture and parameters, for the checkpoint's ONNX model
        self._architecture: PolicyArchitecture
        self._parameters: dict[str, np.ndarray]
        self.snapshot = self._build_snapshot()
        if context.inference and restored_from is None:
            _log.warning(
                "--inference without --resume, --initialize-from or init_path: acting with an untrained policy",
                behavior=spec.name,
            )
        context.collection.add_behavior(
            spec.name, self.coupling, self.version, learner.step, finished=self.done,
            held=learner.buffered_steps if self.coupling.per_version else 0,
        )
        stats_mod.log_hyperparameters(self._folder_name, to_plain(settings))
        self.tensorboard = stats_mod.TensorBoardWriter(folder)
        self.tensorboard.write_text("Hyperparameters", _settings_markdown(settings), learner.step)
        _log.info(
            "new behavior",
            behavior=spec.name,
            trainer_type=settings.trainer_type,
            observations=[list(o.shape) for o in spec.observations],
            continuous_actions=spec.action_spec.continuous_size,
            discrete_branches=list(spec.action_spec.discrete_branches),
            step=learner.step,
            restored_from=str(restored_from) if restored_from else None,
        )

    @property
    def steps(self) -> int:
        """Agent steps so far: the learner's, or in ``--inference`` the steps acted."""
        return self.inference_step if self._context.inference else self.learner.step

    # ------------------------------------------------------------------ start

    def _restore(self) -> Path | None:
        """Loads ``--resume`` (exact state) or ``init_path``/``--initialize-from`` (weights, step 0).

        Returns:
            the checkpoint it was restored from, or None when it starts fresh.
        """
        context = self._context
        if context.resume:
            latest = self.checkpoints.latest_path
            if not latest.is_file():
                _log.warning("--resume: no checkpoint for this behavior, starting it fresh", behavior=self.name)
                return None
            state, meta = ckpt.load_file(latest)
            owner = meta.get("behavior")
            if owner not in (None, self.name):  # another behavior wrote into this folder
                raise ckpt.CheckpointError(f"{latest}: belongs to behavior {owner!r}, not {self.name!r}")
            self.learner.load_state_dict(state)
            self.learner.load_extra(latest.parent)
            return latest
        init: Path | None = None
        if self.settings.init_path:
            init = Path(self.settings.init_path)
        elif context.initialize_from:
            init = context.results.run_dir.parent / context.initialize_from / self._folder_name
        if init is None:
            return None
        state, _ = ckpt.load_file(init)
        self.learner.load_weights(state)
        return init

    def _resumed_version(self) -> int:
        """The policy version after the resumed run's last one (training_status.json)."""
        return int(self._context.results.behavior_status(self.name).get("policy_version", 0)) + 1

    def _build_snapshot(self) -> trainer_pb2.PolicySnapshot:
        """The snapshot of the learner's current policy, built once per version."""
        self._architecture = self.learner.architecture()
        self._parameters = self.learner.policy_parameters()
        return make_snapshot(
            self.name,
            self.version,
            self._architecture,
            self._parameters,
            time_horizon=self.settings.time_horizon,
            # ML-Agents acts with the mode only when asked (network_settings.deterministic or
            # --deterministic), in training and in --inference alike; otherwise it samples
            deterministic=self.settings.network_settings.deterministic,
        )

    # ------------------------------------------------------------------ experience (training thread)

    def add_stats(self, stats: list[tuple[str, float, stats_mod.Aggregation]]) -> None:
        """Records a chunk's side-channel statistics (also in ``--inference``)."""
        for key, value, aggregation in stats:
            self.stats.add(key, value, aggregation)

    def consume(self, trajectories: list[Trajectory], gateway_id: str, sequence: int) -> None:
        """Feeds a chunk's trajectories to the learner, updating whenever it is ready.

        Steps acted by a policy the coupling no longer trains on (``self.coupling``: an
        older version on-policy, more than ``max_policy_lag`` versions in ``async``) are
        dropped and counted (``Policy/Stale Steps Dropped``); so are, on-policy, the steps
        still buffered after an update. ``Policy/Lag`` is the mean age, in versions, of the
        steps trained. Summaries and checkpoints follow the steps; trajectories after
        ``max_steps`` are dropped. ``gateway_id``/``sequence`` only name the chunk in logs.
        In ``--inference`` the trajectories only count (``_observe_inference``).

        A learner with ``process_trajectories`` (``learner.BatchLearner``) takes the fresh
        trajectories in batches, each ending with the trajectory that makes an update, a
        summary, a checkpoint or ``max_steps`` due (``_batch_budget``): the same learner
        states, updates and records as one by one, in far fewer compiled calls.
        """
        if self._context.inference:
            self._observe_inference(trajectories)
            return
        if self.done:
            return
        batched = callable(getattr(self.learner, "process_trajectories", None))
        dropped = 0
        index = 0
        while index < len(trajectories) and not self.done:
            # one batch: the fresh trajectories up to the one that brings an update, a summary,
            # a checkpoint or max_steps (one trajectory at a time for a learner without batches)
            budget = self._batch_budget() if batched else 1
            batch: list[Trajectory] = []
            steps = 0
            while index < len(trajectories) and steps < budget:
                trajectory = trajectories[index]
                index += 1
                start = self.coupling.first_fresh(trajectory.policy_versions, self.version)
                dropped += start
                if start >= len(trajectory):
                    continue
                trajectory = replace(trajectory.tail(start), source=gateway_id)  # per-agent state is per gateway
                self.stats.add(stats_mod.POLICY_LAG, float(np.mean(self.version - trajectory.policy_versions)))
                batch.append(trajectory)
                steps += len(trajectory)
            if batch:
                dropped += self._learn(batch, batched, gateway_id, sequence)
        if dropped:
            self.stats.add(stats_mod.STALE_STEPS_DROPPED, float(dropped), stats_mod.Aggregation.SUM)
            _log.debug("stale steps dropped", behavior=self.name, gateway_id=gateway_id, sequence=sequence, steps=dropped)

    def _batch_budget(self) -> int:
        """Agent steps a batch of trajectories may bring before something is due: the learner's
        next update (``steps_until_ready``), a summary, a checkpoint or ``max_steps``. The
        trajectory that reaches it ends the batch, so every one of them comes after the same
        trajectory as when the trajectories are learned one by one."""
        s, step = self.settings, self.learner.step
        interval = s.steps_between_checkpoints()
        due = (
            self.learner.steps_until_ready(),
            s.summary_freq - step % s.summary_freq,
            interval - step % interval,
            s.max_steps - step,
        )
        return max(1, min(due))

    def _learn(self, batch: list[Trajectory], batched: bool, gateway_id: str, sequence: int) -> int:
        """Feeds fresh trajectories to the learner (all at once when ``batched``), then the
        update, summaries and checkpoints they made due; returns the steps the update made
        stale (on-policy: the overshoot still buffered)."""
        timer = self._context.timer
        before = self.learner.step
        learned = batch
        if batched:
            try:
                with timer.block("process_trajectories"):
                    self.learner.process_trajectories(batch)
            except ValueError:  # one of them refused: nothing taken, learn them one by one to skip it
                learned = self._learn_each(batch, gateway_id, sequence)
        else:
            learned = self._learn_each(batch, gateway_id, sequence)
        dropped = 0
        for trajectory in learned:
            self._record_episode(trajectory)
        if learned and self.learner.ready():
            self._update()
            if self.coupling.per_version:
                dropped += self.learner.discard_buffered()
        # only the last trajectory of a batch can cross a summary or checkpoint boundary
        step = before
        for k, trajectory in enumerate(learned):
            after = self.learner.step if k == len(learned) - 1 else step + len(trajectory)
            self._after_steps(step, after)
            self._progress.steps(after)
            step = after
        return dropped

    def _learn_each(self, batch: list[Trajectory], gateway_id: str, sequence: int) -> list[Trajectory]:
        """``process_trajectory`` on each; a refused one is logged and skipped. Returns those taken."""
        learned = []
        for trajectory in batch:
            try:
                with self._context.timer.block("process_trajectory"):
                    self.learner.process_trajectory(trajectory)
            except ValueError as e:  # validated already; a learner's own check must not end the run
                _log.error(
                    "trajectory refused by the learner; skipped",
                    behavior=self.name,
                    gateway_id=gateway_id,
                    sequence=sequence,
                    error=str(e),
                )
                continue
            learned.append(trajectory)
        return learned

    def _observe_inference(self, trajectories: list[Trajectory]) -> None:
        """``--inference``: steps and episode statistics without learning.

        Why: ML-Agents keeps counting steps and writing summaries ("Not Training.") while it
        only acts, and runs past ``max_steps`` until stopped; the learner never sees the data.
        """
        for trajectory in trajectories:
            before = self.inference_step
            self.inference_step += len(trajectory)
            self._record_episode(trajectory)
            self._after_steps(before, self.inference_step)

    def _record_episode(self, trajectory: Trajectory) -> None:
        """The per-episode statistics of a trajectory that ends its episode."""
        if trajectory.done:
            last = int(trajectory.policy_versions[-1]) if len(trajectory) else self.version
            low, high = self._episode_versions or (last, last)
            self._episode_versions = (min(low, last), max(high, last))
            self.stats.add(stats_mod.CUMULATIVE_REWARD, trajectory.episode_return, stats_mod.Aggregation.HISTOGRAM)
            self.stats.add(stats_mod.EPISODE_LENGTH, trajectory.episode_length)
            self.stats.add(stats_mod.EXTRINSIC_REWARD, trajectory.episode_return * self._extrinsic_strength)

    def _update(self) -> None:
        """One learner update, its metrics, a new version and snapshot.

        A learner reports an update whose result was not finite as skipped
        (``stats.SKIPPED_UPDATES`` in its metrics; its state is left as it was): it is logged
        and counted (TensorBoard ``Policy/Skipped Updates``), the version still advances so
        that collection goes on; ``MAX_CONSECUTIVE_SKIPPED_UPDATES`` in a row raise
        ``TrainingDivergedError`` (the run stops with an error).
        """
        timer = self._context.timer
        with timer.block("update_policy"), self._progress.update():
            metrics = self.learner.update()
            if self._context.slow_updates_s:
                time.sleep(self._context.slow_updates_s)
        skipped = bool(metrics.pop(stats_mod.SKIPPED_UPDATES, 0.0))
        if skipped:
            self.stats.add(stats_mod.SKIPPED_UPDATES, 1.0, stats_mod.Aggregation.SUM)
            self.skipped_updates += 1
            _log.error(
                "update skipped: its result was not finite (the policy stays as it was)",
                behavior=self.name, step=self.learner.step, in_a_row=self.skipped_updates,
            )
            if self.skipped_updates >= MAX_CONSECUTIVE_SKIPPED_UPDATES:
                raise TrainingDivergedError(
                    f"behavior {self.name}: {self.skipped_updates} updates in a row were not finite and "
                    f"were skipped at step {self.learner.step}: training cannot continue (check the "
                    "environment's observations and rewards, and the learning rate)"
                )
        else:
            self.skipped_updates = 0
            for tag, value in metrics.items():
                if tag != stats_mod.EXTRINSIC_REWARD:  # recorded per episode, as ML-Agents does
                    self.stats.add(tag, float(value))
        self.version += 1
        with timer.block("build_snapshot"):
            self.snapshot = self._build_snapshot()
        with timer.block("push_snapshot"):
            self._publish(self.snapshot)
            self._context.collection.updated(self.name, self.version, self.learner.step)

    def update_offline(self) -> None:
        """Offline training (``tandem-trainer --demos``): one update that needs no experience,
        then the summaries and checkpoints its steps made due."""
        before = self.learner.step
        self._update()
        self._after_steps(before, self.learner.step)

    def _after_steps(self, before: int, after: int) -> None:
        """Summaries and checkpoints due now that the learner went from ``before`` to ``after`` steps.

        A summary is written at the ``summary_freq`` multiple the steps crossed (12000, not
        the 12007 reached), once however many were crossed, as ML-Agents does; its ``Step``
        stat (a timers.json gauge) is, as there, the step count before the trajectory that
        crossed it.
        """
        s = self.settings
        if after // s.summary_freq > before // s.summary_freq:
            self.stats.add(stats_mod.STEP, before, stats_mod.Aggregation.MOST_RECENT)
            self._write_summary((before // s.summary_freq + 1) * s.summary_freq)
        interval = s.steps_between_checkpoints()
        if after // interval > before // interval:
            self._save(final=False)
        if after >= s.max_steps and not self._context.inference:  # inference runs until stopped
            self.done = True
            self._context.collection.finished(self.name)
            self._save(final=True)
            _log.info("behavior reached max_steps", behavior=self.name, step=after, max_steps=s.max_steps)

    def _write_summary(self, step: int) -> None:
        context = self._context
        with context.timer.block("write_summary"):
            self.stats.add(
                stats_mod.IS_TRAINING, 0.0 if context.inference else 1.0, stats_mod.Aggregation.MOST_RECENT
            )
            summaries = self.stats.summarize()
            reward = summaries.get(stats_mod.CUMULATIVE_REWARD)
            if reward is not None:
                self.last_reward = reward.mean
            stats_mod.write_gauges(context.timer, self._folder_name, summaries)
            self.tensorboard.write(step, summaries)
            versions, self._episode_versions = self._episode_versions, None
            stats_mod.log_summary(
                self._folder_name, step, time.monotonic() - context.started, summaries, not context.inference,
                versions,
            )

    # ------------------------------------------------------------------ persistence

    def _save(self, final: bool) -> None:
        """Writes the learner's state (atomically) and records it in training_status.json."""
        context = self._context
        step = self.learner.step
        if context.inference:
            return
        if step == self.saved_step:  # already on disk: at most mark it final
            if final:
                context.results.mark_final(self.name, step)
                self._log_final_model(self.checkpoints.step_path(step).with_suffix(".onnx"))
            return
        with context.timer.block("save_checkpoint"):
            reward = self.stats.peek_mean(stats_mod.CUMULATIVE_REWARD)
            reward = self.last_reward if reward is None else reward
            meta = {
                "behavior": self.name,
                "step": step,
                "policy_version": self.version,
                "trainer_type": self.settings.trainer_type,
                "run_id": context.run_id,
            }
            try:
                saved, removed = self.checkpoints.save(step, self.learner.state_dict(), meta, time.time())
            except ckpt.NonFiniteStateError as e:  # never on disk: the previous checkpoint stays the latest
                _log.error("checkpoint not written: the learner's state is not finite", behavior=self.name,
                           step=step, error=str(e))
                return
            with context.timer.block("save_extra"):
                self.learner.save_extra(saved.file_path.parent)
            model = self._export_onnx(saved.file_path.with_suffix(".onnx"), removed)
            if final and model is not None:
                self._log_final_model(model)
            context.results.record_checkpoint(self.name, saved, reward, removed, final=final, model_path=model)
            context.results.set_behavior_value(self.name, "policy_version", self.version)
            context.results.write_timers(context.timer)
            self.saved_step = step
        _log.info("checkpoint saved", behavior=self.name, step=step, path=str(saved.file_path), final=final)

    def _log_final_model(self, model: Path) -> None:
        """ML-Agents' line for the final model, copied next to the run (written at every checkpoint here), once."""
        if model != self._final_model:
            self._final_model = model
            stats_mod.log_copied(model, self._context.results.final_model_path(self.name))

    def _export_onnx(self, path: Path, removed_steps: list[int]) -> Path | None:
        """Writes the latest snapshot as ``<Behavior>-<step>.onnx`` and ``<run>/<Behavior>.onnx``.

        Best effort: an export problem must not stop training.

        Returns:
            the step's model path, or None when the export failed (logged).
        """
        for step in removed_steps:
            self.checkpoints.step_path(step).with_suffix(".onnx").unlink(missing_ok=True)
        try:
            model = export_policy_bytes(self._architecture, self._parameters)  # built once, written twice
            ckpt.atomic_write_bytes(path, model)
            stats_mod.log_exported(path)
            ckpt.atomic_write_bytes(self._context.results.final_model_path(self.name), model)
            return path
        except Exception as e:
            _log.warning("onnx export failed", behavior=self.name, error=str(e))
            return None

    def record_status(self, key: str, value: object) -> None:
        """Stores ``key`` in the behavior's ``training_status.json`` entry (e.g. self-play's ELO)."""
        if not self._context.inference:
            self._context.results.set_behavior_value(self.name, key, value)

    def finish(self, save: bool = True) -> None:
        """Final checkpoint (when training and ``save``) and TensorBoard flush."""
        if save and not self._context.inference:
            self._save(final=True)
        self.tensorboard.close()

    def discard(self) -> None:
        """The registration is dropped before any experience (replaced or released): nothing is saved."""
        self.tensorboard.close()


def _settings_markdown(settings: TrainerSettings) -> str:
    """The behavior's settings as the TensorBoard "Hyperparameters" text (indented YAML)."""
    body = yaml.safe_dump(to_plain(settings), sort_keys=False)
    return "\n".join(f"    {line}" for line in body.splitlines())


class _FirstSummaryProgress:
    """A few progress lines for the wait before a behavior's first summary.

    Why: before the first ``summary_freq`` steps the console was silent for 10-35 s while
    experience came in and JAX compiled the first update. This logs the steps collected at
    each quarter of the way to the first summary, and the first update's start and
    duration (compilation included); nothing after the first summary.
    """

    def __init__(self, behavior: str, start_step: int, summary_freq: int) -> None:
        self._behavior = behavior
        self._first_summary = (start_step // summary_freq + 1) * summary_freq
        self._quarter = max(1, summary_freq // 4)
        self._next = (start_step // self._quarter + 1) * self._quarter
        self._updated = False

    def steps(self, step: int) -> None:
        """Logs the steps collected when ``step`` passed another quarter before the first summary."""
        if step < self._next or self._next >= self._first_summary:
            return
        self._next = (step // self._quarter + 1) * self._quarter
        if step < self._first_summary:
            _log.info("collecting experience", behavior=self._behavior, step=step, first_summary=self._first_summary)

    @contextmanager
    def update(self) -> Iterator[None]:
        """Wraps an update: the first one is logged before (it compiles) and after (how long it took)."""
        if self._updated:
            yield
            return
        _log.info("first update: compiling the learner (once per run)", behavior=self._behavior)
        started = time.monotonic()
        yield
        self._updated = True
        _log.info("first update done", behavior=self._behavior, seconds=round(time.monotonic() - started, 1))
