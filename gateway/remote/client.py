"""A small Python client of ``tandem.v1.Gateway`` (remote-control mode).

Why: tests, the benchmark and Python users drive a gateway the same way: open a
channel (TLS and token optional), Describe with a deadline, then a Play stream
where each request waits for its one response. Steps are decoded into
``gateway.env.steps.StepBatch`` per (instance, behavior).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass

import grpc
import numpy as np

from common import specs as specs_mod
from common.specs import BehaviorSpec
from gateway.env import steps as steps_mod
from common.grpc_server import channel_options
from gateway.env.steps import StepBatch
from tandem.v1 import gateway_pb2, gateway_pb2_grpc


@dataclass
class BehaviorStepsView:
    """Decoded steps of one behavior in one instance."""

    instance: int
    behavior: str
    decisions: StepBatch
    terminals: StepBatch


def decode_steps(
    steps: gateway_pb2.Steps, specs: dict[str, BehaviorSpec], only: str | None = None
) -> list[BehaviorStepsView]:
    """Decodes every ``BehaviorSteps`` of a response (specs from Describe), or only behavior ``only``'s."""
    out = []
    for i, entry in enumerate(steps.behaviors):
        if only is not None and entry.behavior != only:
            continue
        spec = specs[entry.behavior]
        out.append(
            BehaviorStepsView(
                instance=entry.instance,
                behavior=entry.behavior,
                decisions=steps_mod.decode(entry.decision, spec, terminal=False, name=f"behaviors[{i}].decision"),
                terminals=steps_mod.decode(entry.terminal, spec, terminal=True, name=f"behaviors[{i}].terminal"),
            )
        )
    return out


def behavior_actions(
    instance: int, behavior: str, agent_ids: np.ndarray, continuous: np.ndarray, discrete: np.ndarray
) -> gateway_pb2.BehaviorActions:
    """A ``BehaviorActions`` message: int32 ``agent_ids [k]``, float32 ``continuous [k, c]``, int32 ``discrete [k, b]``
    (an empty action part, c or b = 0, is left out)."""
    out = gateway_pb2.BehaviorActions(instance=instance, behavior=behavior)
    steps_mod.put_tensor(agent_ids, out.agent_ids)
    if continuous.shape[1]:
        steps_mod.put_tensor(continuous, out.continuous)
    if discrete.shape[1]:
        steps_mod.put_tensor(discrete, out.discrete)
    return out


def random_actions(
    view: BehaviorStepsView, spec: BehaviorSpec, rng: np.random.Generator, out: gateway_pb2.BehaviorActions
) -> gateway_pb2.BehaviorActions:
    """Fills ``out`` with uniformly random valid actions (masked discrete actions avoided)."""
    n = len(view.decisions)
    a = spec.action_spec
    out.instance = view.instance
    out.behavior = view.behavior
    steps_mod.put_tensor(view.decisions.agent_ids, out.agent_ids)
    if a.continuous_size:
        steps_mod.put_tensor(rng.uniform(-1, 1, (n, a.continuous_size)).astype(np.float32), out.continuous)
    if a.num_branches:
        disc = np.zeros((n, a.num_branches), np.int32)
        start = 0
        mask = view.decisions.action_mask
        for b, size in enumerate(a.discrete_branches):
            allowed = ~mask[:, start : start + size]
            for row in range(n):
                choices = np.flatnonzero(allowed[row])
                disc[row, b] = rng.choice(choices) if choices.size else 0
            start += size
        steps_mod.put_tensor(disc, out.discrete)
    return out


class PlaySession:
    """One Play stream: every call sends one request and waits for its response."""

    def __init__(self, stub: gateway_pb2_grpc.GatewayStub, metadata, timeout_s: float | None) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses = stub.Play(iter(self._requests.get, None), metadata=metadata, timeout=timeout_s)

    def request(self, request: gateway_pb2.PlayRequest) -> gateway_pb2.PlayResponse:
        """Sends ``request`` and returns its response; raises ``grpc.RpcError`` on error status."""
        self._requests.put(request)
        return next(self._responses)

    def reset(self, parameters: dict[str, float] | None = None) -> gateway_pb2.Steps:
        req = gateway_pb2.PlayRequest()
        req.reset.SetInParent()
        for k, v in (parameters or {}).items():
            req.reset.environment_parameters[k] = v
        return self.request(req).steps

    def step(self, actions: list[gateway_pb2.BehaviorActions] = ()) -> gateway_pb2.Steps:
        req = gateway_pb2.PlayRequest()
        req.step.SetInParent()
        req.step.actions.extend(actions)
        return self.request(req).steps

    def set_parameters(self, parameters: dict[str, float]) -> None:
        req = gateway_pb2.PlayRequest()
        for k, v in parameters.items():
            req.set_environment_parameters.parameters[k] = v
        req.set_environment_parameters.SetInParent()
        self.request(req)

    def close(self) -> None:
        """Half-closes the stream (the gateway keeps the environments running)."""
        self._requests.put(None)
        self._responses.cancel()


class GatewayClient:
    """A channel to a gateway.

    Args:
        address: ``host:port``.
        token: bearer token, if the gateway requires one.
        root_certificates: PEM CA bytes to connect over TLS; None = plaintext.
        max_message_mb: largest message either way.
        timeout_s: deadline of Describe calls (Play streams have none unless given).
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        root_certificates: bytes | None = None,
        max_message_mb: int = 64,
        timeout_s: float = 30.0,
        tls_server_name: str | None = None,
    ) -> None:
        options = channel_options(max_message_mb * 1024 * 1024, 30.0)
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s

    def describe(self) -> gateway_pb2.DescribeResponse:
        return self.stub.Describe(gateway_pb2.DescribeRequest(), metadata=self.metadata, timeout=self.timeout_s)

    def specs(self) -> dict[str, BehaviorSpec]:
        return {b.name: specs_mod.from_proto(b) for b in self.describe().behaviors}

    def play(self, timeout_s: float | None = None) -> PlaySession:
        return PlaySession(self.stub, self.metadata, timeout_s)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
