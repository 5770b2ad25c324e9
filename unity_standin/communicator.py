"""The Unity side of the gRPC link: a client of ``UnityToExternalProto/Exchange``.

Why: in ML-Agents the Python trainer is the gRPC *server* and the Unity player the
client. The player opens with two exchanges (its initialization output, answered by the
initialization input; then an empty message, answered by the first real input, usually
RESET), then sends one output per step and waits for the input. A reply whose header
status is not 200 (Python's ``close()`` sends 400) means quit.
"""

from __future__ import annotations

import grpc

from common.logging import get_logger
from mlagents_envs.communicator_objects.capabilities_pb2 import UnityRLCapabilitiesProto
from mlagents_envs.communicator_objects.header_pb2 import HeaderProto
from mlagents_envs.communicator_objects.unity_input_pb2 import UnityInputProto
from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
from mlagents_envs.communicator_objects.unity_output_pb2 import UnityOutputProto
from mlagents_envs.communicator_objects.unity_rl_initialization_input_pb2 import (
    UnityRLInitializationInputProto,
)
from mlagents_envs.communicator_objects.unity_rl_initialization_output_pb2 import (
    UnityRLInitializationOutputProto,
)
from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import UnityToExternalProtoStub

COMMUNICATION_VERSION = "1.5.0"
PACKAGE_VERSION = "3.0.0"  # com.unity.ml-agents release speaking communication 1.5.0
ACADEMY_NAME = "AcademySingleton"

_log = get_logger("unity_standin.communicator")


#: how a pending ``Exchange`` ends when the trainer stops its gRPC server without grace
_SERVER_STOPPED = "UNAVAILABLE: Cancelling all calls"


class ConnectionLost(Exception):
    """The Python side went away without closing (its process died or the link broke)."""


def capabilities() -> UnityRLCapabilitiesProto:
    """Everything com.unity.ml-agents 3.x announces."""
    return UnityRLCapabilitiesProto(
        baseRLCapabilities=True,
        concatenatedPngObservations=True,
        compressedChannelMapping=True,
        hybridActions=True,
        trainingAnalytics=True,
        variableLengthObservation=True,
        multiAgentGroups=True,
    )


class Communicator:
    """gRPC client towards the trainer's ``UnityToExternalProto`` server.

    Args:
        port: the port given by ``--mlagents-port`` (5004, the Editor port, by default).
        connect_timeout_s: how long the first exchange waits for the server to be up.
    """

    def __init__(self, port: int, connect_timeout_s: float = 60.0) -> None:
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        self._channel = grpc.insecure_channel(
            f"localhost:{port}",
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        self._stub = UnityToExternalProtoStub(self._channel)
        self.is_open = True

    def _call(self, message: UnityMessageProto, timeout: float | None = None) -> UnityMessageProto:
        try:
            return self._stub.Exchange(message, timeout=timeout, wait_for_ready=timeout is not None)
        except grpc.RpcError as err:
            self.is_open = False
            raise ConnectionLost(f"{err.code().name}: {err.details()}") from err

    def initialize(self) -> tuple[UnityRLInitializationInputProto, UnityInputProto | None]:
        """The handshake; returns the initialization input and the first input (None: closed)."""
        init_output = UnityOutputProto(
            rl_initialization_output=UnityRLInitializationOutputProto(
                name=ACADEMY_NAME,
                communication_version=COMMUNICATION_VERSION,
                package_version=PACKAGE_VERSION,
                capabilities=capabilities(),
            )
        )
        reply = self._call(
            UnityMessageProto(header=HeaderProto(status=200), unity_output=init_output),
            timeout=self._connect_timeout_s,
        )
        if reply.header.status != 200:
            self.is_open = False
            return reply.unity_input.rl_initialization_input, None
        init_input = reply.unity_input.rl_initialization_input
        _log.info(
            "connected to trainer",
            port=self.port,
            python_communication_version=init_input.communication_version,
            python_package_version=init_input.package_version,
            seed=init_input.seed,
            num_areas=init_input.num_areas,
        )
        if init_input.communication_version.split(".")[0] != COMMUNICATION_VERSION.split(".")[0]:
            _log.warning(
                "communication versions differ in their major number",
                unity=COMMUNICATION_VERSION, python=init_input.communication_version,
            )
        first = self._call(UnityMessageProto(header=HeaderProto(status=200)))
        return init_input, self._unwrap(first)

    def exchange(self, output: UnityOutputProto) -> UnityInputProto | None:
        """Sends one output; returns the next input, or None when Python closed (status 400).

        mlagents-envs' ``close()`` queues its status-400 reply and then stops its server
        without grace; when the stop wins the race, the pending call ends UNAVAILABLE with
        gRPC's "Cancelling all calls". That is the trainer closing, not a lost connection.
        """
        try:
            reply = self._call(UnityMessageProto(header=HeaderProto(status=200), unity_output=output))
        except ConnectionLost as err:
            if str(err) != _SERVER_STOPPED:
                raise
            _log.info("trainer closed the connection", status="server stopped")
            return None
        return self._unwrap(reply)

    def _unwrap(self, reply: UnityMessageProto) -> UnityInputProto | None:
        if reply.header.status != 200:
            self.is_open = False
            _log.info("trainer closed the connection", status=reply.header.status)
            return None
        return reply.unity_input

    def goodbye(self) -> None:
        """Says goodbye as Unity does when it quits or the Editor leaves Play mode: one
        ``Exchange`` with status 400 (whatever comes back, or a broken connection, is ignored)."""
        try:
            self._stub.Exchange(UnityMessageProto(header=HeaderProto(status=400)), timeout=10)
        except grpc.RpcError as err:
            _log.info("the goodbye was not answered", error=f"{err.code().name}: {err.details()}")
        self.is_open = False

    def close(self) -> None:
        self._channel.close()
