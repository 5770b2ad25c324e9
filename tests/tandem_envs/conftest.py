"""Fixtures of the adapter tests: real gateways (worker processes, stand-in Unity players) on free ports.

The gateway helpers live beside the gateway tests; pytest puts only this folder on the
import path, so it is added here (the helpers are shared, not copied).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_helpers import environment_options, running_gateway  # noqa: E402


def standin_gateway(task: str, agents: int, num_envs: int = 1):
    """A running gateway (context manager) on the stand-in's ``task`` with ``agents`` agents per instance."""
    return running_gateway(environment_options(num_envs=num_envs, env_args=("--task", task, "--num-agents", str(agents))))


@pytest.fixture(scope="module")
def ball_one():
    """3DBall with one agent: the single-agent Env."""
    with standin_gateway("3dball", 1) as gw:
        yield gw


@pytest.fixture(scope="module")
def grid_one():
    """GridWorld with one agent: discrete branches, masks, a visual and a vector observation."""
    with standin_gateway("gridworld", 1) as gw:
        yield gw


@pytest.fixture(scope="module")
def ball_two_instances():
    """3DBall, 2 instances of 3 agents: 6 vector slots."""
    with standin_gateway("3dball", 3, num_envs=2) as gw:
        yield gw


@pytest.fixture(scope="module")
def grid_four():
    """GridWorld with 4 agents."""
    with standin_gateway("gridworld", 4) as gw:
        yield gw


@pytest.fixture(scope="module")
def multibehavior():
    """Chasers and runners in 2 areas: two behaviors, staggered decisions, catches and interruptions."""
    with standin_gateway("multibehavior", 2) as gw:
        yield gw
