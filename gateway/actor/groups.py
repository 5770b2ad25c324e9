"""Groupmate statuses of multi-agent groups, for POCA's centralized critic.

Why: ML-Agents' POCA trains each agent's policy with a critic that sees its whole group
(``trainer_type: poca``). So every step of an agent's trajectory carries what its
groupmates did at that step (ML-Agents' ``GroupmateStatus``: the observation each mate
acted on, its action, its reward, whether its episode ended there) and each trajectory
ends with the mates' latest observations (the group's bootstrap value) and whether the
group went on after the agent stopped.

Semantics (ML-Agents 1.1.0's ``AgentProcessor``): an agent reports a status each time it
shows up in a decision or terminal step with an action still waiting for its reward; the
status stays the group's latest word from that agent until the agent reports again, and
is forgotten once its episode ended (after the step is processed). A step's groupmates are
the statuses of the other agents of its group when its reward arrives. Group 0 is no group.
Unlike ML-Agents, which adds a step's terminal statuses before the decision ones and so
gives an agent that ends in the same step as its deciding mates those mates' previous
statuses, every status of a step is taken in before any is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.specs import BehaviorSpec
from common.trajectory import Groupmates, Trajectory


@dataclass
class MateStatus:
    """One agent's latest word to its group."""

    observations: list[np.ndarray]  # per observation spec, [*shape]: what it acted on
    continuous: np.ndarray  # [continuous_size]
    discrete: np.ndarray  # [num_branches]
    reward: float
    done: bool


class GroupStatuses:
    """The groups of one behavior in one instance, and the groupmates of each open step.

    Used by ``TrajectoryBuilder`` (``groupmates=True``): ``report`` then ``attach`` for a
    step's agents, ``complete`` when a fragment is emitted, ``forget`` after a step's
    terminal agents were processed, ``release`` when a slot is freed.
    """

    def __init__(self, spec: BehaviorSpec) -> None:
        self.spec = spec
        self._status: dict[int, dict[int, MateStatus]] = {}  # group -> agent -> status
        self._current: dict[int, dict[int, list[np.ndarray]]] = {}  # group -> agent -> latest observations
        self._group_of: dict[int, int] = {}  # agent -> group
        self._slot_group: dict[int, int] = {}  # slot -> group of its agent
        self._steps: dict[int, list[list[MateStatus] | None]] = {}  # slot -> groupmates per open step

    def report(
        self,
        agent: int,
        group: int,
        slot: int,
        acted_on: list[np.ndarray],
        continuous: np.ndarray,
        discrete: np.ndarray,
        reward: float,
        done: bool,
        observations: list[np.ndarray],
    ) -> None:
        """Agent ``agent`` (in ``slot``) shows up with the reward of the action it took on
        ``acted_on``; ``observations`` is what it observes now."""
        self._slot_group[slot] = group
        if group <= 0:
            return
        self._group_of[agent] = group
        self._status.setdefault(group, {})[agent] = MateStatus(
            observations=[np.array(o, np.float32) for o in acted_on],
            continuous=np.array(continuous, np.float32),
            discrete=np.array(discrete, np.int32),
            reward=reward,
            done=done,
        )
        self._current.setdefault(group, {})[agent] = [np.array(o, np.float32) for o in observations]

    def attach(self, agent: int, slot: int, step: int) -> None:
        """Step ``step`` of ``slot``'s open fragment gets the statuses of ``agent``'s groupmates."""
        group = self._slot_group.get(slot, 0)
        mates = [s for a, s in self._status.get(group, {}).items() if a != agent] if group > 0 else []
        steps = self._steps.setdefault(slot, [])
        steps.extend([None] * (step + 1 - len(steps)))
        steps[step] = mates

    def complete(self, trajectory: Trajectory, slot: int, group_rewards: np.ndarray) -> None:
        """Fills ``trajectory``'s group fields from its slot's steps (which start afresh)."""
        t = len(trajectory)
        steps = [mates or [] for mates in (self._steps.pop(slot, []) + [None] * t)[:t]]
        group = self._slot_group.get(slot, 0)
        width = max(len(mates) for mates in steps)
        a = self.spec.action_spec
        obs = [np.zeros((t, width, *o.shape), np.float32) for o in self.spec.observations]
        continuous = np.zeros((t, width, a.continuous_size), np.float32)
        discrete = np.zeros((t, width, a.num_branches), np.int32)
        rewards = np.zeros((t, width), np.float32)
        present = np.zeros((t, width), bool)
        done = np.zeros((t, width), bool)
        for i, mates in enumerate(steps):
            for m, status in enumerate(mates):
                for buf, o in zip(obs, status.observations):
                    buf[i, m] = o
                continuous[i, m] = status.continuous
                discrete[i, m] = status.discrete
                rewards[i, m] = status.reward
                present[i, m] = True
                done[i, m] = status.done
        following = [o for agent, o in self._current.get(group, {}).items() if agent != trajectory.agent_id]
        next_obs = [
            np.stack([mate[k] for mate in following]) if following else np.zeros((0, *spec.shape), np.float32)
            for k, spec in enumerate(self.spec.observations)
        ]
        trajectory.group_id = group if group > 0 else 0
        trajectory.group_rewards = group_rewards
        trajectory.groupmates = Groupmates(obs, continuous, discrete, rewards, present, done, next_obs)
        trajectory.group_continues = bool(trajectory.done and any(not s.done for s in steps[-1]))

    def forget(self, agent_ids: np.ndarray) -> None:
        """Agents whose episodes ended (after their step was processed) leave their groups."""
        for agent in agent_ids.tolist():
            group = self._group_of.pop(agent, None)
            if group is None:
                continue
            for table in (self._status, self._current):
                members = table.get(group, {})
                members.pop(agent, None)
                if not members:
                    table.pop(group, None)

    def release(self, slot: int) -> None:
        """The slot is free: its open steps are gone."""
        self._steps.pop(slot, None)
        self._slot_group.pop(slot, None)

    def clear(self) -> None:
        """Every agent is gone (the instance failed or reset)."""
        self._status.clear()
        self._current.clear()
        self._group_of.clear()
