"""Action distributions in JAX: log-probabilities, entropies, sampling.

Why: PPO's ratio and entropy bonus, and acting in tests, need the same numbers as the
gateway's numpy actor (``common/architecture.py``). Conventions (ML-Agents'):

* continuous ``gaussian``: N(mu, exp(log_std)), log-prob of the raw sample, the environment
  gets ``clip(a, -3, 3) / 3``; entropy is the *mean* over action dimensions;
* continuous ``tanh_gaussian`` (SAC): the environment gets ``tanh(u)``, log-prob has the
  change-of-variables correction ``-sum log(1 - tanh(u)^2 + TANH_EPS)`` (as the gateway's
  actor); SAC's losses use the reparameterised ``tanh_gaussian_rsample`` with the exact form;
* discrete: one categorical per branch over ``[n, sum(branches)]`` logits; mask true = not
  allowed, those logits become ``MASKED_LOGIT``; entropy is the *sum* over branches;
* the joint log-prob is the sum of all continuous dimensions and branches; PPO's ratio is
  taken per dimension / branch (``log_prob_parts``), as ML-Agents does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.architecture import CONTINUOUS_CLIP, MASKED_LOGIT, TANH_EPS

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)


class DistParams(NamedTuple):
    """Distribution parameters for n agents; absent parts are None.

    Attributes:
        mu: ``[n, c]`` Gaussian mean.
        log_std: ``[n, c]`` Gaussian log standard deviation (broadcast for PPO).
        logits: ``[n, sum(branches)]`` discrete logits, already masked.
    """

    mu: jax.Array | None
    log_std: jax.Array | None
    logits: jax.Array | None


class Actions(NamedTuple):
    """Sampled actions: raw continuous ``[n, c]``, discrete ``[n, b]`` int32, joint ``log_probs`` ``[n]``."""

    continuous: jax.Array
    discrete: jax.Array
    log_probs: jax.Array


def mask_logits(logits: jax.Array, action_mask: jax.Array | None) -> jax.Array:
    """Forbidden actions (mask true) get ``MASKED_LOGIT``: probability 0 in float32."""
    if action_mask is None:
        return logits
    return jnp.where(action_mask, jnp.float32(MASKED_LOGIT), logits)


def gaussian_log_prob(mu: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """Log-density ``[n]`` of raw actions ``[n, c]``, summed over dimensions."""
    z = (actions - mu) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z * z - log_std - _HALF_LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Entropy ``[n]``: ML-Agents averages the per-dimension entropies."""
    return jnp.mean(log_std + _HALF_LOG_2PI_E, axis=-1)


def tanh_correction(u: jax.Array) -> jax.Array:
    """``sum log(1 - tanh(u)^2 + TANH_EPS)`` ``[n]``: subtract from the Gaussian log-prob of u."""
    t = jnp.tanh(u)
    return jnp.sum(jnp.log(1.0 - t * t + TANH_EPS), axis=-1)


def tanh_gaussian_rsample(mu: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised squashed sample ``tanh(u)`` ``[n, c]`` and its log-density ``[n]``.

    Gradients flow through ``mu`` and ``log_std`` (SAC's policy loss). The correction
    ``log(1 - tanh(u)^2)`` is written as ``2 (log 2 - u - softplus(-2u))``, exact for large ``|u|``.
    """
    noise = jax.random.normal(key, mu.shape, mu.dtype)
    u = mu + jnp.exp(log_std) * noise
    log_prob = jnp.sum(-0.5 * noise * noise - log_std - _HALF_LOG_2PI, axis=-1)
    log_prob = log_prob - jnp.sum(2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), log_prob


def env_continuous(actions: jax.Array, continuous_distribution: str = "gaussian") -> jax.Array:
    """What the environment receives for raw continuous actions."""
    if continuous_distribution == "tanh_gaussian":
        return jnp.tanh(actions)
    return jnp.clip(actions, -CONTINUOUS_CLIP, CONTINUOUS_CLIP) / CONTINUOUS_CLIP


def _branch_slices(branches: tuple[int, ...]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for size in branches:
        out.append((lo, lo + size))
        lo += size
    return out


def branch_log_softmax(logits: jax.Array, branches: tuple[int, ...]) -> jax.Array:
    """Per-branch log-probabilities ``[n, sum(branches)]`` of (already masked) logits."""
    return jnp.concatenate([jax.nn.log_softmax(logits[..., lo:hi], axis=-1) for lo, hi in _branch_slices(branches)], axis=-1)


def categorical_log_prob(logits: jax.Array, actions: jax.Array, branches: tuple[int, ...]) -> jax.Array:
    """Joint log-prob ``[n]`` of discrete actions ``[n, b]`` under masked logits ``[n, sum(branches)]``."""
    total = jnp.zeros(logits.shape[:-1], logits.dtype)
    for b, (lo, hi) in enumerate(_branch_slices(branches)):
        lp = jax.nn.log_softmax(logits[..., lo:hi], axis=-1)
        total = total + jnp.take_along_axis(lp, actions[..., b : b + 1].astype(jnp.int32), axis=-1)[..., 0]
    return total


def categorical_entropy(logits: jax.Array, branches: tuple[int, ...]) -> jax.Array:
    """Entropy ``[n]`` summed over branches; masked actions contribute 0."""
    total = jnp.zeros(logits.shape[:-1], logits.dtype)
    for lo, hi in _branch_slices(branches):
        lp = jax.nn.log_softmax(logits[..., lo:hi], axis=-1)
        total = total - jnp.sum(jnp.exp(lp) * lp, axis=-1)
    return total


def log_prob_parts(dist: DistParams, continuous: jax.Array, discrete: jax.Array, branches: tuple[int, ...]) -> jax.Array:
    """Per-dimension log-probabilities ``[n, c + b]`` of given raw actions (gaussian policy).

    Columns: one per continuous dimension (the Gaussian density of that coordinate), then
    one per discrete branch (the chosen action's log-probability). Their sum over columns is
    the joint log-prob. PPO's ratio is taken per column, as ML-Agents' ``ActionLogProbs.flatten``.
    """
    parts = []
    if dist.mu is not None:
        z = (continuous - dist.mu) * jnp.exp(-dist.log_std)
        parts.append(-0.5 * z * z - dist.log_std - _HALF_LOG_2PI)
    if dist.logits is not None:
        for b, (lo, hi) in enumerate(_branch_slices(branches)):
            lp = jax.nn.log_softmax(dist.logits[..., lo:hi], axis=-1)
            parts.append(jnp.take_along_axis(lp, discrete[..., b : b + 1].astype(jnp.int32), axis=-1))
    if not parts:
        raise ValueError("a behavior needs at least one action (continuous or discrete)")
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def log_prob_and_entropy(
    dist: DistParams,
    continuous: jax.Array,
    discrete: jax.Array,
    branches: tuple[int, ...],
    continuous_distribution: str = "gaussian",
) -> tuple[jax.Array, jax.Array]:
    """Joint log-prob ``[n]`` of given raw actions and entropy ``[n]`` (ML-Agents' sum of parts).

    For tanh_gaussian the entropy is the Gaussian's (before squashing); SAC uses -log-prob.
    """
    log_prob = None
    entropy = None
    if dist.mu is not None:
        log_prob = gaussian_log_prob(dist.mu, dist.log_std, continuous)
        if continuous_distribution == "tanh_gaussian":
            log_prob = log_prob - tanh_correction(continuous)
        entropy = gaussian_entropy(dist.log_std)
    if dist.logits is not None:
        lp = categorical_log_prob(dist.logits, discrete, branches)
        ent = categorical_entropy(dist.logits, branches)
        log_prob = lp if log_prob is None else log_prob + lp
        entropy = ent if entropy is None else entropy + ent
    if log_prob is None:
        raise ValueError("a behavior needs at least one action (continuous or discrete)")
    return log_prob, entropy


def sample(
    dist: DistParams,
    key: jax.Array,
    n: int,
    branches: tuple[int, ...],
    continuous_distribution: str = "gaussian",
    deterministic: bool = False,
) -> Actions:
    """Samples actions for n agents, or with ``deterministic`` takes the mean and the argmax.

    The continuous actions returned are raw (before ``env_continuous``): deterministic ones
    are ``mu`` itself, so the environment gets ``env_continuous(mu)``, i.e. ``tanh(mu)`` for
    SAC, exactly as the gateway's ``NumpyPolicy`` and the ONNX model's
    ``deterministic_continuous_actions`` (ML-Agents sends SAC's raw mean instead; see
    docs/ONNX.md, "SAC's deterministic output").
    """
    key_c, key_d = jax.random.split(key)
    log_prob = jnp.zeros((n,), jnp.float32)
    if dist.mu is not None:
        if deterministic:
            continuous = dist.mu
        else:
            noise = jax.random.normal(key_c, dist.mu.shape, dist.mu.dtype)
            continuous = dist.mu + jnp.exp(dist.log_std) * noise
        log_prob = log_prob + gaussian_log_prob(dist.mu, dist.log_std, continuous)
        if continuous_distribution == "tanh_gaussian":
            log_prob = log_prob - tanh_correction(continuous)
    else:
        continuous = jnp.zeros((n, 0), jnp.float32)
    if dist.logits is not None:
        chosen = []
        keys = jax.random.split(key_d, len(branches))
        for b, (lo, hi) in enumerate(_branch_slices(branches)):
            branch_logits = dist.logits[:, lo:hi]
            if deterministic:
                chosen.append(jnp.argmax(branch_logits, axis=-1))
            else:
                chosen.append(jax.random.categorical(keys[b], branch_logits, axis=-1))
        discrete = jnp.stack(chosen, axis=-1).astype(jnp.int32)
        log_prob = log_prob + categorical_log_prob(dist.logits, discrete, branches)
    else:
        discrete = jnp.zeros((n, 0), jnp.int32)
    return Actions(continuous=continuous, discrete=discrete, log_probs=log_prob)
