"""Environment parameters over the real Trainer service: after Welcome, pushed at lesson changes."""

from __future__ import annotations

import json

import pytest

from test_service import Harness, _wait_for
from test_service_support import BALL, chunk_message, hello_message, make_trajectory
from trainer_server.stats import read_scalars
from tandem.v1 import trainer_pb2

#: gravity is a constant, mass a sampler, scale a two-lesson curriculum on 3DBall's mean reward
PARAMETERS = {
    "gravity": 20.0,
    "mass": {"sampler_type": "uniform", "sampler_parameters": {"min_value": 2.0, "max_value": 3.0}},
    "scale": {
        "curriculum": [
            {
                "name": "Small",
                "value": 0.5,
                "completion_criteria": {
                    "behavior": "3DBall", "measure": "reward", "threshold": 1.0, "min_lesson_length": 2,
                    "signal_smoothing": False, "require_reset": True,
                },
            },
            {"name": "Large", "value": 2.0},
        ]
    },
}


@pytest.fixture
def harness(tmp_path):
    h = Harness(tmp_path, environment_parameters=PARAMETERS, summary_freq=20)
    yield h
    h.close()


def _kinds(messages) -> list[str]:
    return [m.WhichOneof("message") for m in messages]


def test_parameters_follow_welcome_before_snapshots_and_lesson_changes_reach_every_gateway(harness, tmp_path):
    first = harness.connect()
    first.send(hello_message("gw-1", BALL))
    messages = [first.recv() for _ in range(3)]
    assert _kinds(messages) == ["welcome", "environment_parameters", "snapshot"]
    values = messages[1].environment_parameters
    assert values.parameters["gravity"].constant == 20.0
    assert (values.parameters["mass"].uniform.min_value, values.parameters["mass"].seed) == (2.0, 7 + 1)
    assert (values.parameters["scale"].constant, values.parameters["scale"].lesson_name) == (0.5, "Small")
    assert values.generation == 1 and not values.reset

    second = harness.connect()
    second.send(hello_message("gw-2", BALL))
    assert _kinds([second.recv() for _ in range(3)]) == ["welcome", "environment_parameters", "snapshot"]

    # two episodes with return 5 > 1.0: the lesson changes, with a reset, for both gateways
    episodes = [make_trajectory(BALL, 4, agent_id=i, done=True, episode_return=5.0) for i in range(2)]
    first.send(chunk_message(BALL, 1, episodes))
    for client in (first, second):
        got = client.recv_until(lambda m: m.WhichOneof("message") == "environment_parameters")
        pushed = got[-1].environment_parameters
        assert pushed.reset and pushed.generation == 2
        assert (pushed.parameters["scale"].constant, pushed.parameters["scale"].lesson) == (2.0, 1)

    # a gateway joining now gets the current lesson, without a reset
    late = harness.connect()
    late.send(hello_message("gw-3", BALL))
    joined = [late.recv() for _ in range(2)][1].environment_parameters
    assert joined.parameters["scale"].constant == 2.0 and joined.generation == 2 and not joined.reset

    status_path = harness.results.training_status_path
    _wait_for(lambda: json.loads(status_path.read_text()).get("scale") == {"lesson_num": 1})
    # enough steps for a summary: the lesson number is in TensorBoard, per parameter
    more = [make_trajectory(BALL, 16, agent_id=i) for i in range(3)]
    first.send(chunk_message(BALL, 2, more))
    first.recv_until(lambda m: m.WhichOneof("message") == "ack" and m.ack.sequence == 2)
    folder = harness.results.behavior_dir(BALL.name)
    _wait_for(lambda: "Environment/Lesson Number/scale" in read_scalars(folder))
    scalars = read_scalars(folder)
    assert scalars["Environment/Lesson Number/scale"][-1][1] == 1.0
    assert scalars["Environment/Lesson Number/gravity"][-1][1] == 0.0


def test_a_run_without_parameters_sends_none(tmp_path):
    h = Harness(tmp_path)
    try:
        client = h.connect()
        client.send(hello_message("gw-1", BALL))
        assert _kinds([client.recv(), client.recv()]) == ["welcome", "snapshot"]
        assert h.app.environment_parameters() is None
    finally:
        h.close()


def test_a_pending_reset_survives_newer_values(harness):
    """A slow gateway that missed a reset still resets when newer values replace the pending ones."""
    from trainer_server.service import _Connection

    conn = _Connection("gw", "peer")
    conn.push_parameters(trainer_pb2.EnvironmentParameters(generation=1, reset=True))
    conn.push_parameters(trainer_pb2.EnvironmentParameters(generation=2, reset=False))
    [message] = conn.next_messages(0)
    assert message.environment_parameters.generation == 2 and message.environment_parameters.reset
