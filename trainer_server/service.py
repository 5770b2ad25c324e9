"""The ``tandem.v1.Trainer`` gRPC service and the server around it.

Why: gateways connect here (one stream each, ``Trainer.Connect``), stream experience
in and receive policy snapshots. This module only translates between messages and
``trainer_server.app.TrainingApp`` and maps refusals to gRPC status codes:

* the first message must be ``Hello`` (else FAILED_PRECONDITION), within
  ``hello_timeout_s`` (``DEFAULT_HELLO_TIMEOUT_S``, ``--hello-timeout``; else
  DEADLINE_EXCEEDED: a peer that never says Hello must not hold a server thread); the
  answer is ``Welcome`` with the last chunk sequence accepted from that ``gateway_id`` (so
  a reconnecting gateway resends only what is missing), then the latest snapshot of
  each announced behavior;
* one live stream per ``gateway_id``: a second one is refused with ALREADY_EXISTS (it
  would share the first one's sequence space). A gateway's chunk sequences are
  contiguous: after its first chunk, a chunk may repeat one already queued (a resend) or
  be the next one; a jump is INVALID_ARGUMENT (a sequence of 2**64-1 must not make the
  gateway's next chunks look like resends, acknowledged and dropped);
* specs are bounded before anything is allocated, and chunk values are bounded
  (``trainer_server.validation``; INVALID_ARGUMENT naming the field, the trajectory and
  the behavior);
* a behavior's registration holds once experience of it is queued
  (``TrainingApp.register_behavior``): a gateway announcing a spec that conflicts with a
  held one is refused (FAILED_PRECONDITION); one that conflicts with a registration no
  experience backs yet replaces it, and the streams that announced the replaced one end
  with FAILED_PRECONDITION. A registration no live stream announces and no experience
  backs is dropped when its last stream ends;
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
from grpc._cython import cygrpc

from common import specs as specs_mod
from common import trajectory as trajectory_mod
from common.logging import get_logger
from common.tensor import TensorError
from trainer_server import validation
from trainer_server.app import ExperienceError, TrainerStoppingError, TrainingApp
from trainer_server.collection import Grant
from trainer_server.server_settings import DEFAULT_HELLO_TIMEOUT_S
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

    def __init__(
        self, app: TrainingApp, poll_s: float = 0.5, hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S
    ) -> None:
        self._app = app
        self._poll_s = poll_s
        self._hello_timeout_s = hello_timeout_s
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        #: the live stream of each gateway_id, from its Hello until its end (one at a time)
        self._live_ids: dict[str, object] = {}
        self._shutdown = threading.Event()
        app.add_snapshot_listener(self._broadcast)
        app.add_processed_listener(self._acknowledge)
        app.add_parameters_listener(self._broadcast_parameters)
        app.add_replaced_listener(self._replaced)

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

    def _replaced(self, behavior: str, reason: str) -> None:
        """A registration no experience backed was replaced: the streams that announced it end."""
        with self._lock:
            connections = [c for c in self._connections if behavior in c.announced]
        for c in connections:
            c.fail(_StreamError(grpc.StatusCode.FAILED_PRECONDITION, reason))

    def _release(self, conn: _Connection) -> None:
        """A stream ended: the registrations only it announced and no experience backs are dropped."""
        with self._lock:
            others = set().union(*(c.announced for c in self._connections if c is not conn))
        for behavior in conn.announced - others:
            self._app.release_behavior(behavior)

    def _first_message(self, request_iterator, context):
        """The stream's first message, or None when the peer closed it; DEADLINE_EXCEEDED after
        ``hello_timeout_s`` without one (the stream is cancelled with that status)."""
        timeout = self._hello_timeout_s

        def expire() -> None:
            message = f"no Hello within {timeout:g} s: the first message of Connect must be Hello"
            _log.warning("gateway stream without Hello cancelled", peer=context.peer(), timeout_s=timeout)
            call = getattr(getattr(context, "_rpc_event", None), "call", None)
            try:
                call.cancel(cygrpc.StatusCode.deadline_exceeded, message)
            except (AttributeError, TypeError):  # another grpc implementation: a plain cancel
                context.cancel()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            return next(request_iterator)
        except (StopIteration, grpc.RpcError):
            return None
        finally:
            timer.cancel()

    # ------------------------------------------------------------------ the RPC

    def Connect(self, request_iterator, context) -> Iterator[trainer_pb2.TrainerMessage]:
        peer = context.peer()
        first = self._first_message(request_iterator, context)
        if first is None:
            return
        if first.WhichOneof("message") != "hello":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message of Connect must be Hello")
        hello = first.hello
        if not hello.gateway_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.gateway_id: must not be empty")
        if len(hello.gateway_id) > validation.MAX_BEHAVIOR_NAME:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"hello.gateway_id: {len(hello.gateway_id)} characters, at most {validation.MAX_BEHAVIOR_NAME}",
            )
        token = object()
        with self._lock:
            taken = hello.gateway_id in self._live_ids
            if not taken:
                self._live_ids[hello.gateway_id] = token
        if taken:
            _log.warning("second stream for a gateway_id refused", gateway_id=hello.gateway_id, peer=peer)
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"gateway_id {hello.gateway_id!r} already has a live stream: one stream per gateway "
                "(a reconnecting gateway retries once its previous stream has ended)",
            )

        def release() -> None:
            with self._lock:
                if self._live_ids.get(hello.gateway_id) is token:
                    del self._live_ids[hello.gateway_id]

        # also when the RPC ends (a cancelled stream): its gateway's reconnect is not refused
        # while the handler is still winding down
        context.add_callback(release)
        try:
            yield from self._serve(hello, request_iterator, context, peer)
        finally:
            release()

    def _serve(self, hello, request_iterator, context, peer: str) -> Iterator[trainer_pb2.TrainerMessage]:
        """The stream of a gateway whose Hello was accepted and whose gateway_id is reserved."""
        conn = _Connection(hello.gateway_id, peer, hello.num_instances)
        log = _log.bind(gateway_id=hello.gateway_id, peer=peer)
        try:
            snapshots = [self._announce(conn, b, f"hello.behaviors[{i}]") for i, b in enumerate(hello.behaviors)]
        except _StreamError as e:
            log.warning("gateway refused", code=e.code.name, reason=e.message)
            self._release(conn)
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
            self._release(conn)
            log.info("gateway disconnected")

    def _announce(self, conn: _Connection, spec_msg, field_name: str) -> trainer_pb2.PolicySnapshot:
        try:
            validation.check_spec_message(spec_msg, field_name)  # before anything is allocated
            spec = specs_mod.from_proto(spec_msg)
        except (ValueError, TensorError) as e:
            message = str(e) if str(e).startswith(field_name) else f"{field_name}: {e}"
            raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, message) from None
        try:
            snapshot = self._app.register_behavior(spec)
        except ExperienceError as e:
            raise _StreamError(_experience_code(e), str(e)) from None
        except Exception as e:  # a trainer fault: INTERNAL with its reason, never a bare UNKNOWN
            _log.exception("could not register a behavior", behavior=spec.name)
            raise _StreamError(grpc.StatusCode.INTERNAL, f"trainer error registering {spec.name}: {e}") from None
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
        last_queued = self._app.last_queued_sequence(conn.gateway_id)
        if chunk.sequence <= last_queued:
            return  # a resend of a chunk still queued: acked once taken in
        if last_queued and chunk.sequence != last_queued + 1:
            raise _StreamError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"chunk.sequence: {chunk.sequence} after {last_queued} from gateway {conn.gateway_id!r}: "
                "sequences are contiguous (a resend, or the next one)",
            )
        spec = self._app.behavior_spec(chunk.behavior)
        if spec is None:
            raise _StreamError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"chunk {chunk.sequence}: behavior {chunk.behavior!r} is no longer registered (announce it again)",
            )
        try:
            trajectories = []
            for i, t in enumerate(chunk.trajectories):
                name = f"chunk {chunk.sequence}: trajectories[{i}]"
                trajectory = trajectory_mod.from_proto(t, spec, name=name)
                validation.check_trajectory_values(trajectory, name, spec.name)
                trajectories.append(trajectory)
            for i, stat in enumerate(chunk.stats):
                validation.check_stat_value(stat.value, f"chunk {chunk.sequence}: stats[{i}].value ({stat.key!r})")
        except TensorError as e:
            raise _StreamError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        stats = [(s.key, s.value, s.aggregation) for s in chunk.stats]
        try:
            self._app.submit(
                conn.gateway_id, chunk.sequence, chunk.behavior, trajectories, stats,
                collector=conn, returned_steps=chunk.returned_steps,
                parameters_generation=chunk.parameters_generation, spec=spec,
            )
        except ExperienceError as e:
            raise _StreamError(_experience_code(e), str(e)) from None


def _experience_code(error: ExperienceError) -> grpc.StatusCode:
    """The status of a refusal: UNAVAILABLE while stopping, RESOURCE_EXHAUSTED for the behavior
    limit, INVALID_ARGUMENT for malformed data, FAILED_PRECONDITION otherwise."""
    if isinstance(error, TrainerStoppingError):
        return grpc.StatusCode.UNAVAILABLE
    if getattr(error, "exhausted", False):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.INVALID_ARGUMENT if error.invalid else grpc.StatusCode.FAILED_PRECONDITION
