"""A stand-in for a Unity player: the Unity side of the ML-Agents protocol with built-in tasks.

Launch it like a Unity build: ``UnityEnvironment(file_name=executable_path(),
additional_args=["--task", "gridworld"])`` (or ``gateway.env.unity_environment.open_unity_environment``),
or run ``tandem-unity-standin --mlagents-port N`` yourself against a waiting
``UnityEnvironment(file_name=None, base_port=N)`` as the Editor would.

Built-in tasks (``--task``, or ``TANDEM_STANDIN_TASK``; details in ``unity_standin.tasks.*``):
  - ``3dball``: ``3DBall?team=0``, 12 agents, 8 vector obs, 2 continuous actions,
    decision every 5 physics steps, 1000 decisions max; parameters gravity, mass, scale.
  - ``gridworld``: ``GridWorld?team=0``, 4 agents, PNG camera (3, 24, 24) + 6 vector obs,
    discrete branches (5, 2) with masks; parameter gridSize.
  - ``multibehavior``: ``Chaser?team=0`` (continuous) and ``Runner?team=0`` (discrete,
    decides every 3 steps, staggered), 4 areas; parameters runner_speed, catch_radius.
  - ``walljump``: ``WallJump?team=0``, 12 agents, 3 vector obs, one discrete branch of 3;
    parameter wall_height (climbs in a row needed; made for curricula).

Like com.unity.ml-agents 3.x: brain parameters arrive with a behavior's first agent infos
(after ``reset()``), agent ids stay fixed for an agent's life (``--agent-ids per-episode``
changes that), and an episode ended between decisions is reported at the next step alone.
"""

from __future__ import annotations

import os
import shutil
import sys

SCRIPT_NAME = "tandem-unity-standin"


def executable_path() -> str:
    """Absolute path of the installed ``tandem-unity-standin`` script.

    Looks next to the running interpreter first (the project's virtual environment),
    then on PATH.

    Raises:
        FileNotFoundError: when the script is not installed (run ``make setup``).
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), SCRIPT_NAME)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(SCRIPT_NAME)
    if found:
        return os.path.abspath(found)
    raise FileNotFoundError(
        f"{SCRIPT_NAME} is not installed next to {sys.executable} nor on PATH; run `make setup`"
    )


__all__ = ["SCRIPT_NAME", "executable_path"]
