"""Actor mode's link to the trainer (``tandem.v1.Trainer/Connect``): Hello, snapshots, chunks, acks.

Why: the trainer may restart or the network may drop; experience must arrive once
and in order anyway. Every chunk carries a per-gateway sequence number and stays in a
bounded buffer until the trainer acks it. After a reconnect, ``Welcome`` says the
last sequence the trainer accepted from this ``gateway_id``: older chunks are
dropped, newer ones are resent in order. Reconnects back off exponentially
(``reconnect_min_s`` doubling up to ``reconnect_max_s``). When the buffer is full,
``has_room()`` is false and the actor pauses stepping (nothing is dropped).

Flow control: the trainer grants agent steps per behavior (``CollectionGrant``); the link
hands each grant to ``on_grant``, and calls ``on_welcome`` at each Welcome (before the
grants of that stream: credit of an earlier stream is void). ``resync()`` drops the
stream and reconnects at once: the trainer takes back what it granted to the old stream
and grants afresh (used when a worker process and its credit are lost).

A stream the trainer ends with OK after ``TrainingFinished`` ends the link for good
(``training_finished`` is set, ``on_finished`` called): the run is over and nothing more
will be accepted. Any other end (trainer shutting down, network) is a disconnect: the
link reconnects with backoff until it is stopped.

Snapshots are handed on as the bytes received (``gateway.actor.wire.snapshot_in``): the
workers parse them, the parent only reads their header.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import grpc

from common import specs as specs_mod
from common.logging import get_logger
from common.specs import BehaviorSpec
from gateway.actor import wire
from gateway.options import ActorOptions
from common.grpc_server import channel_options
from tandem.v1 import trainer_pb2

#: how long a connection may wait for Welcome before it is considered failed
WELCOME_TIMEOUT_S = 30.0
#: the full method name of Trainer.Connect
CONNECT_METHOD = "/{}/Connect".format(trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name)


class ChunkBuffer:
    """Chunks not yet acknowledged by the trainer, in sequence order, with a size bound.

    Args:
        max_chunks: ``has_room`` turns false at this many chunks.
        max_bytes: or at this many serialized bytes.
    """

    def __init__(self, max_chunks: int, max_bytes: int) -> None:
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._bytes = 0
        self.lock = threading.RLock()

    def add(self, sequence: int, message: bytes) -> None:
        """Keeps a serialized ``GatewayMessage`` (holding chunk ``sequence``) until it is acked."""
        with self.lock:
            self._chunks[sequence] = message
            self._bytes += len(message)

    def ack(self, sequence: int) -> bool:
        """Forgets chunk ``sequence``; True if it was buffered."""
        with self.lock:
            message = self._chunks.pop(sequence, None)
            if message is None:
                return False
            self._bytes -= len(message)
            return True

    def ack_through(self, sequence: int) -> int:
        """Forgets every chunk up to ``sequence`` (the trainer accepted them); returns how many."""
        with self.lock:
            dropped = [s for s in self._chunks if s <= sequence]
            for s in dropped:
                self.ack(s)
            return len(dropped)

    def pending(self) -> list[bytes]:
        with self.lock:
            return list(self._chunks.values())

    def has_room(self) -> bool:
        with self.lock:
            return len(self._chunks) < self.max_chunks and self._bytes < self.max_bytes

    def __len__(self) -> int:
        with self.lock:
            return len(self._chunks)

    @property
    def bytes(self) -> int:
        with self.lock:
            return self._bytes


class TrainerLink:
    """Keeps one stream to the trainer open, sends Hello/behaviors/chunks, receives snapshots and acks.

    Args:
        options: actor options (address, token, TLS CA, buffer bounds, reconnect delays).
        hello: builds the Hello for each (re)connection (all behaviors known so far).
        on_snapshot: called with every serialized ``PolicySnapshot`` (from the link's thread).
        on_ack: called after acks free buffer space.
        max_message_bytes: gRPC message limit of the channel.
        on_grant: called with every ``CollectionGrant``.
        on_welcome: called at every Welcome, before the grants of that stream.
        on_finished: called once with ``TrainingFinished``.
        on_parameters: called with every ``EnvironmentParameters`` the trainer sends (after
            Welcome, and at every curriculum lesson change), from the link's thread.
    """

    def __init__(
        self,
        options: ActorOptions,
        hello: Callable[[], trainer_pb2.Hello],
        on_snapshot: Callable[[bytes], None],
        on_ack: Callable[[], None],
        max_message_bytes: int = 256 * 1024 * 1024,
        on_grant: Callable[[trainer_pb2.CollectionGrant], None] = lambda grant: None,
        on_welcome: Callable[[], None] = lambda: None,
        on_finished: Callable[[trainer_pb2.TrainingFinished], None] = lambda finished: None,
        on_parameters: Callable[[trainer_pb2.EnvironmentParameters], None] | None = None,
    ) -> None:
        self.options = options
        self.buffer = ChunkBuffer(options.max_buffered_chunks, int(options.max_buffered_mb * 1024 * 1024))
        self._hello = hello
        self._on_snapshot = on_snapshot
        self._on_ack = on_ack
        self._on_grant = on_grant
        self._on_welcome = on_welcome
        self._on_finished = on_finished
        #: set once the trainer said TrainingFinished: the link does not reconnect
        self.training_finished = threading.Event()
        self._resync = False
        self._on_parameters = on_parameters
        self._max_message_bytes = max_message_bytes
        self._live: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._call = None
        self.connected = threading.Event()
        self.connections = 0
        self.chunks_sent = 0
        self.chunks_resent = 0
        self.acks = 0
        self.last_welcome: trainer_pb2.Welcome | None = None
        self.log = get_logger("gateway.trainer_link", trainer=options.trainer)

    # -- used by the actor ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tandem-trainer-link", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(10)

    def resync(self) -> None:
        """Drops the current stream; the link reconnects at once (see the module docstring)."""
        call = self._call
        if call is not None:
            self.log.warning("resynchronizing with the trainer: reconnecting")
            self._resync = True
            call.cancel()

    def send_chunk(self, sequence: int, message: bytes) -> None:
        """Buffers a serialized ``GatewayMessage`` holding chunk ``sequence`` until acked; sends it now if connected.

        Messages are passed as bytes (``gateway.actor.wire.chunk_message``): the stream sends them as they are.
        """
        with self.buffer.lock:
            self.buffer.add(sequence, message)
            if self._live is not None:
                self._live.put(message)
                self.chunks_sent += 1

    def announce(self, spec: BehaviorSpec) -> None:
        """Tells a connected trainer about a new behavior (later Hellos include it anyway)."""
        with self.buffer.lock:
            if self._live is not None:
                message = trainer_pb2.GatewayMessage(new_behavior=specs_mod.to_proto(spec))
                self._live.put(message.SerializeToString())

    # -- the connection loop --------------------------------------------------------------------

    def _channel(self) -> grpc.Channel:
        opts = channel_options(self._max_message_bytes, 30.0)
        if self.options.tls_ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(self.options.tls_ca).read_bytes())
            return grpc.secure_channel(self.options.trainer, creds, options=opts)
        return grpc.insecure_channel(self.options.trainer, options=opts)

    def _run(self) -> None:
        delay = self.options.reconnect_min_s
        while not self._stop.is_set():
            welcomed = False
            try:
                welcomed = self._session()
                if self.training_finished.is_set():
                    return
                if not self._stop.is_set():
                    self.log.warning("trainer ended the stream; reconnecting")
            except grpc.RpcError as e:
                if self._resync:  # asked for: reconnect at once, without a warning
                    self._resync, welcomed = False, True
                elif not self._stop.is_set():
                    self.log.warning(
                        "trainer connection failed; reconnecting",
                        code=e.code().name if hasattr(e, "code") else "?",
                        error=e.details() if hasattr(e, "details") else str(e),
                        retry_in_s=round(delay, 2),
                    )
            except Exception:
                self.log.exception("trainer link error; reconnecting")
            if welcomed:
                delay = self.options.reconnect_min_s
            if self._stop.wait(delay):
                break
            if not welcomed:
                delay = min(delay * 2, self.options.reconnect_max_s)

    def _session(self) -> bool:
        """One connection: Hello, Welcome, resend, then snapshots/acks until the stream ends."""
        outgoing: queue.Queue = queue.Queue()
        outgoing.put(trainer_pb2.GatewayMessage(hello=self._hello()).SerializeToString())
        metadata = (("authorization", f"Bearer {self.options.token}"),) if self.options.token else ()
        channel = self._channel()
        welcomed = False
        timer = None
        try:
            # requests are serialized GatewayMessages already (chunks are assembled as bytes);
            # responses arrive as bytes too: a snapshot goes on to the workers unparsed
            connect = channel.stream_stream(CONNECT_METHOD, request_serializer=None, response_deserializer=None)
            call = connect(iter(outgoing.get, None), metadata=metadata)
            self._call = call
            if self._stop.is_set():
                call.cancel()
            timer = threading.Timer(WELCOME_TIMEOUT_S, lambda: None if welcomed else call.cancel())
            timer.daemon = True
            timer.start()
            for data in call:
                snapshot = wire.snapshot_in(data)
                if snapshot is not None:
                    self._on_snapshot(snapshot)
                    continue
                message = trainer_pb2.TrainerMessage.FromString(data)
                kind = message.WhichOneof("message")
                if kind == "welcome":
                    welcomed = True
                    self._welcome(message.welcome, outgoing)
                elif kind == "snapshot":  # a snapshot among other fields (not what the trainer sends)
                    self._on_snapshot(message.snapshot.SerializeToString())
                elif kind == "ack":
                    if self.buffer.ack(message.ack.sequence):
                        self.acks += 1
                    self._on_ack()
                elif kind == "grant":
                    self._on_grant(message.grant)
                elif kind == "finished":
                    self.log.info("the trainer finished the run", run_id=message.finished.run_id, reason=message.finished.reason)
                    self.training_finished.set()
                    self._on_finished(message.finished)
                elif kind == "environment_parameters" and self._on_parameters is not None:
                    self._on_parameters(message.environment_parameters)
            return welcomed
        finally:
            if timer is not None:
                timer.cancel()
            with self.buffer.lock:
                self._live = None
            self.connected.clear()
            outgoing.put(None)
            self._call = None
            channel.close()

    def _welcome(self, welcome: trainer_pb2.Welcome, outgoing: queue.Queue) -> None:
        self.last_welcome = welcome
        self.connections += 1
        self._on_welcome()
        with self.buffer.lock:
            dropped = self.buffer.ack_through(welcome.last_accepted_sequence)
            pending = self.buffer.pending()
            for message in pending:
                outgoing.put(message)
            self.chunks_sent += len(pending)
            if self.connections > 1:
                self.chunks_resent += len(pending)
            self._live = outgoing
        self.connected.set()
        self.log.info(
            "connected to trainer",
            run_id=welcome.run_id,
            last_accepted_sequence=welcome.last_accepted_sequence,
            already_accepted=dropped,
            resending=len(pending),
            connection=self.connections,
        )
        if dropped:
            self._on_ack()
