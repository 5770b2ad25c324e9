"""Fixtures: stand-in environments on free ports, always closed after the test."""

from __future__ import annotations

import pytest
from mlagents_envs.exception import UnityEnvironmentException, UnityWorkerInUseException

import unity_standin
from gateway.env.unity_environment import open_unity_environment
from standin_helpers import free_port


@pytest.fixture
def open_env():
    """Opens ``UnityEnvironment`` against the stand-in: ``open_env(task, args=[...], **kwargs)``."""
    opened = []

    def _open(task: str = "3dball", *, args=(), side_channels=(), timeout_wait: int = 10, **kwargs):
        for attempt in range(3):
            try:
                env = open_unity_environment(
                    unity_standin.executable_path(),
                    worker_id=0,
                    base_port=free_port(),
                    timeout_wait=timeout_wait,
                    additional_args=["--task", task, *args],
                    side_channels=list(side_channels),
                    **kwargs,
                )
                break
            except UnityWorkerInUseException:
                if attempt == 2:
                    raise
        opened.append(env)
        return env

    yield _open
    for env in opened:
        try:
            env.close()
        except UnityEnvironmentException:
            pass  # already closed by the test
