"""What the actor acts with: the ``Policy`` interface and the choice of implementation per snapshot.

Why: a snapshot carries either flat ``parameters`` (acted with ``NumpyPolicy``, the
reference forward in numpy) or only an ``onnx_model`` (acted with ``OnnxPolicy``
through onnxruntime, checked against the behavior's spec; ``--policy`` models
arrive that way too). The worker loop only needs ``act``; both classes declare it
with the same signature, and a type checker holds them to it through ``Policy``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.architecture import PolicyOutput
from common.specs import BehaviorSpec
from gateway.actor.numpy_policy import NumpyPolicy
from tandem.v1 import trainer_pb2


class Policy(Protocol):
    """The actor of one behavior."""

    #: floats of LSTM memory per agent (0: no memory); the caller carries it per agent
    memory_size: int

    def act(
        self, observations: list[np.ndarray], action_mask: np.ndarray | None, rng: np.random.Generator,
        deterministic: bool = False, memories: np.ndarray | None = None,
    ) -> PolicyOutput:
        """Chooses actions for n agents.

        Args:
            observations: per observation spec, float32 ``[n, *shape]`` (visual channels-first).
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            rng: the worker's source of randomness (a model with its own random nodes ignores it).
            deterministic: the mode (mean, most probable allowed action) instead of a sample.
            memories: float32 ``[n, memory_size]``, each agent's memory before this step
                (policies with memory; None: zeros). The output's ``memories`` follow it.

        Returns:
            ``PolicyOutput``: raw and environment continuous actions ``[n, c]``, discrete
            ``[n, branches]``, joint log-probabilities ``[n]``.
        """
        ...


def policy_from_snapshot(snapshot: trainer_pb2.PolicySnapshot, spec: BehaviorSpec | None) -> Policy:
    """The policy a snapshot describes.

    Args:
        snapshot: a parsed ``tandem.v1.PolicySnapshot``.
        spec: the behavior's spec as the instance reports it; an ONNX model is checked
            against it (None: checked later, by what the model outputs).

    Raises:
        ValueError: parameters that do not fit the architecture, or a model that does
            not fit the behavior (``OnnxModelError``).
    """
    if not snapshot.parameters and snapshot.onnx_model:
        from gateway.actor.onnx_policy import OnnxPolicy  # onnxruntime only when a model comes

        return OnnxPolicy.from_snapshot(snapshot, spec=spec)
    return NumpyPolicy.from_snapshot(snapshot)
