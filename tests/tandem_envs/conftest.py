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


def _gateway(task: str, agents: int, num_envs: int = 1, doc: str = ""):
    """A module-scoped fixture: a running gateway on the stand-in's ``task``, ``agents`` agents per instance."""

    @pytest.fixture(scope="module")
    def fixture():
        env_args = ("--task", task, "--num-agents", str(agents))
        with running_gateway(environment_options(num_envs=num_envs, env_args=env_args)) as gw:
            yield gw

    fixture.__doc__ = doc
    return fixture


ball_one = _gateway("3dball", 1, doc="3DBall with one agent: the single-agent Env.")
grid_one = _gateway("gridworld", 1, doc="GridWorld with one agent: branches, masks, a visual and a vector observation.")
ball_two_instances = _gateway("3dball", 3, num_envs=2, doc="3DBall, 2 instances of 3 agents: 6 vector slots.")
grid_four = _gateway("gridworld", 4, doc="GridWorld with 4 agents.")
multibehavior = _gateway(
    "multibehavior", 2, doc="Chasers and runners in 2 areas: two behaviors, staggered decisions, catches, interruptions."
)
