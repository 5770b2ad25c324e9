"""The shared gRPC server set-up over real sockets: port 0, real channels, real TLS."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common.grpc_server import GrpcServer, GrpcServerOptions, bearer_token_matches, channel_options, start_grpc_server
from tls_certificate import self_signed

SERVICE = "test.Echo"
TOKEN = "s3cret"
#: the four kinds of method, by (request streaming, response streaming)
KINDS = {
    "Unary": (False, False),
    "ServerStream": (False, True),
    "ClientStream": (True, False),
    "BothStream": (True, True),
}


class _Echo:
    """Raw-bytes echo methods of every kind; ``BothStream`` sets ``entered`` and then holds
    each reply until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def handler(self) -> grpc.GenericRpcHandler:
        def both(requests, _context):
            self.entered.set()
            for request in requests:
                self.release.wait(10)
                yield request

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(lambda request, _context: request),
                "ServerStream": grpc.unary_stream_rpc_method_handler(lambda request, _context: iter([request])),
                "ClientStream": grpc.stream_unary_rpc_method_handler(lambda requests, _context: b"".join(requests)),
                "BothStream": grpc.stream_stream_rpc_method_handler(both),
            },
        )


def _start(echo: _Echo | None = None, on_stop=None, **options) -> GrpcServer:
    echo = echo or _Echo()
    settings = GrpcServerOptions(**{"listen": "127.0.0.1:0", "max_message_bytes": 1 << 20, **options})
    return start_grpc_server(settings, lambda s: s.add_generic_rpc_handlers((echo.handler(),)), (SERVICE,), on_stop)


def _call(channel: grpc.Channel, method: str, payload: bytes = b"hi", metadata=()) -> bytes:
    """Calls ``method`` of the echo service (any kind) and returns the joined reply."""
    path = f"/{SERVICE}/{method}"
    request_streaming, response_streaming = KINDS[method]
    if request_streaming and response_streaming:
        call = channel.stream_stream(path)(iter([payload]), metadata=metadata, timeout=10)
    elif request_streaming:
        return channel.stream_unary(path)(iter([payload]), metadata=metadata, timeout=10)
    elif response_streaming:
        call = channel.unary_stream(path)(payload, metadata=metadata, timeout=10)
    else:
        return channel.unary_unary(path)(payload, metadata=metadata, timeout=10)
    return b"".join(call)


def _health(channel: grpc.Channel, service: str = "") -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


@pytest.fixture
def server():
    running = _start()
    yield running
    running.stop(0)


@pytest.fixture
def token_server():
    running = _start(token=TOKEN)
    yield running
    running.stop(0)


def test_port_zero_binds_a_free_port_and_serves_every_kind_of_call(server):
    assert server.port > 0 and server.address == f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(server.address) as channel:
        for method in KINDS:
            assert _call(channel, method) == b"hi"


def test_health_is_not_serving_until_the_caller_says_so(server):
    with grpc.insecure_channel(server.address) as channel:
        for name in ("", SERVICE):
            assert _health(channel, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        for name in ("", SERVICE):
            assert _health(channel, name) == health_pb2.HealthCheckResponse.SERVING
        server.set_serving(False)
        assert _health(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_given_services_health_and_reflection(server):
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(replies).list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.mark.parametrize("method", list(KINDS))
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}"])
def test_a_missing_or_wrong_token_is_unauthenticated_for_every_kind_of_call(token_server, method, authorization):
    metadata = (("authorization", authorization),) if authorization else ()
    with grpc.insecure_channel(token_server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, method, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in err.value.details()


@pytest.mark.parametrize("method", list(KINDS))
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_right_token_passes_whatever_the_case_of_the_scheme(token_server, method, scheme):
    with grpc.insecure_channel(token_server.address) as channel:
        assert _call(channel, method, metadata=(("authorization", f"{scheme} {TOKEN}"),)) == b"hi"


def test_health_checks_need_no_token(token_server):
    token_server.set_serving(True)
    with grpc.insecure_channel(token_server.address) as channel:
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_tls_serves_encrypted_calls_and_refuses_plaintext(tmp_path):
    cert, key = self_signed(tmp_path)
    running = _start(tls_cert=str(cert), tls_key=str(key), token=TOKEN)
    try:
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", credentials) as channel:
            assert _call(channel, "BothStream", metadata=(("authorization", f"Bearer {TOKEN}"),)) == b"hi"
        with grpc.insecure_channel(running.address) as plain:
            with pytest.raises(grpc.RpcError) as err:
                _health(plain)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key"])
def test_an_unreadable_tls_file_is_an_error_naming_the_file(tmp_path, missing):
    cert, key = self_signed(tmp_path)
    files = {"tls_cert": str(cert), "tls_key": str(key), missing: str(tmp_path / "absent.pem")}
    with pytest.raises(OSError) as err:
        _start(**files)
    assert str(tmp_path / "absent.pem") in str(err.value)
    assert "--" + missing.replace("_", "-") in str(err.value)


def test_a_taken_port_is_an_error_naming_the_address(server):
    with pytest.raises(OSError, match=f"--listen: cannot bind {server.address}"):
        _start(listen=server.address)


@pytest.mark.parametrize(
    "options",
    [
        {"tls_cert": "cert.pem"},
        {"tls_key": "key.pem"},
        {"token": " "},
        {"max_message_bytes": 0},
        {"keepalive_s": 0},
        {"max_workers": 0},
        {"max_concurrent_rpcs": 0},
        {"max_workers": 4, "max_concurrent_rpcs": 8},
        {"first_message_timeout_s": 0},
    ],
)
def test_options_that_cannot_work_are_refused(options):
    with pytest.raises(ValueError):
        GrpcServerOptions(**{"listen": "127.0.0.1:0", "max_message_bytes": 1024, **options})


def test_messages_over_the_limit_are_refused():
    running = _start(max_message_bytes=1024)
    try:
        with grpc.insecure_channel(running.address, options=channel_options(1 << 20, 30.0)) as channel:
            assert _call(channel, "Unary", b"x" * 1000) == b"x" * 1000
            with pytest.raises(grpc.RpcError) as err:
                _call(channel, "Unary", b"x" * 2048)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(0)


def test_calls_beyond_max_concurrent_rpcs_are_refused():
    echo = _Echo()
    running = _start(echo, max_concurrent_rpcs=1)
    echo.release.clear()
    try:
        with grpc.insecure_channel(running.address) as channel:
            held = channel.stream_stream(f"/{SERVICE}/BothStream")(iter([b"held"]), timeout=10)
            assert echo.entered.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                _call(channel, "Unary")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            echo.release.set()
            assert list(held) == [b"held"]
    finally:
        echo.release.set()
        running.stop(0)


def test_channel_options_carry_the_limits_and_keepalive():
    options = dict(channel_options(4096, 2.5, 7.0))
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 4096
    assert options["grpc.keepalive_time_ms"] == 2500
    assert options["grpc.keepalive_timeout_ms"] == 7000
    assert options["grpc.keepalive_permit_without_calls"] == 1


def test_stop_says_not_serving_first_then_calls_on_stop_then_stops():
    seen: list[int] = []
    channel_box: list[grpc.Channel] = []

    def on_stop() -> None:  # the server still answers here: health must already say NOT_SERVING
        seen.append(_health(channel_box[0]))

    running = _start(on_stop=on_stop)
    running.set_serving(True)
    with grpc.insecure_channel(running.address) as channel:
        channel_box.append(channel)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        running.stop(1.0)
        assert seen == [health_pb2.HealthCheckResponse.NOT_SERVING]
        running.set_serving(True)  # ignored after stop: a stopping server never says SERVING again
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, "Unary")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def _idle_streams(channel: grpc.Channel, method: str, count: int) -> list:
    """``count`` open streams of ``method`` whose request iterators never yield (idle peers)."""
    never = threading.Event()

    def nothing():
        never.wait()
        yield b""  # pragma: no cover - never reached

    calls = [channel.stream_stream(f"/{SERVICE}/{method}")(nothing(), timeout=120) for _ in range(count)]
    return calls


def test_idle_streams_cannot_starve_real_calls_and_are_cancelled_without_a_first_message():
    """Idle streams (no first message) each get a thread, real calls go on beside them, and the
    idle ones are cancelled at the first-message deadline, freeing their threads."""
    running = _start(max_workers=8, first_message_timeout_s=2.0)
    try:
        with grpc.insecure_channel(running.address) as idle, grpc.insecure_channel(running.address) as real:
            calls = _idle_streams(idle, "BothStream", 6)
            for method in KINDS:  # 6 of 8 threads held: the real peer is served at once
                assert _call(real, method) == b"hi"
            for call in calls:  # then the idle streams end, CANCELLED by the server
                with pytest.raises(grpc.RpcError) as err:
                    list(call)
                assert err.value.code() == grpc.StatusCode.CANCELLED
            for method in KINDS:
                assert _call(real, method) == b"hi"
    finally:
        running.stop(0)


def test_calls_beyond_the_threads_are_refused_at_once_until_idle_streams_expire():
    """With every thread held by idle streams, a call is refused (RESOURCE_EXHAUSTED), never
    queued unseen; once the deadline frees the threads, calls are served again."""
    running = _start(max_workers=4, first_message_timeout_s=3.0)
    try:
        with grpc.insecure_channel(running.address) as idle, grpc.insecure_channel(running.address) as real:
            calls = _idle_streams(idle, "BothStream", 4)
            with pytest.raises(grpc.RpcError) as err:
                _call(real, "Unary")
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in calls:
                with pytest.raises(grpc.RpcError):
                    list(call)
            assert _call(real, "Unary") == b"hi"
    finally:
        running.stop(0)


def test_a_stream_that_sent_its_first_message_is_not_cancelled():
    """Held past the deadline (the handler waits on ``release`` after the first message): the
    deadline was cancelled by that message, the stream ends normally."""
    echo = _Echo()
    running = _start(echo, first_message_timeout_s=1.0)
    echo.release.clear()
    try:
        with grpc.insecure_channel(running.address) as channel:
            held = channel.stream_stream(f"/{SERVICE}/BothStream")(iter([b"a", b"b"]), timeout=30)
            assert echo.entered.wait(10)
            threading.Event().wait(2.0)  # past the deadline: the property under test is about time
            echo.release.set()
            assert list(held) == [b"a", b"b"]
    finally:
        echo.release.set()
        running.stop(0)


@pytest.mark.parametrize(
    "metadata, expected",
    [
        ((("authorization", f"Bearer {TOKEN}"),), True),
        ((("authorization", f"bEaReR {TOKEN}"),), True),
        ((("authorization", f"  Bearer   {TOKEN} "),), True),
        ((("authorization", f"Bearer {TOKEN}".encode()),), True),
        ((("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")), False),
        ((("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")), False),
        ((("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")), False),
        ((("authorization", f"Basic {TOKEN}"),), False),
        ((), False),
        (None, False),
    ],
)
def test_the_bearer_rule_both_servers_share(metadata, expected):
    assert bearer_token_matches(metadata, TOKEN) is expected


@pytest.mark.parametrize("order", ["right first", "wrong first"])
def test_two_authorization_headers_are_refused_whichever_comes_first(token_server, order):
    pair = [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")]
    metadata = tuple(pair if order == "right first" else reversed(pair))
    with grpc.insecure_channel(token_server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _call(channel, "Unary", metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
