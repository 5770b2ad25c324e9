"""The Trainer service over real sockets with a real gRPC client."""

from __future__ import annotations

import queue
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from common import specs as specs_mod
from common import tensor
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from test_service_support import (
    BALL,
    GRID,
    GatewayClient,
    LearnerRegistry,
    chunk_message,
    hello_message,
    make_options,
    make_trajectory,
)
from trainer_server.app import TrainingApp
from trainer_server.results import RunResults
from trainer_server.server import start_server
from trainer_server.service import SERVICE_NAME
from tandem.v1 import trainer_pb2


class Harness:
    def __init__(self, tmp_path: Path, *, start_app: bool = True, queue_size: int = 64, token=None,
                 tls=None, **behavior) -> None:
        self.options = make_options(tmp_path / "results", **behavior)
        cs = self.options.checkpoint_settings
        self.results = RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force)
        self.registry = LearnerRegistry()
        self.app = TrainingApp(self.options, self.results, learner_factory=self.registry, queue_size=queue_size)
        cert, key = tls if tls else (None, None)
        self.server = start_server(self.app, "127.0.0.1:0", token=token, tls_cert=cert, tls_key=key)
        if start_app:
            self.app.start()
        self.server.set_serving(True)
        if tls:
            creds = grpc.ssl_channel_credentials(Path(cert).read_bytes())
            self.channel = grpc.secure_channel(
                f"localhost:{self.server.port}", creds
            )
        else:
            self.channel = grpc.insecure_channel(self.server.address)
        self.clients: list[GatewayClient] = []

    def connect(self, metadata=()) -> GatewayClient:
        client = GatewayClient(self.channel, metadata)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.app.stop()
        self.server.stop(1.0)
        self.app.join(10)
        self.channel.close()


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(**kw) -> Harness:
        h = Harness(tmp_path, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _acks(messages) -> list[int]:
    return [m.ack.sequence for m in messages if m.WhichOneof("message") == "ack"]


def _snapshots(messages) -> list[trainer_pb2.PolicySnapshot]:
    return [m.snapshot for m in messages if m.WhichOneof("message") == "snapshot"]


def _handshake(client: GatewayClient, gateway_id: str, *behaviors: BehaviorSpec) -> trainer_pb2.Welcome:
    client.send(hello_message(gateway_id, *behaviors))
    first = client.recv()
    assert first.WhichOneof("message") == "welcome"
    got = {s.behavior for s in _snapshots([client.recv() for _ in behaviors])}
    assert got == {b.name for b in behaviors}
    return first.welcome


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_hello_gets_welcome_then_latest_snapshot_and_health_serving(harness):
    h = harness()
    health = health_pb2_grpc.HealthStub(h.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status == health_pb2.HealthCheckResponse.SERVING
    client = h.connect()
    client.send(hello_message("gw-1", BALL))
    welcome = client.recv()
    assert welcome.welcome.last_accepted_sequence == 0
    assert welcome.welcome.run_id == "test-run"
    snapshot = client.recv().snapshot
    assert snapshot.behavior == BALL.name and snapshot.version == 1 and snapshot.time_horizon == 16
    assert not snapshot.deterministic
    assert snapshot.architecture.behavior_spec.name == BALL.name
    assert snapshot.architecture.hidden_units == 8
    kernel = tensor.from_proto(snapshot.parameters["policy/mu/kernel"])
    assert kernel.shape == (8, 2)


def test_reflection_lists_the_trainer_service(harness):
    h = harness()
    stub = reflection_pb2_grpc.ServerReflectionStub(h.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert SERVICE_NAME in names


def test_health_is_not_serving_until_ready(tmp_path):
    options = make_options(tmp_path / "r")
    results = RunResults.prepare(tmp_path / "r", "test-run", resume=False, force=False)
    app = TrainingApp(options, results, learner_factory=LearnerRegistry())
    server = start_server(app, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.set_serving(True)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0.5)


def test_chunks_are_acked_and_updates_push_snapshots_to_every_gateway(harness):
    h = harness(buffer_size=20)
    a, b = h.connect(), h.connect()
    _handshake(a, "gw-a", BALL)
    _handshake(b, "gw-b", BALL)
    a.send(chunk_message(BALL, 1, [make_trajectory(BALL, 12)]))
    assert _acks(a.recv_until(lambda m: m.HasField("ack"))) == [1]
    a.send(chunk_message(BALL, 2, [make_trajectory(BALL, 12)]))  # 24 steps >= buffer 20: update
    got_a = a.recv_until(lambda m: m.HasField("snapshot"))
    got_b = b.recv_until(lambda m: m.HasField("snapshot"))
    assert _snapshots(got_a)[-1].version == 2
    assert _snapshots(got_b)[-1].version == 2
    assert h.registry.learners[BALL.name].updates == 1
    late = h.connect()  # a gateway joining later starts from the newest snapshot
    late.send(hello_message("gw-late", BALL))
    assert late.recv().HasField("welcome") and late.recv().snapshot.version == 2
    # the pushed parameters are the learner's new ones
    mu = tensor.from_proto(_snapshots(got_b)[-1].parameters["policy/mu/bias"])
    np.testing.assert_allclose(mu, h.registry.learners[BALL.name].params["policy/mu/bias"])


def test_a_reconnecting_gateway_is_told_its_last_sequence_and_resends_are_not_counted(harness):
    h = harness(buffer_size=10_000)
    first = h.connect()
    _handshake(first, "gw-1", BALL)
    for seq in (1, 2, 3):
        first.send(chunk_message(BALL, seq, [make_trajectory(BALL, 5, first_reward=seq)]))
    assert _acks(first.recv_until(lambda m: m.HasField("ack") and m.ack.sequence == 3)) == [1, 2, 3]
    first.cancel()  # the connection drops

    second = h.connect()
    welcome = _handshake(second, "gw-1", BALL)
    assert welcome.last_accepted_sequence == 3
    for seq in (2, 3, 4):  # a gateway that resends too much is still counted once
        second.send(chunk_message(BALL, seq, [make_trajectory(BALL, 5, first_reward=seq)]))
    assert _acks(second.recv_until(lambda m: m.HasField("ack") and m.ack.sequence == 4)) == [2, 3, 4]
    learner = h.registry.learners[BALL.name]
    _wait_for(lambda: len(learner.seen) == 4)
    time.sleep(0.2)
    assert [r for _, _, r in learner.seen] == [1.0, 2.0, 3.0, 4.0]
    assert learner.step == 20
    # another gateway id has its own sequence space
    other = h.connect()
    assert _handshake(other, "gw-2", BALL).last_accepted_sequence == 0


def test_malformed_chunk_is_invalid_argument_and_never_reaches_the_buffer(harness):
    h = harness(buffer_size=10_000)
    good, bad = h.connect(), h.connect()
    _handshake(good, "gw-good", BALL)
    _handshake(bad, "gw-bad", BALL)
    good.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4, first_reward=1.0)]))
    good.recv_until(lambda m: m.HasField("ack"))

    # the second trajectory of the chunk has 7 observation values instead of 8: nothing of the
    # chunk may be applied, not even its valid first trajectory
    message = chunk_message(BALL, 1, [make_trajectory(BALL, 4, first_reward=9.0), make_trajectory(BALL, 4, first_reward=9.0)])
    broken = message.chunk.trajectories[1].observations[0]
    tensor.to_proto(np.zeros((4, 7), np.float32), broken)
    bad.send(message)
    error = bad.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "trajectories[1].observations[0]" in error.details() and "shape" in error.details()

    good.send(chunk_message(BALL, 2, [make_trajectory(BALL, 4, first_reward=2.0)]))
    assert _acks(good.recv_until(lambda m: m.HasField("ack"))) == [2]
    learner = h.registry.learners[BALL.name]
    _wait_for(lambda: len(learner.seen) == 2)
    assert [r for _, _, r in learner.seen] == [1.0, 2.0]
    assert h.app.last_accepted_sequence("gw-bad") == 0


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda c: tensor.to_proto(np.array([np.nan, 0, 0, 0], np.float32), c.trajectories[0].rewards), "NaN"),
        (lambda c: tensor.to_proto(np.zeros((4, 2), np.float64), c.trajectories[0].continuous_actions), "dtype"),
        (lambda c: c.trajectories[0].observations.pop(), "observations"),
        (lambda c: setattr(c, "sequence", 0), "sequence"),
        (lambda c: c.stats.add(key="Custom/x", value=1.0, aggregation="median"), "aggregation"),
    ],
)
def test_bad_chunks_name_the_problem(harness, breakage, expected):
    h = harness()
    client = h.connect()
    _handshake(client, "gw", BALL)
    message = chunk_message(BALL, 1, [make_trajectory(BALL, 4)])
    breakage(message.chunk)
    client.send(message)
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()


def test_chunk_of_a_behavior_not_announced_is_failed_precondition(harness):
    h = harness()
    client = h.connect()
    _handshake(client, "gw", BALL)
    client.send(chunk_message(GRID, 1, [make_trajectory(GRID, 4)]))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Grid?team=0" in error.details() and "announce" in error.details()


def test_spec_mismatch_between_gateways_is_refused_and_the_first_keeps_training(harness):
    h = harness(buffer_size=10_000)
    first = h.connect()
    _handshake(first, "gw-1", BALL)
    # experience makes the first registration hold (before it, a conflicting one replaces it:
    # tests/trainer_server/test_service_hardening.py)
    first.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4)]))
    assert _acks(first.recv_until(lambda m: m.HasField("ack"))) == [1]
    other_ball = BehaviorSpec(
        name=BALL.name, observations=(ObservationSpec(name="VectorSensor", shape=(9,)),), action_spec=ActionSpec(2)
    )
    second = h.connect()
    second.send(hello_message("gw-2", other_ball))
    error = second.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "3DBall?team=0" in error.details() and "[9]" in error.details()
    # announcing it later with new_behavior is refused the same way
    third = h.connect()
    _handshake(third, "gw-3", GRID)
    third.send(trainer_pb2.GatewayMessage(new_behavior=specs_mod.to_proto(other_ball)))
    assert third.wait_end().code() == grpc.StatusCode.FAILED_PRECONDITION

    first.send(chunk_message(BALL, 2, [make_trajectory(BALL, 4)]))
    assert _acks(first.recv_until(lambda m: m.HasField("ack"))) == [2]


def test_new_behavior_mid_stream_gets_a_learner_and_a_snapshot(harness):
    h = harness()
    client = h.connect()
    _handshake(client, "gw", BALL)
    client.send(trainer_pb2.GatewayMessage(new_behavior=specs_mod.to_proto(GRID)))
    snapshot = client.recv().snapshot
    assert snapshot.behavior == GRID.name
    assert snapshot.architecture.behavior_spec.action_spec.discrete_branches == [3, 2]
    assert GRID.name in h.registry.learners
    client.send(chunk_message(GRID, 1, [make_trajectory(GRID, 4)]))
    assert _acks(client.recv_until(lambda m: m.HasField("ack"))) == [1]


def test_first_message_must_be_hello(harness):
    h = harness()
    client = h.connect()
    client.send(chunk_message(BALL, 1, [make_trajectory(BALL, 4)]))
    error = client.wait_end()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "Hello" in error.details()
    client2 = h.connect()
    client2.send(hello_message(""))
    assert client2.wait_end().code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_ack_before_the_chunk_is_taken_in_by_the_learner(harness):
    h = harness(start_app=False, queue_size=1, buffer_size=10_000)
    client = h.connect()
    _handshake(client, "gw", BALL)
    for seq in (1, 2, 3):
        client.send(chunk_message(BALL, seq, [make_trajectory(BALL, 4, first_reward=seq)]))
    # chunk 1 is queued, 2 waits for room, 3 behind it: the training thread is not running, so
    # nothing is in a learner, and nothing is acknowledged
    with pytest.raises(queue.Empty):
        client.recv(timeout=0.5)
    assert h.app.last_queued_sequence("gw") == 1 and h.app.last_accepted_sequence("gw") == 0
    h.app.start()
    assert _acks(client.recv_until(lambda m: m.HasField("ack") and m.ack.sequence == 3)) == [1, 2, 3]
    assert h.registry.learners[BALL.name].step == 12


def test_streams_end_ok_when_every_behavior_reached_max_steps(harness):
    h = harness(max_steps=20, buffer_size=10)
    client = h.connect()
    _handshake(client, "gw", BALL)
    client.send(chunk_message(BALL, 1, [make_trajectory(BALL, 10), make_trajectory(BALL, 10)]))
    assert client.wait_end(10) is None  # ended with OK
    assert h.app.completed and h.app.finished.is_set()
    received = []
    while not client._responses.empty():
        received.append(client.recv())
    finished = [m.finished for m in received if m.HasField("finished")]
    assert len(finished) == 1 and finished[0].run_id == h.app.run_id and "max_steps" in finished[0].reason
    assert client.grants[-1].finished and client.grants[-1].behavior == BALL.name
    assert h.registry.learners[BALL.name].step == 20


def test_bearer_token_required(harness):
    h = harness(token="s3cret")
    health = health_pb2_grpc.HealthStub(h.channel)  # probes need no token
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    anonymous = h.connect()
    anonymous.send(hello_message("gw", BALL))
    assert anonymous.wait_end().code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = h.connect(metadata=(("authorization", "Bearer nope"),))
    wrong.send(hello_message("gw", BALL))
    assert wrong.wait_end().code() == grpc.StatusCode.UNAUTHENTICATED
    good = h.connect(metadata=(("authorization", "Bearer s3cret"),))
    _handshake(good, "gw", BALL)


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(harness, scheme):
    h = harness(token="s3cret")
    _handshake(h.connect(metadata=(("authorization", f"{scheme} s3cret"),)), "gw", BALL)


def test_tls(harness, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl cannot make a test certificate: {made.stderr.decode()[:200]}")
    h = harness(tls=(str(cert), str(key)))
    _handshake(h.connect(), "gw", BALL)
    with grpc.insecure_channel(h.server.address) as plain:  # plaintext to a TLS port fails
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
