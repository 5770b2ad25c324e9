"""ML-Agents-like actor and critic networks as pure JAX functions over flat parameter dicts.

Why flat dicts rather than flax modules: the snapshot a gateway acts with is a flat
``name -> float32 array`` dict whose names are a public contract (``docs/ARCHITECTURE.md``,
"Policy parameter names"; ``common/architecture.py`` is the reference forward). Keeping the
parameters in exactly that form during training means there is no translation layer to
get wrong: ``policy_parameters()`` is ``{name: np.asarray(value)}`` plus the normalizer.
A flat dict is a pytree, so optax and ``jax.grad`` work on it as on any flax tree.

Layout (shapes for ``hidden_units`` h):

* encoders: vector observations normalized (``normalize``) and concatenated; visual
  observations through the ``simple`` CNN (conv 8x8/4 16 filters, leaky ReLU, conv 4x4/2 32
  filters, leaky ReLU, dense h, leaky ReLU), as ML-Agents' SimpleVisualEncoder, or another of
  ML-Agents' encoders (``vis_encode_type``, ``visual_encoder``); variable-length observations
  through ML-Agents' entity embedding and residual self-attention (``entity_attention``);
* body: ``num_layers`` dense layers of h with swish (ML-Agents' LinearEncoder);
* memory (``memory_size`` m > 0): one LSTM of m/2 units after the body (``lstm/...``, the
  critic's own ``critic/lstm/...``), heads read its hidden output; training runs it over
  sequences of ``sequence_length`` steps from stored initial memories (``recurrent``);
* actor heads: ``policy/mu`` + state-independent ``policy/log_std`` (PPO) or a dense
  ``policy/log_std`` head (SAC's tanh_gaussian); ``policy/logits`` for all discrete branches;
* PPO's critic: its own encoders and body under ``critic/`` and a ``critic/value`` head
  (ML-Agents' PPO keeps actor and critic separate); with ``shared_critic`` only the value
  head is separate and it reads the actor's encoders and body (ML-Agents' shared critic);
* SAC's Q critic: its own encoders under ``critic/``, a body ``critic/body/dense{j}`` over
  ``[encoding, squashed continuous action]`` and a ``critic/q`` head with one output per
  discrete action of every branch (or one output without discrete actions), as
  ML-Agents' SAC critics.

Initialization follows ML-Agents: Kaiming-He normal kernels with torch's "linear" gain
(std ``1 / sqrt(fan_in)``) scaled by ML-Agents' gain (body 1.0, visual dense 1.41, mu 0.2,
SAC's log_std head 0.2, logits 0.1), zero biases, log_std 0, Xavier-uniform value and Q
heads, torch-default convolutions.
"""

from __future__ import annotations

import functools

import math

import jax
import jax.numpy as jnp

from common.architecture import (
    ATTENTION_EMBEDDING_SIZE,
    ATTENTION_HEADS,
    ATTENTION_NEG_INF,
    ENTITY_PADDING_THRESHOLD,
    LAYER_NORM_EPS,
    LEAKY_SLOPE,
    LOG_STD_MAX,
    LOG_STD_MIN,
    PLAIN_CONVS,
    POOL_EPS,
    RESNET_BLOCKS,
    RESNET_CHANNELS,
    PolicyArchitecture,
    attention_shapes,
    encoder_shapes,
    encoding_size,
    entity_indices,
    lstm_step,
    vector_indices,
    visual_indices,
)
from trainer_server.learning import normalizer as normalizer_mod
from trainer_server.learning.distributions import DistParams, mask_logits

Params = dict[str, jax.Array]
NormStats = tuple[dict[str, jax.Array], dict[str, jax.Array]] | None


# -- initialization -------------------------------------------------------------------
def _kaiming_normal(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> jax.Array:
    """``gain * N(0, 1 / fan_in)``: ML-Agents' ``linear_layer`` calls torch's
    ``kaiming_normal_`` with ``nonlinearity="linear"`` (std ``1 / sqrt(fan_in)``, no ReLU
    factor sqrt(2)) and then multiplies the kernel by its gain."""
    std = gain / math.sqrt(fan_in)
    return std * jax.random.normal(key, (fan_in, fan_out), jnp.float32)


def _xavier_uniform(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> jax.Array:
    limit = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -limit, limit)


def _init_encoders(key: jax.Array, arch: PolicyArchitecture, prefix: str) -> Params:
    """Visual encoders and the attention of variable-length observations (``encoder_shapes``).

    Convolutions: torch's default Conv2d init (uniform +-1/sqrt(fan_in)); visual dense layers:
    Kaiming normal with gain 1.41; attention layers: ML-Agents' ``Initialization.Normal``
    (std ``sqrt(0.125 / E)``) with zero biases.
    """
    params: Params = {}
    attention_std = math.sqrt(0.125 / ATTENTION_EMBEDDING_SIZE)
    attention = attention_shapes(arch)
    shapes = encoder_shapes(arch)
    for name, shape in shapes.items():
        key, k = jax.random.split(key)
        if name in attention:
            value = attention_std * jax.random.normal(k, shape, jnp.float32) if len(shape) == 2 else jnp.zeros(shape, jnp.float32)
        elif "/dense/" in name:
            value = _kaiming_normal(k, shape[0], shape[1], 1.41) if len(shape) == 2 else jnp.zeros(shape, jnp.float32)
        else:  # a convolution: the bias bound comes from its kernel's fan-in
            kernel_shape = shapes[name.rsplit("/", 1)[0] + "/kernel"]
            bound = 1.0 / math.sqrt(kernel_shape[0] * kernel_shape[1] * kernel_shape[2])
            value = jax.random.uniform(k, shape, jnp.float32, -bound, bound)
        params[f"{prefix}{name}"] = value
    return params


def _init_body(key: jax.Array, arch: PolicyArchitecture, prefix: str, width: int) -> Params:
    """``num_layers`` dense layers of ``hidden_units`` over an input of ``width``."""
    params: Params = {}
    for j in range(arch.num_layers):
        key, k = jax.random.split(key)
        params[f"{prefix}body/dense{j}/kernel"] = _kaiming_normal(k, width, arch.hidden_units, 1.0)
        params[f"{prefix}body/dense{j}/bias"] = jnp.zeros((arch.hidden_units,), jnp.float32)
        width = arch.hidden_units
    return params


def body_output_size(arch: PolicyArchitecture) -> int:
    """Width of the body's output (the encoding itself when num_layers is 0)."""
    return arch.hidden_units if arch.num_layers else encoding_size(arch)


def head_width(arch: PolicyArchitecture) -> int:
    """Width the heads read: the LSTM's output (memory_size / 2) with memory, else the body's."""
    return arch.memory_size // 2 if arch.memory_size else body_output_size(arch)


def _init_lstm(key: jax.Array, arch: PolicyArchitecture, prefix: str, width: int | None = None) -> Params:
    """ML-Agents' LSTM initialization: Xavier-uniform per gate block of torch's weight
    matrices, zero biases plus a forget-gate bias of 1 on each of torch's two biases (2 in
    the single ``lstm/bias``), over inputs of ``width`` (default: the body's output). Empty
    without memory."""
    if not arch.memory_size:
        return {}
    half, width = arch.memory_size // 2, width or body_output_size(arch)
    k_in, k_rec = jax.random.split(key)
    blocks_in = [_xavier_uniform(k, width, half, 1.0) for k in jax.random.split(k_in, 4)]
    blocks_rec = [_xavier_uniform(k, half, half, 1.0) for k in jax.random.split(k_rec, 4)]
    bias = jnp.zeros((4 * half,), jnp.float32).at[half : 2 * half].set(2.0)
    return {
        f"{prefix}lstm/kernel": jnp.concatenate(blocks_in, axis=1),
        f"{prefix}lstm/recurrent_kernel": jnp.concatenate(blocks_rec, axis=1),
        f"{prefix}lstm/bias": bias,
    }


def init_actor(key: jax.Array, arch: PolicyArchitecture) -> Params:
    """Actor parameters with snapshot names (without the normalizer statistics)."""
    k_enc, k_body, k_mu, k_std, k_logits = jax.random.split(key, 5)
    params = {**_init_encoders(k_enc, arch, ""), **_init_body(k_body, arch, "", encoding_size(arch))}
    params.update(_init_lstm(jax.random.fold_in(k_body, 1), arch, ""))
    width = head_width(arch)
    a = arch.behavior_spec.action_spec
    if a.continuous_size:
        c = a.continuous_size
        params["policy/mu/kernel"] = _kaiming_normal(k_mu, width, c, 0.2)
        params["policy/mu/bias"] = jnp.zeros((c,), jnp.float32)
        if arch.continuous_distribution == "gaussian":
            params["policy/log_std"] = jnp.zeros((c,), jnp.float32)
        else:
            params["policy/log_std/kernel"] = _kaiming_normal(k_std, width, c, 0.2)
            params["policy/log_std/bias"] = jnp.zeros((c,), jnp.float32)
    if a.mask_size:
        params["policy/logits/kernel"] = _kaiming_normal(k_logits, width, a.mask_size, 0.1)
        params["policy/logits/bias"] = jnp.zeros((a.mask_size,), jnp.float32)
    if not a.continuous_size and not a.mask_size:
        raise ValueError(f"behavior {arch.behavior_spec.name}: has no actions")
    return params


def init_critic(key: jax.Array, arch: PolicyArchitecture, shared_critic: bool = False) -> Params:
    """Critic parameters, all under ``critic/``: encoders, body and the ``critic/value`` head.

    With ``shared_critic`` only the value head is created; it reads the actor's body.
    """
    k_enc, k_body, k_value = jax.random.split(key, 3)
    params: Params = {}
    if not shared_critic:
        params.update(_init_encoders(k_enc, arch, "critic/"))
        params.update(_init_body(k_body, arch, "critic/", encoding_size(arch)))
        params.update(_init_lstm(jax.random.fold_in(k_body, 1), arch, "critic/"))
    params["critic/value/kernel"] = _xavier_uniform(k_value, head_width(arch), 1, 1.0)
    params["critic/value/bias"] = jnp.zeros((1,), jnp.float32)
    return params


def q_outputs(arch: PolicyArchitecture) -> int:
    """Outputs of a Q critic: one per discrete action of every branch, or one."""
    return max(arch.behavior_spec.action_spec.mask_size, 1)


def init_q_critic(key: jax.Array, arch: PolicyArchitecture) -> Params:
    """One SAC Q critic's parameters, all under ``critic/`` (encoders, body over
    ``[encoding, continuous action]``, ``critic/q`` with Xavier-uniform kernel as
    ML-Agents' value heads)."""
    k_enc, k_body, k_q = jax.random.split(key, 3)
    width = encoding_size(arch) + arch.behavior_spec.action_spec.continuous_size
    params = {**_init_encoders(k_enc, arch, "critic/"), **_init_body(k_body, arch, "critic/", width)}
    body_width = arch.hidden_units if arch.num_layers else width
    # with memory (ML-Agents' SAC critics): an LSTM after the body, the head reads its output
    params.update(_init_lstm(jax.random.fold_in(k_body, 1), arch, "critic/", body_width))
    params["critic/q/kernel"] = _xavier_uniform(k_q, q_body_width(arch), q_outputs(arch), 1.0)
    params["critic/q/bias"] = jnp.zeros((q_outputs(arch),), jnp.float32)
    return params


# -- forward --------------------------------------------------------------------------
def _leaky_relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, LEAKY_SLOPE * x)


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    return _strided_conv(x, kernel, stride) + bias


def _strided_conv_primal(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _strided_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution ``x [n, H, W, C]`` * ``kernel [k, k, C, O]`` -> ``[n, h, w, O]``.

    The gradient of the kernel is computed as image patches times the output gradient (one
    matrix product), not as XLA's transposed convolution: on the CPU that one is a window
    dilated by the stride, which XLA runs through its generic loop emitter, and it took
    most of a visual PPO update (the two first-layer kernel gradients of a GridWorld
    minibatch: 1.07 s of 1.5 s, benchmarks/results/bench_vs_mlagents.md). At stride 1 too:
    in a PPO update the kernel gradients of match3's second convolution (3x3, 35 -> 144
    channels, 22x22 inputs) took 3.7 s per minibatch each through XLA (45 of a 48 s update,
    a ``jax.profiler`` trace), a few tenths as patches. Same values up to float summation order.
    """
    return _strided_conv_primal(x, kernel, stride)


def _strided_conv_forward(x: jax.Array, kernel: jax.Array, stride: int):
    return _strided_conv(x, kernel, stride), (x, kernel)


def _strided_conv_backward(stride: int, residuals, grad_out: jax.Array):
    x, kernel = residuals
    size, outputs = kernel.shape[0], kernel.shape[-1]
    grad_kernel = _patches(x, size, stride).T @ grad_out.reshape(-1, outputs)  # [k * k * C, O]
    grad_kernel = grad_kernel.reshape(kernel.shape)
    _, input_vjp = jax.vjp(lambda image: _strided_conv_primal(image, kernel, stride), x)
    return input_vjp(grad_out)[0], grad_kernel


_strided_conv.defvjp(_strided_conv_forward, _strided_conv_backward)


def _patches(x: jax.Array, size: int, stride: int) -> jax.Array:
    """The VALID ``size`` x ``size`` windows of ``x [n, H, W, C]`` at ``stride``: ``[n * h * w,
    size * size * C]``, features in the kernel's HWIO order (kh, kw, C).

    Why strided slices, one per kernel offset, and not ``lax.conv_general_dilated_patches``:
    that one is a convolution with a one-hot kernel of ``size * size * C`` outputs, twelve
    times the arithmetic of the first ``simple`` convolution itself; the slices only copy
    (a GridWorld update: 58 -> 40 ms CPU, benchmarks/results/bench_ingestion.md).
    """
    n, height, width, _ = x.shape
    rows, cols = (height - size) // stride + 1, (width - size) // stride + 1
    windows = [
        x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride, :]
        for i in range(size)
        for j in range(size)
    ]
    return jnp.stack(windows, axis=3).reshape(n * rows * cols, -1)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """3x3 max-pool with stride 2, no padding (torch's MaxPool2d([3, 3], [2, 2])), NHWC."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def _conv_same(x: jax.Array, params: Params, name: str) -> jax.Array:
    """3x3 stride-1 convolution with one pixel of zero padding (resnet): the padded image through
    ``_strided_conv`` (its kernel gradient as patches, see there)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return _strided_conv(padded, params[f"{name}/kernel"], 1) + params[f"{name}/bias"]


def visual_encoder(params: Params, name: str, vis_encode_type: str, image: jax.Array) -> jax.Array:
    """One visual encoder (``common.architecture.visual_encoder_shapes``): ``[n, C, H, W]`` -> ``[n, h]``.

    Args:
        params: containing ``{name}/...``.
        name: e.g. ``encoder/0`` or ``critic/encoder/0``.
    """
    x = jnp.transpose(image, (0, 2, 3, 1))  # [n, C, H, W] -> [n, H, W, C]
    if vis_encode_type == "resnet":
        for s in range(len(RESNET_CHANNELS)):
            x = _max_pool_3x3_s2(_conv_same(x, params, f"{name}/stack{s}/conv"))
            for b in range(RESNET_BLOCKS):
                y = _conv_same(jax.nn.swish(x), params, f"{name}/stack{s}/block{b}/conv0")
                x = x + _conv_same(jax.nn.swish(y), params, f"{name}/stack{s}/block{b}/conv1")
        x = jax.nn.swish(x).reshape(x.shape[0], -1)
        return jax.nn.relu(x @ params[f"{name}/dense/kernel"] + params[f"{name}/dense/bias"])
    for j, (_, stride, _) in enumerate(PLAIN_CONVS[vis_encode_type]):
        x = _leaky_relu(_conv(x, params[f"{name}/conv{j}/kernel"], params[f"{name}/conv{j}/bias"], stride))
    x = x.reshape(x.shape[0], -1)
    return _leaky_relu(x @ params[f"{name}/dense/kernel"] + params[f"{name}/dense/bias"])


def _layer_norm(x: jax.Array) -> jax.Array:
    """ML-Agents' LayerNorm over the last axis, without gain or bias."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    return centered / jnp.sqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + LAYER_NORM_EPS)


def _dense(params: Params, name: str, x: jax.Array) -> jax.Array:
    return x @ params[f"{name}/kernel"] + params[f"{name}/bias"]


def entity_attention(params: Params, prefix: str, arch: PolicyArchitecture, self_encoding: jax.Array | None, observations: list[jax.Array]) -> jax.Array:
    """Variable-length observations through ML-Agents' entity embedding and residual self-attention.

    Args:
        self_encoding: ``[n, self_encoding_size]`` (vector and visual encodings), or None.
        observations: all observations; entity ones are ``[n, max_entities, entity_size]``,
            padding rows all zero.

    Returns:
        ``[n, ATTENTION_EMBEDDING_SIZE]``: the masked mean of the attended entities.
    """
    e = ATTENTION_EMBEDDING_SIZE
    embedded_self = None if self_encoding is None else jax.nn.swish(_dense(params, f"{prefix}attention/self/dense", self_encoding))
    embeddings, masks = [], []
    for i in entity_indices(arch.behavior_spec):
        entities = observations[i]
        masks.append((jnp.sum(entities * entities, axis=2) < ENTITY_PADDING_THRESHOLD).astype(jnp.float32))
        if embedded_self is not None:
            repeated = jnp.broadcast_to(embedded_self[:, None, :], (entities.shape[0], entities.shape[1], e))
            entities = jnp.concatenate([repeated, entities], axis=2)
        embeddings.append(jax.nn.swish(_dense(params, f"{prefix}encoder/{i}/dense", entities)))
    return residual_self_attention(params, f"{prefix}attention", jnp.concatenate(embeddings, axis=1), jnp.concatenate(masks, axis=1))


def residual_self_attention(params: Params, name: str, embeddings: jax.Array, mask: jax.Array) -> jax.Array:
    """ML-Agents' ResidualSelfAttention: LayerNorm, ``ATTENTION_HEADS``-head attention
    (``{name}/q|k|v`` ``[E, E]``, scores divided by sqrt(E), padded keys set to
    ``ATTENTION_NEG_INF``), ``{name}/out`` plus the normalized input, LayerNorm, and the mean
    over the real entities.

    Args:
        embeddings: ``[n, m, E]`` embedded entities (entity attention, POCA's group critic).
        mask: ``[n, m]``, 1 on padding entities.

    Returns:
        ``[n, E]``.
    """
    inp = _layer_norm(embeddings)  # [n, m, E]
    n, m, e = inp.shape
    heads = ATTENTION_HEADS

    def split(x: jax.Array) -> jax.Array:  # [n, m, E] -> [n, heads, m, E / heads]
        return x.reshape(n, m, heads, e // heads).transpose(0, 2, 1, 3)

    q, k, v = (split(_dense(params, f"{name}/{part}", inp)) for part in ("q", "k", "v"))
    scores = q @ k.transpose(0, 1, 3, 2)  # [n, heads, m, m]
    key_mask = mask[:, None, None, :]
    scores = (1.0 - key_mask) * scores / math.sqrt(e) + key_mask * ATTENTION_NEG_INF
    attended = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(n, m, e)
    out = _layer_norm(_dense(params, f"{name}/out", attended) + inp)
    keep = 1.0 - mask
    return jnp.sum(out * keep[:, :, None], axis=1) / (jnp.sum(keep, axis=1, keepdims=True) + POOL_EPS)


def observation_encoding(params: Params, prefix: str, arch: PolicyArchitecture, observations: list[jax.Array], norm: NormStats) -> jax.Array:
    """Every observation encoded and concatenated, before the body: ``[n, encoding_size]``
    (ML-Agents' ObservationEncoder; POCA's group critic encodes each agent with it)."""
    return _encoders(params, prefix, arch, observations, norm)


def init_observation_encoders(key: jax.Array, arch: PolicyArchitecture, prefix: str) -> Params:
    """The parameters of ``observation_encoding`` under ``prefix``."""
    return _init_encoders(key, arch, prefix)


def _encoders(params: Params, prefix: str, arch: PolicyArchitecture, observations: list[jax.Array], norm: NormStats) -> jax.Array:
    """Every observation encoded and concatenated: ``[n, encoding_size]``
    (vector observations, visual encodings, then the attention's pooled entities)."""
    spec = arch.behavior_spec
    parts = []
    for i in vector_indices(spec):
        x = observations[i].reshape(observations[i].shape[0], -1)
        if norm is not None:
            x = normalizer_mod.normalize(x, norm[0][str(i)], norm[1][str(i)])
        parts.append(x)
    for i in visual_indices(spec):
        parts.append(visual_encoder(params, f"{prefix}encoder/{i}", arch.vis_encode_type, observations[i]))
    if entity_indices(spec):
        self_encoding = None if not parts else parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        parts.append(entity_attention(params, prefix, arch, self_encoding, observations))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _body(params: Params, prefix: str, arch: PolicyArchitecture, h: jax.Array) -> jax.Array:
    for j in range(arch.num_layers):
        h = jax.nn.swish(h @ params[f"{prefix}body/dense{j}/kernel"] + params[f"{prefix}body/dense{j}/bias"])
    return h


def encode(params: Params, prefix: str, arch: PolicyArchitecture, observations: list[jax.Array], norm: NormStats) -> jax.Array:
    """Encoders and body: ``[n, body_output_size]`` from observations ``[n, *shape]`` per spec.

    Args:
        params: flat parameters containing the ``{prefix}encoder/...`` and ``{prefix}body/...`` names.
        prefix: "" for the actor, "critic/" for the critic.
        arch: the architecture.
        observations: per observation spec, float32 ``[n, *shape]``.
        norm: (mean, var) per vector observation index (str), or None without ``normalize``.
    """
    return _body(params, prefix, arch, _encoders(params, prefix, arch, observations, norm))


def _lstm_scan(params: Params, prefix: str, steps: jax.Array, memories: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The LSTM over ``steps`` ``[L, s, width]`` from ``memories`` ``[s, m]``: (final memories
    ``[s, m]``, hidden outputs ``[L, s, m/2]``, memories before each step ``[L, s, m]``)."""
    kernel, rec, bias = (params[f"{prefix}lstm/{n}"] for n in ("kernel", "recurrent_kernel", "bias"))

    def step(mem, x):
        out, new = lstm_step(x, mem, kernel, rec, bias, xp=jnp)
        return new, (out, mem)

    final, (outs, before) = jax.lax.scan(step, memories, steps)
    return final, outs, before


def recurrent(
    params: Params, prefix: str, arch: PolicyArchitecture, h: jax.Array, memories: jax.Array, sequence_length: int
) -> tuple[jax.Array, jax.Array]:
    """The LSTM over sequences, as ML-Agents' NetworkBody: ``h`` is ``[s * sequence_length,
    width]`` (s sequences of consecutive steps, in order) and each sequence starts from its
    row of ``memories`` ``[s, memory_size]``.

    Returns:
        (hidden outputs ``[s * sequence_length, memory_size / 2]``, the memories after each
        sequence's last step ``[s, memory_size]``).
    """
    steps = jnp.swapaxes(h.reshape(-1, sequence_length, h.shape[-1]), 0, 1)  # [L, s, width]
    final, outs, _ = _lstm_scan(params, prefix, steps, memories)
    return jnp.swapaxes(outs, 0, 1).reshape(h.shape[0], -1), final


def critic_trace(
    actor_params: Params,
    critic_params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    shared_critic: bool,
    memory: jax.Array,
    heads: tuple[str, ...] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The critic with memory along one agent's consecutive steps ``[T, ...]`` from ``memory``
    ``[m]``: (values ``[T]``, or ``[T, H]`` per reward signal of ``heads``; the critic's memory
    before each step ``[T, m]``).

    Why: ML-Agents evaluates a trajectory's values sequence by sequence, carrying the
    critic's memory from one sequence to the next, which is one unbroken LSTM run; the
    memories before each step give the initial memory of every training sequence.
    """
    params, prefix = (actor_params, "") if shared_critic else (critic_params, "critic/")
    h = encode(params, prefix, arch, observations, norm)
    _, outs, before = _lstm_scan(params, prefix, h[:, None, :], memory[None, :])
    if heads is not None:  # every reward signal's head reads the same LSTM output
        return jnp.transpose(apply_heads(critic_params, outs[:, 0, :], heads, "critic/value")[..., 0]), before[:, 0, :]
    values = outs[:, 0, :] @ critic_params["critic/value/kernel"] + critic_params["critic/value/bias"]
    return values[:, 0], before[:, 0, :]


def actor_heads(params: Params, arch: PolicyArchitecture, h: jax.Array, action_mask: jax.Array | None) -> DistParams:
    """Distribution parameters from the body's output ``h`` ``[n, width]``."""
    mu = log_std = logits = None
    if "policy/mu/kernel" in params:
        mu = h @ params["policy/mu/kernel"] + params["policy/mu/bias"]
        if arch.continuous_distribution == "gaussian":
            log_std = jnp.broadcast_to(params["policy/log_std"], mu.shape)
        else:
            log_std = jnp.clip(h @ params["policy/log_std/kernel"] + params["policy/log_std/bias"], LOG_STD_MIN, LOG_STD_MAX)
    if "policy/logits/kernel" in params:
        logits = mask_logits(h @ params["policy/logits/kernel"] + params["policy/logits/bias"], action_mask)
    return DistParams(mu=mu, log_std=log_std, logits=logits)


def actor_forward(
    params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    action_mask: jax.Array | None = None,
    memories: jax.Array | None = None,
    sequence_length: int = 1,
) -> DistParams:
    """The policy: distribution parameters for n agents (see ``gateway.actor.numpy_policy.NumpyPolicy.distribution``).

    With memory, ``memories`` ``[n / sequence_length, memory_size]`` start the sequences of
    ``sequence_length`` consecutive rows (``recurrent``); ``sequence_length`` 1 is one step
    per agent, as when acting.
    """
    return actor_step(params, arch, observations, norm, action_mask, memories, sequence_length)[0]


def actor_step(
    params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    action_mask: jax.Array | None = None,
    memories: jax.Array | None = None,
    sequence_length: int = 1,
) -> tuple[DistParams, jax.Array | None]:
    """``actor_forward`` and the memories after each sequence (None without memory)."""
    h = encode(params, "", arch, observations, norm)
    final = None
    if arch.memory_size:
        h, final = recurrent(params, "", arch, h, memories, sequence_length)
    return actor_heads(params, arch, h, action_mask), final


def critic_forward(
    actor_params: Params,
    critic_params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    shared_critic: bool = False,
    memories: jax.Array | None = None,
    sequence_length: int = 1,
    heads: tuple[str, ...] | None = None,
) -> jax.Array:
    """PPO's state values ``[n]`` (``[n, H]`` per reward signal of ``heads``); with
    ``shared_critic`` from the actor's encoders and body.

    With memory, ``memories`` and ``sequence_length`` as ``actor_forward`` (the critic's own
    memories, or the actor's with ``shared_critic``).
    """
    params, prefix = (actor_params, "") if shared_critic else (critic_params, "critic/")
    h = encode(params, prefix, arch, observations, norm)
    if arch.memory_size:
        h, _ = recurrent(params, prefix, arch, h, memories, sequence_length)
    if heads is not None:
        return jnp.transpose(apply_heads(critic_params, h, heads, "critic/value")[..., 0])
    return (h @ critic_params["critic/value/kernel"] + critic_params["critic/value/bias"])[:, 0]


def q_critic_forward(
    params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    continuous_actions: jax.Array,
) -> jax.Array:
    """One SAC Q critic: values ``[n, q_outputs]`` for squashed continuous actions ``[n, c]``."""
    h = jnp.concatenate([_encoders(params, "critic/", arch, observations, norm), continuous_actions], axis=-1)
    return _body(params, "critic/", arch, h) @ params["critic/q/kernel"] + params["critic/q/bias"]


# -- reward signals: one value (or Q) head per signal, encoders for the signals' own networks --
def value_head_prefix(index: int, name: str, base: str) -> str:
    """Name prefix of head ``index`` (signal ``name``): the first head keeps ``base``
    (``critic/value`` or ``critic/q``, so extrinsic-only checkpoints keep their names), the
    others are ``{base}/{name}``."""
    return base if index == 0 else f"{base}/{name}"


def init_extra_heads(key: jax.Array, width: int, outputs: int, heads: tuple[str, ...], base: str) -> Params:
    """Xavier-uniform heads ``{base}/{name}`` ``[width, outputs]`` for every head but the first."""
    params: Params = {}
    for i, name in enumerate(heads):
        if i == 0:
            continue
        key, k = jax.random.split(key)
        prefix = value_head_prefix(i, name, base)
        params[f"{prefix}/kernel"] = _xavier_uniform(k, width, outputs, 1.0)
        params[f"{prefix}/bias"] = jnp.zeros((outputs,), jnp.float32)
    return params


def apply_heads(params: Params, h: jax.Array, heads: tuple[str, ...], base: str) -> jax.Array:
    """Every head on ``h`` ``[n, width]``: ``[H, n, outputs]`` in the order of ``heads``."""
    outs = []
    for i, name in enumerate(heads):
        prefix = value_head_prefix(i, name, base)
        outs.append(h @ params[f"{prefix}/kernel"] + params[f"{prefix}/bias"])
    return jnp.stack(outs)


def critic_values(
    actor_params: Params,
    critic_params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    shared_critic: bool,
    heads: tuple[str, ...],
) -> jax.Array:
    """PPO's state values per reward signal ``[n, H]`` (head 0 is ``critic_forward``'s)."""
    if shared_critic:
        h = encode(actor_params, "", arch, observations, norm)
    else:
        h = encode(critic_params, "critic/", arch, observations, norm)
    return jnp.transpose(apply_heads(critic_params, h, heads, "critic/value")[..., 0])


def q_critic_heads(
    params: Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    continuous_actions: jax.Array,
    heads: tuple[str, ...],
) -> jax.Array:
    """One SAC Q critic with a head per reward signal: ``[H, n, q_outputs]`` (head 0 is
    ``q_critic_forward``'s)."""
    h = jnp.concatenate([_encoders(params, "critic/", arch, observations, norm), continuous_actions], axis=-1)
    return apply_heads(params, _body(params, "critic/", arch, h), heads, "critic/q")


def q_body_width(arch: PolicyArchitecture) -> int:
    """Width of what a Q critic's heads read: the body's output, or with memory its LSTM's
    output (memory_size / 2)."""
    if arch.memory_size:
        return arch.memory_size // 2
    return arch.hidden_units if arch.num_layers else encoding_size(arch) + arch.behavior_spec.action_spec.continuous_size


def q_critic_body(
    params: Params, arch: PolicyArchitecture, observations: list[jax.Array], norm: NormStats, continuous_actions: jax.Array
) -> jax.Array:
    """A Q critic's encoders and body over ``[encoding, squashed continuous action]``:
    ``[n, body width]``, what its LSTM reads with memory (else what its heads read)."""
    h = jnp.concatenate([_encoders(params, "critic/", arch, observations, norm), continuous_actions], axis=-1)
    return _body(params, "critic/", arch, h)


def lstm_over_sequences(params: Params, prefix: str, steps: jax.Array, memories: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``{prefix}lstm`` over ``steps`` ``[L, s, width]`` (s sequences, step-major) from
    ``memories`` ``[s, m]``: (final memories ``[s, m]``, hidden outputs ``[L, s, m/2]``,
    memories before each step ``[L, s, m]``)."""
    return _lstm_scan(params, prefix, steps, memories)


def lstm_one_step(params: Params, prefix: str, x: jax.Array, memories: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One ``{prefix}lstm`` step for n independent rows: ``x`` ``[n, width]`` from
    ``memories`` ``[n, m]`` -> (hidden output ``[n, m/2]``, memories after ``[n, m]``)."""
    kernel, rec, bias = (params[f"{prefix}lstm/{n}"] for n in ("kernel", "recurrent_kernel", "bias"))
    return lstm_step(x, memories, kernel, rec, bias, xp=jnp)


def init_dense(key: jax.Array, fan_in: int, fan_out: int, prefix: str, gain: float = 1.0, xavier: bool = False) -> Params:
    """One dense layer ``{prefix}/kernel`` ``[fan_in, fan_out]`` and zero ``{prefix}/bias``:
    Kaiming-normal (torch's linear gain, times ``gain``) or Xavier-uniform kernel."""
    kernel = _xavier_uniform(key, fan_in, fan_out, gain) if xavier else _kaiming_normal(key, fan_in, fan_out, gain)
    return {f"{prefix}/kernel": kernel, f"{prefix}/bias": jnp.zeros((fan_out,), jnp.float32)}


def dense(params: Params, prefix: str, x: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` of ``init_dense``'s layer."""
    return x @ params[f"{prefix}/kernel"] + params[f"{prefix}/bias"]


def init_network_body(key: jax.Array, arch: PolicyArchitecture, prefix: str, extra_inputs: int = 0) -> Params:
    """Observation encoders and a swish body (ML-Agents' NetworkBody) under ``prefix``, whose
    body also reads ``extra_inputs`` unencoded features (e.g. GAIL's actions)."""
    k_enc, k_body = jax.random.split(key)
    return {**_init_encoders(k_enc, arch, prefix), **_init_body(k_body, arch, prefix, encoding_size(arch) + extra_inputs)}


def network_body(
    params: Params,
    prefix: str,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    norm: NormStats,
    extra: jax.Array | None = None,
) -> jax.Array:
    """``init_network_body``'s network: ``[n, body width]`` from observations (and ``extra``
    ``[n, extra_inputs]`` concatenated to the encodings)."""
    h = _encoders(params, prefix, arch, observations, norm)
    if extra is not None:
        h = jnp.concatenate([h, extra], axis=-1)
    return _body(params, prefix, arch, h)
