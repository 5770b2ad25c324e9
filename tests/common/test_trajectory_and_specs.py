import numpy as np
import pytest

from common import specs, tensor, trajectory
from tandem.v1 import trainer_pb2

SPEC = specs.BehaviorSpec(
    name="Hybrid?team=0",
    observations=(specs.ObservationSpec("vec", (3,)), specs.ObservationSpec("cam", (1, 4, 4))),
    action_spec=specs.ActionSpec(continuous_size=2, discrete_branches=(3, 2)),
)


def make_traj(t=5):
    rng = np.random.default_rng(0)
    return trajectory.Trajectory(
        instance=1,
        agent_id=7,
        observations=[rng.random((t, 3), np.float32), rng.random((t, 1, 4, 4), np.float32)],
        next_observations=[rng.random(3, np.float32), rng.random((1, 4, 4), np.float32)],
        continuous_actions=rng.standard_normal((t, 2)).astype(np.float32),
        discrete_actions=np.zeros((t, 2), np.int32),
        log_probs=np.full(t, -1.5, np.float32),
        rewards=np.ones(t, np.float32),
        action_masks=np.zeros((t, 5), bool),
        policy_versions=np.arange(t, dtype=np.int64),
        done=True,
        interrupted=True,
        episode_return=12.5,
        episode_length=40,
    )


def test_spec_round_trip():
    assert specs.from_proto(specs.to_proto(SPEC)) == SPEC
    assert SPEC.brain_name == "Hybrid"
    assert SPEC.action_spec.mask_size == 5


def test_trajectory_round_trip():
    traj = make_traj()
    msg = trainer_pb2.Trajectory.FromString(trajectory.to_proto(traj).SerializeToString())
    back = trajectory.from_proto(msg, SPEC)
    assert len(back) == 5 and back.done and back.interrupted and back.episode_length == 40
    np.testing.assert_array_equal(back.observations[1], traj.observations[1])
    np.testing.assert_array_equal(back.policy_versions, traj.policy_versions)


def test_trajectory_validation_names_fields():
    msg = trajectory.to_proto(make_traj())
    bad = trainer_pb2.Trajectory()
    bad.CopyFrom(msg)
    bad.observations[0].CopyFrom(tensor.to_proto(np.zeros((5, 4), np.float32)))
    with pytest.raises(tensor.TensorError, match=r"trajectory.observations\[0\]: shape"):
        trajectory.from_proto(bad, SPEC)
    bad.CopyFrom(msg)
    bad.discrete_actions.CopyFrom(tensor.to_proto(np.full((5, 2), 3, np.int32)))
    with pytest.raises(tensor.TensorError, match="discrete_actions: values out"):
        trajectory.from_proto(bad, SPEC)
    bad.CopyFrom(msg)
    bad.rewards.CopyFrom(tensor.to_proto(np.array([1, 2, np.nan, 4, 5], np.float32)))
    with pytest.raises(tensor.TensorError, match="rewards: contains NaN"):
        trajectory.from_proto(bad, SPEC)
