"""The gateway's gRPC server: the shared set-up with the gateway's service and limits.

Why: TLS, bearer-token auth, health, reflection and keepalive are the same for both
services (``common.grpc_server``); what is the gateway's own is its servicer, the
limits from its options (``--listen``, ``--max-message-mb``, ...) and a bounded
number of concurrent calls. The server listens on 127.0.0.1 unless told otherwise;
across machines, ``--token`` keeps others from driving the environments and
``--tls-cert/--tls-key`` keeps the token and data private.
"""

from __future__ import annotations

from common.grpc_server import GrpcServer, GrpcServerOptions, start_grpc_server
from gateway.options import ServerOptions
from tandem.v1 import gateway_pb2, gateway_pb2_grpc

#: the service name clients check with grpc.health.v1 (the empty name is the whole server)
SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name


def grpc_server_options(options: ServerOptions) -> GrpcServerOptions:
    """The shared server options for the gateway's ``ServerOptions``.

    A gateway serves few clients: at most 64 calls at once, each with its own handler
    thread at once (threads start on demand), so that a few idle streams cannot make
    Describe or Play wait; a stream without a first message within
    ``first_message_timeout_s`` is cancelled; a connection whose keepalive ping goes
    unanswered for 20 s is dropped.
    """
    return GrpcServerOptions(
        listen=options.listen,
        max_message_bytes=options.max_message_bytes,
        tls_cert=options.tls_cert,
        tls_key=options.tls_key,
        token=options.token,
        keepalive_s=options.keepalive_s,
        keepalive_timeout_s=20.0,
        max_workers=64,
        max_concurrent_rpcs=64,
        thread_name_prefix="tandem-gateway-rpc",
        first_message_timeout_s=options.first_message_timeout_s,
    )


def start_server(options: ServerOptions, servicer: gateway_pb2_grpc.GatewayServicer) -> GrpcServer:
    """Builds, binds and starts the server; health says NOT_SERVING until ``set_serving(True)``.

    Raises:
        OSError: when the address cannot be bound or the TLS files cannot be read.
    """
    return start_grpc_server(
        grpc_server_options(options),
        lambda server: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server),
        (SERVICE_NAME,),
    )
