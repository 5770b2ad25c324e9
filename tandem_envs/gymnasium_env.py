"""Gymnasium environments over a Tandem gateway: ``UnityEnv`` (one agent) and ``UnityVectorEnv`` (all agents).

Why: Stable-Baselines3, CleanRL, RLlib and most single-agent libraries take a
``gymnasium.Env`` or a ``gymnasium.vector.VectorEnv``. Both here drive one behavior of a
remote-control gateway (``tandem-gateway``, on another machine if need be) through its
Play stream; spaces come from the behavior spec (``tandem_envs.spaces``).

Semantics shared by both:

* ``terminated`` / ``truncated``: an agent's episode ended; Unity's ``interrupted`` flag
  (max step reached) makes it ``truncated``, anything else ``terminated``.
* ``reset(seed=...)``: seeds the spaces' and ``np_random``'s generators only. Unity takes
  its seed when it starts (``tandem-gateway --seed``), so observations do not repeat
  for a repeated seed (the env is registered ``nondeterministic``). ``options`` may hold
  ``{"environment_parameters": {name: value}}``, set before the reset.
* ``info["action_mask"]``: for discrete actions, int8 with 1 = allowed (Gymnasium's
  convention, the inverse of ML-Agents' mask); ``action_masks()`` gives it as bool, as
  sb3-contrib's ``MaskablePPO`` asks.
* ``render()``: ``render_mode="rgb_array"`` returns the (first) agent's first visual
  observation as uint8 ``(H, W, C)``; a behavior without a visual observation has no
  render mode. Unity's own window is the gateway's business (``--no-graphics``).
* The Play stream is opened at the first ``reset`` and held until ``close``: one client
  drives a gateway at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from gateway.remote.agent_slots import SlotStep, any_decision, sensor_names
from tandem_envs import spaces as spaces_mod
from tandem_envs.driver import BehaviorDriver


def _render_frame(driver: BehaviorDriver, step: SlotStep | None, row: int) -> np.ndarray | None:
    """The first visual observation of ``row`` as uint8 HWC, or None before the first reset."""
    if step is None:
        return None
    index = next(i for i, o in enumerate(driver.spec.observations) if o.is_visual)
    chw = step.observations[index][row]
    return (np.clip(chw, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def _check_render_mode(driver: BehaviorDriver, render_mode: str | None) -> None:
    if render_mode is None:
        return
    if render_mode != "rgb_array":
        raise ValueError(f"render_mode: only 'rgb_array' (or None) is supported, got {render_mode!r}")
    if not any(o.is_visual for o in driver.spec.observations):
        raise ValueError(f"render_mode: behavior {driver.spec.name!r} has no visual observation to render")


def _parameters(options: Mapping[str, Any] | None) -> dict[str, float]:
    params = (options or {}).get("environment_parameters") or {}
    if not isinstance(params, Mapping):
        raise ValueError("options['environment_parameters']: expected a mapping of name -> value")
    return {str(k): float(v) for k, v in params.items()}


class UnityEnv(gymnasium.Env):
    """One Unity agent as a ``gymnasium.Env``.

    The behavior must have exactly one agent (the stand-in: ``--env-args --num-agents 1``;
    with more, use ``UnityVectorEnv``). An episode ends when the agent's Unity episode
    ends; Unity starts the agent's next episode by itself, so ``reset()`` after an
    episode's end returns that next episode's first observation without resetting the
    scene. The first ``reset()``, a ``reset()`` in the middle of an episode, and
    ``reset(options={"reset_environment": True})`` reset every Unity instance.

    Args:
        address: the gateway's ``host:port``.
        behavior: the behavior name (``3DBall`` or ``3DBall?team=0``); None = the only one.
        render_mode: None or ``"rgb_array"``.
        **connection: ``token``, ``root_certificates``, ``tls_server_name``, ``timeout_s``,
            ``environment_parameters`` (see ``BehaviorDriver``).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, address: str, behavior: str | None = None, render_mode: str | None = None, **connection) -> None:
        self._driver = BehaviorDriver(address, behavior, **connection)
        try:
            _check_render_mode(self._driver, render_mode)
        except ValueError:
            self._driver.close()
            raise
        spec = self._driver.spec
        self.render_mode = render_mode
        self.observation_space = spaces_mod.observation_space(spec)
        self.action_space = spaces_mod.action_space(spec)
        self._last: SlotStep | None = None
        self._episode_over = True
        self._fresh = False  # the next episode's first observation is in _last, not yet returned

    @property
    def behavior_spec(self):
        """The ``common.specs.BehaviorSpec`` this env drives."""
        return self._driver.spec

    def _info(self, step: SlotStep) -> dict[str, Any]:
        info: dict[str, Any] = {"group_reward": float(step.group_rewards[0])}
        if self._driver.spec.action_spec.num_branches:
            info["action_mask"] = spaces_mod.allowed(step.action_mask[0])
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
            self.observation_space.seed(seed)
        full = self._last is None or not self._episode_over or bool((options or {}).get("reset_environment"))
        if full:
            step = self._driver.reset(_parameters(options))
            if self._driver.slots.n != 1:
                raise ValueError(
                    f"behavior {self._driver.spec.name!r} has {self._driver.slots.n} agents; UnityEnv drives "
                    "exactly one (use UnityVectorEnv, or start the scene with one agent)"
                )
        elif self._fresh:
            step = self._last
        else:  # the agent's next episode has not asked for its first decision yet
            step = self._driver.step(None, None, lambda s: bool(s.decided[0]))
        self._last, self._episode_over, self._fresh = step, False, False
        return spaces_mod.observation_rows(self._driver.spec, step.observations, 0), self._info(step)

    def step(self, action):
        if self._last is None or self._episode_over:
            raise RuntimeError("UnityEnv.step: call reset() first (the episode is over)")
        continuous, discrete = spaces_mod.split_actions(self._driver.spec, _one(action, self.action_space), 1)
        step = self._driver.step(continuous, discrete, lambda s: bool(s.decided[0] or s.ended[0]))
        self._last = step
        terminated, truncated = bool(step.terminated[0]), bool(step.truncated[0])
        info = self._info(step)
        if terminated or truncated:
            self._episode_over = True
            self._fresh = bool(step.decided[0])
            obs_arrays = step.final_observations
        else:
            obs_arrays = step.observations
        obs = spaces_mod.observation_rows(self._driver.spec, obs_arrays, 0)
        return obs, float(step.rewards[0]), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """bool ``[sum(branches)]``, True = allowed (sb3-contrib's ``MaskablePPO``)."""
        if self._last is None:
            raise RuntimeError("UnityEnv.action_masks: call reset() first")
        return ~self._last.action_mask[0]

    def render(self):
        if self.render_mode is None:
            return None
        return _render_frame(self._driver, self._last, 0)

    def close(self) -> None:
        self._driver.close()
        super().close()


def _one(action, space: gymnasium.Space):
    """A single action as a batch of one."""
    if isinstance(space, gymnasium.spaces.Dict):
        return {k: np.asarray(v)[None] for k, v in action.items()}
    return np.asarray(action)[None]


class UnityVectorEnv(VectorEnv):
    """Every agent of one behavior as a ``gymnasium.vector.VectorEnv``, one slot (sub-env) per agent.

    ``num_envs`` is the number of agents of the behavior across every instance of the
    gateway (``gateway.remote.agent_slots`` keeps each agent in its slot). It is known
    only once connected, so construction resets the environment and watches one decision
    period for agents that decide later than the others (``agent_slots.discover``), then
    resets again. A slot whose agent has not decided yet holds zeros.

    Stepping: one ``step`` sends the pending agents' actions and steps Unity until at
    least one agent of the behavior requests a decision (Unity steps where none does are
    skipped; an episode that ends in between is reported by that step, its last reward
    with it, what comes after with the next one: ``agent_slots.step_until``). Agents that
    decide at different periods therefore do not all act at every ``step``: a slot whose
    agent did not request a decision keeps its observation, gets reward 0 (its reward comes
    with its next decision) and ``info["decision_requested"]`` false, and its action is
    ignored (Unity repeats the agent's previous action). In scenes where every agent decides together (3DBall,
    GridWorld) every slot acts at every step.

    Autoreset: ``AutoresetMode.SAME_STEP`` (``metadata["autoreset_mode"]``), because Unity
    resets an agent itself when its episode ends: the step that ends a slot's episode
    returns ``terminated``/``truncated`` and already the next episode's first observation;
    the episode's last observation is in ``info["final_obs"]`` (object array, with the
    ``info["_final_obs"]`` mask). ``reset()`` resets every Unity instance.

    Args: as ``UnityEnv``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"]}

    def __init__(self, address: str, behavior: str | None = None, render_mode: str | None = None, **connection) -> None:
        self._driver = BehaviorDriver(address, behavior, **connection)
        try:
            _check_render_mode(self._driver, render_mode)
            self._last: SlotStep = self._driver.reset(discover_agents=True)
        except BaseException:
            self._driver.close()
            raise
        spec = self._driver.spec
        self.render_mode = render_mode
        self.num_envs = self._driver.slots.n
        self.single_observation_space = spaces_mod.observation_space(spec)
        self.single_action_space = spaces_mod.action_space(spec)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._reset_done = False  # the constructor's reset is handed out by the first reset()

    @property
    def behavior_spec(self):
        return self._driver.spec

    @property
    def agents(self) -> list[tuple[int, int]]:
        """(instance, agent id) of each slot now."""
        return list(self._driver.slots.keys)

    def _info(self, step: SlotStep) -> dict[str, Any]:
        info: dict[str, Any] = {  # every array of a SlotStep is new: no copies needed
            "decision_requested": step.decided,
            "group_reward": step.group_rewards,
        }
        if self._driver.spec.action_spec.num_branches:
            info["action_mask"] = spaces_mod.allowed(step.action_mask)
        return info

    def _observations(self, arrays: list[np.ndarray]):
        """The batch observation from a SlotStep's (fresh) arrays, without copying them again."""
        if len(arrays) == 1:
            return arrays[0]
        return dict(zip(sensor_names(self._driver.spec), arrays))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
            self.observation_space.seed(seed)
        if self._reset_done or options:
            step = self._driver.reset(_parameters(options), known=self._driver.slots.keys)
            if self._driver.slots.n != self.num_envs:
                raise RuntimeError(
                    f"behavior {self._driver.spec.name!r}: {self._driver.slots.n} agents after the reset, "
                    f"{self.num_envs} before; a VectorEnv keeps its size (make a new one)"
                )
            self._last = step
        self._reset_done = True
        copies = [o.copy() for o in self._last.observations]  # reset() may hand out the same step twice
        return self._observations(copies), self._info(self._last)

    def step(self, actions):
        continuous, discrete = spaces_mod.split_actions(self._driver.spec, actions, self.num_envs)
        step = self._driver.step(continuous, discrete, any_decision)
        self._last = step
        info = self._info(step)
        ended = step.ended
        if ended.any():
            final = np.full(self.num_envs, None, dtype=object)
            for row in np.flatnonzero(ended):
                final[row] = spaces_mod.observation_rows(self._driver.spec, step.final_observations, int(row))
            info["final_obs"] = final
            info["_final_obs"] = ended
            info["final_info"] = {}
            info["_final_info"] = ended.copy()
        return (
            self._observations(step.observations),
            step.rewards.astype(np.float64),
            step.terminated,
            step.truncated,
            info,
        )

    def action_masks(self) -> np.ndarray:
        """bool ``[num_envs, sum(branches)]``, True = allowed (sb3-contrib's ``MaskablePPO``)."""
        return ~self._last.action_mask

    def render(self):
        """``(num_envs, H, W, C)`` uint8 frames in ``"rgb_array"`` mode, else None."""
        if self.render_mode is None:
            return None
        return np.stack([_render_frame(self._driver, self._last, row) for row in range(self.num_envs)])

    def close_extras(self, **kwargs) -> None:
        self._driver.close()
