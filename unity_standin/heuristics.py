"""Scripted experts for the stand-in's tasks, from what the agents observe.

Why: ML-Agents users record demonstrations with a behavior set to "Heuristic Only" (a
hand-written ``Heuristic()``); the stand-in's tasks get such players too, so that expert
demonstrations can be made here (``tandem-gateway --heuristic BEHAVIOR --record-demo DIR``)
and imitation learning tested against a known expert. Each heuristic reads only the
observations (and the action mask) the agents send, so it can act wherever those arrive.

- ``3DBall``: a PD controller. It tilts the platform so that the ball accelerates back
  to the centre, ``a = -KP x - KD v`` per axis (the tilt whose sine gives that
  acceleration, at most ``MAX_TARGET_TILT_DEG``), and turns towards that tilt at the
  task's turn rate. It keeps every ball up for whole episodes (return about 100).
- ``GridWorld``: a shortest path to the goal around the pit; it digs on the goal.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

#: ``(observations per spec [n, *shape], action mask [n, m] or None) -> (continuous [n, c], discrete [n, b])``
Heuristic = Callable[[list[np.ndarray], "np.ndarray | None"], tuple[np.ndarray, np.ndarray]]

# 3DBall: gains of the ball's acceleration towards the centre, and the turn per decision
KP, KD = 2.0, 2.2
MAX_TARGET_TILT_DEG = 25.0
GRAVITY_TERM = 9.81 * 5.0 / 7.0  # the task's rolling-ball acceleration per unit sine of tilt
TURN_PER_DECISION_DEG = 2.0 * 5  # 2 degrees per physics step, 5 physics steps per decision


def ball3d(observations: list[np.ndarray], action_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """3DBall's expert: environment actions ``[n, 2]`` in [-1, 1] (turn around z, around x)."""
    obs = np.asarray(observations[0], np.float64)
    tilt_z = np.degrees(2.0 * np.arcsin(np.clip(obs[:, 0], -1, 1)))
    tilt_x = np.degrees(2.0 * np.arcsin(np.clip(obs[:, 1], -1, 1)))
    # x accelerates by -sin(tilt_z) g', z by +sin(tilt_x) g'
    want_x = -KP * obs[:, 2] - KD * obs[:, 5]
    want_z = -KP * obs[:, 4] - KD * obs[:, 7]
    limit = np.sin(np.radians(MAX_TARGET_TILT_DEG))
    target_z = np.degrees(np.arcsin(np.clip(-want_x / GRAVITY_TERM, -limit, limit)))
    target_x = np.degrees(np.arcsin(np.clip(want_z / GRAVITY_TERM, -limit, limit)))
    turn = np.stack([target_z - tilt_z, target_x - tilt_x], axis=1) / TURN_PER_DECISION_DEG
    return np.clip(turn, -1.0, 1.0).astype(np.float32), np.zeros((obs.shape[0], 0), np.int32)


# GridWorld's move branch: 0 stay, 1 up (row - 1), 2 down, 3 left (column - 1), 4 right
_MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]])


def gridworld(observations: list[np.ndarray], action_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GridWorld's expert from the vector sensor (goal and pit offsets): discrete ``[n, 2]``.

    Any move towards the goal keeps the path shortest; of those it takes first the one
    along the axis with more cells to go, unless the pit lies on that line no farther than
    the goal (only such a move could step on it). When the pit blocks the one straight line
    to the goal it steps aside (a path two moves longer, still the shortest).
    """
    vector = np.asarray(observations[-1], np.float64)
    n = vector.shape[0]
    goal, pit = vector[:, 2:4], vector[:, 4:6]  # offsets from the agent, in cells / grid size
    allowed = np.ones((n, 5), bool) if action_mask is None else ~np.asarray(action_mask, bool)[:, :5]
    discrete = np.zeros((n, 2), np.int32)
    for i in range(n):
        if np.all(np.abs(goal[i]) < _EPS):
            discrete[i] = (0, 1)  # on the goal: dig
            continue
        toward = sorted((m for m in (1, 2, 3, 4) if _MOVES[m] @ goal[i] > _EPS), key=lambda m: -abs(_MOVES[m] @ goal[i]))
        safe = [m for m in toward if allowed[i, m] and not _pit_ahead(m, goal[i], pit[i])]
        if safe:
            discrete[i, 0] = safe[0]
            continue
        aside = [m for m in (1, 2, 3, 4) if abs(_MOVES[m] @ goal[i]) < _EPS and allowed[i, m]]
        discrete[i, 0] = aside[0] if aside else 0
    return np.zeros((n, 0), np.float32), discrete


_EPS = 1e-6


def _pit_ahead(move: int, goal: np.ndarray, pit: np.ndarray) -> bool:
    """Whether the pit lies on ``move``'s line, in its direction, no farther than the goal."""
    direction = _MOVES[move]
    along, across = int(np.flatnonzero(direction)[0]), int(np.flatnonzero(direction == 0)[0])
    ahead = pit[along] * direction[along]
    return abs(pit[across]) < _EPS and ahead > _EPS and ahead <= goal[along] * direction[along] + _EPS


#: behavior name (without ``?team=``) -> its expert
HEURISTICS: dict[str, Heuristic] = {"3DBall": ball3d, "GridWorld": gridworld}


def heuristic_for(behavior: str) -> Heuristic:
    """The scripted expert of a stand-in behavior (``3DBall`` or ``3DBall?team=0``).

    Raises:
        ValueError: naming the behavior and the ones that have a heuristic.
    """
    base = behavior.split("?", 1)[0]
    if base not in HEURISTICS:
        raise ValueError(f"behavior {base!r} has no scripted heuristic (available: {', '.join(sorted(HEURISTICS))})")
    return HEURISTICS[base]
