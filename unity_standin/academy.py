"""ML-Agents' stepping rules (the ``Academy`` + ``Agent`` life cycle) for any task.

Why: what the Python side sees depends on these rules, not on the physics: which agents
appear in a step, when terminal infos are sent, what reward they carry, when brain
parameters are sent. Each academy step follows the order of com.unity.ml-agents 3.x:

1. decision requests: an agent requests a decision when ``step % period == offset``;
2. every agent's episode step count grows by one;
3. agents that requested a decision send their info (observations, reward since their
   last decision, action mask) after any terminal infos queued since the last output;
4. if any info is waiting, the output goes to Python and the input comes back: side
   channels are applied, then a RESET command resets every agent (no terminal infos,
   as ``Academy.ForcedFullReset``), or actions are handed to the requesting agents in
   the order they were sent;
5. every agent acts with its stored action (actions repeat between decisions);
   an agent that ended its episode (``EndEpisode``) or reached ``max_step`` queues a
   terminal info (done, ``max_step_reached`` for the latter, observations after the
   last action) and immediately begins a new episode.

Agent ids are Unity's ``episodeId``: fixed per agent for its whole life, so an agent
that ends and restarts shows the same id in a step's terminal and decision steps.
``new_id_per_episode`` gives every episode a fresh id instead (a scene that destroys
and spawns agents does that).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from common.logging import get_logger
from mlagents_envs.communicator_objects.brain_parameters_pb2 import ActionSpecProto, BrainParametersProto
from mlagents_envs.communicator_objects.command_pb2 import QUIT, RESET
from mlagents_envs.communicator_objects.unity_input_pb2 import UnityInputProto
from mlagents_envs.communicator_objects.unity_output_pb2 import UnityOutputProto
from unity_standin.side_channels import SideChannels
from unity_standin.tasks.base import BehaviorDef, Task
from unity_standin.wire import ObservationEncoder, agent_info

_log = get_logger("unity_standin.academy")


class PlayerClosed(Exception):
    """The Python side closed the connection (status 400); the player quits cleanly."""


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image [H, W, C] (C = 1 or 3), like ``Texture2D.EncodeToPNG``."""
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)  # Unity encodes RGB; grayscale is averaged back
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class _Agents:
    """Per-agent academy state of one behavior; arrays are [n]."""

    spec: BehaviorDef
    ids: np.ndarray
    offsets: np.ndarray
    step_count: np.ndarray
    pending_reward: np.ndarray
    pending_group_reward: np.ndarray
    continuous: np.ndarray  # stored actions [n, c]
    discrete: np.ndarray  # stored actions [n, b]
    requesting: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    encoders: list = field(default_factory=list)  # one ObservationEncoder per sensor
    queued: list = field(default_factory=list)  # encoded terminal infos for the next output
    params_sent: bool = False


class Academy:
    """Steps a task and talks to the Python side through ``exchange``.

    Args:
        task: the scene.
        side_channels: shared with the task (parameters in, stats out).
        exchange: sends an output, returns the next input or None when Python closed.
        new_id_per_episode: give every new episode a fresh agent id.
    """

    def __init__(
        self,
        task: Task,
        side_channels: SideChannels,
        exchange: Callable[[UnityOutputProto], UnityInputProto | None],
        new_id_per_episode: bool = False,
    ):
        self.task = task
        self.side_channels = side_channels
        self._exchange = exchange
        self._new_ids = new_id_per_episode
        self._next_id = 0
        self.behaviors: dict[str, _Agents] = {}
        for spec in task.behaviors:
            n = spec.num_agents
            self.behaviors[spec.name] = _Agents(
                spec=spec,
                ids=self._take_ids(n),
                offsets=spec.offsets(),
                step_count=np.zeros(n, dtype=np.int64),
                pending_reward=np.zeros(n, dtype=np.float32),
                pending_group_reward=np.zeros(n, dtype=np.float32),
                continuous=np.zeros((n, spec.continuous_size), dtype=np.float32),
                discrete=np.zeros((n, len(spec.discrete_branches)), dtype=np.int32),
                encoders=[ObservationEncoder(o) for o in spec.observations],
            )
        self.step_count = 0
        self.had_first_reset = False
        self.exchanges = 0
        self._last_step_time = 0.0

    def _take_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        return ids

    # -- life cycle ---------------------------------------------------------------------

    def apply_input(self, unity_input: UnityInputProto | None) -> None:
        """Applies an input's side channels, then its command or actions (first input too).

        Raises:
            PlayerClosed: the input is None (Python closed) or a QUIT command.
        """
        if unity_input is None:
            raise PlayerClosed()
        rl_input = unity_input.rl_input
        self.side_channels.process(rl_input.side_channel)
        if rl_input.command == QUIT:
            raise PlayerClosed()
        if rl_input.command == RESET:
            self.forced_full_reset()
            return
        for name, action_list in rl_input.agent_actions.items():
            agents = self.behaviors.get(name)
            if agents is None:
                _log.warning("actions for an unknown behavior ignored", behavior=name)
                continue
            self._store_actions(agents, action_list.value)

    def forced_full_reset(self) -> None:
        """``Academy.ForcedFullReset``: every agent begins a new episode, nothing is reported."""
        self.step_count = 0
        self.had_first_reset = True
        for name, agents in self.behaviors.items():
            n = agents.spec.num_agents
            if self._new_ids:
                agents.ids = self._take_ids(n)
            agents.step_count[:] = 0
            agents.pending_reward[:] = 0
            agents.pending_group_reward[:] = 0
            agents.continuous[:] = 0
            agents.discrete[:] = 0
            agents.queued.clear()
            agents.requesting = np.zeros(0, dtype=np.int64)
            self.task.begin_episodes(name, np.arange(n))
        _log.debug("academy reset")

    def step(self) -> None:
        """One academy step (one ``FixedUpdate``); raises PlayerClosed when Python closed."""
        if not self.had_first_reset:
            self.forced_full_reset()
        self._pace()
        for agents in self.behaviors.values():
            period = agents.spec.decision_period
            requesting = (self.step_count % period) == agents.offsets
            active = self.task.active(agents.spec.name)
            agents.requesting = np.flatnonzero(requesting if active is None else requesting & active)
            agents.step_count += 1
        self.step_count += 1

        if any(len(a.requesting) or a.queued for a in self.behaviors.values()):
            output = self._build_output()
            self.exchanges += 1
            unity_input = self._exchange(output)
            if unity_input is None:
                raise PlayerClosed()
            was_reset = unity_input.rl_input.command == RESET
            self.apply_input(unity_input)
            if was_reset:
                return
        self._act()

    def _act(self) -> None:
        results = self.task.act({name: (a.continuous, a.discrete) for name, a in self.behaviors.items()})
        for name, agents in self.behaviors.items():
            result = results[name]
            if agents.spec.overwrite_reward:
                agents.pending_reward[:] = result.reward
            else:
                agents.pending_reward += result.reward
            if result.group_reward is not None:
                agents.pending_group_reward += result.group_reward
            ended = np.asarray(result.ended, dtype=bool)
            max_step = agents.spec.max_step
            interrupted = (~ended) & (agents.step_count >= max_step) if max_step > 0 else np.zeros_like(ended)
            if result.interrupted is not None:  # the scene interrupted them (e.g. a group's time ran out)
                interrupted = interrupted | ((~ended) & np.asarray(result.interrupted, dtype=bool))
            finished = np.flatnonzero(ended | interrupted)
            if len(finished):
                self._end_episodes(name, agents, finished, interrupted[finished])

    def _end_episodes(self, name: str, agents: _Agents, idx: np.ndarray, interrupted: np.ndarray) -> None:
        """``NotifyAgentDone`` then ``_AgentReset`` for agents ``idx``."""
        encoded = self._encode_observations(agents, self.task.observe(name, idx))
        group_ids = self.task.group_ids(name, idx)
        for row, agent in enumerate(idx):
            agents.queued.append(
                agent_info(
                    int(agents.ids[agent]),
                    float(agents.pending_reward[agent]),
                    encoded[row],
                    done=True,
                    max_step_reached=bool(interrupted[row]),
                    group_id=int(group_ids[row]) if group_ids is not None else 0,
                    group_reward=float(agents.pending_group_reward[agent]),
                )
            )
        agents.pending_reward[idx] = 0
        agents.pending_group_reward[idx] = 0
        agents.step_count[idx] = 0
        agents.continuous[idx] = 0
        agents.discrete[idx] = 0
        if self._new_ids:
            agents.ids[idx] = self._take_ids(len(idx))
        self.task.begin_episodes(name, idx)

    # -- wire ---------------------------------------------------------------------------

    def _build_output(self) -> UnityOutputProto:
        self.task.before_output()
        output = UnityOutputProto()
        rl_output = output.rl_output
        new_params = []
        for name, agents in self.behaviors.items():
            parts = agents.queued
            agents.queued = []
            idx = agents.requesting
            if len(idx):
                encoded = self._encode_observations(agents, self.task.observe(name, idx))
                masks = self.task.action_masks(name, idx) if agents.spec.discrete_branches else None
                group_ids = self.task.group_ids(name, idx)
                for row, agent in enumerate(idx):
                    parts.append(
                        agent_info(
                            int(agents.ids[agent]),
                            float(agents.pending_reward[agent]),
                            encoded[row],
                            action_mask=masks[row] if masks is not None else None,
                            group_id=int(group_ids[row]) if group_ids is not None else 0,
                            group_reward=float(agents.pending_group_reward[agent]),
                        )
                    )
                agents.pending_reward[idx] = 0
                agents.pending_group_reward[idx] = 0
            infos = rl_output.agentInfos[name]  # every subscribed behavior has a key, maybe empty
            if parts:
                infos.MergeFromString(b"".join(parts))
                if not agents.params_sent:
                    new_params.append(self._brain_parameters(agents.spec))
                    agents.params_sent = True
        if new_params:
            output.rl_initialization_output.brain_parameters.extend(new_params)
        rl_output.side_channel = self.side_channels.take_outgoing()
        return output

    @staticmethod
    def _brain_parameters(spec: BehaviorDef) -> BrainParametersProto:
        return BrainParametersProto(
            brain_name=spec.name,
            is_training=True,
            action_spec=ActionSpecProto(
                num_continuous_actions=spec.continuous_size,
                num_discrete_actions=len(spec.discrete_branches),
                discrete_branch_sizes=list(spec.discrete_branches),
            ),
        )

    @staticmethod
    def _encode_observations(agents: _Agents, observations: list[np.ndarray]) -> list[bytes]:
        """The encoded observations of each agent (all sensors, in order)."""
        per_sensor = []
        for encoder, values in zip(agents.encoders, observations):
            if encoder.definition.compressed:
                values = [encode_png(image) for image in values]
            per_sensor.append(encoder.rows(values))
        if len(per_sensor) == 1:
            return per_sensor[0]
        return [b"".join(parts) for parts in zip(*per_sensor)]

    def _store_actions(self, agents: _Agents, actions) -> None:
        """Hands the i-th action to the i-th agent that requested a decision."""
        idx = agents.requesting
        if len(actions) == 0 or len(idx) == 0:
            return
        if len(actions) != len(idx):
            _log.warning(
                "action count does not match agents that requested decisions",
                behavior=agents.spec.name, actions=len(actions), agents=len(idx),
            )
        count = min(len(actions), len(idx))
        spec = agents.spec
        for size, field_name, store in (
            (spec.continuous_size, "continuous_actions", agents.continuous),
            (len(spec.discrete_branches), "discrete_actions", agents.discrete),
        ):
            if not size:
                continue
            rows = [getattr(actions[i], field_name) for i in range(count)]
            fits = [len(r) == size for r in rows]
            if not all(fits):
                _log.warning("actions of the wrong size ignored", behavior=spec.name, field=field_name, expected=size)
            keep = [i for i, ok in enumerate(fits) if ok]
            if keep:
                store[idx[keep]] = np.array([list(rows[i]) for i in keep], dtype=store.dtype)

    def _pace(self) -> None:
        """Honours a target frame rate set on the engine configuration channel."""
        engine = self.side_channels.engine
        if engine.target_frame_rate <= 0:
            return
        rate = engine.target_frame_rate * max(engine.time_scale, 1e-3)
        wait = self._last_step_time + 1.0 / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_step_time = time.monotonic()
