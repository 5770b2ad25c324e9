"""Proximal Policy Optimization in JAX, as ML-Agents' PPO trainer does it.

Why: the trainer server learns one policy per behavior from the trajectory fragments that
gateways stream in; this module turns fragments into updates with ML-Agents' semantics so
that ML-Agents users' hyperparameters mean what they expect.

Flow (per behavior, one ``PPOLearner``):

1. ``process_trajectory``: the fragment (padded to one of a few fixed lengths + 1 rows,
   ``padded_length``, so the compiled function sees at most a handful of shapes) updates the running observation
   normalizer (``normalize``), gets values from the current critic, and GAE(lambda)
   advantages with the value of ``next_observations`` as bootstrap when the fragment was
   cut (``time_horizon``) or interrupted (max step), and 0 after a true terminal. Rewards
   are the environment's times the extrinsic ``strength``. The result joins the buffer.
   ``process_trajectories`` does the same for a chunk's fragments in one compiled call
   (fragments of several padded lengths without memory: ``ppo_packed``, their rows packed
   one after the other; else ``make_batch_process_fn``, the fragments of one padded length
   together), the normalizer folded in their order, with the same results; the trainer
   uses it.
2. ``update`` (when ``buffer_size`` steps are buffered): ONE jit-compiled pure function
   ``(state, batch, key) -> (state, metrics)``: advantages normalized over the batch,
   ``num_epoch`` passes over shuffled minibatches of ``batch_size`` (``lax.scan``, no
   Python loop), each an Adam step on ``policy_loss + 0.5 * value_loss - beta * entropy``
   with the clipped surrogate, ML-Agents' clipped ("trust region") value loss, and
   schedules of learning rate, beta and epsilon computed from ``step`` inside the function.

Buffer choice: the update uses exactly the oldest ``buffer_size`` steps (fixed shapes: one
compilation; ML-Agents trains on all buffered steps and clears the buffer). Steps beyond it
stay buffered; the trainer's on-policy coupling then drops them (``discard_buffered``: the
gateways paused at ``buffer_size``, so they are only the overshoot of the last step of
agents), while ``coupling: async`` trains them in the next update, where PPO's ratio and
clipping account for their slightly older policy. Within an epoch, ``buffer_size % batch_size`` randomly chosen steps
sit out, as in ML-Agents.

The ratio is taken per action dimension and per discrete branch, as ML-Agents does; the
fragments carry only the joint acting log-prob, so ``process_trajectory`` recomputes the
per-dimension ones (see ``make_process_fn``).

Memory (``network_settings.memory``, ML-Agents' recurrent PPO): fragments carry the
actor's memory before each step. ``process_trajectory`` recomputes the acting log-probs
step by step from those memories, and runs the critic's LSTM along the fragment from the
critic memory this agent's previous fragment left (zeros at an episode start, dropped
when the episode ends; ML-Agents' ``critic_memory_dict``), bootstrapping from the memory
after the last step. The fragment then enters the buffer cut into sequences of
``sequence_length`` steps from its first step, the last one padded at its end with zero
rows whose loss mask is false (ML-Agents' ``resequence_and_append``). Unlike ML-Agents,
padded rows do not count towards ``buffer_size``: the update waits for ``buffer_size`` real
steps (what the gateways were granted for the version; counting padding updated early and
the granted steps still on their way were dropped as stale) and trains on every buffered
sequence, filled up with empty sequences to a bucket of shapes (``update_sequences``:
``buffer_size // sequence_length`` times a power of two) that take no part in any loss,
statistic or minibatch; minibatches draw the real sequences, ``(real sequences) //
(sequences per minibatch)`` of them per epoch (at least one). Each sequence starts from the stored
memories of its first step (the actor's acting memory, the critic's memory from
processing); there is no burn-in: the LSTM runs over the sequence from that memory, as in
ML-Agents. Minibatches are ``batch_size // sequence_length`` shuffled whole sequences
(``batch_size`` rounded down to a multiple of ``sequence_length``, at least one
sequence); losses and entropy are means over the unpadded rows; advantages are
normalized over all rows of the batch, padding included (its advantage is 0), as ML-Agents does.

Reward signals (``trainer_server.learning.reward_signals``): the critic has one value head
per configured signal (``extrinsic``, ``curiosity``, ``rnd``, ``gail``; head 0 keeps the name
``critic/value``). ``process_trajectory`` computes every signal's rewards (times its
strength) in the compiled per-fragment step, GAE per signal with its own gamma (a signal
that ignores episode ends, curiosity and RND, bootstraps after true terminals too), returns
per signal, and the advantage as the mean over signals (ML-Agents); the value loss is the
mean over heads of the clipped value loss; the learned signals take one Adam step each on
every PPO minibatch, inside the same compiled update, as ML-Agents does.

Differences from ML-Agents, on purpose: "Policy/Entropy" is the mean entropy over the
update's minibatches (ML-Agents reports it while acting); the buffer handling above.
"""

from __future__ import annotations

import math
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.architecture import PolicyArchitecture, PolicyOutput
from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.learning import behavioral_cloning, devices, distributions, networks, shared
from trainer_server.learning import normalizer as norm_mod
from trainer_server.learning import ppo_packed, rollout_buffer
from trainer_server.learning import reward_signals as signals_mod
from trainer_server.config.schema import PPOSettings, TrainerSettings

#: ML-Agents' floors of the linear schedules (ModelUtils.DecayedValue in its PPO optimizer)
LEARNING_RATE_MIN = 1.0e-10
EPSILON_MIN = 0.1
BETA_MIN = 1.0e-5
#: ML-Agents' advantage normalization denominator guard
ADVANTAGE_EPS = 1.0e-10

log = get_logger(__name__)


# -- configuration: read from the typed settings (validated once, at load) -----------------
def hyperparameters(settings: TrainerSettings) -> PPOSettings:
    """``settings.hyperparameters``, typed as PPO's."""
    return settings.hyperparameters  # type: ignore[return-value]


def schedules(settings: TrainerSettings, step: Any) -> tuple[Any, Any, Any]:
    """(learning rate, epsilon, beta) at ``step`` (Python numbers or JAX scalars)."""
    hp, max_steps = hyperparameters(settings), settings.max_steps
    return (
        shared.decayed_value(hp.learning_rate_schedule, hp.learning_rate, LEARNING_RATE_MIN, max_steps, step),
        shared.decayed_value(hp.epsilon_schedule, hp.epsilon, EPSILON_MIN, max_steps, step),
        shared.decayed_value(hp.beta_schedule, hp.beta, BETA_MIN, max_steps, step),
    )


# -- networks and state --------------------------------------------------------------------
class PPOState(NamedTuple):
    """Everything the update reads and writes.

    Attributes:
        params: ``{"actor": flat snapshot-named params, "critic": flat critic/... params}``.
        opt_state: Adam's state for ``params``.
        normalizer: running observation statistics (read-only in the update).
        step: int32 agent steps so far: drives the schedules.
        signals: the reward signals' states (signal name -> state, see ``reward_signals``).
    """

    params: dict[str, dict[str, jax.Array]]
    opt_state: Any
    normalizer: norm_mod.NormalizerState
    step: jax.Array
    signals: Any = None


class Batch(NamedTuple):
    """``buffer_size`` steps. Observations per spec ``[N, *shape]``; the rest ``[N, ...]``."""

    observations: tuple[jax.Array, ...]
    continuous_actions: jax.Array  # [N, c]
    discrete_actions: jax.Array  # [N, b] int32
    action_masks: jax.Array  # [N, sum(branches)] bool, true = not allowed
    log_probs: jax.Array  # [N, c + b] per-dimension / per-branch log-probs of the acting policy
    values: jax.Array  # [N, H] critic's values per reward signal when the step was processed
    advantages: jax.Array  # [N] mean over the signals' advantages
    returns: jax.Array  # [N, H] per reward signal
    dones: Any = None  # [N] float32, with reward signals that train (else None)
    next_observations: tuple[jax.Array, ...] = ()  # per spec [N, *shape], likewise
    # with memory only (else None); N = sequences * sequence_length rows, sequence by sequence
    memories: jax.Array | None = None  # [N, m] the actor's memory before each step
    critic_memories: jax.Array | None = None  # [N, m] the critic's memory at the start of each row's sequence
    loss_masks: jax.Array | None = None  # [N] float32, 1 on real steps, 0 on sequence padding


def _norm_stats(state: norm_mod.NormalizerState, normalize: bool):
    return norm_mod.statistics(state) if normalize else None


def init_params(
    key: jax.Array, arch: PolicyArchitecture, shared_critic: bool, heads: tuple[str, ...] = ("extrinsic",)
) -> dict[str, networks.Params]:
    """``{"actor": snapshot-named params, "critic": critic/... params}`` (only the value head
    with ``shared_critic``: the critic then reads the actor's encoders and body), with one
    value head per reward signal ``heads`` (the first is ``critic/value``)."""
    k_actor, k_critic = jax.random.split(key)
    critic = networks.init_critic(k_critic, arch, shared_critic)
    if len(heads) > 1:
        k_heads = jax.random.fold_in(k_critic, 1)
        critic.update(networks.init_extra_heads(k_heads, networks.head_width(arch), 1, heads, "critic/value"))
    return {"actor": networks.init_actor(k_actor, arch), "critic": critic}


def value_heads(settings: TrainerSettings) -> tuple[str, ...]:
    """The critic's heads: the reward signals' names, extrinsic first (``reward_signals``)."""
    return signals_mod.head_names(settings)


def signal_batch(arch: PolicyArchitecture, batch: "Batch", rewards: jax.Array) -> signals_mod.SignalBatch:
    """What the reward signals read from PPO steps (continuous actions as the environment got them)."""
    return signals_mod.SignalBatch(
        observations=tuple(batch.observations),
        next_observations=tuple(batch.next_observations),
        continuous_actions=distributions.env_continuous(batch.continuous_actions),
        discrete_actions=batch.discrete_actions,
        dones=batch.dones,
        rewards=rewards,
    )


# -- the loss ------------------------------------------------------------------------------
def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of ``x`` ``[n, ...]`` over rows where ``mask`` ``[n]`` is 1 (all rows when None),
    as ML-Agents' ``ModelUtils.masked_mean`` (a zero mask gives 0, not NaN)."""
    if mask is None:
        return jnp.mean(x)
    weights = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x.shape)
    return jnp.sum(jnp.where(weights > 0, x, 0.0)) / jnp.maximum(jnp.sum(weights), 1.0)


def gae(
    rewards: jax.Array, values: jax.Array, bootstrap_value: jax.Array, mask: jax.Array, gamma: float, lambd: float
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation over one padded trajectory fragment.

    Args:
        rewards: ``[L]`` rewards r_t (after a_t); padding rows are ignored.
        values: ``[L]`` V(o_t).
        bootstrap_value: scalar V(o_T) after the last real step: the critic's value of
            ``next_observations`` when cut or interrupted, 0 after a true terminal.
        mask: bool ``[L]``, true on the T real steps (a prefix).
        gamma: discount.
        lambd: GAE's lambda.

    Returns:
        (advantages ``[L]``, returns ``[L]`` = advantages + values), 0 on padding rows.
    """
    length = jnp.sum(mask.astype(jnp.int32))
    idx = jnp.arange(rewards.shape[0])
    next_values = jnp.concatenate([values[1:], jnp.zeros((1,), values.dtype)])
    next_values = jnp.where(idx == length - 1, bootstrap_value, next_values)
    deltas = jnp.where(mask, rewards + gamma * next_values - values, 0.0)

    def back(carry, delta):
        adv = delta + gamma * lambd * carry
        return adv, adv

    _, advantages = jax.lax.scan(back, jnp.zeros((), deltas.dtype), deltas, reverse=True)
    advantages = jnp.where(mask, advantages, 0.0)
    return advantages, jnp.where(mask, advantages + values, 0.0)


def ppo_loss(
    params: dict[str, dict[str, jax.Array]],
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    batch: Batch,
    norm_stats,
    epsilon,
    beta,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ML-Agents' PPO loss on a minibatch (advantages already normalized).

    The clipped surrogate is taken per action dimension and per discrete branch (ratio
    ``[n, c + b]``, advantage broadcast) and averaged over all of them, as ML-Agents'
    ``trust_region_policy_loss`` on ``ActionLogProbs.flatten()``; the value loss is clipped
    around the stored values by the same ``epsilon``; the entropy is the mean over
    continuous dimensions plus the sum over branches.

    Returns:
        (loss, aux) with aux ``policy_loss`` (the negated clipped surrogate), ``value_loss``,
        ``entropy`` (batch means) and ``approx_kl``.
    """
    obs = list(batch.observations)
    mask = batch.action_masks if arch.behavior_spec.action_spec.mask_size else None
    seq = {}
    if arch.memory_size:  # rows are whole sequences: each starts from its first row's memories
        length = arch.sequence_length
        seq = {"memories": batch.memories[::length], "sequence_length": length}
    dist = networks.actor_forward(params["actor"], arch, obs, norm_stats, mask, **seq)
    branches = arch.behavior_spec.action_spec.discrete_branches
    log_prob = distributions.log_prob_parts(dist, batch.continuous_actions, batch.discrete_actions, branches)
    _, entropy = distributions.log_prob_and_entropy(dist, batch.continuous_actions, batch.discrete_actions, branches)
    if seq:  # memory: the critic's LSTM from each sequence's stored memory, a value per reward signal
        seq = {**seq, "memories": batch.critic_memories[:: seq["sequence_length"]]}
        values = networks.critic_forward(
            params["actor"], params["critic"], arch, obs, norm_stats, hyperparameters(settings).shared_critic, **seq,
            heads=value_heads(settings),
        )  # [n, H]
    else:
        values = networks.critic_values(
            params["actor"], params["critic"], arch, obs, norm_stats, hyperparameters(settings).shared_critic,
            value_heads(settings),
        )  # [n, H]
    rows = batch.loss_masks  # None without memory: every row is a real step
    # one ratio per action dimension and branch, each clipped, averaged over all of them
    log_ratio = log_prob - batch.log_probs  # [n, c + b]
    ratio = jnp.exp(log_ratio)
    adv = batch.advantages[:, None]
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv)
    policy_loss = -masked_mean(surrogate, rows)
    old_values = batch.values.reshape(values.shape[0], -1)  # [n, H] (a [n] batch: one head)
    returns = batch.returns.reshape(values.shape[0], -1)
    clipped_values = old_values + jnp.clip(values - old_values, -epsilon, epsilon)
    # per head, then the mean over the reward signals' heads (ML-Agents), over the real rows
    per_row = jnp.mean(jnp.maximum((returns - values) ** 2, (returns - clipped_values) ** 2), axis=-1)
    value_loss = masked_mean(per_row, rows)
    mean_entropy = masked_mean(entropy, rows)
    loss = policy_loss + 0.5 * value_loss - beta * mean_entropy
    aux = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, rows),
    }
    return loss, aux


# -- the update ----------------------------------------------------------------------------
def _real_rows(arch: PolicyArchitecture, minibatch: Batch) -> Batch:
    """What the reward signals train on: with memory, each padding row of a sequence replaced
    by the sequence's first row (a real step; fixed shapes), so that the signals learn from
    observations and actions the agents saw, never the zeros of the padding. The signals see
    observations, not memories (ML-Agents' reward providers have no memory either)."""
    if not arch.memory_size:
        return minibatch
    rows = minibatch.advantages.shape[0]
    index = jnp.arange(rows)
    source = jnp.where(minibatch.loss_masks > 0, index, (index // arch.sequence_length) * arch.sequence_length)
    return jax.tree.map(lambda x: x[source], minibatch)


def make_update_fn(
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    tx: optax.GradientTransformation,
    on_trace: Callable[[], None] | None = None,
    constrain: Callable[[Batch], Batch] | None = None,
    signals: signals_mod.RewardSignals | None = None,
) -> Callable[[PPOState, Batch, jax.Array], tuple[PPOState, dict[str, jax.Array]]]:
    """The pure update ``(state, batch, key) -> (state, metrics)``; jit it once.

    ``on_trace`` is called whenever JAX traces the function (tests count recompilations).
    ``constrain`` is applied to every gathered minibatch (``devices.batch_constraint``: keeps
    it split across the devices of a data-parallel update).
    With ``signals`` that train, each minibatch also takes one Adam step of every learned
    reward signal (their metrics are averaged over the minibatches); ``batch.dones`` and
    ``batch.next_observations`` must then be given, and GAIL's expert data
    (``signals.expert``) is the optional fourth argument (an argument, not a constant of
    the compiled function).
    """
    hp = hyperparameters(settings)
    num_minibatches = hp.buffer_size // hp.batch_size
    length = arch.sequence_length if arch.memory_size else 1
    per_minibatch = minibatch_sequences(arch, settings) if arch.memory_size else 0
    train_signals = signals is not None and signals.trainable

    def update(state: PPOState, batch: Batch, key: jax.Array, expert: Any = None):
        if on_trace is not None:
            on_trace()
        lr, epsilon, beta = schedules(settings, state.step)
        norm_stats = _norm_stats(state.normalizer, arch.normalize)
        rows, adv = batch.advantages.shape[0], batch.advantages
        if arch.memory_size:  # filler sequences (``update_sequences``) hold no step: out of every statistic
            real = batch.loss_masks[::length] > 0  # [S]: a real sequence's first row is a real step
            weights = jnp.repeat(real.astype(jnp.float32), length)  # [rows]: padding of real sequences counts
            trained = jnp.maximum(jnp.sum(real) // per_minibatch, 1)
            adv_mean = jnp.sum(weights * adv) / jnp.sum(weights)
            adv_std = jnp.sqrt(jnp.sum(weights * (adv - adv_mean) ** 2) / jnp.sum(weights))
        else:
            adv_mean, adv_std = jnp.mean(adv), jnp.std(adv)
        batch = batch._replace(advantages=(adv - adv_mean) / (adv_std + ADVANTAGE_EPS))
        grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

        def minibatch_step(carry, xs):
            params, opt_state, signal_states = carry
            idx, signal_key = xs
            minibatch = jax.tree.map(lambda x: x[idx], batch)
            if constrain is not None:
                minibatch = constrain(minibatch)
            (_, aux), grads = grad_fn(params, arch, settings, minibatch, norm_stats, epsilon, beta)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            if train_signals:
                inputs = signal_batch(arch, _real_rows(arch, minibatch), jnp.zeros_like(minibatch.advantages))
                signal_states, signal_aux = signals.update(signal_states, inputs, norm_stats, signal_key, expert)
                aux = {**aux, **signal_aux}
            return (params, opt_state, signal_states), aux

        def maybe_step(carry, xs):
            """A minibatch step; with memory skipped (carry kept, zero metrics) past the ``trained`` ones."""
            idx, signal_key, index = xs
            if not arch.memory_size:
                carry, aux = minibatch_step(carry, (idx, signal_key))
                return carry, {**aux, "live": jnp.ones((), jnp.float32)}
            shapes = jax.eval_shape(minibatch_step, carry, (idx, signal_key))[1]
            skip = lambda c, _: (c, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes))  # noqa: E731
            carry, aux = jax.lax.cond(index < trained, minibatch_step, skip, carry, (idx, signal_key))
            return carry, {**aux, "live": (index < trained).astype(jnp.float32)}

        def epoch_step(carry, epoch_key):
            k_signals = jax.random.fold_in(epoch_key, 1)
            if not arch.memory_size:
                order = jax.random.permutation(epoch_key, hp.buffer_size)
                order = order[: num_minibatches * hp.batch_size].reshape(num_minibatches, hp.batch_size)
                count = num_minibatches
            else:  # whole sequences, the real ones shuffled first (the fillers sort last)
                sequences = rows // length
                count = sequences // per_minibatch
                draw = jax.random.uniform(epoch_key, (sequences,)) + jnp.where(real, 0.0, 2.0)
                starts = jnp.argsort(draw)[: count * per_minibatch] * length
                order = (starts[:, None] + jnp.arange(length)[None, :]).reshape(count, per_minibatch * length)
            xs = (order, jax.random.split(k_signals, count), jnp.arange(count))
            return jax.lax.scan(maybe_step, carry, xs)

        keys = jax.random.split(key, hp.num_epoch)
        (params, opt_state, signal_states), aux = jax.lax.scan(
            epoch_step, (state.params, state.opt_state, state.signals), keys
        )
        live = aux.pop("live")  # [epochs, minibatches]

        def mean(value: jax.Array) -> jax.Array:  # over the minibatches trained
            return jnp.sum(value * live) / jnp.sum(live)

        metrics = {
            # ML-Agents reports the absolute policy loss
            "Losses/Policy Loss": mean(jnp.abs(aux["policy_loss"])),
            "Losses/Value Loss": mean(aux["value_loss"]),
            "Policy/Entropy": mean(aux["entropy"]),
            "Policy/Approx KL": mean(aux["approx_kl"]),
            "Policy/Learning Rate": lr,
            "Policy/Epsilon": epsilon,
            "Policy/Beta": beta,
        }
        metrics.update({tag: mean(value) for tag, value in aux.items() if "/" in tag})
        new_state, finite = shared.keep_finite(
            state, state._replace(params=params, opt_state=opt_state, signals=signal_states)
        )
        metrics[shared.SKIPPED_UPDATE_METRIC] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return update


def make_process_fn(
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    on_trace: Callable[[], None] | None = None,
    signals: signals_mod.RewardSignals | None = None,
) -> Callable:
    """The pure per-fragment step: normalizer update, rewards, values, GAE (fixed padded shapes).

    Signature: ``(params, normalizer, acting_normalizer, observations [L+1, ...] per spec,
    rewards [L], length, bootstrap, continuous [L, c], discrete [L, b], action_masks [L, m],
    log_probs [L], signal_states, episode_ended, memories [L, M] | None, critic_memory [M] |
    None) -> (normalizer, values [L, H], advantages [L], returns [L, H], old_log_probs [L, c +
    b], signal_rewards [H, L], critic_memories [L, M] | None, critic_final [M] | None)``; row
    ``length`` of each observation holds ``next_observations``; ``rewards`` are the
    environment's (each signal applies its strength); ``episode_ended`` marks the last real
    step done (GAIL's input). Without ``signals`` the extrinsic signal of ``settings`` alone
    is used. With memory (M floats; every signal's value head reads the critic's LSTM): ``memories`` are the actor's
    before each step, ``critic_memory`` the critic's before the first; ``critic_memories`` is,
    per row, the critic's memory at the start of the row's training sequence and
    ``critic_final`` its memory after the last step.

    ``old_log_probs`` are the per-dimension log-probs PPO's ratio needs, while fragments
    carry only the acting policy's joint log-prob: they are recomputed with the current
    actor and ``acting_normalizer``, the statistics of the last snapshot (the normalizer
    itself moves with every fragment processed since, which would shift the columns
    against each other), then shifted by an equal share of the difference to the carried
    joint log-prob, so that their sum is exactly the acting joint log-prob. With on-policy
    coupling the fragments were acted by exactly that actor and those statistics, so the
    columns are the acting ones; a fragment of an older snapshot (asynchronous coupling)
    keeps the exact joint and an approximate split.
    """

    outputs = _fragment_outputs_fn(arch, settings, signals)

    def process(
        params, normalizer, acting_normalizer, observations, rewards, length, bootstrap, continuous, discrete,
        action_masks, log_probs, signal_states, episode_ended, memories=None, critic_memory=None,
    ):
        if on_trace is not None:
            on_trace()
        normalizer = _fold_fragment(arch, normalizer, observations, rewards.shape[0], length)
        return (normalizer,) + outputs(
            params, normalizer, acting_normalizer, observations, rewards, length, bootstrap, continuous, discrete,
            action_masks, log_probs, signal_states, episode_ended, memories, critic_memory,
        )

    return process


def make_batch_process_fn(
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    on_trace: Callable[[], None] | None = None,
    signals: signals_mod.RewardSignals | None = None,
) -> Callable:
    """``make_process_fn`` for B fragments at once, in their order: one compiled call per batch.

    Why: with a short ``time_horizon`` (GridWorld: 5) a chunk holds a hundred fragments, and
    one compiled call each cost more in dispatch and padding than the arithmetic
    (benchmarks/results/bench_ingestion.md). The normalizer folds the fragments in one after
    the other (a scan: fragment k's values see the statistics after fragments 0..k, as when
    they come one by one); everything else is the per-fragment step mapped over the batch
    (``jax.vmap``), so the results are the per-fragment ones up to float summation order.

    Signature: the per-fragment one with a leading fragment axis B on every per-fragment
    argument and result (``observations [B, L+1, ...]`` per spec, ``rewards [B, L]``,
    ``lengths [B]``, ``bootstrap [B]``, ``continuous [B, L, c]``, ``discrete [B, L, b]``,
    ``action_masks [B, L, m]``, ``log_probs [B, L]``, ``episode_ended [B]``, ``memories [B,
    L, M]``, ``critic_memory [B, M]``; results ``values [B, L, H]``, ``advantages [B, L]``,
    ``returns [B, L, H]``, ``old_log_probs [B, L, c + b]``, ``signal_rewards [B, H, L]``,
    ``critic_memories [B, L, M]``, ``critic_final [B, M]``); ``params``, ``normalizer``
    (returned after the last fragment), ``acting_normalizer`` and ``signal_states`` are
    shared. Padding fragments have length 0: they change nothing and their results are 0.
    With memory, a batch must not hold two fragments of one agent (the second starts from
    the critic memory the first leaves).
    """
    outputs = jax.vmap(
        _fragment_outputs_fn(arch, settings, signals),
        in_axes=(None, 0, None, 0, 0, 0, 0, 0, 0, 0, 0, None, 0, 0, 0),
    )

    def process(
        params, normalizer, acting_normalizer, observations, rewards, lengths, bootstrap, continuous, discrete,
        action_masks, log_probs, signal_states, episode_ended, memories=None, critic_memory=None,
    ):
        if on_trace is not None:
            on_trace()
        padded = rewards.shape[1]

        def fold(state, fragment):
            state = _fold_fragment(arch, state, fragment[0], padded, fragment[1])
            return state, state

        normalizer, after_each = jax.lax.scan(fold, normalizer, (observations, lengths))  # after_each: [B, ...] leaves
        return (normalizer,) + outputs(
            params, after_each, acting_normalizer, observations, rewards, lengths, bootstrap, continuous, discrete,
            action_masks, log_probs, signal_states, episode_ended, memories, critic_memory,
        )

    return process


def _fold_fragment(arch: PolicyArchitecture, normalizer, observations, padded: int, length):
    """The normalizer after one fragment's ``length`` real steps (of ``padded`` rows; unchanged
    without ``normalize`` or when the update would not be finite)."""
    if not arch.normalize:
        return normalizer
    updated = norm_mod.update(normalizer, [o[:padded] for o in observations], jnp.arange(padded) < length)
    return shared.keep_finite(normalizer, updated)[0]  # never an infinite variance


def _fragment_outputs_fn(
    arch: PolicyArchitecture, settings: TrainerSettings, signals: signals_mod.RewardSignals | None
) -> Callable:
    """What one fragment yields once the normalizer has folded it in (``make_process_fn``'s
    results after the normalizer): values, advantages, returns, per-dimension acting
    log-probs, signal rewards and critic memories."""
    hp = hyperparameters(settings)
    a_spec = arch.behavior_spec.action_spec
    signals = signals if signals is not None else signals_mod.RewardSignals(arch.behavior_spec, settings)
    heads = signals.names
    gammas, ignore_done = jnp.asarray(signals.gammas), jnp.asarray(signals.ignore_done)

    def outputs(
        params, normalizer, acting_normalizer, observations, rewards, length, bootstrap, continuous, discrete,
        action_masks, log_probs, signal_states, episode_ended, memories, critic_memory,
    ):
        padded = rewards.shape[0]
        mask = jnp.arange(padded) < length
        dist = networks.actor_forward(  # with memory: step by step from the acting memories [L, m]
            params["actor"], arch, [o[:padded] for o in observations], _norm_stats(acting_normalizer, arch.normalize),
            action_masks if a_spec.mask_size else None, memories,
        )
        parts = distributions.log_prob_parts(dist, continuous, discrete, a_spec.discrete_branches)
        old_log_probs = parts + ((log_probs - jnp.sum(parts, axis=-1)) / parts.shape[-1])[:, None]
        norm_stats = _norm_stats(normalizer, arch.normalize)
        critic_memories = critic_final = None
        if arch.memory_size:  # one unbroken critic LSTM run over the steps and next_observations
            values_all, before = networks.critic_trace(
                params["actor"], params["critic"], arch, list(observations), norm_stats, hp.shared_critic, critic_memory,
                heads,
            )  # [L+1, H]
            critic_memories = before[(jnp.arange(padded) // arch.sequence_length) * arch.sequence_length]
            critic_final = before[length]
        else:
            values_all = networks.critic_values(
                params["actor"], params["critic"], arch, list(observations), norm_stats, hp.shared_critic, heads
            )  # [L+1, H]
        dones = jnp.where((jnp.arange(padded) == length - 1) & episode_ended, 1.0, 0.0)
        inputs = signals_mod.SignalBatch(
            observations=tuple(o[:padded] for o in observations),
            next_observations=tuple(o[1:] for o in observations),
            continuous_actions=distributions.env_continuous(continuous),
            discrete_actions=discrete,
            dones=dones,
            rewards=rewards,
        )
        signal_rewards = jnp.where(mask[None], signals.rewards(signal_states, inputs, norm_stats), 0.0)  # [H, L]
        # per signal: its own gamma; curiosity and RND bootstrap past true terminals too
        bootstrap_values = jnp.where(bootstrap | ignore_done, values_all[length], 0.0)  # [H]
        values = jnp.where(mask[:, None], values_all[:padded], 0.0)  # [L, H]
        per_head = jax.vmap(gae, in_axes=(0, 1, 0, None, 0, None), out_axes=1)
        advantages, returns = per_head(signal_rewards, values, bootstrap_values, mask, gammas, hp.lambd)
        return values, jnp.mean(advantages, axis=1), returns, old_log_probs, signal_rewards, critic_memories, critic_final

    return outputs


# -- the learner shell ------------------------------------------------------------------------
#: the shortest padded fragment (rows): shorter fragments share this compiled shape
MIN_PADDED_ROWS = 16


def padded_length(steps: int, time_horizon: int) -> int:
    """Rows a fragment of ``steps`` steps is padded to before ``process_trajectory``'s jit.

    Within ``time_horizon``: the smallest power of two >= ``steps`` (at least
    ``MIN_PADDED_ROWS``) while it is below ``time_horizon``, else ``time_horizon``; beyond
    it, a multiple of ``time_horizon``. Why: one padded length of ``time_horizon`` rows made
    a 25-step 3DBall fragment (``time_horizon: 1000``) cost forty times its compute, the
    trainer's first ingestion bottleneck (benchmarks/results/bench_ingestion.md); these
    lengths cost at most twice it, for at most log2(time_horizon / 16) + 1 compilations.
    """
    if steps > time_horizon:
        return time_horizon * math.ceil(steps / time_horizon)
    power = max(MIN_PADDED_ROWS, 1 << max(0, steps - 1).bit_length())
    return power if power < time_horizon else time_horizon


#: fragments per batched call (``process_trajectories``): at least this many (padding), at most that many
MIN_BATCH_FRAGMENTS = 4
MAX_BATCH_FRAGMENTS = 128


def batch_fragments(count: int) -> int:
    """Fragments one batched call is padded to for ``count`` real ones: the smallest power of
    two >= ``count``, at least ``MIN_BATCH_FRAGMENTS`` (``count`` <= ``MAX_BATCH_FRAGMENTS``),
    so that the compiled function sees a handful of shapes."""
    return max(MIN_BATCH_FRAGMENTS, 1 << max(0, count - 1).bit_length())


def _bootstraps(trajectory: Trajectory) -> bool:
    """Whether GAE bootstraps from ``next_observations``: cut by ``time_horizon`` or interrupted."""
    return (not trajectory.done) or trajectory.interrupted


def _fragment_rows(observations: np.ndarray, next_observation: np.ndarray, padded: int) -> np.ndarray:
    """One observation's ``[t, ...]`` rows, then ``next_observations``, then zeros: ``[padded + 1, ...]``."""
    t = observations.shape[0]
    rows = np.zeros((padded + 1, *observations.shape[1:]), np.float32)
    rows[:t] = observations
    rows[t] = next_observation
    return rows


def _pad_rows(rows: np.ndarray, length: int) -> np.ndarray:
    """``rows`` ``[t, ...]`` followed by zero rows up to ``[length, ...]``."""
    out = np.zeros((length, *rows.shape[1:]), rows.dtype)
    out[: rows.shape[0]] = rows
    return out


def update_rows(arch: PolicyArchitecture, settings: TrainerSettings) -> int:
    """Rows one update trains on: ``buffer_size``, or with memory the smallest bucket of
    ``update_sequences`` (``buffer_size // sequence_length`` sequences, at least one, times
    ``sequence_length``)."""
    buffer_size = hyperparameters(settings).buffer_size
    if not arch.memory_size:
        return buffer_size
    return max(buffer_size // arch.sequence_length, 1) * arch.sequence_length


def update_sequences(arch: PolicyArchitecture, settings: TrainerSettings, buffered: int) -> int:
    """Sequences one memory update trains on when ``buffered`` sequences wait: all of them,
    filled up with empty sequences (loss mask 0) to ``update_rows // sequence_length`` times
    a power of two, so the compiled update sees a handful of shapes however much padding
    the fragments brought."""
    base = update_rows(arch, settings) // arch.sequence_length
    return base * (1 << max(0, math.ceil(buffered / base) - 1).bit_length())


def minibatch_sequences(arch: PolicyArchitecture, settings: TrainerSettings) -> int:
    """Sequences per minibatch with memory: ``batch_size`` rounded down to a multiple of
    ``sequence_length`` (at least one sequence), as ML-Agents' on-policy trainer."""
    return max(hyperparameters(settings).batch_size // arch.sequence_length, 1)


def _heads_layout(per_head: np.ndarray) -> np.ndarray:
    """``[t, H]`` values or returns as the buffer keeps them: ``[t]`` for one head."""
    return per_head[:, 0] if per_head.shape[1] == 1 else per_head


def ratio_columns(spec: BehaviorSpec) -> int:
    """Columns of PPO's per-dimension ratio: continuous dimensions plus discrete branches."""
    return spec.action_spec.continuous_size + spec.action_spec.num_branches


class PPOLearner:
    """One behavior's PPO: policy, critic, optimizer state, normalizer and rollout buffer.

    Implements ``trainer_server.learning.learner.Learner``. Several behaviors = several learners.

    Args:
        spec: the behavior's observations and actions.
        settings: the behavior's trainer settings (``hyperparameters`` are ``PPOSettings``).
        seed: initialises the networks and every later PRNG key.
        demonstrations: GAIL's expert steps (a ``trainer_server.demonstrations.Demonstrations``);
            None loads ``reward_signals.gail.demo_path`` when GAIL is configured.

    Attributes:
        step: agent steps consumed so far (ML-Agents' "step").
        update_count: updates done so far.
        rollout_buffer: the processed steps waiting for the next update.
        trace_counts: how often each compiled function was traced ("update", "process",
            "batch_process", "packed_process", "act"): a retrace means a recompilation.
    """

    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, seed: int = 0, demonstrations: Any = None):
        self.spec = spec
        self.settings = settings
        self.hyperparameters = hyperparameters(settings)
        self.policy_architecture = shared.policy_architecture(spec, settings, "gaussian")
        arch = self.policy_architecture
        self.signals = signals_mod.RewardSignals(spec, settings, demonstrations)
        key, k_init = jax.random.split(shared.new_key(seed))
        params = init_params(k_init, arch, self.hyperparameters.shared_critic, self.signals.names)
        self._tx = shared.make_optimizer()
        self._state = PPOState(
            params=params,
            opt_state=self._tx.init(params),
            normalizer=norm_mod.init(spec),
            step=jnp.zeros((), jnp.int32),
            signals=self.signals.init(jax.random.fold_in(k_init, 2)),
        )
        self._key = key
        self._acting_normalizer = self._state.normalizer
        #: behavioral cloning after each update (``behavioral_cloning``), or None
        self._bc = behavioral_cloning.for_learner(spec, settings, arch, params["actor"], seed)
        self.step = 0
        self.update_count = 0
        m = arch.memory_size
        extra = {"memories": ((m,), np.float32), "critic_memories": ((m,), np.float32), "loss_masks": ((), np.float32)}
        self.rollout_buffer = rollout_buffer.RolloutBuffer(spec, extra if m else None, with_signal_inputs=self.signals.needs_inputs)
        #: with memory: the critic's memory each agent's last fragment left, by ``Trajectory.agent_key``
        #: (gateway, instance, agent id)
        self.critic_memories: dict[tuple[str, int, int], np.ndarray] = {}
        self._episode_rewards = signals_mod.EpisodeRewards(self.signals.reward_tags())
        self._traces = shared.TraceCounter("update", "process", "batch_process", "packed_process", "act")
        self.trace_counts = self._traces.counts
        self._warned_long = False
        devices.check_batch_sizes(spec.name, settings)
        self._update_fn = devices.compile_update(
            make_update_fn(arch, settings, self._tx, self._traces.hook("update"), devices.batch_constraint(0), self.signals),
            trailing_args=2,  # the key and GAIL's expert data
            compiler_options=shared.cpu_compiler_options(),
        )
        self._process_fn = jax.jit(
            make_process_fn(arch, settings, self._traces.hook("process"), self.signals),
            compiler_options=shared.cpu_compiler_options(),
        )
        self._batch_process_fn = jax.jit(
            make_batch_process_fn(arch, settings, self._traces.hook("batch_process"), self.signals),
            compiler_options=shared.cpu_compiler_options(),
        )
        #: row counts the packed call has been compiled for (``ppo_packed.packed_shape``)
        self._packed_rows: set[int] = set()
        #: how often each row bucket was a batch's own (``ppo_packed.packed_shape``'s ``asked``)
        self._packed_asked: dict[int, int] = {}
        # packed only where fragments come in several padded lengths: with a short time_horizon
        # (GridWorld: 5) every fragment has one padded length, and make_batch_process_fn's
        # per-fragment layout takes a batch in one call too, the actor on the steps alone and
        # with fewer compiled shapes (benchmarks/results/bench_trainer_parts.md)
        packs = not m and settings.time_horizon > MIN_PADDED_ROWS
        self._packed_process_fn = None if not packs else jax.jit(
            ppo_packed.make_packed_process_fn(
                arch, self.signals, self.hyperparameters.lambd, self.hyperparameters.shared_critic,
                self._traces.hook("packed_process"),
            ),
            compiler_options=shared.cpu_compiler_options(),
        )
        self._on_act_trace = self._traces.hook("act")
        self._act_fn = jax.jit(self._act, static_argnames=("deterministic",))
        self._log = log.bind(behavior=spec.name)

    # -- experience --------------------------------------------------------------------
    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Values, GAE and normalizer update for one fragment; appends it to the buffer.

        Raises:
            ValueError: when the fragment does not match the behavior's spec.
        """
        t = len(trajectory)
        self._check(trajectory)
        padded = self._padded(t)
        observations = [
            _fragment_rows(obs, nxt, padded) for obs, nxt in zip(trajectory.observations, trajectory.next_observations)
        ]
        rewards = _pad_rows(np.asarray(trajectory.rewards, np.float32), padded)
        padded_actions = {name: _pad_rows(value, padded) for name, value in self._actions(trajectory).items()}
        joint = _pad_rows(np.asarray(trajectory.log_probs, np.float32).reshape(t), padded)
        memory_args = ()
        if self.policy_architecture.memory_size:
            memories = _pad_rows(np.asarray(trajectory.memories, np.float32), padded)
            memory_args = (memories, self._critic_memory(trajectory))
        normalizer, *results = self._process_fn(
            self._state.params, self._state.normalizer, self._acting_normalizer, tuple(observations), rewards,
            np.int32(t), np.bool_(_bootstraps(trajectory)), padded_actions["continuous_actions"],
            padded_actions["discrete_actions"], padded_actions["action_masks"], joint, self._state.signals,
            np.bool_(trajectory.done), *memory_args,
        )
        self._state = self._state._replace(normalizer=normalizer)
        self._store(trajectory, observations, *[None if r is None else np.asarray(r) for r in results])

    def process_trajectories(self, trajectories: list[Trajectory]) -> None:
        """``process_trajectory`` for several fragments in order, a few compiled calls in all.

        Without memory and with a ``time_horizon`` above ``MIN_PADDED_ROWS`` (fragments of
        several padded lengths): runs of up to ``ppo_packed.MAX_PACKED_STEPS`` steps go
        through one call each of ``ppo_packed.make_packed_process_fn``, their rows packed one
        after the other (``ppo_packed.packed_shape``: a handful of compiled shapes). Otherwise
        consecutive fragments of one padded length (with memory: of distinct agents) go
        through one call of ``make_batch_process_fn``, padded with empty fragments to a power
        of two of at least ``MIN_BATCH_FRAGMENTS`` and at most ``MAX_BATCH_FRAGMENTS``
        fragments. The buffer, normalizer, step and per-agent
        state end as after ``process_trajectory`` on each in turn (values up to float
        summation order). The caller decides when to update: the fragments all enter the
        buffer, even past ``buffer_size`` (``steps_until_ready``).

        Raises:
            ValueError: when a fragment does not match the behavior's spec; nothing of the
                batch is processed then.
        """
        for trajectory in trajectories:
            self._check(trajectory)
        if self._packed_process_fn is not None:
            for group in ppo_packed.packed_groups(trajectories):
                self._process_packed(group)
            return
        for group in self._batch_groups(trajectories):
            self._process_group(group)

    def steps_until_ready(self) -> int:
        """Agent steps still to process before ``ready()`` (0 when ready): a batch of fragments
        ends with the one that reaches it, so that the update comes where it would one by one."""
        return max(0, self.hyperparameters.buffer_size - self.buffered_real_steps)

    def _padded(self, t: int) -> int:
        """``padded_length`` of a fragment of ``t`` steps (warned once when beyond ``time_horizon``)."""
        horizon = self.settings.time_horizon
        if t > horizon and not self._warned_long:
            self._warned_long = True
            self._log.warning("trajectory longer than time_horizon: padded to a multiple of it", length=t, time_horizon=horizon)
        return padded_length(t, horizon)

    def _actions(self, trajectory: Trajectory) -> dict[str, np.ndarray]:
        """The fragment's actions and masks as the buffer keeps them (``[t, ...]``)."""
        t, a = len(trajectory), self.spec.action_spec
        return {
            "continuous_actions": np.asarray(trajectory.continuous_actions, np.float32).reshape(t, a.continuous_size),
            "discrete_actions": np.asarray(trajectory.discrete_actions, np.int32).reshape(t, a.num_branches),
            "action_masks": np.asarray(trajectory.action_masks, bool).reshape(t, a.mask_size),
        }

    def _critic_memory(self, trajectory: Trajectory) -> np.ndarray:
        """The critic memory this agent's previous fragment left (zeros at an episode's start);
        keyed by ``agent_key``: instance and agent ids repeat across gateways."""
        return self.critic_memories.get(trajectory.agent_key, np.zeros(self.policy_architecture.memory_size, np.float32))

    def _batch_groups(self, trajectories: list[Trajectory]) -> Iterator[list[Trajectory]]:
        """Consecutive runs of fragments that one batched call takes: one padded length, at most
        ``MAX_BATCH_FRAGMENTS``, and with memory no agent twice."""
        group: list[Trajectory] = []
        agents: set[tuple[str, int, int]] = set()
        memory = bool(self.policy_architecture.memory_size)
        for trajectory in trajectories:
            if group and (
                len(group) == MAX_BATCH_FRAGMENTS
                or self._padded(len(trajectory)) != self._padded(len(group[0]))
                or (memory and trajectory.agent_key in agents)
            ):
                yield group
                group, agents = [], set()
            group.append(trajectory)
            agents.add(trajectory.agent_key)
        if group:
            yield group

    def _process_group(self, group: list[Trajectory]) -> None:
        """One batched call for ``group`` (fragments of one padded length), then each stored in turn."""
        padded = self._padded(len(group[0]))
        size = batch_fragments(len(group))
        a = self.spec.action_spec
        m = self.policy_architecture.memory_size
        observations = [np.zeros((size, padded + 1, *o.shape), np.float32) for o in self.spec.observations]
        rewards = np.zeros((size, padded), np.float32)
        lengths = np.zeros(size, np.int32)
        bootstrap = np.zeros(size, bool)
        ended = np.zeros(size, bool)
        continuous = np.zeros((size, padded, a.continuous_size), np.float32)
        discrete = np.zeros((size, padded, a.num_branches), np.int32)
        masks = np.zeros((size, padded, a.mask_size), bool)
        joint = np.zeros((size, padded), np.float32)
        memories = np.zeros((size, padded, m), np.float32) if m else None
        critic_memory = np.zeros((size, m), np.float32) if m else None
        actions = []
        for b, trajectory in enumerate(group):
            t = len(trajectory)
            for rows, obs, nxt in zip(observations, trajectory.observations, trajectory.next_observations):
                rows[b, :t] = obs
                rows[b, t] = nxt
            rewards[b, :t] = trajectory.rewards
            lengths[b], bootstrap[b], ended[b] = t, _bootstraps(trajectory), trajectory.done
            actions.append(self._actions(trajectory))
            continuous[b, :t] = actions[-1]["continuous_actions"]
            discrete[b, :t] = actions[-1]["discrete_actions"]
            masks[b, :t] = actions[-1]["action_masks"]
            joint[b, :t] = np.asarray(trajectory.log_probs, np.float32).reshape(t)
            if m:
                memories[b, :t] = trajectory.memories
                critic_memory[b] = self._critic_memory(trajectory)
        memory_args = (memories, critic_memory) if m else ()
        normalizer, *results = self._batch_process_fn(
            self._state.params, self._state.normalizer, self._acting_normalizer, tuple(observations), rewards,
            lengths, bootstrap, continuous, discrete, masks, joint, self._state.signals, ended, *memory_args,
        )
        self._state = self._state._replace(normalizer=normalizer)
        results = [None if r is None else np.asarray(r) for r in results]
        for b, trajectory in enumerate(group):
            self._store(
                trajectory, [rows[b] for rows in observations], *[None if r is None else r[b] for r in results],
                actions=actions[b],
            )

    def _process_packed(self, group: list[Trajectory]) -> None:
        """One packed call for ``group`` (without memory: ``ppo_packed``), then the whole group
        into the buffer as one chunk (its steps in order) and each fragment's signal sums."""
        actions = [self._actions(t) for t in group]
        steps = sum(len(t) for t in group)
        own = ppo_packed.own_rows(steps, len(group))
        calls = sum(self._packed_asked.values())
        rows = ppo_packed.packed_shape(steps, len(group), self._packed_rows, self._packed_asked.get(own, 0), calls)
        self._packed_asked[own] = self._packed_asked.get(own, 0) + 1
        self._packed_rows.add(rows)
        batch = ppo_packed.pack(group, actions, [_bootstraps(t) for t in group], rows)
        normalizer, *results = self._packed_process_fn(
            self._state.params, self._state.normalizer, self._acting_normalizer, batch.observations, batch.segments,
            batch.next_rows, batch.real, batch.last, batch.bootstrap, batch.dones, batch.rewards, batch.continuous,
            batch.discrete, batch.action_masks, batch.log_probs, batch.lengths, self._state.signals,
        )
        self._state = self._state._replace(normalizer=normalizer)
        values, advantages, returns, old_log_probs, signal_rewards = (np.asarray(r) for r in results)
        s = batch.steps
        chunk = {
            "observations": [o[:s] for o in batch.observations],
            "continuous_actions": batch.continuous[:s],
            "discrete_actions": batch.discrete[:s],
            "action_masks": batch.action_masks[:s],
            "log_probs": old_log_probs[:s],
            "values": _heads_layout(values[:s]),
            "advantages": advantages[:s],
            "returns": _heads_layout(returns[:s]),
        }
        if self.signals.needs_inputs:
            chunk["next_observations"] = [o[batch.next_rows[:s]] for o in batch.observations]
            chunk["dones"] = batch.dones[:s]
        self.rollout_buffer.add(chunk)
        sums = np.add.reduceat(signal_rewards[:, :s], batch.offsets, axis=1)  # [H, K]
        for k, trajectory in enumerate(group):
            self._episode_rewards.add(trajectory.agent_key, sums[:, k], trajectory.done)
        self.step += s

    def _store(
        self,
        trajectory: Trajectory,
        observations: list[np.ndarray],
        values: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
        old_log_probs: np.ndarray,
        signal_rewards: np.ndarray,
        critic_memories: np.ndarray | None,
        critic_final: np.ndarray | None,
        actions: dict[str, np.ndarray] | None = None,
    ) -> None:
        """One processed fragment into the buffer, the per-agent state and the step count.

        Args:
            observations: per spec, the fragment's padded rows ``[L+1, ...]`` (its steps, then
                ``next_observations``).
            values, advantages, returns, old_log_probs, signal_rewards, critic_memories,
                critic_final: the fragment's results of the compiled step (``[L, ...]`` rows).
            actions: ``_actions(trajectory)`` when already built.
        """
        t = len(trajectory)
        chunk = {
            "observations": [np.asarray(o, np.float32) for o in trajectory.observations],
            **(actions if actions is not None else self._actions(trajectory)),
            "log_probs": old_log_probs[:t],
            # [t] with the extrinsic signal alone (the buffer's historical layout), else [t, H]
            "values": _heads_layout(values[:t]),
            "advantages": advantages[:t],
            "returns": _heads_layout(returns[:t]),
        }
        if self.signals.needs_inputs:
            chunk["next_observations"] = [o[1 : t + 1] for o in observations]
            chunk["dones"] = ((np.arange(t) == t - 1) & trajectory.done).astype(np.float32)
        agent = trajectory.agent_key
        if self.policy_architecture.memory_size:
            if trajectory.done:
                self.critic_memories.pop(agent, None)
            else:
                self.critic_memories[agent] = np.asarray(critic_final, np.float32)
            chunk = self._sequences(chunk, trajectory, critic_memories[:t])
        self.rollout_buffer.add(chunk)
        self._episode_rewards.add(agent, signal_rewards.sum(axis=1), trajectory.done)
        self.step += t

    def _sequences(self, chunk: dict[str, Any], trajectory: Trajectory, critic_memories: np.ndarray) -> dict[str, Any]:
        """One processed fragment of t steps as whole sequences for the buffer (with memory):
        every field zero-padded at its end to a multiple of ``sequence_length`` rows, plus the
        actor's ``memories``, the ``critic_memories`` and ``loss_masks`` (1 on the t real rows)."""
        t = len(trajectory)
        length = self.policy_architecture.sequence_length
        rows = length * math.ceil(t / length)
        chunk = {  # per-step arrays, and lists of them per observation (observations, next_observations)
            **{name: [_pad_rows(o, rows) for o in value] if isinstance(value, list) else _pad_rows(value, rows)
               for name, value in chunk.items()},
            "memories": _pad_rows(np.asarray(trajectory.memories, np.float32), rows),
            "critic_memories": _pad_rows(critic_memories, rows),
            "loss_masks": _pad_rows(np.ones(t, np.float32), rows),
        }
        return chunk

    def _check(self, trajectory: Trajectory) -> None:
        t = len(trajectory)
        if t == 0:
            raise ValueError(f"behavior {self.spec.name}: empty trajectory")
        m = self.policy_architecture.memory_size
        got = None if trajectory.memories is None else tuple(np.shape(trajectory.memories))
        if m and got != (t, m):
            raise ValueError(
                f"behavior {self.spec.name}: trajectory memories have shape {got}, expected {(t, m)} "
                "(network_settings.memory: the actor's memory before each step)"
            )
        if len(trajectory.observations) != len(self.spec.observations) or len(trajectory.next_observations) != len(
            self.spec.observations
        ):
            raise ValueError(f"behavior {self.spec.name}: trajectory has the wrong number of observations")
        for i, (obs, nxt, ospec) in enumerate(zip(trajectory.observations, trajectory.next_observations, self.spec.observations)):
            if tuple(obs.shape) != (t, *ospec.shape) or tuple(nxt.shape) != tuple(ospec.shape):
                raise ValueError(
                    f"behavior {self.spec.name}: observation {i} has shape {obs.shape} (next {nxt.shape}), "
                    f"expected {(t, *ospec.shape)}"
                )

    on_policy = True

    @property
    def buffered_steps(self) -> int:
        """Steps waiting in the buffer."""
        return self.rollout_buffer.size

    def discard_buffered(self) -> int:
        """Drops the steps waiting in the buffer (the trainer's on-policy coupling calls this
        after an update: they were acted by the policy before it); returns how many."""
        dropped = self.rollout_buffer.size
        self.rollout_buffer.load_state_dict(None)
        return dropped

    def ready(self) -> bool:
        """True once ``buffer_size`` steps are buffered (with memory: real steps, not the
        sequences' padding rows: the gateways step ``buffer_size`` real steps per version, and
        counting padding updated before they had all arrived, so the rest came stale)."""
        if self.policy_architecture.memory_size:
            return self.buffered_real_steps >= self.hyperparameters.buffer_size
        return self.rollout_buffer.size >= self.hyperparameters.buffer_size

    @property
    def buffered_real_steps(self) -> int:
        """Steps waiting in the buffer, sequence padding left out."""
        if not self.policy_architecture.memory_size:
            return self.rollout_buffer.size
        return int(round(self.rollout_buffer.total("loss_masks")))

    # -- update ------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """One PPO update on the oldest ``buffer_size`` buffered steps.

        Returns:
            ML-Agents-named metrics: "Losses/Policy Loss", "Losses/Value Loss",
            "Policy/Entropy", "Policy/Learning Rate", "Policy/Epsilon", "Policy/Beta",
            "Policy/Extrinsic Value Estimate", and "Policy/Approx KL"; with reward signals
            also ``Policy/{Name} Value Estimate`` per signal, ``Policy/{Name} Reward`` (mean
            episode sum of the signal's reward, over the episodes finished since the last
            update) and each signal's losses (``Losses/Curiosity Forward Loss``...).

        Raises:
            RuntimeError: when fewer than buffer_size steps are buffered.
        """
        if not self.ready():
            raise RuntimeError(
                f"behavior {self.spec.name}: update needs {self.hyperparameters.buffer_size} steps, "
                f"{self.rollout_buffer.size} buffered"
            )
        n = update_rows(self.policy_architecture, self.settings)
        if self.policy_architecture.memory_size:  # every buffered sequence, filled up to a bucket of shapes
            length = self.policy_architecture.sequence_length
            n = length * update_sequences(self.policy_architecture, self.settings, self.rollout_buffer.size // length)
            data = self.rollout_buffer.take(self.rollout_buffer.size)
            data = {k: [_pad_rows(o, n) for o in v] if isinstance(v, list) else _pad_rows(v, n) for k, v in data.items()}
        else:
            data = self.rollout_buffer.take(n)
        batch = Batch(observations=tuple(data["observations"]), **{f: data[f] for f in self.rollout_buffer.fields})
        batch = batch._replace(values=batch.values.reshape(n, -1), returns=batch.returns.reshape(n, -1))
        if self.signals.needs_inputs:  # the buffer then keeps ``dones`` among its fields too
            batch = batch._replace(next_observations=tuple(data["next_observations"]))
        self._key, key = jax.random.split(self._key)
        state = self._state._replace(step=jnp.asarray(min(self.step, np.iinfo(np.int32).max), jnp.int32))
        self._state, metrics = self._update_fn(state, batch, key, self.signals.expert)
        self._acting_normalizer = self._state.normalizer  # what the snapshot after this update acts with
        self.update_count += 1
        out = {name: float(value) for name, value in jax.device_get(metrics).items()}
        real = data["loss_masks"] > 0 if "loss_masks" in data else slice(None)
        for tag, values in zip(self.signals.value_tags(), np.asarray(batch.values).T):
            out[tag] = float(np.mean(values[real]))
        # the signals' episode sums (the extrinsic one is recorded per episode by the run)
        out.update({k: v for k, v in self._episode_rewards.report().items() if k != "Policy/Extrinsic Reward"})
        params, bc_metrics = behavioral_cloning.after_rl_update(
            self._bc, self._state.params, self._state.normalizer, self.policy_architecture.normalize, self.step
        )
        self._state = self._state._replace(params=params)
        out.update(bc_metrics)
        return out

    # -- acting and snapshots ------------------------------------------------------------
    def _act(self, actor_params, normalizer, observations, action_mask, key, memories, deterministic: bool):
        self._on_act_trace()
        arch = self.policy_architecture
        dist, memories = networks.actor_step(
            actor_params, arch, list(observations), _norm_stats(normalizer, arch.normalize), action_mask, memories
        )
        n = observations[0].shape[0]
        actions = distributions.sample(dist, key, n, arch.behavior_spec.action_spec.discrete_branches, deterministic=deterministic)
        return actions, distributions.env_continuous(actions.continuous), memories

    def act(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None = None,
        key: jax.Array | None = None,
        deterministic: bool = False,
        memories: np.ndarray | None = None,
    ) -> PolicyOutput:
        """Acts with the current policy in JAX (tests, local checks); the gateway uses NumpyPolicy.

        Args:
            observations: per observation spec, float32 ``[n, *shape]``.
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            key: PRNG key; None draws one from the learner's key.
            memories: with memory, float32 ``[n, memory_size]`` before the step (None: zeros).
        """
        if key is None:
            self._key, key = jax.random.split(self._key)
        n = np.asarray(observations[0]).shape[0]
        a = self.spec.action_spec
        mask = None
        if a.mask_size:
            mask = np.zeros((n, a.mask_size), bool) if action_mask is None else np.asarray(action_mask, bool)
        m = self.policy_architecture.memory_size
        if m and memories is None:
            memories = np.zeros((n, m), np.float32)
        actions, env, memories = self._act_fn(
            self._state.params["actor"],
            self._state.normalizer,
            tuple(np.asarray(o, np.float32) for o in observations),
            mask,
            key,
            None if not m else np.asarray(memories, np.float32),
            deterministic=deterministic,
        )
        return PolicyOutput(
            continuous=np.asarray(actions.continuous, np.float32),
            discrete=np.asarray(actions.discrete, np.int32),
            log_probs=np.asarray(actions.log_probs, np.float32),
            env_continuous=np.asarray(env, np.float32),
            memories=None if memories is None else np.asarray(memories, np.float32),
        )

    def architecture(self) -> PolicyArchitecture:
        """What the snapshot's parameters mean (``continuous_distribution="gaussian"``)."""
        return self.policy_architecture

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat float32 actor parameters and normalizer statistics (the snapshot's ``parameters``).

        The statistics are those of the last update (``_acting_normalizer``), which every
        snapshot since acts with: the normalizer itself moves with each fragment processed,
        and the policy a gateway acts with (and a checkpoint's model) stays the one trained.
        """
        return shared.policy_parameters(self._state.params["actor"], self._acting_normalizer, self.policy_architecture.normalize)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly, as nested dicts of numpy arrays and Python numbers
        (``flax.serialization.msgpack_serialize`` writes it): params, Adam state, normalizer
        and the statistics the snapshots act with, step, update count, PRNG key and the
        steps still buffered."""
        return {
            "algorithm": "ppo",
            "params": shared.to_numpy(self._state.params),
            "opt_state": shared.to_numpy(serialization.to_state_dict(self._state.opt_state)),
            "normalizer": shared.normalizer_state_dict(self._state.normalizer),
            "acting_normalizer": shared.normalizer_state_dict(self._acting_normalizer),
            "step": int(self.step),
            "update_count": int(self.update_count),
            "key": shared.key_to_numpy(self._key),
            "buffer": self.rollout_buffer.state_dict(),
            **behavioral_cloning.state_entry(self._bc),
            "reward_signals": signals_mod.state_dict(self._state.signals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``'s output (e.g. after msgpack_restore).

        Raises:
            ValueError: naming the entry that does not fit this behavior's networks.
        """
        shared.check_state(state, "ppo", ("params", "opt_state", "normalizer", "step", "update_count", "key"))
        current = self._state
        params = shared.restore_like(current.params, state["params"], "params")
        opt_state = shared.restore_optimizer(current.opt_state, state["opt_state"])
        normalizer = shared.restore_normalizer(current.normalizer, state["normalizer"])
        signal_states = current.signals
        if "reward_signals" in state:  # absent from checkpoints made before reward signals
            signal_states = signals_mod.restore(current.signals, state["reward_signals"])
        self._state = PPOState(
            params=params, opt_state=opt_state, normalizer=normalizer, step=current.step, signals=signal_states
        )
        self.step = int(np.asarray(state["step"]))
        self.update_count = int(np.asarray(state["update_count"]))
        self._key = shared.key_from_numpy(state["key"])
        behavioral_cloning.load_entry(self._bc, state)
        buffer = state.get("buffer")
        if buffer is not None and np.ndim(buffer["log_probs"]) == 1:
            # a checkpoint from before the per-dimension ratio kept joint log-probs: an
            # equal share per column keeps their sum (the joint ratio) exact
            joint = np.asarray(buffer["log_probs"], np.float32)[:, None]
            columns = ratio_columns(self.spec)
            buffer = {**buffer, "log_probs": np.repeat(joint / columns, columns, axis=1)}
        self.rollout_buffer.load_state_dict(buffer)
        # the statistics the snapshots act with (older checkpoints: the normalizer's)
        acting = state.get("acting_normalizer")
        self._acting_normalizer = normalizer if acting is None else shared.restore_normalizer(current.normalizer, acting)

    def load_weights(self, state: dict[str, Any]) -> None:
        """``init_path`` / ``--initialize-from``: the checkpoint's networks, Adam state and
        normalizer; the buffered steps are dropped and the new run counts from step 0."""
        shared.load_weights(self, state)

    def save_extra(self, folder: Path) -> None:
        """Nothing to keep beside the checkpoint: the buffered steps are in ``state_dict``."""

    def load_extra(self, folder: Path) -> None:
        """Nothing to load beside the checkpoint (see ``save_extra``)."""
