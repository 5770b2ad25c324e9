"""Curiosity (ICM, Pathak et al. 2017) as ML-Agents' ``curiosity`` reward signal.

Why: in sparse-reward tasks the agent rarely sees a reward; curiosity rewards transitions
that the agent cannot yet predict, so it explores.

Networks (under the signal's ``params``; h = ``network_settings.hidden_units``):

* encoder ``phi``: observation encoders and a swish body from ``network_settings``
  (``encoder/...``, ``body/...``) -> ``[n, h]``;
* inverse model: ``[phi(s), phi(s')]`` -> dense 256 (swish) -> continuous action
  prediction ``[n, c]`` and per-branch softmax ``[n, sum(branches)]``;
* forward model: ``[phi(s), flat action]`` -> dense 256 (swish) -> predicted ``phi(s')``.

Reward: ``0.5 * sum((phi(s') - forward(phi(s), a))^2)`` per step, capped at ``1 / strength``
(so that the reward after ``strength`` is at most 1) and 0 until the first update, as
ML-Agents. Loss: ``10 * (0.2 * forward + 0.8 * inverse)`` where the inverse loss is the
squared error of continuous actions (summed over dimensions) plus the cross-entropy of
the discrete ones. Curiosity ignores episode ends (its return continues past them).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from trainer_server.learning import networks
from trainer_server.learning.reward_signals.base import (
    Metrics,
    RewardSignal,
    SignalBatch,
    State,
    body_width,
    encoder_architecture,
    flat_action_size,
    flat_actions,
)

#: forward vs inverse loss weight and loss multiplier (ML-Agents' constants)
FORWARD_WEIGHT = 0.2
LOSS_MULTIPLIER = 10.0
#: width of the inverse and forward models' hidden layer (ML-Agents')
MODEL_UNITS = 256
#: guard of the inverse model's log-probabilities
LOG_EPS = 1.0e-10


class CuriositySignal(RewardSignal):
    """``reward_signals.curiosity``."""

    kind = "curiosity"
    stat_name = "Curiosity"
    ignore_done = True

    def __init__(self, spec, settings) -> None:
        super().__init__(spec, settings)
        self.arch = encoder_architecture(spec, settings)

    def init_params(self, key: jax.Array) -> State:
        h = body_width(self.arch)
        a = self.spec.action_spec
        k_enc, k_inv, k_c, k_d, k_fwd, k_out = jax.random.split(key, 6)
        params = networks.init_network_body(k_enc, self.arch, "")
        params.update(networks.init_dense(k_inv, 2 * h, MODEL_UNITS, "inverse/hidden"))
        if a.continuous_size:
            params.update(networks.init_dense(k_c, MODEL_UNITS, a.continuous_size, "inverse/continuous", xavier=True))
        if a.mask_size:
            params.update(networks.init_dense(k_d, MODEL_UNITS, a.mask_size, "inverse/discrete", xavier=True))
        params.update(networks.init_dense(k_fwd, h + flat_action_size(self.spec), MODEL_UNITS, "forward/hidden"))
        params.update(networks.init_dense(k_out, MODEL_UNITS, h, "forward/out", xavier=True))
        return params

    def init_extra(self, key: jax.Array) -> State:
        return {"updated": jnp.zeros((), jnp.float32)}

    # -- the models ----------------------------------------------------------------------
    def encode(self, params: State, observations, norm: networks.NormStats) -> jax.Array:
        """``phi``: ``[n, h]``."""
        return networks.network_body(params, "", self.arch, list(observations), norm)

    def predict_next(self, params: State, phi: jax.Array, batch: SignalBatch) -> jax.Array:
        """The forward model's ``phi(s')`` ``[n, h]``."""
        actions = flat_actions(self.spec, batch.continuous_actions, batch.discrete_actions)
        hidden = jax.nn.swish(networks.dense(params, "forward/hidden", jnp.concatenate([phi, actions], axis=-1)))
        return networks.dense(params, "forward/out", hidden)

    def forward_errors(self, params: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        """``0.5 * sum((phi(s') - predicted)^2)`` per step ``[n]``."""
        phi = self.encode(params, batch.observations, norm)
        target = self.encode(params, batch.next_observations, norm)
        return 0.5 * jnp.sum((target - self.predict_next(params, phi, batch)) ** 2, axis=-1)

    def inverse_loss(self, params: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        """Mean error of the actions predicted from ``(phi(s), phi(s'))``."""
        a = self.spec.action_spec
        phi = self.encode(params, batch.observations, norm)
        phi_next = self.encode(params, batch.next_observations, norm)
        hidden = jax.nn.swish(networks.dense(params, "inverse/hidden", jnp.concatenate([phi, phi_next], axis=-1)))
        loss = jnp.zeros((), jnp.float32)
        if a.continuous_size:
            predicted = networks.dense(params, "inverse/continuous", hidden)
            loss = loss + jnp.mean(jnp.sum((batch.continuous_actions - predicted) ** 2, axis=-1))
        if a.mask_size:
            logits = networks.dense(params, "inverse/discrete", hidden)
            probs, lo = [], 0
            for size in a.discrete_branches:
                probs.append(jax.nn.softmax(logits[:, lo : lo + size], axis=-1))
                lo += size
            onehot = flat_actions(self.spec, batch.continuous_actions[:, :0], batch.discrete_actions)
            cross_entropy = -jnp.sum(jnp.log(jnp.concatenate(probs, axis=-1) + LOG_EPS) * onehot, axis=-1)
            loss = loss + jnp.mean(cross_entropy)
        return loss

    # -- the signal --------------------------------------------------------------------
    def rewards(self, state: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        errors = self.forward_errors(state["params"], batch, norm)
        cap = 1.0 / self.strength if self.strength > 0 else jnp.inf
        return jnp.minimum(errors, cap) * state["updated"]

    def loss(self, params: State, state: State, batch: SignalBatch, norm, key: jax.Array, expert: Any) -> tuple[jax.Array, Metrics]:
        forward = jnp.mean(self.forward_errors(params, batch, norm))
        inverse = self.inverse_loss(params, batch, norm)
        loss = LOSS_MULTIPLIER * (FORWARD_WEIGHT * forward + (1.0 - FORWARD_WEIGHT) * inverse)
        return loss, {"Losses/Curiosity Forward Loss": forward, "Losses/Curiosity Inverse Loss": inverse}

    def after_step(self, state: State, metrics: Metrics) -> State:
        return {**state, "updated": jnp.ones((), jnp.float32)}
