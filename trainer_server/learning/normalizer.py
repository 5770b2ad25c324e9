"""Running mean/variance of vector observations (ML-Agents' ``normalize: true``).

Why: observation scales differ wildly across Unity projects; ML-Agents keeps running
statistics per vector observation and feeds the networks
``clip((x - mean) / sqrt(var), -5, 5)``. The statistics follow ML-Agents' Normalizer:
count starts at 1, mean at 0, the sum of squared deviations (``m2``) at 1, and each new
batch of observations is folded in with the parallel Welford update. They are updated
from every trajectory as it arrives, before its values are estimated (as ML-Agents does).
Visual observations are never normalized.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from common.architecture import NORMALIZED_CLIP, vector_indices
from common.specs import BehaviorSpec


class NormalizerState(NamedTuple):
    """Statistics keyed by the observation's index in the spec (as a string).

    Attributes:
        mean: per vector observation, float32 ``[size]``.
        m2: per vector observation, float32 ``[size]``: sum of squared deviations.
        count: int32 scalar, observations seen plus ML-Agents' initial 1.
    """

    mean: dict[str, jax.Array]
    m2: dict[str, jax.Array]
    count: jax.Array


def init(spec: BehaviorSpec) -> NormalizerState:
    """Fresh statistics: mean 0, variance 1, for every vector observation of ``spec``."""
    mean, m2 = {}, {}
    for i in vector_indices(spec):
        size = spec.observations[i].shape[0]
        mean[str(i)] = jnp.zeros((size,), jnp.float32)
        m2[str(i)] = jnp.ones((size,), jnp.float32)
    return NormalizerState(mean=mean, m2=m2, count=jnp.ones((), jnp.int32))


def update(state: NormalizerState, observations: list[jax.Array], mask: jax.Array) -> NormalizerState:
    """Folds the rows where ``mask`` is true into the statistics.

    Args:
        state: the current statistics.
        observations: per observation spec, ``[T, *shape]`` (visual entries are ignored).
        mask: bool ``[T]``; padded rows are false.
    """
    m = mask.astype(jnp.float32)[:, None]
    total = state.count + jnp.sum(mask.astype(jnp.int32))
    total_f = total.astype(jnp.float32)
    mean, m2 = {}, {}
    for key, old_mean in state.mean.items():
        x = observations[int(key)]
        to_old = (x - old_mean) * m
        new_mean = old_mean + jnp.sum(to_old, axis=0) / total_f
        mean[key] = new_mean
        m2[key] = state.m2[key] + jnp.sum((x - new_mean) * to_old, axis=0)
    return NormalizerState(mean=mean, m2=m2, count=total)


def variance(state: NormalizerState) -> dict[str, jax.Array]:
    """The running variance per vector observation: ``m2 / count``."""
    count = state.count.astype(jnp.float32)
    return {key: m2 / count for key, m2 in state.m2.items()}


def statistics(state: NormalizerState) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(mean, var) per vector observation: what the networks and the snapshot use."""
    return state.mean, variance(state)


def normalize(x: jax.Array, mean: jax.Array, var: jax.Array) -> jax.Array:
    """``clip((x - mean) / sqrt(var), -5, 5)``, written as numpy's reference computes it."""
    inv_std = 1.0 / jnp.sqrt(var)
    return jnp.clip((x - mean) * inv_std, -NORMALIZED_CLIP, NORMALIZED_CLIP)
