"""Fixed agent slots over one behavior: the batch view that Gymnasium's VectorEnv and dm_env_rpc need.

Why: Unity agents of a behavior live in several instances, decide at their own periods
and end their episodes at different times, while a vector environment (or a
dm_env_rpc world with fixed tensor shapes) has a fixed number of rows. ``AgentSlots``
gives each agent seen at the reset a row (instance, then agent id order) and keeps it:

* a response's terminal steps end the episode of the agent's row (``terminated`` unless
  Unity's ``interrupted`` flag says max step, then ``truncated``), with its final
  observation kept apart; its decision steps give the row's (next) observation. An agent
  that ends and requests its next decision in the same response, as Unity agents do,
  so ends one episode and begins the next in one call (Gymnasium's same-step autoreset);
  the reward of that first decision belongs to the new episode and is returned with the
  row's next step;
* a row whose agent did not request a decision keeps its last observation, gets reward
  0 (Unity adds the reward to the agent's next decision) and ``decided`` false; an
  action given for it is not sent (Unity repeats the agent's last action);
* an agent id never seen before (Unity gives new ids to agents it re-creates) takes the
  row of an agent whose episode ended and that has not come back; with no such row it
  is left out (it gets zero actions from the gateway, as mlagents-envs does).

Used by ``tandem_envs`` (through the Python client) and ``gateway.dm_env_rpc`` (on the
environment pool directly); it only transforms arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from common.specs import BehaviorSpec
from gateway.env.steps import StepBatch


class NoAgents(RuntimeError):
    """The behavior has no agent requesting a decision after a reset."""


@dataclass
class SlotStep:
    """What every row saw since the previous call.

    Attributes:
        observations: per observation spec, float32 ``[n, *shape]``: the row's latest
            decision observation (the new episode's first one where an episode ended).
        rewards: float32 ``[n]``, summed over the terminal and decision steps received.
        terminated: bool ``[n]``: the episode ended for real.
        truncated: bool ``[n]``: the episode was interrupted (max step reached).
        decided: bool ``[n]``: the agent requested a decision (its next action is used).
        final_observations: per observation spec ``[n, *shape]`` where an episode ended
            (rows with ``terminated | truncated``), else None.
        action_mask: bool ``[n, sum(discrete_branches)]``, true = NOT allowed (ML-Agents').
        group_rewards: float32 ``[n]``, summed like ``rewards``.
    """

    observations: list[np.ndarray]
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    decided: np.ndarray
    final_observations: list[np.ndarray] | None
    action_mask: np.ndarray
    group_rewards: np.ndarray

    @property
    def ended(self) -> np.ndarray:
        return self.terminated | self.truncated


def sensor_names(spec: BehaviorSpec) -> list[str]:
    """A unique name per observation: the sensor's name, or ``obs<i>`` when empty or repeated."""
    names: list[str] = []
    for i, o in enumerate(spec.observations):
        names.append(o.name if o.name and o.name not in names else f"obs{i}")
    return names


def decision_keys(views, behavior: str) -> set[tuple[int, int]]:
    """(instance, agent id) of every agent of ``behavior`` with a decision in ``views``."""
    return {(v.instance, int(a)) for v in views if v.behavior == behavior for a in v.decisions.agent_ids}


#: Unity steps ``discover`` watches at most
MAX_DISCOVERY_STEPS = 100


def discover(behavior: str, reset_once, step_once, max_steps: int = MAX_DISCOVERY_STEPS) -> set[tuple[int, int]]:
    """Every agent of ``behavior``, including those that do not decide right after a reset.

    Why: Unity reports an agent only when it requests a decision, and agents may decide
    at different steps (staggered decision periods). This resets, then steps (agents
    get zero actions) until an agent seen at the reset decides again, so one whole
    decision period has passed. The caller resets again before using the environment.

    Args:
        behavior: the behavior name.
        reset_once: ``() -> views`` (a reset of every instance).
        step_once: ``() -> views`` (one step, no actions).
        max_steps: steps to watch at most.
    """
    first = decision_keys(reset_once(), behavior)
    seen = set(first)
    for _ in range(max_steps):
        now = decision_keys(step_once(), behavior)
        seen |= now
        if now & first:
            break
    return seen


class AgentSlots:
    """Rows for one behavior's agents across instances (see the module docstring).

    Args:
        spec: the behavior's spec.
    """

    def __init__(self, spec: BehaviorSpec) -> None:
        self.spec = spec
        self.keys: list[tuple[int, int]] = []
        self._row_of: dict[tuple[int, int], int] = {}
        # instance -> (its last decision ids' bytes, their rows: an index array, or slice(None) for every row in order)
        self._rows_cache: dict[int, tuple[bytes, np.ndarray | slice]] = {}
        self._vacant = np.zeros(0, bool)
        self.pending = np.zeros(0, bool)
        self._order: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # instance -> (rows, agent ids) of the last decisions
        self.observations: list[np.ndarray] = []
        self.action_mask = np.zeros((0, spec.action_spec.mask_size), bool)
        self._carry = (np.zeros(0, np.float32), np.zeros(0, np.float32))
        self._held = None  # a response stepped but not yet absorbed (``step_until``)
        self.dropped = 0

    @property
    def n(self) -> int:
        return len(self.keys)

    def start(self, views, known: Iterable[tuple[int, int]] = ()) -> SlotStep:
        """Gives a row to every agent with a decision in ``views`` (the answer to a reset) and to ``known`` ones.

        Args:
            views: ``gateway.remote.client.BehaviorStepsView`` of one response.
            known: (instance, agent id) of agents that decide later (``discover``); their
                rows hold zeros until their first decision.

        Raises:
            NoAgents: when no agent of the behavior requested a decision.
        """
        keys = sorted(decision_keys(views, self.spec.name) | set(known))
        if not keys:
            raise NoAgents(f"behavior {self.spec.name!r}: no agent requested a decision after the reset")
        n = len(keys)
        self.keys = keys
        self._row_of = {k: i for i, k in enumerate(keys)}
        self._rows_cache = {}
        self._vacant = np.zeros(n, bool)
        self.pending = np.zeros(n, bool)
        self._order = {}
        self.observations = [np.zeros((n, *o.shape), np.float32) for o in self.spec.observations]
        self.action_mask = np.zeros((n, self.spec.action_spec.mask_size), bool)
        self._carry = (np.zeros(n, np.float32), np.zeros(n, np.float32))
        self._held = None
        return self.absorb(views)

    def _rows(self, instance: int, agent_ids: np.ndarray) -> np.ndarray:
        """Row of each agent (-1 for unknown ones)."""
        return np.array([self._row_of.get((instance, int(a)), -1) for a in agent_ids], np.intp)

    def _decision_rows(self, instance: int, agent_ids: np.ndarray):
        """(rows, sel) of the agents deciding in ``instance``: ``rows[...]`` = the known ones' rows,
        ``sel`` selects them in the batch. Unknown agents adopt free rows first (``_adopt``).

        Why the cache: an instance usually sends the same id list at every decision step; then
        the rows come back as they were, as ``slice(None)`` when they are every row in order
        (indexing by a slice is a view, far cheaper than by an index array).
        """
        key = agent_ids.tobytes()
        cached = self._rows_cache.get(instance)
        if cached is not None and cached[0] == key:
            return cached[1], slice(None)
        rows = self._rows(instance, agent_ids)
        if (rows < 0).any():
            rows = self._adopt(instance, agent_ids, rows)
        sel = _known(rows)
        if isinstance(sel, slice):  # every agent known: the usual case, kept
            every = len(rows) == self.n and bool((rows == np.arange(self.n)).all())
            self._rows_cache[instance] = (key, slice(None) if every else rows)
            return self._rows_cache[instance][1], sel
        return rows[sel], sel

    def _adopt(self, instance: int, agent_ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Gives unknown agents (row -1) the rows of agents that ended and did not come back."""
        rows = rows.copy()
        for j in np.flatnonzero(rows < 0):
            free = np.flatnonzero(self._vacant)
            if not free.size:
                self.dropped += 1
                continue
            row = int(free[0])
            del self._row_of[self.keys[row]]
            self.keys[row] = (instance, int(agent_ids[j]))
            self._row_of[self.keys[row]] = row
            self._vacant[row] = False
            rows[j] = row
        self._rows_cache.clear()  # a taken row may be in another instance's cached rows
        return rows

    def absorb(self, views, ended_before: np.ndarray | None = None) -> SlotStep:
        """Applies one response's steps of this behavior to the rows.

        Args:
            views: this response's ``BehaviorStepsView`` s.
            ended_before: bool ``[n]``, rows whose episode ended in earlier responses that
                the caller merges with this one (``step_until``): what these rows receive
                now belongs to their next episode and is returned with the next step. A
                second end of such a row cannot be merged (``ends_again`` tells).
        """
        n = self.n
        # a new episode's first reward, received with the end of the previous one, counts in the next step
        rewards, group_rewards = self._carry
        self._carry = (np.zeros(n, np.float32), np.zeros(n, np.float32))
        if ended_before is not None and ended_before.any():  # still the next step's, not this merged one's
            self._carry = (np.where(ended_before, rewards, 0.0), np.where(ended_before, group_rewards, 0.0))
            rewards, group_rewards = np.where(ended_before, 0.0, rewards), np.where(ended_before, 0.0, group_rewards)
            rewards, group_rewards = rewards.astype(np.float32), group_rewards.astype(np.float32)
        else:
            ended_before = None
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        decided = np.zeros(n, bool)
        final: list[np.ndarray] | None = None
        order: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for v in views:
            if v.behavior != self.spec.name:
                continue
            term: StepBatch = v.terminals
            if len(term):
                rows = self._rows(v.instance, term.agent_ids)
                sel = _known(rows)
                r = rows[sel]
                if final is None:
                    final = [o.copy() for o in self.observations]
                for k, obs in enumerate(term.observations):
                    final[k][r] = obs[sel]
                rewards[r] += term.rewards[sel]  # rows are unique within a batch
                group_rewards[r] += term.group_rewards[sel]
                interrupted = term.interrupted[sel]
                truncated[r] = interrupted
                terminated[r] = ~interrupted
                self._vacant[r] = True
            dec: StepBatch = v.decisions
            if len(dec):
                r, sel = self._decision_rows(v.instance, dec.agent_ids)
                for k, obs in enumerate(dec.observations):
                    self.observations[k][r] = obs[sel]
                if final is None and ended_before is None:  # no episode ended: every reward is the running episode's
                    rewards[r] += dec.rewards[sel]
                    group_rewards[r] += dec.group_rewards[sel]
                else:
                    began = terminated[r] | truncated[r]  # these rows' decisions open their next episode
                    if ended_before is not None:
                        began |= ended_before[r]
                    for total, carry, values in zip((rewards, group_rewards), self._carry, (dec.rewards, dec.group_rewards)):
                        total[r] += np.where(began, 0.0, values[sel])
                        carry[r] += np.where(began, values[sel], 0.0)
                if dec.action_mask is not None and self.action_mask.shape[1]:
                    self.action_mask[r] = dec.action_mask[sel]
                decided[r] = True
                self._vacant[r] = False
                order[v.instance] = (r, dec.agent_ids[sel])
        self.pending = decided
        self._order = order
        return SlotStep(
            observations=[o.copy() for o in self.observations],
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            decided=decided,
            final_observations=final,
            action_mask=self.action_mask.copy(),
            group_rewards=group_rewards,
        )

    def ends_again(self, views, ended: np.ndarray) -> bool:
        """Whether ``views`` end the episode of a row in ``ended`` (bool ``[n]``): one step has
        room for one end per row, so such a response cannot be merged into that step."""
        if not ended.any():
            return False
        for v in views:
            if v.behavior == self.spec.name and len(v.terminals):
                rows = self._rows(v.instance, v.terminals.agent_ids)
                if ended[rows[rows >= 0]].any():
                    return True
        return False

    def hold(self, views) -> None:
        """Keeps a stepped response for the next ``step_until`` (see there); no row is pending
        meanwhile (Unity went on without actions for the last decisions)."""
        self._held = views
        self.pending = np.zeros(self.n, bool)
        self._order = {}

    def take_held(self):
        """The held response, or None; it is given once."""
        views, self._held = self._held, None
        return views

    def pending_actions(
        self, continuous: np.ndarray | None, discrete: np.ndarray | None
    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The actions of the agents that requested a decision, per instance, in their decision order.

        Args:
            continuous: float32 ``[n, continuous_size]`` for every row, or None (zeros).
            discrete: int32 ``[n, num_branches]`` for every row, or None (zeros).

        Returns:
            ``{instance: (agent_ids int32 [k], continuous float32 [k, c], discrete int32 [k, b])}``.
        """
        a = self.spec.action_spec
        out = {}
        for instance, (rows, ids) in self._order.items():
            cont = (
                np.ascontiguousarray(continuous[rows], np.float32)
                if continuous is not None
                else np.zeros((len(ids), a.continuous_size), np.float32)
            )
            disc = (
                np.ascontiguousarray(discrete[rows], np.int32)
                if discrete is not None
                else np.zeros((len(ids), a.num_branches), np.int32)
            )
            out[instance] = (np.asarray(ids, np.int32), cont, disc)
        return out


def _known(rows: np.ndarray):
    """An index selecting the agents that have a row: everything (a view, no copy) in the usual case."""
    known = rows >= 0
    return slice(None) if known.all() else known


def merge(first: SlotStep, second: SlotStep) -> SlotStep:
    """Two consecutive ``SlotStep`` seen as one (rewards summed, the later observations)."""
    final = second.final_observations
    if first.final_observations is not None:
        if final is None:
            final = first.final_observations
        else:  # rows that ended in the second keep the second's final observation
            ended = second.ended
            final = [np.where(_rows_mask(ended, f), s, f) for f, s in zip(first.final_observations, final)]
    return SlotStep(
        observations=second.observations,
        rewards=first.rewards + second.rewards,
        terminated=(first.terminated & ~second.ended) | second.terminated,
        truncated=(first.truncated & ~second.ended) | second.truncated,
        decided=second.decided,
        final_observations=final,
        action_mask=second.action_mask,
        group_rewards=first.group_rewards + second.group_rewards,
    )


def _rows_mask(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    return rows.reshape(rows.shape + (1,) * (like.ndim - 1))


#: Unity steps without news for the behavior before ``step_until`` gives up
MAX_QUIET_STEPS = 10_000
#: Unity steps ``step_until`` goes on while it holds episode ends (longer than any decision period)
MAX_END_WAIT_STEPS = 100


def step_until(
    slots: AgentSlots,
    step_once,
    actions,
    until,
    max_quiet_steps: int = MAX_QUIET_STEPS,
    max_end_wait_steps: int = MAX_END_WAIT_STEPS,
) -> SlotStep:
    """Steps with ``actions``, then without, until ``until(step)`` holds; returns what the rows saw.

    Responses are merged into one step (rewards summed, the latest observations; a row's
    end is kept with its final observation, and what the row receives after it belongs to
    its next episode and comes with the next step). Two ends of one row do not fit in one
    step: then the step returns before ``until`` holds, with no row deciding, and the
    second response is the start of the next call (whose ``actions`` are not used: no row
    is pending). Ends do not wait long for ``until``: after ``max_end_wait_steps`` further
    steps (a scene whose agents left for good) the step returns with them.

    Args:
        slots: the rows.
        step_once: ``actions -> views``: one step of every instance (the first call gets
            ``actions``, later calls ``None``: no decision is pending then).
        actions: what ``step_once`` takes for the pending agents.
        until: ``SlotStep -> bool`` on the merged steps so far.
        max_quiet_steps: steps to try before giving up.
        max_end_wait_steps: steps to go on with episode ends in hand.

    Raises:
        RuntimeError: nothing happened to any row within ``max_quiet_steps`` steps.
    """
    held = slots.take_held()
    seen = slots.absorb(step_once(actions) if held is None else held)
    for i in range(max_quiet_steps):
        if until(seen) or (i >= max_end_wait_steps and seen.ended.any()):
            return seen
        views, ended = step_once(None), seen.ended
        if slots.ends_again(views, ended):
            slots.hold(views)
            seen.decided = np.zeros_like(seen.decided)
            return seen
        seen = merge(seen, slots.absorb(views, ended_before=ended))
    if until(seen) or seen.ended.any():
        return seen
    raise RuntimeError(
        f"behavior {slots.spec.name!r}: no decision after {max_quiet_steps} environment steps "
        "(are its agents still requesting decisions?)"
    )


def any_decision(step: SlotStep) -> bool:
    """A row requested a decision (episode ends without one are merged into that step)."""
    return bool(step.decided.any())

