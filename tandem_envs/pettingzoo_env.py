"""A PettingZoo ``ParallelEnv`` over every behavior and agent of a Tandem gateway.

Why: multi-agent libraries take PettingZoo's parallel API. Unity scenes have several
behaviors (each its own spaces), agents that decide at their own periods and end their
episodes at different times, and Unity restarts each agent's episode by itself. So:

* **Agent names**: ``"<behavior>/<instance>/<agent id>/<episode>"``, e.g.
  ``"Chaser?team=0/0/3/0"``: one PettingZoo agent per Unity agent *episode*. When a Unity
  agent's episode ends, its PettingZoo agent is terminated (or truncated, from Unity's
  interrupted flag) and leaves ``agents``; when the Unity agent asks for its next
  decision, a new PettingZoo agent (episode + 1) appears. PettingZoo forbids reviving a
  finished agent, hence the episode number. ``behavior_of(agent)`` gives the behavior
  name (to pick a policy); ``infos[agent]`` has ``behavior``, ``instance``, ``agent_id``.
* **possible_agents** lists every agent seen since the last ``reset`` (it grows as agents
  appear; Unity does not announce them in advance).
* **One ``step`` = one Unity step.** Every live agent is in the returned dicts; an agent
  that did not request a decision this step keeps its last observation, gets reward 0
  (Unity adds it to its next decision), ``infos[agent]["decision_requested"]`` false,
  and its action is ignored (Unity repeats its previous action). Actions of agents that
  requested a decision but are missing from ``actions`` are zeros (as mlagents-envs).
* Spaces per behavior: ``tandem_envs.spaces`` (one object per behavior, as PettingZoo
  requires); action masks in ``infos[agent]["action_mask"]`` (int8, 1 = allowed).
* ``reset(seed=...)`` seeds the action spaces only (Unity takes its seed at launch) and
  resets every Unity instance; ``options={"environment_parameters": {...}}`` sets
  parameters first. ``render`` is not supported (render_mode None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pettingzoo import ParallelEnv

from gateway.remote.client import PlaySession, behavior_actions, decode_steps
from tandem_envs import spaces as spaces_mod
from tandem_envs.driver import connect


@dataclass(frozen=True)
class AgentKey:
    behavior: str
    instance: int
    agent_id: int


class UnityParallelEnv(ParallelEnv):
    """Every agent of every behavior of a gateway (see the module docstring).

    Args:
        address: the gateway's ``host:port``.
        **connection: ``token``, ``root_certificates``, ``tls_server_name``, ``timeout_s``
            (``tandem_envs.driver.connect``).
    """

    metadata = {"name": "tandem_unity_parallel_v0", "render_modes": []}

    def __init__(self, address: str, **connection) -> None:
        self.client, self.specs = connect(address, **connection)
        self.render_mode = None
        self._observation_spaces: dict = {}
        self._action_spaces: dict = {}
        self._session: PlaySession | None = None
        self._episodes: dict[AgentKey, int] = {}
        self._key_of: dict[str, AgentKey] = {}
        self._name_of: dict[AgentKey, str] = {}
        self._obs: dict[str, Any] = {}
        self._mask: dict[str, np.ndarray] = {}
        self._pending: set[str] = set()
        self.agents: list[str] = []
        self.possible_agents: list[str] = []

    # -- spaces -----------------------------------------------------------------------------------

    def behavior_of(self, agent: str) -> str:
        """The behavior name of ``agent`` (``Chaser?team=0``)."""
        return self._key_of[agent].behavior

    def _spec(self, behavior: str):
        if behavior not in self.specs:  # a behavior that appeared after the connection
            self.specs = self.client.specs()
        return self.specs[behavior]

    def observation_space(self, agent: str):
        behavior = self.behavior_of(agent)
        if behavior not in self._observation_spaces:
            self._observation_spaces[behavior] = spaces_mod.observation_space(self._spec(behavior))
        return self._observation_spaces[behavior]

    def action_space(self, agent: str):
        behavior = self.behavior_of(agent)
        if behavior not in self._action_spaces:
            self._action_spaces[behavior] = spaces_mod.action_space(self._spec(behavior))
        return self._action_spaces[behavior]

    # -- agents -----------------------------------------------------------------------------------

    def _current(self, key: AgentKey) -> str:
        """The PettingZoo name of ``key``'s current episode (created on first sight)."""
        name = self._name_of.get(key)
        if name is None:
            episode = self._episodes.get(key, 0)
            name = f"{key.behavior}/{key.instance}/{key.agent_id}/{episode}"
            self._name_of[key] = name
            self._key_of[name] = key
            self.possible_agents.append(name)
        return name

    def _finish(self, key: AgentKey) -> None:
        """The Unity agent's episode ended: its next decision starts a new PettingZoo agent."""
        name = self._name_of.pop(key, None)
        if name is not None:
            self._episodes[key] = self._episodes.get(key, 0) + 1
            self._pending.discard(name)

    def _info(self, name: str, decided: bool, group_reward: float = 0.0) -> dict[str, Any]:
        key = self._key_of[name]
        info: dict[str, Any] = {
            "behavior": key.behavior,
            "instance": key.instance,
            "agent_id": key.agent_id,
            "decision_requested": decided,
            "group_reward": group_reward,
        }
        if name in self._mask:
            info["action_mask"] = self._mask[name].copy()
        return info

    # -- API --------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            for i, space in enumerate(self._action_spaces.values()):
                space.seed(seed + i)
        params = (options or {}).get("environment_parameters") or {}
        if self._session is None:
            self._session = self.client.play()
        steps = self._session.reset({str(k): float(v) for k, v in params.items()})
        for key in list(self._name_of):
            self._finish(key)
        self.possible_agents = []
        self._key_of = {}
        self._obs, self._mask, self._pending = {}, {}, set()
        self.agents = []
        observations, _, _, _, infos = self._absorb(steps)
        return observations, infos

    def step(self, actions: dict[str, Any]):
        if self._session is None:
            raise RuntimeError("UnityParallelEnv.step: call reset() first")
        steps = self._session.step(self._actions(actions))
        return self._absorb(steps)

    def _actions(self, actions: dict[str, Any]) -> list:
        """``BehaviorActions`` of the agents that requested a decision and were given an action."""
        grouped: dict[tuple[int, str], list[tuple[int, Any]]] = {}
        for name, action in actions.items():
            if name not in self._pending:
                continue  # not deciding now (or gone): Unity repeats its previous action
            key = self._key_of[name]
            grouped.setdefault((key.instance, key.behavior), []).append((key.agent_id, action))
        out = []
        for (instance, behavior), items in grouped.items():
            spec = self._spec(behavior)
            ids = np.array([i for i, _ in items], np.int32)
            batch = _stack([a for _, a in items])
            continuous, discrete = spaces_mod.split_actions(spec, batch, len(items))
            out.append(behavior_actions(instance, behavior, ids, continuous, discrete))
        return out

    def _absorb(self, steps):
        observations, rewards, terminated, truncated, infos = {}, {}, {}, {}, {}
        decided: set[str] = set()
        if any(entry.behavior not in self.specs for entry in steps.behaviors):
            self.specs = self.client.specs()  # a behavior that appeared since the last look
        for view in decode_steps(steps, self.specs):
            spec = self.specs[view.behavior]
            term = view.terminals
            for row, agent_id in enumerate(term.agent_ids):
                key = AgentKey(view.behavior, view.instance, int(agent_id))
                name = self._name_of.get(key)
                if name is None or name not in self.agents:
                    self._finish(key)
                    continue
                observations[name] = spaces_mod.observation_rows(spec, term.observations, row)
                rewards[name] = float(term.rewards[row])
                truncated[name] = bool(term.interrupted[row])
                terminated[name] = not truncated[name]
                infos[name] = self._info(name, False, float(term.group_rewards[row]))
                self.agents.remove(name)
                self._obs.pop(name, None)
                self._mask.pop(name, None)
                self._finish(key)
            dec = view.decisions
            for row, agent_id in enumerate(dec.agent_ids):
                name = self._current(AgentKey(view.behavior, view.instance, int(agent_id)))
                if name not in self.agents:
                    self.agents.append(name)
                self._obs[name] = spaces_mod.observation_rows(spec, dec.observations, row)
                if spec.action_spec.num_branches:
                    self._mask[name] = spaces_mod.allowed(dec.action_mask[row])
                rewards[name] = float(dec.rewards[row])
                infos[name] = self._info(name, True, float(dec.group_rewards[row]))
                decided.add(name)
        self._pending = decided
        for name in self.agents:
            observations[name] = _copy(self._obs[name])
            if name not in decided:  # live, not deciding now
                rewards[name] = 0.0
                infos[name] = self._info(name, False)
            terminated.setdefault(name, False)
            truncated.setdefault(name, False)
        return observations, rewards, terminated, truncated, infos

    def render(self) -> None:
        return None

    def state(self) -> np.ndarray:
        raise NotImplementedError("UnityParallelEnv has no global state (Unity sends per-agent observations)")

    def close(self) -> None:
        """Ends the Play stream and the channel; safe to call twice."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self.client.close()


def _stack(actions: list[Any]):
    if isinstance(actions[0], dict):
        return {k: np.stack([np.asarray(a[k]) for a in actions]) for k in actions[0]}
    return np.stack([np.asarray(a) for a in actions])


def _copy(obs):
    if isinstance(obs, dict):
        return {k: v.copy() for k, v in obs.items()}
    return obs.copy()
