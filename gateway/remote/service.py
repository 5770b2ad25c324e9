"""The ``tandem.v1.Gateway`` servicer: translates between the wire and the environment pool.

Why: keeping the servicer thin means every rule about actions lives in
``gateway.remote.actions`` and every rule about stepping in ``gateway.remote.pool``; here
we only decode requests, call the pool, encode answers and map errors to status
codes (INVALID_ARGUMENT naming the field, FAILED_PRECONDITION, UNAVAILABLE).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import Protocol

import grpc

from common import specs as specs_mod
from common.logging import get_logger
from gateway.env import parameters as parameters_mod
from gateway.remote.actions import InvalidArgument, decode_step_request
from gateway.options import EngineSettings
from gateway.env.workers import InstanceInfo, PoolError
from gateway.remote.pool import EnvironmentPool, ParametersDropped
from tandem.v1 import gateway_pb2, gateway_pb2_grpc

API_VERSION = "v1"
#: how long a new Play stream waits for a departed client's stream to finish unwinding
PLAY_HANDOVER_S = 5.0
#: how long a new Play stream waits while the holder's client still looks connected
PLAY_BUSY_WAIT_S = 1.0


class EnvironmentView(Protocol):
    """What Describe needs from either mode's environment owner."""

    @property
    def specs(self) -> dict: ...

    def instances(self) -> list[InstanceInfo]: ...


#: the longest status message sent (gRPC refuses trailers over its metadata limit with
#: RESOURCE_EXHAUSTED, which would hide the real error)
MAX_DETAILS_CHARS = 2000


def _check_parameters(parameters, field: str) -> dict[str, float]:
    """The request's environment parameters, or INVALID_ARGUMENT naming the first bad one."""
    out = {}
    for key, value in parameters.items():
        problem = parameters_mod.check_name(key)
        if problem is not None:
            raise InvalidArgument(f"{field}: {problem}")
        problem = parameters_mod.check_value(value)
        if problem is not None:
            raise InvalidArgument(f"{field}[{key!r}]: {problem}")
        out[key] = float(value)
    return out


def _details(text: str) -> str:
    """A status message within ``MAX_DETAILS_CHARS`` (the start names the field)."""
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 15] + "... (truncated)"


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """Serves Describe and Play.

    Args:
        engine: the engine settings every instance runs with.
        actor_mode: True when the gateway acts for a trainer (Play is refused).
    """

    def __init__(self, engine: EngineSettings, actor_mode: bool) -> None:
        self._engine = engine
        self._actor_mode = actor_mode
        self._view: EnvironmentView | None = None
        self._play_lock = threading.Lock()
        self._play_holder = None  # the grpc context of the stream holding _play_lock
        self._stream_ids = itertools.count(1)
        self.log = get_logger("gateway.service")

    def attach(self, view: EnvironmentView) -> None:
        """Makes the environments available (until then, RPCs answer UNAVAILABLE)."""
        self._view = view

    def _require_view(self, context: grpc.ServicerContext) -> EnvironmentView:
        view = self._view
        if view is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the environments are starting; retry shortly")
        return view

    def Describe(self, request, context):
        view = self._require_view(context)
        response = gateway_pb2.DescribeResponse(
            mode=gateway_pb2.GATEWAY_MODE_ACTOR if self._actor_mode else gateway_pb2.GATEWAY_MODE_REMOTE_CONTROL,
            api_version=API_VERSION,
        )
        for name, spec in sorted(view.specs.items()):
            specs_mod.to_proto(spec, response.behaviors.add())
        for inst in view.instances():  # InstanceInfo's fields are EnvironmentInstance's
            response.instances.add(**dataclasses.asdict(inst))
        # EngineSettings (options) and tandem.v1.EngineSettings have the same fields
        response.engine_settings.CopyFrom(
            gateway_pb2.EngineSettings(no_graphics=self._engine.no_graphics, **self._engine.channel_parameters())
        )
        return response

    def Play(self, request_iterator, context):
        if self._actor_mode:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the gateway is in actor mode (--trainer): it acts for the trainer, Play is unavailable",
            )
        pool = self._require_view(context)
        assert isinstance(pool, EnvironmentPool)
        if not self._acquire_play(context):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "another client is driving the environments (one Play stream at a time)",
            )
        log = self.log.bind(peer=context.peer(), stream=next(self._stream_ids))
        log.info("play stream opened")
        requests = 0
        try:
            for request in request_iterator:
                requests += 1
                yield self._answer(pool, request, context)
        except InvalidArgument as e:
            log.info("play request rejected", error=_details(str(e)), request=requests)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _details(str(e)))
        except ParametersDropped as e:
            log.warning("play request failed", error=_details(str(e)), request=requests)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, _details(str(e)))
        except PoolError as e:
            log.warning("play request failed", error=_details(str(e)), request=requests)
            context.abort(grpc.StatusCode.UNAVAILABLE, _details(str(e)))
        finally:
            self._play_holder = None
            self._play_lock.release()
            log.info("play stream closed", requests=requests)

    def _acquire_play(self, context) -> bool:
        """Takes the one-stream-at-a-time lock for ``context``.

        A client that just ended or cancelled its stream may start the next one before
        the server has unwound the old one (frames are ordered, handler threads are not).
        So a new stream waits for the lock: up to PLAY_HANDOVER_S when the holder's
        client is gone, up to PLAY_BUSY_WAIT_S otherwise, and only then is refused.
        """
        if self._play_lock.acquire(blocking=False):
            self._play_holder = context
            return True
        holder = self._play_holder
        wait_s = PLAY_BUSY_WAIT_S if holder is not None and holder.is_active() else PLAY_HANDOVER_S
        if not self._play_lock.acquire(timeout=wait_s):
            return False
        self._play_holder = context
        return True

    def claim_play(self, holder) -> bool:
        """Takes the one-driver lock for another protocol's client (the dm_env_rpc endpoint).

        Args:
            holder: its gRPC context (``is_active()`` tells whether the client is still there).

        Returns:
            False when a Play stream (or another holder) keeps it (after the waits of ``_acquire_play``).
        """
        return self._acquire_play(holder)

    def release_play(self) -> None:
        """Releases the lock taken with ``claim_play``."""
        self._play_holder = None
        self._play_lock.release()

    def _answer(self, pool: EnvironmentPool, request, context) -> gateway_pb2.PlayResponse:
        kind = request.WhichOneof("request")
        response = gateway_pb2.PlayResponse()
        if kind == "reset":
            params = _check_parameters(request.reset.environment_parameters, "reset.environment_parameters")
            parts = pool.reset(params)
        elif kind == "step":
            actions = decode_step_request(request.step, pool.decisions, pool.specs)
            parts = pool.step(actions)
        elif kind == "set_environment_parameters":
            params = _check_parameters(
                request.set_environment_parameters.parameters, "set_environment_parameters.parameters"
            )
            pool.set_parameters(params)
            response.parameters_accepted.SetInParent()
            return response
        else:
            raise InvalidArgument("request: one of reset, step or set_environment_parameters is required")
        steps = response.steps
        steps.SetInParent()
        for part in parts:
            steps.MergeFromString(part)  # each part is one instance's serialized Steps
        return response
