"""Bearer-token authentication and TLS of the gateway's server, over real sockets."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.remote.client import GatewayClient
from gateway.options import ServerOptions
from gateway_helpers import environment_options, running_gateway
from tandem.v1 import gateway_pb2, gateway_pb2_grpc
from tls_certificate import self_signed

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def token_gateway():
    with running_gateway(environment_options(), ServerOptions(listen="127.0.0.1:0", token=TOKEN)) as gw:
        yield gw


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x", ""])
def test_missing_or_wrong_token_is_unauthenticated(token_gateway, token):
    client = GatewayClient(token_gateway.address, token=token)
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.describe()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        session = client.play(timeout_s=10)
        with pytest.raises(grpc.RpcError) as err:
            session.reset()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        client.close()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(token_gateway, scheme):
    with grpc.insecure_channel(token_gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        reply = stub.Describe(
            gateway_pb2.DescribeRequest(), metadata=(("authorization", f"{scheme} {TOKEN}"),), timeout=10
        )
        assert reply.behaviors


def test_right_token_drives_and_health_needs_none(token_gateway):
    with GatewayClient(token_gateway.address, token=TOKEN) as client:
        assert client.describe().behaviors
        session = client.play(timeout_s=30)
        assert session.reset().behaviors
        session.close()
    channel = grpc.insecure_channel(token_gateway.address)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()


def test_tls_with_token(tmp_path):
    cert, key = self_signed(tmp_path)
    server = ServerOptions(listen="127.0.0.1:0", tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    with running_gateway(environment_options(), server) as gw:
        with GatewayClient(gw.address, token=TOKEN, root_certificates=cert.read_bytes()) as client:
            assert client.describe().behaviors
            session = client.play(timeout_s=30)
            assert session.reset().behaviors
            session.close()
        plaintext = GatewayClient(gw.address, token=TOKEN, timeout_s=3)
        try:
            with pytest.raises(grpc.RpcError) as err:
                plaintext.describe()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            plaintext.close()


@pytest.mark.parametrize("order", ["right first", "wrong first"])
def test_two_authorization_headers_are_refused(token_gateway, order):
    """One rule for both services (``common.grpc_server.bearer_token_matches``): neither header wins."""
    pair = [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")]
    with grpc.insecure_channel(token_gateway.address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Describe(
                gateway_pb2.DescribeRequest(),
                metadata=tuple(pair if order == "right first" else reversed(pair)),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
