"""The pipe messages between the gateway and its workers: they cross a real pipe unchanged."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from gateway.actor.worker_loop import ActorWorkerConfig
from gateway.env import messages
from gateway.env.instance import BehaviorActions
from gateway.env.messages import Step, Stepped
from gateway.env.steps import Stat

SPEC = BehaviorSpec(
    "Mixed", (ObservationSpec("v", (3,)),), ActionSpec(continuous_size=2, discrete_branches=(3, 2))
)


def _through_a_pipe(msg):
    parent, child = multiprocessing.Pipe()
    try:
        messages.Pipe(parent).send(msg)
        return messages.Pipe(child).receive()
    finally:
        parent.close()
        child.close()


def test_pipe_packing_round_trips_actions_and_results():
    actions = {
        "Mixed": BehaviorActions(np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((3, 2), np.int32)),
        "NoActions": BehaviorActions(np.zeros((0, 0), np.float32), np.zeros((0, 0), np.int32)),
    }
    specs = {"Mixed": SPEC, "NoActions": BehaviorSpec("NoActions", (ObservationSpec("v", (1,)),), ActionSpec(0))}
    back = _through_a_pipe(Step(actions).pack()).unpack(specs).actions
    for name, a in actions.items():
        np.testing.assert_array_equal(back[name].continuous, a.continuous)
        np.testing.assert_array_equal(back[name].discrete, a.discrete)
        assert back[name].continuous.shape == a.continuous.shape and back[name].discrete.shape == a.discrete.shape
    result = Stepped.of(1, b"\x0a\x00", {"Mixed": np.array([4, 5], np.int32)}, [SPEC], 123, True)
    again = _through_a_pipe(result)
    assert (again.index, again.steps, again.new_specs, again.unity_pid, again.alive) == (1, b"\x0a\x00", [SPEC], 123, True)
    np.testing.assert_array_equal(again.agent_ids()["Mixed"], [4, 5])



@pytest.mark.parametrize(
    "msg",
    [
        messages.Reset({"gravity": 9.5}),
        messages.SetParameters({}),
        messages.Restart(),
        messages.GiveUp(),
        messages.StartActor(ActorWorkerConfig(chunk_steps=8, seed=3)),
        messages.Close(),
        messages.Snapshot("Mixed?team=0", 7, b"\x0a\x01x"),
        messages.Credit(),
        messages.Ready([SPEC], 4321),
        messages.Failed("unity crashed"),
        messages.Refused("bad parameters"),
        messages.Closed(),
        messages.NewBehaviors([SPEC]),
        messages.UnityStarted(None),
        messages.Progress(10, 40),
        messages.InferenceReport({"Mixed": [(1.5, 20)]}, [Stat(0, "Environment/Drops", 2.0, "sum")]),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_crosses_the_pipe_equal(msg):
    assert _through_a_pipe(msg) == msg


def test_experience_crosses_the_pipe_with_its_trajectories():
    trajectory = Trajectory(
        instance=0,
        agent_id=3,
        observations=[np.ones((2, 3), np.float32)],
        continuous_actions=np.zeros((2, 2), np.float32),
        discrete_actions=np.zeros((2, 2), np.int32),
        log_probs=np.zeros(2, np.float32),
        rewards=np.array([0.5, 1.0], np.float32),
        action_masks=np.zeros((2, 5), bool),
        policy_versions=np.array([4, 5], np.int64),
        next_observations=[np.zeros(3, np.float32)],
        done=True,
        interrupted=False,
        episode_return=1.5,
        episode_length=2,
    )
    experience = messages.Experience(0, "Mixed", [trajectory], [], steps=2, min_version=4)
    back = _through_a_pipe(experience)
    assert (back.instance, back.behavior, back.steps, back.min_version) == (0, "Mixed", 2, 4)
    assert back.episodes() == [(1.5, 2)]
    np.testing.assert_array_equal(back.trajectories[0].rewards, trajectory.rewards)


def test_an_unpacked_step_is_refused_by_the_pipe():
    """A Step holds numpy arrays: it must be packed before it crosses (WorkerHandle.send does)."""
    with pytest.raises(KeyError):
        _through_a_pipe(Step({}))
