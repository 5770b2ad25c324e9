"""Worker processes, one per environment instance, and the parent's handles on them.

Why: mlagents-envs steps one Unity process at a time and spends its time in Python
(protobuf decoding, numpy); one process per instance steps instances in parallel on
separate cores. Each worker owns its ``UnityInstance``; the parent talks to it over
a pipe with the small messages of ``gateway.env.messages``, and the worker does the
expensive part (encoding ``tandem.v1.Steps``) itself, so the parent only
concatenates bytes.

Restarts are decided by the parent (``RestartQuota`` per instance, see
``gateway.remote.pool`` and ``gateway.actor.runner``) so that a dead worker process
and a dead Unity process count against the same limits.

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

import numpy as np

from common import lifeline
from common.logging import configure_logging, get_logger
from gateway.env import steps as steps_mod
from gateway.env.instance import EditorAway, InstanceFailure, UnityInstance, kill_process
from gateway.env.messages import AwaitingEditor, Close, Closed, Failed, GiveUp, PackedStep, Pipe, Ready, Refused, Reset
from gateway.env.messages import Restart, SetParameters, StartActor, Step, Stepped
from gateway.env.restarts import RestartQuota
from gateway.env.steps import StepBatch
from gateway.options import EnvironmentOptions
from tandem.v1 import gateway_pb2

#: what the parent asks of a worker in remote control (each answered by Stepped, Failed or Refused)
Command = Reset | Step | SetParameters | Restart | GiveUp

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


class WorkerLost(RuntimeError):
    """A worker process died or stopped answering."""


# --------------------------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------------------------


class InstanceWorker:
    """The child's state: one Unity instance, its last decision steps, pending interrupts.

    Args:
        config: what the worker was started with.
        out: where answers go: the worker's ``Pipe`` (or, in process, ``_Answers``).
    """

    def __init__(self, config: WorkerConfig, out: Pipe | _Answers) -> None:
        self.config = config
        self.out = out
        self.index = config.index
        self.instance = UnityInstance(config.options, config.index)
        self.last_decisions: dict[str, StepBatch] = {}
        #: hand each answer's batches over undecoded too (``InProcessWorkerHandle``: same process)
        self.keep_batches = False
        self.interrupted: dict[str, StepBatch] = dict(config.interrupted)
        self.alive = True
        self._editor_back: threading.Event | None = None
        self._editor_thread: threading.Thread | None = None
        self._closing = threading.Event()
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
        self.out.send(Failed(str(error)))

    def restart(self) -> dict[str, tuple[StepBatch, StepBatch]]:
        self.instance.close()
        self.instance.open()
        return self.instance.reset()

    # -- the Unity Editor -----------------------------------------------------------------------

    def editor_away(self, error: EditorAway) -> None:
        """The Editor left Play or went away: listen again at once (in the background: the
        Editor connects only if the port is open when Play is pressed) and say so."""
        self.log.warning("the unity editor is away: waiting for the next Play", error=str(error))
        self.instance.close()
        self.last_decisions = {}
        self.interrupted = {}  # the client resets: the episodes of the Editor's last Play are over
        self._editor_back = threading.Event()
        self._editor_thread = threading.Thread(target=self._await_editor, name="await-unity-editor", daemon=True)
        self._editor_thread.start()
        self.out.send(AwaitingEditor(f"{error}, then reset"))

    def _await_editor(self) -> None:
        """Listens until an Editor connects (each wait lasts ``--timeout-wait``, then listens again)."""
        while not self._closing.is_set():
            try:
                self.instance.open()
            except InstanceFailure as e:
                self.log.info("still waiting for the unity editor to enter Play mode", detail=str(e)[:200])
                continue
            if self._closing.is_set():
                self.instance.close()
            else:
                self.log.info("the unity editor is back")
            break
        self._editor_back.set()

    def waiting_for_editor(self) -> bool:
        """True while the Editor has not come back (commands are answered ``AwaitingEditor``)."""
        return self._editor_back is not None and not self._editor_back.is_set()

    def close_instance(self) -> None:
        """Closes Unity (and stops waiting for the Editor)."""
        self._closing.set()
        self.instance.close()

    def result(self, out: dict[str, tuple[StepBatch, StepBatch]]) -> Stepped:
        """Encodes the instance's steps (plus pending interrupts and stats) as ``Steps`` bytes."""
        msg = gateway_pb2.Steps()
        decisions: dict[str, np.ndarray] = {}
        batches: dict[str, tuple[StepBatch, StepBatch]] = {}
        self.last_decisions = {}
        for name, spec in self.instance.specs.items():
            dec, term = out.get(name, (steps_mod.empty_decisions(spec), steps_mod.empty_terminals(spec)))
            if name in self.interrupted:
                term = steps_mod.concat(self.interrupted.pop(name), term)
            entry = msg.behaviors.add(instance=self.index, behavior=name)
            steps_mod.encode(dec, entry.decision)
            steps_mod.encode(term, entry.terminal)
            decisions[name] = dec.agent_ids
            batches[name] = (dec, term)
            self.last_decisions[name] = dec
        steps_mod.encode_stats(self.instance.drain_stats(), msg.stats)
        return Stepped.of(
            index=self.index,
            steps=msg.SerializeToString(),
            decisions=decisions,
            new_specs=self.instance.new_behaviors(),
            unity_pid=self.instance.unity_pid,
            alive=self.alive,
            batches=batches if self.keep_batches else None,
        )

    def give_up(self) -> Stepped:
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
        return Stepped(self.index, msg.SerializeToString(), {}, [], None, alive=False)

    def ready(self) -> Ready | Failed:
        """Opens Unity: the first thing a worker says."""
        try:
            self.instance.open()
        except InstanceFailure as e:
            return Failed(str(e))
        return Ready(list(self.instance.specs.values()), self.instance.unity_pid)

    def run_command(self, command: Command) -> None:
        """Runs one remote-control command and answers it (``SetParameters`` has no answer)."""
        if isinstance(command, SetParameters):
            self.instance.set_parameters(command.parameters)
            return
        if isinstance(command, GiveUp) or not self.alive:
            self.out.send(self.give_up())
            return
        if self.waiting_for_editor():
            self.out.send(AwaitingEditor(
                f"instance {self.index}: waiting for the Unity Editor: press Play in the Editor (the gateway "
                f"listens on port {self.instance.port}), then reset"
            ))
            return
        try:
            match command:
                case Step(actions):
                    out = self.instance.step(actions)
                case Reset(parameters):
                    if parameters:
                        self.instance.set_parameters(parameters)
                    out = self.instance.reset()
                case Restart(forget):
                    self.instance.forget_parameters(forget)
                    out = self.restart()
                case _:
                    raise ValueError(f"unknown worker command {command!r}")
        except EditorAway as e:
            self.editor_away(e)
            return
        except InstanceFailure as e:
            self.fail(e)
            return
        except ValueError as e:  # a request the instance cannot take; Unity keeps running
            self.log.error("command refused", command=type(command).__name__, error=str(e))
            self.out.send(Refused(str(e)))
            return
        self.out.send(self.result(out))


def _leave_sigterm_to_the_parent() -> None:
    """SIGTERM while the parent lives is the parent's to act on; without a parent it ends the worker.

    Why: ``timeout``, container runtimes and process supervisors send SIGTERM to the whole
    process group. A worker that died of it at once would take its end of Unity's
    connection along (Unity sees a broken stream instead of a quit); the parent got the
    same signal and closes every instance in order (``Close``: Unity gets its closing
    message). A worker whose parent is gone exits through its ``finally``, closing Unity.
    """
    parent = os.getppid()

    def on_sigterm(signum, frame):
        if os.getppid() != parent:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _worker_main(config: WorkerConfig, conn) -> None:
    """Entry point of a worker process (spawned, never forked: the parent runs gRPC threads)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    _leave_sigterm_to_the_parent()
    configure_logging(json=config.log_json)
    pipe = Pipe(conn)
    worker = InstanceWorker(config, pipe)

    def orphaned() -> None:  # the gateway died without closing us (kill -9): Unity goes too
        worker.instance.kill()
        os._exit(1)

    lifeline.watch_parent(orphaned)
    try:
        pipe.send(worker.ready())
        while True:
            try:
                msg = pipe.receive()
            except (EOFError, OSError):
                break  # the parent is gone
            match msg:
                case PackedStep():  # actions cross the pipe as bytes (see WorkerHandle.send)
                    worker.run_command(msg.unpack(worker.instance.specs))
                case Close():
                    worker.close_instance()
                    pipe.send(Closed())
                    break
                case StartActor(actor_config):
                    from gateway.actor import worker_loop

                    worker_loop.run_actor(worker, pipe, actor_config)
                    break
                case _:
                    worker.run_command(msg)
    finally:
        worker.close_instance()


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
        self.pipe: Pipe | None = None

    def start(self, interrupted: dict[str, StepBatch] | None = None) -> None:
        """Spawns the worker process (it launches Unity and then says ``Ready`` or ``Failed``)."""
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
        self.pipe = Pipe(parent_conn)

    def send(self, msg) -> None:
        """Sends a command (a ``Step`` is packed: numpy arrays pickle slowly).

        Raises:
            WorkerLost: the pipe is closed.
        """
        if isinstance(msg, Step):
            msg = msg.pack()
        try:
            self.pipe.send(msg)
        except (OSError, ValueError, AttributeError) as e:
            raise WorkerLost(f"instance {self.index}: worker pipe closed: {e}") from e

    def recv(self, timeout_s: float | None = None):
        """The worker's next message.

        Raises:
            WorkerLost: when the worker died or said nothing within ``timeout_s``.
        """
        timeout_s = self.answer_timeout_s if timeout_s is None else timeout_s
        try:
            if not self.pipe.poll(timeout_s):
                raise WorkerLost(f"instance {self.index}: worker did not answer within {timeout_s:.0f} s")
            return self.pipe.receive()
        except (EOFError, OSError, AttributeError) as e:
            raise WorkerLost(f"instance {self.index}: worker process died: {e}") from e

    def kill(self) -> None:
        """Kills the worker process and the Unity process it reported."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if self.pipe is not None:
            self.pipe.close()
        self.pipe = None
        if self.unity_pid is not None:
            kill_process(self.unity_pid)
            self.unity_pid = None

    def close(self, timeout_s: float = 10.0) -> None:
        """Asks the worker to close Unity and exit; kills both if that takes too long."""
        if self.process is None:
            return
        try:
            if self.process.is_alive() and self.pipe is not None:
                self.pipe.send(Close())
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and self.pipe.poll(max(0.0, deadline - time.monotonic())):
                    if isinstance(self.pipe.receive(), Closed):
                        break
            self.process.join(max(0.0, timeout_s / 2))
        except (EOFError, OSError, ValueError):
            pass
        self.kill()
        self.process = None


class _Answers:
    """The in-process worker's end of its "pipe": answers wait here until the pool reads them."""

    def __init__(self) -> None:
        self.messages: deque = deque()

    def send(self, msg) -> None:
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
        self._worker.keep_batches = True
        self._answers.send(self._worker.ready())

    def send(self, msg) -> None:
        """Runs the command now; its answer (if any) waits for ``recv``."""
        worker = self._worker
        if worker is None:
            raise WorkerLost(f"instance {self.index}: the in-process worker is closed")
        try:
            match msg:
                case Close():
                    worker.close_instance()
                    self._answers.send(Closed())
                case StartActor():
                    raise ValueError("actor mode runs its instances in worker processes")
                case _:
                    worker.run_command(msg)
        except Exception as e:  # a bug in the worker code: treated like a dead worker process
            self.log.error("in-process worker failed", command=type(msg).__name__, error=repr(e))
            raise WorkerLost(f"instance {self.index}: worker failed: {e!r}") from e

    def recv(self, timeout_s: float | None = None):
        if self._answers is None or not self._answers.messages:
            raise WorkerLost(f"instance {self.index}: the in-process worker has no answer")
        return self._answers.messages.popleft()

    def kill(self) -> None:
        """Kills Unity and forgets the worker (``start`` makes a new one)."""
        worker, self._worker, self._answers = self._worker, None, None
        if worker is not None:
            worker.instance.kill()
            worker.close_instance()  # Unity is gone; this releases mlagents' server and port
        elif self.unity_pid is not None:
            kill_process(self.unity_pid)
        self.unity_pid = None

    def close(self, timeout_s: float = 10.0) -> None:
        worker = self._worker
        if worker is not None:
            worker.close_instance()
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


def start_workers(workers: list) -> dict[int, Ready]:
    """Starts every worker in parallel and waits until each Unity instance is up.

    Returns:
        ``{instance index: Ready}``; each handle's ``unity_pid`` is set.

    Raises:
        PoolError: naming every instance that failed (all of them are closed first).
    """
    for w in workers:
        w.start()
    ready: dict[int, Ready] = {}
    errors = []
    for w in workers:
        try:
            msg = w.recv()
        except WorkerLost as e:
            errors.append(str(e))
            continue
        match msg:
            case Ready(_, unity_pid):
                w.unity_pid = unity_pid
                ready[w.index] = msg
            case Failed(message):
                errors.append(message)
            case _:
                errors.append(f"instance {w.index}: unexpected first message {type(msg).__name__}")
    if errors:
        for w in workers:
            w.close()
        raise PoolError("environment instances failed to start: " + "; ".join(errors))
    return ready
