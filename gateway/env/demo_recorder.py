"""``--record-demo DIR``: what an instance's agents observe and do, as ML-Agents ``.demo`` files.

Why: ML-Agents records demonstrations only inside Unity (``DemonstrationRecorder``); the
gateway sees every step of every agent whatever drives them (a trainer's policy, a
``--policy`` model, a ``--heuristic`` player or a remote-control client), so it records
them into files that ML-Agents' ``demo_path`` and Tandem's trainer both load.

The hook sits in ``UnityInstance`` (reset, actions set, steps received): one recorder per
instance, one file per behavior (``DIR/<Behavior>.demo``, then ``<Behavior>_0.demo``...,
as Unity names recordings; several instances each write their own). Records follow
Unity's layout (``common.demonstration_file``): at each decision the agent's observation,
reward and the action it decided at its previous decision (zeros at an episode's first),
and at the episode's end the terminal observation with the last action. An agent's
records are kept until its episode ends, then written together (a file holds one
episode after the other, as one recorded agent's would); episodes still open at a reset
or at the end are not written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.demonstration_file import DemonstrationWriter, Record, demonstration_path
from common.logging import get_logger
from common.specs import BehaviorSpec
from gateway.env.steps import StepBatch


class _Agent:
    """One agent's open episode: its records and the action it last decided."""

    __slots__ = ("records", "continuous", "discrete")

    def __init__(self, spec: BehaviorSpec) -> None:
        self.records: list[Record] = []
        self.continuous = np.zeros(spec.action_spec.continuous_size, np.float32)
        self.discrete = np.zeros(spec.action_spec.num_branches, np.int32)


class DemoRecorder:
    """Records one instance's behaviors into ``.demo`` files in ``folder``.

    Args:
        folder: where the files go (created if needed).
        instance: the instance's index (logs).
    """

    def __init__(self, folder: str | Path, instance: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._agents: dict[str, dict[int, _Agent]] = {}
        self._deciding: dict[str, np.ndarray] = {}  # agent ids of each behavior's last decision steps
        self._writers: dict[str, DemonstrationWriter] = {}
        self.episodes = 0
        self.log = get_logger("gateway.demo_recorder", instance=instance)

    def reset(self, specs: dict[str, BehaviorSpec], out: dict[str, tuple[StepBatch, StepBatch]]) -> None:
        """After a reset: open episodes are dropped, the new ones begin."""
        self._agents.clear()
        self._deciding.clear()
        self.observe(specs, out)

    def acted(self, specs: dict[str, BehaviorSpec], actions: dict) -> None:
        """The actions set for the last decision steps (``BehaviorActions`` per behavior; a
        behavior without actions gets zeros, as mlagents-envs sends)."""
        for behavior, ids in self._deciding.items():
            agents = self._agents.get(behavior, {})
            given = actions.get(behavior)
            for row, agent_id in enumerate(ids.tolist()):
                agent = agents.get(agent_id)
                if agent is None:
                    continue
                if given is None:
                    agent.continuous = np.zeros_like(agent.continuous)
                    agent.discrete = np.zeros_like(agent.discrete)
                else:
                    agent.continuous = np.asarray(given.continuous[row], np.float32).copy()
                    agent.discrete = np.asarray(given.discrete[row], np.int32).copy()

    def observe(self, specs: dict[str, BehaviorSpec], out: dict[str, tuple[StepBatch, StepBatch]]) -> None:
        """A step's answer: terminal steps end episodes (written), decision steps add records."""
        self._deciding = {}
        for behavior, (decisions, terminals) in out.items():
            spec = specs[behavior]
            agents = self._agents.setdefault(behavior, {})
            for row, agent_id in enumerate(terminals.agent_ids.tolist()):
                agent = agents.pop(agent_id, None)
                if agent is None or not agent.records:
                    continue  # no decision in this episode: nothing was done
                interrupted = bool(terminals.interrupted[row]) if terminals.interrupted is not None else False
                agent.records.append(self._record(terminals, row, agent, done=True, interrupted=interrupted))
                self._write(spec, agent.records)
            for row, agent_id in enumerate(decisions.agent_ids.tolist()):
                agent = agents.get(agent_id)
                if agent is None:
                    agent = agents[agent_id] = _Agent(spec)
                agent.records.append(self._record(decisions, row, agent, done=False, interrupted=False))
            self._deciding[behavior] = decisions.agent_ids

    @staticmethod
    def _record(batch: StepBatch, row: int, agent: _Agent, done: bool, interrupted: bool) -> Record:
        return Record(
            observations=tuple(np.array(o[row], np.float32) for o in batch.observations),
            reward=float(batch.rewards[row]),
            done=done,
            max_step_reached=interrupted,
            continuous_actions=agent.continuous,
            discrete_actions=agent.discrete,
            action_mask=None if batch.action_mask is None or not batch.action_mask.shape[1] else batch.action_mask[row].copy(),
        )

    def _write(self, spec: BehaviorSpec, records: list[Record]) -> None:
        writer = self._writers.get(spec.name)
        if writer is None:
            writer = self._writers[spec.name] = self._open(spec)
            self.log.info("recording demonstrations", behavior=spec.name, path=str(writer.path))
        writer.write_episode(records)
        self.episodes += 1

    def _open(self, spec: BehaviorSpec) -> DemonstrationWriter:
        while True:  # several instances (processes) may pick a name at once: the first to create it wins
            path = demonstration_path(self.folder, spec.name)
            try:
                return DemonstrationWriter(path, spec, exclusive=True)
            except FileExistsError:
                continue

    def close(self) -> None:
        """Finishes every file (episodes still open are not written)."""
        for writer in self._writers.values():
            writer.close()
            self.log.info(
                "demonstrations written", behavior=writer.spec.name, path=str(writer.path),
                episodes=writer.number_episodes, steps=writer.number_steps,
            )
        self._writers.clear()
        self._agents.clear()
        self._deciding.clear()
