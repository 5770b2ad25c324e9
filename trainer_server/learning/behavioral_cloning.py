"""Behavioral cloning (``behavioral_cloning``) beside PPO and SAC, as ML-Agents' BC module.

Why: ML-Agents users speed up learning with demonstrations by adding a supervised update
of the policy towards the expert's actions after each RL update. This module is that
update, jit-compiled, with ML-Agents 1.1.0's semantics:

- its own Adam optimizer on the actor's parameters (the RL optimizer is untouched);
- learning rate ``learning_rate * strength`` (the trainer's initial learning rate),
  decayed linearly to 1e-10 over ``steps`` agent steps (constant when ``steps`` is 0);
  once decayed the update is skipped (the loss reported as 0);
- each update: ``num_epoch`` (default 3, as ML-Agents) passes over the shuffled
  demonstrations in minibatches of ``min(batch_size, N)`` (default the trainer's
  ``batch_size``), at most ``samples_per_update // batch`` minibatches per pass when
  ``samples_per_update`` > 0;
- the loss: continuous actions: the mean squared error between the policy's
  reparameterized sample and the expert's action; discrete: the cross-entropy of each
  branch with every action allowed, averaged over branches; both summed.

With memory (``network_settings.memory``), as ML-Agents: the demonstrations are cut into
sequences of ``sequence_length`` steps from each episode's first step (the last one of an
episode padded at its end), the policy runs its LSTM over each sequence from zero memories,
and a minibatch is ``max(batch_size // sequence_length, 1)`` shuffled whole sequences;
unlike ML-Agents, the padding rows are left out of the loss's mean (loss mask).

One difference, on purpose: the continuous sample is compared in the environment's units
(PPO's ``clip(a, -3, 3) / 3``, SAC's ``tanh(a)``), the units the demonstration holds.
ML-Agents compares PPO's raw sample to the recorded action, so a policy cloned there sends
a third of the expert's action to the environment (docs/MLAGENTS_DIFFERENCES.md).

The learner calls :meth:`BehavioralCloning.update` after its RL update (PPO: once per
update; SAC: once per gradient step, as ML-Agents); offline training
(``tandem-trainer --demos``) calls it alone.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from common.architecture import PolicyArchitecture
from common.logging import get_logger
from common.specs import BehaviorSpec
from trainer_server.config.schema import TrainerSettings
from trainer_server.demonstrations import Demonstrations, load_demonstrations
from trainer_server.learning import distributions, networks, shared

#: ML-Agents' BC module: epochs when ``num_epoch`` is not given (not the trainer's num_epoch)
DEFAULT_NUM_EPOCH = 3
#: the floor of the decayed learning rate; the update stops once it is reached
LEARNING_RATE_MIN = 1.0e-10
#: the TensorBoard tag of the loss
LOSS_TAG = "Losses/Pretraining Loss"

log = get_logger(__name__)


class DemoBatch(NamedTuple):
    """Expert steps on the device: observations per spec ``[N, *shape]``, actions ``[N, c]``
    float32 (environment units) and ``[N, b]`` int32."""

    observations: tuple[jax.Array, ...]
    continuous_actions: jax.Array
    discrete_actions: jax.Array
    loss_masks: jax.Array | None = None  # [N] float32 with memory (1 on real steps, 0 on padding), else None


def sequences(demos: Any, sequence_length: int) -> DemoBatch:
    """The demonstrations as whole sequences for a policy with memory: each episode (steps up
    to a ``dones`` step, and the steps after the last one) cut into ``sequence_length`` rows
    from its first step, the last sequence zero-padded at its end; rows ``[S * L, ...]`` as numpy."""
    n = int(demos.rewards.shape[0])
    ends = list(np.flatnonzero(np.asarray(demos.dones)) + 1)
    bounds = [0] + ends + ([n] if not ends or ends[-1] != n else [])
    rows: list[np.ndarray] = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for first in range(start, stop, sequence_length):
            last = min(first + sequence_length, stop)
            rows.append(np.concatenate([np.arange(first, last), np.full(sequence_length - (last - first), -1)]))
    index = np.concatenate(rows)
    real = index >= 0

    def take(x: np.ndarray) -> np.ndarray:
        out = np.asarray(x)[np.maximum(index, 0)]
        out[~real] = 0
        return out

    return DemoBatch(
        observations=tuple(take(o) for o in demos.observations),
        continuous_actions=take(demos.continuous_actions),
        discrete_actions=take(demos.discrete_actions),
        loss_masks=real.astype(np.float32),
    )


def bc_loss(
    actor_params: dict[str, jax.Array],
    arch: PolicyArchitecture,
    batch: DemoBatch,
    norm_stats: Any,
    key: jax.Array,
) -> jax.Array:
    """The behavioral cloning loss on a minibatch (scalar).

    Continuous: mean over the batch and dimensions of ``(env(mu + sigma * eps) - a*)^2``,
    with ``env`` the map to the environment's units. Discrete: per branch the negative
    log-probability of the expert's action (nothing masked), averaged over the batch and
    the branches. The two add up when the action space has both.
    """
    branches = arch.behavior_spec.action_spec.discrete_branches
    seq: dict[str, Any] = {}
    mean = jnp.mean
    if arch.memory_size:  # whole sequences from zero memories; the padding rows out of the mean
        n, length = batch.discrete_actions.shape[0], arch.sequence_length
        seq = {"memories": jnp.zeros((n // length, arch.memory_size), jnp.float32), "sequence_length": length}
        mask = batch.loss_masks

        def mean(x: jax.Array) -> jax.Array:
            weights = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x.shape)
            return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    dist = networks.actor_forward(actor_params, arch, list(batch.observations), norm_stats, None, **seq)
    loss = jnp.zeros((), jnp.float32)
    if dist.mu is not None:
        noise = jax.random.normal(key, dist.mu.shape, dist.mu.dtype)
        sample = dist.mu + jnp.exp(dist.log_std) * noise
        env = distributions.env_continuous(sample, arch.continuous_distribution)
        loss = loss + mean((env - batch.continuous_actions) ** 2)
    if dist.logits is not None and branches:
        log_probs = distributions.branch_log_softmax(dist.logits, branches)  # [n, sum(branches)]
        offsets = np.concatenate([[0], np.cumsum(branches)[:-1]]).astype(np.int32)
        picked = jnp.take_along_axis(log_probs, batch.discrete_actions + offsets[None, :], axis=1)  # [n, b]
        loss = loss + mean(-picked)
    return loss


def make_update_fn(
    arch: PolicyArchitecture,
    num_steps: int,
    batch_size: int,
    num_batches: int,
    num_epoch: int,
    on_trace: Callable[[], None] | None = None,
) -> Callable:
    """The pure update ``(actor_params, opt_state, norm_stats, demos, key, lr) -> (actor_params,
    opt_state, mean loss)``: ``num_epoch`` shuffled passes of ``num_batches`` minibatches of
    ``batch_size`` over the ``num_steps`` demonstration steps (``lax.scan``, fixed shapes).
    With memory the units are sequences: ``num_steps`` sequences, ``batch_size`` of them per
    minibatch, each ``arch.sequence_length`` consecutive rows of ``demos``."""
    tx = shared.make_optimizer()
    grad_fn = jax.value_and_grad(bc_loss)

    def update(actor_params, opt_state, norm_stats, demos: DemoBatch, key, lr):
        if on_trace is not None:
            on_trace()

        def minibatch_step(carry, xs):
            params, opt = carry
            idx, step_key = xs
            minibatch = jax.tree.map(lambda x: x[idx], demos)
            loss, grads = grad_fn(params, arch, minibatch, norm_stats, step_key)
            updates, opt = tx.update(grads, opt, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            return (params, opt), loss

        def epoch_step(carry, epoch_key):
            k_order, k_noise = jax.random.split(epoch_key)
            order = jax.random.permutation(k_order, num_steps)[: num_batches * batch_size].reshape(num_batches, batch_size)
            if arch.memory_size:  # sequence indices -> their rows, in order
                length = arch.sequence_length
                order = (order[..., None] * length + jnp.arange(length)).reshape(num_batches, batch_size * length)
            return jax.lax.scan(minibatch_step, carry, (order, jax.random.split(k_noise, num_batches)))

        (actor_params, opt_state), losses = jax.lax.scan(epoch_step, (actor_params, opt_state), jax.random.split(key, num_epoch))
        return actor_params, opt_state, jnp.mean(losses)

    return update


class BehavioralCloning:
    """One behavior's BC: the demonstrations on the device, the optimizer state, the schedule.

    Args:
        spec: the behavior (the demonstrations must match it).
        settings: its trainer settings (``behavioral_cloning`` set).
        arch: the actor's architecture.
        learning_rate: the trainer's initial ``learning_rate``.
        actor_params: the actor's parameters (the optimizer state takes their shapes).
        seed: seeds the shuffling and the sampling noise.
        demonstrations: already loaded steps; default: read ``demo_path``.

    Raises:
        DemonstrationError: the demonstrations cannot be read or do not match ``spec``.
    """

    def __init__(
        self,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        arch: PolicyArchitecture,
        learning_rate: float,
        actor_params: dict[str, jax.Array],
        seed: int = 0,
        demonstrations: Demonstrations | None = None,
    ) -> None:
        bc = settings.behavioral_cloning
        if bc is None:
            raise ValueError(f"behavior {spec.name}: behavioral_cloning is not configured")
        self.settings = bc
        self.arch = arch
        self.demonstrations = demonstrations if demonstrations is not None else load_demonstrations(bc.demo_path, spec)
        demos = self.demonstrations
        data = DemoBatch(
            observations=tuple(np.asarray(o) for o in demos.observations),
            continuous_actions=np.asarray(demos.continuous_actions),
            discrete_actions=np.asarray(demos.discrete_actions),
        )
        length = arch.sequence_length if arch.memory_size else 1
        if arch.memory_size:
            data = sequences(demos, length)
        n = data.discrete_actions.shape[0] // length  # steps, or sequences with memory
        default_batch = int(getattr(settings.hyperparameters, "batch_size", n * length))
        self.batch_size = max(1, min((bc.batch_size or default_batch) // length, n))
        #: rows (steps, padding included) of one minibatch: ``batch_size`` steps, or sequences with memory
        self.batch_rows = self.batch_size * length
        possible = n // self.batch_size
        most = bc.samples_per_update // self.batch_rows
        self.num_batches = possible if most == 0 else min(possible, most)
        self.num_epoch = bc.num_epoch or DEFAULT_NUM_EPOCH
        self.initial_learning_rate = float(learning_rate) * float(bc.strength)
        self._tx = shared.make_optimizer()
        self.opt_state = self._tx.init(actor_params)
        self._key = shared.new_key(seed + 7919)  # its own stream: the learner's draws stay as they were
        self._data = jax.tree.map(jnp.asarray, data)
        self._traces = shared.TraceCounter("bc_update")
        self.trace_counts = self._traces.counts
        self._update_fn = jax.jit(make_update_fn(arch, n, self.batch_size, self.num_batches, self.num_epoch, self._traces.hook("bc_update")))
        self.update_count = 0
        log.info(
            "behavioral cloning", behavior=spec.name, demo_path=bc.demo_path, steps=n, episodes=demos.num_episodes,
            batch_size=self.batch_size, batches_per_epoch=self.num_batches, num_epoch=self.num_epoch,
        )

    def learning_rate(self, step: int) -> float:
        """The learning rate at agent step ``step``: linear decay over ``steps``, or constant."""
        schedule = "linear" if self.settings.steps > 0 else "constant"
        return float(shared.decayed_value(schedule, self.initial_learning_rate, LEARNING_RATE_MIN, self.settings.steps, step))

    def update(self, actor_params: dict[str, jax.Array], norm_stats: Any, step: int) -> tuple[dict[str, jax.Array], dict[str, float]]:
        """One BC update of the actor's parameters.

        Args:
            actor_params: the actor after the RL update.
            norm_stats: the observation normalizer's statistics (read only), or None.
            step: agent steps so far (the schedule).

        Returns:
            (new actor parameters, ``{"Losses/Pretraining Loss": mean loss}``).
        """
        lr = self.learning_rate(step)
        if lr <= LEARNING_RATE_MIN:
            return actor_params, {LOSS_TAG: 0.0}
        self._key, key = jax.random.split(self._key)
        actor_params, self.opt_state, loss = self._update_fn(
            actor_params, self.opt_state, norm_stats, self._data, key, jnp.asarray(lr, jnp.float32)
        )
        self.update_count += 1
        return actor_params, {LOSS_TAG: float(loss)}

    def loss(self, actor_params: dict[str, jax.Array], norm_stats: Any, key: jax.Array | None = None) -> float:
        """The loss over all demonstration steps (evaluation; one noise draw)."""
        key = shared.new_key(0) if key is None else key
        return float(bc_loss(actor_params, self.arch, self._data, norm_stats, key))

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Adam's state, the PRNG key and the update count (numpy leaves)."""
        return {
            "opt_state": shared.to_numpy(serialization.to_state_dict(self.opt_state)),
            "key": shared.key_to_numpy(self._key),
            "update_count": int(self.update_count),
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restores :meth:`state_dict`'s output; None (a checkpoint without BC) keeps a fresh state.

        Raises:
            ValueError: naming the entry that does not fit the actor.
        """
        if state is None:
            log.warning("checkpoint has no behavioral cloning state: its optimizer starts fresh")
            return
        template = serialization.to_state_dict(self.opt_state)
        self.opt_state = serialization.from_state_dict(
            self.opt_state, shared.restore_like(template, state["opt_state"], "behavioral_cloning.opt_state")
        )
        self._key = shared.key_from_numpy(state["key"])
        self.update_count = int(np.asarray(state["update_count"]))


#: the key of a learner's state_dict entry that holds :meth:`BehavioralCloning.state_dict`
STATE_KEY = "behavioral_cloning"


def for_learner(
    spec: BehaviorSpec, settings: TrainerSettings, arch: PolicyArchitecture, actor_params: dict[str, jax.Array], seed: int
) -> BehavioralCloning | None:
    """The learner's BC, or None when ``behavioral_cloning`` is not configured."""
    if settings.behavioral_cloning is None:
        return None
    learning_rate = float(settings.hyperparameters.learning_rate)  # type: ignore[union-attr]
    return BehavioralCloning(spec, settings, arch, learning_rate, actor_params, seed)


def state_entry(bc: BehavioralCloning | None) -> dict[str, Any]:
    """``{STATE_KEY: bc.state_dict()}`` for a learner's state_dict, or ``{}`` without BC."""
    return {} if bc is None else {STATE_KEY: bc.state_dict()}


def load_entry(bc: BehavioralCloning | None, state: dict[str, Any]) -> None:
    """Restores a learner state_dict's BC entry (when the learner has BC)."""
    if bc is not None:
        bc.load_state_dict(state.get(STATE_KEY))


def after_rl_update(
    bc: BehavioralCloning | None, params: dict[str, Any], normalizer: Any, normalize: bool, step: int, times: int = 1
) -> tuple[dict[str, Any], dict[str, float]]:
    """The learner's hook after its RL update: ``times`` BC updates of ``params["actor"]``.

    Args:
        bc: the learner's BC, or None (then nothing changes and no metric is added).
        params: the learner's parameters, ``{"actor": ..., ...}``.
        normalizer: the learner's ``NormalizerState`` (read only).
        normalize: whether the actor normalizes its vector observations.
        step: agent steps so far.
        times: BC updates to run (SAC: one per gradient step taken, as ML-Agents).

    Returns:
        (params with the new actor, ``{"Losses/Pretraining Loss": mean loss}`` or ``{}``).
    """
    if bc is None or times < 1:
        return params, {}
    from trainer_server.learning import normalizer as norm_mod

    stats = norm_mod.statistics(normalizer) if normalize else None
    actor, losses = params["actor"], []
    for _ in range(times):
        actor, metrics = bc.update(actor, stats, step)
        losses.append(metrics[LOSS_TAG])
    return {**params, "actor": actor}, {LOSS_TAG: float(np.mean(losses))}
