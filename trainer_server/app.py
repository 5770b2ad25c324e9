"""Orchestration: validated experience in, a registry of behaviors, one training thread.

Why: the gRPC service only translates messages; everything stateful happens here, on
one training thread, so learners (JAX state) are touched by a single thread and the
order of experience is the order of a bounded queue. What happens to one behavior's
experience (updates, snapshots, summaries, checkpoints, restore) is
``trainer_server.behavior_run.BehaviorRun``'s:

* gRPC handlers call ``register_behavior`` (a behavior seen for the first time gets its
  learner then, restored from ``--resume``/``--initialize-from``/``init_path``) and
  ``submit`` (a chunk already decoded and validated as a whole; it blocks while the
  queue is full: backpressure);
* a registration *holds* once a chunk of it is queued: a later spec that conflicts with
  it (another spec under the same name, or another name with the same results folder) is
  refused. Until then it is provisional: a conflicting registration replaces it (the
  replaced listeners end its gateways' streams), and it is dropped when the last stream
  that announced it ends (``release_behavior``). So a name registered first with a junk
  spec cannot lock the real gateway out, and junk that never sends experience neither
  keeps the run from completing (only behaviors named in the configuration or with
  experience count) nor leaves a checkpoint. At most ``validation.MAX_BEHAVIORS``
  behaviors are registered at once (RESOURCE_EXHAUSTED beyond);
* a chunk is acknowledged once the training thread has taken it into the learner (the
  processed listeners, ``add_processed_listener``): an ack means that every checkpoint
  written from then on includes it, so a stop never loses acknowledged experience, and a
  chunk still queued when the trainer stops is resent to the next run by its gateway;
* ``collection`` (``trainer_server.collection.CollectionControl``) grants gateways the
  agent steps they may collect, from what is received, taken in and updated;
* the training thread feeds trajectories to the behavior's learner, runs ``update()``
  when ``ready()``, bumps the snapshot version and hands the new snapshot to the
  snapshot listeners (the service pushes it to every connected gateway), writes
  summaries every ``summary_freq`` steps and checkpoints every ``checkpoint_interval``
  steps, and stops once every behavior reached ``max_steps``;
* ``--inference``: never updates; experience is acknowledged and only counted (steps,
  episode statistics, summaries), the run lasts until it is stopped (past ``max_steps``).
  Snapshots are deterministic only when ``network_settings.deterministic`` (or
  ``--deterministic``) asks for it, in training and in inference alike, as in ML-Agents.
"""

from __future__ import annotations

import queue
import random
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server import stats as stats_mod
from trainer_server import validation
from trainer_server.behavior_run import BehaviorRun, RunContext, SnapshotListener
from trainer_server.checkpoints import CheckpointError
from trainer_server.collection import CollectionControl, Collector
from trainer_server.environment_parameters import ParametersListener, RunParameters
from trainer_server.learning.learner import Learner
from trainer_server.learning.registry import make_learner
from trainer_server.results import RunResults, behavior_folder_name
from trainer_server.self_play import ELO_STATUS_KEY, SelfPlay
from trainer_server.config.schema import RunOptions, TrainerSettings
from trainer_server.timers import HierarchicalTimer
from tandem.v1 import trainer_pb2

_log = get_logger("trainer_server.app")

#: (spec, trainer settings, seed) -> a Learner. See ``make_learner``.
LearnerFactory = Callable[[BehaviorSpec, TrainerSettings, int], Learner]


class ExperienceError(Exception):
    """Experience the trainer refuses. ``invalid``: the data is malformed (INVALID_ARGUMENT);
    ``exhausted``: a limit of the trainer is reached (RESOURCE_EXHAUSTED); otherwise it does
    not fit the trainer's state (FAILED_PRECONDITION)."""

    def __init__(self, message: str, *, invalid: bool, exhausted: bool = False) -> None:
        super().__init__(message)
        self.invalid = invalid
        self.exhausted = exhausted


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


@dataclass
class _Chunk:
    gateway_id: str
    sequence: int
    behavior: str
    trajectories: list[Trajectory]
    stats: list[tuple[str, float, stats_mod.Aggregation]]
    collector: Collector | None
    steps: int
    #: the environment parameters' generation the episodes were played with (0: unknown)
    parameters_generation: int = 0


#: ``listener(gateway_id, sequence)``: the chunk is in the learner's state (training thread)
ProcessedListener = Callable[[str, int], None]
#: ``listener(behavior, reason)``: a provisional registration was replaced by a conflicting one
ReplacedListener = Callable[[str, str], None]


def steps_by_version(trajectories: list[Trajectory]) -> dict[int, int]:
    """Agent steps per acting policy version over ``trajectories``.

    Why not ``np.unique`` per trajectory: a trajectory's steps nearly always share one
    version, and ``np.unique`` (a sort) was a fifth of a reader thread's CPU on 3DBall
    (benchmarks/results/bench_ingestion.md); one comparison settles that case."""
    by_version: dict[int, int] = {}
    for t in trajectories:
        versions = np.asarray(t.policy_versions)
        if versions.size and (versions == versions[0]).all():
            v = int(versions[0])
            by_version[v] = by_version.get(v, 0) + int(versions.size)
            continue
        values, counts = np.unique(versions, return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist()):
            by_version[v] = by_version.get(v, 0) + n
    return by_version


class TrainingApp:
    """The trainer's intake, its registry of behaviors and its training thread.

    Args:
        options: the run's resolved options.
        results: the prepared results folder.
        timer: the run's hierarchical timer (written to ``timers.json``).
        learner_factory: maps (spec, trainer settings, seed) to a Learner; ``make_learner``
            (``trainer_server.learning.registry``) unless a test gives its own.
        queue_size: validated chunks waiting for the training thread; a full queue makes
            ``submit`` wait (backpressure to the gateways; flow control keeps it short).
        slow_updates_s: a sleep after every update, to emulate a slow trainer (``--slow-updates``).
    """

    def __init__(
        self,
        options: RunOptions,
        results: RunResults,
        timer: HierarchicalTimer | None = None,
        learner_factory: LearnerFactory = make_learner,
        queue_size: int = 16,
        slow_updates_s: float = 0.0,
    ) -> None:
        self.options = options
        self.results = results
        self.timer = timer or HierarchicalTimer()
        self._factory = learner_factory
        cs = options.checkpoint_settings
        self.run_id: str = cs.run_id
        self.inference: bool = cs.inference
        seed = options.env_settings.seed
        self._seed = seed if seed >= 0 else random.SystemRandom().randrange(2**31)
        #: flow control: the agent steps each gateway may collect per behavior
        self.collection = CollectionControl()
        self._context = RunContext(
            run_id=cs.run_id,
            results=results,
            timer=self.timer,
            inference=cs.inference,
            resume=cs.resume,
            initialize_from=cs.initialize_from,
            started=time.monotonic(),
            collection=self.collection,
            slow_updates_s=slow_updates_s,
        )
        self._lock = threading.Lock()
        self._behaviors: dict[str, BehaviorRun] = {}
        self._gateway_locks: dict[str, threading.Lock] = {}
        #: per gateway_id: the last chunk queued, and the last one taken into a learner
        self._last_sequence: dict[str, int] = {}
        self._last_processed: dict[str, int] = {}
        self._processed_listeners: list[ProcessedListener] = []
        self._replaced_listeners: list[ReplacedListener] = []
        #: behaviors whose registration holds: a chunk of them was queued
        self._held: set[str] = set()
        self._queue: queue.Queue[_Chunk] = queue.Queue(maxsize=queue_size)
        self._listeners: list[SnapshotListener] = []
        self._stop = threading.Event()
        self.finished = threading.Event()
        self.completed = False  # every behavior reached max_steps
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="training-loop", daemon=True)
        #: environment parameters and curriculum lessons (``trainer_server.environment_parameters``)
        self.parameters = RunParameters(options.environment_parameters, self._seed, results, cs.resume)
        #: self-play groups (``self_play`` keys): their team names' behaviors are ``TeamBehavior``s
        self.self_play = SelfPlay(self.collection, self._publish, self._seed)

    # ------------------------------------------------------------------ gateway side (any thread)

    def add_snapshot_listener(self, listener: SnapshotListener) -> None:
        """``listener(snapshot)`` is called on the training thread after every update."""
        with self._lock:
            self._listeners.append(listener)

    def add_processed_listener(self, listener: ProcessedListener) -> None:
        """``listener(gateway_id, sequence)`` is called on the training thread once a chunk is
        in the learner's state (or dropped as stale): the moment it may be acknowledged."""
        with self._lock:
            self._processed_listeners.append(listener)

    def add_replaced_listener(self, listener: ReplacedListener) -> None:
        """``listener(behavior, reason)`` is called when a provisional registration is replaced
        (on the registering handler's thread): its gateways' streams must end."""
        with self._lock:
            self._replaced_listeners.append(listener)

    def add_parameters_listener(self, listener: ParametersListener) -> None:
        """``listener(message)`` is called on the training thread after every lesson change."""
        self.parameters.add_listener(listener)

    def environment_parameters(self) -> trainer_pb2.EnvironmentParameters | None:
        """The current environment parameters for gateways; None when the run has none."""
        return self.parameters.message()

    def last_accepted_sequence(self, gateway_id: str) -> int:
        """The last chunk of ``gateway_id`` taken into a learner (what ``Welcome`` reports)."""
        with self._lock:
            return self._last_processed.get(gateway_id, 0)

    def last_queued_sequence(self, gateway_id: str) -> int:
        """The last chunk of ``gateway_id`` queued (a resend up to it is a duplicate)."""
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

        A registration conflicts with ``spec`` when it has the same name and another spec, or
        another name and the same results folder (``3DBall`` and ``3DBall?team=0``). A held
        one (experience queued) wins; a provisional one is replaced, and the replaced
        listeners are told.

        Returns:
            the behavior's latest snapshot.

        Raises:
            SpecMismatchError: a held registration conflicts.
            UnsupportedBehaviorError: its settings ask for something not implemented, or its
                checkpoint (``--resume``, ``init_path``) does not fit it.
            ExperienceError: ``exhausted``: ``validation.MAX_BEHAVIORS`` are registered.
        """
        replaced: list[BehaviorRun] = []
        with self._lock:
            existing = self._behaviors.get(spec.name)
            if existing is not None and existing.spec == spec:
                return existing.snapshot
            folder = behavior_folder_name(spec.name)
            for other in self._behaviors.values():
                if other.name != spec.name and behavior_folder_name(other.name) != folder:
                    continue
                if other.name in self._held:
                    what = (
                        f"spec differs from the one registered (registered {_describe(other.spec)}, "
                        f"now {_describe(spec)})"
                        if other.name == spec.name
                        else f"its results folder {folder!r} belongs to behavior {other.name!r}"
                    )
                    raise SpecMismatchError(f"behavior {spec.name}: {what}; that registration has experience and holds")
                replaced.append(other)
            if len(self._behaviors) - len(replaced) >= validation.MAX_BEHAVIORS:
                raise ExperienceError(
                    f"behavior {spec.name}: {validation.MAX_BEHAVIORS} behaviors are registered already, "
                    "the most one run takes", invalid=False, exhausted=True,
                )
            with self.timer.block("register_behavior"):
                behavior = self._create_behavior(spec)  # a newcomer that fails replaces nothing
            for other in replaced:
                del self._behaviors[other.name]
                other.discard()
            self._behaviors[spec.name] = behavior
            listeners = list(self._replaced_listeners)
        for other in replaced:
            reason = (
                f"behavior {other.name}: its registration was replaced by a conflicting one "
                f"({spec.name!r}, {_describe(spec)}) before any experience of it arrived"
            )
            _log.warning("provisional behavior replaced", behavior=other.name, by=spec.name)
            for listener in listeners:
                listener(other.name, reason)
        return behavior.snapshot

    def release_behavior(self, name: str) -> None:
        """The last stream that announced ``name`` ended: a provisional registration is dropped."""
        with self._lock:
            behavior = self._behaviors.get(name)
            if behavior is None or name in self._held:
                return
            del self._behaviors[name]
        behavior.discard()
        _log.info("behavior without experience dropped: no gateway announces it any more", behavior=name)

    def submit(
        self,
        gateway_id: str,
        sequence: int,
        behavior: str,
        trajectories: list[Trajectory],
        stats: list[tuple[str, float, str]],
        timeout: float | None = None,
        collector: Collector | None = None,
        returned_steps: int = 0,
        parameters_generation: int = 0,
        spec: BehaviorSpec | None = None,
    ) -> bool:
        """Queues a validated chunk for the training thread; blocks while the queue is full.

        Queuing it makes the behavior's registration hold.

        Args:
            collector: the connection it came through, for flow control (None: not counted).
            returned_steps: credit the gateway gives back with it (``ExperienceChunk.returned_steps``).
            spec: the spec the trajectories were decoded with; refused when the behavior's
                registration was replaced since (None: not checked).

        Returns:
            False when ``sequence`` was already queued from this gateway (a resend after a
            reconnect: acknowledged when taken in, not counted twice), True when queued.

        Raises:
            ExperienceError: the behavior is unknown, or a stat's aggregation is unknown.
            queue.Full: only with ``timeout``, when the queue stayed full.
        """
        with self._lock:
            if behavior not in self._behaviors:
                raise ExperienceError(f"chunk {sequence}: unknown behavior {behavior!r}", invalid=False)
            if spec is not None and self._behaviors[behavior].spec != spec:
                raise SpecMismatchError(f"chunk {sequence}: behavior {behavior}'s registration was replaced")
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
            self._hold(behavior, spec, sequence)
            steps = sum(len(t) for t in trajectories)
            item = _Chunk(gateway_id, sequence, behavior, trajectories, parsed, collector, steps, parameters_generation)
            by_version = steps_by_version(trajectories)
            # before the put: the training thread may take the chunk in at once
            self.collection.received(collector, behavior, by_version, returned_steps)
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

    def _hold(self, behavior: str, spec: BehaviorSpec | None, sequence: int) -> None:
        """Makes ``behavior``'s registration hold (a chunk of it is about to be queued)."""
        with self._lock:
            current = self._behaviors.get(behavior)
            if current is None or (spec is not None and current.spec != spec):
                raise SpecMismatchError(f"chunk {sequence}: behavior {behavior}'s registration was replaced")
            self._held.add(behavior)

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

    def _create_behavior(self, spec: BehaviorSpec) -> BehaviorRun:
        settings = self.options.behavior_settings(spec.brain_name)
        if settings.self_play is not None:
            try:  # the group's learner is made with its first team name
                return self.self_play.team(  # type: ignore[return-value]  # a TeamBehavior serves as one
                    spec, settings, lambda s, publish: self._make_run(s, settings, publish), self._saved_elo,
                )
            except ValueError as e:
                raise UnsupportedBehaviorError(f"behavior {spec.name}: {e}") from None
        return self._make_run(spec, settings, self._publish)

    def _saved_elo(self, brain: str) -> float | None:
        """``--resume``: a self-play behavior's ELO from ``training_status.json``."""
        if not self._context.resume:
            return None
        value = self.results.behavior_status(brain).get(ELO_STATUS_KEY)
        return None if value is None else float(value)

    def _make_run(self, spec: BehaviorSpec, settings: TrainerSettings, publish: SnapshotListener) -> BehaviorRun:
        seed = (self._seed + zlib.crc32(spec.name.encode())) % (2**31)
        # the first learner of a run starts JAX and compiles its networks: seconds of silence otherwise
        _log.info("creating the learner", behavior=spec.name, trainer_type=settings.trainer_type)
        try:
            learner = self._factory(spec, settings, seed)
        except (ValueError, NotImplementedError) as e:  # the registry's errors name the behavior already
            message = str(e) if str(e).startswith("behavior ") else f"behavior {spec.name}: {e}"
            raise UnsupportedBehaviorError(message) from None
        try:
            return BehaviorRun(spec, settings, learner, self._context, publish)
        except (CheckpointError, ValueError) as e:  # a checkpoint to restore that does not fit this spec
            raise UnsupportedBehaviorError(f"behavior {spec.name}: cannot restore its checkpoint: {e}") from None

    def _publish(self, snapshot: trainer_pb2.PolicySnapshot) -> None:
        """Hands a behavior's new snapshot to every listener (training thread)."""
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(snapshot)

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

    def _counted(self) -> list[BehaviorRun]:
        """The behaviors the run waits for: those named in the configuration or with experience
        (a registration nothing backs, e.g. a stray client's, must not keep the run going)."""
        with self._lock:
            return [
                b for b in self._behaviors.values()
                if b.name in self._held or b.spec.brain_name in self.options.behaviors
            ]

    def _all_done(self) -> bool:
        behaviors = self._counted()
        return bool(behaviors) and not self.inference and all(b.done for b in behaviors)

    def _process(self, chunk: _Chunk) -> None:
        with self._lock:
            behavior = self._behaviors[chunk.behavior]
        behavior.add_stats(chunk.stats)
        behavior.consume(chunk.trajectories, chunk.gateway_id, chunk.sequence)
        self.collection.taken_in(chunk.collector, chunk.behavior, chunk.steps, behavior.learner.step)
        self.self_play.advance()
        if self.parameters.manager:
            with self._lock:
                behaviors = list(self._behaviors.values())
            returns = [t.episode_return for t in chunk.trajectories if t.done]
            self.parameters.after_chunk(behaviors, {chunk.behavior: returns}, chunk.parameters_generation)
        with self._lock:
            self._last_processed[chunk.gateway_id] = max(self._last_processed.get(chunk.gateway_id, 0), chunk.sequence)
            listeners = list(self._processed_listeners)
        for listener in listeners:
            listener(chunk.gateway_id, chunk.sequence)

    def _finish(self) -> None:
        """Final checkpoints (of behaviors with experience), TensorBoard flush,
        training_status.json and timers.json."""
        with self._lock:
            behaviors = [(b, b.name in self._held) for b in self._behaviors.values()]
        for behavior, held in behaviors:
            try:
                behavior.finish(save=held)
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
