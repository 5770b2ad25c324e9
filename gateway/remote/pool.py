"""Remote control's pool of environment instances: reset and step them all in parallel.

Why: a ``tandem.v1.Gateway/Play`` request steps every instance once; the pool sends
each worker its command (``gateway.env.messages``), then reads every answer, follows
failures through restarts (``RestartQuota`` per instance, decided here so that a dead
worker process and a dead Unity process count against the same limits) and returns
each instance's ``Steps`` bytes for the servicer to concatenate.
"""

from __future__ import annotations

import threading

import numpy as np

from common.logging import get_logger
from common.specs import BehaviorSpec
from gateway.env import steps as steps_mod
from gateway.env.instance import BehaviorActions
from gateway.env.messages import AwaitingEditor, Failed, GiveUp, Ready, Refused, Reset, Restart, SetParameters, Step
from gateway.env.messages import Stepped
from gateway.options import EnvironmentOptions
from gateway.env.steps import StepBatch
from gateway.env.workers import Command, InProcessWorkerHandle, InstanceInfo, PoolError, WorkerHandle
from gateway.env.workers import WorkerLost, start_workers
from tandem.v1 import gateway_pb2


class ParametersDropped(PoolError):
    """Instances failed right after new environment parameters reached them; they were
    restarted without those parameters (the operation's steps are recorded)."""


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
        self._op_batches: dict[int, dict | None] = {}  # the last operation's answers' ``batches``
        self._parameters: dict[str, float] = {}
        #: parameters sent since the last operation that every live instance survived: an
        #: instance that fails now is restarted without them (they may be what killed it)
        self._untried: set[str] = set()
        self._dropped: dict[int, tuple[tuple[str, ...], str]] = {}
        #: why each instance that is down went down
        self._down: dict[int, str] = {}
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
            self._run_all({w.index: Reset({}) for w in self.workers})
        self.log.info("environment instances ready", instances=len(self.workers), behaviors=sorted(self._specs))

    def _on_ready(self, index: int, info: Ready) -> None:
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

    def last_batches(self) -> dict[int, dict[str, tuple[StepBatch, StepBatch]]] | None:
        """The last reset's or step's ``{instance: {behavior: (decisions, terminals)}}`` before
        encoding, for the instances whose ``Steps`` it returned; None when one of them answered
        from a worker process or through a restart (decode the bytes instead).

        Why: the dm_env_rpc endpoint needs the steps as arrays; an in-process instance has them
        before encoding, which spares a parse and a decode per step. Only the driver holding
        the one-driver lock may read them (no other operation comes in between).
        """
        with self._info_lock:
            batches = dict(self._op_batches)
        return None if not batches or any(b is None for b in batches.values()) else batches

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
            self._untried.update(parameters)
            for w in self.workers:
                if w.alive:
                    try:
                        w.send(SetParameters(dict(parameters)))
                    except WorkerLost:
                        pass  # the next operation finds the dead worker and restarts it

    def reset(self, parameters: dict[str, float] | None = None) -> list[bytes]:
        """Resets every instance (after setting ``parameters``); returns each one's ``Steps`` bytes."""
        with self._op_lock:
            self._check_open()
            if parameters:
                self._parameters.update(parameters)
                self._untried.update(parameters)
            return self._run_all({w.index: Reset(dict(parameters or {})) for w in self.workers if w.alive})

    def step(self, actions: dict[int, dict[str, BehaviorActions]]) -> list[bytes]:
        """Steps every instance once with ``actions`` (see ``gateway.remote.actions``); returns ``Steps`` bytes."""
        with self._op_lock:
            self._check_open()
            return self._run_all({w.index: Step(actions.get(w.index, {})) for w in self.workers if w.alive})

    def _check_open(self) -> None:
        if self._closed:
            raise PoolError("the gateway is shutting down")
        if not self.any_alive:
            reasons = "; ".join(f"instance {i}: {why}" for i, why in sorted(self._down.items()))
            raise PoolError(f"every environment instance is down ({reasons or 'no reason recorded'})")

    def _down_for_good(self, w: WorkerHandle, why: str) -> None:
        w.alive = False
        self._down[w.index] = why

    def _run_all(self, commands: dict[int, Command]) -> list[bytes]:
        """Sends every command, reads every answer (following restarts); returns the ``Steps`` bytes.

        Raises:
            PoolError: an instance refused its command.
            ParametersDropped: an instance failed right after new environment parameters
                and was restarted without them (after every answer is recorded).
        """
        self._dropped = {}
        try:
            steps = self._exchange_all(commands)
        finally:
            if not self._dropped:
                self._untried.clear()  # every instance survived them (or none was told)
        if self._dropped:
            raise ParametersDropped(
                "; ".join(
                    f"instance {i} failed right after environment parameters {list(names)} reached it ({error}); "
                    "it was restarted without them: they were dropped, reset to go on"
                    for i, (names, error) in sorted(self._dropped.items())
                )
            )
        return steps

    def _forget_untried(self, w: WorkerHandle, error: str) -> tuple[str, ...]:
        """The untried parameters, forgotten for a restart of ``w`` (and recorded to be reported)."""
        names = tuple(sorted(self._untried))
        if names:
            for name in names:
                self._parameters.pop(name, None)
            self._dropped[w.index] = (names, error[:500])
            self.log.error(
                "unity instance failed right after new environment parameters: restarted without them",
                instance=w.index, parameters=list(names), error=error[:500],
            )
        return names

    def _exchange_all(self, commands: dict[int, Command]) -> list[bytes]:
        lost: dict[int, str] = {}
        for index, command in commands.items():
            try:
                self.workers[index].send(command)
            except WorkerLost as e:
                lost[index] = str(e)
        results: dict[int, Stepped] = {}
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
        with self._info_lock:
            self._op_batches = {i: results[i].batches for i in sorted(results)}
        if refused:
            raise refused[0]
        return [results[i].steps for i in sorted(results)]

    def _answer(self, w: WorkerHandle, msg) -> Stepped:
        """Follows a worker's answer through restarts until it yields steps."""
        while True:
            match msg:
                case Stepped():
                    return msg
                case Refused(message):
                    raise PoolError(f"instance {w.index} refused the command: {message}")
                case AwaitingEditor(message):
                    # not a crash: nothing is counted; the agents of the Editor's last Play are gone
                    with self._info_lock:
                        self._decisions[w.index] = {}
                        self._last_steps.pop(w.index, None)
                    raise PoolError(message)
                case Failed(message):
                    if self._closed:
                        raise PoolError("the gateway is shutting down")
                    if w.quota.allowed():
                        w.quota.record()
                        self.log.warning("restarting unity instance", instance=w.index, error=message, restarts=w.quota.restarts)
                        w.send(Restart(self._forget_untried(w, message)))
                    else:
                        self.log.error("unity instance down for good: restart limits reached", instance=w.index, error=message)
                        self._down_for_good(w, f"restart limits reached after: {message[:500]}")
                        w.send(GiveUp())
                case _:
                    raise PoolError(f"instance {w.index}: unexpected answer {type(msg).__name__}")
            try:
                msg = w.recv()
            except WorkerLost as e:
                return self._replace_worker(w, str(e))

    def _replace_worker(self, w: WorkerHandle, error: str) -> Stepped:
        """A worker process died or hung: end its agents' episodes and start a new one if allowed."""
        self.log.warning("worker process lost", instance=w.index, error=error)
        w.kill()
        interrupted = self._interrupted_from_last_steps(w.index)
        if not w.alive or not w.quota.allowed():
            if w.alive:
                self._down_for_good(w, f"restart limits reached after: {error[:500]}")
            return self._encode_interrupts(w.index, interrupted)
        w.quota.record()
        self._forget_untried(w, error)
        w.start(interrupted)
        try:
            msg = w.recv()
            if isinstance(msg, Ready):
                w.unity_pid = msg.unity_pid
                w.send(Reset(dict(self._parameters)))
                msg = w.recv()
            return self._answer(w, msg)
        except WorkerLost as e:
            w.kill()
            self._down_for_good(w, f"its replacement worker was lost too: {str(e)[:500]}")
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

    def _encode_interrupts(self, index: int, interrupted: dict[str, StepBatch]) -> Stepped:
        msg = gateway_pb2.Steps()
        specs = self.specs
        for name, term in interrupted.items():
            entry = msg.behaviors.add(instance=index, behavior=name)
            steps_mod.encode(steps_mod.empty_decisions(specs[name]), entry.decision)
            steps_mod.encode(term, entry.terminal)
        return Stepped(index, msg.SerializeToString(), {}, [], None, alive=False)

    def _record(self, w: WorkerHandle, result: Stepped) -> None:
        w.unity_pid = result.unity_pid
        with self._info_lock:
            for spec in result.new_specs:
                if spec.name not in self._specs:
                    self.log.info("new behavior", behavior=spec.name, instance=w.index)
                    self._specs[spec.name] = spec
            if result.alive and w.alive:
                self._decisions[w.index] = result.agent_ids()
                self._last_steps[w.index] = result.steps
            else:
                if w.alive:
                    self._down_for_good(w, "its worker gave up")
                self._decisions.pop(w.index, None)
                self._last_steps.pop(w.index, None)
