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

The server Unity connects to has no authentication (Unity's side of the protocol has
none), so it listens on loopback only (``localhost``: 127.0.0.1 and ::1) unless told
otherwise (``listen_host``; mlagents-envs listens on every interface, which lets anyone
on the network drive or disturb the instance). A message that is not a
``UnityMessageProto`` is refused to its sender (INVALID_ARGUMENT) and the instance goes
on waiting for Unity's; side-channel data on a channel nobody registered is logged once
per channel (mlagents-envs' manager adds a log handler per warning: output that grows
quadratically with the steps).

This module never imports ``mlagents_envs.envs`` (gym/pettingzoo are not installed).
"""

from __future__ import annotations

import atexit
import queue
import struct
import threading
import time
import uuid
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
from google.protobuf.message import DecodeError
from mlagents_envs.exception import (
    UnityCommunicatorStoppedException,
    UnityEnvironmentException,
    UnityTimeOutException,
    UnityWorkerInUseException,
)
from mlagents_envs.rpc_communicator import RpcCommunicator
from mlagents_envs.side_channel.incoming_message import IncomingMessage
from mlagents_envs.side_channel.side_channel import SideChannel
from mlagents_envs.side_channel.side_channel_manager import SideChannelManager

from common.logging import get_logger

MIN_TIMEOUT_WAIT = 10
#: longest wait for the gRPC thread to take Python's answer before working alongside Unity
#: (microseconds normally; bounded in case Unity's call is already gone)
_TAKE_WAIT_S = 0.05
DEFAULT_MAX_MESSAGE_MB = 256
#: where the server Unity connects to listens by default: loopback only (127.0.0.1 and ::1)
DEFAULT_LISTEN_HOST = "localhost"
#: how often a wait for Unity checks the Unity process and the connection
_POLL_EVERY_S = 1.0
#: how long a closing server lets Unity's call receive its closing message
_CLOSE_GRACE_S = 1.0
#: the longest sender description kept in a log line about a refused message
_PEER_CHARS = 100

_log = get_logger("gateway.env.unity_environment")


class _Exchange:
    """One call of Unity's: its message (raw bytes) and, once the stepping thread decided, the answer.

    Attributes:
        request: the serialized ``UnityMessageProto`` as received.
        peer: the caller's address (for the log when its message is refused).
        answer: the serialized answer, set with ``done``.
        refused: why the message was refused (the caller gets INVALID_ARGUMENT), or None.
    """

    __slots__ = ("request", "peer", "answer", "refused", "done", "ended")

    def __init__(self, request: bytes, peer: str) -> None:
        self.request = request
        self.peer = peer
        self.answer: bytes | None = None
        self.refused: str | None = None
        self.done = threading.Event()
        #: the call ended (its client may be gone) before the stepping thread answered it
        self.ended = False


class _Handoff:
    """Relays Unity's messages to the stepping thread and the answers back, within one process.

    Why: mlagents-envs hands each message between its gRPC handler thread and the
    stepping thread through a ``multiprocessing.Pipe``, which pickles the protobuf (a
    serialize and a parse per message, both ways) and costs OS round trips. Both ends
    live in the same process, so a queue does. Messages cross as raw bytes: the stepping
    thread parses and serializes them, so the gRPC thread holds the GIL only briefly and
    Unity gets Python's answer as soon as it is given, even while the stepping thread goes
    on working (``LargeMessageRpcCommunicator.while_unity_steps``).

    Each call waits for the answer to its own message (``_Exchange``), so a call whose
    message does not parse is refused alone, and can never take the answer meant for Unity.

    Unity calls ``Exchange`` once per step (its first call carries the academy
    parameters; ``Initialize`` is served too, as mlagents-envs does); each call
    delivers Unity's message and blocks until Python's answer or until the
    communicator closes.
    """

    SERVICE = "communicator_objects.UnityToExternalProto"
    #: seconds between checks of ``closed`` while a call waits for Python's answer
    _CHECK_EVERY_S = 1.0

    def __init__(self) -> None:
        self.from_unity: queue.SimpleQueue[_Exchange] = queue.SimpleQueue()
        #: the call whose message the stepping thread took last and has not answered yet
        self.current: _Exchange | None = None
        #: set by the gRPC thread once it took Python's answer (cleared by the stepping thread)
        self.taken = threading.Event()
        self.closed = threading.Event()
        #: a call's client went away while it waited for Python's answer (Unity vanished)
        self.abandoned = threading.Event()

    def generic_handler(self) -> grpc.GenericRpcHandler:
        """The service with bytes in and out (no (de)serializers: the stepping thread does that)."""
        relay = grpc.unary_unary_rpc_method_handler(self._call)
        return grpc.method_handlers_generic_handler(self.SERVICE, {"Exchange": relay, "Initialize": relay})

    def _call(self, request: bytes, context) -> bytes:
        if self.closed.is_set():
            return _status_message(400).SerializeToString()  # Python is gone: tell Unity to quit
        call = _Exchange(request, context.peer())
        context.add_callback(lambda: self._ended(call))
        self.from_unity.put(call)
        while not call.done.wait(self._CHECK_EVERY_S):
            if self.closed.is_set():
                return _status_message(400).SerializeToString()
            if not context.is_active():
                if self.current is call:  # Unity itself is gone (an Editor closed without goodbye)
                    self.abandoned.set()
                return _status_message(400).SerializeToString()
        if call.refused is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, call.refused)
        self.taken.set()
        return call.answer

    def _ended(self, call: _Exchange) -> None:
        """gRPC's end-of-call callback: a call that ends before its answer was given lost its
        client; when it is Unity's own (an Editor closed without goodbye), Unity is gone."""
        if not call.done.is_set():
            call.ended = True
            if self.current is call:
                self.abandoned.set()

    def answer(self, message: bytes) -> None:
        """Gives the call taken last its answer (nothing when no call waits: Unity left)."""
        call, self.current = self.current, None
        if call is not None:
            call.answer = message
            call.done.set()

    def take(self, timeout_s: float) -> UnityMessageProto | None:
        """The next message that parses, within ``timeout_s`` seconds; None when none came.

        A message that does not parse is refused to its sender (logged with its address)
        and the wait goes on: it is not Unity's (Unity always sends a ``UnityMessageProto``),
        so nothing is wrong with the instance.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                call = self.from_unity.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            try:
                message = UnityMessageProto.FromString(call.request)
            except DecodeError as e:
                call.refused = f"not a UnityMessageProto ({len(call.request)} bytes): {e}"
                call.done.set()
                _log.warning(
                    "refused a message to the Unity port that is not a UnityMessageProto",
                    peer=call.peer[:_PEER_CHARS], size=len(call.request),
                )
                continue
            self.current = call
            if call.ended:  # Unity sent this and left before it could be answered
                self.abandoned.set()
            return message

    def close(self) -> None:
        """Answers every waiting call with status 400 (Unity quits) and refuses later ones the same way."""
        self.closed.set()
        quit_message = _status_message(400).SerializeToString()
        self.answer(quit_message)
        while True:
            try:
                call = self.from_unity.get_nowait()
            except queue.Empty:
                return
            call.answer = quit_message
            call.done.set()


def bind_address(host: str, port: int) -> str:
    """``host:port`` as gRPC binds it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _GuardedSideChannelManager(SideChannelManager):
    """mlagents-envs' side-channel manager, with unknown channels logged once each through our logger.

    Why: mlagents-envs 1.1.0 warns about data on an unregistered channel through
    ``mlagents_envs.logging_util.get_logger``, which adds one more stream handler to its
    logger at every call: each warning is then printed once per earlier warning, and a
    scene that sends such data every step floods the log (hundreds of thousands of lines
    in a minute). The messages are split here as mlagents-envs splits them (channel id,
    int32 length, payload), with the same errors.

    Args:
        channels: the registered channels, by id (the manager mlagents-envs built).
    """

    def __init__(self, channels: dict[uuid.UUID, SideChannel]) -> None:
        self._side_channels_dict = dict(channels)
        self._unknown_seen: set[uuid.UUID] = set()

    def process_side_channel_message(self, data: bytes) -> None:
        """Hands each message of ``data`` to its channel; unknown channels are skipped.

        Raises:
            UnityEnvironmentException: a header or a payload runs past the end of ``data``.
        """
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            if offset + 20 > len(view):
                raise UnityEnvironmentException(
                    f"side-channel data: a message header is cut short at byte {offset} of {len(view)} "
                    "(does the ML-Agents package of the Unity build match this Python side?)"
                )
            channel_id = uuid.UUID(bytes_le=bytes(view[offset : offset + 16]))
            (length,) = struct.unpack_from("<i", view, offset + 16)
            start = offset + 20
            if length < 0 or start + length > len(view):
                raise UnityEnvironmentException(
                    f"side-channel data: the message of channel {channel_id} announces {length} bytes, "
                    f"{len(view) - start} are left"
                )
            offset = start + length
            channel = self._side_channels_dict.get(channel_id)
            if channel is not None:
                channel.on_message_received(IncomingMessage(bytes(view[start:offset])))
            elif channel_id not in self._unknown_seen:
                self._unknown_seen.add(channel_id)
                _log.warning(
                    "side-channel data on a channel nobody registered is ignored (logged once per channel)",
                    channel_id=str(channel_id), size=length,
                )


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
        listen_host: the address the server binds (``localhost``: loopback only).
        editor: the peer is a Unity Editor (no process to watch; errors give Editor advice).
    """

    def __init__(
        self,
        worker_id: int,
        base_port: int,
        timeout_wait: int,
        max_message_bytes: int,
        listen_host: str = DEFAULT_LISTEN_HOST,
        editor: bool = False,
    ) -> None:
        self._max_message_bytes = max_message_bytes
        self._listen_host = listen_host
        self._editor = editor
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
            if not self.server.add_insecure_port(bind_address(self._listen_host, self.port)):
                raise OSError(f"cannot bind {bind_address(self._listen_host, self.port)}")
            self.server.start()
            self.is_open = True
        except Exception as err:
            raise UnityWorkerInUseException(self.worker_id) from err

    def _from_unity(self, poll_callback: PollCallback | None) -> UnityMessageProto:
        """Unity's next message; raises ``UnityTimeOutException`` after ``timeout_wait`` seconds.

        ``poll_callback`` (mlagents' check that the Unity process is alive) runs every
        second while waiting, so a dead process is noticed early. A Unity (an Editor) whose
        call was dropped while it waited for Python's answer is gone too: that raises
        ``UnityCommunicatorStoppedException`` at once instead of after the timeout.
        """
        deadline = time.monotonic() + self.timeout_wait
        while True:
            if self.handoff.abandoned.is_set():
                if poll_callback:
                    poll_callback()  # a dead process says how it died
                raise UnityCommunicatorStoppedException(
                    "Unity's connection closed without a goodbye"
                    + (" (was the Unity Editor closed?)" if self._editor else "")
                )
            message = self.handoff.take(max(0.0, min(_POLL_EVERY_S, deadline - time.monotonic())))
            if message is not None:
                return message
            if time.monotonic() >= deadline:
                raise UnityTimeOutException(self._timeout_advice())
            if poll_callback:
                poll_callback()  # raises when the Unity process died

    def _timeout_advice(self) -> str:
        if self._editor:
            return (
                f"the Unity Editor did not answer within {self.timeout_wait} s (timeout_wait): press Play in the "
                "Editor (the gateway must be listening before Play is pressed); check that the agents' Behavior "
                "Type is 'Default', that the Editor's ML-Agents package matches this Python side, and that the "
                "Editor is not paused or stopped at a breakpoint"
            )
        return (
            f"Unity did not answer within {self.timeout_wait} s (timeout_wait): the build may need user "
            "interaction to start, its Behavior Type may not be 'Default', its ML-Agents package may not "
            "match this Python side, or it may need --no-graphics on a headless machine"
        )

    def _to_unity(self, inputs: UnityInputProto) -> None:
        message = _status_message(200)
        message.unity_input.CopyFrom(inputs)
        self.handoff.taken.clear()
        self.handoff.answer(message.SerializeToString())

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
        """Tells Unity to quit (status 400) and stops the server.

        The server stops with a short grace: stopping at once could cancel Unity's call
        before the closing message reached it (Unity then sees a broken stream, not a quit).
        """
        if self.is_open:
            self.handoff.close()
            self.server.stop(_CLOSE_GRACE_S)
            self.is_open = False


class LargeMessageUnityEnvironment(UnityEnvironment):
    """``UnityEnvironment`` served by :class:`LargeMessageRpcCommunicator`.

    ``max_message_mb`` is a class attribute because mlagents-envs calls
    ``_get_communicator`` from ``__init__``; :func:`open_unity_environment` makes a
    subclass per limit.
    """

    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB
    listen_host: str = DEFAULT_LISTEN_HOST
    editor: bool = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # the handshake reads no side-channel data: replacing the manager here misses nothing
        self._side_channel_manager = _GuardedSideChannelManager(self._side_channel_manager._side_channels_dict)

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
                worker_id,
                base_port,
                timeout_wait,
                max_message_bytes=self.max_message_mb * 1024 * 1024,
                listen_host=self.listen_host,
                editor=self.editor,
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
    listen_host: str = DEFAULT_LISTEN_HOST,
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
        listen_host: the address the Python-side server (the one Unity connects to) binds:
            ``localhost`` (loopback only, the default), or e.g. ``0.0.0.0`` for a Unity Editor
            on another machine (that port has no authentication).

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
        "LargeMessageUnityEnvironment",
        (LargeMessageUnityEnvironment,),
        {"max_message_mb": int(max_message_mb), "listen_host": listen_host, "editor": file_name is None},
    )
    _log.info(
        "opening unity environment",
        file_name=file_name, worker_id=worker_id, base_port=base_port, seed=seed,
        additional_args=list(additional_args or []), max_message_mb=max_message_mb, listen_host=listen_host,
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
