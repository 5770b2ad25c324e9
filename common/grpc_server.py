"""The gRPC server set-up both services share: TLS, bearer token, health, reflection, limits.

Why: the gateway and the trainer expose their service the same way (``127.0.0.1`` unless
told otherwise, health checks that say NOT_SERVING until the service is ready,
reflection, optional TLS and ``authorization: Bearer <token>``, large message limits,
keepalive, graceful stop). These details are easy to get subtly wrong twice, so they
live here once; each service only says which servicer it adds and which limits it uses.

Errors name the command-line flag both services use for the value (``--listen``,
``--tls-cert``, ``--tls-key``), so a user sees at once what to change.

Idle peers cannot starve real ones: every accepted call gets a handler thread at once
(``max_workers`` is never below ``max_concurrent_rpcs``; calls beyond that limit are
refused with RESOURCE_EXHAUSTED instead of waiting unseen in a queue), and a stream
whose client sends no first message within ``first_message_timeout_s`` is cancelled,
so that a peer opening streams and saying nothing holds threads for seconds, not forever.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.logging import get_logger

#: methods reachable without the token: health checks carry no data and load balancers need them
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_DENIED = "missing or wrong bearer token (metadata 'authorization: Bearer <token>')"
#: default wait for a stream's first message before the stream is cancelled
FIRST_MESSAGE_TIMEOUT_S = 20.0

_log = get_logger("common.grpc_server")


def channel_options(
    max_message_bytes: int, keepalive_s: float, keepalive_timeout_s: float = 20.0
) -> list[tuple[str, int]]:
    """Message-size and keepalive options shared by servers and clients.

    Args:
        max_message_bytes: largest message, both directions.
        keepalive_s: interval of HTTP/2 keepalive pings.
        keepalive_timeout_s: how long a ping may go unanswered before the connection is dropped.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class GrpcServerOptions:
    """How a service's gRPC server listens, authenticates and limits its calls.

    Attributes:
        listen: ``host:port``; port 0 picks a free port (see ``GrpcServer.port``).
        max_message_bytes: largest message, both directions (visual observations are big).
        tls_cert: PEM certificate chain file; with ``tls_key``, the server speaks TLS.
        tls_key: PEM private key file.
        token: when set, every call but health checks needs ``authorization: Bearer <token>``.
        keepalive_s: interval of HTTP/2 keepalive pings to clients.
        keepalive_timeout_s: how long a ping may go unanswered before the connection is dropped.
        max_workers: handler threads (a bidirectional stream holds one for its whole life).
        max_concurrent_rpcs: calls beyond this are refused with RESOURCE_EXHAUSTED; None =
            ``max_workers`` (a call beyond the threads would otherwise wait in a queue, unseen,
            behind idle streams).
        thread_name_prefix: names the handler threads in stack dumps and profiles.
        first_message_timeout_s: a client-streaming call whose first message does not arrive
            within this many seconds is cancelled (CANCELLED; logged with the peer), which
            frees its handler thread; None = wait forever.

    Raises:
        ValueError: only one of ``tls_cert``/``tls_key``, an empty token, or a limit that
            cannot work.
    """

    listen: str
    max_message_bytes: int
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 20.0
    max_workers: int = 16
    max_concurrent_rpcs: int | None = None
    thread_name_prefix: str = "grpc-server"
    first_message_timeout_s: float | None = FIRST_MESSAGE_TIMEOUT_S

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key must be given together")
        if self.token is not None and not self.token.strip():
            raise ValueError("the bearer token must not be empty")
        if self.max_message_bytes < 1 or self.keepalive_s <= 0 or self.keepalive_timeout_s <= 0:
            raise ValueError("message size and keepalive times must be positive")
        if self.max_workers < 1 or (self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1):
            raise ValueError("max_workers and max_concurrent_rpcs must be >= 1")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs > self.max_workers:
            raise ValueError(
                f"max_concurrent_rpcs ({self.max_concurrent_rpcs}) must not exceed max_workers ({self.max_workers}): "
                "calls beyond the handler threads would wait unseen behind idle streams"
            )
        if self.first_message_timeout_s is not None and not self.first_message_timeout_s > 0:
            raise ValueError(f"first_message_timeout_s must be positive or None, got {self.first_message_timeout_s}")

    @property
    def concurrent_rpcs(self) -> int:
        """The calls served at once: ``max_concurrent_rpcs``, or one per handler thread."""
        return self.max_concurrent_rpcs if self.max_concurrent_rpcs is not None else self.max_workers


def bearer_token_matches(metadata, token: str) -> bool:
    """Whether call metadata carries ``authorization: Bearer <token>``: the one rule of both servers.

    The scheme is case-insensitive (RFC 6750 section 2.1, via RFC 7235: ``bearer`` and
    ``BEARER`` work), surrounding white space is ignored, and the token is compared in
    constant time. A call with two or more ``authorization`` entries is refused whatever
    they hold: which one a proxy or library keeps differs, so neither may win.

    Args:
        metadata: ``(key, value)`` pairs of the call (values ``str`` or ``bytes``), or None.
        token: the expected token (not empty).

    Returns:
        True only for exactly one ``authorization`` entry with the right scheme and token.
    """
    found = [value for key, value in metadata or () if key.lower() == "authorization"]
    if len(found) != 1:
        return False
    value = found[0]
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    scheme, _, credential = text.strip().partition(" ")
    given = f"{scheme.lower()} {credential.strip()}".encode()
    return hmac.compare_digest(given, f"bearer {token}".encode())


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata is not ``Bearer <token>`` (UNAUTHENTICATED).

    The rule is :func:`bearer_token_matches`. Health checks pass without a token.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def _authorized(self, metadata) -> bool:
        return bearer_token_matches(metadata, self._token)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_UNAUTHENTICATED_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return None
        _log.warning("call rejected: missing or wrong bearer token", method=method)
        return _denying_handler(handler.request_streaming, handler.response_streaming)


def _denying_handler(request_streaming: bool, response_streaming: bool) -> grpc.RpcMethodHandler:
    """A handler of the same kind as the refused one that aborts with UNAUTHENTICATED."""

    def deny(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

    def deny_stream(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)
        yield  # pragma: no cover - makes this a generator, as streaming handlers must be

    if request_streaming:
        if response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream)
        return grpc.stream_unary_rpc_method_handler(deny)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_stream)
    return grpc.unary_unary_rpc_method_handler(deny)


class _Deadlines:
    """Calls a function at a time, unless cancelled before: one thread for every stream.

    Why: a thread (``threading.Timer``) per stream would be one more thread per idle peer,
    the very thing the first-message deadline bounds. The thread runs only while some
    deadline is pending (servers come and go in tests and tools).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._running = False

    def at(self, when: float, call: Callable[[], None]) -> int:
        """Schedules ``call`` at ``when`` (``time.monotonic()``); returns an id for ``cancel``."""
        with self._wake:
            key = next(self._ids)
            heapq.heappush(self._heap, (when, key, call))
            self._pending.add(key)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
            self._wake.notify()
            return key

    def cancel(self, key: int) -> None:
        with self._wake:
            self._pending.discard(key)

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._heap and self._heap[0][1] not in self._pending:
                    heapq.heappop(self._heap)  # cancelled
                if not self._heap:
                    self._running = False
                    return
                when, key, call = self._heap[0]
                if when > time.monotonic():
                    self._wake.wait(when - time.monotonic())
                    continue
                heapq.heappop(self._heap)
                self._pending.discard(key)
            try:
                call()
            except Exception as e:  # a failing callback must not end the watcher
                _log.warning("deadline callback failed", error=repr(e))


class FirstMessageDeadlineInterceptor(grpc.ServerInterceptor):
    """Cancels a client-streaming call whose first message does not arrive in time.

    Why: a streaming handler blocks a thread while it waits for the client's next
    message, and nothing else bounds how long a client may open a stream and say
    nothing (a trainer's ``Connect`` before its Hello, an idle reflection stream).

    Args:
        timeout_s: seconds from the start of the handler to the first message.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._deadlines = _Deadlines("grpc-first-message-deadlines")

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler.request_streaming:
            return handler
        method = handler_call_details.method
        behavior = handler.stream_stream or handler.stream_unary
        guarded = self._guard(behavior, method)
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                guarded, handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(guarded, handler.request_deserializer, handler.response_serializer)

    def _guard(self, behavior, method: str):
        timeout_s = self._timeout_s

        def expire(context, received: threading.Event) -> None:
            if not received.is_set() and context.is_active():
                _log.warning(
                    "stream cancelled: no first message in time", method=method, peer=context.peer(), timeout_s=timeout_s
                )
                context.cancel()

        def guarded(request_iterator, context):
            received = threading.Event()
            key = self._deadlines.at(time.monotonic() + timeout_s, lambda: expire(context, received))
            context.add_callback(lambda: self._deadlines.cancel(key))

            def requests():
                for request in request_iterator:
                    if not received.is_set():
                        received.set()
                        self._deadlines.cancel(key)
                    yield request

            return behavior(requests(), context)

        return guarded


@dataclass(frozen=True)
class GrpcServer:
    """A started gRPC server.

    Attributes:
        server: the grpc server.
        port: the port it is bound to (useful when the options said port 0).
        address: ``host:port`` it listens on.
        health: the health servicer (NOT_SERVING until ``set_serving(True)``).
        service_names: the full names of the services added, reported by health and reflection.
        on_stop: called by ``stop`` after health says NOT_SERVING and before the server
            stops (e.g. to end long-lived streams with OK instead of CANCELLED).
    """

    server: grpc.Server
    port: int
    address: str
    health: health.HealthServicer
    service_names: tuple[str, ...]
    on_stop: Callable[[], None] | None = None

    def set_serving(self, serving: bool) -> None:
        """Health SERVING (ready for calls) or NOT_SERVING, for the server and each service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace_s: float = 5.0) -> None:
        """Health NOT_SERVING for good, ``on_stop``, then the server stops within ``grace_s``."""
        self.health.enter_graceful_shutdown()
        if self.on_stop is not None:
            self.on_stop()
        self.server.stop(grace_s).wait(grace_s + 1.0)


def _read_pem(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise OSError(f"{flag}: cannot read {path}: {e.strerror or e}") from e


def _bind(server: grpc.Server, options: GrpcServerOptions) -> int:
    """Binds ``options.listen`` (with TLS when configured); returns the bound port."""
    try:
        if options.tls_cert:
            key, cert = _read_pem("--tls-key", options.tls_key), _read_pem("--tls-cert", options.tls_cert)
            port = server.add_secure_port(options.listen, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(options.listen)
    except RuntimeError as e:  # grpc raises RuntimeError when the port is taken
        raise OSError(f"--listen: cannot bind {options.listen}: {e}") from e
    if not port:
        raise OSError(f"--listen: cannot bind {options.listen}")
    return port


def start_grpc_server(
    options: GrpcServerOptions,
    add_services: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    on_stop: Callable[[], None] | None = None,
) -> GrpcServer:
    """Builds, binds and starts a server; health says NOT_SERVING until ``set_serving(True)``.

    Args:
        options: where to listen and with which limits.
        add_services: adds the service's servicers to the server (``add_XServicer_to_server``).
        service_names: the full names of those services, for health and reflection.
        on_stop: see ``GrpcServer.on_stop``.

    Raises:
        OSError: the address cannot be bound or a TLS file cannot be read (the message
            names the flag and the file).
    """
    names = tuple(service_names)
    interceptors: list[grpc.ServerInterceptor] = []
    if options.token:
        interceptors.append(BearerTokenInterceptor(options.token))
    if options.first_message_timeout_s is not None:
        interceptors.append(FirstMessageDeadlineInterceptor(options.first_message_timeout_s))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix=options.thread_name_prefix),
        interceptors=interceptors,
        options=channel_options(options.max_message_bytes, options.keepalive_s, options.keepalive_timeout_s)
        + [("grpc.http2.min_ping_interval_without_data_ms", 5_000), ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=options.concurrent_rpcs,
    )
    add_services(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*names, _HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    port = _bind(server, options)
    host = options.listen.rpartition(":")[0]
    running = GrpcServer(server, port, f"{host}:{port}", health_servicer, names, on_stop)
    running.set_serving(False)
    server.start()
    return running
