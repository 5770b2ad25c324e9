"""The trainer's gRPC server: the shared set-up with the Trainer service and its limits.

Why: TLS, bearer-token auth, health, reflection and keepalive are the same for both
services (``common.grpc_server``); what is the trainer's own is its servicer (which
ends the gateways' streams with OK when the server stops), larger messages (a chunk
of visual experience) and enough handler threads for many gateways. Health says
SERVING only while the trainer accepts experience (the caller's ``set_serving``).
"""

from __future__ import annotations

from common.grpc_server import GrpcServer, GrpcServerOptions, start_grpc_server
from common.logging import get_logger
from trainer_server.app import TrainingApp
from trainer_server.server_settings import DEFAULT_HELLO_TIMEOUT_S
from trainer_server.service import SERVICE_NAME, TrainerService
from tandem.v1 import trainer_pb2_grpc

#: largest message, both directions: an experience chunk with visual observations is big
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
#: keepalive pings every 30 s; a connection whose ping goes unanswered for 10 s is dropped
KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0

_log = get_logger("trainer_server.server")


def start_server(
    app: TrainingApp,
    listen: str = "127.0.0.1:5755",
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token: str | None = None,
    max_workers: int = 64,
    hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S,
) -> GrpcServer:
    """Starts the Trainer service (health NOT_SERVING until ``set_serving(True)``).

    ``stop`` on the result ends every gateway stream with OK before the server stops.

    Args:
        app: the training app the service feeds.
        listen: ``host:port``; port 0 picks a free port (see ``GrpcServer.port``).
        tls_cert: PEM certificate chain file; with ``tls_key``, the server speaks TLS.
        tls_key: PEM private key file.
        token: when set, every call but health checks needs ``authorization: Bearer <token>``.
        max_workers: handler threads (each gateway stream uses two).
        hello_timeout_s: a Connect stream without Hello this long is ended (DEADLINE_EXCEEDED).

    Raises:
        ValueError: only one of ``tls_cert``/``tls_key``.
        OSError: the address cannot be bound or a TLS file cannot be read.
    """
    options = GrpcServerOptions(
        listen=listen,
        max_message_bytes=MAX_MESSAGE_BYTES,
        tls_cert=tls_cert,
        tls_key=tls_key,
        token=token or None,  # an empty token means no authentication, as it always has here
        keepalive_s=KEEPALIVE_S,
        keepalive_timeout_s=KEEPALIVE_TIMEOUT_S,
        max_workers=max_workers,
        thread_name_prefix="trainer-grpc",
    )
    service = TrainerService(app, hello_timeout_s=hello_timeout_s)
    running = start_grpc_server(
        options,
        lambda server: trainer_pb2_grpc.add_TrainerServicer_to_server(service, server),
        (SERVICE_NAME,),
        on_stop=service.shutdown,
    )
    _log.info("trainer listening", address=running.address, tls=bool(tls_cert), token=bool(token))
    return running
