"""A bounded property-based fuzz of ``tandem.v1.Gateway/Play`` over a real socket (hypothesis).

Every request drawn (resets and environment parameters with extreme finite values, odd
names, steps with any instance, behavior, dtype, shape, byte length and extreme actions,
requests with nothing set) is answered with a response or a clear status
(INVALID_ARGUMENT, or FAILED_PRECONDITION when Unity died of a parameter); the gateway
never answers UNKNOWN or INTERNAL, and it keeps serving: its instance stays alive.
Derandomized and bounded (about a minute on a loaded CI machine, seconds alone).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.options import RestartLimits
from gateway.remote.client import GatewayClient
from gateway_helpers import environment_options, running_gateway
from tandem.v1 import gateway_pb2, tensor_pb2

BALL = "3DBall?team=0"
#: the statuses a request may end with; anything else (UNKNOWN, INTERNAL, UNAVAILABLE...) is a bug
CLEAR = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}

#: extreme finite floats (float32's largest and smallest), the non-finite ones, and ordinary ones
EXTREME = st.sampled_from([3.4028235e38, -3.4028235e38, 1e38, 1e30, 1e9, 1.4e-45, -0.0, float("nan"), float("inf")])
FLOATS = st.one_of(EXTREME, st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-10, 10))
NAMES = st.one_of(
    st.sampled_from(["gravity", "scale", "mass", "", "größe", "tab\there", "x" * 300]),
    st.text(max_size=20),
)


@st.composite
def tensors(draw, dtype: int, width: int | None):
    """A Tensor that often fits (``width`` columns of 12 or fewer agents) and often does not."""
    dtype = draw(st.one_of(st.just(dtype), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 99, -1])))
    rows = draw(st.one_of(st.integers(0, 13), st.sampled_from([-1, 2**31 - 1, 2**40])))
    shape = [rows] if width is None else [rows, draw(st.one_of(st.just(width), st.integers(-2, 4)))]
    count = int(np.prod([max(d, 0) for d in shape], dtype=np.float64)) if all(d < 10**6 for d in shape) else 0
    if dtype == tensor_pb2.FLOAT32 and count and draw(st.booleans()):
        values = draw(st.lists(FLOATS, min_size=count, max_size=count))
        data = np.asarray(values, np.float32).tobytes()
    elif dtype == tensor_pb2.INT32 and count and draw(st.booleans()):
        data = np.asarray(draw(st.lists(st.integers(-2, 14), min_size=count, max_size=count)), np.int32).tobytes()
    else:
        data = draw(st.binary(max_size=64))
    return tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data)


@st.composite
def step_requests(draw):
    request = gateway_pb2.PlayRequest()
    step = request.step
    step.SetInParent()
    for _ in range(draw(st.integers(0, 2))):
        entry = step.actions.add(
            instance=draw(st.sampled_from([0, 0, 0, 1, -1, 2**31 - 1])),
            behavior=draw(st.one_of(st.just(BALL), NAMES)),
        )
        if draw(st.integers(0, 4)):
            entry.agent_ids.CopyFrom(draw(tensors(tensor_pb2.INT32, None)))
        if draw(st.integers(0, 4)):
            entry.continuous.CopyFrom(draw(tensors(tensor_pb2.FLOAT32, 2)))
        if draw(st.booleans()):
            entry.discrete.CopyFrom(draw(tensors(tensor_pb2.INT32, draw(st.integers(0, 1)))))
    return request


def _parameters(draw) -> dict[str, float]:
    return draw(st.dictionaries(NAMES, FLOATS, max_size=3))


@st.composite
def play_requests(draw):
    kind = draw(st.sampled_from(["reset", "parameters", "step", "step", "step", "nothing"]))
    if kind == "reset":
        return gateway_pb2.PlayRequest(reset=gateway_pb2.ResetRequest(environment_parameters=_parameters(draw)))
    if kind == "parameters":
        return gateway_pb2.PlayRequest(
            set_environment_parameters=gateway_pb2.SetEnvironmentParameters(parameters=_parameters(draw))
        )
    if kind == "step":
        return draw(step_requests())
    return gateway_pb2.PlayRequest()


@pytest.fixture(scope="module")
def fuzzed_gateway():
    limits = RestartLimits(max_lifetime_restarts=-1, rate_limit_n=-1)
    with running_gateway(environment_options(restarts=limits)) as gw, GatewayClient(gw.address, timeout_s=60) as client:
        yield gw, client


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(requests=st.lists(play_requests(), min_size=1, max_size=3))
def test_play_answers_every_request_or_ends_with_a_clear_status(fuzzed_gateway, requests):
    gw, client = fuzzed_gateway
    answered = 0
    call = client.stub.Play(iter(requests), timeout=60, metadata=client.metadata)
    try:
        for _ in call:
            answered += 1
    except grpc.RpcError as err:
        assert err.code() in CLEAR, (err.code(), err.details(), requests)
        assert err.details() and len(err.details()) <= 2000
    else:
        assert answered == len(requests)
    [instance] = client.describe().instances
    assert instance.alive
