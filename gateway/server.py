"""gRPC server set-up: TLS, bearer-token auth, health, reflection, sizes, keepalive.

Why: these are the same for every gateway and are easy to get subtly wrong, so they
live in one place apart from the servicer. The server listens on 127.0.0.1 unless
told otherwise; across machines, ``--token`` keeps others from driving the
environments and ``--tls-cert/--tls-key`` keeps the token and data private.
"""

from __future__ import annotations

import hmac
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.logging import get_logger
from gateway.options import ServerOptions
from tandem.v1 import gateway_pb2, gateway_pb2_grpc

#: the service name clients check with grpc.health.v1 (the empty name is the whole server)
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name
#: methods reachable without the token: health checks carry no data and load balancers need them
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def channel_options(max_message_bytes: int, keepalive_s: float) -> list[tuple[str, int]]:
    """Message-size and keepalive options shared by servers and clients."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls whose ``authorization`` metadata is not ``Bearer <token>`` (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"bearer {token}".encode()
        self.log = get_logger("gateway.auth")

    def _authorized(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("utf-8", "replace")
                scheme, _, credential = text.partition(" ")
                given = f"{scheme.lower()} {credential.strip()}".encode()
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_UNAUTHENTICATED_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        self.log.warning("call rejected: missing or wrong bearer token", method=method)
        message = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        def deny_stream(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - makes this a generator, as streaming handlers must be

        kinds = (handler.request_streaming, handler.response_streaming)
        if kinds == (False, False):
            return grpc.unary_unary_rpc_method_handler(deny)
        if kinds == (False, True):
            return grpc.unary_stream_rpc_method_handler(deny_stream)
        if kinds == (True, False):
            return grpc.stream_unary_rpc_method_handler(deny)
        return grpc.stream_stream_rpc_method_handler(deny_stream)


@dataclass
class ServerHandle:
    """A started gRPC server.

    Attributes:
        server: the grpc server.
        port: the port it is bound to (useful when the options said port 0).
        address: ``host:port`` it listens on.
        health: the health servicer (NOT_SERVING until ``set_serving``).
    """

    server: grpc.Server
    port: int
    address: str
    health: health.HealthServicer

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def stop(self, grace_s: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait(grace_s + 1)


def start_server(options: ServerOptions, servicer: gateway_pb2_grpc.GatewayServicer) -> ServerHandle:
    """Builds, binds and starts the server; health says NOT_SERVING until ``set_serving(True)``.

    Raises:
        OSError: when the address cannot be bound or the TLS files cannot be read.
    """
    interceptors = [BearerTokenInterceptor(options.token)] if options.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="tandem-gateway-rpc"),
        interceptors=interceptors,
        options=channel_options(options.max_message_bytes, options.keepalive_s)
        + [
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=64,
    )
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    try:
        if options.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(options.tls_key).read_bytes(), Path(options.tls_cert).read_bytes())]
            )
            port = server.add_secure_port(options.listen, credentials)
        else:
            port = server.add_insecure_port(options.listen)
    except RuntimeError as e:  # grpc raises RuntimeError when the port is taken
        raise OSError(f"--listen: cannot bind {options.listen}: {e}") from e
    if not port:
        raise OSError(f"--listen: cannot bind {options.listen}")
    host = options.listen.rpartition(":")[0]
    handle = ServerHandle(server=server, port=port, address=f"{host}:{port}", health=health_servicer)
    handle.set_serving(False)
    server.start()
    return handle
