"""gateway.env.unity_environment: the UnityEnvironment factory the gateway uses."""

from __future__ import annotations

import pytest
from standin_helpers import free_port

import unity_standin
from gateway.env.unity_environment import LargeMessageRpcCommunicator, open_unity_environment


def test_timeout_wait_is_clamped_and_the_server_takes_large_messages():
    env = open_unity_environment(
        unity_standin.executable_path(), worker_id=0, base_port=free_port(), timeout_wait=2, max_message_mb=64
    )
    try:
        assert env._timeout_wait == 10
        assert isinstance(env._communicator, LargeMessageRpcCommunicator)
        assert env._communicator._max_message_bytes == 64 * 1024 * 1024
        env.reset()
        assert "3DBall?team=0" in env.behavior_specs
    finally:
        env.close()


def test_bad_message_limit_is_refused():
    with pytest.raises(ValueError, match="max_message_mb"):
        open_unity_environment(unity_standin.executable_path(), max_message_mb=0)


def test_the_handoff_communicator_follows_the_unity_protocol():
    """A real gRPC client plays Unity: academy output, the empty acknowledgement, steps, the closing 400."""
    import threading

    import grpc
    from mlagents_envs.communicator_objects.unity_input_pb2 import UnityInputProto
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
    from mlagents_envs.communicator_objects.unity_to_external_pb2_grpc import UnityToExternalProtoStub

    port = free_port()
    communicator = LargeMessageRpcCommunicator(0, port, timeout_wait=10, max_message_bytes=8 << 20)
    seen: list[UnityMessageProto] = []

    def unity() -> None:
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            stub = UnityToExternalProtoStub(channel)
            hello = UnityMessageProto()
            hello.header.status = 200
            hello.unity_output.rl_initialization_output.name = "academy"
            seen.append(stub.Exchange(hello, timeout=10))  # Unity starts with Exchange, as the stand-in
            ack = UnityMessageProto()
            ack.header.status = 200
            reply = stub.Exchange(ack, timeout=10)
            for step in range(3):
                seen.append(reply)
                out = UnityMessageProto()
                out.header.status = 200
                out.unity_output.rl_output.side_channel = bytes([step])
                reply = stub.Exchange(out, timeout=10)
            seen.append(reply)  # the closing message

    thread = threading.Thread(target=unity)
    thread.start()
    inputs = UnityInputProto()
    inputs.rl_initialization_input.seed = 7
    academy = communicator.initialize(inputs)
    assert academy.rl_initialization_output.name == "academy"
    for step in range(3):
        step_input = UnityInputProto()
        step_input.rl_input.side_channel = bytes([10 + step])
        output = communicator.exchange(step_input)
        assert output.rl_output.side_channel == bytes([step])
    communicator.close()
    thread.join(10)
    assert not thread.is_alive()
    assert seen[0].unity_input.rl_initialization_input.seed == 7
    assert [m.unity_input.rl_input.side_channel for m in seen[1:4]] == [b"\n", b"\x0b", b"\x0c"]
    assert seen[4].header.status == 400


def test_the_handoff_communicator_times_out_when_unity_stops_answering():
    from mlagents_envs.communicator_objects.unity_input_pb2 import UnityInputProto
    from mlagents_envs.exception import UnityTimeOutException

    communicator = LargeMessageRpcCommunicator(0, free_port(), timeout_wait=3, max_message_bytes=1 << 20)
    checks = []
    try:
        with pytest.raises(UnityTimeOutException, match="timeout_wait"):
            communicator.exchange(UnityInputProto(), poll_callback=lambda: checks.append(1))
        assert checks  # the process check ran while waiting
    finally:
        communicator.close()


def test_the_step_message_is_byte_for_byte_what_mlagents_builds():
    """``_generate_step_input``'s faster version against mlagents-envs' own, on hybrid, empty and many agents."""
    import numpy as np
    from mlagents_envs.base_env import ActionTuple
    from mlagents_envs.environment import UnityEnvironment
    from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
    from mlagents_envs.side_channel.side_channel_manager import SideChannelManager

    from gateway.env.unity_environment import LargeMessageUnityEnvironment

    rng = np.random.default_rng(3)

    class State:
        """The attributes ``_generate_step_input`` reads, without a Unity process."""

        _wrap_unity_input = staticmethod(UnityEnvironment._wrap_unity_input)

        def __init__(self, counts: dict[str, int]) -> None:
            self._env_state = {name: (list(range(n)), None) for name, n in counts.items()}
            params = EnvironmentParametersChannel()
            params.set_float_parameter("gravity", -9.5)  # a side channel message rides along
            self._side_channel_manager = SideChannelManager([params])

    counts = {"Hybrid?team=0": 5, "Continuous?team=1": 256, "Nobody?team=0": 0, "Discrete?team=0": 3}
    actions = {
        "Hybrid?team=0": ActionTuple(
            continuous=rng.standard_normal((5, 3)).astype(np.float32) * 1e3,
            discrete=rng.integers(0, 4, (5, 2)).astype(np.int32),
        ),
        "Continuous?team=1": ActionTuple(continuous=rng.uniform(-1, 1, (256, 2)).astype(np.float32)),
        "Nobody?team=0": ActionTuple(continuous=np.zeros((0, 2), np.float32)),
        "Discrete?team=0": ActionTuple(discrete=rng.integers(0, 7, (3, 1)).astype(np.int32)),
    }
    ours = LargeMessageUnityEnvironment._generate_step_input(State(counts), actions)
    theirs = UnityEnvironment._generate_step_input(State(counts), actions)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
    assert len(ours.rl_input.agent_actions["Continuous?team=1"].value) == 256
    empty = {"Nobody?team=0": ActionTuple(continuous=np.zeros((0, 2), np.float32))}
    assert (
        LargeMessageUnityEnvironment._generate_step_input(State({"Nobody?team=0": 0}), empty).SerializeToString()
        == UnityEnvironment._generate_step_input(State({"Nobody?team=0": 0}), empty).SerializeToString()
    )
