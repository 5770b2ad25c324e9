"""Expert demonstrations for the learners: ``.demo`` files as arrays of transitions.

Why: behavioral cloning and GAIL (``demo_path`` in a trainer YAML) learn from what an
expert did; :func:`load_demonstrations` reads a ``.demo`` file or a folder of them (as
ML-Agents' ``demo_path`` allows) into one :class:`Demonstrations` of N steps, checked
against the behavior's spec.

A step t pairs the observation of record t with the action decided there, which Unity
stores with record t+1 (see ``common.demonstration_file``), and with the reward and end
of record t+1. So the records of an episode give one step fewer than they count: the
terminal record is an observation nobody acted on. ML-Agents' own loader instead pairs
each record with its own stored action, the one decided a step earlier; Tandem's pairing
is the one the expert actually made (docs/MLAGENTS_DIFFERENCES.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from common.demonstration_file import (
    DemonstrationError,
    DemonstrationFile,
    demonstration_files,
    read_demonstration_file,
)
from common.specs import BehaviorSpec

__all__ = ["DemonstrationError", "Demonstrations", "demonstrations_of", "load_demonstrations", "transitions"]


@dataclass(frozen=True)
class Demonstrations:
    """Expert steps of one behavior, concatenated over episodes (N steps).

    Attributes:
        spec: the behavior as the (first) file describes it.
        observations: per observation ``[N, *shape]`` float32.
        continuous_actions: ``[N, continuous_size]`` float32, what the agent sent to Unity
            (the environment's units: what the policy's actions become in the environment).
        discrete_actions: ``[N, num_branches]`` int32.
        rewards: ``[N]`` float32, the reward after the step.
        dones: ``[N]`` bool, the episode ended after this step (terminal or interrupted).
        interrupted: ``[N]`` bool, it ended by max step (a subset of ``dones``); None given:
            all false.
        action_masks: ``[N, sum(branches)]`` bool, true = not allowed (all false when the
            files carry no masks, or None given).
        num_episodes: episodes that ended within the files.
        files: the files read, in order.
    """

    spec: BehaviorSpec
    observations: tuple[np.ndarray, ...]
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    interrupted: np.ndarray | None = None
    action_masks: np.ndarray | None = None
    num_episodes: int = 0
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = int(self.rewards.shape[0])
        if self.interrupted is None:
            object.__setattr__(self, "interrupted", np.zeros(n, bool))
        if self.action_masks is None:
            object.__setattr__(self, "action_masks", np.zeros((n, self.spec.action_spec.mask_size), bool))

    @property
    def num_steps(self) -> int:
        """N."""
        return int(self.rewards.shape[0])

    def episode_returns(self) -> np.ndarray:
        """Sum of rewards of each episode that ended in the files ``[num_episodes]``."""
        ends = np.flatnonzero(self.dones)
        sums = np.cumsum(self.rewards, dtype=np.float64)
        totals = sums[ends]
        return np.diff(np.concatenate([[0.0], totals])).astype(np.float32) if len(ends) else np.zeros(0, np.float32)


def _check_spec(demo: DemonstrationFile, spec: BehaviorSpec) -> None:
    a, b = demo.spec.action_spec, spec.action_spec
    if a != b:
        raise DemonstrationError(
            f"{demo.path}: the demonstration's actions (continuous {a.continuous_size}, discrete branches "
            f"{list(a.discrete_branches)}) do not match behavior {spec.name}'s (continuous {b.continuous_size}, "
            f"discrete branches {list(b.discrete_branches)})"
        )
    shapes = [o.shape for o in demo.spec.observations]
    expected = [o.shape for o in spec.observations]
    if shapes != expected:
        raise DemonstrationError(
            f"{demo.path}: the demonstration's observation shapes {shapes} do not match behavior {spec.name}'s {expected}"
        )


def transitions(demo: DemonstrationFile) -> dict[str, np.ndarray | list[np.ndarray]]:
    """One file's steps: each non-terminal record followed by another, paired with that
    next record's action, reward and end (see the module docstring)."""
    records = demo.records
    rows = [i for i in range(len(records) - 1) if not records[i].done]
    spec = demo.spec
    a = spec.action_spec
    n = len(rows)
    masks = np.zeros((n, a.mask_size), bool)
    for k, i in enumerate(rows):
        if records[i].action_mask is not None:
            masks[k] = records[i].action_mask
    return {
        "observations": [
            np.stack([records[i].observations[j] for i in rows]).astype(np.float32)
            if n else np.zeros((0, *o.shape), np.float32)
            for j, o in enumerate(spec.observations)
        ],
        "continuous_actions": np.asarray([records[i + 1].continuous_actions for i in rows], np.float32).reshape(n, a.continuous_size),
        "discrete_actions": np.asarray([records[i + 1].discrete_actions for i in rows], np.int32).reshape(n, a.num_branches),
        "rewards": np.asarray([records[i + 1].reward for i in rows], np.float32).reshape(n),
        "dones": np.asarray([records[i + 1].done for i in rows], bool).reshape(n),
        "interrupted": np.asarray([records[i + 1].max_step_reached for i in rows], bool).reshape(n),
        "action_masks": masks,
    }


def load_demonstrations(demo_path: str | os.PathLike, spec: BehaviorSpec | None = None) -> Demonstrations:
    """Reads a ``.demo`` file or every ``.demo`` file of a folder.

    Args:
        demo_path: a file or a folder (as ML-Agents' ``demo_path``).
        spec: the behavior that will learn from them; when given, every file's actions and
            observation shapes must match it.

    Raises:
        DemonstrationError: naming the file and what is wrong (missing, unreadable, a spec
            that does not match the behavior's or another file's, no step at all).
    """
    return demonstrations_of([read_demonstration_file(path) for path in demonstration_files(demo_path)], spec, str(demo_path))


def demonstrations_of(demos: list[DemonstrationFile], spec: BehaviorSpec | None = None, source: str = "") -> Demonstrations:
    """The steps of parsed files (``load_demonstrations`` once they are read; the offline
    trainer groups a folder's files by behavior first).

    Raises:
        DemonstrationError: as :func:`load_demonstrations`.
    """
    if not demos:
        raise DemonstrationError(f"{source}: no demonstration file")
    parts = []
    files = []
    first: DemonstrationFile | None = None
    for demo in demos:
        path = demo.path
        if spec is not None:
            _check_spec(demo, spec)
        if first is None:
            first = demo
        else:
            _check_spec(demo, first.spec)
        parts.append(transitions(demo))
        files.append(str(path))
    assert first is not None  # demonstration_files never returns an empty list
    steps = sum(len(p["rewards"]) for p in parts)
    if steps == 0:
        raise DemonstrationError(f"{source or first.path}: the demonstrations hold no step with an action (only episode ends)")
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "observations"}
    observations = tuple(np.concatenate([p["observations"][j] for p in parts]) for j in range(len(first.spec.observations)))
    return Demonstrations(
        spec=first.spec,
        observations=observations,
        num_episodes=int(joined["dones"].sum()),
        files=tuple(files),
        **joined,
    )


def demonstration_problems(options) -> list[str]:
    """``behavioral_cloning.demo_path`` and ``reward_signals.gail.demo_path`` of every behavior
    (and ``default_settings``) that names no ``.demo`` file: one line each, naming the
    configuration file and key.

    Why: the learner reads the demonstrations only when its behavior first connects; a
    wrong path is better reported before anything starts.
    """
    source = options.config_path or "<defaults>"
    sections = [(f"behaviors.{name}", settings) for name, settings in options.behaviors.items()]
    if options.default_settings is not None:
        sections.append(("default_settings", options.default_settings))
    problems = []
    for where, settings in sections:
        paths = []
        if settings.behavioral_cloning is not None:
            paths.append(("behavioral_cloning.demo_path", settings.behavioral_cloning.demo_path))
        gail = settings.reward_signals.get("gail")
        if gail is not None and getattr(gail, "demo_path", None):
            paths.append(("reward_signals.gail.demo_path", gail.demo_path))
        for key, path in paths:
            try:
                demonstration_files(path)
            except DemonstrationError as e:
                problems.append(f"{source}: {where}.{key}: {e}")
    return problems
