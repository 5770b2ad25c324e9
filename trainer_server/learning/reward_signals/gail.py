"""GAIL (Ho & Ermon 2016), optionally with VAIL's bottleneck, as ML-Agents' ``gail`` signal.

Why: learn from demonstrations by rewarding what looks like the expert: a discriminator
``D`` learns to tell the expert's steps (1) from the policy's (0); the policy is rewarded
``-log(1 - D(s))`` for steps the discriminator takes for the expert's.

Discriminator (under ``params``; h = ``network_settings.hidden_units``): observation
encoders and a swish body from ``network_settings`` whose body also reads, with
``use_actions``, the flattened actions and the done flag (``[n, c + sum(branches) + 1]``);
with ``use_vail`` a dense ``z_mu`` (128) with a learned ``z_sigma`` (128, from 1) samples
the code ``z = mu + sigma * noise`` (noise only while training); then a dense to 1 and a
sigmoid. Loss (ML-Agents' constants): ``-mean(log D(expert) + log(1 - D(policy)))``; with
VAIL ``+ beta * (KL - 0.5)`` where the KL term is ML-Agents' and ``beta`` (not trained,
from 0) follows ``max(beta + 5e-4 * (KL - 0.5), 0)`` after each step; plus the gradient
penalty ``10 * mean((|grad D(x)| - 1)^2)`` at random interpolations ``x`` of policy and
expert inputs (every observation and, with ``use_actions``, the action input; ML-Agents
differentiates through the first observation only).

The expert's steps (``ExpertData``, from a ``Demonstrations``) are sampled inside the
compiled update with its PRNG key: as many as the policy minibatch has, as ML-Agents.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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

GRADIENT_PENALTY_WEIGHT = 10.0
Z_SIZE = 128
VAIL_ALPHA = 0.0005
MUTUAL_INFORMATION = 0.5
EPSILON = 1.0e-7


class ExpertData(NamedTuple):
    """The demonstrations as device arrays (``N`` expert steps).

    Attributes:
        observations: per observation spec, float32 ``[N, *shape]``.
        continuous_actions: float32 ``[N, c]`` as sent to the environment.
        discrete_actions: int32 ``[N, b]``.
        dones: float32 ``[N]``.
    """

    observations: tuple[jax.Array, ...]
    continuous_actions: jax.Array
    discrete_actions: jax.Array
    dones: jax.Array

    @classmethod
    def from_demonstrations(cls, demonstrations: Any) -> "ExpertData":
        """From a ``trainer_server.demonstrations.Demonstrations`` (numpy arrays)."""
        return cls(
            observations=tuple(jnp.asarray(o, jnp.float32) for o in demonstrations.observations),
            continuous_actions=jnp.asarray(demonstrations.continuous_actions, jnp.float32),
            discrete_actions=jnp.asarray(demonstrations.discrete_actions, jnp.int32),
            dones=jnp.asarray(np.asarray(demonstrations.dones, np.float32)),
        )

    def sample(self, key: jax.Array, n: int) -> tuple[tuple[jax.Array, ...], jax.Array, jax.Array]:
        """``n`` uniformly drawn steps: (observations, flat-action inputs' parts, dones) as a
        ``SignalBatch``-like triple ``(observations, (continuous, discrete), dones)``."""
        idx = jax.random.randint(key, (n,), 0, self.dones.shape[0])
        return (
            tuple(o[idx] for o in self.observations),
            (self.continuous_actions[idx], self.discrete_actions[idx]),
            self.dones[idx],
        )


class GAILSignal(RewardSignal):
    """``reward_signals.gail``: ``update`` needs ``ExpertData`` as ``expert``."""

    kind = "gail"
    stat_name = "Gail"  # ML-Agents: "GAIL".capitalize() in "Policy/Gail Reward"

    def __init__(self, spec, settings) -> None:
        super().__init__(spec, settings)
        self.arch = encoder_architecture(spec, settings)
        self.use_actions = bool(settings.use_actions)
        self.use_vail = bool(settings.use_vail)

    def init_params(self, key: jax.Array) -> State:
        k_enc, k_mu, k_out = jax.random.split(key, 3)
        extra = flat_action_size(self.spec) + 1 if self.use_actions else 0
        params = networks.init_network_body(k_enc, self.arch, "", extra)
        width = body_width(self.arch) if self.arch.num_layers else networks.encoding_size(self.arch) + extra
        if self.use_vail:
            params.update(networks.init_dense(k_mu, width, Z_SIZE, "z_mu", gain=0.1))
            params["z_sigma"] = jnp.ones((Z_SIZE,), jnp.float32)
            width = Z_SIZE
        params.update(networks.init_dense(k_out, width, 1, "estimator", gain=0.2, xavier=True))
        return params

    def init_extra(self, key: jax.Array) -> State:
        return {"beta": jnp.zeros((), jnp.float32)} if self.use_vail else {}

    # -- the discriminator -----------------------------------------------------------------
    def action_input(self, continuous: jax.Array, discrete: jax.Array, dones: jax.Array) -> jax.Array | None:
        """``use_actions``: flattened actions and the done flag ``[n, c + sum(branches) + 1]``."""
        if not self.use_actions:
            return None
        return jnp.concatenate([flat_actions(self.spec, continuous, discrete), dones[:, None]], axis=-1)

    def estimate(
        self, params: State, observations, action_input, norm: networks.NormStats, noise_key: jax.Array | None
    ) -> tuple[jax.Array, jax.Array | None]:
        """``D`` ``[n]`` in (0, 1) and VAIL's ``z_mu`` (None without VAIL); VAIL's noise is
        drawn only with ``noise_key``."""
        hidden = networks.network_body(params, "", self.arch, list(observations), norm, action_input)
        z_mu = None
        if self.use_vail:
            z_mu = networks.dense(params, "z_mu", hidden)
            hidden = z_mu
            if noise_key is not None:
                hidden = z_mu + jax.random.normal(noise_key, z_mu.shape) * params["z_sigma"]
        return jax.nn.sigmoid(networks.dense(params, "estimator", hidden)[:, 0]), z_mu

    def gradient_penalty(
        self, params: State, policy: tuple, expert: tuple, norm: networks.NormStats, key: jax.Array
    ) -> jax.Array:
        """``mean((|grad_x D(x)| - 1)^2)`` at ``x`` drawn between policy and expert inputs
        (per element uniformly); ``policy`` and ``expert`` are ``(observations, action_input)``."""
        k_obs, k_act, k_noise = jax.random.split(key, 3)
        obs_keys = jax.random.split(k_obs, len(policy[0]))
        inputs = []
        for k, p, e in zip(obs_keys, policy[0], expert[0]):
            eps = jax.random.uniform(k, p.shape)
            inputs.append(eps * p + (1.0 - eps) * e)
        action = None
        if policy[1] is not None:
            eps = jax.random.uniform(k_act, policy[1].shape)
            action = eps * policy[1] + (1.0 - eps) * expert[1]

        def total_estimate(xs):
            return jnp.sum(self.estimate(params, xs[0], xs[1], norm, k_noise if self.use_vail else None)[0])

        grads = jax.grad(total_estimate)((tuple(inputs), action))
        leaves = [g.reshape(g.shape[0], -1) for g in jax.tree_util.tree_leaves(grads)]
        norm2 = sum(jnp.sum(g**2, axis=-1) for g in leaves)
        return jnp.mean((jnp.sqrt(norm2 + EPSILON) - 1.0) ** 2)

    # -- the signal --------------------------------------------------------------------
    def rewards(self, state: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        action = self.action_input(batch.continuous_actions, batch.discrete_actions, batch.dones)
        d, _ = self.estimate(state["params"], batch.observations, action, norm, None)
        return -jnp.log(1.0 - d * (1.0 - EPSILON))

    def loss(self, params: State, state: State, batch: SignalBatch, norm, key: jax.Array, expert: ExpertData) -> tuple[jax.Array, Metrics]:
        k_sample, k_policy, k_expert, k_penalty = jax.random.split(key, 4)
        n = batch.dones.shape[0]
        e_obs, (e_cont, e_disc), e_dones = expert.sample(k_sample, n)
        policy_in = (batch.observations, self.action_input(batch.continuous_actions, batch.discrete_actions, batch.dones))
        expert_in = (e_obs, self.action_input(e_cont, e_disc, e_dones))
        d_policy, mu_policy = self.estimate(params, *policy_in, norm, k_policy)
        d_expert, mu_expert = self.estimate(params, *expert_in, norm, k_expert)
        gail_loss = -jnp.mean(jnp.log(d_expert + EPSILON) + jnp.log(1.0 - d_policy + EPSILON))
        metrics: Metrics = {
            "Policy/GAIL Policy Estimate": jnp.mean(d_policy),
            "Policy/GAIL Expert Estimate": jnp.mean(d_expert),
            "Losses/GAIL Loss": gail_loss,
        }
        total = gail_loss
        if self.use_vail:
            sigma2 = params["z_sigma"] ** 2
            kl = jnp.mean(
                -jnp.sum(1.0 + jnp.log(sigma2) - 0.5 * mu_expert**2 - 0.5 * mu_policy**2 - sigma2, axis=-1)
            )
            total = total + state["beta"] * (kl - MUTUAL_INFORMATION)
            metrics["Losses/GAIL KL Loss"] = kl
            metrics["Policy/GAIL Beta"] = state["beta"]
        penalty = GRADIENT_PENALTY_WEIGHT * self.gradient_penalty(params, policy_in, expert_in, norm, k_penalty)
        metrics["Policy/GAIL Grad Mag Loss"] = penalty
        return total + penalty, metrics

    def after_step(self, state: State, metrics: Metrics) -> State:
        if not self.use_vail:
            return state
        kl = jax.lax.stop_gradient(metrics["Losses/GAIL KL Loss"])
        return {**state, "beta": jnp.maximum(state["beta"] + VAIL_ALPHA * (kl - MUTUAL_INFORMATION), 0.0)}
