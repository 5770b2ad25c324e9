"""Writes a policy snapshot as an ONNX model that Unity's inference engine can run.

Why: ML-Agents users put the trained ``<Behavior>.onnx`` into their Unity project and
run it with Sentis / Inference Engine (or Barracuda in com.unity.ml-agents 2.x). The
package only accepts models that follow its model contract (model API version 3,
"MLAgents2_0"), so this module builds exactly that graph, with ``onnx.helper``, from
the same input the gateway acts with: a ``common.architecture.PolicyArchitecture`` plus
the flat parameter dictionary of ``gateway.actor.numpy_policy.NumpyPolicy``. One exporter thus serves
PPO ("gaussian") and SAC ("tanh_gaussian") and needs neither JAX nor torch.

The contract (see docs/ONNX.md for the full table):

* inputs ``obs_0 .. obs_{n-1}``: float32 ``[batch, size]`` for vector observations,
  ``[batch, channels, height, width]`` for visual ones (Unity feeds channels-first);
  ``action_masks``: float32 ``[batch, sum(branches)]``, 1 = allowed, 0 = masked, only
  when the behavior has discrete branches.
* with memory (``memory_size`` m > 0): input ``recurrent_in`` float32 ``[batch, 1, m]`` (the
  agent's ``[hidden, cell]`` before the step), output ``recurrent_out`` ``[batch, 1, m]``
  after it, last of the contract's outputs, as ML-Agents' recurrent models; the LSTM is
  one ONNX ``LSTM`` node (gates reordered from the snapshot's i, f, g, o to ONNX's i, o, f, c).
* outputs ``version_number`` (3), ``memory_size`` (m, 0 without memory); for continuous actions
  ``continuous_actions`` (sampled), ``continuous_action_output_shape``,
  ``deterministic_continuous_actions``; for discrete branches ``discrete_actions``
  (sampled, int64 indices), ``discrete_action_output_shape``,
  ``deterministic_discrete_actions``.
* observation normalization and action post-processing (PPO: ``clip(a, -3, 3) / 3``,
  SAC: ``tanh``) happen inside the graph, as ML-Agents' exported models do; both action
  outputs of a behavior are post-processed alike, so ``deterministic_continuous_actions``
  of a SAC model is ``tanh(mean)``. ML-Agents exports SAC's raw mean there; Unity copies
  that output into the agent's actions unchanged, so the raw mean would reach the agent
  outside the [-1, 1] range the policy was trained in (docs/ONNX.md, "SAC's deterministic
  output").

With ``training_outputs=True`` two outputs follow the contract's, for actors that collect
experience without Python: ``tandem_raw_continuous`` (the sample before clip/tanh) and
``tandem_log_probs`` (its joint log-probability with the sampled discrete actions).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from common import architecture as arch_mod
from common.logging import get_logger
from common.architecture import CONTINUOUS_CLIP, LEAKY_SLOPE, LOG_STD_MAX, LOG_STD_MIN, NORMALIZED_CLIP, TANH_EPS, PolicyArchitecture

#: ONNX operator set of the exported graph. 9 is what ML-Agents' own exporter writes
#: (``SerializationSettings.onnx_opset``); Barracuda (com.unity.ml-agents 2.x) and
#: Sentis / Inference Engine (opsets 7..15) both import it. See docs/ONNX.md.
OPSET = 9
#: ONNX IR version: 7 is readable by every onnxruntime since 1.6 and by Unity's
#: importers; onnx's default (its newest IR) would be refused by older readers.
IR_VERSION = 7
#: ML-Agents' ModelApiVersion.MLAgents2_0: observations named ``obs_{i}``, separate
#: continuous/discrete outputs.
MODEL_API_VERSION = 3
#: Masked logits become ``logit * allowed - MASK_PENALTY * (1 - allowed)``, the
#: arithmetic form ML-Agents' exported models use (Barracuda-friendly, no Where): the
#: probability of a masked action underflows to exactly zero. ``NumpyPolicy`` sets
#: them to -1e9 instead; the argmax and the sampled distribution are the same.
MASK_PENALTY = 1e8

BATCH = "batch"

_log = get_logger(__name__)


class ExportError(ValueError):
    """The architecture or parameters cannot be exported (the message names the bad key)."""


def export_policy(
    architecture: PolicyArchitecture,
    params: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    training_outputs: bool = False,
) -> None:
    """Writes the policy as an ML-Agents-contract ONNX model to ``path``.

    The file is written under a temporary name in the same folder and renamed, so a
    reader (Unity's importer, a gateway) never sees half a model. Parent folders are
    created; an existing file is replaced.

    Args:
        architecture: what the parameters mean (a snapshot's architecture, validated when
            it was built: ``PolicyArchitecture.from_proto`` for a received one); carries the
            behavior spec.
        params: flat float32 actor parameters named as in docs/ARCHITECTURE.md (what
            ``Learner.policy_parameters()`` returns); extra names (critic) are ignored.
        path: destination, e.g. ``results/<run-id>/<Behavior>/<Behavior>-<step>.onnx``.
        training_outputs: also output what an actor collecting experience needs
            (``tandem_raw_continuous``, ``tandem_log_probs``); Unity ignores them. Off
            for the models in ``results/``.

    Raises:
        ExportError: a parameter is missing, mis-shaped or not finite, or the
            architecture is not supported (the message names it).
        OSError: the file cannot be written.
    """
    data = export_policy_bytes(architecture, params, training_outputs)
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
    architecture: PolicyArchitecture, params: Mapping[str, np.ndarray], training_outputs: bool = False
) -> bytes:
    """Returns the serialized ONNX model (what ``export_policy`` writes)."""
    return build_policy_model(architecture, params, training_outputs).SerializeToString()


def build_policy_model(
    arch: PolicyArchitecture, params: Mapping[str, np.ndarray], training_outputs: bool = False
) -> onnx.ModelProto:
    """Builds the ONNX model of the actor described by ``arch`` and ``params``.

    Raises:
        ExportError: see ``export_policy``.
    """
    graph = _PolicyGraph(arch, _checked_params(arch, params), training_outputs).build()
    model = helper.make_model(
        graph,
        producer_name="tandem",
        producer_version="0.1.0",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.doc_string = f"Policy of behavior {arch.behavior_spec.name} (ML-Agents model API version {MODEL_API_VERSION})"
    helper.set_model_props(
        model, {"behavior": arch.behavior_spec.name, "continuous_distribution": arch.continuous_distribution}
    )
    return model


def _checked_params(arch: PolicyArchitecture, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The actor's parameters as float32, checked against ``common.architecture.parameter_shapes``."""
    spec = arch.behavior_spec
    if spec.action_spec.continuous_size == 0 and spec.action_spec.num_branches == 0:
        raise ExportError(f"behavior {spec.name}: has no actions")
    if not spec.observations:
        raise ExportError(f"behavior {spec.name}: has no observations")
    checked = {}
    for name, shape in arch_mod.parameter_shapes(arch).items():
        if name not in params:
            raise ExportError(f"params: missing {name!r}")
        value = np.asarray(params[name])
        if value.dtype.kind != "f":
            raise ExportError(f"params[{name!r}]: dtype {value.dtype} is not floating point")
        if tuple(value.shape) != shape:
            raise ExportError(f"params[{name!r}]: shape {list(value.shape)}, expected {list(shape)}")
        value = np.ascontiguousarray(value, dtype=np.float32)
        if not np.all(np.isfinite(value)):
            raise ExportError(f"params[{name!r}]: contains NaN or infinity")
        if name.startswith("normalizer/var/") and np.any(value <= 0):
            raise ExportError(f"params[{name!r}]: variance must be positive")
        checked[name] = value
    return checked


class _PolicyGraph:
    """Accumulates the nodes and initializers of one policy graph.

    Parameters keep their snapshot names as initializer names, so the model reads like
    the snapshot in a viewer such as Netron.
    """

    def __init__(self, arch: PolicyArchitecture, params: dict[str, np.ndarray], training_outputs: bool) -> None:
        self.arch = arch
        self.training_outputs = training_outputs
        #: per-agent log-probability terms of the sampled action, each float32 [batch]
        self.log_prob_terms: list[str] = []
        self.spec = arch.behavior_spec
        self.params = params
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._counter = 0

    # ---- small helpers -------------------------------------------------------------

    def _name(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def _node(self, op: str, inputs: list[str], hint: str | None = None, output: str | None = None, **attrs) -> str:
        out = output or self._name(hint or op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(op), **attrs))
        return out

    def _const(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            array = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
            self.initializers[name] = numpy_helper.from_array(array, name=name)
        return name

    def _const_int(self, name: str, value: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(value, dtype=np.int64), name=name)
        return name

    def _param(self, name: str) -> str:
        return self._const(name, self.params[name])

    def _dense(self, x: str, prefix: str) -> str:
        y = self._node("MatMul", [x, self._param(f"{prefix}/kernel")], hint=prefix)
        return self._node("Add", [y, self._param(f"{prefix}/bias")], hint=prefix)

    def _swish(self, x: str) -> str:
        return self._node("Mul", [x, self._node("Sigmoid", [x])], hint="swish")

    def _leaky_relu(self, x: str, hint: str) -> str:
        return self._node("LeakyRelu", [x], hint=hint, alpha=LEAKY_SLOPE)

    def _output(self, name: str, elem_type: int, shape: list) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def _constant_output(self, name: str, value: list) -> None:
        """A float constant output: Unity reads these to check the model against the agent."""
        array = np.asarray(value, dtype=np.float32)
        tensor = numpy_helper.from_array(array, name=f"{name}_value")
        self.nodes.append(helper.make_node("Constant", [], [name], name=self._name(name), value=tensor))
        self._output(name, TensorProto.FLOAT, list(array.shape))

    # ---- the graph -------------------------------------------------------------------

    def build(self) -> onnx.GraphProto:
        for i, obs in enumerate(self.spec.observations):
            if obs.is_visual:
                shape = [BATCH, *obs.shape]  # (C, H, W): Unity feeds channels-first
            else:
                shape = [BATCH, *obs.shape]
            self.inputs.append(helper.make_tensor_value_info(f"obs_{i}", TensorProto.FLOAT, shape))
        # the body's input: [vector obs in spec order..., visual encodings in spec order...]
        features = [self._normalized(i) for i in arch_mod.vector_indices(self.spec)]
        features += [self._visual_encoder(i) for i in arch_mod.visual_indices(self.spec)]
        if arch_mod.entity_indices(self.spec):
            self_encoding = None if not features else features[0] if len(features) == 1 else self._node(
                "Concat", features, hint="self_encoding", axis=1
            )
            features.append(self._entity_attention(self_encoding))
        hidden = features[0] if len(features) == 1 else self._node("Concat", features, hint="features", axis=1)
        for j in range(self.arch.num_layers):
            hidden = self._swish(self._dense(hidden, f"body/dense{j}"))
        if self.arch.memory_size:
            hidden = self._lstm(hidden)

        self._constant_output("version_number", [MODEL_API_VERSION])
        self._constant_output("memory_size", [self.arch.memory_size])
        action = self.spec.action_spec
        if action.continuous_size > 0:
            self._continuous_head(hidden, action.continuous_size)
        if action.num_branches > 0:
            self._discrete_head(hidden, action.discrete_branches)
        if self.arch.memory_size:
            m = self.arch.memory_size
            self.inputs.append(helper.make_tensor_value_info("recurrent_in", TensorProto.FLOAT, [BATCH, 1, m]))
            self._output("recurrent_out", TensorProto.FLOAT, [BATCH, 1, m])
        if self.training_outputs:
            self._join_log_probs()
        return helper.make_graph(
            self.nodes,
            "tandem_policy",
            self.inputs,
            self.outputs,
            initializer=list(self.initializers.values()),
        )

    def _normalized(self, i: int) -> str:
        """clip((x - mean) * (1 / sqrt(var)), -5, 5), computed as ``NumpyPolicy`` does."""
        x = f"obs_{i}"
        if not self.arch.normalize:
            return x
        inv_std = (1.0 / np.sqrt(self.params[f"normalizer/var/{i}"])).astype(np.float32)
        centered = self._node("Sub", [x, self._param(f"normalizer/mean/{i}")], hint=f"obs_{i}/centered")
        scaled = self._node("Mul", [centered, self._const(f"normalizer/inv_std/{i}", inv_std)], hint=f"obs_{i}/scaled")
        return self._node("Clip", [scaled], hint=f"obs_{i}/normalized", min=-NORMALIZED_CLIP, max=NORMALIZED_CLIP)

    def _conv(self, x: str, key: str, stride: int, pad: int) -> str:
        """A convolution with the HWIO kernel ``{key}/kernel`` stored as OIHW."""
        kernel = self.params[f"{key}/kernel"]
        return self._node(
            "Conv",
            [x, self._const(f"{key}/kernel_oihw", kernel.transpose(3, 2, 0, 1)), self._param(f"{key}/bias")],
            hint=key,
            kernel_shape=[kernel.shape[0], kernel.shape[1]],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )

    def _visual_encoder(self, i: int) -> str:
        """The architecture's visual encoder on a channels-first image; the last feature map
        is flattened in HWC order like the policy's."""
        x = f"obs_{i}"
        prefix = f"encoder/{i}"
        if self.arch.vis_encode_type == "resnet":
            for s in range(len(arch_mod.RESNET_CHANNELS)):
                x = self._conv(x, f"{prefix}/stack{s}/conv", 1, 1)
                x = self._node("MaxPool", [x], hint=f"{prefix}/stack{s}/pool", kernel_shape=[3, 3], strides=[2, 2])
                for b in range(arch_mod.RESNET_BLOCKS):
                    block = f"{prefix}/stack{s}/block{b}"
                    y = self._conv(self._swish(x), f"{block}/conv0", 1, 1)
                    y = self._conv(self._swish(y), f"{block}/conv1", 1, 1)
                    x = self._node("Add", [x, y], hint=block)
            x = self._swish(x)
        else:
            for j, (_, stride, _) in enumerate(arch_mod.PLAIN_CONVS[self.arch.vis_encode_type]):
                x = self._leaky_relu(self._conv(x, f"{prefix}/conv{j}", stride, 0), f"{prefix}/conv{j}")
        # NCHW -> NHWC before flattening, so the dense kernel sees features in the
        # (height, width, channels) order it was trained with.
        x = self._node("Transpose", [x], hint=f"{prefix}/nhwc", perm=[0, 2, 3, 1])
        x = self._node("Flatten", [x], hint=f"{prefix}/flat", axis=1)
        if self.arch.vis_encode_type == "resnet":
            return self._node("Relu", [self._dense(x, f"{prefix}/dense")], hint=prefix)
        return self._leaky_relu(self._dense(x, f"{prefix}/dense"), prefix)

    def _lstm(self, hidden: str) -> str:
        """One LSTM step from ``recurrent_in``; writes ``recurrent_out``, returns the hidden output [batch, m/2]."""
        m = self.arch.memory_size
        half = m // 2

        def onnx_gates(matrix: np.ndarray) -> np.ndarray:  # [.., 4h] i, f, g, o -> [1, 4h, ..] i, o, f, c
            i, f, g, o = np.split(matrix, 4, axis=-1)
            return np.concatenate([i, o, f, g], axis=-1).T[None]

        w = self._const("lstm/W", onnx_gates(self.params["lstm/kernel"]))
        r = self._const("lstm/R", onnx_gates(self.params["lstm/recurrent_kernel"]))
        bias = onnx_gates(self.params["lstm/bias"][None])[:, :, 0]  # [1, 4h]
        b = self._const("lstm/B", np.concatenate([bias, np.zeros_like(bias)], axis=1))
        memories = self._node("Transpose", ["recurrent_in"], hint="lstm/memories", perm=[1, 0, 2])  # [1, batch, m]
        h0 = self._node("Slice", [memories], hint="lstm/h0", axes=[2], starts=[0], ends=[half])
        c0 = self._node("Slice", [memories], hint="lstm/c0", axes=[2], starts=[half], ends=[m])
        x = self._node("Unsqueeze", [hidden], hint="lstm/x", axes=[0])  # [1, batch, width]
        y, y_h, y_c = self._name("lstm/y"), self._name("lstm/h"), self._name("lstm/c")
        self.nodes.append(
            helper.make_node("LSTM", [x, w, r, b, "", h0, c0], [y, y_h, y_c], name=self._name("LSTM"), hidden_size=half)
        )
        new = self._node("Concat", [y_h, y_c], hint="lstm/new_memories", axis=2)
        self._node("Transpose", [new], output="recurrent_out", perm=[1, 0, 2])
        return self._node("Squeeze", [y_h], hint="lstm/out", axes=[0])

    def _layer_norm(self, x: str, hint: str) -> str:
        """ML-Agents' LayerNorm over the last axis (no gain or bias)."""
        centered = self._node("Sub", [x, self._node("ReduceMean", [x], axes=[-1], keepdims=1)], hint=f"{hint}/centered")
        var = self._node("ReduceMean", [self._node("Mul", [centered, centered])], hint=f"{hint}/var", axes=[-1], keepdims=1)
        std = self._node("Sqrt", [self._node("Add", [var, self._const("layer_norm_eps", np.float32(arch_mod.LAYER_NORM_EPS))])])
        return self._node("Div", [centered, std], hint=hint)

    def _entity_attention(self, self_encoding: str | None) -> str:
        """ML-Agents' entity embedding + residual self-attention + masked mean, [batch, E]."""
        e, heads = arch_mod.ATTENTION_EMBEDDING_SIZE, arch_mod.ATTENTION_HEADS
        embedded_self = None if self_encoding is None else self._swish(self._dense(self_encoding, "attention/self/dense"))
        embeddings, masks, total = [], [], 0
        for i in arch_mod.entity_indices(self.spec):
            x = f"obs_{i}"
            count = self.spec.observations[i].shape[0]
            total += count
            squares = self._node("ReduceSum", [self._node("Mul", [x, x])], hint=f"obs_{i}/squares", axes=[2], keepdims=0)
            padding = self._node("Less", [squares, self._const("entity_threshold", np.float32(arch_mod.ENTITY_PADDING_THRESHOLD))])
            masks.append(self._node("Cast", [padding], hint=f"obs_{i}/padding", to=TensorProto.FLOAT))
            if embedded_self is not None:
                one = self._node("Unsqueeze", [embedded_self], hint="self_embedding/expanded", axes=[1])
                repeated = one if count == 1 else self._node("Concat", [one] * count, hint="self_embedding/repeated", axis=1)
                x = self._node("Concat", [repeated, x], hint=f"obs_{i}/with_self", axis=2)
            embeddings.append(self._swish(self._dense(x, f"encoder/{i}/dense")))
        joined = embeddings[0] if len(embeddings) == 1 else self._node("Concat", embeddings, hint="entities", axis=1)
        mask = masks[0] if len(masks) == 1 else self._node("Concat", masks, hint="entity_padding", axis=1)  # [batch, m]
        inp = self._layer_norm(joined, "attention/embedding_norm")
        split_shape = self._const_int(f"attention_split_{total}", np.array([-1, total, heads, e // heads]))
        q, k, v = (
            self._node("Transpose", [self._node("Reshape", [self._dense(inp, f"attention/{w}"), split_shape])], hint=f"attention/{w}/heads", perm=[0, 2, 1, 3])
            for w in ("q", "k", "v")
        )
        scores = self._node("MatMul", [q, self._node("Transpose", [k], perm=[0, 1, 3, 2])], hint="attention/scores")
        key_mask = self._node("Reshape", [mask, self._const_int(f"attention_mask_{total}", np.array([-1, 1, 1, total]))])
        keep = self._node("Sub", [self._const("one", np.float32(1.0)), key_mask], hint="attention/keep")
        scaled = self._node("Div", [self._node("Mul", [keep, scores]), self._const("attention_scale", np.float32(np.sqrt(e)))])
        penalty = self._node("Mul", [key_mask, self._const("attention_neg_inf", np.float32(arch_mod.ATTENTION_NEG_INF))])
        weights = self._node("Softmax", [self._node("Add", [scaled, penalty])], hint="attention/weights", axis=3)
        attended = self._node("Transpose", [self._node("MatMul", [weights, v])], perm=[0, 2, 1, 3])
        attended = self._node("Reshape", [attended, self._const_int(f"attention_join_{total}", np.array([-1, total, e]))])
        out = self._layer_norm(self._node("Add", [self._dense(attended, "attention/out"), inp]), "attention/residual_norm")
        kept = self._node("Sub", [self._const("one", np.float32(1.0)), mask], hint="entity_kept")  # [batch, m]
        weighted = self._node("Mul", [out, self._node("Unsqueeze", [kept], axes=[2])], hint="attention/kept_entities")
        numerator = self._node("ReduceSum", [weighted], hint="attention/sum", axes=[1], keepdims=0)
        denominator = self._node("Add", [self._node("ReduceSum", [kept], axes=[1], keepdims=1), self._const("pool_eps", np.float32(arch_mod.POOL_EPS))])
        return self._node("Div", [numerator, denominator], hint="attention/pooled")

    def _continuous_head(self, hidden: str, size: int) -> None:
        mu = self._dense(hidden, "policy/mu")
        if self.arch.continuous_distribution == "gaussian":
            log_std = self._const("policy/log_std", self.params["policy/log_std"].reshape(1, size))
        else:
            log_std = self._dense(hidden, "policy/log_std")
            log_std = self._node("Clip", [log_std], hint="policy/log_std/clipped", min=LOG_STD_MIN, max=LOG_STD_MAX)
        std = self._node("Exp", [log_std], hint="policy/std")
        noise = self._node("RandomNormalLike", [mu], hint="epsilon", dtype=TensorProto.FLOAT)
        sample = self._node("Add", [mu, self._node("Mul", [noise, std], hint="scaled_noise")], hint="sample")
        if self.arch.continuous_distribution == "gaussian":
            # what the environment receives: clip(a, -3, 3) / 3
            clip = self._const("continuous_clip", np.float32(CONTINUOUS_CLIP))
            for raw, out in ((sample, "continuous_actions"), (mu, "deterministic_continuous_actions")):
                clipped = self._node("Clip", [raw], hint=f"{out}/clipped", min=-CONTINUOUS_CLIP, max=CONTINUOUS_CLIP)
                self._node("Div", [clipped, clip], output=out)
        else:
            # tanh(mean), the mean action as the environment receives it (NumpyPolicy and
            # the JAX actor send the same); not ML-Agents' raw mean, see the module docstring
            self._node("Tanh", [sample], output="continuous_actions")
            self._node("Tanh", [mu], output="deterministic_continuous_actions")
        self._output("continuous_actions", TensorProto.FLOAT, [BATCH, size])
        self._constant_output("continuous_action_output_shape", [size])
        self._output("deterministic_continuous_actions", TensorProto.FLOAT, [BATCH, size])
        if self.training_outputs:
            self._continuous_log_prob(sample, noise, log_std, size)

    def _continuous_log_prob(self, sample: str, noise: str, log_std: str, size: int) -> None:
        """``tandem_raw_continuous`` and the Gaussian (and tanh) log-density of the sample."""
        self._node("Identity", [sample], output="tandem_raw_continuous")
        # log N(sample; mu, std) = sum(-eps^2 / 2 - log_std - log(2 pi) / 2)
        half_sq = self._node(
            "Mul", [self._node("Mul", [noise, noise]), self._const("minus_half", np.float32(-0.5))], hint="half_sq"
        )
        density = self._node("Sub", [half_sq, log_std], hint="log_density")
        density = self._node("Sub", [density, self._const("half_log_2pi", np.float32(0.5 * np.log(2 * np.pi)))])
        self.log_prob_terms.append(self._node("ReduceSum", [density], hint="log_prob_continuous", axes=[1], keepdims=0))
        if self.arch.continuous_distribution == "tanh_gaussian":
            # change of variables: - sum log(1 - tanh(u)^2 + eps)
            squashed = "continuous_actions"
            one_minus = self._node(
                "Sub", [self._const("one", np.float32(1.0)), self._node("Mul", [squashed, squashed])], hint="one_minus"
            )
            log_jac = self._node("Log", [self._node("Add", [one_minus, self._const("tanh_eps", np.float32(TANH_EPS))])])
            correction = self._node("ReduceSum", [log_jac], hint="tanh_correction", axes=[1], keepdims=0)
            self.log_prob_terms.append(self._node("Neg", [correction], hint="minus_tanh_correction"))

    def _discrete_log_prob(self, branch_logits: str, choice: str, size: int, b: int) -> None:
        """Log-probability [batch] of the sampled index ``choice`` [batch, 1] under one branch."""
        log_probs = self._node("LogSoftmax", [branch_logits], hint=f"branch{b}/log_softmax", axis=1)
        indices = self._const_int(f"branch_indices_{size}", np.arange(size, dtype=np.int64).reshape(1, size))
        one_hot = self._node("Cast", [self._node("Equal", [choice, indices])], hint=f"branch{b}/one_hot", to=TensorProto.FLOAT)
        picked = self._node("Mul", [log_probs, one_hot], hint=f"branch{b}/picked")
        self.log_prob_terms.append(self._node("ReduceSum", [picked], hint=f"branch{b}/log_prob", axes=[1], keepdims=0))

    def _join_log_probs(self) -> None:
        """The training outputs, after all of the contract's."""
        size = self.spec.action_spec.continuous_size
        if size:
            self._output("tandem_raw_continuous", TensorProto.FLOAT, [BATCH, size])
        total = self.log_prob_terms[0]
        for term in self.log_prob_terms[1:]:
            total = self._node("Add", [total, term], hint="log_prob")
        self._node("Identity", [total], output="tandem_log_probs")
        self._output("tandem_log_probs", TensorProto.FLOAT, [BATCH])

    def _discrete_head(self, hidden: str, branches: tuple[int, ...]) -> None:
        total = int(sum(branches))
        self.inputs.append(helper.make_tensor_value_info("action_masks", TensorProto.FLOAT, [BATCH, total]))
        logits = self._dense(hidden, "policy/logits")
        # action_masks: 1 = allowed, 0 = masked (Unity's convention)
        blocked = self._node("Sub", [self._const("one", np.float32(1.0)), "action_masks"], hint="blocked")
        penalty = self._node("Mul", [blocked, self._const("mask_penalty", np.float32(MASK_PENALTY))], hint="penalty")
        kept = self._node("Mul", [logits, "action_masks"], hint="kept_logits")
        masked = self._node("Sub", [kept, penalty], hint="masked_logits")
        sampled, greedy = [], []
        start = 0
        for b, size in enumerate(branches):
            branch = self._node("Slice", [masked], hint=f"branch{b}/logits", axes=[1], starts=[start], ends=[start + size])
            start += size
            sampled.append(
                self._node("Multinomial", [branch], hint=f"branch{b}/sample", dtype=TensorProto.INT64, sample_size=1)
            )
            if self.training_outputs:
                self._discrete_log_prob(branch, sampled[-1], size, b)
            greedy.append(self._node("ArgMax", [branch], hint=f"branch{b}/argmax", axis=1, keepdims=1))
        self._join(sampled, "discrete_actions")
        self._join(greedy, "deterministic_discrete_actions")
        self._output("discrete_actions", TensorProto.INT64, [BATCH, len(branches)])
        self._constant_output("discrete_action_output_shape", [list(branches)])
        self._output("deterministic_discrete_actions", TensorProto.INT64, [BATCH, len(branches)])

    def _join(self, columns: list[str], output: str) -> None:
        if len(columns) == 1:
            self._node("Identity", columns, output=output)
        else:
            self._node("Concat", columns, output=output, axis=1)
