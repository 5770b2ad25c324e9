"""Random network distillation (Burda et al. 2018) as ML-Agents' ``rnd`` reward signal.

Why: a cheaper exploration bonus than curiosity: a fixed, randomly initialised network
embeds each observation; a second network (the predictor) learns to reproduce that
embedding on the states it is trained on, so its error is large on rarely seen states.

Both networks are observation encoders and a swish body from ``network_settings`` (width
h); the target is ``state["target"]`` (never trained), the predictor ``state["params"]``.
Reward: ``sum((predictor(s) - target(s))^2)`` per step; loss: its mean over the minibatch
(ML-Agents). RND ignores episode ends (its return continues past them).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from trainer_server.learning import networks
from trainer_server.learning.reward_signals.base import Metrics, RewardSignal, SignalBatch, State, encoder_architecture


class RNDSignal(RewardSignal):
    """``reward_signals.rnd``."""

    kind = "rnd"
    stat_name = "Rnd"  # ML-Agents: "RND".capitalize() in "Policy/Rnd Reward"
    ignore_done = True

    def __init__(self, spec, settings) -> None:
        super().__init__(spec, settings)
        self.arch = encoder_architecture(spec, settings)

    def init_params(self, key: jax.Array) -> State:
        return networks.init_network_body(key, self.arch, "")

    def init_extra(self, key: jax.Array) -> State:
        return {"target": networks.init_network_body(key, self.arch, "")}

    def errors(self, params: State, target: State, observations, norm: networks.NormStats) -> jax.Array:
        """Squared distance of the predictor's embedding to the target's, per step ``[n]``."""
        goal = jax.lax.stop_gradient(networks.network_body(target, "", self.arch, list(observations), norm))
        prediction = networks.network_body(params, "", self.arch, list(observations), norm)
        return jnp.sum((prediction - goal) ** 2, axis=-1)

    def rewards(self, state: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        return self.errors(state["params"], state["target"], batch.observations, norm)

    def loss(self, params: State, state: State, batch: SignalBatch, norm, key: jax.Array, expert: Any) -> tuple[jax.Array, Metrics]:
        loss = jnp.mean(self.errors(params, state["target"], batch.observations, norm))
        return loss, {"Losses/RND Loss": loss}
