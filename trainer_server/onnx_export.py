"""Writes a policy snapshot as an ONNX model that Unity's inference engine can run.

Why: ML-Agents users put the trained ``<Behavior>.onnx`` into their Unity project and
run it with Sentis / Inference Engine (or Barracuda in com.unity.ml-agents 2.x). The
package only accepts models that follow its model contract (model API version 3,
"MLAgents2_0"), so this module builds exactly that graph, with ``onnx.helper``, from
the same input the gateway acts with: a ``tandem.v1.PolicyArchitecture`` plus the
flat parameter dictionary of ``common.policy.NumpyPolicy``. One exporter thus serves
PPO ("gaussian") and SAC ("tanh_gaussian") and needs neither JAX nor torch.

The contract (see docs/ONNX.md for the full table):

* inputs ``obs_0 .. obs_{n-1}``: float32 ``[batch, size]`` for vector observations,
  ``[batch, channels, height, width]`` for visual ones (Unity feeds channels-first);
  ``action_masks``: float32 ``[batch, sum(branches)]``, 1 = allowed, 0 = masked, only
  when the behavior has discrete branches.
* outputs ``version_number`` (3), ``memory_size`` (0); for continuous actions
  ``continuous_actions`` (sampled), ``continuous_action_output_shape``,
  ``deterministic_continuous_actions``; for discrete branches ``discrete_actions``
  (sampled, int64 indices), ``discrete_action_output_shape``,
  ``deterministic_discrete_actions``.
* observation normalization and action post-processing (PPO: ``clip(a, -3, 3) / 3``,
  SAC: ``tanh``) happen inside the graph, as ML-Agents' exported models do.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import specs
from common.logging import get_logger
from tandem.v1 import trainer_pb2

#: ONNX operator set of the exported graph. 9 is what ML-Agents' own exporter writes
#: (``SerializationSettings.onnx_opset``); Barracuda (com.unity.ml-agents 2.x) and
#: Sentis / Inference Engine (7..15) both import it. See docs/ONNX.md.
OPSET = 9
#: ONNX IR version: 7 is readable by every onnxruntime since 1.6 and by Unity's
#: importers; onnx's default (its newest IR) would be refused by older readers.
IR_VERSION = 7
#: ML-Agents' ModelApiVersion.MLAgents2_0: observations named ``obs_{i}``, separate
#: continuous/discrete outputs.
MODEL_API_VERSION = 3

#: Normalized observation = clip((x - mean) / sqrt(var + NORMALIZER_EPSILON), -clip, clip)
NORMALIZER_EPSILON = 1e-8
NORMALIZER_CLIP = 5.0
#: The "simple" visual encoder (ML-Agents' SimpleVisualEncoder): two VALID convolutions
#: (8x8 stride 4, then 4x4 stride 2) with leaky ReLU, flattened in HWC order, then a
#: dense layer with leaky ReLU.
SIMPLE_ENCODER_STRIDES = (4, 2)
LEAKY_RELU_SLOPE = 0.01
#: SAC's state-dependent log standard deviation is clipped to this range.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
#: Masked logits become ``logit * allowed - MASK_PENALTY * (1 - allowed)``: their
#: probability underflows to exactly zero, as in ML-Agents' exported models.
MASK_PENALTY = 1e8
#: Continuous PPO actions reach the environment as clip(a, -ACTION_CLIP, ACTION_CLIP) / ACTION_CLIP.
ACTION_CLIP = 3.0

BATCH = "batch"

_log = get_logger(__name__)


class ExportError(ValueError):
    """The architecture or parameters cannot be exported (names the bad key)."""


def export_policy(
    architecture: trainer_pb2.PolicyArchitecture,
    params: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
) -> None:
    """Writes the policy as an ML-Agents-contract ONNX model to ``path``.

    The file is written to a temporary name in the same folder and renamed, so a
    reader (Unity's importer, a gateway) never sees half a model. Parent folders are
    created.

    Args:
        architecture: the snapshot's architecture; carries the behavior spec.
        params: flat float32 parameters named as in docs/ARCHITECTURE.md.
        path: destination, conventionally ``results/<run-id>/<Behavior>.onnx``.

    Raises:
        ExportError: a parameter is missing or has the wrong shape, or the
            architecture is not supported (the message names it).
        OSError: the file cannot be written.
    """
    data = export_policy_bytes(architecture, params)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _log.debug("onnx model written", path=str(path), bytes=len(data))


def export_policy_bytes(
    architecture: trainer_pb2.PolicyArchitecture, params: Mapping[str, np.ndarray]
) -> bytes:
    """Returns the serialized ONNX model (what ``export_policy`` writes)."""
    return build_policy_model(architecture, params).SerializeToString()


def build_policy_model(
    architecture: trainer_pb2.PolicyArchitecture, params: Mapping[str, np.ndarray]
) -> onnx.ModelProto:
    """Builds the ONNX model of the actor described by ``architecture`` and ``params``.

    Raises:
        ExportError: see ``export_policy``.
    """
    try:
        spec = specs.from_proto(architecture.behavior_spec)
    except ValueError as e:
        raise ExportError(f"architecture.{e}") from None
    builder = _PolicyGraph(architecture, spec, params)
    graph = builder.build()
    model = helper.make_model(
        graph,
        producer_name="tandem",
        producer_version="0.1.0",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.doc_string = f"Policy of behavior {spec.name} (ML-Agents model API version {MODEL_API_VERSION})"
    helper.set_model_props(
        model,
        {
            "behavior": spec.name,
            "continuous_distribution": architecture.continuous_distribution or "gaussian",
        },
    )
    return model


class _PolicyGraph:
    """Accumulates nodes and initializers for one policy graph."""

    def __init__(
        self,
        architecture: trainer_pb2.PolicyArchitecture,
        spec: specs.BehaviorSpec,
        params: Mapping[str, np.ndarray],
    ) -> None:
        self.arch = architecture
        self.spec = spec
        self.params = params
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = 0
        distribution = architecture.continuous_distribution or "gaussian"
        if distribution not in ("gaussian", "tanh_gaussian"):
            raise ExportError(
                f"architecture.continuous_distribution: {distribution!r} is not 'gaussian' or 'tanh_gaussian'"
            )
        self.distribution = distribution
        encoder = architecture.vis_encode_type or "simple"
        if encoder != "simple":
            raise ExportError(f"architecture.vis_encode_type: {encoder!r} is not supported (only 'simple')")
        if architecture.num_layers < 0 or architecture.hidden_units <= 0:
            raise ExportError(
                "architecture: hidden_units must be positive and num_layers non-negative, "
                f"got {architecture.hidden_units} and {architecture.num_layers}"
            )
        action = spec.action_spec
        if action.continuous_size == 0 and action.num_branches == 0:
            raise ExportError("architecture.behavior_spec.action_spec: the behavior has no actions")
        for i, obs in enumerate(spec.observations):
            if len(obs.shape) not in (1, 3):
                raise ExportError(
                    f"architecture.behavior_spec.observations[{i}].shape: {list(obs.shape)} "
                    "is neither a vector nor an image (height, width, channels)"
                )
        if not spec.observations:
            raise ExportError("architecture.behavior_spec.observations: the behavior has no observations")

    # ---- small helpers -------------------------------------------------------------

    def _name(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def _node(self, op: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs) -> str:
        out = output or self._name(hint or op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(op), **attrs))
        return out

    def _param(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if key not in self.params:
            raise ExportError(f"params: missing {key!r}")
        value = np.asarray(self.params[key])
        if value.dtype.kind != "f":
            raise ExportError(f"params[{key!r}]: dtype {value.dtype} is not floating point")
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ExportError(f"params[{key!r}]: shape {list(value.shape)}, expected {list(shape)}")
        if not np.all(np.isfinite(value)):
            raise ExportError(f"params[{key!r}]: contains NaN or infinity")
        return value.astype(np.float32, copy=False)

    def _const(self, name: str, value: np.ndarray) -> str:
        """Adds ``value`` as an initializer named ``name`` (parameter names are kept)."""
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(value), name=name)
        return name

    def _dense(self, x: str, prefix: str, in_size: int, out_size: int | None = None) -> tuple[str, int]:
        kernel = self._param(f"{prefix}/kernel")
        if kernel.ndim != 2 or kernel.shape[0] != in_size or (out_size is not None and kernel.shape[1] != out_size):
            expected = [in_size, out_size if out_size is not None else "?"]
            raise ExportError(f"params[{prefix + '/kernel'!r}]: shape {list(kernel.shape)}, expected {expected}")
        bias = self._param(f"{prefix}/bias", (kernel.shape[1],))
        y = self._node("MatMul", [x, self._const(f"{prefix}/kernel", kernel)], hint=prefix)
        y = self._node("Add", [y, self._const(f"{prefix}/bias", bias)], hint=prefix)
        return y, int(kernel.shape[1])

    def _swish(self, x: str) -> str:
        return self._node("Mul", [x, self._node("Sigmoid", [x])], hint="swish")

    def _output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def _constant_output(self, name: str, value: np.ndarray) -> None:
        """A constant output node: Unity reads these to check the model against the agent."""
        tensor = numpy_helper.from_array(value.astype(np.float32), name=f"{name}_value")
        self.nodes.append(helper.make_node("Constant", [], [name], name=self._name(name), value=tensor))
        self._output(name, TensorProto.FLOAT, list(value.shape))

    # ---- the graph -------------------------------------------------------------------

    def build(self) -> onnx.GraphProto:
        vector_features: list[tuple[str, int]] = []
        visual_features: list[tuple[str, int]] = []
        for i, obs in enumerate(self.spec.observations):
            name = f"obs_{i}"
            if len(obs.shape) == 1:
                (size,) = obs.shape
                self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, size]))
                vector_features.append((self._normalize(name, i, size), size))
            else:
                height, width, channels = obs.shape
                self.inputs.append(
                    helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, channels, height, width])
                )
                visual_features.append(self._simple_encoder(name, i, (height, width, channels)))
        features = vector_features + visual_features
        if len(features) == 1:
            hidden, size = features[0]
        else:
            hidden = self._node("Concat", [f for f, _ in features], hint="features", axis=1)
            size = sum(s for _, s in features)
        for j in range(self.arch.num_layers):
            hidden, size = self._dense(hidden, f"body/dense{j}", size, self.arch.hidden_units)
            hidden = self._swish(hidden)

        self._constant_output("version_number", np.array([MODEL_API_VERSION]))
        self._constant_output("memory_size", np.array([0]))
        action = self.spec.action_spec
        if action.continuous_size > 0:
            self._continuous_head(hidden, size, action.continuous_size)
        if action.num_branches > 0:
            self._discrete_head(hidden, size, action.discrete_branches)
        return helper.make_graph(
            self.nodes,
            "tandem_policy",
            self.inputs,
            self.outputs,
            initializer=list(self.initializers.values()),
        )

    def _normalize(self, x: str, index: int, size: int) -> str:
        if not self.arch.normalize:
            return x
        mean = self._param(f"normalizer/mean/{index}", (size,))
        var = self._param(f"normalizer/var/{index}", (size,))
        if np.any(var < 0):
            raise ExportError(f"params['normalizer/var/{index}']: variance must not be negative")
        centered = self._node("Sub", [x, self._const(f"normalizer/mean/{index}", mean)], hint=f"obs_{index}_centered")
        # Division by the (constant) standard deviation, as NumpyPolicy does, so that
        # the result matches it bit for bit as far as float32 allows.
        std = np.sqrt(var.astype(np.float64) + NORMALIZER_EPSILON).astype(np.float32)
        scaled = self._node("Div", [centered, self._const(f"normalizer/std/{index}", std)], hint=f"obs_{index}_scaled")
        return self._node("Clip", [scaled], hint=f"obs_{index}_normalized", min=-NORMALIZER_CLIP, max=NORMALIZER_CLIP)

    def _simple_encoder(self, x: str, index: int, hwc: tuple[int, int, int]) -> tuple[str, int]:
        height, width, channels = hwc
        prefix = f"encoder/{index}"
        in_channels = channels
        for layer, stride in enumerate(SIMPLE_ENCODER_STRIDES):
            key = f"{prefix}/conv{layer}"
            kernel = self._param(f"{key}/kernel")  # HWIO
            if kernel.ndim != 4 or kernel.shape[2] != in_channels:
                raise ExportError(
                    f"params[{key + '/kernel'!r}]: shape {list(kernel.shape)}, expected [kh, kw, {in_channels}, out]"
                )
            kh, kw, _, out_channels = kernel.shape
            bias = self._param(f"{key}/bias", (out_channels,))
            height, width = (height - kh) // stride + 1, (width - kw) // stride + 1
            if height <= 0 or width <= 0:
                raise ExportError(
                    f"architecture.behavior_spec.observations[{index}].shape: {list(hwc)} is too small "
                    "for the 'simple' visual encoder"
                )
            oihw = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            x = self._node(
                "Conv",
                [x, self._const(f"{key}/kernel_oihw", oihw), self._const(f"{key}/bias", bias)],
                hint=key,
                kernel_shape=[int(kh), int(kw)],
                strides=[stride, stride],
                pads=[0, 0, 0, 0],
            )
            x = self._node("LeakyRelu", [x], hint=key, alpha=LEAKY_RELU_SLOPE)
            in_channels = out_channels
        # The policy flattens feature maps in HWC order: NCHW -> NHWC, then flatten.
        x = self._node("Transpose", [x], hint=f"{prefix}/nhwc", perm=[0, 2, 3, 1])
        x = self._node("Flatten", [x], hint=f"{prefix}/flat", axis=1)
        x, size = self._dense(x, f"{prefix}/dense", height * width * in_channels, self.arch.hidden_units)
        return self._node("LeakyRelu", [x], hint=prefix, alpha=LEAKY_RELU_SLOPE), size

    def _continuous_head(self, hidden: str, size: int, act_size: int) -> None:
        mu, _ = self._dense(hidden, "policy/mu", size, act_size)
        if self.distribution == "gaussian":
            log_std = self._param("policy/log_std", (act_size,))
            std = self._node("Exp", [self._const("policy/log_std", log_std.reshape(1, act_size))], hint="std")
        else:
            log_std, _ = self._dense(hidden, "policy/log_std", size, act_size)
            log_std = self._node("Clip", [log_std], hint="log_std_clipped", min=LOG_STD_MIN, max=LOG_STD_MAX)
            std = self._node("Exp", [log_std], hint="std")
        noise = self._node("RandomNormalLike", [mu], hint="epsilon", dtype=TensorProto.FLOAT)
        sample = self._node("Add", [mu, self._node("Mul", [noise, std], hint="scaled_noise")], hint="sample")
        if self.distribution == "gaussian":
            sampled = self._node(
                "Div",
                [self._node("Clip", [sample], min=-ACTION_CLIP, max=ACTION_CLIP), self._const("action_clip", np.float32(ACTION_CLIP))],
                output="continuous_actions",
            )
            self._node(
                "Div",
                [self._node("Clip", [mu], min=-ACTION_CLIP, max=ACTION_CLIP), "action_clip"],
                output="deterministic_continuous_actions",
            )
        else:
            self._node("Tanh", [sample], output="continuous_actions")
            self._node("Tanh", [mu], output="deterministic_continuous_actions")
        self._output("continuous_actions", TensorProto.FLOAT, [BATCH, act_size])
        self._constant_output("continuous_action_output_shape", np.array([act_size]))
        self._output("deterministic_continuous_actions", TensorProto.FLOAT, [BATCH, act_size])

    def _discrete_head(self, hidden: str, size: int, branches: tuple[int, ...]) -> None:
        total = int(sum(branches))
        self.inputs.append(helper.make_tensor_value_info("action_masks", TensorProto.FLOAT, [BATCH, total]))
        logits, _ = self._dense(hidden, "policy/logits", size, total)
        # allowed = 1, masked = 0: logit * allowed - penalty * (1 - allowed)
        blocked = self._node(
            "Sub", [self._const("one", np.float32(1.0)), "action_masks"], hint="blocked"
        )
        penalty = self._node("Mul", [blocked, self._const("mask_penalty", np.float32(MASK_PENALTY))], hint="penalty")
        masked = self._node("Sub", [self._node("Mul", [logits, "action_masks"]), penalty], hint="masked_logits")
        sampled, greedy = [], []
        start = 0
        for b, branch in enumerate(branches):
            branch_logits = self._node(
                "Slice", [masked], hint=f"branch{b}_logits", axes=[1], starts=[start], ends=[start + branch]
            )
            start += branch
            sampled.append(
                self._node(
                    "Multinomial", [branch_logits], hint=f"branch{b}_sample", dtype=TensorProto.INT64, sample_size=1
                )
            )
            greedy.append(self._node("ArgMax", [branch_logits], hint=f"branch{b}_argmax", axis=1, keepdims=1))
        self._join(sampled, "discrete_actions")
        self._join(greedy, "deterministic_discrete_actions")
        self._output("discrete_actions", TensorProto.INT64, [BATCH, len(branches)])
        self._constant_output("discrete_action_output_shape", np.array([list(branches)]))
        self._output("deterministic_discrete_actions", TensorProto.INT64, [BATCH, len(branches)])

    def _join(self, columns: list[str], output: str) -> None:
        if len(columns) == 1:
            self._node("Identity", columns, output=output)
        else:
            self._node("Concat", columns, output=output, axis=1)
