"""What every reward signal shares: the batch it reads, its state, its Adam step.

Why: ML-Agents trains each reward signal (``extrinsic``, ``curiosity``, ``rnd``, ``gail``)
beside the policy with its own gamma, its own value head and, for the learned ones, its own
network and Adam optimizer. Here a signal is a small object of PURE functions over a state
pytree, so that the learners can call them inside their compiled functions (rewards in
PPO's per-fragment step and in SAC's loss, updates in PPO's minibatch scan and in SAC's
reward-signal scan) with fixed shapes.

A signal's state is a dict of jax arrays: ``params`` (what its optimizer trains),
``opt_state`` (Adam's moments) and any signal-specific entries (e.g. RND's fixed
``target``, VAIL's ``beta``, curiosity's ``updated`` flag). It is checkpointed as it is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from common.architecture import PolicyArchitecture
from common.specs import BehaviorSpec
from trainer_server.config.schema import RewardSignalSettings
from trainer_server.learning import networks, shared

State = dict[str, Any]
Metrics = dict[str, jax.Array]


class SignalBatch(NamedTuple):
    """Steps a signal rewards or trains on (``n`` steps).

    Attributes:
        observations: per observation spec, float32 ``[n, *shape]``.
        next_observations: per observation spec, float32 ``[n, *shape]`` (what followed
            each step; curiosity's forward and inverse models read it).
        continuous_actions: float32 ``[n, c]`` as the environment received them (in
            [-1, 1]: PPO's clipped and scaled sample, SAC's tanh): the same space as the
            actions of demonstrations.
        discrete_actions: int32 ``[n, b]``.
        dones: float32 ``[n]``, 1 where the episode ended after the step (GAIL's
            ``use_actions`` input, as ML-Agents).
        rewards: float32 ``[n]``, the environment's rewards (the extrinsic signal).
    """

    observations: tuple[jax.Array, ...]
    next_observations: tuple[jax.Array, ...]
    continuous_actions: jax.Array
    discrete_actions: jax.Array
    dones: jax.Array
    rewards: jax.Array


def flat_actions(spec: BehaviorSpec, continuous: jax.Array, discrete: jax.Array) -> jax.Array:
    """Continuous actions then one one-hot per discrete branch: ``[n, c + sum(branches)]``
    (ML-Agents' ActionFlattener: what curiosity's forward model and GAIL read)."""
    parts = [continuous.astype(jnp.float32)]
    for b, size in enumerate(spec.action_spec.discrete_branches):
        parts.append(jax.nn.one_hot(discrete[:, b], size, dtype=jnp.float32))
    return jnp.concatenate(parts, axis=-1)


def flat_action_size(spec: BehaviorSpec) -> int:
    """Width of ``flat_actions``."""
    return spec.action_spec.continuous_size + int(sum(spec.action_spec.discrete_branches))


def encoder_architecture(spec: BehaviorSpec, settings: RewardSignalSettings) -> PolicyArchitecture:
    """The architecture of a signal's own observation encoder and body, from its
    ``network_settings`` (ML-Agents builds a NetworkBody from them; ``memory`` is ignored
    there too)."""
    # reads only ``network_settings``, which a signal's settings have as a trainer's do
    return shared.policy_architecture(spec, settings, "gaussian")  # type: ignore[arg-type]


def body_width(arch: PolicyArchitecture) -> int:
    """Width of a signal encoder's output."""
    return networks.body_output_size(arch)


class RewardSignal:
    """One reward signal. Subclasses set the class attributes and implement the pure methods.

    Attributes:
        kind: the key under ``reward_signals`` (``extrinsic``, ``curiosity``, ``rnd``, ``gail``).
        stat_name: ML-Agents' capitalised provider name used in its per-signal tags
            (``Policy/{stat_name} Reward``, ``Policy/{stat_name} Value Estimate``).
        ignore_done: the signal's return goes on past an episode's end (ML-Agents' curiosity
            and RND): its value head bootstraps even after a true terminal step.
        trainable: whether ``update`` trains anything.
    """

    kind = ""
    stat_name = ""
    ignore_done = False
    trainable = True

    def __init__(self, spec: BehaviorSpec, settings: RewardSignalSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.gamma = float(settings.gamma)
        self.strength = float(settings.strength)
        self.tx = optax.adam(float(getattr(settings, "learning_rate", 0.0)))

    # -- to implement -------------------------------------------------------------------
    def init_params(self, key: jax.Array) -> State:
        """The trained parameters (a dict of arrays)."""
        return {}

    def init_extra(self, key: jax.Array) -> State:
        """Untrained entries of the state (e.g. RND's target network)."""
        return {}

    def rewards(self, state: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        """The signal's reward per step ``[n]`` before ``strength``."""
        raise NotImplementedError

    def loss(
        self, params: State, state: State, batch: SignalBatch, norm: networks.NormStats, key: jax.Array, expert: Any
    ) -> tuple[jax.Array, Metrics]:
        """The signal's training loss on a minibatch (and ML-Agents-named metrics)."""
        raise NotImplementedError

    def after_step(self, state: State, metrics: Metrics) -> State:
        """Non-gradient changes after each Adam step (VAIL's beta, curiosity's flag)."""
        return state

    # -- shared ----------------------------------------------------------------------------
    def init(self, key: jax.Array) -> State:
        """A fresh state: ``params``, Adam's ``opt_state`` and the untrained entries."""
        k_params, k_extra = jax.random.split(key)
        params = self.init_params(k_params)
        state: State = {"params": params, **self.init_extra(k_extra)}
        if self.trainable:
            state["opt_state"] = self.tx.init(params)
        return state

    def update(
        self, state: State, batch: SignalBatch, norm: networks.NormStats, key: jax.Array, expert: Any = None
    ) -> tuple[State, Metrics]:
        """One Adam step on ``loss`` (constant learning rate, as ML-Agents' providers)."""
        if not self.trainable:
            return state, {}
        grads, metrics = jax.grad(self.loss, has_aux=True)(state["params"], state, batch, norm, key, expert)
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        state = {**state, "params": params, "opt_state": opt_state}
        return self.after_step(state, metrics), metrics


class ExtrinsicSignal(RewardSignal):
    """The environment's reward (times ``strength``); nothing to train."""

    kind = "extrinsic"
    stat_name = "Extrinsic"
    trainable = False

    def rewards(self, state: State, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        return batch.rewards
