"""Builds per-agent trajectory fragments from batched decision and terminal steps.

Why: in actor mode the gateway turns what Unity reports (batches of agents, in any
order, some agents skipping steps) into ML-Agents' unit of experience: one agent's
consecutive steps, cut when its episode ends or after ``time_horizon`` steps.

Step t of a trajectory holds o_t, the action a_t chosen on it, log pi(a_t|o_t), the
snapshot version that chose it, the action mask, and r_t: the reward Unity reports
at the agent's *next* decision or terminal step. A recorded step therefore waits for
its reward ("pending") until the agent shows up again.

Cost: per environment step the work is a few vectorized numpy operations per
behavior, whatever the number of agents (each agent owns a "slot" row of
preallocated ``[slots, time_horizon, ...]`` arrays); Python loops over agents only
happen when a trajectory is emitted (once per ``time_horizon`` steps or episode).
"""

from __future__ import annotations

import numpy as np

from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from gateway.actor.groups import GroupStatuses
from gateway.env.steps import StepBatch


class TrajectoryBuilder:
    """Open trajectories of every agent of one behavior in one environment instance.

    Args:
        spec: the behavior's spec.
        instance: the instance index written into every trajectory.
        time_horizon: cut an agent's trajectory after this many steps (>= 1).
        capacity: initial number of agent slots (grows as needed).
        memory_size: the policy's LSTM memory per agent (0: none); with memory each step
            records the memory the agent acted from, and trajectories carry it.
        groupmates: record each step's group reward and groupmates (``GroupStatuses``),
            for POCA's centralized critic (``PolicyArchitecture.collect_groupmates``).
    """

    def __init__(
        self,
        spec: BehaviorSpec,
        instance: int,
        time_horizon: int,
        capacity: int = 16,
        memory_size: int = 0,
        groupmates: bool = False,
    ) -> None:
        if time_horizon < 1:
            raise ValueError(f"time_horizon must be >= 1, got {time_horizon}")
        self.spec = spec
        self.instance = instance
        self.time_horizon = int(time_horizon)
        self.memory_size = int(memory_size)
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._observed: tuple[object, np.ndarray] = (None, np.zeros(0, np.intp))
        self.groups = GroupStatuses(spec) if groupmates else None
        self._allocate(max(1, capacity), self.time_horizon)

    # -- storage ------------------------------------------------------------------------------

    def _allocate(self, slots: int, steps: int) -> None:
        a = self.spec.action_spec
        old = getattr(self, "_length", None)
        fresh = {
            "_obs": [np.zeros((slots, steps, *o.shape), np.float32) for o in self.spec.observations],
            "_continuous": np.zeros((slots, steps, a.continuous_size), np.float32),
            "_discrete": np.zeros((slots, steps, a.num_branches), np.int32),
            "_log_probs": np.zeros((slots, steps), np.float32),
            "_rewards": np.zeros((slots, steps), np.float32),
            "_masks": np.zeros((slots, steps, a.mask_size), bool),
            "_versions": np.zeros((slots, steps), np.int64),
            "_memories": np.zeros((slots, steps, self.memory_size), np.float32),
            "_length": np.zeros(slots, np.int64),
            "_pending": np.zeros(slots, bool),
            "_orphan": np.zeros(slots, bool),
            "_episode_return": np.zeros(slots, np.float64),
            "_episode_length": np.zeros(slots, np.int64),
            "_agent": np.full(slots, -1, np.int64),
            "_group_rewards": np.zeros((slots, steps), np.float32),
        }
        if old is not None:  # grow: copy the old contents into the new arrays
            s0, t0 = self._rewards.shape
            for name, arr in fresh.items():
                if name == "_obs":
                    for new, prev in zip(arr, self._obs):
                        new[:s0, :t0] = prev
                elif arr.ndim >= 2:
                    arr[:s0, :t0] = getattr(self, name)
                else:
                    arr[:s0] = getattr(self, name)
            self._free.extend(range(slots - 1, s0 - 1, -1))
        else:
            self._free = list(range(slots - 1, -1, -1))
        for name, arr in fresh.items():
            setattr(self, name, arr)

    def set_time_horizon(self, time_horizon: int) -> None:
        """A new snapshot may change the horizon; longer horizons grow the step dimension."""
        if time_horizon < 1:
            raise ValueError(f"time_horizon must be >= 1, got {time_horizon}")
        self.time_horizon = int(time_horizon)
        if time_horizon > self._rewards.shape[1]:
            self._allocate(self._rewards.shape[0], time_horizon)

    def _slots(self, agent_ids: np.ndarray, create: bool) -> tuple[np.ndarray, np.ndarray]:
        """Slot of each agent id, and a mask of the ids that have one (always true when ``create``)."""
        slot_of = self._slot_of
        ids = agent_ids.tolist()
        if create:
            missing = [a for a in ids if a not in slot_of]
            if len(missing) > len(self._free):
                size = self._rewards.shape[0]
                self._allocate(max(2 * size, size + len(missing)), self._rewards.shape[1])
            for a in missing:
                s = self._free.pop()
                slot_of[a] = s
                self._agent[s] = a
            return np.fromiter((slot_of[a] for a in ids), np.intp, len(ids)), np.ones(len(ids), bool)
        slots = np.fromiter((slot_of.get(a, -1) for a in ids), np.intp, len(ids))
        return slots, slots >= 0

    def _release(self, slot: int) -> None:
        del self._slot_of[int(self._agent[slot])]
        self._agent[slot] = -1
        self._length[slot] = 0
        self._pending[slot] = False
        self._orphan[slot] = False
        self._episode_return[slot] = 0.0
        self._episode_length[slot] = 0
        if self.groups is not None:
            self.groups.release(slot)
        self._free.append(slot)

    def _reward_pending(self, slots: np.ndarray, rewards: np.ndarray) -> None:
        """Gives each slot's pending step the reward that just arrived (a step ``cut_all`` cut
        off adds its reward to the episode's return only)."""
        orphan = self._orphan[slots]
        if orphan.any():
            s = slots[orphan]
            self._episode_return[s] += rewards[orphan]
            self._orphan[s] = False
        pending = self._pending[slots]
        if pending.any():
            s = slots[pending]
            r = rewards[pending]
            self._rewards[s, self._length[s] - 1] = r
            self._episode_return[s] += r
            self._pending[s] = False

    def _emit(self, slot: int, next_obs: list[np.ndarray], done: bool, interrupted: bool) -> Trajectory | None:
        t = int(self._length[slot])
        if t == 0:
            return None
        traj = Trajectory(
            instance=self.instance,
            agent_id=int(self._agent[slot]),
            observations=[o[slot, :t].copy() for o in self._obs],
            next_observations=[np.array(o, np.float32) for o in next_obs],
            continuous_actions=self._continuous[slot, :t].copy(),
            discrete_actions=self._discrete[slot, :t].copy(),
            log_probs=self._log_probs[slot, :t].copy(),
            rewards=self._rewards[slot, :t].copy(),
            action_masks=self._masks[slot, :t].copy(),
            policy_versions=self._versions[slot, :t].copy(),
            done=done,
            interrupted=interrupted,
            episode_return=float(self._episode_return[slot]) if done else 0.0,
            episode_length=int(self._episode_length[slot]) if done else 0,
            memories=self._memories[slot, :t].copy() if self.memory_size else None,
        )
        if self.groups is not None:
            self.groups.complete(traj, slot, self._group_rewards[slot, :t].copy())
        self._length[slot] = 0
        return traj

    # -- the three events -----------------------------------------------------------------------

    def observe(self, decisions: StepBatch, terminals: StepBatch) -> list[Trajectory]:
        """Takes one step's batches; returns the trajectories that ended or reached the horizon.

        Terminal steps come first: an agent may end an episode and start the next one
        (same id) in the same step.
        """
        out: list[Trajectory] = []
        if self.groups is not None:
            self._observe_groups(decisions, terminals)
        if len(terminals):
            slots, known = self._slots(terminals.agent_ids, create=False)
            if known.any():
                rows = np.flatnonzero(known)
                self._reward_pending(slots[rows], terminals.rewards[rows])
                for row in rows.tolist():
                    slot = int(slots[row])
                    traj = self._emit(
                        slot,
                        [o[row] for o in terminals.observations],
                        done=True,
                        interrupted=bool(terminals.interrupted[row]),
                    )
                    if traj is not None:
                        out.append(traj)
                    self._release(slot)
        if len(decisions):
            slots, _ = self._slots(decisions.agent_ids, create=True)
            self._observed = (decisions.agent_ids, slots)  # record() of the same batch reuses them
            self._reward_pending(slots, decisions.rewards)
            full = np.flatnonzero(self._length[slots] >= self.time_horizon)
            for row in full.tolist():
                traj = self._emit(int(slots[row]), [o[row] for o in decisions.observations], done=False, interrupted=False)
                if traj is not None:
                    out.append(traj)
        if self.groups is not None:
            self.groups.forget(terminals.agent_ids)
        return out

    def _observe_groups(self, decisions: StepBatch, terminals: StepBatch) -> None:
        """Every agent of the batches with a pending step reports its groupmate status (the
        step it acted on, its action, the reward that just came, whether it is done); then each
        pending step gets its group reward and the statuses of its groupmates."""
        batches = [(b, done) for b, done in ((terminals, True), (decisions, False)) if len(b)]
        pending_rows = []
        taken: set[int] = set()  # an agent that ended and restarts in one step: its terminal step counts
        for batch, done in batches:
            slots, known = self._slots(batch.agent_ids, create=False)
            for row in np.flatnonzero(known).tolist():
                slot = int(slots[row])
                if not self._pending[slot] or slot in taken:
                    continue
                taken.add(slot)
                t = int(self._length[slot]) - 1
                self.groups.report(
                    int(batch.agent_ids[row]), int(batch.group_ids[row]), slot,
                    [o[slot, t] for o in self._obs], self._continuous[slot, t], self._discrete[slot, t],
                    float(batch.rewards[row]), done, [o[row] for o in batch.observations],
                )
                pending_rows.append((batch, row, slot, t))
        for batch, row, slot, t in pending_rows:
            self._group_rewards[slot, t] = batch.group_rewards[row]
            self.groups.attach(int(batch.agent_ids[row]), slot, t)

    def record(
        self,
        decisions: StepBatch,
        continuous: np.ndarray,
        discrete: np.ndarray,
        log_probs: np.ndarray,
        version: int,
        memories: np.ndarray | None = None,
    ) -> None:
        """Records the actions chosen for ``decisions`` (after ``observe`` of the same batch).

        Args:
            decisions: the batch the actions were chosen for.
            continuous: float32 ``[n, continuous_size]``, raw samples.
            discrete: int32 ``[n, num_branches]``.
            log_probs: float32 ``[n]``.
            version: the snapshot version that chose them.
            memories: float32 ``[n, memory_size]``, the LSTM memory each agent acted from
                (with ``memory_size``; None records zeros).
        """
        if not len(decisions):
            return
        observed_ids, slots = self._observed
        if observed_ids is not decisions.agent_ids:
            slots, _ = self._slots(decisions.agent_ids, create=True)
        idx = self._length[slots]
        if (idx >= self._rewards.shape[1]).any():  # only when observe was skipped: cut nothing, grow
            self._allocate(self._rewards.shape[0], int(idx.max()) + 1)
        for buf, o in zip(self._obs, decisions.observations):
            buf[slots, idx] = o
        self._continuous[slots, idx] = continuous
        self._discrete[slots, idx] = discrete
        self._log_probs[slots, idx] = log_probs
        self._masks[slots, idx] = decisions.action_mask
        self._versions[slots, idx] = version
        if self.memory_size:
            self._memories[slots, idx] = 0.0 if memories is None else memories
        self._length[slots] = idx + 1
        self._pending[slots] = True
        self._episode_length[slots] += 1

    def interrupt_all(self) -> list[Trajectory]:
        """Ends every open trajectory as interrupted (the instance crashed or hung).

        A step still waiting for its reward is dropped: its observation becomes the
        trajectory's ``next_observations``, which is exactly what followed the step before.
        """
        out = []
        if self.groups is not None:
            self.groups.clear()
        for agent, slot in list(self._slot_of.items()):
            t = int(self._length[slot])
            if self._pending[slot] and t > 0:
                next_obs = [o[slot, t - 1] for o in self._obs]
                self._length[slot] = t - 1
                self._episode_length[slot] -= 1
            else:
                next_obs = [o[slot, max(t - 1, 0)] for o in self._obs]
            traj = self._emit(slot, next_obs, done=True, interrupted=True)
            if traj is not None:
                out.append(traj)
            self._release(slot)
        return out

    def cut_all(self, decisions: StepBatch | None) -> tuple[list[Trajectory], int]:
        """Ends every open fragment now, bootstrapped (as at ``time_horizon``): collection pauses.

        Call it after ``observe`` of the latest step and before ``record`` of its actions. An
        agent of ``decisions`` (deciding now) gets its fragment ended with its current
        observation as ``next_observations``. An agent whose last step still waits for its
        reward (it decides less often) has that step cut off: the step's observation becomes
        the fragment's ``next_observations`` and its reward, when it comes, counts only in
        the episode's return. The agents stay in their episodes; their next steps start
        new fragments.

        Args:
            decisions: the latest decision batch (None or empty: nobody is deciding).

        Returns:
            (the fragments, the number of steps cut off).
        """
        out: list[Trajectory] = []
        deciding: dict[int, int] = {}
        if decisions is not None and len(decisions):
            slots, known = self._slots(decisions.agent_ids, create=False)
            deciding = {int(slot): row for row, slot in enumerate(slots.tolist()) if known[row]}
        cut_off = 0
        for slot in list(self._slot_of.values()):
            t = int(self._length[slot])
            if self._pending[slot] and t > 0:
                next_obs = [o[slot, t - 1] for o in self._obs]
                self._length[slot] = t - 1
                self._pending[slot] = False
                self._orphan[slot] = True
                cut_off += 1
            elif slot in deciding:
                row = deciding[slot]
                next_obs = [o[row] for o in decisions.observations]
            else:
                continue  # nothing recorded since its last fragment ended
            traj = self._emit(slot, next_obs, done=False, interrupted=False)
            if traj is not None:
                out.append(traj)
        return out, cut_off

    @property
    def pending_steps(self) -> int:
        """Recorded steps still waiting for their reward (``interrupt_all`` would drop them)."""
        return int(self._pending[list(self._slot_of.values())].sum()) if self._slot_of else 0

    @property
    def open_agents(self) -> int:
        return len(self._slot_of)


class EpisodeTally:
    """Returns and lengths of the episodes of agents acting deterministically (nothing is streamed).

    Why: with ``--policy`` (or a trainer's ``--inference``) no trajectories are built,
    yet the user wants the mean reward per behavior. This keeps a running return per
    agent id: rewards of decision steps accumulate, a terminal step adds its reward
    and finishes the episode. Lengths count the decisions the agent acted on.
    """

    def __init__(self) -> None:
        self._returns: dict[int, float] = {}
        self._lengths: dict[int, int] = {}
        #: (return, length) of episodes finished since the last ``take``
        self.finished: list[tuple[float, int]] = []

    def acted(self, decisions: StepBatch) -> None:
        """The agents of ``decisions`` took one action each."""
        lengths = self._lengths
        for agent in decisions.agent_ids.tolist():
            lengths[agent] = lengths.get(agent, 0) + 1

    def observe(self, decisions: StepBatch, terminals: StepBatch) -> None:
        """One step's batches: terminal steps first (an agent may end and restart in one step)."""
        returns = self._returns
        for agent, reward in zip(terminals.agent_ids.tolist(), terminals.rewards.tolist()):
            self.finished.append((returns.pop(agent, 0.0) + reward, self._lengths.pop(agent, 0)))
        for agent, reward in zip(decisions.agent_ids.tolist(), decisions.rewards.tolist()):
            returns[agent] = returns.get(agent, 0.0) + reward

    def forget_open(self) -> None:
        """Drops the open episodes (the Unity instance failed; they will not finish)."""
        self._returns.clear()
        self._lengths.clear()

    def take(self) -> list[tuple[float, int]]:
        finished, self.finished = self.finished, []
        return finished
