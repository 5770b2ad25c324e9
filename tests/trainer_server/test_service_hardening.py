"""What an attack run broke in the trainer, over real sockets (issue 19): extreme finite values,
a reused gateway id, registrations nothing backs, huge specs, streams without Hello."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from common import specs as specs_mod
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from test_service import Harness, _acks, _handshake, _wait_for, harness  # noqa: F401 (the fixture)
from test_service_support import BALL, GRID, GatewayClient, chunk_message, hello_message, make_trajectory, train_app
from test_service_support import make_options
from trainer_server import validation
from tandem.v1 import trainer_pb2

#: another spec under BALL's name (9 observations instead of 8)
BALL_9 = BehaviorSpec(
    name=BALL.name, observations=(ObservationSpec(name="VectorSensor", shape=(9,)),), action_spec=ActionSpec(2)
)


def _poisoned(field: str, value: float):
    t = make_trajectory(BALL, 4)
    if field == "episode_return":
        t.episode_return = value
    elif field.startswith("observations"):
        t.observations[0][2, 1] = value
    elif field.startswith("next_observations"):
        t.next_observations[0][3] = value
    else:
        getattr(t, field).reshape(-1)[1] = value
    return t


@pytest.mark.parametrize(
    "field,value",
    [
        ("observations[0]", 1e20),
        ("next_observations[0]", -1e7),
        ("log_probs", -1e30),
        ("rewards", 3e38),
        ("rewards", 1e30),
        ("continuous_actions", 1e9),
        ("episode_return", 1e30),
    ],
)
def test_extreme_finite_values_are_refused_naming_field_trajectory_and_behavior(harness, field, value):
    h = harness()
    client = h.connect()
    _handshake(client, "gw-1", BALL)
    good = make_trajectory(BALL, 4)
    client.send(chunk_message(BALL, 1, [good, _poisoned(field, value)]))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"trajectories[1].{field}" in error.details() and BALL.name in error.details(), error.details()
    assert h.registry.learners[BALL.name].seen == []  # nothing of the chunk reached the learner
    # the same data within the bounds trains
    other = h.connect()
    _handshake(other, "gw-2", BALL)
    other.send(chunk_message(BALL, 1, [good]))
    assert _acks(other.recv_until(lambda m: m.HasField("ack"))) == [1]


def test_a_non_finite_stat_is_refused(harness):
    h = harness()
    client = h.connect()
    _handshake(client, "gw-1", BALL)
    client.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4)], stats=[("Custom/x", float("inf"), "average")]))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "stats[0].value" in error.details()


def test_a_tiny_hello_with_huge_shapes_is_refused_before_anything_is_allocated(harness):
    h = harness()
    huge = trainer_pb2.Hello(gateway_id="junk", num_instances=1)
    huge.behaviors.add(name="Huge?team=0").observations.add(name="v", shape=[1 << 30])
    client = h.connect()
    client.send(trainer_pb2.GatewayMessage(hello=huge))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello.behaviors[0].observations[0].shape" in error.details() and "at most" in error.details()
    assert huge.ByteSize() < 64 and h.registry.learners == {} and h.app.behaviors() == []


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda b: b.observations.add(name="v", shape=[256, 256, 256]), "observations[0].shape"),
        (lambda b: b.observations.add(name="v", shape=[2, 2, 2, 2]), "observations[0].shape"),
        (lambda b: setattr(b.action_spec, "continuous_size", 100_000), "action_spec.continuous_size"),
        (lambda b: b.action_spec.discrete_branches.extend([2] * 1000), "action_spec.discrete_branches"),
        (lambda b: setattr(b, "name", "x" * 100_000), "name"),
    ],
)
def test_spec_bounds_name_the_field(harness, mutate, field):
    h = harness()
    client = h.connect()
    _handshake(client, "gw", GRID)
    spec = specs_mod.to_proto(BALL)
    del spec.observations[:]
    mutate(spec)
    client.send(trainer_pb2.GatewayMessage(new_behavior=spec))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and f"new_behavior.{field}" in error.details(), error.details()
    assert set(h.registry.learners) == {GRID.name}  # nothing was allocated for it


def _trained_once(h: Harness, gateway_id: str) -> GatewayClient:
    """A gateway whose chunk 1 (first reward 1.0) was acknowledged."""
    client = h.connect()
    _handshake(client, gateway_id, BALL)
    client.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4, first_reward=1.0)]))
    assert _acks(client.recv_until(lambda m: m.HasField("ack"))) == [1]
    return client


def test_a_second_stream_with_the_same_gateway_id_cannot_drop_acknowledged_experience(harness):
    h = harness()
    real = _trained_once(h, "gw-real")
    # an intruder with the same id and the largest sequence
    intruder = h.connect()
    intruder.send(hello_message("gw-real", BALL))
    error = intruder.wait_end()
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "gw-real" in error.details()
    for seq in (2, 3):
        real.send(chunk_message(BALL, seq, [make_trajectory(BALL, 4, first_reward=float(seq))]))
    assert 3 in _acks(real.recv_until(lambda m: m.HasField("ack") and m.ack.sequence == 3))
    assert [first for _, _, first in h.registry.learners[BALL.name].seen] == [1.0, 2.0, 3.0]


def test_a_sequence_jump_is_refused_and_later_chunks_still_train(harness):
    h = harness()
    client = _trained_once(h, "gw")
    client.send(chunk_message(BALL, 2**64 - 1, [make_trajectory(BALL, 4, first_reward=9.0)]))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "contiguous" in error.details()
    # the gateway reconnects (the server released its id before the stream's status went out)
    again = h.connect()
    welcome = _handshake(again, "gw", BALL)
    assert welcome.last_accepted_sequence == 1
    again.send(chunk_message(BALL, 2, [make_trajectory(BALL, 4, first_reward=2.0)]))
    assert 2 in _acks(again.recv_until(lambda m: m.HasField("ack")))
    assert [first for _, _, first in h.registry.learners[BALL.name].seen] == [1.0, 2.0]


def test_a_registration_without_experience_does_not_lock_the_real_gateway_out(harness):
    h = harness()
    junk = h.connect()
    _handshake(junk, "junk", BALL_9)  # first, with another spec, and never sends data
    real = h.connect()
    _handshake(real, "gw-real", BALL)
    error = junk.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "replaced" in error.details()
    real.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4)]))
    assert _acks(real.recv_until(lambda m: m.HasField("ack"))) == [1]
    assert h.app.behavior_spec(BALL.name) == BALL
    # now the registration holds: the newcomer is refused, the incumbent keeps training
    late = h.connect()
    late.send(hello_message("junk-2", BALL_9))
    error = late.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "holds" in error.details()
    real.send(chunk_message(BALL, 2, [make_trajectory(BALL, 4)]))
    assert 2 in _acks(real.recv_until(lambda m: m.HasField("ack")))


def test_behaviors_sharing_a_results_folder_cannot_both_register(harness):
    h = harness()
    bare = BehaviorSpec(name="3DBall", observations=BALL.observations, action_spec=BALL.action_spec)
    first = h.connect()
    _handshake(first, "gw-bare", bare)
    first.send(chunk_message(bare, 1, [make_trajectory(bare, 4)]))
    assert _acks(first.recv_until(lambda m: m.HasField("ack"))) == [1]
    second = h.connect()
    second.send(hello_message("gw-team", BALL))  # 3DBall?team=0: the same folder, 3DBall
    error = second.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "results folder '3DBall'" in error.details() and "'3DBall'" in error.details()
    assert h.app.behaviors() == ["3DBall"]


def test_a_registration_nothing_backs_is_dropped_with_its_stream_and_does_not_block_completion(harness):
    h = harness(max_steps=40, buffer_size=20)
    junk = h.connect()
    _handshake(junk, "junk", GRID)
    real = h.connect()
    _handshake(real, "gw-real", BALL)
    for seq in (1, 2, 3):
        real.send(chunk_message(BALL, seq, [make_trajectory(BALL, 16, first_reward=float(seq))]))
    messages = real.recv_until(lambda m: m.HasField("finished"), timeout=60)
    assert any(m.HasField("finished") for m in messages)
    assert h.app.completed
    # no checkpoint for the behavior that never sent experience
    assert not list((h.results.run_dir / "Grid").glob("*.npz"))
    assert list((h.results.run_dir / "3DBall").glob("*.npz"))


def test_a_provisional_registration_goes_when_its_last_stream_ends(harness):
    h = harness()
    junk = h.connect()
    _handshake(junk, "junk", GRID)
    assert GRID.name in h.app.behaviors()
    junk.close()
    _wait_for(lambda: GRID.name not in h.app.behaviors(), timeout=60)


def test_the_number_of_behaviors_is_bounded(harness, monkeypatch):
    monkeypatch.setattr(validation, "MAX_BEHAVIORS", 1)
    h = harness()
    client = h.connect()
    _handshake(client, "gw", BALL)
    client.send(trainer_pb2.GatewayMessage(new_behavior=specs_mod.to_proto(GRID)))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 behaviors" in error.details()


def test_a_stream_without_hello_is_ended_and_does_not_starve_a_gateway(tmp_path):
    from trainer_server.app import TrainingApp
    from trainer_server.results import RunResults
    from trainer_server.server import start_server
    from test_service_support import LearnerRegistry

    options = make_options(tmp_path / "results")
    cs = options.checkpoint_settings
    app = TrainingApp(options, RunResults.prepare(cs.results_dir, cs.run_id, resume=False, force=False),
                      learner_factory=LearnerRegistry())
    server = start_server(app, "127.0.0.1:0", hello_timeout_s=0.5, max_workers=4)
    app.start()
    channel = grpc.insecure_channel(server.address)
    try:
        silent = [GatewayClient(channel) for _ in range(4)]  # as many as handler threads
        for s in silent:
            assert s.ended.wait(120), "a stream without Hello was never ended"
            assert s.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "Hello" in s.error.details()
        real = GatewayClient(channel)
        real.send(hello_message("gw", BALL))
        assert real.recv(120).HasField("welcome")
        real.close()
    finally:
        app.stop()
        server.stop(1.0)
        app.join(10)
        channel.close()


def test_a_checkpoint_that_does_not_fit_the_spec_is_failed_precondition_not_unknown(tmp_path):
    from test_service_support import LearnerRegistry

    class ShapedLearner(LearnerRegistry().learner_class):
        def load_state_dict(self, state):
            if state["params"].keys() != self.params.keys() or any(
                state["params"][k].shape != v.shape for k, v in self.params.items()
            ):
                raise ValueError("params: shapes do not fit")
            super().load_state_dict(state)

    train_app(make_options(tmp_path / "results", max_steps=100), 16, 3, registry=LearnerRegistry(ShapedLearner))
    h = Harness(tmp_path, resume=True)
    h.registry.learner_class = ShapedLearner
    try:
        client = h.connect()
        client.send(hello_message("gw", BALL_9))
        error = client.wait_end()
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "cannot restore" in error.details()
    finally:
        h.close()


def test_the_limits_module_states_what_the_proto_says():
    """The proto comments give the bounds; a change to one must change the other."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "protos" / "tandem" / "v1" / "trainer.proto").read_text()
    for bound in (validation.MAX_ABS_OBSERVATION, validation.MAX_ABS_REWARD, validation.MAX_ABS_LOG_PROB,
                  validation.MAX_ABS_CONTINUOUS_ACTION, validation.MAX_ABS_EPISODE_RETURN):
        written = f"{bound:.0e}".replace("e+0", "e").replace("e+", "e")  # 1e6, 1e15
        assert f"<= {written}" in text, written
    assert np.float32(validation.MAX_ABS_OBSERVATION) ** 2 * np.float32(1e9) < np.finfo(np.float32).max


def test_a_newcomer_that_cannot_register_replaces_nothing(harness):
    h = harness()
    real = h.connect()
    _handshake(real, "gw-real", BALL)
    junk = h.connect()
    flat = specs_mod.to_proto(BALL)
    flat.observations[0].shape[:] = [3, 8, 8]  # an image below the visual encoder's minimum: bounded, but no network takes it
    junk.send(trainer_pb2.GatewayMessage(hello=trainer_pb2.Hello(gateway_id="junk", behaviors=[flat])))
    end = junk.wait_end()
    assert end.code() == grpc.StatusCode.FAILED_PRECONDITION and "at least" in end.details(), end.details()
    real.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4)]))
    assert _acks(real.recv_until(lambda m: m.HasField("ack"))) == [1]
