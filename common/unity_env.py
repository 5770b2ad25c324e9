"""Opens an mlagents-envs ``UnityEnvironment`` with a server that takes large messages.

Why: ``UnityEnvironment`` serves gRPC with the default 4 MiB receive limit, so a Unity
output with many visual observations is rejected on the Unity side. The subclass here
serves with a configurable limit through ``UnityEnvironment._get_communicator``, the
hook mlagents-envs provides. It also keeps ``timeout_wait`` at 10 seconds or more: the
communicator polls in ``timeout_wait // 10`` second slices, so below 10 it busy-spins.

This module never imports ``mlagents_envs.envs`` (gym/pettingzoo are not installed).
"""

from __future__ import annotations

import atexit

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import grpc
from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import (
    add_UnityToExternalProtoServicer_to_server,
)
from mlagents_envs.environment import UnityEnvironment
from mlagents_envs.exception import UnityWorkerInUseException
from mlagents_envs.rpc_communicator import RpcCommunicator, UnityToExternalServicerImplementation
from mlagents_envs.side_channel.side_channel import SideChannel

from common.logging import get_logger

MIN_TIMEOUT_WAIT = 10
DEFAULT_MAX_MESSAGE_MB = 256

_log = get_logger("common.unity_env")


class LargeMessageRpcCommunicator(RpcCommunicator):
    """mlagents-envs' communicator whose gRPC server accepts and sends large messages.

    Args:
        worker_id, base_port, timeout_wait: as ``RpcCommunicator``.
        max_message_bytes: receive and send limit of the server.
    """

    def __init__(self, worker_id: int, base_port: int, timeout_wait: int, max_message_bytes: int) -> None:
        self._max_message_bytes = max_message_bytes
        super().__init__(worker_id, base_port, timeout_wait)

    def create_server(self) -> None:
        """Same server as mlagents-envs builds, with raised message limits."""
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
            self.unity_to_external = UnityToExternalServicerImplementation()
            add_UnityToExternalProtoServicer_to_server(self.unity_to_external, self.server)
            self.server.add_insecure_port(f"[::]:{self.port}")
            self.server.start()
            self.is_open = True
        except Exception as err:
            raise UnityWorkerInUseException(self.worker_id) from err


class LargeMessageUnityEnvironment(UnityEnvironment):
    """``UnityEnvironment`` served by :class:`LargeMessageRpcCommunicator`.

    ``max_message_mb`` is a class attribute because mlagents-envs calls
    ``_get_communicator`` from ``__init__``; :func:`open_unity_environment` makes a
    subclass per limit.
    """

    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB

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
