"""What a policy snapshot is: its architecture, its parameter names and shapes, its wire form.

Why: the trainer (JAX learners, ONNX export) and the gateway (numpy and ONNX actors) must
agree on what every parameter of a snapshot means. This module is that contract, shared by
both services (``docs/ARCHITECTURE.md``, "Policy parameter names"). The numbers are
computed by ``gateway/numpy_policy.py`` (numpy, the reference forward) and by
``trainer_server/networks.py`` / ``distributions.py`` (JAX); tests hold them equal to ~1e-5.

Network (ML-Agents-like, ``vis_encode_type: simple``):

* vector observation i: ``clip((x - normalizer/mean/{i}) / sqrt(normalizer/var/{i}), -5, 5)``
  when ``normalize`` (ML-Agents' Normalizer; var is the running variance), else x as is;
* visual observation i (channels-first ``(C, H, W)`` as mlagents-envs and Unity give it,
  float in [0, 1], never normalized; moved to HWC inside): conv 8x8 stride 4 with 16
  filters, leaky ReLU (0.01), conv 4x4 stride 2 with 32 filters, leaky ReLU, flatten in
  HWC order, dense to ``hidden_units``, leaky ReLU; "valid" padding, kernels HWIO;
* other visual encoders (``vis_encode_type`` nature_cnn, resnet, match3, fully_connected):
  ML-Agents' layers, named by ``visual_encoder_shapes``; each image side at least
  ``MIN_VISUAL_SIZE[vis_encode_type]``;
* variable-length observations ``[max_entities, entity_size]`` (BufferSensor; all-zero rows
  are padding): ML-Agents' entity embedding and residual self-attention (``attention_shapes``),
  pooled to ``ATTENTION_EMBEDDING_SIZE`` values;
* body: concatenation ``[vector obs in spec order..., visual encodings in spec order...,
  attention]`` through ``num_layers`` dense layers of ``hidden_units`` with swish;
* memory (``memory_size`` m > 0, ML-Agents' ``network_settings.memory``): the body's output
  goes through one LSTM layer of m/2 units (gates in torch's order input, forget, cell,
  output: ``lstm/kernel`` [body width, 2m], ``lstm/recurrent_kernel`` [m/2, 2m] and one
  ``lstm/bias`` [2m], the sum of torch's two biases); an agent's memory is
  ``[hidden m/2, cell m/2]`` as ML-Agents' ``recurrent_in``/``recurrent_out`` carry it, and
  the heads read the LSTM's hidden output (width m/2);
* heads: Gaussian mean ``policy/mu``; ``policy/log_std`` [c] (``gaussian``, PPO) or a dense
  ``policy/log_std`` head clipped to [-20, 2] (``tanh_gaussian``, SAC); discrete logits
  ``policy/logits`` [h, sum(branches)], masked entries (true = not allowed) set to
  ``MASKED_LOGIT`` before a per-branch softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from common import specs as specs_mod
from common import tensor
from common.specs import BehaviorSpec

#: logit given to actions the mask forbids (true = not allowed); exp() of it is 0 in float32
MASKED_LOGIT = -1.0e9
#: ML-Agents' normalized observations are clipped to [-NORMALIZED_CLIP, NORMALIZED_CLIP]
NORMALIZED_CLIP = 5.0
#: PPO's continuous actions reach the environment as clip(a, -CONTINUOUS_CLIP, CONTINUOUS_CLIP) / CONTINUOUS_CLIP
CONTINUOUS_CLIP = 3.0
#: tanh_gaussian: log_std head output is clipped to this range (ML-Agents' conditional sigma)
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
#: tanh_gaussian: log(1 - tanh(u)^2 + TANH_EPS) in the change-of-variables correction
TANH_EPS = 1.0e-6
#: leaky ReLU slope of the visual encoder (torch's default, as ML-Agents uses)
LEAKY_SLOPE = 0.01
#: simple visual encoder: (kernel, stride, filters) of its two convolutions
SIMPLE_CONVS = ((8, 4, 16), (4, 2, 32))
#: smallest image the simple encoder accepts (ML-Agents' minimum for "simple")
SIMPLE_MIN_SIZE = 20
#: nature_cnn (the DQN paper's network): (kernel, stride, filters) of its three convolutions
NATURE_CONVS = ((8, 4, 32), (4, 2, 64), (3, 1, 64))
#: match3 (ML-Agents' SmallVisualEncoder, for board games): two 3x3 stride-1 convolutions
MATCH3_CONVS = ((3, 1, 35), (3, 1, 144))
#: the encoders made of valid convolutions with leaky ReLU then a dense layer with leaky ReLU;
#: fully_connected has no convolution (the image flattened straight into the dense layer)
PLAIN_CONVS = {"simple": SIMPLE_CONVS, "nature_cnn": NATURE_CONVS, "match3": MATCH3_CONVS, "fully_connected": ()}
#: resnet (IMPALA-like): per stack a 3x3 "same" convolution of this many channels, a 3x3 stride-2
#: max-pool without padding, then RESNET_BLOCKS residual blocks (swish, conv, swish, conv, + input);
#: swish, dense, ReLU at the end
RESNET_CHANNELS = (16, 32, 32)
RESNET_BLOCKS = 2
#: smallest image side each encoder accepts (ML-Agents' ModelUtils.MIN_RESOLUTION_FOR_ENCODER)
MIN_VISUAL_SIZE = {"simple": SIMPLE_MIN_SIZE, "nature_cnn": 36, "resnet": 15, "match3": 5, "fully_connected": 1}
#: variable-length (rank-2, [max_entities, entity_size]) observations: ML-Agents' fixed attention
#: width and head count (ObservationEncoder.ATTENTION_EMBEDDING_SIZE, MultiHeadAttention's 4 heads)
ATTENTION_EMBEDDING_SIZE = 128
ATTENTION_HEADS = 4
#: an entity row whose sum of squares is below this is padding (ML-Agents' get_zero_entities_mask)
ENTITY_PADDING_THRESHOLD = 0.01
#: logit added to padded entities' attention scores (ML-Agents' MultiHeadAttention.NEG_INF)
ATTENTION_NEG_INF = -1.0e6
#: ML-Agents' LayerNorm epsilon (no gain or bias) and the masked mean's epsilon
LAYER_NORM_EPS = 1.0e-5
POOL_EPS = 1.0e-7

CONTINUOUS_DISTRIBUTIONS = ("gaussian", "tanh_gaussian")
VIS_ENCODE_TYPES = ("simple", "nature_cnn", "resnet", "match3", "fully_connected")


@dataclass(frozen=True)
class PolicyArchitecture:
    """What a snapshot's parameters mean: the domain form of ``tandem.v1.PolicyArchitecture``."""

    behavior_spec: BehaviorSpec
    hidden_units: int
    num_layers: int
    normalize: bool = False
    vis_encode_type: str = "simple"
    continuous_distribution: str = "gaussian"
    memory_size: int = 0
    sequence_length: int = 0
    #: trainer_type poca: trajectories carry the groupmates (the centralized critic's input)
    collect_groupmates: bool = False

    def __post_init__(self) -> None:
        if self.memory_size < 0 or self.memory_size % 2:
            raise ValueError(f"architecture.memory_size: must be even and >= 0, got {self.memory_size}")
        if self.memory_size and self.sequence_length < 1:
            raise ValueError(f"architecture.sequence_length: must be >= 1 with memory, got {self.sequence_length}")
        if self.hidden_units <= 0:
            raise ValueError(f"architecture.hidden_units: must be positive, got {self.hidden_units}")
        if self.num_layers < 0:
            raise ValueError(f"architecture.num_layers: must be >= 0, got {self.num_layers}")
        if self.vis_encode_type not in VIS_ENCODE_TYPES:
            raise ValueError(
                f"architecture.vis_encode_type: {self.vis_encode_type!r} is not supported yet "
                f"(supported: {', '.join(VIS_ENCODE_TYPES)})"
            )
        if self.continuous_distribution not in CONTINUOUS_DISTRIBUTIONS:
            raise ValueError(
                f"architecture.continuous_distribution: {self.continuous_distribution!r} is unknown "
                f"(known: {', '.join(CONTINUOUS_DISTRIBUTIONS)})"
            )
        for i, obs in enumerate(self.behavior_spec.observations):
            if len(obs.shape) not in (1, 2, 3):
                raise ValueError(
                    f"behavior {self.behavior_spec.name}: observation {i} ({obs.name!r}) has shape "
                    f"{obs.shape}; only vector (size,), variable-length (max_entities, entity_size) and "
                    f"visual (channels, height, width) are supported"
                )
            minimum = MIN_VISUAL_SIZE[self.vis_encode_type]
            if obs.is_visual and min(obs.shape[1], obs.shape[2]) < minimum:
                raise ValueError(
                    f"behavior {self.behavior_spec.name}: visual observation {i} ({obs.name!r}) is "
                    f"{obs.shape[1]}x{obs.shape[2]}; vis_encode_type {self.vis_encode_type} needs at least "
                    f"{minimum}x{minimum}"
                )

    @classmethod
    def from_proto(cls, msg) -> "PolicyArchitecture":
        """The domain form of a ``tandem.v1.PolicyArchitecture`` (validated).

        Raises:
            ValueError: the architecture or its behavior spec is invalid (naming the field).
        """
        return cls(
            behavior_spec=specs_mod.from_proto(msg.behavior_spec),
            hidden_units=int(msg.hidden_units),
            num_layers=int(msg.num_layers),
            normalize=bool(msg.normalize),
            vis_encode_type=msg.vis_encode_type or "simple",
            continuous_distribution=msg.continuous_distribution or "gaussian",
            memory_size=int(msg.memory_size),
            sequence_length=int(msg.sequence_length),
            collect_groupmates=bool(msg.collect_groupmates),
        )

    def to_proto(self, out=None):
        """Fills (or creates) a ``tandem.v1.PolicyArchitecture``."""
        from tandem.v1 import trainer_pb2

        msg = out if out is not None else trainer_pb2.PolicyArchitecture()
        msg.hidden_units = self.hidden_units
        msg.num_layers = self.num_layers
        msg.normalize = self.normalize
        msg.vis_encode_type = self.vis_encode_type
        msg.continuous_distribution = self.continuous_distribution
        msg.memory_size = self.memory_size
        msg.sequence_length = self.sequence_length
        msg.collect_groupmates = self.collect_groupmates
        specs_mod.to_proto(self.behavior_spec, msg.behavior_spec)
        return msg



def vector_indices(spec: BehaviorSpec) -> list[int]:
    """Indices of the vector observations, in spec order."""
    return [i for i, o in enumerate(spec.observations) if len(o.shape) == 1]


def entity_indices(spec: BehaviorSpec) -> list[int]:
    """Indices of the variable-length observations ``[max_entities, entity_size]``, in spec order."""
    return [i for i, o in enumerate(spec.observations) if len(o.shape) == 2]


def visual_indices(spec: BehaviorSpec) -> list[int]:
    """Indices of the visual observations, in spec order."""
    return [i for i, o in enumerate(spec.observations) if o.is_visual]


def conv_output_hw(height: int, width: int) -> tuple[int, int]:
    """Height and width after the simple encoder's two valid convolutions."""
    for kernel, stride, _ in SIMPLE_CONVS:
        height = (height - kernel) // stride + 1
        width = (width - kernel) // stride + 1
    return height, width


def self_encoding_size(arch: PolicyArchitecture) -> int:
    """Width of the fixed-size part of the encoding: vector sizes plus hidden_units per visual observation."""
    spec = arch.behavior_spec
    size = sum(int(np.prod(spec.observations[i].shape)) for i in vector_indices(spec))
    return size + arch.hidden_units * len(visual_indices(spec))


def encoding_size(arch: PolicyArchitecture) -> int:
    """Width of the body's input: the self encoding, plus the attention's pooled
    ``ATTENTION_EMBEDDING_SIZE`` when there are variable-length observations."""
    return self_encoding_size(arch) + (ATTENTION_EMBEDDING_SIZE if entity_indices(arch.behavior_spec) else 0)


def visual_encoder_shapes(vis_encode_type: str, obs_shape: tuple[int, ...], hidden_units: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one visual encoder, by name relative to ``encoder/{i}/``.

    Kernels are HWIO. Plain encoders (``PLAIN_CONVS``): ``conv{j}/kernel|bias`` then
    ``dense``; resnet: ``stack{s}/conv``, ``stack{s}/block{b}/conv{0,1}`` then ``dense``.
    The dense layer reads the last feature map flattened in (height, width, channels) order.

    Args:
        vis_encode_type: one of ``VIS_ENCODE_TYPES``.
        obs_shape: ``(channels, height, width)``.
        hidden_units: the dense layer's width.
    """
    channels, height, width = obs_shape
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, kernel: int, in_ch: int, out_ch: int) -> None:
        shapes[f"{name}/kernel"] = (kernel, kernel, in_ch, out_ch)
        shapes[f"{name}/bias"] = (out_ch,)

    if vis_encode_type == "resnet":
        for s, out_ch in enumerate(RESNET_CHANNELS):
            conv(f"stack{s}/conv", 3, channels, out_ch)
            height, width = (height - 3) // 2 + 1, (width - 3) // 2 + 1  # the 3x3 stride-2 max-pool
            for b in range(RESNET_BLOCKS):
                conv(f"stack{s}/block{b}/conv0", 3, out_ch, out_ch)
                conv(f"stack{s}/block{b}/conv1", 3, out_ch, out_ch)
            channels = out_ch
    else:
        for j, (kernel, stride, filters) in enumerate(PLAIN_CONVS[vis_encode_type]):
            conv(f"conv{j}", kernel, channels, filters)
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            channels = filters
    shapes["dense/kernel"] = (height * width * channels, hidden_units)
    shapes["dense/bias"] = (hidden_units,)
    return shapes


def attention_shapes(arch: PolicyArchitecture) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the variable-length observations' encoder (empty without them).

    As ML-Agents' ObservationEncoder: ``attention/self/dense`` embeds the self encoding
    (when there is one) to ``E = ATTENTION_EMBEDDING_SIZE``; ``encoder/{i}/dense`` embeds each
    entity of observation i concatenated after that self embedding; ``attention/q|k|v|out``
    are the residual self-attention's projections (E x E).
    """
    spec = arch.behavior_spec
    entities = entity_indices(spec)
    if not entities:
        return {}
    e = ATTENTION_EMBEDDING_SIZE
    self_size = self_encoding_size(arch)
    shapes: dict[str, tuple[int, ...]] = {}
    if self_size:
        shapes["attention/self/dense/kernel"] = (self_size, e)
        shapes["attention/self/dense/bias"] = (e,)
    for i in entities:
        entity_size = spec.observations[i].shape[1]
        shapes[f"encoder/{i}/dense/kernel"] = ((e if self_size else 0) + entity_size, e)
        shapes[f"encoder/{i}/dense/bias"] = (e,)
    for name in ("q", "k", "v", "out"):
        shapes[f"attention/{name}/kernel"] = (e, e)
        shapes[f"attention/{name}/bias"] = (e,)
    return shapes


def encoder_shapes(arch: PolicyArchitecture) -> dict[str, tuple[int, ...]]:
    """Every observation-encoding parameter (visual encoders and attention), without prefix."""
    spec = arch.behavior_spec
    shapes: dict[str, tuple[int, ...]] = {}
    for i in visual_indices(spec):
        for name, shape in visual_encoder_shapes(arch.vis_encode_type, spec.observations[i].shape, arch.hidden_units).items():
            shapes[f"encoder/{i}/{name}"] = shape
    shapes.update(attention_shapes(arch))
    return shapes


def lstm_step(
    x: np.ndarray, memories: np.ndarray, kernel: np.ndarray, recurrent_kernel: np.ndarray, bias: np.ndarray, xp=np
):
    """One LSTM step, as torch's ``nn.LSTM`` (gates input, forget, cell, output).

    Written once for numpy and JAX (``xp`` is ``numpy`` or ``jax.numpy``).

    Args:
        x: ``[n, width]`` the body's output.
        memories: ``[n, m]``, ``[hidden, cell]`` halves.
        kernel, recurrent_kernel, bias: ``lstm/...`` parameters.

    Returns:
        (hidden output ``[n, m/2]``, new memories ``[n, m]``).
    """
    half = recurrent_kernel.shape[0]
    h, c = memories[:, :half], memories[:, half:]
    gates = x @ kernel + h @ recurrent_kernel + bias
    i, f, g, o = (gates[:, k * half : (k + 1) * half] for k in range(4))

    def sigmoid(v):
        return 0.5 * (xp.tanh(0.5 * v) + 1.0)

    c = sigmoid(f) * c + sigmoid(i) * xp.tanh(g)
    h = sigmoid(o) * xp.tanh(c)
    return h, xp.concatenate([h, c], axis=-1)


def parameter_shapes(arch: PolicyArchitecture) -> dict[str, tuple[int, ...]]:
    """Every actor parameter name of a snapshot with its shape: the naming contract."""
    spec = arch.behavior_spec
    h = arch.hidden_units
    shapes: dict[str, tuple[int, ...]] = {}
    if arch.normalize:
        for i in vector_indices(spec):
            size = spec.observations[i].shape[0]
            shapes[f"normalizer/mean/{i}"] = (size,)
            shapes[f"normalizer/var/{i}"] = (size,)
    shapes.update(encoder_shapes(arch))
    width_in = encoding_size(arch)
    for j in range(arch.num_layers):
        shapes[f"body/dense{j}/kernel"] = (width_in, h)
        shapes[f"body/dense{j}/bias"] = (h,)
        width_in = h
    if arch.memory_size:
        half = arch.memory_size // 2
        shapes["lstm/kernel"] = (width_in, 4 * half)
        shapes["lstm/recurrent_kernel"] = (half, 4 * half)
        shapes["lstm/bias"] = (4 * half,)
        width_in = half
    c = spec.action_spec.continuous_size
    if c:
        shapes["policy/mu/kernel"] = (width_in, c)
        shapes["policy/mu/bias"] = (c,)
        if arch.continuous_distribution == "gaussian":
            shapes["policy/log_std"] = (c,)
        else:
            shapes["policy/log_std/kernel"] = (width_in, c)
            shapes["policy/log_std/bias"] = (c,)
    m = spec.action_spec.mask_size
    if m:
        shapes["policy/logits/kernel"] = (width_in, m)
        shapes["policy/logits/bias"] = (m,)
    return shapes


@dataclass(frozen=True)
class PolicyOutput:
    """Actions for n agents.

    Attributes:
        continuous: float32 ``[n, c]``, the raw samples (what trajectories carry).
        discrete: int32 ``[n, branches]``.
        log_probs: float32 ``[n]``, joint log-probability of (continuous, discrete): the
            quantity the PPO ratio uses.
        env_continuous: float32 ``[n, c]``, what the environment receives
            (``clip(a, -3, 3) / 3`` for gaussian, ``tanh(a)`` for tanh_gaussian).
        memories: float32 ``[n, memory_size]``, the LSTM memory after this step (the
            input of the agent's next step), or None without memory.
    """

    continuous: np.ndarray
    discrete: np.ndarray
    log_probs: np.ndarray
    env_continuous: np.ndarray
    memories: np.ndarray | None = None


def make_snapshot(
    behavior: str,
    version: int,
    architecture: PolicyArchitecture,
    params: Mapping[str, np.ndarray],
    time_horizon: int = 0,
    deterministic: bool = False,
):
    """Builds a ``tandem.v1.PolicySnapshot`` from an architecture and flat float32 parameters.

    Args:
        params: name -> array (``parameter_shapes``); empty for a snapshot whose actor is an
            ONNX model.
    """
    from tandem.v1 import trainer_pb2

    msg = trainer_pb2.PolicySnapshot(
        behavior=behavior, version=int(version), time_horizon=int(time_horizon), deterministic=deterministic
    )
    architecture.to_proto(msg.architecture)
    for name, value in params.items():
        tensor.to_proto(np.asarray(value, dtype=np.float32), msg.parameters[name])
    return msg
