"""A bounded property-based fuzz of ``Trainer.Connect`` over a real socket (issue 19).

Streams of Hello, new_behavior, chunks and empty messages, with specs of every size and
trajectories holding extreme finite values, NaN and infinity, and sequences from 0 to
2**64-1: the server never crashes, every stream ends with OK or a clear refusal (never
UNKNOWN or INTERNAL), and a real gateway still trains afterwards. Derandomized, a few dozen
examples: seconds in CI.
"""

from __future__ import annotations

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import specs as specs_mod
from common import trajectory as trajectory_mod
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from test_service import Harness, _acks, _handshake
from test_service_support import BALL, GRID, GatewayClient, chunk_message, make_trajectory
from tandem.v1 import trainer_pb2

BALL_9 = BehaviorSpec(
    name=BALL.name, observations=(ObservationSpec(name="VectorSensor", shape=(9,)),), action_spec=ActionSpec(2)
)
CLEAR = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
EXTREME = [1e20, -1e30, 3e38, -3.4e38, 1e30, 1e6, -1e6, 1e-45, 0.0, float("nan"), float("inf"), float("-inf")]


def _spec_message(kind: str, shape: list[int]):
    if kind == "huge":
        msg = specs_mod.to_proto(BALL)
        del msg.observations[:]
        msg.observations.add(name="v", shape=shape)
        return msg
    return specs_mod.to_proto({"ball": BALL, "grid": GRID, "ball9": BALL_9}[kind])


specs = st.builds(
    _spec_message,
    st.sampled_from(["ball", "grid", "ball9", "huge"]),
    st.lists(st.integers(-2, 2**31 - 1), min_size=0, max_size=5),
)
values = st.one_of(st.sampled_from(EXTREME), st.floats(width=32))


@st.composite
def trajectories(draw):
    spec = draw(st.sampled_from([BALL, GRID, BALL_9]))
    t = make_trajectory(spec, draw(st.integers(1, 4)))
    target = draw(st.sampled_from(["none", "rewards", "log_probs", "observations", "next_observations",
                                   "continuous_actions", "episode_return"]))
    value = draw(values)
    if target == "observations":
        t.observations[0].reshape(-1)[0] = value
    elif target == "next_observations":
        t.next_observations[0].reshape(-1)[0] = value
    elif target == "episode_return":
        t.episode_return = value
    elif target != "none" and getattr(t, target).size:
        getattr(t, target).reshape(-1)[0] = value
    return trajectory_mod.to_proto(t)


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["hello", "hello", "new_behavior", "chunk", "chunk", "chunk", "empty"]))
    if kind == "hello":
        hello = trainer_pb2.Hello(gateway_id=draw(st.sampled_from(["fuzz-a", "fuzz-b", ""])),
                                  num_instances=draw(st.integers(-5, 1000)))
        for spec in draw(st.lists(specs, max_size=2)):
            hello.behaviors.add().CopyFrom(spec)
        return trainer_pb2.GatewayMessage(hello=hello)
    if kind == "new_behavior":
        return trainer_pb2.GatewayMessage(new_behavior=draw(specs))
    if kind == "chunk":
        chunk = trainer_pb2.ExperienceChunk(
            sequence=draw(st.one_of(st.integers(0, 6), st.just(2**64 - 1))),
            behavior=draw(st.sampled_from([BALL.name, GRID.name, "nope"])),
            returned_steps=draw(st.integers(0, 2**40)),
        )
        for t in draw(st.lists(trajectories(), max_size=2)):
            chunk.trajectories.add().CopyFrom(t)
        if draw(st.booleans()):
            chunk.stats.add(key="Custom/x", value=draw(values), aggregation=draw(st.sampled_from(["average", "?"])))
        return trainer_pb2.GatewayMessage(chunk=chunk)
    return trainer_pb2.GatewayMessage()


def test_fuzzed_connect_streams_get_clear_statuses_and_the_server_keeps_training(tmp_path):
    h = Harness(tmp_path, buffer_size=10_000)
    ends: list[grpc.StatusCode | None] = []
    try:

        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(messages(), min_size=1, max_size=5))
        def one_stream(stream):
            client = GatewayClient(h.channel)
            for message in stream:
                client.send(message)
            client.close()
            assert client.ended.wait(120), "a fuzzed stream never ended"
            error = client.error
            if error is not None:
                assert error.code() in CLEAR, (error.code(), error.details())
                assert error.details(), error.code()
            ends.append(None if error is None else error.code())

        one_stream()
        assert any(code in CLEAR for code in ends)
        # the server is alive and trains: a real gateway's chunk is acked
        real = GatewayClient(h.channel)
        _handshake(real, "real-gateway", GRID)
        real.send(chunk_message(GRID, 1, [make_trajectory(GRID, 4)]))
        assert 1 in _acks(real.recv_until(lambda m: m.HasField("ack"), timeout=60))
        real.close()
    finally:
        h.close()
