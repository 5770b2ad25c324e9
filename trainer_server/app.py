"""Orchestration: validated experience in, updates, versioned snapshots and results out.

Why: the gRPC service only translates messages; everything stateful happens here, on
one training thread, so learners (JAX state) are touched by a single thread and the
order of experience is the order of a bounded queue:

* gRPC handlers call ``register_behavior`` (a behavior seen for the first time gets its
  learner then, restored from ``--resume``/``--initialize-from``/``init_path``) and
  ``submit`` (a chunk already decoded and validated as a whole; it blocks while the
  queue is full, so a gateway is not acked before its chunk is queued: backpressure);
* the training thread feeds trajectories to the behavior's learner, runs ``update()``
  when ``ready()``, bumps the snapshot version and hands the new snapshot to the
  snapshot listeners (the service pushes it to every connected gateway), writes
  summaries every ``summary_freq`` steps and checkpoints every ``checkpoint_interval``
  steps, and stops once every behavior reached ``max_steps``;
* ``--inference``: never updates, snapshots are marked deterministic, experience is
  acknowledged and dropped, the run lasts until it is stopped.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server import checkpoints as ckpt
from trainer_server import stats as stats_mod
from trainer_server.learning import registry
from trainer_server.learning.learner import Learner
from trainer_server.results import RunResults, behavior_folder_name
from trainer_server.timers import HierarchicalTimer
from tandem.v1 import trainer_pb2

_log = get_logger("trainer_server.app")

#: (spec, trainer settings, seed) -> a Learner. See ``make_learner``.
LearnerFactory = Callable[[BehaviorSpec, Any, int], Learner]


class ExperienceError(Exception):
    """Experience the trainer refuses. ``invalid``: the data is malformed (INVALID_ARGUMENT);
    otherwise it does not fit the trainer's state (FAILED_PRECONDITION)."""

    def __init__(self, message: str, *, invalid: bool) -> None:
        super().__init__(message)
        self.invalid = invalid


class TrainerStoppingError(ExperienceError):
    """The trainer is shutting down and takes no more experience (UNAVAILABLE: retry elsewhere/later)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, invalid=False)


class SpecMismatchError(ExperienceError):
    """A behavior announced with a spec other than the one it was first seen with."""

    def __init__(self, message: str) -> None:
        super().__init__(message, invalid=False)


class UnsupportedBehaviorError(ExperienceError):
    """The behavior's trainer settings ask for something not implemented."""

    def __init__(self, message: str) -> None:
        super().__init__(message, invalid=False)


def _enum_value(value: Any) -> Any:
    return getattr(value, "value", value)


def make_learner(spec: BehaviorSpec, settings: Any, seed: int) -> Learner:
    """The one place that maps ``trainer_type`` to an algorithm.

    Raises:
        UnsupportedBehaviorError: for a trainer type without a learner yet.
    """
    try:
        return registry.make_learner(spec, settings, seed)
    except ValueError as e:
        raise UnsupportedBehaviorError(str(e)) from None


def extrinsic_strength(settings: Any) -> float:
    """``reward_signals.extrinsic.strength`` (1.0 when absent), however the settings store it."""
    signals = getattr(settings, "reward_signals", None) or {}
    for key, value in signals.items():
        if str(_enum_value(key)).lower() == "extrinsic":
            strength = value.get("strength", 1.0) if isinstance(value, dict) else getattr(value, "strength", 1.0)
            return float(strength)
    return 1.0


@dataclass
class _Chunk:
    gateway_id: str
    sequence: int
    behavior: str
    trajectories: list[Trajectory]
    stats: list[tuple[str, float, stats_mod.Aggregation]]


@dataclass
class _Behavior:
    """Everything the trainer keeps for one behavior (touched by the training thread only,
    except ``spec``/``snapshot``, which are immutable once published)."""

    name: str
    spec: BehaviorSpec
    settings: Any
    learner: Learner
    version: int
    snapshot: trainer_pb2.PolicySnapshot
    stats: stats_mod.BehaviorStats
    tensorboard: stats_mod.TensorBoardWriter
    checkpoints: ckpt.CheckpointManager
    last_reward: float | None = None
    done: bool = False
    saved_step: int = -1


class TrainingApp:
    """The trainer's state and its training thread.

    Args:
        options: ``trainer_server.settings.RunOptions``.
        results: the prepared results folder.
        timer: the run's hierarchical timer (written to ``timers.json``).
        learner_factory: maps (spec, trainer settings, seed) to a Learner; ``make_learner``.
        queue_size: validated chunks waiting for the training thread; a full queue makes
            ``submit`` wait (backpressure to the gateways). Small on purpose: everything
            queued was collected by an older policy, so the queue bounds PPO's policy lag.
    """

    def __init__(
        self,
        options: Any,
        results: RunResults,
        timer: HierarchicalTimer | None = None,
        learner_factory: LearnerFactory = make_learner,
        queue_size: int = 16,
    ) -> None:
        self.options = options
        self.results = results
        self.timer = timer or HierarchicalTimer()
        self._factory = learner_factory
        cs = options.checkpoint_settings
        self.run_id: str = cs.run_id
        self.inference: bool = bool(cs.inference)
        self._resume = bool(cs.resume)
        self._initialize_from = getattr(cs, "initialize_from", None)
        seed = int(getattr(options.env_settings, "seed", -1))
        self._seed = seed if seed >= 0 else random.SystemRandom().randrange(2**31)
        self._lock = threading.Lock()
        self._behaviors: dict[str, _Behavior] = {}
        self._gateway_locks: dict[str, threading.Lock] = {}
        self._last_sequence: dict[str, int] = {}
        self._queue: queue.Queue[_Chunk] = queue.Queue(maxsize=queue_size)
        self._listeners: list[Callable[[trainer_pb2.PolicySnapshot], None]] = []
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.completed = False  # every behavior reached max_steps
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="training-loop", daemon=True)
        self._started = time.monotonic()

    # ------------------------------------------------------------------ gateway side (any thread)

    def add_snapshot_listener(self, listener: Callable[[trainer_pb2.PolicySnapshot], None]) -> None:
        """``listener(snapshot)`` is called on the training thread after every update."""
        with self._lock:
            self._listeners.append(listener)

    def last_accepted_sequence(self, gateway_id: str) -> int:
        with self._lock:
            return self._last_sequence.get(gateway_id, 0)

    def behavior_spec(self, name: str) -> BehaviorSpec | None:
        with self._lock:
            b = self._behaviors.get(name)
            return b.spec if b else None

    def latest_snapshot(self, name: str) -> trainer_pb2.PolicySnapshot:
        with self._lock:
            return self._behaviors[name].snapshot

    def behaviors(self) -> list[str]:
        with self._lock:
            return list(self._behaviors)

    def register_behavior(self, spec: BehaviorSpec) -> trainer_pb2.PolicySnapshot:
        """Creates the behavior's learner on first sight; later calls check the spec.

        Returns:
            the behavior's latest snapshot.

        Raises:
            SpecMismatchError: the behavior exists with another spec.
            UnsupportedBehaviorError: its settings ask for something not implemented.
        """
        with self._lock:
            existing = self._behaviors.get(spec.name)
            if existing is not None:
                if existing.spec != spec:
                    raise SpecMismatchError(
                        f"behavior {spec.name}: spec differs from the one first registered "
                        f"(first {_describe(existing.spec)}, now {_describe(spec)})"
                    )
                return existing.snapshot
            with self.timer.block("register_behavior"):
                behavior = self._create_behavior(spec)
            self._behaviors[spec.name] = behavior
            return behavior.snapshot

    def submit(
        self,
        gateway_id: str,
        sequence: int,
        behavior: str,
        trajectories: list[Trajectory],
        stats: list[tuple[str, float, str]],
        timeout: float | None = None,
    ) -> bool:
        """Queues a validated chunk for the training thread; blocks while the queue is full.

        Returns:
            False when ``sequence`` was already accepted from this gateway (a resend after a
            reconnect: acknowledged again, not counted twice), True when queued.

        Raises:
            ExperienceError: the behavior is unknown, or a stat's aggregation is unknown.
            queue.Full: only with ``timeout``, when the queue stayed full.
        """
        with self._lock:
            if behavior not in self._behaviors:
                raise ExperienceError(f"chunk {sequence}: unknown behavior {behavior!r}", invalid=False)
            lock = self._gateway_locks.setdefault(gateway_id, threading.Lock())
        parsed = []
        for i, (key, value, aggregation) in enumerate(stats):
            try:
                parsed.append((key, float(value), stats_mod.Aggregation.parse(aggregation)))
            except ValueError as e:
                raise ExperienceError(f"chunk {sequence}: stats[{i}]: {e}", invalid=True) from None
        with lock:
            with self._lock:
                if sequence <= self._last_sequence.get(gateway_id, 0):
                    return False
            item = _Chunk(gateway_id, sequence, behavior, trajectories, parsed)
            deadline = None if timeout is None else time.monotonic() + timeout
            with self.timer.block("wait_for_queue"):
                while True:
                    if self._stop.is_set() or self.finished.is_set():
                        raise TrainerStoppingError(f"chunk {sequence}: the trainer is stopping")
                    wait = 0.25 if deadline is None else min(0.25, max(deadline - time.monotonic(), 0.0))
                    try:
                        self._queue.put(item, timeout=wait)
                        break
                    except queue.Full:
                        if deadline is not None and time.monotonic() >= deadline:
                            raise
            with self._lock:
                self._last_sequence[gateway_id] = sequence
        return True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Asks the training thread to finish: it saves final checkpoints and closes results."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the training thread has finished (completed, stopped, or failed)."""
        return self.finished.wait(timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------------ behaviors

    def _create_behavior(self, spec: BehaviorSpec) -> _Behavior:
        settings = self.options.behavior_settings(spec.brain_name)
        seed = (self._seed + zlib.crc32(spec.name.encode())) % (2**31)
        try:
            learner = self._factory(spec, settings, seed)
        except ExperienceError:
            raise
        except (ValueError, NotImplementedError) as e:
            raise UnsupportedBehaviorError(f"behavior {spec.name}: {e}") from None
        folder = self.results.behavior_dir(spec.name)
        manager = ckpt.CheckpointManager(folder, behavior_folder_name(spec.name), int(settings.keep_checkpoints))
        version = 1
        restored_from = self._restore(spec, settings, learner, manager)
        if restored_from is not None and self._resume:
            version = int(self.results.behavior_status(spec.name).get("policy_version", 0)) + 1
        tensorboard = stats_mod.TensorBoardWriter(folder)
        behavior = _Behavior(
            name=spec.name,
            spec=spec,
            settings=settings,
            learner=learner,
            version=version,
            snapshot=trainer_pb2.PolicySnapshot(),
            stats=stats_mod.BehaviorStats(),
            tensorboard=tensorboard,
            checkpoints=manager,
            saved_step=int(learner.step) if restored_from is not None and self._resume else -1,
        )
        behavior.snapshot = self._build_snapshot(behavior)
        behavior.done = not self.inference and int(learner.step) >= int(settings.max_steps)
        if self.inference and restored_from is None:
            _log.warning(
                "--inference without --resume, --initialize-from or init_path: acting with an untrained policy",
                behavior=spec.name,
            )
        tensorboard.write_text("Hyperparameters", _settings_markdown(settings), int(learner.step))
        _log.info(
            "new behavior",
            behavior=spec.name,
            trainer_type=str(_enum_value(settings.trainer_type)),
            observations=[list(o.shape) for o in spec.observations],
            continuous_actions=spec.action_spec.continuous_size,
            discrete_branches=list(spec.action_spec.discrete_branches),
            step=int(learner.step),
            restored_from=str(restored_from) if restored_from else None,
        )
        return behavior

    def _restore(self, spec: BehaviorSpec, settings: Any, learner: Learner, manager: ckpt.CheckpointManager):
        """Loads ``--resume`` (exact state) or ``init_path``/``--initialize-from`` (weights, step 0)."""
        if self._resume:
            if manager.latest_path.is_file():
                state, _ = ckpt.load_file(manager.latest_path)
                learner.load_state_dict(state)
                learner.load_extra(manager.latest_path.parent)
                return manager.latest_path
            _log.warning("--resume: no checkpoint for this behavior, starting it fresh", behavior=spec.name)
            return None
        init = getattr(settings, "init_path", None)
        if not init and self._initialize_from:
            init = self.results.run_dir.parent / self._initialize_from / behavior_folder_name(spec.name)
        if not init:
            return None
        state, _ = ckpt.load_file(init)
        learner.load_weights(state)
        return init

    def _build_snapshot(self, behavior: _Behavior) -> trainer_pb2.PolicySnapshot:
        from common.architecture import make_snapshot

        arch = behavior.learner.architecture()
        return make_snapshot(
            behavior.name,
            behavior.version,
            arch,
            behavior.learner.policy_parameters(),
            time_horizon=int(behavior.settings.time_horizon),
            deterministic=self.inference,
        )

    # ------------------------------------------------------------------ training thread

    def _run(self) -> None:
        try:
            with self.timer.block("training_loop"):
                while not self._stop.is_set():
                    try:
                        chunk = self._queue.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    with self.timer.block("process_chunk"):
                        self._process(chunk)
                    if self._all_done():
                        self.completed = True
                        _log.info("every behavior reached max_steps: training complete", run_id=self.run_id)
                        break
        except BaseException as e:  # keep the results consistent, then report
            self.error = e
            _log.exception("training loop failed")
        finally:
            try:
                self._finish()
            finally:
                self.finished.set()

    def _all_done(self) -> bool:
        with self._lock:
            behaviors = list(self._behaviors.values())
        return bool(behaviors) and not self.inference and all(b.done for b in behaviors)

    def _process(self, chunk: _Chunk) -> None:
        with self._lock:
            behavior = self._behaviors[chunk.behavior]
        for key, value, aggregation in chunk.stats:
            behavior.stats.add(key, value, aggregation)
        if self.inference or behavior.done:
            return
        strength = extrinsic_strength(behavior.settings)
        versions = np.concatenate([t.policy_versions for t in chunk.trajectories]) if chunk.trajectories else None
        if versions is not None and versions.size:
            lag = float(np.mean(behavior.version - versions))
            behavior.stats.add(stats_mod.POLICY_LAG, lag)
            _log.debug("policy lag", behavior=behavior.name, gateway_id=chunk.gateway_id, mean_lag=lag)
        for trajectory in chunk.trajectories:
            before = int(behavior.learner.step)
            try:
                with self.timer.block("process_trajectory"):
                    behavior.learner.process_trajectory(trajectory)
            except ValueError as e:  # validated already; a learner's own check must not end the run
                _log.error(
                    "trajectory refused by the learner; skipped",
                    behavior=behavior.name,
                    gateway_id=chunk.gateway_id,
                    sequence=chunk.sequence,
                    error=str(e),
                )
                continue
            if trajectory.done:
                behavior.stats.add(stats_mod.CUMULATIVE_REWARD, trajectory.episode_return)
                behavior.stats.add(stats_mod.EPISODE_LENGTH, trajectory.episode_length)
                behavior.stats.add(stats_mod.EXTRINSIC_REWARD, trajectory.episode_return * strength)
            if behavior.learner.ready():
                self._update(behavior)
            self._after_steps(behavior, before, int(behavior.learner.step))
            if behavior.done:
                break

    def _update(self, behavior: _Behavior) -> None:
        with self.timer.block("update_policy"):
            metrics = behavior.learner.update()
        for tag, value in metrics.items():
            if tag != stats_mod.EXTRINSIC_REWARD:  # recorded per episode, as ML-Agents does
                behavior.stats.add(tag, float(value))
        behavior.version += 1
        with self.timer.block("build_snapshot"):
            snapshot = self._build_snapshot(behavior)
        with self._lock:
            behavior.snapshot = snapshot
            listeners = list(self._listeners)
        with self.timer.block("push_snapshot"):
            for listener in listeners:
                listener(snapshot)

    def _after_steps(self, behavior: _Behavior, before: int, after: int) -> None:
        s = behavior.settings
        if after // max(int(s.summary_freq), 1) > before // max(int(s.summary_freq), 1):
            self._write_summary(behavior, after)
        interval = int(s.checkpoint_interval)
        if getattr(s, "even_checkpoints", False):  # ML-Agents: keep_checkpoints spread over max_steps
            interval = int(s.max_steps) // max(int(s.keep_checkpoints), 1)
        if after // max(interval, 1) > before // max(interval, 1):
            self._save(behavior, final=False)
        if after >= int(s.max_steps):
            behavior.done = True
            self._save(behavior, final=True)
            _log.info("behavior reached max_steps", behavior=behavior.name, step=after, max_steps=int(s.max_steps))

    def _write_summary(self, behavior: _Behavior, step: int) -> None:
        with self.timer.block("write_summary"):
            behavior.stats.add(stats_mod.IS_TRAINING, 0.0 if self.inference else 1.0, stats_mod.Aggregation.MOST_RECENT)
            summaries = behavior.stats.summarize()
            reward = summaries.get(stats_mod.CUMULATIVE_REWARD)
            if reward is not None:
                behavior.last_reward = reward.mean
            folder = behavior_folder_name(behavior.name)
            for tag, summary in summaries.items():  # timers.json gauges, named as ML-Agents names them
                self.timer.set_gauge(f"{folder}.{tag.replace('/', '.')}.mean", summary.value)
            behavior.tensorboard.write(step, summaries)
            stats_mod.log_summary(
                behavior_folder_name(behavior.name), step, time.monotonic() - self._started, summaries, not self.inference
            )

    def _save(self, behavior: _Behavior, final: bool) -> None:
        """Writes the learner's state (atomically) and records it in training_status.json."""
        step = int(behavior.learner.step)
        if self.inference:
            return
        if step == behavior.saved_step:  # already on disk: at most mark it final
            if final:
                self.results.mark_final(behavior.name, step)
            return
        with self.timer.block("save_checkpoint"):
            reward = behavior.stats.peek_mean(stats_mod.CUMULATIVE_REWARD)
            reward = behavior.last_reward if reward is None else reward
            meta = {
                "behavior": behavior.name,
                "step": step,
                "policy_version": behavior.version,
                "trainer_type": str(_enum_value(behavior.settings.trainer_type)),
                "run_id": self.run_id,
            }
            saved, removed = behavior.checkpoints.save(step, behavior.learner.state_dict(), meta, time.time())
            with self.timer.block("save_extra"):
                behavior.learner.save_extra(saved.file_path.parent)
            model = self._export_onnx(behavior, saved.file_path.with_suffix(".onnx"), removed)
            self.results.record_checkpoint(behavior.name, saved, reward, removed, final=final, model_path=model)
            self.results.set_behavior_value(behavior.name, "policy_version", behavior.version)
            self.results.write_timers(self.timer)
            behavior.saved_step = step
        _log.info("checkpoint saved", behavior=behavior.name, step=step, path=str(saved.file_path), final=final)

    def _export_onnx(self, behavior: _Behavior, path, removed_steps: list[int]):
        """Writes ``<Behavior>-<step>.onnx`` and ``<run>/<Behavior>.onnx`` for Unity, best effort.

        Returns:
            the step's model path, or None when the export failed (logged).
        """
        for step in removed_steps:
            behavior.checkpoints.step_path(step).with_suffix(".onnx").unlink(missing_ok=True)
        try:
            from trainer_server.onnx_export import export_policy_bytes

            arch = behavior.learner.architecture()
            model = export_policy_bytes(arch, behavior.learner.policy_parameters())  # built once, written twice
            ckpt.atomic_write_bytes(path, model)
            ckpt.atomic_write_bytes(self.results.run_dir / f"{behavior_folder_name(behavior.name)}.onnx", model)
            return path
        except Exception as e:  # an export problem must not stop training
            _log.warning("onnx export failed", behavior=behavior.name, error=str(e))
            return None

    def _finish(self) -> None:
        """Final checkpoints, TensorBoard flush, training_status.json and timers.json."""
        with self._lock:
            behaviors = list(self._behaviors.values())
        for behavior in behaviors:
            try:
                if not self.inference:
                    self._save(behavior, final=True)
                behavior.tensorboard.close()
            except Exception:
                _log.exception("could not finish behavior", behavior=behavior.name)
        try:
            self.results.write_training_status()
            self.results.write_timers(self.timer)
        except Exception:
            _log.exception("could not write run_logs")


def _describe(spec: BehaviorSpec) -> str:
    obs = ", ".join(str(list(o.shape)) for o in spec.observations)
    return (
        f"observations [{obs}], continuous {spec.action_spec.continuous_size}, "
        f"discrete {list(spec.action_spec.discrete_branches)}"
    )


def _settings_markdown(settings: Any) -> str:
    """The behavior's settings as the TensorBoard "Hyperparameters" text."""
    import yaml

    from trainer_server.results import _plain

    try:
        body = yaml.safe_dump(_plain(settings), sort_keys=False)
    except Exception:
        body = repr(settings)
    return "\n".join(f"    {line}" for line in body.splitlines())
