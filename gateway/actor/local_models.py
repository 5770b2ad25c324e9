"""Local inference (``--policy BEHAVIOR=PATH.onnx``): snapshots from model files instead of a trainer.

Why: a user checks an exported model against a build without a trainer. Each model
file becomes a deterministic ``PolicySnapshot`` that carries only ``onnx_model``,
checked against the behavior's spec; the workers act with it (``OnnxPolicy``) and
stream nothing, so there is no chunk buffer and no connection here.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from common.logging import get_logger
from common.specs import BehaviorSpec
from gateway.actor.onnx_policy import OnnxModelError, OnnxPolicy
from gateway.options import InferenceOptions
from tandem.v1 import trainer_pb2


class LocalModels:
    """Snapshots from ``--policy`` model files (a ``SnapshotSource``, like ``TrainerLink``).

    Behaviors announced before ``start`` are checked at ``start``: a behavior without a
    model, a model for a behavior the environment does not have, or a model that does
    not fit its behavior raises ``OnnxModelError`` (the gateway exits). A behavior that
    appears later gets its model if it fits; otherwise an error or warning is logged
    and its agents act randomly (after ``unknown_behavior_wait_s``).

    Args:
        options: the ``--policy`` models.
        on_snapshot: called with each behavior's serialized ``PolicySnapshot`` (version 1, deterministic).

    Raises:
        OnnxModelError: a model file is missing or not an ONNX model of the contract.
    """

    def __init__(self, options: InferenceOptions, on_snapshot: Callable[[bytes], None]) -> None:
        self.options = options
        self._on_snapshot = on_snapshot
        self.models: dict[str, bytes] = {}
        for name, path in options.policies:
            OnnxPolicy.from_file(path)  # fails fast on a file that is not a model
            self.models[name] = Path(path).read_bytes()
        self.paths = dict(options.policies)
        self._specs: dict[str, BehaviorSpec] = {}
        self._started = False
        self._lock = threading.Lock()
        self.log = get_logger("gateway.local_models")

    def start(self) -> None:
        """Checks the behaviors seen so far against the models and sends their snapshots.

        Raises:
            OnnxModelError: naming the behavior or model file that does not fit.
        """
        with self._lock:
            specs = dict(self._specs)
            self._started = True
        heuristics = set(self.options.heuristics)  # acted by the workers' scripted expert, no snapshot
        specs = {name: spec for name, spec in specs.items() if spec.brain_name not in heuristics}
        bases = {spec.brain_name for spec in specs.values()}
        missing = sorted({spec.brain_name for spec in specs.values() if spec.brain_name not in self.models})
        if missing:
            raise OnnxModelError(
                f"behaviors {missing} have no model: give --policy {missing[0]}=PATH.onnx for each "
                f"(models given for {sorted(self.models)})"
            )
        unused = sorted(set(self.models) - bases)
        if unused:
            raise OnnxModelError(
                f"--policy {unused[0]}={self.paths[unused[0]]}: the environment has no behavior {unused[0]!r} "
                f"(its behaviors: {sorted(bases)})"
            )
        snapshots = [self._snapshot(spec) for spec in specs.values()]  # every check before any is sent
        for snapshot in snapshots:
            self._on_snapshot(snapshot)

    def _snapshot(self, spec: BehaviorSpec) -> bytes:
        model = self.models[spec.brain_name]
        OnnxPolicy(model, source=self.paths[spec.brain_name], spec=spec)
        self.log.info("model fits", behavior=spec.name, model=self.paths[spec.brain_name])
        snapshot = trainer_pb2.PolicySnapshot(behavior=spec.name, version=1, deterministic=True, onnx_model=model)
        return snapshot.SerializeToString()

    def announce(self, spec: BehaviorSpec) -> None:
        """A behavior the workers saw: checked at ``start``, or at once when it appears later."""
        with self._lock:
            self._specs[spec.name] = spec
            started = self._started
        if not started or spec.brain_name in self.options.heuristics:
            return
        if spec.brain_name not in self.models:
            self.log.warning(
                "new behavior has no --policy model: its agents act randomly", behavior=spec.name
            )
            return
        try:
            snapshot = self._snapshot(spec)
        except OnnxModelError as e:
            self.log.error("model does not fit a new behavior: its agents act randomly", error=str(e))
            return
        self._on_snapshot(snapshot)

    def stop(self) -> None:
        """Nothing to stop: the snapshots were sent at ``start`` and ``announce``."""
