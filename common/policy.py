"""CPU forward of a policy snapshot in plain numpy: how a gateway acts without JAX.

Why: gateways run beside Unity builds on machines without accelerators; after every
update the trainer sends a ``tandem.v1.PolicySnapshot`` (architecture + flat float32
parameters) and the gateway acts with it here. This module is the reference for the
parameter names (``docs/ARCHITECTURE.md``, "Policy parameter names") and for the
numbers: ``trainer_server/networks.py`` and ``trainer_server/distributions.py`` compute
the same functions in JAX, and tests hold them equal to ~1e-5.

Network (ML-Agents-like, ``vis_encode_type: simple``):

* vector observation i: ``clip((x - normalizer/mean/{i}) / sqrt(normalizer/var/{i}), -5, 5)``
  when ``normalize`` (ML-Agents' Normalizer; var is the running variance), else x as is;
* visual observation i (channels-first ``(C, H, W)`` as mlagents-envs and Unity give it,
  float in [0, 1], never normalized; moved to HWC inside): conv 8x8 stride 4 with 16
  filters, leaky ReLU (0.01), conv 4x4 stride 2 with 32 filters, leaky ReLU, flatten in
  HWC order, dense to ``hidden_units``, leaky ReLU; "valid" padding, kernels HWIO;
* body: concatenation ``[vector obs in spec order..., visual encodings in spec order...]``
  through ``num_layers`` dense layers of ``hidden_units`` with swish;
* heads: Gaussian mean ``policy/mu``; ``policy/log_std`` [c] (``gaussian``, PPO) or a dense
  ``policy/log_std`` head clipped to [-20, 2] (``tanh_gaussian``, SAC); discrete logits
  ``policy/logits`` [h, sum(branches)], masked entries (true = not allowed) set to
  ``MASKED_LOGIT`` before a per-branch softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

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

CONTINUOUS_DISTRIBUTIONS = ("gaussian", "tanh_gaussian")
VIS_ENCODE_TYPES = ("simple",)

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class PolicyArchitecture:
    """What a snapshot's parameters mean: the domain form of ``tandem.v1.PolicyArchitecture``."""

    behavior_spec: BehaviorSpec
    hidden_units: int
    num_layers: int
    normalize: bool = False
    vis_encode_type: str = "simple"
    continuous_distribution: str = "gaussian"

    def __post_init__(self) -> None:
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
            if len(obs.shape) not in (1, 3):
                raise ValueError(
                    f"behavior {self.behavior_spec.name}: observation {i} ({obs.name!r}) has shape "
                    f"{obs.shape}; only vector (size,) and visual (channels, height, width) are supported yet"
                )
            if obs.is_visual and min(obs.shape[1], obs.shape[2]) < SIMPLE_MIN_SIZE:
                raise ValueError(
                    f"behavior {self.behavior_spec.name}: visual observation {i} ({obs.name!r}) is "
                    f"{obs.shape[1]}x{obs.shape[2]}; vis_encode_type simple needs at least "
                    f"{SIMPLE_MIN_SIZE}x{SIMPLE_MIN_SIZE}"
                )

    @classmethod
    def coerce(cls, value: Any) -> "PolicyArchitecture":
        """Accepts a ``PolicyArchitecture``, its proto, or a dict of its fields.

        In the dict form ``behavior_spec`` may be a ``common.specs.BehaviorSpec`` or its proto.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            fields = dict(value)
            spec = fields.get("behavior_spec")
            if spec is not None and not isinstance(spec, BehaviorSpec):
                fields["behavior_spec"] = specs_mod.from_proto(spec)
            unknown = set(fields) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"architecture: unknown fields {sorted(unknown)}")
            return cls(**fields)
        # a tandem.v1.PolicyArchitecture message
        return cls(
            behavior_spec=specs_mod.from_proto(value.behavior_spec),
            hidden_units=int(value.hidden_units),
            num_layers=int(value.num_layers),
            normalize=bool(value.normalize),
            vis_encode_type=value.vis_encode_type or "simple",
            continuous_distribution=value.continuous_distribution or "gaussian",
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
        specs_mod.to_proto(self.behavior_spec, msg.behavior_spec)
        return msg

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def vector_indices(spec: BehaviorSpec) -> list[int]:
    """Indices of the vector observations, in spec order."""
    return [i for i, o in enumerate(spec.observations) if not o.is_visual]


def visual_indices(spec: BehaviorSpec) -> list[int]:
    """Indices of the visual observations, in spec order."""
    return [i for i, o in enumerate(spec.observations) if o.is_visual]


def conv_output_hw(height: int, width: int) -> tuple[int, int]:
    """Height and width after the simple encoder's two valid convolutions."""
    for kernel, stride, _ in SIMPLE_CONVS:
        height = (height - kernel) // stride + 1
        width = (width - kernel) // stride + 1
    return height, width


def encoding_size(arch: PolicyArchitecture) -> int:
    """Width of the body's input: vector sizes plus hidden_units per visual observation."""
    spec = arch.behavior_spec
    size = sum(int(np.prod(spec.observations[i].shape)) for i in vector_indices(spec))
    return size + arch.hidden_units * len(visual_indices(spec))


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
    for i in visual_indices(spec):
        channels, height, width = spec.observations[i].shape
        in_ch = channels
        for j, (kernel, _, filters) in enumerate(SIMPLE_CONVS):
            shapes[f"encoder/{i}/conv{j}/kernel"] = (kernel, kernel, in_ch, filters)
            shapes[f"encoder/{i}/conv{j}/bias"] = (filters,)
            in_ch = filters
        oh, ow = conv_output_hw(height, width)
        shapes[f"encoder/{i}/dense/kernel"] = (oh * ow * in_ch, h)
        shapes[f"encoder/{i}/dense/bias"] = (h,)
    width_in = encoding_size(arch)
    for j in range(arch.num_layers):
        shapes[f"body/dense{j}/kernel"] = (width_in, h)
        shapes[f"body/dense{j}/bias"] = (h,)
        width_in = h
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
    """

    continuous: np.ndarray
    discrete: np.ndarray
    log_probs: np.ndarray
    env_continuous: np.ndarray


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

    Args:
        x: float32 ``[n, H, W, C]``.
        kernel: float32 ``[kh, kw, C, O]`` (HWIO).
        bias: float32 ``[O]``.
        stride: the same in both directions.

    Returns:
        float32 ``[n, oh, ow, O]``.
    """
    kh, kw, c, o = kernel.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    n, oh, ow = windows.shape[:3]
    # windows: [n, oh, ow, C, kh, kw] -> columns ordered (kh, kw, C) like the HWIO kernel
    cols = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)
    out = cols @ kernel.reshape(kh * kw * c, o) + bias
    return out.reshape(n, oh, ow, o)


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
        architecture: ``tandem.v1.PolicyArchitecture``, a dict of its fields, or ``PolicyArchitecture``.
        params: flat dict name -> array (see ``parameter_shapes``); extra names are ignored
            (e.g. critic weights), missing or mis-shaped ones are a ``ValueError`` naming them.
    """

    def __init__(self, architecture: Any, params: Mapping[str, np.ndarray]):
        self.architecture = PolicyArchitecture.coerce(architecture)
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
        return cls(snapshot.architecture, params)

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
            # [n, C, H, W] (Unity's layout) -> [n, H, W, C] for the HWIO kernels
            x = np.asarray(observations[i], dtype=np.float32).transpose(0, 2, 3, 1)
            for j, (_, stride, _) in enumerate(SIMPLE_CONVS):
                x = _leaky_relu(conv2d_valid(x, p[f"encoder/{i}/conv{j}/kernel"], p[f"encoder/{i}/conv{j}/bias"], stride))
            x = x.reshape(x.shape[0], -1)
            parts.append(_leaky_relu(x @ p[f"encoder/{i}/dense/kernel"] + p[f"encoder/{i}/dense/bias"]))
        h = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        for j in range(self.architecture.num_layers):
            h = h @ p[f"body/dense{j}/kernel"]
            h += p[f"body/dense{j}/bias"]
            h = _swish(h)
        return h

    def distribution(self, observations: list[np.ndarray], action_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Distribution parameters: ``mu``/``log_std`` ([n, c]) and masked ``logits`` ([n, sum(branches)])."""
        h = self.hidden(observations)
        p = self.params
        out: dict[str, np.ndarray] = {}
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
    ) -> PolicyOutput:
        """Chooses actions for n agents.

        Args:
            observations: per observation spec, float32 ``[n, *shape]``.
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            rng: the source of randomness (one per gateway worker).
            deterministic: the mode (mean, argmax) instead of a sample (``--inference``).
        """
        dist = self.distribution(observations, action_mask)
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
        )

    def log_prob(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None,
        continuous: np.ndarray,
        discrete: np.ndarray,
    ) -> np.ndarray:
        """Joint log-probability float32 ``[n]`` of given raw actions (for tests and checks)."""
        dist = self.distribution(observations, action_mask)
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


def make_snapshot(
    behavior: str,
    version: int,
    architecture: Any,
    params: Mapping[str, np.ndarray],
    time_horizon: int = 0,
    deterministic: bool = False,
):
    """Builds a ``tandem.v1.PolicySnapshot`` from an architecture and flat float32 parameters."""
    from tandem.v1 import trainer_pb2

    arch = PolicyArchitecture.coerce(architecture)
    msg = trainer_pb2.PolicySnapshot(
        behavior=behavior, version=int(version), time_horizon=int(time_horizon), deterministic=deterministic
    )
    arch.to_proto(msg.architecture)
    for name, value in params.items():
        tensor.to_proto(np.asarray(value, dtype=np.float32), msg.parameters[name])
    return msg
