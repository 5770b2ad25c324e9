"""CPU forward of a policy snapshot in plain numpy: how a gateway acts without JAX.

Why: gateways run beside Unity builds on machines without accelerators; after every
update the trainer sends a ``tandem.v1.PolicySnapshot`` (architecture + flat float32
parameters) and the gateway acts with it here. It is the reference forward for the
numbers: ``trainer_server/networks.py`` and ``distributions.py`` compute the same functions
in JAX and ``trainer_server/onnx_export.py`` writes them as ONNX; tests hold them equal.
The network and the parameter names are described in ``common/architecture.py``.
``NumpyPolicy`` implements ``gateway.actor.policy.Policy``, as ``OnnxPolicy`` does.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from common import tensor
from common.architecture import (
    ATTENTION_EMBEDDING_SIZE,
    ATTENTION_HEADS,
    ATTENTION_NEG_INF,
    CONTINUOUS_CLIP,
    ENTITY_PADDING_THRESHOLD,
    LAYER_NORM_EPS,
    LEAKY_SLOPE,
    LOG_STD_MAX,
    LOG_STD_MIN,
    MASKED_LOGIT,
    NORMALIZED_CLIP,
    PLAIN_CONVS,
    POOL_EPS,
    RESNET_BLOCKS,
    RESNET_CHANNELS,
    TANH_EPS,
    PolicyArchitecture,
    lstm_step,
    PolicyOutput,
    entity_indices,
    parameter_shapes,
    vector_indices,
    visual_indices,
)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _swish(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), overwriting ``x`` (a temporary of the caller's).

    Written as (x/2) * (1 + tanh(x/2)): no overflow warnings for large negative x, and
    three passes over the array with one allocation (acting cost at many agents).
    """
    half = np.multiply(x, 0.5, out=x)
    out = np.tanh(half)
    out += 1.0
    out *= half
    return out


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, LEAKY_SLOPE * x)


def conv2d_valid(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """'Valid' 2D convolution by im2col + one matmul.

    The columns are built from ``kh * kw`` strided slices of ``x`` laid side by side on the
    channel axis (each a copy of whole channel rows, ordered (kh, kw, C) like the HWIO kernel)
    rather than by transposing a sliding-window view (a gather of single floats): the
    gateway's acting cost for resnet and match3 (benchmarks/results/bench_numpy_encoders.md).

    Args:
        x: float32 ``[n, H, W, C]``.
        kernel: float32 ``[kh, kw, C, O]`` (HWIO).
        bias: float32 ``[O]``.
        stride: the same in both directions.

    Returns:
        float32 ``[n, oh, ow, O]``.
    """
    kh, kw, c, o = kernel.shape
    n, h, w = x.shape[:3]
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    cols = np.empty((n, oh, ow, kh * kw * c), np.float32)
    for i in range(kh):
        for j in range(kw):
            k = (i * kw + j) * c
            cols[..., k : k + c] = x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
    out = cols.reshape(n * oh * ow, kh * kw * c) @ kernel.reshape(kh * kw * c, o)
    out += bias
    return out.reshape(n, oh, ow, o)


def _conv_same(x: np.ndarray, p: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """3x3 stride-1 convolution with one pixel of zero padding (resnet), NHWC."""
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2, w + 2, c), np.float32)
    padded[:, 1:-1, 1:-1] = x
    return conv2d_valid(padded, p[f"{name}/kernel"], p[f"{name}/bias"], 1)


def _max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
    """3x3 max-pool with stride 2 and no padding, NHWC: the maximum of nine strided slices
    (whole channel rows at a time; a reduction over the window axes of a sliding-window view
    was the slowest part of resnet acting)."""
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = x[:, 0 : 2 * oh - 1 : 2, 0 : 2 * ow - 1 : 2, :].copy()
    for i in range(3):
        for j in range(3):
            if i or j:
                np.maximum(out, x[:, i : i + 2 * oh - 1 : 2, j : j + 2 * ow - 1 : 2, :], out=out)
    return out


#: float32 values of one image's layer, times the agents convolved together, that stay in the
#: CPU's cache: the convolutions run on chunks of agents of about this size (12 84x84 images
#: at once cost 4x per agent what one does; benchmarks/results/bench_numpy_encoders.md)
_CONV_CHUNK_FLOATS = 1 << 18
#: channels of the widest layer, for the chunk size (match3's 144 at full resolution aside)
_CHUNK_CHANNELS = 64


def _conv_trunk(p: Mapping[str, np.ndarray], name: str, vis_encode_type: str, x: np.ndarray) -> np.ndarray:
    """An encoder's convolutions on NHWC ``x`` ``[n, H, W, C]``: flat features ``[n, F]``
    before the dense layer (resnet: after its final swish)."""
    if vis_encode_type == "resnet":
        for s in range(len(RESNET_CHANNELS)):
            x = _max_pool_3x3_s2(_conv_same(x, p, f"{name}/stack{s}/conv"))
            for b in range(RESNET_BLOCKS):
                y = _conv_same(_swish(x.copy()), p, f"{name}/stack{s}/block{b}/conv0")
                x = x + _conv_same(_swish(y), p, f"{name}/stack{s}/block{b}/conv1")
        return _swish(x.reshape(x.shape[0], -1))
    for j, (_, stride, _) in enumerate(PLAIN_CONVS[vis_encode_type]):
        x = _leaky_relu(conv2d_valid(x, p[f"{name}/conv{j}/kernel"], p[f"{name}/conv{j}/bias"], stride))
    return x.reshape(x.shape[0], -1)


def visual_encoding(p: Mapping[str, np.ndarray], name: str, vis_encode_type: str, image: np.ndarray) -> np.ndarray:
    """One visual encoder (``common.architecture.visual_encoder_shapes``).

    Args:
        p: parameters containing ``{name}/...``.
        name: e.g. ``encoder/0``.
        vis_encode_type: one of ``common.architecture.VIS_ENCODE_TYPES``.
        image: float32 ``[n, C, H, W]`` (Unity's layout).

    Returns:
        float32 ``[n, hidden_units]``.
    """
    x = np.asarray(image, dtype=np.float32).transpose(0, 2, 3, 1)  # -> [n, H, W, C] for the HWIO kernels
    n, h, w = x.shape[:3]
    chunk = max(1, _CONV_CHUNK_FLOATS // (h * w * _CHUNK_CHANNELS))
    if n <= chunk:
        features = _conv_trunk(p, name, vis_encode_type, x)
    else:  # the convolutions chunk by chunk of agents, the dense layer (its weights read once) on all
        features = np.concatenate([_conv_trunk(p, name, vis_encode_type, x[i : i + chunk]) for i in range(0, n, chunk)])
    out = features @ p[f"{name}/dense/kernel"] + p[f"{name}/dense/bias"]
    return np.maximum(out, 0.0) if vis_encode_type == "resnet" else _leaky_relu(out)


def _layer_norm(x: np.ndarray) -> np.ndarray:
    """ML-Agents' LayerNorm over the last axis, without gain or bias."""
    centered = x - x.mean(axis=-1, keepdims=True)
    return centered / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + LAYER_NORM_EPS)


def entity_attention(
    p: Mapping[str, np.ndarray], indices: list[int], self_encoding: np.ndarray | None, observations: list[np.ndarray]
) -> np.ndarray:
    """Variable-length observations through ML-Agents' entity embedding + residual self-attention.

    Args:
        p: parameters (``common.architecture.attention_shapes``).
        indices: the entity observations' indices.
        self_encoding: float32 ``[n, self_encoding_size]`` or None (no vector or visual observation).
        observations: all observations; entity ones ``[n, max_entities, entity_size]``, padding
            rows all zero (ML-Agents' BufferSensor).

    Returns:
        float32 ``[n, ATTENTION_EMBEDDING_SIZE]``: the attended entities' mean over the real ones.
    """
    e = ATTENTION_EMBEDDING_SIZE
    embedded_self = None
    if self_encoding is not None:
        embedded_self = _swish(self_encoding @ p["attention/self/dense/kernel"] + p["attention/self/dense/bias"])
    embeddings, masks = [], []
    for i in indices:
        entities = np.asarray(observations[i], dtype=np.float32)
        masks.append((np.einsum("nmk,nmk->nm", entities, entities) < ENTITY_PADDING_THRESHOLD).astype(np.float32))
        if embedded_self is not None:
            repeated = np.broadcast_to(embedded_self[:, None, :], (entities.shape[0], entities.shape[1], e))
            entities = np.concatenate([repeated, entities], axis=2)
        embeddings.append(_swish(entities @ p[f"encoder/{i}/dense/kernel"] + p[f"encoder/{i}/dense/bias"]))
    inp = _layer_norm(np.concatenate(embeddings, axis=1))  # [n, m, E]
    mask = np.concatenate(masks, axis=1)  # [n, m], 1 = padding
    n, m = mask.shape
    heads = ATTENTION_HEADS
    q, k, v = (
        (inp @ p[f"attention/{w}/kernel"] + p[f"attention/{w}/bias"]).reshape(n, m, heads, e // heads).transpose(0, 2, 1, 3)
        for w in ("q", "k", "v")
    )
    key_mask = mask[:, None, None, :]
    scores = (1.0 - key_mask) * (q @ k.transpose(0, 1, 3, 2)) / np.float32(math.sqrt(e)) + key_mask * np.float32(ATTENTION_NEG_INF)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attended = ((scores / scores.sum(axis=-1, keepdims=True)) @ v).transpose(0, 2, 1, 3).reshape(n, m, e)
    out = _layer_norm(attended @ p["attention/out/kernel"] + p["attention/out/bias"] + inp)
    keep = 1.0 - mask
    return ((out * keep[:, :, None]).sum(axis=1) / (keep.sum(axis=1, keepdims=True) + np.float32(POOL_EPS))).astype(np.float32)


def masked_logits(logits: np.ndarray, action_mask: np.ndarray | None) -> np.ndarray:
    """Sets the logits of forbidden actions (mask true) to ``MASKED_LOGIT``."""
    if action_mask is None:
        return logits
    return np.where(action_mask, np.float32(MASKED_LOGIT), logits)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class NumpyPolicy:
    """The actor of one behavior, evaluated with numpy on CPU.

    Args:
        architecture: what the parameters mean.
        params: flat dict name -> array (see ``parameter_shapes``); extra names are ignored
            (e.g. critic weights), missing or mis-shaped ones are a ``ValueError`` naming them.
    """

    def __init__(self, architecture: PolicyArchitecture, params: Mapping[str, np.ndarray]):
        self.architecture = architecture
        expected = parameter_shapes(self.architecture)
        missing = sorted(set(expected) - set(params))
        if missing:
            raise ValueError(f"policy parameters: missing {missing}")
        self.params: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            value = np.ascontiguousarray(np.asarray(params[name], dtype=np.float32))
            if value.shape != shape:
                raise ValueError(f"policy parameter {name}: shape {value.shape}, expected {shape}")
            self.params[name] = value
        spec = self.architecture.behavior_spec
        self._vector = vector_indices(spec)
        self._visual = visual_indices(spec)
        self._entities = entity_indices(spec)
        self._branches = spec.action_spec.discrete_branches
        self._offsets = np.concatenate([[0], np.cumsum(self._branches)]).astype(int)
        self._gaussian_std = None
        if "policy/log_std" in self.params and self.architecture.continuous_distribution == "gaussian":
            # a state-independent std: exp(log_std) and the log-prob's constant part, once per snapshot
            log_std = self.params["policy/log_std"].astype(np.float64)
            self._gaussian_std = np.exp(log_std).astype(np.float32)
            self._gaussian_log_prob_const = float(-(log_std.sum() + log_std.size * _HALF_LOG_2PI))
        if self.architecture.normalize:
            # precomputed 1/sqrt(var): the normalizer is fixed within one snapshot
            self._inv_std = {i: (1.0 / np.sqrt(self.params[f"normalizer/var/{i}"])).astype(np.float32)
                             for i in self._vector}

    @classmethod
    def from_snapshot(cls, snapshot) -> "NumpyPolicy":
        """Builds the policy from a ``tandem.v1.PolicySnapshot``."""
        params = {
            name: tensor.from_proto(t, name=f"snapshot.parameters[{name!r}]", dtype=np.float32)
            for name, t in snapshot.parameters.items()
        }
        return cls(PolicyArchitecture.from_proto(snapshot.architecture), params)

    # -- forward -------------------------------------------------------------------
    def hidden(self, observations: list[np.ndarray]) -> np.ndarray:
        """The body's output for n agents.

        Args:
            observations: per observation spec, float32 ``[n, *shape]``.

        Returns:
            float32 ``[n, hidden_units]`` (or the raw encoding when num_layers is 0).
        """
        spec = self.architecture.behavior_spec
        if len(observations) != len(spec.observations):
            raise ValueError(
                f"behavior {spec.name}: {len(observations)} observations given, spec has {len(spec.observations)}"
            )
        p = self.params
        parts = []
        n = None
        for i in self._vector:
            x = np.asarray(observations[i], dtype=np.float32)
            n = x.shape[0]
            x = x.reshape(n, -1)
            if self.architecture.normalize:
                x = np.clip((x - p[f"normalizer/mean/{i}"]) * self._inv_std[i], -NORMALIZED_CLIP, NORMALIZED_CLIP)
            parts.append(x)
        for i in self._visual:
            parts.append(visual_encoding(p, f"encoder/{i}", self.architecture.vis_encode_type, observations[i]))
        if self._entities:
            self_encoding = None if not parts else parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            parts.append(entity_attention(p, self._entities, self_encoding, observations))
        h = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        for j in range(self.architecture.num_layers):
            h = h @ p[f"body/dense{j}/kernel"]
            h += p[f"body/dense{j}/bias"]
            h = _swish(h)
        return h

    @property
    def memory_size(self) -> int:
        """Floats of LSTM memory per agent (0: no memory)."""
        return self.architecture.memory_size

    def initial_memories(self, n: int) -> np.ndarray:
        """The memory of agents starting an episode: zeros ``[n, memory_size]``."""
        return np.zeros((n, self.memory_size), np.float32)

    def recurrent(self, h: np.ndarray, memories: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One LSTM step after the body.

        Args:
            h: float32 ``[n, width]``, the body's output.
            memories: float32 ``[n, memory_size]`` before this step (None: zeros, a new episode).

        Returns:
            (the LSTM's hidden output ``[n, memory_size / 2]``, the memories after the step ``[n, memory_size]``).
        """
        n = h.shape[0]
        if memories is None:
            memories = self.initial_memories(n)
        memories = np.asarray(memories, np.float32)
        if memories.shape != (n, self.memory_size):
            raise ValueError(f"memories: shape {memories.shape}, expected {(n, self.memory_size)}")
        p = self.params
        out, new = lstm_step(h, memories, p["lstm/kernel"], p["lstm/recurrent_kernel"], p["lstm/bias"])
        return out.astype(np.float32, copy=False), new.astype(np.float32, copy=False)

    def distribution(
        self, observations: list[np.ndarray], action_mask: np.ndarray | None = None, memories: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Distribution parameters: ``mu``/``log_std`` ([n, c]) and masked ``logits`` ([n, sum(branches)]);
        with memory also ``memories`` [n, memory_size], the state after this step (``memories``
        is the state before it, None: zeros)."""
        h = self.hidden(observations)
        p = self.params
        out: dict[str, np.ndarray] = {}
        if self.memory_size:
            h, out["memories"] = self.recurrent(h, memories)
        if "policy/mu/kernel" in p:
            out["mu"] = h @ p["policy/mu/kernel"] + p["policy/mu/bias"]
            if self.architecture.continuous_distribution == "gaussian":
                out["log_std"] = np.broadcast_to(p["policy/log_std"], out["mu"].shape)
            else:
                out["log_std"] = np.clip(h @ p["policy/log_std/kernel"] + p["policy/log_std/bias"], LOG_STD_MIN, LOG_STD_MAX)
        if "policy/logits/kernel" in p:
            logits = h @ p["policy/logits/kernel"] + p["policy/logits/bias"]
            if action_mask is not None:
                action_mask = np.asarray(action_mask, dtype=bool)
                if action_mask.shape != logits.shape:
                    raise ValueError(f"action_mask: shape {action_mask.shape}, expected {logits.shape}")
            out["logits"] = masked_logits(logits, action_mask)
        return out

    def act(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None,
        rng: np.random.Generator,
        deterministic: bool = False,
        memories: np.ndarray | None = None,
    ) -> PolicyOutput:
        """Chooses actions for n agents.

        Args:
            observations: per observation spec, float32 ``[n, *shape]``.
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            rng: the source of randomness (one per gateway worker).
            deterministic: the mean and the most probable allowed action instead of a
                sample (``--inference``). The environment then gets the mean as it gets a
                sample: ``clip(mu, -3, 3) / 3`` (PPO) or ``tanh(mu)`` (SAC), as the ONNX
                model's ``deterministic_continuous_actions`` and the JAX actor give it
                (ML-Agents sends SAC's raw mean; docs/ONNX.md says why Tandem does not).
            memories: float32 ``[n, memory_size]``, each agent's LSTM memory before this step
                (None: zeros); the output's ``memories`` is the state after it.
        """
        dist = self.distribution(observations, action_mask, memories)
        spec = self.architecture.behavior_spec
        n = np.asarray(observations[0]).shape[0]
        c = spec.action_spec.continuous_size
        log_probs = np.zeros(n, dtype=np.float32)
        continuous = np.zeros((n, c), dtype=np.float32)
        env_continuous = continuous
        if c:
            mu, log_std = dist["mu"], dist["log_std"]
            if deterministic:
                noise = np.zeros_like(mu)
            else:
                noise = rng.standard_normal(mu.shape, dtype=np.float32)
            if self._gaussian_std is not None:  # the same formulas with the per-snapshot parts precomputed
                continuous = noise * self._gaussian_std
                continuous += mu
                log_probs += self._gaussian_log_prob_const - 0.5 * np.einsum("ij,ij->i", noise, noise)
            else:
                continuous = (mu + np.exp(log_std) * noise).astype(np.float32)
                log_probs += (-0.5 * noise * noise - log_std - _HALF_LOG_2PI).sum(axis=1)
            if self.architecture.continuous_distribution == "gaussian":
                env_continuous = np.clip(continuous, -CONTINUOUS_CLIP, CONTINUOUS_CLIP) / CONTINUOUS_CLIP
            else:
                env_continuous = np.tanh(continuous)
                log_probs -= np.log(1.0 - env_continuous * env_continuous + TANH_EPS).sum(axis=1)
        discrete = np.zeros((n, len(self._branches)), dtype=np.int32)
        if self._branches:
            logits = dist["logits"]
            if not deterministic:
                u = rng.random(logits.shape, dtype=np.float32)
                gumbel = -np.log(-np.log(np.maximum(u, np.float32(1e-20))))
            for b in range(len(self._branches)):
                lo, hi = self._offsets[b], self._offsets[b + 1]
                branch = logits[:, lo:hi]
                choice = np.argmax(branch if deterministic else branch + gumbel[:, lo:hi], axis=1)
                discrete[:, b] = choice
                log_probs += np.take_along_axis(log_softmax(branch), choice[:, None], axis=1)[:, 0]
        return PolicyOutput(
            continuous=continuous,
            discrete=discrete,
            log_probs=log_probs.astype(np.float32, copy=False),
            env_continuous=np.asarray(env_continuous, dtype=np.float32),
            memories=dist.get("memories"),
        )

    def log_prob(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None,
        continuous: np.ndarray,
        discrete: np.ndarray,
        memories: np.ndarray | None = None,
    ) -> np.ndarray:
        """Joint log-probability float32 ``[n]`` of given raw actions (for tests and checks)."""
        dist = self.distribution(observations, action_mask, memories)
        n = np.asarray(observations[0]).shape[0]
        total = np.zeros(n, dtype=np.float64)
        if "mu" in dist:
            u = np.asarray(continuous, np.float32)
            z = (u - dist["mu"]) * np.exp(-dist["log_std"])
            total += (-0.5 * z * z - dist["log_std"] - _HALF_LOG_2PI).sum(axis=1)
            if self.architecture.continuous_distribution == "tanh_gaussian":
                t = np.tanh(u)
                total -= np.log(1.0 - t * t + TANH_EPS).sum(axis=1)
        if "logits" in dist:
            for b in range(len(self._branches)):
                lo, hi = self._offsets[b], self._offsets[b + 1]
                lp = log_softmax(dist["logits"][:, lo:hi])
                total += np.take_along_axis(lp, np.asarray(discrete)[:, b : b + 1].astype(int), axis=1)[:, 0]
        return total.astype(np.float32)
