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
