"""The stand-in's side of a trainer that closes: mlagents-envs' ``close()`` stops its gRPC server
without grace, and when that wins the race against its status-400 reply the pending
``Exchange`` ends UNAVAILABLE ("Cancelling all calls"). The player must take it as the trainer
closing (exit 0), not as a lost connection (exit 1)."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from mlagents_envs.communicator_objects import unity_to_external_pb2_grpc
from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
from mlagents_envs.communicator_objects.unity_output_pb2 import UnityOutputProto

from unity_standin.communicator import Communicator, ConnectionLost


class _StoppingTrainer(unity_to_external_pb2_grpc.UnityToExternalProtoServicer):
    """Holds every Exchange until the test stops the server (as mlagents-envs' close does)."""

    def __init__(self) -> None:
        self.pending = threading.Event()
        self.release = threading.Event()

    def Exchange(self, request, context):
        self.pending.set()
        self.release.wait(60)
        return UnityMessageProto()


def test_a_trainer_that_stops_its_server_mid_exchange_is_a_close_not_a_lost_connection() -> None:
    trainer = _StoppingTrainer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    unity_to_external_pb2_grpc.add_UnityToExternalProtoServicer_to_server(trainer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    communicator = Communicator(port)
    result: dict = {}

    def exchange() -> None:
        try:
            result["input"] = communicator.exchange(UnityOutputProto())
        except ConnectionLost as err:
            result["lost"] = str(err)

    worker = threading.Thread(target=exchange)
    worker.start()
    try:
        assert trainer.pending.wait(60)
        server.stop(None)  # no grace: the pending call is cancelled, as mlagents-envs' close() does
        worker.join(60)
        assert not worker.is_alive()
        assert result == {"input": None}, result
        assert not communicator.is_open
    finally:
        trainer.release.set()
        communicator.close()


def test_a_trainer_that_is_not_there_is_still_a_lost_connection() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")  # bound, never started: nothing answers
    communicator = Communicator(port)
    try:
        communicator.exchange(UnityOutputProto())
    except ConnectionLost as err:
        assert "UNAVAILABLE" in str(err) and "Cancelling all calls" not in str(err)
    else:
        raise AssertionError("an exchange with no trainer returned")
    finally:
        communicator.close()
        server.stop(None)
