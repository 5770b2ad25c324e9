"""A small real ``tandem.v1.Trainer`` server for the actor-mode tests.

It records every chunk, deduplicates by (gateway_id, sequence) the way the trainer
contract says, answers Welcome with the last accepted sequence, sends a snapshot
built with ``common.architecture`` for every announced behavior, and acks chunks (or,
when told, holds its acks back to fill the gateway's buffer). Its state outlives
its server, so a test can stop the server and start another on the same port: the
trainer "goes away and comes back".
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures

import grpc
import numpy as np

from common import specs as specs_mod
from common.architecture import PolicyArchitecture, make_snapshot, parameter_shapes
from tandem.v1 import trainer_pb2, trainer_pb2_grpc


def random_params(arch: PolicyArchitecture, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random parameters for every name the architecture needs."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in parameter_shapes(arch).items():
        if name.startswith("normalizer/var"):
            out[name] = np.ones(shape, np.float32)
        elif name.startswith("normalizer/mean"):
            out[name] = np.zeros(shape, np.float32)
        elif name == "policy/log_std":
            out[name] = np.full(shape, -0.5, np.float32)
        else:
            out[name] = (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return out


class TrainerState:
    """What the fake trainer remembers across server restarts."""

    def __init__(self, time_horizon: int = 16, hidden_units: int = 32, num_layers: int = 2, deterministic=False):
        self.lock = threading.Lock()
        self.chunks: dict[tuple[str, int], trainer_pb2.ExperienceChunk] = {}
        self.duplicates = 0
        self.last_accepted: dict[str, int] = {}
        self.hellos: list[trainer_pb2.Hello] = []
        self.new_behaviors: list[str] = []
        self.time_horizon = time_horizon
        self.hidden_units = hidden_units
        self.num_layers = num_layers
        self.deterministic = deterministic
        self.version = 1
        #: agent steps granted with each snapshot (flow control; any version)
        self.grant_steps = 10**9
        self.ack = threading.Event()
        self.ack.set()
        self.changed = threading.Condition(self.lock)
        #: environment parameters sent after Welcome (None: none, like a run without any)
        self.parameters: trainer_pb2.EnvironmentParameters | None = None
        self.outboxes: list[queue.Queue] = []

    def push_parameters(self, parameters: trainer_pb2.EnvironmentParameters) -> None:
        """Sends ``parameters`` to every open stream (a lesson change); later streams get them without reset."""
        with self.lock:
            self.parameters = trainer_pb2.EnvironmentParameters()
            self.parameters.CopyFrom(parameters)
            self.parameters.reset = False
            outboxes = list(self.outboxes)
        for out in outboxes:
            out.put(trainer_pb2.TrainerMessage(environment_parameters=parameters))

    def snapshot(self, spec_msg) -> trainer_pb2.PolicySnapshot:
        spec = specs_mod.from_proto(spec_msg)
        arch = PolicyArchitecture(spec, hidden_units=self.hidden_units, num_layers=self.num_layers)
        return make_snapshot(
            spec.name, self.version, arch, random_params(arch), self.time_horizon, deterministic=self.deterministic
        )

    def grant(self, behavior: str) -> trainer_pb2.TrainerMessage:
        """The collection grant sent after each snapshot."""
        return trainer_pb2.TrainerMessage(
            grant=trainer_pb2.CollectionGrant(behavior=behavior, agent_steps=self.grant_steps)
        )

    def accept(self, gateway_id: str, chunk: trainer_pb2.ExperienceChunk) -> None:
        with self.lock:
            if chunk.sequence <= self.last_accepted.get(gateway_id, 0):
                self.duplicates += 1
                return
            assert chunk.sequence == self.last_accepted.get(gateway_id, 0) + 1, "chunks must arrive in order"
            self.chunks[(gateway_id, chunk.sequence)] = chunk
            self.last_accepted[gateway_id] = chunk.sequence
            self.changed.notify_all()

    def wait_for(self, predicate, timeout_s: float) -> bool:
        with self.lock:
            return self.changed.wait_for(lambda: predicate(self), timeout_s)


class FakeTrainer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, state: TrainerState) -> None:
        self.state = state
        self.closed = threading.Event()

    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        assert first.WhichOneof("message") == "hello"
        hello = first.hello
        state = self.state
        with state.lock:
            state.hellos.append(hello)
            last = state.last_accepted.get(hello.gateway_id, 0)
        out: queue.Queue = queue.Queue()
        out.put(trainer_pb2.TrainerMessage(welcome=trainer_pb2.Welcome(last_accepted_sequence=last, run_id="fake")))
        with state.lock:
            if state.parameters is not None:
                out.put(trainer_pb2.TrainerMessage(environment_parameters=state.parameters))
            state.outboxes.append(out)
        for spec in hello.behaviors:
            out.put(trainer_pb2.TrainerMessage(snapshot=state.snapshot(spec)))
            out.put(state.grant(spec.name))

        def read():
            try:
                for message in request_iterator:
                    kind = message.WhichOneof("message")
                    if kind == "chunk":
                        state.accept(hello.gateway_id, message.chunk)
                        state.ack.wait()
                        out.put(trainer_pb2.TrainerMessage(ack=trainer_pb2.ChunkAck(sequence=message.chunk.sequence)))
                    elif kind == "new_behavior":
                        with state.lock:
                            state.new_behaviors.append(message.new_behavior.name)
                        out.put(trainer_pb2.TrainerMessage(snapshot=state.snapshot(message.new_behavior)))
                        out.put(state.grant(message.new_behavior.name))
            except grpc.RpcError:
                pass
            finally:
                out.put(None)

        threading.Thread(target=read, daemon=True).start()
        while not self.closed.is_set() and context.is_active():
            try:
                message = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message


class FakeTrainerServer:
    """Starts the fake trainer on ``port`` (0 = any); ``stop`` cuts every stream."""

    def __init__(self, state: TrainerState, port: int = 0) -> None:
        self.state = state
        self.servicer = FakeTrainer(state)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.so_reuseport", 0)],
        )
        trainer_pb2_grpc.add_TrainerServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot bind 127.0.0.1:{port}"
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.servicer.closed.set()
        self.server.stop(0).wait(5)
