"""The short tensor paths of ``gateway.env.steps`` and action validation agree with the general ones."""

from __future__ import annotations

import numpy as np
import pytest

from common import tensor
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from gateway.env import steps as steps_mod
from gateway.remote.actions import InvalidArgument, decode_step_request
from tandem.v1 import gateway_pb2, tensor_pb2

SPEC = BehaviorSpec(
    "Mixed", (ObservationSpec("vec", (3,)), ObservationSpec("cam", (2, 4, 4))), ActionSpec(2, (3, 2))
)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(4, dtype=np.int32),
        np.array([[True, False]]),
        np.zeros((0, 3), np.float32),
        np.arange(6, dtype=np.float64).reshape(3, 2),  # not a step dtype: the general path
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # not contiguous: the general path
    ],
)
def test_put_tensor_writes_what_to_proto_writes(array):
    fast = tensor_pb2.Tensor()
    steps_mod.put_tensor(array, fast)
    assert fast == tensor.to_proto(array)
    steps_mod.put_tensor(array, fast)  # a filled message is overwritten, not appended to
    assert fast == tensor.to_proto(array)


def test_read_tensor_fast_path_and_errors_match_from_proto():
    good = tensor.to_proto(np.ones((2, 3), np.float32))
    out = steps_mod.read_tensor(good, "x", np.dtype("<f4"), (None, 3))
    assert out.shape == (2, 3) and out.dtype == np.float32 and out.sum() == 6
    bad = [
        (tensor.to_proto(np.ones((2, 3), np.int32)), (None, 3)),  # dtype
        (good, (2, 4)),  # shape
        (good, (None,)),  # rank
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2, 3], data=bytes(20)), (None, 3)),  # length
        (tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[-2, 3], data=b""), (None, 3)),  # negative
        (tensor_pb2.Tensor(shape=[2, 3], data=bytes(24)), (None, 3)),  # unspecified dtype
    ]
    for msg, shape in bad:
        with pytest.raises(tensor.TensorError) as expected:
            tensor.from_proto(msg, name="f", dtype=np.float32, shape=shape)
        with pytest.raises(tensor.TensorError) as got:
            steps_mod.read_tensor(msg, "f", np.dtype("<f4"), shape)
        assert str(got.value) == str(expected.value)


def test_step_batches_round_trip_through_the_wire():
    rng = np.random.default_rng(0)
    n = 3
    batch = steps_mod.StepBatch(
        observations=[rng.standard_normal((n, 3)).astype(np.float32), rng.random((n, 2, 4, 4)).astype(np.float32)],
        rewards=rng.standard_normal(n).astype(np.float32),
        agent_ids=np.array([7, 2, 9], np.int32),
        group_ids=np.zeros(n, np.int32),
        group_rewards=np.ones(n, np.float32),
        action_mask=rng.random((n, 5)) < 0.5,
    )
    msg = steps_mod.encode(batch, gateway_pb2.StepBatch())
    back = steps_mod.decode(gateway_pb2.StepBatch.FromString(msg.SerializeToString()), SPEC, terminal=False)
    for a, b in zip(batch.observations + [batch.rewards, batch.agent_ids, batch.action_mask],
                    back.observations + [back.rewards, back.agent_ids, back.action_mask]):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def _request(agent_ids, continuous, discrete) -> gateway_pb2.StepRequest:
    request = gateway_pb2.StepRequest()
    entry = request.actions.add(instance=0, behavior="Mixed")
    tensor.to_proto(np.asarray(agent_ids, np.int32), entry.agent_ids)
    tensor.to_proto(np.asarray(continuous, np.float32), entry.continuous)
    tensor.to_proto(np.asarray(discrete, np.int32), entry.discrete)
    return request


def test_actions_in_decision_order_and_reordered_give_the_same_actions():
    decisions = {0: {"Mixed": np.array([10, 11, 12], np.int32)}}
    specs = {"Mixed": SPEC}
    cont = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], np.float32)
    disc = np.array([[0, 1], [1, 0], [2, 1]], np.int32)
    in_order = decode_step_request(_request([10, 11, 12], cont, disc), decisions, specs)[0]["Mixed"]
    order = [2, 0, 1]
    shuffled = decode_step_request(
        _request(np.array([10, 11, 12])[order], cont[order], disc[order]), decisions, specs
    )[0]["Mixed"]
    for actions in (in_order, shuffled):
        np.testing.assert_array_equal(actions.continuous, cont)
        np.testing.assert_array_equal(actions.discrete, disc)
    partial = decode_step_request(_request([12], cont[2:], disc[2:]), decisions, specs)[0]["Mixed"]
    np.testing.assert_array_equal(partial.continuous, np.array([[0, 0], [0, 0], [0.5, 0.6]], np.float32))
    np.testing.assert_array_equal(partial.discrete, [[0, 0], [0, 0], [2, 1]])
    with pytest.raises(InvalidArgument, match=r"step.actions\[0\].continuous: contains NaN"):
        decode_step_request(_request([10, 11, 12], cont * np.nan, disc), decisions, specs)
    with pytest.raises(InvalidArgument, match=r"step.actions\[0\].discrete: value 2 of agent 10 is out of branch 1"):
        decode_step_request(_request([10, 11, 12], cont, disc + 1), decisions, specs)
    with pytest.raises(InvalidArgument, match="more than once"):
        decode_step_request(_request([10, 10, 12], cont, disc), decisions, specs)


def test_actions_for_a_behavior_the_instance_never_had_are_refused():
    """A behavior seen in another instance only (its agents spawned there) is known to the gateway,
    but the instance without it cannot take actions for it, not even for zero agents."""
    decisions = {0: {"Mixed": np.array([10], np.int32)}, 1: {}}
    request = _request(np.zeros(0, np.int32), np.zeros((0, 2)), np.zeros((0, 2)))
    request.actions[0].instance = 1
    expected = r"step.actions\[0\].behavior: instance 1 has no agents of behavior 'Mixed'"
    with pytest.raises(InvalidArgument, match=expected):
        decode_step_request(request, decisions, {"Mixed": SPEC})
