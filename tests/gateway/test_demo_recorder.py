"""``--record-demo``'s recorder: Unity's record layout per agent, whole episodes, files named as Unity names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.demonstration_file import read_demonstration_file
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.env.demo_recorder import DemoRecorder
from gateway.env.instance import BehaviorActions
from gateway.env.steps import StepBatch
from trainer_server.demonstrations import load_demonstrations

NAME = "Mover?team=0"
SPEC = BehaviorSpec(NAME, (ObservationSpec("obs", (2,)),), ActionSpec(continuous_size=1, discrete_branches=(3,)))


def _batch(ids: list[int], values: list[float], rewards: list[float], terminal: bool = False, interrupted=None) -> StepBatch:
    n = len(ids)
    return StepBatch(
        observations=[np.array([[v, -v] for v in values], np.float32).reshape(n, 2)],
        rewards=np.asarray(rewards, np.float32),
        agent_ids=np.asarray(ids, np.int32),
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.zeros(n, np.float32),
        action_mask=None if terminal else np.zeros((n, 3), bool),
        interrupted=(np.asarray(interrupted or [False] * n, bool) if terminal else None),
    )


def _empty_terminal() -> StepBatch:
    return _batch([], [], [], terminal=True)


def _act(recorder: DemoRecorder, values: list[float]) -> None:
    n = len(values)
    actions = BehaviorActions(continuous=np.asarray(values, np.float32).reshape(n, 1), discrete=np.full((n, 1), 2, np.int32))
    recorder.acted({NAME: SPEC}, {NAME: actions})


def test_agents_episodes_are_written_whole_in_unity_layout(tmp_path: Path) -> None:
    specs = {NAME: SPEC}
    recorder = DemoRecorder(tmp_path / "demos")
    # two agents begin; agent 1 ends after two decisions, agent 0 after three (interrupted)
    recorder.reset(specs, {NAME: (_batch([0, 1], [0.0, 10.0], [0, 0]), _empty_terminal())})
    _act(recorder, [0.5, 0.6])
    recorder.observe(specs, {NAME: (_batch([0, 1], [1.0, 11.0], [0.1, 0.2]), _empty_terminal())})
    _act(recorder, [0.7, 0.8])
    recorder.observe(specs, {NAME: (_batch([0, 2], [2.0, 20.0], [0.1, 0.0]), _batch([1], [12.0], [1.0], terminal=True))})
    _act(recorder, [0.9, 0.3])
    recorder.observe(specs, {NAME: (_batch([2], [21.0], [0.0]), _batch([0], [3.0], [0.5], terminal=True, interrupted=[True]))})
    _act(recorder, [0.4])  # agent 2's episode stays open: not written
    recorder.close()
    demo = read_demonstration_file(tmp_path / "demos" / "Mover.demo")
    assert demo.spec.action_spec == SPEC.action_spec and demo.meta.number_episodes == 2
    rows = [
        (float(r.observations[0][0]), round(r.reward, 6), r.done, r.max_step_reached, round(float(r.continuous_actions[0]), 6))
        for r in demo.records
    ]
    assert rows == [
        (10.0, 0.0, False, False, 0.0),  # agent 1: an episode's first record holds no action
        (11.0, 0.2, False, False, 0.6),  # the action decided at the previous record
        (12.0, 1.0, True, False, 0.8),  # the terminal record holds the last action
        (0.0, 0.0, False, False, 0.0),
        (1.0, 0.1, False, False, 0.5),
        (2.0, 0.1, False, False, 0.7),
        (3.0, 0.5, True, True, 0.9),
    ]
    steps = load_demonstrations(tmp_path / "demos", SPEC)
    assert steps.num_steps == 5 and steps.num_episodes == 2
    np.testing.assert_allclose(steps.observations[0][:, 0], [10, 11, 0, 1, 2])
    np.testing.assert_allclose(steps.continuous_actions[:, 0], [0.6, 0.8, 0.5, 0.7, 0.9], rtol=1e-6)
    assert steps.discrete_actions[:, 0].tolist() == [2] * 5
    assert steps.dones.tolist() == [False, True, False, False, True]
    assert steps.interrupted.tolist() == [False, False, False, False, True]


def test_reset_drops_open_episodes_and_a_second_recorder_takes_the_next_name(tmp_path: Path) -> None:
    specs = {NAME: SPEC}
    first = DemoRecorder(tmp_path)
    first.reset(specs, {NAME: (_batch([0], [0.0], [0]), _empty_terminal())})
    _act(first, [0.5])
    first.reset(specs, {NAME: (_batch([5], [5.0], [0]), _empty_terminal())})  # agent 0's episode is gone
    _act(first, [0.1])
    first.observe(specs, {NAME: (_batch([], [], []), _batch([5], [6.0], [1.0], terminal=True))})
    second = DemoRecorder(tmp_path, instance=1)
    second.reset(specs, {NAME: (_batch([0], [0.0], [0]), _empty_terminal())})
    _act(second, [0.2])
    second.observe(specs, {NAME: (_batch([], [], []), _batch([0], [1.0], [1.0], terminal=True))})
    first.close()
    second.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Mover.demo", "Mover_0.demo"]
    demo = read_demonstration_file(tmp_path / "Mover.demo")
    assert [r.observations[0][0] for r in demo.records] == [5.0, 6.0]
