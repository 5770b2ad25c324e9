"""common.unity_env: the UnityEnvironment factory the gateway uses."""

from __future__ import annotations

import pytest
from standin_helpers import free_port

import unity_standin
from common.unity_env import LargeMessageRpcCommunicator, open_unity_environment


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
