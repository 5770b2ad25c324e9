"""Acting with an exported ONNX model: how a user checks a model without Unity.

Why: ``results/<run-id>/<Behavior>.onnx`` is what Unity runs; ``tandem-gateway
--policy <Behavior>=<file>.onnx`` runs the same file against a build (or the stand-in)
so the user sees the mean reward it earns before putting it into the Unity project.
Snapshots that carry only ``onnx_model`` (no ``parameters``) are acted with here too,
which is the path a non-Python gateway follows with any ONNX runtime (docs/ONNX.md).

``OnnxPolicy`` implements ``gateway.actor.policy.Policy`` (as ``NumpyPolicy`` does) and runs the
model with onnxruntime on CPU (one thread: a gateway worker steps one Unity instance
on one core). Conventions it bridges:

* masks: the gateway's steps carry bool ``[n, sum(branches)]`` with true = NOT allowed;
  the model's ``action_masks`` input is float32 with 1 = allowed;
* discrete actions: the model outputs int64 indices, mlagents wants int32;
* randomness: sampled actions come from the graph's own ``RandomNormalLike`` /
  ``Multinomial`` nodes, so the ``rng`` argument is not used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.architecture import PolicyOutput
from common.specs import BehaviorSpec

#: the model API version of com.unity.ml-agents 2.x+ ("MLAgents2_0"), what the exporter writes
MODEL_API_VERSION = 3

class OnnxModelError(ValueError):
    """A model that cannot act for a behavior; the message names the file (or snapshot) and why."""


def _session(model: bytes, source: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime's warnings would go to stderr unstructured
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad protobufs/graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxModelError(f"{source}: not a loadable ONNX model ({first})") from None


def _static(dim) -> int | None:
    """A fixed dimension of an onnxruntime shape, or None for a symbolic one ('batch', None)."""
    return dim if isinstance(dim, int) and dim >= 0 else None


class OnnxPolicy:
    """The actor of one behavior, run from an ML-Agents-contract ONNX model.

    Args:
        model: the serialized ONNX model (a ``.onnx`` file's bytes, or ``PolicySnapshot.onnx_model``).
        source: how errors name the model (a path, or "snapshot of <behavior> v<version>").
        spec: when given, the model is checked against it (``check_spec``).

    Raises:
        OnnxModelError: the bytes are not an ONNX model, the model does not follow the
            contract (no ``obs_0``, no action outputs, a ``memory_size`` that does not match
            ``recurrent_in``), or it does not fit ``spec``. Recurrent models (``recurrent_in``
            ``[batch, 1, m]`` and ``recurrent_out``, ML-Agents' contract) are run with the
            memories the caller carries per agent.
    """

    def __init__(self, model: bytes, source: str = "model", spec: BehaviorSpec | None = None) -> None:
        self.source = source
        self.session = _session(model, source)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._outputs = {o.name: o for o in self.session.get_outputs()}
        self.num_observations = 0
        while f"obs_{self.num_observations}" in inputs:
            self.num_observations += 1
        if self.num_observations == 0:
            raise OnnxModelError(
                f"{source}: has no input obs_0; inputs are {sorted(inputs)} "
                "(expected the ML-Agents model contract: obs_0..obs_{{n-1}}, action_masks)"
            )
        extra = sorted(set(inputs) - {f"obs_{i}" for i in range(self.num_observations)} - {"action_masks", "recurrent_in"})
        if extra:
            raise OnnxModelError(f"{source}: unexpected inputs {extra} (other model API versions are not supported)")
        #: floats of memory per agent (``recurrent_in``'s last dimension), 0 for a feed-forward model
        self.memory_size = 0
        if "recurrent_in" in inputs:
            self.memory_size = _static(inputs["recurrent_in"].shape[-1]) or 0
            if not self.memory_size or "recurrent_out" not in self._outputs:
                raise OnnxModelError(f"{source}: recurrent_in needs a static memory size and a recurrent_out output")
        for name, value in inputs.items():
            if value.type != "tensor(float)":
                raise OnnxModelError(f"{source}: input {name} is {value.type}, expected tensor(float)")
        self.obs_shapes = [list(inputs[f"obs_{i}"].shape) for i in range(self.num_observations)]
        self.has_masks = "action_masks" in inputs
        self.mask_width = _static(inputs["action_masks"].shape[-1]) if self.has_masks else 0
        self.has_continuous = "deterministic_continuous_actions" in self._outputs
        self.has_discrete = "deterministic_discrete_actions" in self._outputs
        if not (self.has_continuous or self.has_discrete):
            raise OnnxModelError(
                f"{source}: has neither deterministic_continuous_actions nor deterministic_discrete_actions; "
                f"outputs are {self.output_names}"
            )
        if self.has_discrete and not self.has_masks:
            raise OnnxModelError(f"{source}: has discrete actions but no action_masks input")
        self.has_training_outputs = "tandem_log_probs" in self._outputs and (
            not self.has_continuous or "tandem_raw_continuous" in self._outputs
        )
        metadata = self.session.get_modelmeta().custom_metadata_map
        #: the fully qualified behavior name the exporter recorded, or None (other exporters)
        self.behavior: str | None = metadata.get("behavior")
        self._checked_spec: BehaviorSpec | None = None
        if spec is not None:
            self.check_spec(spec)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], spec: BehaviorSpec | None = None) -> "OnnxPolicy":
        """Loads ``path``.

        Raises:
            OnnxModelError: the file is missing, unreadable, not ONNX, or does not fit ``spec``.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise OnnxModelError(f"{path}: cannot read the model ({e.strerror or e})") from None
        return cls(data, source=str(path), spec=spec)

    @classmethod
    def from_snapshot(cls, snapshot, spec: BehaviorSpec | None = None) -> "OnnxPolicy":
        """Builds the policy from a ``tandem.v1.PolicySnapshot`` that carries ``onnx_model``.

        A snapshot to learn from (not ``deterministic``) needs the training outputs
        (``export_policy_bytes(..., training_outputs=True)``): trajectories carry the raw
        continuous sample and the log-probability.

        Raises:
            OnnxModelError: no ``onnx_model``, a bad model, or missing training outputs.
        """
        source = f"snapshot of {snapshot.behavior} v{snapshot.version} (onnx_model)"
        if not snapshot.onnx_model:
            raise OnnxModelError(f"{source}: is empty")
        policy = cls(bytes(snapshot.onnx_model), source=source, spec=spec)
        if not snapshot.deterministic and not policy.has_training_outputs:
            raise OnnxModelError(
                f"{source}: a training snapshot needs the outputs tandem_raw_continuous and tandem_log_probs "
                "(export with training_outputs=True), or set deterministic"
            )
        return policy

    def check_spec(self, spec: BehaviorSpec) -> None:
        """Checks that the model's inputs and outputs fit ``spec``, as Unity checks a model for an agent.

        Runs the model once on one all-zero agent to read its constant outputs
        (``version_number``, ``memory_size``, the action output shapes).

        Raises:
            OnnxModelError: naming the model, the behavior and the first mismatch.
        """
        where = f"{self.source} does not fit behavior {spec.name}"
        if self.num_observations != len(spec.observations):
            raise OnnxModelError(
                f"{where}: the model takes {self.num_observations} observations (obs_0..obs_{self.num_observations - 1}), "
                f"the behavior has {len(spec.observations)}"
            )
        for i, (shape, obs) in enumerate(zip(self.obs_shapes, spec.observations)):
            dims = shape[1:]
            if len(dims) != len(obs.shape) or any(
                _static(d) is not None and _static(d) != s for d, s in zip(dims, obs.shape)
            ):
                raise OnnxModelError(
                    f"{where}: obs_{i} has shape {shape}, the behavior's observation {i} ({obs.name!r}) is "
                    f"{list(obs.shape)} per agent{' (visual observations are channels-first)' if obs.is_visual else ''}"
                )
        a = spec.action_spec
        if bool(a.continuous_size) != self.has_continuous:
            raise OnnxModelError(
                f"{where}: the behavior has {a.continuous_size} continuous actions, the model "
                f"{'has' if self.has_continuous else 'has no'} continuous action outputs"
            )
        if bool(a.num_branches) != self.has_discrete:
            raise OnnxModelError(
                f"{where}: the behavior has discrete branches {list(a.discrete_branches)}, the model "
                f"{'has' if self.has_discrete else 'has no'} discrete action outputs"
            )
        if self.has_masks and self.mask_width is not None and self.mask_width != a.mask_size:
            raise OnnxModelError(
                f"{where}: action_masks is {self.mask_width} wide, the behavior's branches {list(a.discrete_branches)} "
                f"sum to {a.mask_size}"
            )
        probe = self._run(
            [np.zeros((1, *o.shape), np.float32) for o in spec.observations],
            np.zeros((1, a.mask_size), bool) if a.num_branches else None,
            [n for n in ("version_number", "memory_size", "deterministic_continuous_actions",
                         "deterministic_discrete_actions", "discrete_action_output_shape") if n in self._outputs],
        )
        version = probe.get("version_number")
        if version is None or int(np.asarray(version).ravel()[0]) != MODEL_API_VERSION:
            raise OnnxModelError(
                f"{where}: version_number is {None if version is None else np.asarray(version).ravel().tolist()}, "
                f"expected [{MODEL_API_VERSION}] (ML-Agents model API 2.0)"
            )
        memory = probe.get("memory_size")
        if memory is not None and int(np.asarray(memory).ravel()[0]) != self.memory_size:
            raise OnnxModelError(
                f"{where}: memory_size is {np.asarray(memory).ravel().tolist()}, recurrent_in carries {self.memory_size}"
            )
        if a.continuous_size:
            got = np.asarray(probe["deterministic_continuous_actions"]).shape
            if got != (1, a.continuous_size):
                raise OnnxModelError(
                    f"{where}: deterministic_continuous_actions is {list(got[1:])} per agent, "
                    f"the behavior has {a.continuous_size} continuous actions"
                )
        if a.num_branches:
            branches = probe.get("discrete_action_output_shape")
            if branches is not None and [int(b) for b in np.asarray(branches).ravel()] != list(a.discrete_branches):
                raise OnnxModelError(
                    f"{where}: discrete_action_output_shape is {[int(b) for b in np.asarray(branches).ravel()]}, "
                    f"the behavior's branches are {list(a.discrete_branches)}"
                )
            got = np.asarray(probe["deterministic_discrete_actions"]).shape
            if got != (1, a.num_branches):
                raise OnnxModelError(
                    f"{where}: deterministic_discrete_actions is {list(got[1:])} per agent, "
                    f"the behavior has {a.num_branches} branches"
                )
        self._checked_spec = spec

    def _run(
        self, observations: list[np.ndarray], action_mask: np.ndarray | None, names: list[str], memories: np.ndarray | None = None
    ) -> dict:
        if len(observations) != self.num_observations:
            raise ValueError(f"{self.source}: {len(observations)} observations given, the model takes {self.num_observations}")
        feeds = {f"obs_{i}": np.ascontiguousarray(o, dtype=np.float32) for i, o in enumerate(observations)}
        if self.memory_size:
            n = feeds["obs_0"].shape[0]
            if memories is None:
                memories = np.zeros((n, self.memory_size), np.float32)
            feeds["recurrent_in"] = np.ascontiguousarray(memories, dtype=np.float32).reshape(n, 1, self.memory_size)
        if self.has_masks:
            n = feeds["obs_0"].shape[0]
            if action_mask is None:
                width = self.mask_width if self.mask_width is not None else 0
                feeds["action_masks"] = np.ones((n, width), np.float32)
            else:
                # the gateway's true = NOT allowed -> the model's 1.0 = allowed
                feeds["action_masks"] = (~np.asarray(action_mask, dtype=bool)).astype(np.float32)
        return dict(zip(names, self.session.run(names, feeds)))

    def act(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None,
        rng: np.random.Generator | None = None,
        deterministic: bool = False,
        memories: np.ndarray | None = None,
    ) -> PolicyOutput:
        """Chooses actions for n agents (``NumpyPolicy.act``'s interface).

        Args:
            observations: per observation spec, float32 ``[n, *shape]`` (visual channels-first).
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            rng: unused: the model samples with its own random nodes.
            deterministic: the ``deterministic_*`` outputs (mean, most probable allowed action).
            memories: recurrent models: float32 ``[n, memory_size]`` before the step (None: zeros);
                the output's ``memories`` is ``recurrent_out``.

        Returns:
            ``PolicyOutput``. Deterministic: ``continuous`` equals ``env_continuous`` (the model
            gives only the processed mean) and ``log_probs`` are zeros: nothing is learned from
            them. Sampled: needs the training outputs (``has_training_outputs``).

        Raises:
            ValueError: sampling without training outputs, or observations that do not fit.
        """
        n = int(np.asarray(observations[0]).shape[0])
        names = []
        if deterministic:
            if self.has_continuous:
                names.append("deterministic_continuous_actions")
            if self.has_discrete:
                names.append("deterministic_discrete_actions")
        else:
            if not self.has_training_outputs:
                raise ValueError(f"{self.source}: sampling for training needs tandem_raw_continuous and tandem_log_probs")
            if self.has_continuous:
                names += ["continuous_actions", "tandem_raw_continuous"]
            if self.has_discrete:
                names.append("discrete_actions")
            names.append("tandem_log_probs")
        if self.memory_size:
            names.append("recurrent_out")
        out = self._run(observations, action_mask, names, memories) if n else {}
        c, b = self._action_sizes()
        if deterministic:
            env = out.get("deterministic_continuous_actions", np.zeros((n, c), np.float32))
            raw = env
            discrete = out.get("deterministic_discrete_actions", np.zeros((n, b), np.int64))
            log_probs = np.zeros(n, np.float32)
        else:
            env = out.get("continuous_actions", np.zeros((n, c), np.float32))
            raw = out.get("tandem_raw_continuous", env)
            discrete = out.get("discrete_actions", np.zeros((n, b), np.int64))
            log_probs = out.get("tandem_log_probs", np.zeros(n, np.float32))
        return PolicyOutput(
            continuous=np.asarray(raw, np.float32).reshape(n, c),
            discrete=np.asarray(discrete).astype(np.int32).reshape(n, b),
            log_probs=np.asarray(log_probs, np.float32).reshape(n),
            env_continuous=np.asarray(env, np.float32).reshape(n, c),
            memories=(
                np.asarray(out.get("recurrent_out", np.zeros((n, self.memory_size))), np.float32).reshape(n, self.memory_size)
                if self.memory_size else None
            ),
        )

    def _action_sizes(self) -> tuple[int, int]:
        """(continuous size, number of branches): the checked spec's, else the model's outputs'."""
        if self._checked_spec is not None:
            a = self._checked_spec.action_spec
            return a.continuous_size, a.num_branches
        sizes = []
        for present, output in ((self.has_continuous, "deterministic_continuous_actions"),
                                (self.has_discrete, "deterministic_discrete_actions")):
            sizes.append((_static(self._outputs[output].shape[-1]) or 0) if present else 0)
        return sizes[0], sizes[1]
