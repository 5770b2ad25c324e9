"""Worker processes, one per environment instance, and the parent's pool of them.

Why: mlagents-envs steps one Unity process at a time and spends its time in Python
(protobuf decoding, numpy); one process per instance steps instances in parallel on
separate cores. Each worker owns its ``UnityInstance``; the parent talks to it over
a pipe with small pickled tuples, and the worker does the expensive part (encoding
``tandem.v1.Steps``) itself, so the parent only concatenates bytes. On the hot path
(step and its answer) the tuples hold only ``bytes``, ints and strings: numpy arrays
and dataclasses cost ten times more to pickle and unpickle than the copy they carry.

Pipe protocol (parent -> worker, worker's answer):
    ("reset", params)    -> ("steps", StepsResult) | ("failed", message) | ("error", message)
    ("step", actions)    -> ("steps", StepsResult) | ("failed", message) | ("error", message)
                         actions: ``{behavior: BehaviorActions}``; through the pipe they travel
                         as ``pack_actions`` bytes (``WorkerHandle.send`` packs, the worker
                         unpacks), and StepsResult as ``StepsResult.pack()``
    ("set_parameters", params)  (no answer; applied with the next reset or step)
    ("restart",)         after "failed": relaunch Unity and reset -> like "reset"
    ("give_up",)         after "failed": stay down -> ("steps", StepsResult) with the
                         interrupted terminal steps only
    ("actor", config)    hand the worker to actor mode (``gateway.acting``)
    ("close",)           -> ("closed",), then the worker exits
A worker first says ("ready", ReadyInfo) or ("failed", message) after start.

Restarts are decided by the parent (``RestartQuota`` per instance) so that a dead
worker process and a dead Unity process count against the same limits.

A single instance in remote control runs in the gateway process instead
(``InProcessWorkerHandle``: the same commands and answers, without the pipe), unless
``EnvironmentOptions.single_in_process`` is off (``--worker-process``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from common.logging import configure_logging, get_logger
from common.specs import BehaviorSpec
from gateway.env import steps as steps_mod
from gateway.env.instance import BehaviorActions, InstanceFailure, UnityInstance, kill_process
from gateway.options import EnvironmentOptions
from gateway.env.restarts import RestartQuota
from gateway.env.steps import StepBatch
from tandem.v1 import gateway_pb2

#: seconds a worker may take beyond ``timeout_wait`` to answer before it is declared hung
_ANSWER_MARGIN_S = 30.0
#: thread-count variables of numpy's BLAS, set to 1 for worker processes unless already set
_SINGLE_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process is started with (pickled to the child).

    Attributes:
        options: environment options shared by all instances.
        index: the instance index.
        log_json: JSON log lines.
        interrupted: terminal steps to report with the first answer (the agents that were
            awaiting a decision when the previous worker process of this instance died).
    """

    options: EnvironmentOptions
    index: int
    log_json: bool = False
    interrupted: dict[str, StepBatch] = field(default_factory=dict)


@dataclass
class ReadyInfo:
    specs: list[BehaviorSpec]
    unity_pid: int | None


@dataclass
class StepsResult:
    """One instance's answer to a reset or step.

    Attributes:
        index: the instance index.
        steps: a serialized ``tandem.v1.Steps`` holding this instance's behaviors and stats.
        decisions: ``{behavior: agent_ids int32 [n]}`` awaiting a decision now.
        new_specs: behaviors seen for the first time.
        unity_pid: the pid of the Unity process (changes on restart), None when down.
        alive: False once the instance gave up restarting.
    """

    index: int
    steps: bytes
    decisions: dict[str, np.ndarray]
    new_specs: list[BehaviorSpec]
    unity_pid: int | None
    alive: bool = True

    def pack(self) -> tuple:
        """The result as a tuple of plain values (cheap to pickle): decisions as int32 bytes."""
        decisions = {name: ids.astype(np.int32, copy=False).tobytes() for name, ids in self.decisions.items()}
        return (self.index, self.steps, decisions, self.new_specs, self.unity_pid, self.alive)

    @classmethod
    def unpack(cls, packed: tuple) -> "StepsResult":
        index, steps, decisions, new_specs, unity_pid, alive = packed
        return cls(
            index=index,
            steps=steps,
            decisions={name: np.frombuffer(ids, np.int32) for name, ids in decisions.items()},
            new_specs=new_specs,
            unity_pid=unity_pid,
            alive=alive,
        )


def pack_actions(actions: dict[str, BehaviorActions]) -> dict[str, tuple[int, bytes, bytes]]:
    """``{behavior: BehaviorActions}`` -> ``{behavior: (agents, float32 bytes, int32 bytes)}`` for the pipe."""
    return {
        name: (
            len(a.continuous),
            np.ascontiguousarray(a.continuous, np.float32).tobytes(),
            np.ascontiguousarray(a.discrete, np.int32).tobytes(),
        )
        for name, a in actions.items()
    }


def unpack_actions(
    packed: dict[str, tuple[int, bytes, bytes]], specs: dict[str, BehaviorSpec]
) -> dict[str, BehaviorActions]:
    """The inverse of ``pack_actions``; the row sizes come from the behaviors' action specs."""
    out = {}
    for name, (n, continuous, discrete) in packed.items():
        a = specs[name].action_spec
        out[name] = BehaviorActions(
            continuous=np.frombuffer(continuous, np.float32).reshape(n, a.continuous_size),
            discrete=np.frombuffer(discrete, np.int32).reshape(n, a.num_branches),
        )
    return out


class WorkerLost(RuntimeError):
    """A worker process died or stopped answering."""


# --------------------------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------------------------


class InstanceWorker:
    """The child's state: one Unity instance, its last decision steps, pending interrupts."""

    def __init__(self, config: WorkerConfig, conn: Connection) -> None:
        self.config = config
        self.conn = conn
        self.index = config.index
        self.instance = UnityInstance(config.options, config.index)
        self.last_decisions: dict[str, StepBatch] = {}
        self.interrupted: dict[str, StepBatch] = dict(config.interrupted)
        self.alive = True
        self.log = get_logger("gateway.worker", instance=config.index)

    def fail(self, error: Exception) -> None:
        """Kills Unity and turns the agents awaiting a decision into interrupted terminal steps."""
        self.log.warning("unity instance failed", error=str(error))
        self.instance.kill()
        for name, decisions in self.last_decisions.items():
            if len(decisions):
                prior = self.interrupted.get(name)
                term = steps_mod.interrupted_terminals(decisions)
                self.interrupted[name] = term if prior is None else steps_mod.concat(prior, term)
        self.last_decisions = {}
        self.conn.send(("failed", str(error)))

    def restart(self) -> dict[str, tuple[StepBatch, StepBatch]]:
        self.instance.close()
        self.instance.open()
        return self.instance.reset()

    def result(self, out: dict[str, tuple[StepBatch, StepBatch]]) -> StepsResult:
        """Encodes the instance's steps (plus pending interrupts and stats) as ``Steps`` bytes."""
        msg = gateway_pb2.Steps()
        decisions: dict[str, np.ndarray] = {}
        self.last_decisions = {}
        for name, spec in self.instance.specs.items():
            dec, term = out.get(name, (steps_mod.empty_decisions(spec), steps_mod.empty_terminals(spec)))
            if name in self.interrupted:
                term = steps_mod.concat(self.interrupted.pop(name), term)
            entry = msg.behaviors.add(instance=self.index, behavior=name)
            steps_mod.encode(dec, entry.decision)
            steps_mod.encode(term, entry.terminal)
            decisions[name] = dec.agent_ids
            self.last_decisions[name] = dec
        steps_mod.encode_stats(self.instance.drain_stats(), msg.stats)
        return StepsResult(
            index=self.index,
            steps=msg.SerializeToString(),
            decisions=decisions,
            new_specs=self.instance.new_behaviors(),
            unity_pid=self.instance.unity_pid,
            alive=self.alive,
        )

    def give_up(self) -> StepsResult:
        """Reports the pending interrupts and stays down."""
        self.alive = False
        msg = gateway_pb2.Steps()
        for name, term in self.interrupted.items():
            spec = self.instance.specs.get(name)
            if spec is None:
                continue
            entry = msg.behaviors.add(instance=self.index, behavior=name)
            steps_mod.encode(steps_mod.empty_decisions(spec), entry.decision)
            steps_mod.encode(term, entry.terminal)
        self.interrupted = {}
        self.last_decisions = {}
        return StepsResult(self.index, msg.SerializeToString(), {}, [], None, alive=False)

    def run_command(self, kind: str, payload) -> None:
        """Runs one remote-control command and answers it."""
        if kind == "set_parameters":
            self.instance.set_parameters(payload)
            return
        if kind == "give_up" or not self.alive:
            self.conn.send(("steps", self.give_up().pack()))
            return
        try:
            if kind == "reset":
                if payload:
                    self.instance.set_parameters(payload)
                out = self.instance.reset()
            elif kind == "step":
                out = self.instance.step(payload)
            elif kind == "restart":
                out = self.restart()
            else:
                raise ValueError(f"unknown worker command {kind!r}")
        except InstanceFailure as e:
            self.fail(e)
            return
        except ValueError as e:  # a request the instance cannot take; Unity keeps running
            self.log.error("command refused", command=kind, error=str(e))
            self.conn.send(("error", str(e)))
            return
        self.conn.send(("steps", self.result(out).pack()))


def _worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a worker process (spawned, never forked: the parent runs gRPC threads)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    configure_logging(json=config.log_json)
    worker = InstanceWorker(config, conn)
    try:
        try:
            worker.instance.open()
        except InstanceFailure as e:
            conn.send(("failed", str(e)))
        else:
            conn.send(("ready", ReadyInfo(list(worker.instance.specs.values()), worker.instance.unity_pid)))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            kind = msg[0]
            if kind == "close":
                worker.instance.close()
                conn.send(("closed",))
                break
            if kind == "actor":
                from gateway.actor import worker_loop as acting

                acting.run_actor(worker, msg[1])
                break
            payload = msg[1] if len(msg) > 1 else None
            if kind == "step":  # actions cross the pipe packed (see WorkerHandle.send)
                payload = unpack_actions(payload, worker.instance.specs)
            worker.run_command(kind, payload)
    finally:
        worker.instance.close()


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------


class _InstanceHandle:
    """What the parent keeps of one instance, whichever process steps it.

    Attributes:
        index: the instance index.
        quota: the instance's restart quota (survives worker process restarts).
        alive: False once the instance exhausted its restarts.
        unity_pid: the Unity process the worker reported (killed if the worker dies).
    """

    def __init__(self, options: EnvironmentOptions, index: int, log_json: bool = False, **log_context) -> None:
        self.options = options
        self.index = index
        self.log_json = log_json
        self.quota = RestartQuota(options.restarts)
        self.alive = True
        self.unity_pid: int | None = None
        self.log = get_logger("gateway.workers", instance=index, **log_context)

    @property
    def answer_timeout_s(self) -> float:
        return self.options.timeout_wait + _ANSWER_MARGIN_S


class WorkerHandle(_InstanceHandle):
    """The parent's end of one worker process (attributes: see ``_InstanceHandle``)."""

    def __init__(self, options: EnvironmentOptions, index: int, log_json: bool = False) -> None:
        super().__init__(options, index, log_json)
        self.process: mp.process.BaseProcess | None = None
        self.conn: Connection | None = None

    def start(self, interrupted: dict[str, StepBatch] | None = None) -> None:
        """Spawns the worker process (it launches Unity and then says "ready" or "failed")."""
        # One instance per core: BLAS threads in a worker would only fight the Unity processes
        # for the same cores (spawned children read these when they import numpy).
        for name in _SINGLE_THREAD_ENV:
            os.environ.setdefault(name, "1")
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        config = WorkerConfig(self.options, self.index, self.log_json, dict(interrupted or {}))
        self.process = ctx.Process(
            target=_worker_main, args=(config, child_conn), name=f"tandem-env-{self.index}", daemon=True
        )
        self.process.start()
        child_conn.close()
        self.conn = parent_conn

    def send(self, msg: tuple) -> None:
        if msg[0] == "step":  # numpy arrays pickle slowly: actions cross the pipe as bytes
            msg = ("step", pack_actions(msg[1]))
        try:
            self.conn.send(msg)
        except (OSError, ValueError, AttributeError) as e:
            raise WorkerLost(f"instance {self.index}: worker pipe closed: {e}") from e

    def recv(self, timeout_s: float | None = None) -> tuple:
        """The worker's next message.

        Raises:
            WorkerLost: when the worker died or said nothing within ``timeout_s``.
        """
        timeout_s = self.answer_timeout_s if timeout_s is None else timeout_s
        try:
            if not self.conn.poll(timeout_s):
                raise WorkerLost(f"instance {self.index}: worker did not answer within {timeout_s:.0f} s")
            return self.conn.recv()
        except (EOFError, OSError, AttributeError) as e:
            raise WorkerLost(f"instance {self.index}: worker process died: {e}") from e

    def kill(self) -> None:
        """Kills the worker process and the Unity process it reported."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        if self.unity_pid is not None:
            kill_process(self.unity_pid)
            self.unity_pid = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Asks the worker to close Unity and exit; kills both if that takes too long."""
        if self.process is None:
            return
        try:
            if self.process.is_alive() and self.conn is not None:
                self.conn.send(("close",))
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and self.conn.poll(max(0.0, deadline - time.monotonic())):
                    if self.conn.recv()[0] == "closed":
                        break
            self.process.join(max(0.0, timeout_s / 2))
        except (EOFError, OSError, ValueError):
            pass
        self.kill()
        self.process = None


class _Answers:
    """The in-process worker's end of its "pipe": answers wait here until the pool reads them."""

    def __init__(self) -> None:
        self.messages: deque[tuple] = deque()

    def send(self, msg: tuple) -> None:
        self.messages.append(msg)


class InProcessWorkerHandle(_InstanceHandle):
    """One instance stepped inside the gateway process, behind the same interface as ``WorkerHandle``.

    Why: with a single instance there is nothing to step in parallel, and the pipe hop to
    a worker process costs two process wake-ups per step (0.15-0.18 ms of remote
    control's per-step overhead, measured side by side with ``--worker-process``; see
    ``benchmarks/results/bench_gateway.md``). Commands run synchronously in ``send`` (in
    the Play stream's thread); their answers are read back with ``recv``. A Unity crash
    or hang is handled exactly as in a worker process (``InstanceWorker``); an
    unexpected error in the worker code counts as a lost worker (restart quota, the
    agents' episodes end interrupted).
    """

    process = None  # no worker process: nothing for ``kill`` to kill besides Unity

    def __init__(self, options: EnvironmentOptions, index: int, log_json: bool = False) -> None:
        super().__init__(options, index, log_json, in_process=True)
        self._worker: InstanceWorker | None = None
        self._answers: _Answers | None = None

    def start(self, interrupted: dict[str, StepBatch] | None = None) -> None:
        """Opens Unity now (the pool then reads "ready" or "failed")."""
        self._answers = _Answers()
        config = WorkerConfig(self.options, self.index, self.log_json, dict(interrupted or {}))
        self._worker = InstanceWorker(config, self._answers)
        try:
            self._worker.instance.open()
        except InstanceFailure as e:
            self._answers.send(("failed", str(e)))
        else:
            instance = self._worker.instance
            self._answers.send(("ready", ReadyInfo(list(instance.specs.values()), instance.unity_pid)))

    def send(self, msg: tuple) -> None:
        """Runs the command now; its answer (if any) waits for ``recv``."""
        worker = self._worker
        if worker is None:
            raise WorkerLost(f"instance {self.index}: the in-process worker is closed")
        kind = msg[0]
        try:
            if kind == "close":
                worker.instance.close()
                self._answers.send(("closed",))
            elif kind == "actor":
                raise ValueError("actor mode runs its instances in worker processes")
            else:
                worker.run_command(kind, msg[1] if len(msg) > 1 else None)
        except Exception as e:  # a bug in the worker code: treated like a dead worker process
            self.log.error("in-process worker failed", command=kind, error=repr(e))
            raise WorkerLost(f"instance {self.index}: worker failed: {e!r}") from e

    def recv(self, timeout_s: float | None = None) -> tuple:
        if self._answers is None or not self._answers.messages:
            raise WorkerLost(f"instance {self.index}: the in-process worker has no answer")
        return self._answers.messages.popleft()

    def kill(self) -> None:
        """Kills Unity and forgets the worker (``start`` makes a new one)."""
        worker, self._worker, self._answers = self._worker, None, None
        if worker is not None:
            worker.instance.kill()
            worker.instance.close()  # Unity is gone; this releases mlagents' server and port
        elif self.unity_pid is not None:
            kill_process(self.unity_pid)
        self.unity_pid = None

    def close(self, timeout_s: float = 10.0) -> None:
        worker = self._worker
        if worker is not None:
            worker.instance.close()
        self.kill()


@dataclass(frozen=True)
class InstanceInfo:
    index: int
    worker_id: int
    port: int
    file_name: str
    restarts: int
    alive: bool

    @classmethod
    def of(cls, worker: "WorkerHandle", options: EnvironmentOptions) -> "InstanceInfo":
        """What ``Describe`` says of one worker's environment instance."""
        return cls(
            index=worker.index,
            worker_id=options.worker_id(worker.index),
            port=options.port(worker.index),
            file_name=options.file_name or "",
            restarts=worker.quota.restarts,
            alive=worker.alive,
        )


class PoolError(RuntimeError):
    """The pool cannot serve: it failed to start, every instance is down, or it is closed."""


def start_workers(workers: list) -> dict[int, ReadyInfo]:
    """Starts every worker in parallel and waits until each Unity instance is up.

    Returns:
        ``{instance index: ReadyInfo}``; each handle's ``unity_pid`` is set.

    Raises:
        PoolError: naming every instance that failed (all of them are closed first).
    """
    for w in workers:
        w.start()
    ready: dict[int, ReadyInfo] = {}
    errors = []
    for w in workers:
        try:
            msg = w.recv()
        except WorkerLost as e:
            errors.append(str(e))
            continue
        if msg[0] == "ready":
            w.unity_pid = msg[1].unity_pid
            ready[w.index] = msg[1]
        else:
            errors.append(msg[1])
    if errors:
        for w in workers:
            w.close()
        raise PoolError("environment instances failed to start: " + "; ".join(errors))
    return ready


class EnvironmentPool:
    """The parent's view of every instance in remote-control mode: reset and step them all in parallel.

    Thread safety: one reset/step at a time (the Play stream), while ``describe``-style
    reads (``specs``, ``instances``) may come from other threads.
    """

    def __init__(self, options: EnvironmentOptions, log_json: bool = False) -> None:
        self.options = options
        in_process = options.num_envs == 1 and options.single_in_process
        handle = InProcessWorkerHandle if in_process else WorkerHandle
        self.workers = [handle(options, i, log_json) for i in range(options.num_envs)]
        self._specs: dict[str, BehaviorSpec] = {}
        self._decisions: dict[int, dict[str, np.ndarray]] = {}
        self._last_steps: dict[int, bytes] = {}
        self._parameters: dict[str, float] = {}
        self._info_lock = threading.Lock()
        self._op_lock = threading.Lock()
        self._closed = False
        self.log = get_logger("gateway.pool")

    # -- start / close --------------------------------------------------------------------------

    def start(self) -> None:
        """Starts every worker in parallel and waits until each Unity instance is up.

        Raises:
            PoolError: when an instance fails to start (the others are closed).
        """
        try:
            ready = start_workers(self.workers)
        except PoolError:
            self._closed = True
            raise
        for index, info in ready.items():
            self._on_ready(index, info)
        # Unity announces its behaviors with the first reset: do it now, so that Describe
        # lists them before any client connects.
        with self._op_lock:
            self._run_all({w.index: ("reset", {}) for w in self.workers})
        self.log.info("environment instances ready", instances=len(self.workers), behaviors=sorted(self._specs))

    def _on_ready(self, index: int, info: ReadyInfo) -> None:
        with self._info_lock:
            for spec in info.specs:
                self._specs.setdefault(spec.name, spec)
            self._decisions[index] = {}

    def close(self) -> None:
        """Closes every instance; waits for a reset/step in progress at most a few seconds."""
        acquired = self._op_lock.acquire(timeout=5.0)
        try:
            self._closed = True
            for w in self.workers:
                w.close()
        finally:
            if acquired:
                self._op_lock.release()

    # -- reads ----------------------------------------------------------------------------------

    @property
    def specs(self) -> dict[str, BehaviorSpec]:
        with self._info_lock:
            return dict(self._specs)

    @property
    def decisions(self) -> dict[int, dict[str, np.ndarray]]:
        """``{instance: {behavior: agent_ids}}`` of live instances, as of the last response."""
        with self._info_lock:
            return {i: dict(d) for i, d in self._decisions.items()}

    def instances(self) -> list[InstanceInfo]:
        with self._info_lock:
            return [InstanceInfo.of(w, self.options) for w in self.workers]

    @property
    def any_alive(self) -> bool:
        return any(w.alive for w in self.workers)

    # -- operations -----------------------------------------------------------------------------

    def set_parameters(self, parameters: dict[str, float]) -> None:
        """Environment parameters for every instance, applied with the next reset or step."""
        with self._op_lock:
            self._check_open()
            if not parameters:
                return
            self._parameters.update(parameters)
            for w in self.workers:
                if w.alive:
                    try:
                        w.send(("set_parameters", dict(parameters)))
                    except WorkerLost:
                        pass  # the next operation finds the dead worker and restarts it

    def reset(self, parameters: dict[str, float] | None = None) -> list[bytes]:
        """Resets every instance (after setting ``parameters``); returns each one's ``Steps`` bytes."""
        with self._op_lock:
            self._check_open()
            if parameters:
                self._parameters.update(parameters)
            return self._run_all({w.index: ("reset", dict(parameters or {})) for w in self.workers if w.alive})

    def step(self, actions: dict[int, dict[str, BehaviorActions]]) -> list[bytes]:
        """Steps every instance once with ``actions`` (see ``gateway.actions``); returns ``Steps`` bytes."""
        with self._op_lock:
            self._check_open()
            return self._run_all(
                {w.index: ("step", actions.get(w.index, {})) for w in self.workers if w.alive}
            )

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the gateway is shutting down")
        if not self.any_alive:
            raise PoolError("every environment instance is down (restart limits reached)")

    def _run_all(self, commands: dict[int, tuple]) -> list[bytes]:
        lost: dict[int, str] = {}
        for index, command in commands.items():
            try:
                self.workers[index].send(command)
            except WorkerLost as e:
                lost[index] = str(e)
        results: dict[int, StepsResult] = {}
        refused: list[PoolError] = []
        for index in commands:
            w = self.workers[index]
            if index not in lost:
                try:
                    msg = w.recv()
                except WorkerLost as e:
                    lost[index] = str(e)
                else:
                    try:
                        results[index] = self._answer(w, msg)
                    except PoolError as e:  # read every other answer before raising: pipes stay in step
                        refused.append(e)
                        continue
            if index in lost:
                if self._closed:
                    raise PoolError("the gateway is shutting down")
                results[index] = self._replace_worker(w, lost[index])
        for index, result in results.items():
            self._record(self.workers[index], result)
        if refused:
            raise refused[0]
        return [results[i].steps for i in sorted(results)]

    def _answer(self, w: WorkerHandle, msg: tuple) -> StepsResult:
        """Follows a worker's answer through restarts until it yields steps."""
        if msg[0] == "error":
            raise PoolError(f"instance {w.index} refused the command: {msg[1]}")
        while msg[0] == "failed":
            if self._closed:
                raise PoolError("the gateway is shutting down")
            if w.quota.allowed():
                w.quota.record()
                self.log.warning("restarting unity instance", instance=w.index, error=msg[1], restarts=w.quota.restarts)
                w.send(("restart",))
            else:
                self.log.error("unity instance down for good: restart limits reached", instance=w.index, error=msg[1])
                w.alive = False
                w.send(("give_up",))
            try:
                msg = w.recv()
            except WorkerLost as e:
                return self._replace_worker(w, str(e))
        return StepsResult.unpack(msg[1])

    def _replace_worker(self, w: WorkerHandle, error: str) -> StepsResult:
        """A worker process died or hung: end its agents' episodes and start a new one if allowed."""
        self.log.warning("worker process lost", instance=w.index, error=error)
        w.kill()
        interrupted = self._interrupted_from_last_steps(w.index)
        if not w.alive or not w.quota.allowed():
            w.alive = False
            return self._encode_interrupts(w.index, interrupted)
        w.quota.record()
        w.start(interrupted)
        try:
            msg = w.recv()
            if msg[0] == "ready":
                w.unity_pid = msg[1].unity_pid
                w.send(("reset", dict(self._parameters)))
                msg = w.recv()
            return self._answer(w, msg)
        except WorkerLost as e:
            w.kill()
            w.alive = False
            self.log.error("replacement worker lost too; instance down", instance=w.index, error=str(e))
            return self._encode_interrupts(w.index, interrupted)

    def _interrupted_from_last_steps(self, index: int) -> dict[str, StepBatch]:
        raw = self._last_steps.get(index)
        if not raw:
            return {}
        msg = gateway_pb2.Steps.FromString(raw)
        specs = self.specs
        out = {}
        for entry in msg.behaviors:
            spec = specs.get(entry.behavior)
            if spec is None:
                continue
            dec = steps_mod.decode(entry.decision, spec, terminal=False)
            if len(dec):
                out[entry.behavior] = steps_mod.interrupted_terminals(dec)
        return out

    def _encode_interrupts(self, index: int, interrupted: dict[str, StepBatch]) -> StepsResult:
        msg = gateway_pb2.Steps()
        specs = self.specs
        for name, term in interrupted.items():
            entry = msg.behaviors.add(instance=index, behavior=name)
            steps_mod.encode(steps_mod.empty_decisions(specs[name]), entry.decision)
            steps_mod.encode(term, entry.terminal)
        return StepsResult(index, msg.SerializeToString(), {}, [], None, alive=False)

    def _record(self, w: WorkerHandle, result: StepsResult) -> None:
        w.unity_pid = result.unity_pid
        with self._info_lock:
            for spec in result.new_specs:
                if spec.name not in self._specs:
                    self.log.info("new behavior", behavior=spec.name, instance=w.index)
                    self._specs[spec.name] = spec
            if result.alive and w.alive:
                self._decisions[w.index] = result.decisions
                self._last_steps[w.index] = result.steps
            else:
                w.alive = False
                self._decisions.pop(w.index, None)
                self._last_steps.pop(w.index, None)
