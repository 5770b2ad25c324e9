"""One Unity environment instance: a ``UnityEnvironment`` with its side channels.

Why: the worker processes (remote control and actor mode alike) need the same few
operations on an instance: open it with the engine settings, reset, step with
actions, read decision/terminal steps as ``StepBatch``, drain the stats side
channel, and close it leaving no Unity process behind. Every mlagents-envs
failure surfaces as one exception type, ``InstanceFailure``, whose message says where
the player's log is (``Player-<worker id>.log`` in ``--log-folder``) when it has one.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from common.logging import get_logger
from gateway.env.unity_environment import open_unity_environment
from common.specs import BehaviorSpec, from_mlagents
from gateway.env import parameters as parameters_mod
from gateway.env import steps as steps_mod
from gateway.env.demo_recorder import DemoRecorder
from gateway.env.parameters import ParameterValue
from gateway.options import EnvironmentOptions
from gateway.env.steps import Stat, StepBatch

#: how long a (re)start waits for this instance's port, held by its previous mlagents server
PORT_RELEASE_WAIT_S = 10.0


class InstanceFailure(RuntimeError):
    """The Unity process of an instance crashed, hung, or could not be launched."""


class EditorAway(InstanceFailure):
    """The Unity Editor left Play mode, closed, or stopped answering: not a crash.

    The instance listens again and waits for the next Play; no restart is counted.
    """


@dataclass
class BehaviorActions:
    """Actions for every agent of a behavior's last decision steps, in their order.

    Attributes:
        continuous: float32 ``[n, continuous_size]`` as the environment receives them.
        discrete: int32 ``[n, num_branches]``.
    """

    continuous: np.ndarray
    discrete: np.ndarray


class UnityInstance:
    """A Unity process driven through mlagents-envs.

    Args:
        options: the environment options shared by all instances.
        index: this instance's index (the ``instance`` field on the wire).
    """

    def __init__(self, options: EnvironmentOptions, index: int) -> None:
        self.options = options
        self.index = index
        self.worker_id = options.worker_id(index)
        self.port = options.port(index)
        self.specs: dict[str, BehaviorSpec] = {}
        self._announced: set[str] = set()
        self._env = None
        self._stats_channel = None
        self._params_channel = None
        self._parameters: dict[str, ParameterValue] = {}
        self.unity_pid: int | None = None
        self._process = None
        self._opened_before = False
        self.log = get_logger("gateway.environment", instance=index, port=self.port)
        #: ``--record-demo``: records every step into .demo files (None: not recording)
        self.recorder = DemoRecorder(options.record_demo, index) if options.record_demo else None

    @property
    def player_log(self) -> str | None:
        """The file the Unity player logs to: ``-logFile`` of ``env_args`` if given, else
        ``<log_folder>/Player-<worker id>.log`` (as mlagents-envs names it); None for the
        Editor, without a log folder, or for ``-logFile -`` (standard output)."""
        if self.options.file_name is None:
            return None
        args = list(self.options.env_args)
        for i, arg in enumerate(args[:-1]):
            if arg.lower() == "-logfile":
                return None if args[i + 1] == "-" else args[i + 1]
        if self.options.log_folder is None:
            return None
        return os.path.join(self.options.log_folder, f"Player-{self.worker_id}.log")

    def _failure(self, what: str, error: BaseException) -> InstanceFailure:
        """``InstanceFailure`` naming the instance, what went wrong and where the player's log is."""
        log = self.player_log
        where = f" (player log: {log})" if log is not None else ""
        return InstanceFailure(f"instance {self.index}: {what}: {error}{where}")

    # -- life cycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Launches (or, for the Editor, waits for) Unity and applies the engine settings.

        Raises:
            InstanceFailure: when Unity cannot be launched or does not answer in time.
        """
        from mlagents_envs.exception import UnityException, UnityWorkerInUseException
        from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel
        from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
        from mlagents_envs.side_channel.stats_side_channel import StatsSideChannel

        engine_channel = EngineConfigurationChannel()
        self._params_channel = EnvironmentParametersChannel()
        self._stats_channel = StatsSideChannel()
        seed = self.options.seed + self.index if self.options.seed >= 0 else random.randrange(0, 1 << 30)
        self._prepare_player_log()
        # After a crash, the previous mlagents server of this instance may still be
        # releasing the port for a moment: retry "in use" briefly before giving up.
        deadline = time.monotonic() + PORT_RELEASE_WAIT_S
        while True:
            try:
                self._env = open_unity_environment(
                    file_name=self.options.file_name,
                    worker_id=self.worker_id,
                    base_port=self.options.base_port,
                    seed=seed,
                    no_graphics=self.options.engine.no_graphics,
                    timeout_wait=self.options.timeout_wait,
                    additional_args=list(self.options.env_args),
                    side_channels=[engine_channel, self._params_channel, self._stats_channel],
                    log_folder=self.options.log_folder,
                    num_areas=self.options.num_areas,
                    listen_host=self.options.unity_listen_host,
                )
                break
            except UnityWorkerInUseException as e:
                if time.monotonic() >= deadline:
                    raise self._failure("Unity did not start", e) from e
                time.sleep(0.2)
            except UnityException as e:
                raise self._failure("Unity did not start", e) from e
        self._process = getattr(self._env, "_process", None)  # mlagents keeps the Popen privately
        self.unity_pid = self._process.pid if self._process is not None else None
        engine_channel.set_configuration_parameters(**self.options.engine.channel_parameters())
        parameters_mod.apply(self._params_channel, self._parameters)
        self._refresh_specs()
        self.log.info("unity instance opened", unity_pid=self.unity_pid, behaviors=sorted(self.specs))

    def _prepare_player_log(self) -> None:
        """Creates the log folder; on a restart, keeps the failed player's log as ``Player-<n>-prev.log``.

        Why: the restarted player writes its log afresh (as Unity does), and the failure
        message pointed at the previous one.

        Raises:
            InstanceFailure: when the folder cannot be created.
        """
        log = self.player_log
        if log is None:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
            if self._opened_before and os.path.isfile(log):
                stem, ext = os.path.splitext(log)
                os.replace(log, f"{stem}-prev{ext}")
        except OSError as e:
            raise self._failure("cannot prepare the player log", e) from e
        self._opened_before = True

    def close(self) -> None:
        """Asks Unity to quit, then kills it if it is still there (and finishes ``--record-demo``'s files)."""
        if self.recorder is not None:
            self.recorder.close()
        env, self._env = self._env, None
        if env is not None:
            try:
                env._close(timeout=5)  # the public close() waits timeout_wait (60 s) for a dead process
            except Exception as e:  # closing a broken connection must not stop the shutdown
                self.log.warning("unity close failed", error=str(e))
        self.kill()

    def kill(self) -> None:
        """Kills the Unity process if it is still alive (after a crash, hang or close)."""
        process, self._process = self._process, None
        self.unity_pid = None
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=10)
            except Exception as e:
                self.log.warning("unity process did not die", error=str(e))

    # -- stepping -------------------------------------------------------------------------------

    def set_parameters(self, parameters: dict[str, float]) -> None:
        """Queues constant environment parameters; they reach Unity with the next reset or step.

        They are remembered and set again after a restart.
        """
        self.set_parameter_values({key: ParameterValue.constant(value) for key, value in parameters.items()})

    def set_parameter_values(self, values: dict[str, ParameterValue]) -> bool:
        """Queues environment parameters, constants or samplers (``gateway.env.parameters``).

        Like :meth:`set_parameters`, they reach Unity with the next reset or step and are
        set again after a restart; values the instance already has are not sent again.

        Returns:
            whether any value differed from the one the instance had.
        """
        changed = {key: v for key, v in values.items() if self._parameters.get(key) != v}
        self._parameters.update(changed)
        if changed and self._params_channel is not None:
            parameters_mod.apply(self._params_channel, changed)
        return bool(changed)

    def forget_parameters(self, names) -> None:
        """Drops remembered environment parameters: a restart does not set them again."""
        for name in names:
            self._parameters.pop(name, None)

    def reset(self) -> dict[str, tuple[StepBatch, StepBatch]]:
        """Resets the instance; returns ``{behavior: (decisions, terminals)}``."""
        out = self._exchange(lambda env: env.reset())
        if self.recorder is not None:
            self.recorder.reset(self.specs, out)
        return out

    def step(
        self, actions: dict[str, BehaviorActions], while_unity_steps: Callable[[], None] | None = None
    ) -> dict[str, tuple[StepBatch, StepBatch]]:
        """Sets actions for the last decision steps and steps once.

        Behaviors missing from ``actions`` get zero actions (as mlagents-envs does).

        Args:
            actions: per behavior, actions for its last decision steps.
            while_unity_steps: work to run while Unity computes the step (after the
                actions were handed to Unity, before waiting for its answer). It runs
                exactly once, also when the step fails; an exception it raises is
                raised after the step.
        """
        from mlagents_envs.base_env import ActionTuple

        pending = [while_unity_steps] if while_unity_steps is not None else []
        hook_errors: list[BaseException] = []

        def run_hook() -> None:
            # Runs inside mlagents' step: an error of the caller's work must not pass for
            # a Unity failure there, so it is kept and raised once the step is over.
            if pending:
                try:
                    pending.pop()()
                except Exception as e:
                    hook_errors.append(e)

        def run(env):
            for behavior, a in actions.items():
                env.set_actions(behavior, ActionTuple(continuous=a.continuous, discrete=a.discrete))
            communicator = env._communicator
            overlap = pending and hasattr(communicator, "while_unity_steps")  # gateway.env.unity_environment's communicator
            if overlap:
                communicator.while_unity_steps = run_hook
            try:
                env.step()
            finally:
                if overlap:
                    communicator.while_unity_steps = None

        if self.recorder is not None:
            self.recorder.acted(self.specs, actions)
        try:
            out = self._exchange(run)
        finally:
            run_hook()  # when the step failed before reaching Unity, or no overlap was possible
        if self.recorder is not None:
            self.recorder.observe(self.specs, out)
        if hook_errors:
            raise hook_errors[0]
        return out

    def _exchange(self, call) -> dict[str, tuple[StepBatch, StepBatch]]:
        from mlagents_envs.exception import UnityActionException, UnityException

        if self._env is None:
            raise InstanceFailure(f"instance {self.index}: Unity is not running")
        try:
            call(self._env)
            self._refresh_specs()
            out = {}
            for name, spec in self.specs.items():
                decisions, terminals = self._env.get_steps(name)
                out[name] = (
                    steps_mod.from_decision_steps(decisions, spec),
                    steps_mod.from_terminal_steps(terminals),
                )
            return out
        except UnityActionException as e:  # our bug, not Unity's: Unity is fine
            raise ValueError(f"instance {self.index}: actions do not fit the decision steps: {e}") from e
        except UnityException as e:
            if self.options.file_name is None:
                raise self._editor_away(e) from e
            raise self._failure(type(e).__name__, e) from e
        except (OSError, EOFError, BrokenPipeError) as e:
            raise self._failure("connection lost", e) from e

    def _editor_away(self, error: BaseException) -> EditorAway:
        from mlagents_envs.exception import UnityCommunicatorStoppedException

        if isinstance(error, UnityCommunicatorStoppedException):
            what = "the Unity Editor left Play mode (or closed)"
        else:
            what = "the Unity Editor stopped answering"
        return EditorAway(
            f"instance {self.index}: {what}: {error}; the gateway listens on port {self.port} again: press Play "
            "in the Editor"
        )

    def _refresh_specs(self) -> None:
        current = self._env.behavior_specs
        if len(current) == len(self.specs):
            return  # mlagents only ever adds behaviors
        for name, spec in current.items():
            if name not in self.specs:
                self.specs[name] = from_mlagents(name, spec)

    def new_behaviors(self) -> list[BehaviorSpec]:
        """Behaviors seen since the last call (all of them on the first call)."""
        fresh = [s for n, s in self.specs.items() if n not in self._announced]
        self._announced.update(s.name for s in fresh)
        return fresh

    def drain_stats(self) -> list[Stat]:
        """Values received on the stats side channel since the last call."""
        if self._stats_channel is None or not self._stats_channel.stats:
            return []
        out = []
        for key, values in self._stats_channel.get_and_reset_stats().items():
            for value, method in values:
                out.append(Stat(self.index, key, float(value), steps_mod.aggregation_name(method)))
        return out


def kill_process(pid: int) -> None:
    """SIGKILLs ``pid`` if it exists and reaps it when it is our child."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except PermissionError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
