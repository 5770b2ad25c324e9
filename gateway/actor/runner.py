"""Actor mode, parent side: workers act, the parent numbers chunks and talks to the trainer.

Why: the workers (``gateway.actor.worker_loop``) step and act on their own cores; this
process only does what must be shared: one ``gateway_id`` and one sequence of chunk
numbers for the whole gateway, one connection to the trainer
(``gateway.actor.trainer_link``), the latest snapshot of each behavior forwarded to
every worker as the bytes received, restart decisions, and
flow control (a worker gets its credit back only while the unacked buffer has room,
so a full buffer pauses stepping instead of dropping experience).

Flow control from the trainer: each ``CollectionGrant`` is split over the live workers
(``Grant`` messages, shares by instance); at every new stream the workers' credit is
voided first (``ResetCredit``). When a worker process is lost with credit, or an instance
goes down for good, the link resynchronizes (the trainer takes back what it granted and
grants afresh). ``TrainingFinished`` sets ``training_finished``: the gateway stops.
Environment parameters (``tandem.v1.EnvironmentParameters``, decided by the trainer)
are forwarded to every worker (``ApplyParameters``) and kept: a worker started or
replaced later gets them right after ``StartActor``, before its first reset. Only the
trainer sets parameters in actor mode: remote control (``Play``, with its
set-environment-parameters) is unavailable there, so the two never compete.

Policy lag (the latest snapshot version minus the oldest version that chose an
action in a chunk) is logged with the periodic progress line.

Local inference (``--policy BEHAVIOR=PATH.onnx``) runs the same way with
``gateway.actor.local_models.LocalModels`` as the source of snapshots instead of the
trainer link: deterministic snapshots from the model files, nothing streamed. There the
workers report finished episodes and environment stats, and an "inference summary" line per behavior
(episodes, mean and std of the reward, mean episode length, stats) is logged every
summary interval, like ML-Agents' console during inference.
"""

from __future__ import annotations

import multiprocessing.connection as mpc
import os
import queue
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from common import specs as specs_mod
from common.logging import get_logger
from common.specs import BehaviorSpec
from gateway.actor import wire
from gateway.actor.local_models import LocalModels
from gateway.actor.trainer_link import TrainerLink
from gateway.actor.worker_loop import ActorWorkerConfig
from gateway.env import parameters as parameters_mod
from gateway.env.messages import ApplyParameters, Close, Closed, Credit, Experience, Failed, GiveUp, Grant
from gateway.env.messages import InferenceReport, NewBehaviors, Progress, Ready, ResetCredit, Restart, Snapshot
from gateway.env.messages import StartActor, UnityStarted
from gateway.env.workers import InstanceInfo, WorkerHandle, WorkerLost, start_workers
from gateway.options import GatewayOptions
from tandem.v1 import trainer_pb2

#: seconds between progress log lines
PROGRESS_EVERY_S = 10.0


class SnapshotSource(Protocol):
    """Where snapshots come from: ``TrainerLink`` (actor mode) or ``LocalModels`` (``--policy``).

    Both call the runner's ``on_snapshot`` with serialized ``PolicySnapshot`` bytes.
    """

    def start(self) -> None:
        """Starts delivering snapshots (``LocalModels``: raises ``OnnxModelError`` on a misfit)."""

    def announce(self, spec: BehaviorSpec) -> None:
        """A behavior the workers saw for the first time."""

    def stop(self) -> None:
        """Stops delivering snapshots."""


def new_gateway_id() -> str:
    """A gateway id stable for this process and unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class EpisodeSummary:
    """Episodes of one behavior over a summary interval (or over the whole run)."""

    episodes: int = 0
    return_sum: float = 0.0
    return_sq_sum: float = 0.0
    length_sum: int = 0

    def add(self, episode_return: float, length: int) -> None:
        self.episodes += 1
        self.return_sum += episode_return
        self.return_sq_sum += episode_return * episode_return
        self.length_sum += length

    @property
    def mean_return(self) -> float | None:
        return self.return_sum / self.episodes if self.episodes else None

    @property
    def std_return(self) -> float | None:
        if not self.episodes:
            return None
        mean = self.return_sum / self.episodes
        return max(0.0, self.return_sq_sum / self.episodes - mean * mean) ** 0.5

    def log_fields(self) -> dict:
        """The summary as log fields, named as ML-Agents' console summary names them."""
        return {
            "episodes": self.episodes,
            "mean_reward": None if self.mean_return is None else round(self.mean_return, 4),
            "std_reward": None if self.std_return is None else round(self.std_return, 4),
            "mean_episode_length": round(self.length_sum / self.episodes, 1) if self.episodes else None,
        }


@dataclass
class ActorProgress:
    """Counters for logs, tests and the benchmark (``finished``: the episodes in streamed chunks)."""

    chunks: int = 0
    steps: int = 0
    finished: EpisodeSummary = field(default_factory=EpisodeSummary)
    #: the episodes streamed since the last progress line (what that line reports)
    recent: EpisodeSummary = field(default_factory=EpisodeSummary)
    max_policy_lag: int = 0
    paused_workers: int = 0
    #: agent steps granted by the trainer, per behavior (flow control)
    granted: dict[str, int] = field(default_factory=dict)


class ActorRunner:
    """Runs every instance in actor mode for one trainer.

    Args:
        options: validated gateway options with ``actor`` set.
        log_json: workers log JSON lines too.
    """

    def __init__(self, options: GatewayOptions, log_json: bool = False) -> None:
        assert options.is_actor
        self.options = options
        self.env_options = options.environment
        self.gateway_id = new_gateway_id()
        self.workers = [WorkerHandle(self.env_options, i, log_json) for i in range(self.env_options.num_envs)]
        self.progress = ActorProgress()
        #: per instance: (environment steps, agent steps) as last reported by its worker
        self.env_steps: dict[int, tuple[int, int]] = {}
        #: per instance: when that report arrived (time.monotonic)
        self.progress_at: dict[int, float] = {}
        self._specs: dict[str, BehaviorSpec] = {}
        self._latest: dict[str, tuple[int, bytes]] = {}
        #: the trainer's latest environment parameters (None: none received)
        self._parameters: ApplyParameters | None = None
        self._sequence = 0
        self._held_credits: list[WorkerHandle] = []
        self._outboxes: dict[int, queue.Queue] = {}
        self._senders: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = mpc.Pipe(duplex=False)
        self._loop_thread: threading.Thread | None = None
        self._base_seed = self.env_options.seed if self.env_options.seed >= 0 else random.randrange(1 << 30)
        #: deterministic acting, per behavior: episodes since the last summary, and since the start
        self.inference_window: dict[str, EpisodeSummary] = {}
        self.inference_totals: dict[str, EpisodeSummary] = {}
        #: environment stats reported while nothing streams: key -> [sum, count, aggregation, last value]
        self._stats_window: dict[str, list] = {}
        #: the same since the start (sum of values), for tests and users of the runner
        self.stat_totals: dict[str, float] = {}
        #: the trainer connection (None in local inference, which streams nothing)
        self.link: TrainerLink | None = None
        self.source: SnapshotSource
        if options.inference is not None:
            if options.inference.parameters:  # --env-parameter: the only source of values without a trainer
                values = {name: parameters_mod.ParameterValue.constant(v) for name, v in options.inference.parameters}
                self._parameters = ApplyParameters(values, False, 0)
            self.summary_interval_s = options.inference.summary_interval_s
            self.source = LocalModels(options.inference, self._on_snapshot)
        else:
            self.summary_interval_s = PROGRESS_EVERY_S
            self.link = TrainerLink(
                options.actor,
                self._hello,
                self._on_snapshot,
                self._wake,
                options.server.max_message_bytes * 4,
                on_grant=self._on_grant,
                on_welcome=self._on_welcome,
                on_finished=self._on_finished,
                on_parameters=self._on_parameters,
            )
            self.source = self.link
        #: the trainer said TrainingFinished: the gateway's work is done
        self.training_finished = threading.Event()
        self.log = get_logger("gateway.actor", gateway_id=self.gateway_id)

    # -- EnvironmentView (Describe) -------------------------------------------------------------

    @property
    def specs(self) -> dict[str, BehaviorSpec]:
        with self._lock:
            return dict(self._specs)

    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo.of(w, self.env_options) for w in self.workers]

    def failure(self) -> str | None:
        if not any(w.alive for w in self.workers):
            return "every environment instance is down (restart limits reached)"
        return None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the workers, waits for their behaviors, connects to the trainer, starts the loop.

        Raises:
            PoolError: an instance failed to start.
        """
        start_workers(self.workers)
        for w in self.workers:
            self._outboxes[w.index] = queue.Queue()
            sender = threading.Thread(target=self._sender, args=(w,), name=f"tandem-actor-send-{w.index}", daemon=True)
            sender.start()
            self._senders.append(sender)
            self._to_worker(w, StartActor(self._worker_config(w.index)))
            self._send_parameters(w)
        # the workers reset and announce their behaviors: wait for them so that Hello lists them
        announced: set[int] = set()
        deadline = time.monotonic() + self.env_options.timeout_wait + 30
        while len(announced) < len(self.workers) and time.monotonic() < deadline:
            for w in self.workers:
                if w.index in announced or not w.pipe.poll(0.05):
                    continue
                msg = w.pipe.receive()
                self._on_message(w, msg)
                if isinstance(msg, (NewBehaviors, Failed)):
                    announced.add(w.index)
        self.log.info("actor instances ready", instances=len(self.workers), behaviors=sorted(self._specs))
        self.source.start()
        self._loop_thread = threading.Thread(target=self._loop, name="tandem-actor-loop", daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Stops stepping, disconnects from the trainer, closes every instance."""
        self._stop.set()
        self._wake()
        if self._loop_thread is not None:
            self._loop_thread.join(10)
        self.source.stop()
        for w in self.workers:  # Close goes through the sender: one writer per pipe
            box = self._outboxes.get(w.index)
            if box is not None:
                box.put(Close())
                box.put(None)
        for sender in self._senders:
            sender.join(5)
        for w in self.workers:
            w.close()
        with self._lock:
            totals = dict(self.inference_totals)
        for behavior, total in sorted(totals.items()):
            self.log.info("inference totals", behavior=behavior, **total.log_fields())
        self.log.info(
            "actor stopped",
            chunks=self.progress.chunks,
            steps=self.progress.steps,
            acked=self.link.acks if self.link else 0,
            unacked=len(self.link.buffer) if self.link else 0,
        )

    def _worker_config(self, index: int) -> ActorWorkerConfig:
        if self.options.inference is not None:
            return ActorWorkerConfig(
                snapshot_wait_s=self.options.inference.unknown_behavior_wait_s,
                seed=self._base_seed + 7919 * index,
                stream=False,
                heuristics=self.options.inference.heuristics,
            )
        a = self.options.actor
        return ActorWorkerConfig(
            chunk_steps=a.chunk_steps,
            flush_interval_s=a.flush_interval_s,
            snapshot_wait_s=a.snapshot_wait_s,
            seed=self._base_seed + 7919 * index,
        )

    # -- talking to workers ---------------------------------------------------------------------

    def _sender(self, w: WorkerHandle) -> None:
        """Sends to one worker from its own thread: a big snapshot never blocks the event loop."""
        box = self._outboxes[w.index]
        while True:
            msg = box.get()
            if msg is None:
                return
            try:
                w.send(msg)
            except WorkerLost:
                pass  # the loop notices the dead worker and replaces it

    def _to_worker(self, w: WorkerHandle, msg) -> None:
        self._outboxes[w.index].put(msg)

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass

    # -- trainer callbacks (link thread) --------------------------------------------------------

    def _hello(self) -> trainer_pb2.Hello:
        hello = trainer_pb2.Hello(gateway_id=self.gateway_id, num_instances=len(self.workers))
        for spec in self.specs.values():
            specs_mod.to_proto(spec, hello.behaviors.add())
        return hello

    def _on_snapshot(self, raw: bytes) -> None:
        """A serialized ``PolicySnapshot`` from the source: forwarded to every worker as it came."""
        header = wire.SnapshotHeader.read(raw)
        with self._lock:
            current = self._latest.get(header.behavior)
            if current is not None and current[0] == header.version:
                return  # the trainer resends its latest snapshot on every reconnect
            if current is not None and header.version < current[0]:
                self.log.warning(
                    "snapshot version went back (a new trainer run?)",
                    behavior=header.behavior, version=header.version, previous=current[0],
                )
            self._latest[header.behavior] = (header.version, raw)
        self.log.debug(  # one per update: the trainer's summaries are the progress a user reads
            "snapshot received",
            behavior=header.behavior,
            version=header.version,
            deterministic=header.deterministic,
            time_horizon=header.time_horizon,
        )
        for w in self.workers:
            if w.alive:
                self._to_worker(w, Snapshot(header.behavior, header.version, raw))

    def _on_welcome(self) -> None:
        """A new trainer stream: the credit held from an earlier one is void."""
        for w in self.workers:
            if w.alive:
                self._to_worker(w, ResetCredit())

    def _on_grant(self, grant: trainer_pb2.CollectionGrant) -> None:
        """Splits a grant over the live workers (the first ones get the remainder)."""
        alive = [w for w in self.workers if w.alive]
        if not alive:
            return
        if grant.finished:
            self.log.info("behavior finished by the trainer: acting on without streaming it", behavior=grant.behavior)
            for w in alive:
                self._to_worker(w, Grant(grant.behavior, 0, 0, True))
            return
        steps = int(grant.agent_steps)
        with self._lock:
            self.progress.granted[grant.behavior] = self.progress.granted.get(grant.behavior, 0) + steps
        base, extra = divmod(steps, len(alive))
        for i, w in enumerate(alive):
            share = base + (1 if i < extra else 0)
            if share:
                self._to_worker(w, Grant(grant.behavior, int(grant.policy_version), share))

    def _on_finished(self, finished: trainer_pb2.TrainingFinished) -> None:
        self.log.info("training finished: the gateway stops collecting", run_id=finished.run_id, reason=finished.reason)
        self.training_finished.set()
    def _on_parameters(self, message: trainer_pb2.EnvironmentParameters) -> None:
        """The trainer's environment parameters: kept, and forwarded to every worker."""
        try:
            values = parameters_mod.from_proto(message)
        except ValueError as e:
            self.log.error("environment parameters refused", error=str(e))
            return
        update = ApplyParameters(values, bool(message.reset), int(message.generation))
        with self._lock:
            self._parameters = ApplyParameters(values, False, int(message.generation))  # for workers (re)started later
        self.log.info(
            "environment parameters from the trainer",
            generation=message.generation,
            reset=update.reset,
            lessons={name: p.lesson_name for name, p in sorted(message.parameters.items())},
        )
        for w in self.workers:
            if w.alive:
                self._to_worker(w, update)

    def _send_parameters(self, w: WorkerHandle) -> None:
        """A worker just told to act gets the latest environment parameters, if any."""
        with self._lock:
            parameters = self._parameters
        if parameters is not None:
            self._to_worker(w, parameters)

    # -- the event loop -------------------------------------------------------------------------

    def _loop(self) -> None:
        last_progress = last_summary = time.monotonic()
        while not self._stop.is_set():
            conns = {w.pipe.conn: w for w in self.workers if w.pipe is not None}
            try:
                ready = mpc.wait([*conns, self._wake_r], timeout=0.5)
            except OSError:
                ready = []
            for c in ready:
                if c is self._wake_r:
                    while self._wake_r.poll(0):
                        self._wake_r.recv_bytes()
                    continue
                w = conns[c]
                try:
                    while w.pipe.poll(0):
                        self._on_message(w, w.pipe.receive())
                except (EOFError, OSError):
                    if not self._stop.is_set():
                        self._replace(w, "worker process died")
            self._grant_credits()
            now = time.monotonic()
            if now - last_progress >= PROGRESS_EVERY_S:
                last_progress = now
                self._log_progress()
            if now - last_summary >= self.summary_interval_s:
                last_summary = now
                self._log_inference_summary()

    def _on_message(self, w: WorkerHandle, msg) -> None:
        match msg:
            case Experience():
                self._on_experience(w, msg)
            case NewBehaviors(specs):
                for spec in specs:
                    with self._lock:
                        known = spec.name in self._specs
                        if not known:
                            self._specs[spec.name] = spec
                    if not known:
                        self.log.info("new behavior", behavior=spec.name, instance=w.index)
                        self.source.announce(spec)
            case Progress(env_steps, agent_steps):
                self.env_steps[w.index] = (env_steps, agent_steps)
                self.progress_at[w.index] = time.monotonic()
            case UnityStarted(pid):
                w.unity_pid = pid
            case Failed(message):
                if self.options.environment.file_name is None:
                    # the Unity Editor left Play mode or went away: not a crash, nothing counted;
                    # the worker listens again at once and waits for the next Play
                    self.log.warning("the unity editor is away: waiting for the next Play", instance=w.index, error=message)
                    self._to_worker(w, Restart())
                elif w.quota.allowed():
                    w.quota.record()
                    self.log.warning("restarting unity instance", instance=w.index, error=message, restarts=w.quota.restarts)
                    self._to_worker(w, Restart())
                else:
                    self.log.error("unity instance down for good: restart limits reached", instance=w.index, error=message)
                    w.alive = False
                    self._to_worker(w, GiveUp())
                    if self.link is not None:  # its share of the credit goes to the other instances
                        self.link.resync()
            case InferenceReport(episodes, stats):
                self._on_inference(episodes, stats)
            case Closed():
                pass
            case _:
                self.log.warning("unknown worker message", kind=type(msg).__name__, instance=w.index)

    def _on_experience(self, w: WorkerHandle, experience: Experience) -> None:
        self._sequence += 1
        if self.link is not None:  # local inference (--policy) streams nothing
            message = wire.chunk_message(
                self._sequence, experience.behavior, wire.experience_body(experience), experience.returned,
                experience.parameters_generation,
            )
            self.link.send_chunk(self._sequence, message)
        for episode_return, length in experience.episodes():
            self.progress.finished.add(episode_return, length)
            self.progress.recent.add(episode_return, length)
        self.progress.chunks += 1
        self.progress.steps += experience.steps
        latest = self._latest.get(experience.behavior)
        if latest is not None:
            self.progress.max_policy_lag = max(self.progress.max_policy_lag, latest[0] - experience.min_version)
        if self._buffer_has_room():
            self._to_worker(w, Credit())
        else:
            self._held_credits.append(w)

    def _buffer_has_room(self) -> bool:
        return self.link is None or self.link.buffer.has_room()

    def _on_inference(self, episodes: dict[str, list[tuple[float, int]]], stats: list) -> None:
        """Episodes of behaviors acting without a trainer (--policy) and their stats, from a worker."""
        with self._lock:
            for behavior, finished in episodes.items():
                window = self.inference_window.setdefault(behavior, EpisodeSummary())
                total = self.inference_totals.setdefault(behavior, EpisodeSummary())
                for episode_return, length in finished:
                    window.add(episode_return, length)
                    total.add(episode_return, length)
            for stat in stats:
                entry = self._stats_window.setdefault(stat.key, [0.0, 0, stat.aggregation, 0.0])
                entry[0] += stat.value
                entry[1] += 1
                entry[3] = stat.value
                self.stat_totals[stat.key] = self.stat_totals.get(stat.key, 0.0) + stat.value

    def _log_inference_summary(self) -> None:
        """One line per behavior acting without a trainer (--policy), like ML-Agents' inference console."""
        with self._lock:
            deterministic = sorted(self.inference_window)
            windows = {b: self.inference_window.pop(b) for b in deterministic}
            stats_window, self._stats_window = self._stats_window, {}
        stats = {
            key: round(total if aggregation == "sum" else last if aggregation == "most_recent" else total / max(count, 1), 4)
            for key, (total, count, aggregation, last) in sorted(stats_window.items())
        }
        for behavior in deterministic:
            self.log.info("inference summary", behavior=behavior, **windows[behavior].log_fields(), stats=stats)

    def _grant_credits(self) -> None:
        while self._held_credits and self._buffer_has_room():
            self._to_worker(self._held_credits.pop(0), Credit())
        self.progress.paused_workers = len({w.index for w in self._held_credits})

    def _replace(self, w: WorkerHandle, error: str) -> None:
        """A worker process died: start another if the quota allows (its open trajectories are lost)."""
        self.log.warning("worker process lost", instance=w.index, error=error)
        self._held_credits = [h for h in self._held_credits if h is not w]
        w.kill()
        if self.link is not None:  # its collection credit and open trajectories are gone
            self.link.resync()
        if not w.alive or not w.quota.allowed():
            w.alive = False
            return
        w.quota.record()
        w.start()
        try:
            msg = w.recv()
        except WorkerLost as e:
            w.kill()
            w.alive = False
            self.log.error("replacement worker lost too; instance down", instance=w.index, error=str(e))
            return
        if isinstance(msg, Ready):
            w.unity_pid = msg.unity_pid
        self._to_worker(w, StartActor(self._worker_config(w.index)))
        self._send_parameters(w)
        if isinstance(msg, Failed):
            self._on_message(w, msg)
        with self._lock:
            latest = list(self._latest.items())
        for behavior, (version, raw) in latest:
            self._to_worker(w, Snapshot(behavior, version, raw))

    def _log_progress(self) -> None:
        """The periodic progress line. Its episode figures cover the episodes streamed since the
        previous line (the trainer's summaries are the learning curve)."""
        p = self.progress
        with self._lock:
            versions = {b: v for b, (v, _) in self._latest.items()}
            recent, p.recent = p.recent, EpisodeSummary()
            granted = dict(p.granted)
        self.log.info(
            "actor progress",
            chunks=p.chunks,
            agent_steps=p.steps,
            granted_steps=granted,
            recent_episodes=recent.episodes,
            recent_mean_return=None if recent.mean_return is None else round(recent.mean_return, 3),
            snapshot_versions=versions,
            max_policy_lag=p.max_policy_lag,
            unacked_chunks=len(self.link.buffer) if self.link else 0,
            unacked_mb=round(self.link.buffer.bytes / 2**20, 2) if self.link else 0.0,
            paused_workers=p.paused_workers,
            env_steps={i: s for i, (s, _) in self.env_steps.items()},
            connected=self.link.connected.is_set() if self.link else None,
        )
