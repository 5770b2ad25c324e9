"""What an attack run and an independent Unity player broke (issue 19), over real sockets.

The Unity port (loopback only, garbage refused to its sender), environment parameters
(validated; one that killed an instance is not replayed), cheap checks before costly ones
in a step request, unknown side channels logged once, bounded names and idle streams
that cannot starve Describe and Play.
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2_grpc

from gateway.options import GatewayOptions, OptionsError, RestartLimits, ServerOptions, validate
from gateway.remote.client import GatewayClient, decode_steps, random_actions
from gateway_helpers import environment_options, running_gateway
from tandem.v1 import gateway_pb2, gateway_pb2_grpc, tensor_pb2
from unity_standin.side_channels import UNKNOWN_CHANNEL

BALL = "3DBall?team=0"
EXCHANGE = "/communicator_objects.UnityToExternalProto/Exchange"


def _outward_address() -> str:
    """An address of this machine that is not loopback (skips the test when there is none)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # UDP: nothing is sent, the route picks the interface
        address = probe.getsockname()[0]
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or address.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    return address


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


def _step_random(session, specs, views, rng):
    actions = [random_actions(v, specs[v.behavior], rng, gateway_pb2.BehaviorActions()) for v in views if len(v.decisions)]
    return decode_steps(session.step(actions), specs)


# -- the port Unity connects to -------------------------------------------------------------------


@pytest.mark.parametrize("host, reachable", [(None, False), ("0.0.0.0", True)])
def test_the_unity_port_listens_on_loopback_unless_told_otherwise(host, reachable):
    outward = _outward_address()
    extra = {} if host is None else {"unity_listen_host": host}
    with running_gateway(environment_options(**extra)) as gw:
        port = gw.options.environment.port(0)
        assert _connects("127.0.0.1", port)  # the build beside the gateway connects
        assert _connects(outward, port) is reachable


@pytest.mark.parametrize("host", ["", "host:5005", "[::1]", "bad host", "-x", "a" * 300])
def test_a_bad_unity_listen_host_is_refused_naming_the_option(host):
    with pytest.raises(OptionsError, match="--unity-listen-host"):
        validate(GatewayOptions(environment=environment_options(unity_listen_host=host)))


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "editor-box.lan"])
def test_good_unity_listen_hosts_are_accepted(host):
    validate(GatewayOptions(environment=environment_options(unity_listen_host=host)))


def test_garbage_sent_to_the_unity_port_is_refused_to_its_sender_and_the_instance_goes_on(rng):
    """Two 64-byte messages that are not UnityMessageProto, over [::1] and 127.0.0.1: each caller
    gets INVALID_ARGUMENT, the instance is neither restarted nor taken down, play goes on."""
    limits = RestartLimits(max_lifetime_restarts=1, rate_limit_n=1, rate_limit_period_s=60)
    with running_gateway(environment_options(restarts=limits)) as gw, ThreadPoolExecutor(2) as pool:
        port = gw.options.environment.port(0)
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=60)
            views = decode_steps(session.reset(), specs)
            for host in ("[::1]", "127.0.0.1"):
                with grpc.insecure_channel(f"{host}:{port}") as channel:
                    exchange = channel.unary_unary(EXCHANGE)
                    pending = pool.submit(exchange, b"\xff" * 64, timeout=60)
                    for _ in range(3):  # the stepping thread meets the garbage while it waits for Unity
                        views = _step_random(session, specs, views, rng)
                        if pending.done():
                            break
                    with pytest.raises(grpc.RpcError) as err:
                        pending.result(timeout=60)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "not a UnityMessageProto" in err.value.details()
            for _ in range(3):
                views = _step_random(session, specs, views, rng)
            assert len(views[0].decisions) == 12
            [instance] = client.describe().instances
            assert (instance.alive, instance.restarts) == (True, 0)
            session.close()


# -- unknown side channels -----------------------------------------------------------------------


def test_unknown_side_channel_data_is_logged_once_with_its_id(rng, capfd):
    mlagents_logger = logging.getLogger("mlagents_envs.side_channel.side_channel_manager")
    handlers_before = len(mlagents_logger.handlers)
    with running_gateway(environment_options(env_args=("--unknown-side-channel",))) as gw:
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=60)
            views = decode_steps(session.reset(), specs)
            for _ in range(20):
                views = _step_random(session, specs, views, rng)
            session.close()
    # mlagents-envs 1.1.0 adds a handler per warning (each line then printed once per earlier one)
    assert len(mlagents_logger.handlers) == handlers_before
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if str(UNKNOWN_CHANNEL) in line]
    assert len(lines) == 1, lines
    assert "nobody registered" in lines[0]
    assert "Unknown side channel data received" not in out + err


# -- environment parameters ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway():
    with running_gateway(environment_options()) as gw:
        yield gw


def _play_error(address: str, request: gateway_pb2.PlayRequest) -> grpc.RpcError:
    with GatewayClient(address) as client:
        calls = client.stub.Play(iter([request]), timeout=60, metadata=client.metadata)
        with pytest.raises(grpc.RpcError) as err:
            list(calls)
        return err.value


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("scale", 3e38, "must be within [-1e+09, 1e+09]"),
        ("scale", -1e10, "must be within"),
        ("größe", 1.0, "must be printable ASCII"),
        ("tab\there", 1.0, "must be printable ASCII"),
        ("x" * 300, 1.0, "a parameter name of 300 characters"),
        ("", 1.0, "must not be empty"),
    ],
)
@pytest.mark.parametrize("kind", ["reset", "set_environment_parameters"])
def test_bad_environment_parameters_are_invalid_arguments_and_nothing_is_applied(gateway, kind, name, value, expected):
    if kind == "reset":
        request = gateway_pb2.PlayRequest(reset=gateway_pb2.ResetRequest(environment_parameters={name: value}))
        field = "reset.environment_parameters"
    else:
        request = gateway_pb2.PlayRequest(
            set_environment_parameters=gateway_pb2.SetEnvironmentParameters(parameters={name: value})
        )
        field = "set_environment_parameters.parameters"
    err = _play_error(gateway.address, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field) and expected in err.details()
    assert len(err.details()) < 1000
    with GatewayClient(gateway.address) as client:  # the instance is untouched and the next stream works
        session = client.play(timeout_s=60)
        [view] = decode_steps(session.reset(), client.specs())
        assert len(view.decisions) == 12
        session.close()
        [instance] = client.describe().instances
        assert (instance.alive, instance.restarts) == (True, 0)


def test_a_parameter_that_kills_unity_is_not_replayed_and_the_client_is_told():
    """A scene that crashes on a parameter: the instance is restarted once, without it, and the
    request says so (FAILED_PRECONDITION naming it); the next reset plays on."""
    limits = RestartLimits(max_lifetime_restarts=3, rate_limit_n=-1)
    options = environment_options(env_args=("--crash-on-parameter", "boom"), restarts=limits)
    with running_gateway(options) as gw, GatewayClient(gw.address) as client:
        specs = client.specs()
        session = client.play(timeout_s=120)
        decode_steps(session.reset({"gravity": 9.0}), specs)
        with pytest.raises(grpc.RpcError) as err:
            session.reset({"boom": 1.0})
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "['boom']" in err.value.details() and "restarted without them" in err.value.details()
        [instance] = client.describe().instances
        assert (instance.alive, instance.restarts) == (True, 1)
        session = client.play(timeout_s=120)
        [view] = decode_steps(session.reset(), specs)
        assert len(view.decisions) == 12
        session.close()
        assert client.describe().instances[0].restarts == 1


# -- step requests: cheap checks first, bounded names, named fields ------------------------------


def _bad_step(address: str, entry: gateway_pb2.BehaviorActions, timeout_s: float = 60) -> grpc.RpcError:
    with GatewayClient(address, timeout_s=timeout_s) as client:
        session = client.play(timeout_s=timeout_s)
        session.reset()
        with pytest.raises(grpc.RpcError) as err:
            session.step([entry])
        return err.value


def test_a_step_with_millions_of_agent_ids_is_refused_before_any_costly_check(gateway):
    """16.5M ids (63 MiB): refused on the count alone. Checking duplicates first took a minute
    of CPU under the one-driver lock; the deadline here leaves room for a loaded machine only."""
    ids = np.arange(16_500_000, dtype=np.int32)
    entry = gateway_pb2.BehaviorActions(instance=0, behavior=BALL)
    entry.agent_ids.dtype = tensor_pb2.INT32
    entry.agent_ids.shape.append(ids.size)
    entry.agent_ids.data = ids.tobytes()
    err = _bad_step(gateway.address, entry, timeout_s=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "step.actions[0].agent_ids: 16500000 agent ids given, but 12 agents" in err.details()


def test_a_huge_behavior_name_is_a_short_invalid_argument(gateway):
    err = _bad_step(gateway.address, gateway_pb2.BehaviorActions(instance=0, behavior="x" * 100_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "step.actions[0].behavior: a behavior name of 100000 characters (at most 256)"


@pytest.mark.parametrize("field", ["agent_ids", "continuous"])
def test_an_unknown_dtype_names_the_field(gateway, field):
    entry = gateway_pb2.BehaviorActions(instance=0, behavior=BALL)
    entry.agent_ids.CopyFrom(tensor_pb2.Tensor(dtype=tensor_pb2.INT32, shape=[0]))
    entry.continuous.CopyFrom(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[0, 2]))
    getattr(entry, field).dtype = 99
    err = _bad_step(gateway.address, entry)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"step.actions[0].{field}: unknown or unspecified dtype 99"


# -- idle streams beside real clients ------------------------------------------------------------


def _idle_reflection_streams(channel: grpc.Channel, count: int) -> list:
    """``count`` reflection streams that never send their first message."""
    import threading

    never = threading.Event()

    def nothing():
        never.wait()
        yield  # pragma: no cover - never reached

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return [stub.ServerReflectionInfo(nothing(), timeout=300) for _ in range(count)]


def test_idle_reflection_streams_do_not_starve_describe_and_play(gateway):
    with grpc.insecure_channel(gateway.address) as idle:
        calls = _idle_reflection_streams(idle, 40)
        try:
            with GatewayClient(gateway.address, timeout_s=30) as client:
                assert client.describe().behaviors
                session = client.play(timeout_s=30)
                [view] = decode_steps(session.reset(), client.specs())
                assert len(view.decisions) == 12
                session.close()
        finally:
            for call in calls:
                call.cancel()


def test_streams_without_a_first_message_are_cancelled_and_real_peers_served_again():
    server = ServerOptions(listen="127.0.0.1:0", first_message_timeout_s=2.0)
    with running_gateway(environment_options(), server) as gw, grpc.insecure_channel(gw.address) as idle:
        calls = _idle_reflection_streams(idle, 64)  # every call the gateway serves at once
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            assert err.value.code() == grpc.StatusCode.CANCELLED
        with GatewayClient(gw.address, timeout_s=30) as client:
            assert client.describe().behaviors
