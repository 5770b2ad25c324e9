"""Remote-control mode end to end: a real gateway, real stand-in Unity processes, real sockets."""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common import tensor
from gateway.remote.client import GatewayClient, decode_steps, random_actions
from tandem.v1 import gateway_pb2
from gateway_helpers import environment_options, running_gateway

BALL = "3DBall?team=0"
GRID = "GridWorld?team=0"


@pytest.fixture(scope="module")
def gridworld_gateway():
    """One gateway (GridWorld: discrete branches, masks, a visual and a vector observation)."""
    with running_gateway(environment_options(env_args=("--task", "gridworld"))) as gw:
        yield gw


@pytest.fixture(scope="module")
def ball_gateway():
    """One gateway on the 3DBall stand-in (12 agents, 8 observations, 2 continuous actions)."""
    with running_gateway(environment_options()) as gw:
        yield gw


def play_random(client: GatewayClient, steps: int, rng) -> tuple[list, list]:
    """Resets, then steps with random valid actions; returns every response's decoded views and stats."""
    specs = client.specs()
    session = client.play(timeout_s=60)
    try:
        response = session.reset()
        seen, stats = [decode_steps(response, specs)], list(response.stats)
        for _ in range(steps):
            actions = [
                random_actions(v, specs[v.behavior], rng, gateway_pb2.BehaviorActions())
                for v in seen[-1]
                if len(v.decisions)
            ]
            response = session.step(actions)
            seen.append(decode_steps(response, specs))
            stats.extend(response.stats)
        return seen, stats
    finally:
        session.close()


def test_describe_lists_behaviors_instances_and_engine_settings(ball_gateway):
    with GatewayClient(ball_gateway.address) as client:
        d = client.describe()
    assert d.api_version == "v1"
    assert d.mode == gateway_pb2.GATEWAY_MODE_REMOTE_CONTROL
    assert [b.name for b in d.behaviors] == [BALL]
    ball = d.behaviors[0]
    assert [list(o.shape) for o in ball.observations] == [[8]]
    assert ball.action_spec.continuous_size == 2 and list(ball.action_spec.discrete_branches) == []
    [inst] = d.instances
    opts = ball_gateway.options.environment
    assert (inst.index, inst.worker_id, inst.port, inst.alive, inst.restarts) == (0, 0, opts.base_port, True, 0)
    assert inst.file_name == opts.file_name
    assert d.engine_settings.width == 84 and d.engine_settings.time_scale == pytest.approx(20.0)


def test_play_random_actions_reports_steps_terminals_and_stats(ball_gateway, rng):
    with GatewayClient(ball_gateway.address) as client:
        seen, stats = play_random(client, 250, rng)
    first = seen[0][0]
    assert (first.instance, first.behavior) == (0, BALL)
    assert len(first.decisions) == 12 and first.decisions.observations[0].shape == (12, 8)
    assert first.decisions.action_mask.shape == (12, 0)
    terminals = [v.terminals for views in seen for v in views if len(v.terminals)]
    assert terminals, "random tilting drops balls within 250 decisions"
    assert all(not t.interrupted.any() for t in terminals)
    assert all((t.rewards <= -0.9).all() for t in terminals)  # a drop ends with -1
    assert "Environment/Drops" in {s.key for s in stats}
    assert {s.aggregation for s in stats if s.key == "Environment/Drops"} == {"sum"}


def test_gridworld_masks_visual_observations_and_parameters(gridworld_gateway, rng):
    with GatewayClient(gridworld_gateway.address) as client:
        specs = client.specs()
        spec = specs[GRID]
        assert spec.action_spec.discrete_branches == (5, 2)
        assert sorted(o.shape for o in spec.observations) == [(3, 24, 24), (6,)]  # channels-first, as Unity sends
        session = client.play(timeout_s=60)
        try:
            accepted = session.request(
                gateway_pb2.PlayRequest(
                    set_environment_parameters=gateway_pb2.SetEnvironmentParameters(parameters={"gridSize": 4})
                )
            )
            assert accepted.WhichOneof("response") == "parameters_accepted"
            [view] = decode_steps(session.reset({"gridSize": 3}), specs)
            assert view.decisions.action_mask.shape == (len(view.decisions), 7)
            assert view.decisions.action_mask[:, 6].all()  # dig is masked off the goal
            visual = next(o for o in view.decisions.observations if o.ndim == 4)
            assert 0.0 <= visual.min() and visual.max() <= 1.0
            for _ in range(20):
                action = random_actions(view, spec, rng, gateway_pb2.BehaviorActions())
                [view] = decode_steps(session.step([action]), specs)
        finally:
            session.close()


# -- bad input: INVALID_ARGUMENT naming the field, and the gateway keeps serving --------------


def _tensor(array) -> gateway_pb2.BehaviorActions:
    return tensor.to_proto(np.asarray(array))


def _bad_requests(view, spec):
    """(name, request, expected field in the message) for every kind of bad input."""
    ids = view.decisions.agent_ids
    n = len(ids)

    def ok_actions(**changes):
        a = gateway_pb2.BehaviorActions(instance=view.instance, behavior=view.behavior)
        a.agent_ids.CopyFrom(tensor.to_proto(ids))
        a.discrete.CopyFrom(tensor.to_proto(np.zeros((n, 2), np.int32)))
        for field, value in changes.items():
            if field in ("instance", "behavior"):
                setattr(a, field, value)
            elif value is None:
                a.ClearField(field)
            else:
                getattr(a, field).CopyFrom(value)
        return gateway_pb2.PlayRequest(step=gateway_pb2.StepRequest(actions=[a]))

    short = tensor.to_proto(np.zeros((n, 2), np.int32))
    short.data = short.data[:-1]
    nan = tensor.to_proto(np.full((n, 1), np.nan, np.float32))
    return [
        ("wrong shape", ok_actions(discrete=tensor.to_proto(np.zeros((n, 3), np.int32))), "step.actions[0].discrete"),
        ("wrong dtype", ok_actions(discrete=tensor.to_proto(np.zeros((n, 2), np.float32))), "step.actions[0].discrete"),
        ("byte length", ok_actions(discrete=short), "step.actions[0].discrete"),
        ("out of range", ok_actions(discrete=tensor.to_proto(np.full((n, 2), 5, np.int32))), "step.actions[0].discrete"),
        ("negative", ok_actions(discrete=tensor.to_proto(np.full((n, 2), -1, np.int32))), "step.actions[0].discrete"),
        ("unknown behavior", ok_actions(behavior="Nope?team=0"), "step.actions[0].behavior"),
        ("unknown instance", ok_actions(instance=7), "step.actions[0].instance"),
        (
            "not requesting a decision",
            ok_actions(agent_ids=tensor.to_proto(np.asarray([int(ids.max()) + 1000], np.int32))),
            "step.actions[0].agent_ids",
        ),
        (
            "duplicate agents",
            ok_actions(agent_ids=tensor.to_proto(np.asarray([ids[0], ids[0]], np.int32))),
            "step.actions[0].agent_ids",
        ),
        ("missing discrete", ok_actions(discrete=None), "step.actions[0].discrete"),
        ("NaN for a behavior without continuous actions", ok_actions(continuous=nan), "step.actions[0].continuous"),
        ("empty request", gateway_pb2.PlayRequest(), "request"),
        (
            "non-finite parameter",
            gateway_pb2.PlayRequest(
                set_environment_parameters=gateway_pb2.SetEnvironmentParameters(parameters={"gridSize": math.inf})
            ),
            "set_environment_parameters.parameters",
        ),
    ]


def test_bad_inputs_are_invalid_argument_naming_the_field(gridworld_gateway):
    with GatewayClient(gridworld_gateway.address) as client:
        specs = client.specs()
        session = client.play(timeout_s=60)
        [view] = decode_steps(session.reset(), specs)
        session.close()
        cases = _bad_requests(view, specs[GRID])
        for name, request, field in cases:
            session = client.play(timeout_s=60)
            session.reset()
            with pytest.raises(grpc.RpcError) as err:
                session.request(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert field in err.value.details(), (name, err.value.details())
        # still serving: the next client plays normally
        session = client.play(timeout_s=60)
        [view] = decode_steps(session.reset(), specs)
        action = random_actions(view, specs[GRID], np.random.default_rng(1), gateway_pb2.BehaviorActions())
        session.step([action])
        session.close()


def test_continuous_nan_inf_and_shape_are_rejected(ball_gateway):
    with GatewayClient(ball_gateway.address) as client:
        specs = client.specs()
        for bad, field_text in (
            (np.full((12, 2), np.nan, np.float32), "NaN"),
            (np.full((12, 2), np.inf, np.float32), "infinity"),
            (np.zeros((12, 3), np.float32), "shape"),
            (np.zeros((12, 2), np.float64), "dtype"),
        ):
            session = client.play(timeout_s=60)
            [view] = decode_steps(session.reset(), specs)
            a = gateway_pb2.BehaviorActions(instance=0, behavior=BALL)
            a.agent_ids.CopyFrom(tensor.to_proto(view.decisions.agent_ids))
            a.continuous.CopyFrom(tensor.to_proto(bad))
            with pytest.raises(grpc.RpcError) as err:
                session.step([a])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "step.actions[0].continuous" in err.value.details() and field_text in err.value.details()


def test_partial_actions_and_unordered_agents_are_accepted(ball_gateway):
    with GatewayClient(ball_gateway.address) as client:
        specs = client.specs()
        session = client.play(timeout_s=60)
        try:
            [view] = decode_steps(session.reset(), specs)
            ids = view.decisions.agent_ids[::-1][:5].copy()
            a = gateway_pb2.BehaviorActions(instance=0, behavior=BALL)
            a.agent_ids.CopyFrom(tensor.to_proto(ids))
            a.continuous.CopyFrom(tensor.to_proto(np.ones((5, 2), np.float32)))
            [view] = decode_steps(session.step([a]), specs)
            assert len(view.decisions) == 12
        finally:
            session.close()


def test_one_play_stream_at_a_time(ball_gateway):
    with GatewayClient(ball_gateway.address) as first, GatewayClient(ball_gateway.address) as second:
        s1 = first.play(timeout_s=60)
        s1.reset()
        s2 = second.play(timeout_s=60)
        with pytest.raises(grpc.RpcError) as err:
            s2.reset()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        s1.close()
        time.sleep(0.2)
        s3 = second.play(timeout_s=60)
        s3.reset()
        s3.close()


def test_client_disconnect_mid_episode_does_not_wedge_the_gateway(ball_gateway, rng):
    specs = GatewayClient(ball_gateway.address).specs()
    # 1) a client that vanishes between steps (channel closed without half-closing)
    client = GatewayClient(ball_gateway.address)
    session = client.play()
    [view] = decode_steps(session.reset(), specs)
    session.step([random_actions(view, specs[BALL], rng, gateway_pb2.BehaviorActions())])
    client.close()
    # 2) a client that vanishes while its step is being computed
    client = GatewayClient(ball_gateway.address)
    session = client.play()
    session.reset()
    req = gateway_pb2.PlayRequest(step=gateway_pb2.StepRequest())
    session._requests.put(req)
    threading.Timer(0.0, client.close).start()
    time.sleep(0.3)
    # the next client drives the environments from where they are
    deadline = time.monotonic() + 10
    while True:
        with GatewayClient(ball_gateway.address) as again:
            session = again.play(timeout_s=30)
            try:
                [view] = decode_steps(session.step(), specs)
                break
            except grpc.RpcError as e:  # the old stream may take a moment to be torn down
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                session.close()
    assert len(view.decisions) + len(view.terminals) > 0


def test_health_serving_and_reflection(ball_gateway):
    channel = grpc.insecure_channel(ball_gateway.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tandem.v1.Gateway"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
        )
        names = {s.name for s in reply.list_services_response.service}
        assert {"tandem.v1.Gateway", "grpc.health.v1.Health"} <= names
    finally:
        channel.close()


@pytest.mark.slow
def test_two_instances_step_in_parallel(rng):
    with running_gateway(environment_options(num_envs=2, env_args=("--num-agents", "3"))) as gw:
        with GatewayClient(gw.address) as client:
            d = client.describe()
            assert [(i.index, i.worker_id, i.alive) for i in d.instances] == [(0, 0, True), (1, 1, True)]
            assert d.instances[1].port == d.instances[0].port + 1
            seen, _ = play_random(client, 30, rng)
    for views in seen:
        assert sorted(v.instance for v in views) == [0, 1]
        assert all(len(v.decisions) + len(v.terminals) > 0 for v in views)


def test_a_new_client_right_after_a_cancelled_stream_is_not_refused(ball_gateway):
    """A departed client's stream may still be unwinding on the server; the next client
    waits for it rather than getting FAILED_PRECONDITION."""
    with GatewayClient(ball_gateway.address) as client:
        for _ in range(20):
            session = client.play(timeout_s=60)
            session.reset()
            session.close()  # half-close and cancel at once, then straight to the next stream


def test_a_new_client_right_after_a_half_closed_stream_is_not_refused(ball_gateway):
    """Ending the request stream without waiting for the status, then reconnecting at
    once (what the Node client does), must not race the server's unwinding."""
    with GatewayClient(ball_gateway.address) as client:
        for _ in range(20):
            session = client.play(timeout_s=60)
            session.reset()
            session._requests.put(None)  # half-close only; no wait for the status
