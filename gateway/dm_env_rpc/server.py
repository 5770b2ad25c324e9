"""The dm_env_rpc server: the shared gRPC set-up (TLS, token, health) on its own port.

Why: dm_env_rpc clients (``dm_env_rpc.v1.connection``) expect the ``Environment`` service
alone on a port; the gateway's ``--tls-cert/--tls-key``, ``--token`` and message limits
apply to it as to ``tandem.v1.Gateway``.
"""

from __future__ import annotations

from dataclasses import replace

from common.grpc_server import GrpcServer, start_grpc_server
from gateway.options import ServerOptions
from gateway.server import grpc_server_options

#: the service name clients check with grpc.health.v1
SERVICE_NAME = "dm_env_rpc.v1.Environment"


def start_dm_env_rpc_server(options: ServerOptions, gateway_servicer, pool) -> GrpcServer:
    """Starts the server on ``options.dm_env_rpc_listen``, serving ``pool``; SERVING at once.

    Raises:
        OSError: the address cannot be bound.
    """
    import grpc
    from dm_env_rpc.v1 import dm_env_rpc_pb2

    from gateway.dm_env_rpc.service import DmEnvRpcServicer, serialize_response

    servicer = DmEnvRpcServicer(gateway_servicer, pool)
    # dm_env_rpc's generated registration, with a serializer that passes the pre-serialized step responses through
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Process": grpc.stream_stream_rpc_method_handler(
                servicer.Process,
                request_deserializer=dm_env_rpc_pb2.EnvironmentRequest.FromString,
                response_serializer=serialize_response,
            )
        },
    )
    shared = replace(
        grpc_server_options(options), listen=options.dm_env_rpc_listen, thread_name_prefix="tandem-dm-env-rpc"
    )
    server = start_grpc_server(
        shared, lambda s: s.add_generic_rpc_handlers((handler,)), (SERVICE_NAME,)
    )
    server.set_serving(True)
    return server
