"""The ``tandem.v1.Trainer`` gRPC service and the server around it.

Why: gateways connect here (one stream each, ``Trainer.Connect``), stream experience
in and receive policy snapshots. This module only translates between messages and
``trainer_server.app.TrainingApp`` and maps refusals to gRPC status codes:

* the first message must be ``Hello`` (else FAILED_PRECONDITION); the answer is
  ``Welcome`` with the last chunk sequence accepted from that ``gateway_id`` (so a
  reconnecting gateway resends only what is missing), then the latest snapshot of
  each announced behavior;
* a chunk is decoded and validated as a whole before any of it is queued: wrong
  shapes, dtypes or values are INVALID_ARGUMENT; a behavior the gateway did not
  announce, or a spec that differs from the one another gateway registered under the
  same name, is FAILED_PRECONDITION. The stream ends with that status; nothing of the
  bad chunk reaches a learner, so other gateways' experience is unaffected;
* every chunk is acked once the training thread has taken it into the learner (a resend
  of a chunk already taken in is acked at once); every new snapshot is pushed to every
  connected gateway that announced its behavior (only the newest one per behavior is kept
  for a slow gateway);
* flow control: each connection is a ``trainer_server.collection.Collector``; the grants
  the app's ``CollectionControl`` makes are sent after the snapshots queued before them;
* when the run has environment parameters (``trainer_server.environment_parameters``),
  they follow ``Welcome`` before any snapshot, and every lesson change is pushed to
  every connected gateway (only the newest values are kept for a slow gateway; a
  pending ``reset`` is kept when newer values replace it);
* when training completes every stream gets ``TrainingFinished``, then ends with OK.

The server around it (TLS, bearer token, health, reflection, limits) is
``trainer_server.server.start_server``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator

import grpc

from common import specs as specs_mod
from common import trajectory as trajectory_mod
from common.logging import get_logger
from common.tensor import TensorError
from trainer_server.app import ExperienceError, TrainerStoppingError, TrainingApp
from trainer_server.collection import Grant
from tandem.v1 import trainer_pb2, trainer_pb2_grpc

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name

_log = get_logger("trainer_server.service")


class _StreamError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Connection:
    """One gateway's stream: what to send it next, filled from the reader thread and the
    training thread, drained by the response generator."""

    def __init__(self, gateway_id: str, peer: str, weight: int = 1) -> None:
        self.gateway_id = gateway_id
        self.peer = peer
        self.weight = max(1, weight)
        self.announced: set[str] = set()
        self._cond = threading.Condition()
        self._acks: list[int] = []
        self._snapshots: OrderedDict[str, trainer_pb2.PolicySnapshot] = OrderedDict()
        self._grants: list[trainer_pb2.CollectionGrant] = []
        self._parameters: trainer_pb2.EnvironmentParameters | None = None
        self.error: _StreamError | None = None
        self.reader_done = False
        self.closed = False

    def announce(self, behavior: str) -> None:
        """From now on, this gateway receives ``behavior``'s snapshots."""
        with self._cond:
            self.announced.add(behavior)

    def push_snapshot(self, snapshot: trainer_pb2.PolicySnapshot) -> None:
        with self._cond:
            if snapshot.behavior not in self.announced:
                return
            current = self._snapshots.get(snapshot.behavior)
            if current is None or current.version <= snapshot.version:
                self._snapshots[snapshot.behavior] = snapshot
                self._snapshots.move_to_end(snapshot.behavior)
            self._cond.notify_all()

    def send_grant(self, grant: Grant) -> None:
        """``Collector.send_grant``: sent after the snapshots queued before it."""
        message = trainer_pb2.CollectionGrant(
            behavior=grant.behavior,
            policy_version=grant.policy_version,
            agent_steps=grant.agent_steps,
            finished=grant.finished,
        )
        with self._cond:
            self._grants.append(message)
            self._cond.notify_all()

    def push_parameters(self, parameters: trainer_pb2.EnvironmentParameters) -> None:
        """Queues the newest environment parameters (a reset still pending is kept)."""
        with self._cond:
            if self._parameters is not None and self._parameters.reset and not parameters.reset:
                parameters = trainer_pb2.EnvironmentParameters(
                    parameters=parameters.parameters, generation=parameters.generation, reset=True
                )
            self._parameters = parameters
            self._cond.notify_all()

    def push_ack(self, sequence: int) -> None:
        with self._cond:
            self._acks.append(sequence)
            self._cond.notify_all()

    def fail(self, error: _StreamError) -> None:
        with self._cond:
            if self.error is None:
                self.error = error
            self._cond.notify_all()

    def finish_reading(self) -> None:
        with self._cond:
            self.reader_done = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def next_messages(self, timeout: float) -> list[trainer_pb2.TrainerMessage]:
        """Waits up to ``timeout`` for messages to send: environment parameters, snapshots, then
        grants (a grant for a version must not arrive before that version's snapshot), then acks."""
        with self._cond:
            pending = self._acks or self._snapshots or self._grants or self._parameters
            if not (pending or self.error or self.reader_done or self.closed):
                self._cond.wait(timeout)
            out = []
            if self._parameters is not None:
                out.append(trainer_pb2.TrainerMessage(environment_parameters=self._parameters))
                self._parameters = None
            out += [trainer_pb2.TrainerMessage(snapshot=s) for s in self._snapshots.values()]
            out += [trainer_pb2.TrainerMessage(grant=g) for g in self._grants]
            out += [trainer_pb2.TrainerMessage(ack=trainer_pb2.ChunkAck(sequence=q)) for q in self._acks]
            self._snapshots.clear()
            self._grants.clear()
            self._acks.clear()
            return out


class TrainerService(trainer_pb2_grpc.TrainerServicer):
    """``tandem.v1.Trainer``: translation between gateway streams and the TrainingApp."""

    def __init__(self, app: TrainingApp, poll_s: float = 0.5) -> None:
        self._app = app
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._shutdown = threading.Event()
        app.add_snapshot_listener(self._broadcast)
        app.add_processed_listener(self._acknowledge)
        app.add_parameters_listener(self._broadcast_parameters)

    @property
    def connected_gateways(self) -> list[str]:
        with self._lock:
            return sorted(c.gateway_id for c in self._connections)

    def shutdown(self) -> None:
        """Ends every stream (OK) so gateways stop cleanly."""
        self._shutdown.set()
        with self._lock:
            connections = list(self._connections)
        for c in connections:
            c.close()

    def _acknowledge(self, gateway_id: str, sequence: int) -> None:
        """A chunk is in the learner's state: ack it on the gateway's stream(s)."""
        with self._lock:
            connections = [c for c in self._connections if c.gateway_id == gateway_id]
        for c in connections:
            c.push_ack(sequence)

    def _broadcast(self, snapshot: trainer_pb2.PolicySnapshot) -> None:
        with self._lock:
            connections = list(self._connections)
        for c in connections:
            c.push_snapshot(snapshot)

    def _broadcast_parameters(self, parameters: trainer_pb2.EnvironmentParameters) -> None:
        with self._lock:
            connections = list(self._connections)
        for c in connections:
            c.push_parameters(parameters)

    # ------------------------------------------------------------------ the RPC

    def Connect(self, request_iterator, context) -> Iterator[trainer_pb2.TrainerMessage]:
        peer = context.peer()
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("message") != "hello":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message of Connect must be Hello")
        hello = first.hello
        if not hello.gateway_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.gateway_id: must not be empty")
        conn = _Connection(hello.gateway_id, peer, hello.num_instances)
        log = _log.bind(gateway_id=hello.gateway_id, peer=peer)
        try:
            snapshots = [self._announce(conn, b, f"hello.behaviors[{i}]") for i, b in enumerate(hello.behaviors)]
        except _StreamError as e:
            log.warning("gateway refused", code=e.code.name, reason=e.message)
            context.abort(e.code, e.message)
        welcome = trainer_pb2.Welcome(
            last_accepted_sequence=self._app.last_accepted_sequence(hello.gateway_id), run_id=self._app.run_id
        )
        log.info(
            "gateway connected",
            behaviors=sorted(conn.announced),
            num_instances=hello.num_instances,
            last_accepted_sequence=welcome.last_accepted_sequence,
        )
        collection = self._app.collection
        with self._lock:
            self._connections.add(conn)
        context.add_callback(conn.close)
        try:
            yield trainer_pb2.TrainerMessage(welcome=welcome)
            parameters = self._app.environment_parameters()
            if parameters is not None:  # before any snapshot: the gateway applies them before acting
                yield trainer_pb2.TrainerMessage(environment_parameters=parameters)
            for s in snapshots:
                conn.push_snapshot(s)
                collection.announce(conn, s.behavior)
            reader = threading.Thread(
                target=self._read, args=(request_iterator, conn, log), name=f"read-{hello.gateway_id}", daemon=True
            )
            reader.start()
            while True:
                for message in conn.next_messages(self._poll_s):
                    yield message
                if conn.error is not None:
                    log.warning("gateway stream refused", code=conn.error.code.name, reason=conn.error.message)
                    context.abort(conn.error.code, conn.error.message)
                if conn.reader_done or conn.closed or self._shutdown.is_set() or self._app.finished.is_set():
                    for message in conn.next_messages(0):
                        yield message
                    if self._app.completed:
                        yield trainer_pb2.TrainerMessage(finished=trainer_pb2.TrainingFinished(
                            run_id=self._app.run_id, reason="every behavior reached max_steps",
                        ))
                    break
                if not context.is_active():
                    break
        finally:
            with self._lock:
                self._connections.discard(conn)
            collection.disconnect(conn)
            conn.close()
            log.info("gateway disconnected")

    def _announce(self, conn: _Connection, spec_msg, field_name: str) -> trainer_pb2.PolicySnapshot:
        try:
            spec = specs_mod.from_proto(spec_msg)
        except (ValueError, TensorError) as e:
            raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {e}") from None
        try:
            snapshot = self._app.register_behavior(spec)
        except ExperienceError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT if e.invalid else grpc.StatusCode.FAILED_PRECONDITION
            raise _StreamError(code, str(e)) from None
        conn.announce(spec.name)
        return snapshot

    def _read(self, request_iterator, conn: _Connection, log) -> None:
        """Reader thread: applies the gateway's messages in order until the stream ends or fails."""
        try:
            for message in request_iterator:
                if conn.closed:
                    break
                kind = message.WhichOneof("message")
                if kind == "chunk":
                    self._chunk(conn, message.chunk, log)
                elif kind == "new_behavior":
                    snapshot = self._announce(conn, message.new_behavior, "new_behavior")
                    conn.push_snapshot(snapshot)
                    self._app.collection.announce(conn, snapshot.behavior)
                    log.info("gateway announced a behavior", behavior=message.new_behavior.name)
                elif kind == "hello":
                    raise _StreamError(grpc.StatusCode.FAILED_PRECONDITION, "Hello may only be the first message")
                else:
                    raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, "empty GatewayMessage")
        except _StreamError as e:
            conn.fail(e)
        except grpc.RpcError:
            pass  # the gateway went away; the generator notices
        except Exception as e:
            log.exception("unexpected error while reading a gateway stream")
            conn.fail(_StreamError(grpc.StatusCode.INTERNAL, f"trainer error: {type(e).__name__}: {e}"))
        finally:
            conn.finish_reading()

    def _chunk(self, conn: _Connection, chunk: trainer_pb2.ExperienceChunk, log) -> None:
        """Decodes the whole chunk, then queues it (blocking: backpressure); the ack follows
        once the training thread has taken it in (``_acknowledge``)."""
        if chunk.sequence == 0:
            raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, "chunk.sequence: must be 1 or more")
        if chunk.behavior not in conn.announced:
            raise _StreamError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"chunk {chunk.sequence}: behavior {chunk.behavior!r} was not announced by this gateway "
                "(send it in Hello or new_behavior first)",
            )
        if chunk.sequence <= self._app.last_accepted_sequence(conn.gateway_id):
            conn.push_ack(chunk.sequence)  # a resend after a reconnect: already taken in
            return
        if chunk.sequence <= self._app.last_queued_sequence(conn.gateway_id):
            return  # a resend of a chunk still queued: acked once taken in
        spec = self._app.behavior_spec(chunk.behavior)
        assert spec is not None  # announced => registered
        try:
            trajectories = [
                trajectory_mod.from_proto(t, spec, name=f"chunk {chunk.sequence}: trajectories[{i}]")
                for i, t in enumerate(chunk.trajectories)
            ]
        except TensorError as e:
            raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        stats = [(s.key, s.value, s.aggregation) for s in chunk.stats]
        try:
            self._app.submit(
                conn.gateway_id, chunk.sequence, chunk.behavior, trajectories, stats,
                collector=conn, returned_steps=chunk.returned_steps,
                parameters_generation=chunk.parameters_generation,
            )
        except TrainerStoppingError as e:
            raise _StreamError(grpc.StatusCode.UNAVAILABLE, str(e)) from None
        except ExperienceError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT if e.invalid else grpc.StatusCode.FAILED_PRECONDITION
            raise _StreamError(code, str(e)) from None
