"""Opens an mlagents-envs ``UnityEnvironment`` with a leaner, larger-message communicator.

Why: ``UnityEnvironment`` serves gRPC with the default 4 MiB receive limit, so a Unity
output with many visual observations is rejected on the Unity side; and it passes
every message between its gRPC thread and the stepping thread through a pipe, which
pickles it both ways. The communicator here, plugged in through
``UnityEnvironment._get_communicator`` (the hook mlagents-envs provides), serves with a
configurable limit and hands messages over in memory; the environment subclass builds
the step message without mlagents' element-by-element loop. It also keeps ``timeout_wait``
at 10 seconds or more: mlagents-envs checks the Unity process every
``timeout_wait // 10`` seconds, so below 10 it busy-spins.

This module never imports ``mlagents_envs.envs`` (gym/pettingzoo are not installed).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import grpc
from mlagents_envs.communicator import PollCallback
from mlagents_envs.communicator_objects.command_pb2 import STEP
from mlagents_envs.communicator_objects.unity_rl_input_pb2 import UnityRLInputProto
from mlagents_envs.communicator_objects.unity_input_pb2 import UnityInputProto
from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
from mlagents_envs.communicator_objects.unity_output_pb2 import UnityOutputProto
from mlagents_envs.environment import UnityEnvironment
from mlagents_envs.exception import UnityTimeOutException, UnityWorkerInUseException
from mlagents_envs.rpc_communicator import RpcCommunicator
from mlagents_envs.side_channel.side_channel import SideChannel

from common.logging import get_logger

MIN_TIMEOUT_WAIT = 10
#: longest wait for the gRPC thread to take Python's answer before working alongside Unity
#: (microseconds normally; bounded in case Unity's call is already gone)
_TAKE_WAIT_S = 0.05
DEFAULT_MAX_MESSAGE_MB = 256

_log = get_logger("gateway.env.unity_environment")


class _Handoff:
    """Relays Unity's messages to the stepping thread and the answers back, within one process.

    Why: mlagents-envs hands each message between its gRPC handler thread and the
    stepping thread through a ``multiprocessing.Pipe``, which pickles the protobuf (a
    serialize and a parse per message, both ways) and costs OS round trips. Both ends
    live in the same process, so two ``SimpleQueue``s do. Messages cross as raw bytes:
    the stepping thread parses and serializes them, so the gRPC thread holds the GIL
    only briefly and Unity gets Python's answer as soon as it is queued, even while the
    stepping thread goes on working (``LargeMessageRpcCommunicator.while_unity_steps``).

    Unity calls ``Exchange`` once per step (its first call carries the academy
    parameters; ``Initialize`` is served too, as mlagents-envs does); each call
    delivers Unity's message and blocks until Python's answer or until the
    communicator closes.
    """

    SERVICE = "communicator_objects.UnityToExternalProto"
    #: seconds between checks of ``closed`` while a call waits for Python's answer
    _CHECK_EVERY_S = 1.0

    def __init__(self) -> None:
        self.from_unity: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.to_unity: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        #: set by the gRPC thread once it took Python's answer (cleared by the stepping thread)
        self.taken = threading.Event()
        self.closed = threading.Event()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service with bytes in and out (no (de)serializers: the stepping thread does that)."""
        relay = grpc.unary_unary_rpc_method_handler(self._call)
        return grpc.method_handlers_generic_handler(self.SERVICE, {"Exchange": relay, "Initialize": relay})

    def _call(self, request: bytes, context) -> bytes:
        self.from_unity.put(request)
        while True:
            try:
                answer = self.to_unity.get(timeout=self._CHECK_EVERY_S)
            except queue.Empty:
                if self.closed.is_set() or not context.is_active():
                    return _status_message(400).SerializeToString()  # Python is gone: tell Unity to quit
                continue
            self.taken.set()
            return answer


def _status_message(status: int) -> UnityMessageProto:
    message = UnityMessageProto()
    message.header.status = status
    return message


class LargeMessageRpcCommunicator(RpcCommunicator):
    """mlagents-envs' communicator with large message limits and an in-process hand-off.

    The same protocol as ``RpcCommunicator`` (Python serves, Unity calls ``Exchange``;
    the same timeouts, process checks and closing message), with two
    differences: the gRPC server accepts and sends messages up to
    ``max_message_bytes``, and messages pass between the gRPC thread and the stepping
    thread through :class:`_Handoff` instead of a pipe (about 0.1-0.2 ms less per step
    with the stand-in, see ``benchmarks/results/bench_gateway.md``).

    Args:
        worker_id, base_port, timeout_wait: as ``RpcCommunicator``.
        max_message_bytes: receive and send limit of the server.
    """

    def __init__(self, worker_id: int, base_port: int, timeout_wait: int, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        self.handoff = _Handoff()
        #: called once per ``exchange`` after Python's message went to Unity and before waiting
        #: for Unity's answer: work that overlaps with Unity's step (see ``gateway.actor.worker_loop``)
        self.while_unity_steps: Callable[[], None] | None = None
        super().__init__(worker_id, base_port, timeout_wait)

    def create_server(self) -> None:
        """The server mlagents-envs builds, with raised message limits and the hand-off servicer."""
        self.check_port(self.port)
        try:
            self.server = grpc.server(
                thread_pool=ThreadPoolExecutor(max_workers=10),
                options=(
                    ("grpc.so_reuseport", 1),
                    ("grpc.max_receive_message_length", self._max_message_bytes),
                    ("grpc.max_send_message_length", self._max_message_bytes),
                ),
            )
            self.server.add_generic_rpc_handlers((self.handoff.generic_handler(),))
            self.server.add_insecure_port(f"[::]:{self.port}")
            self.server.start()
            self.is_open = True
        except Exception as err:
            raise UnityWorkerInUseException(self.worker_id) from err

    def _from_unity(self, poll_callback: PollCallback | None) -> UnityMessageProto:
        """Unity's next message; raises ``UnityTimeOutException`` after ``timeout_wait`` seconds.

        ``poll_callback`` (mlagents' check that the Unity process is alive) runs every
        tenth of the timeout, as in mlagents-envs, so a dead process is noticed early.
        """
        deadline = time.monotonic() + self.timeout_wait
        slice_s = max(1, self.timeout_wait // 10)
        while True:
            try:
                raw = self.handoff.from_unity.get(timeout=max(0.0, min(slice_s, deadline - time.monotonic())))
                return UnityMessageProto.FromString(raw)
            except queue.Empty:
                pass
            if time.monotonic() >= deadline:
                raise UnityTimeOutException(
                    f"Unity did not answer within {self.timeout_wait} s (timeout_wait): the build may need user "
                    "interaction to start, its Behavior Type may not be 'Default', its ML-Agents package may not "
                    "match this Python side, or it may need --no-graphics on a headless machine"
                )
            if poll_callback:
                poll_callback()  # raises when the Unity process died

    def _to_unity(self, inputs: UnityInputProto) -> None:
        message = _status_message(200)
        message.unity_input.CopyFrom(inputs)
        self.handoff.taken.clear()
        self.handoff.to_unity.put(message.SerializeToString())

    def initialize(self, inputs: UnityInputProto, poll_callback: PollCallback | None = None) -> UnityOutputProto:
        academy = self._from_unity(poll_callback).unity_output
        self._to_unity(inputs)
        self._from_unity(poll_callback)  # Unity's next Exchange: an empty acknowledgement
        return academy

    def exchange(self, inputs: UnityInputProto, poll_callback: PollCallback | None = None) -> UnityOutputProto | None:
        self._to_unity(inputs)
        if self.while_unity_steps is not None:
            # Let the gRPC thread pass the answer on before working alongside Unity: while
            # this thread holds the GIL, that one could not send it.
            self.handoff.taken.wait(_TAKE_WAIT_S)
            self.while_unity_steps()
        output = self._from_unity(poll_callback)
        if output.header.status != 200:
            return None
        return output.unity_output

    def close(self) -> None:
        """Tells Unity to quit (status 400) and stops the server."""
        if self.is_open:
            self.handoff.to_unity.put(_status_message(400).SerializeToString())
            self.handoff.closed.set()
            self.server.stop(False)
            self.is_open = False


class LargeMessageUnityEnvironment(UnityEnvironment):
    """``UnityEnvironment`` served by :class:`LargeMessageRpcCommunicator`.

    ``max_message_mb`` is a class attribute because mlagents-envs calls
    ``_get_communicator`` from ``__init__``; :func:`open_unity_environment` makes a
    subclass per limit.
    """

    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB

    def _generate_step_input(self, vector_action) -> UnityInputProto:
        """The step message, built as mlagents-envs builds it (the same bytes), in a fraction of the time.

        Why: mlagents-envs fills each agent's ``AgentActionProto`` by iterating numpy rows
        element by element (a numpy scalar per action value): ~0.4 ms per step at 256
        agents. Converting each behavior's actions to Python lists once and adding the
        agents' messages in place gives the same message (a test compares the bytes).
        """
        rl_in = UnityRLInputProto()
        for behavior, actions in vector_action.items():
            n_agents = len(self._env_state[behavior][0])
            if n_agents == 0:
                continue
            continuous = actions.continuous.tolist() if actions.continuous is not None else None
            discrete = actions.discrete.tolist() if actions.discrete is not None else None
            agents = rl_in.agent_actions[behavior].value
            for i in range(n_agents):
                action = agents.add()
                if continuous is not None:
                    action.vector_actions_deprecated.extend(continuous[i])
                    action.continuous_actions.extend(continuous[i])
                if discrete is not None:
                    action.vector_actions_deprecated.extend(discrete[i])
                    action.discrete_actions.extend(discrete[i])
            rl_in.command = STEP
        rl_in.side_channel = bytes(self._side_channel_manager.generate_side_channel_messages())
        return self._wrap_unity_input(rl_in)

    def _get_communicator(self, worker_id, base_port, timeout_wait):  # noqa: D102 - mlagents hook
        try:
            return LargeMessageRpcCommunicator(
                worker_id, base_port, timeout_wait, max_message_bytes=self.max_message_mb * 1024 * 1024
            )
        except BaseException:
            # mlagents registered ``atexit(self._close)`` before asking for the communicator;
            # on a half-built environment that hook fails noisily at exit, once per attempt.
            atexit.unregister(self._close)
            raise


def open_unity_environment(
    file_name: str | None,
    *,
    worker_id: int = 0,
    base_port: int | None = None,
    seed: int = 0,
    no_graphics: bool = False,
    timeout_wait: int = 60,
    additional_args: Sequence[str] | None = None,
    side_channels: Sequence[SideChannel] | None = None,
    log_folder: str | None = None,
    num_areas: int = 1,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
) -> UnityEnvironment:
    """Starts (or, with ``file_name=None``, waits for the Editor at) a Unity environment.

    Args:
        file_name: a Unity build (or ``unity_standin.executable_path()``); None: the Editor.
        worker_id: offset added to ``base_port``; must be 0 when ``file_name`` is None.
        base_port: None: 5005 for builds, 5004 for the Editor (mlagents-envs defaults).
        seed: sent to Unity in the initialization input.
        no_graphics: pass ``-nographics -batchmode`` to the build (camera sensors of a real
            build then render nothing; the stand-in does not care).
        timeout_wait: seconds to wait for Unity; values below 10 are raised to 10.
        additional_args: extra command-line arguments for the build.
        side_channels: side channels to register (a training analytics one is added).
        log_folder: absolute folder for the player log (``Player-<worker_id>.log``).
        num_areas: training areas Unity should replicate.
        max_message_mb: gRPC send/receive limit of the Python-side server, in MiB.

    Raises:
        ValueError: when ``max_message_mb`` is not positive.
        mlagents_envs.exception.UnityTimeOutException: Unity did not connect in time.
        mlagents_envs.exception.UnityEnvironmentException: the build could not start.
        mlagents_envs.exception.UnityWorkerInUseException: the port is taken.
    """
    if max_message_mb < 1:
        raise ValueError(f"max_message_mb must be >= 1, got {max_message_mb}")
    if timeout_wait < MIN_TIMEOUT_WAIT:
        _log.warning(
            "timeout_wait raised to the minimum (below it mlagents-envs busy-spins)",
            requested=timeout_wait, used=MIN_TIMEOUT_WAIT,
        )
        timeout_wait = MIN_TIMEOUT_WAIT
    env_class = type(
        "LargeMessageUnityEnvironment", (LargeMessageUnityEnvironment,), {"max_message_mb": int(max_message_mb)}
    )
    _log.info(
        "opening unity environment",
        file_name=file_name, worker_id=worker_id, base_port=base_port, seed=seed,
        additional_args=list(additional_args or []), max_message_mb=max_message_mb,
    )
    return env_class(
        file_name=file_name,
        worker_id=worker_id,
        base_port=base_port,
        seed=seed,
        no_graphics=no_graphics,
        timeout_wait=timeout_wait,
        additional_args=list(additional_args or []),
        side_channels=list(side_channels or []),
        log_folder=log_folder,
        num_areas=num_areas,
    )
