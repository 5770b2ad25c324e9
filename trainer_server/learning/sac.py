"""Soft Actor-Critic for one behavior, jit-compiled, with ML-Agents' SAC settings.

Why: ``trainer_type: sac`` in an ML-Agents config must train through the same gateway
streams and snapshot push as PPO. SAC is off-policy: every trajectory fragment becomes
single transitions in a replay buffer on the trainer (``trainer_server.learning.replay_buffer``),
and gradient steps on uniformly sampled minibatches follow the agent steps at ML-Agents'
ratio (one gradient step per ``steps_per_update`` agent steps once
``buffer_init_steps`` are collected) while the gateways keep streaming.

Hot path: ``update()`` runs every pending gradient step in calls of ONE jit-compiled pure
function ``(state, batch, key) -> (state, metric sums)`` that scans (``lax.scan``) over a
fixed number ``k`` of minibatches; steps beyond the number due are skipped inside the
scan (``lax.cond``), so shapes never change and the update compiles once per learner.
Minibatch indices come from a numpy generator (checkpointed with the learner), the
metrics are summed on the device and fetched once per ``update()``.

What is learned (ML-Agents' SAC, with one deliberate difference):

* actor: the shared encoders + swish MLP body of ``common/architecture.py``; continuous actions
  from a tanh-squashed Gaussian with a state-dependent log-std head clipped to
  [-20, 2] (the environment receives ``tanh(u)``, the replay buffer stores ``tanh(u)``);
  discrete actions from one masked categorical per branch (masked actions have
  probability exactly 0).
* twin Q critics, each with its own encoders and body over ``[obs encodings, continuous
  action]`` and one output per discrete action of every branch (or one output without
  discrete actions); the value of a discrete action is the mean over branches of the
  chosen actions' outputs, as ML-Agents condenses them.
* target networks: **a target copy of both Q critics** updated by Polyak averaging
  ``target <- tau * online + (1 - tau) * target`` after every gradient step. ML-Agents
  instead trains a separate state-value network V and soft-updates a target V; the
  twin-target-Q form (Haarnoja et al. 2018, "SAC: algorithms and applications") needs no
  extra network, is what most SAC implementations use, and takes the same ``tau``.
  Hence there is no "Losses/Value Loss" metric.
* soft state value ``V(s) = mean_b sum_a pi_b(a|s) Q_b(s, a_c)[a] + mean_b alpha_b H_b(s)
  - alpha_c log pi_c(a_c|s)`` with ``a_c ~ pi_c``, ``Q = min(Q1, Q2)`` (mean over branches
  as ML-Agents). Critic target ``y = strength * r + gamma * (1 - done) * V_target(s')``
  (``done`` only on true terminal steps: interrupted episodes and ``time_horizon`` cuts
  bootstrap). Critic loss ``0.5 * mean((Q_i(s, a) - y)^2)``.
* policy loss (ML-Agents' ``sac_policy_loss``, against Q1 alone, not the minimum):
  continuous ``mean(alpha_c log pi_c(a_c|s) - Q1(s, a_c))``; discrete
  ``mean(sum_b sum_a p_b(a) (alpha_b log p_b(a) - Q1[a]))`` (a sum over branches; with both
  kinds of actions the continuous term subtracts ``sum_a p(a) Q1[a]`` over every branch
  again, as ML-Agents does).
* automatic entropy tuning (ML-Agents): one coefficient for the continuous actions and
  one per discrete branch, all initialised to ``init_entcoef``, target entropy ``-c``
  (continuous) and ``0.2 * log(branch size)`` per branch; loss (ML-Agents'
  ``sac_entropy_loss``, on the log-coefficients themselves) ``mean(log alpha *
  stop_gradient(H - target))``, averaged over branches, so alpha falls while the entropy
  is above its target and rises below it.
* one Adam (torch's defaults) over actor, critics and entropy coefficients at once (Adam is
  per-parameter, so this equals ML-Agents' three Adams), all losses from the same
  parameters in one backward pass; learning rate constant or linear to 1e-10 over
  ``max_steps`` (``learning_rate_schedule``).

Memory (``network_settings.memory``, ML-Agents' recurrent SAC): an LSTM after the body of
the actor and of each Q critic (and target). Fragments carry the actor's memory before each
step and enter the replay buffer as whole sequences of ``sequence_length`` steps from
their first step, the last one padded at its end (loss mask 0); a minibatch is
``batch_size // sequence_length`` sequences drawn uniformly (``make_recurrent_fns``). The
actor starts each sequence from its first step's stored acting memory and runs over the
first observation and then the next observations (L + 1 steps, the policy at s and s');
the critics start every sequence from zeros (ML-Agents records no Q memory) and run over
the replayed steps; Q at the policy's action (and the target at ``(s', a')``) is one more
LSTM step from the critic's memory before (after) the replayed step. No burn-in. Every
loss term and statistic is a mean over the real rows only.

Reward signals (``trainer_server.learning.reward_signals``), as ML-Agents' SAC: each Q
critic has one head per configured signal (head 0 keeps the name ``critic/q``); every
gradient step evaluates each signal's reward (times its strength) on the sampled
minibatch with the signal's current parameters, and regresses each head on its own target
with its own gamma (curiosity and RND ignore true terminals); the Q losses are the mean
over heads and the policy reads the mean over heads of the first critic. The learned
signals train apart, on their own minibatches, one Adam step each per
``reward_signal_steps_per_update`` agent steps (counted as the policy's steps).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.architecture import PolicyArchitecture
from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.learning import behavioral_cloning, devices, distributions, networks, shared
from trainer_server.learning import normalizer as norm_mod
from trainer_server.learning import reward_signals as signals_mod
from trainer_server.learning.replay_buffer import (
    ReplayBuffer,
    Transitions,
    generator_from_state,
    generator_state,
    new_generator,
)
from trainer_server.config.schema import SACSettings, TrainerSettings

#: ML-Agents' target entropy scales (not exposed in its settings either)
DISCRETE_TARGET_ENTROPY_SCALE = 0.2
CONTINUOUS_TARGET_ENTROPY_SCALE = 1.0
#: the linear learning-rate schedule decays to this value at max_steps (ML-Agents)
MIN_LEARNING_RATE = 1e-10
#: default memory budget of the k minibatches handed to one compiled update call
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: largest number of gradient steps per compiled call
MAX_STEPS_PER_CALL = 32
#: file name of the saved replay buffer in a behavior's results folder (ML-Agents:
#: ``last_replay_buffer.hdf5``)
REPLAY_BUFFER_FILE = "last_replay_buffer.npz"

log = get_logger(__name__)


# -- configuration: read from the typed settings (validated once, at load) -----------------
def hyperparameters(settings: TrainerSettings) -> SACSettings:
    """``settings.hyperparameters``, typed as SAC's."""
    return settings.hyperparameters  # type: ignore[return-value]


def learning_rate_at(settings: TrainerSettings, step: Any) -> Any:
    """The scheduled learning rate after ``step`` agent steps (constant, or linear to 1e-10)."""
    hp = hyperparameters(settings)
    return shared.decayed_value(hp.learning_rate_schedule, hp.learning_rate, MIN_LEARNING_RATE, settings.max_steps, step)


def updates_due(step: int, buffer_init_steps: int, steps_per_update: float) -> int:
    """Total gradient steps due after ``step`` agent steps, as ML-Agents' SAC trainer counts.

    ML-Agents keeps updating while ``(step - buffer_init_steps) / (updates + 1) >
    steps_per_update``: the count is the largest ``u`` with ``(step - init) / u >
    steps_per_update``, i.e. ``ceil((step - init) / steps_per_update) - 1``.
    """
    steps = step - buffer_init_steps
    if steps <= 0:
        return 0
    due = max(0, math.ceil(steps / steps_per_update) - 1)
    # the same comparisons as ML-Agents' loop, to agree at float boundaries
    while due > 0 and not steps / due > steps_per_update:
        due -= 1
    while steps / (due + 1) > steps_per_update:
        due += 1
    return due


# -- networks and state --------------------------------------------------------------------
# The actor is ``networks.init_actor``'s (flat parameter dict with the snapshot names of
# docs/ARCHITECTURE.md, tanh_gaussian heads), so ``policy_parameters()`` is what
# ``gateway.actor.numpy_policy.NumpyPolicy`` reads. The twin Q critics are ``networks.init_q_critic``'s,
# stacked on a leading axis of 2 (``jax.vmap`` runs both at once).


class TrainState(NamedTuple):
    """Everything the update reads and writes; leaves are jax arrays.

    Attributes:
        params: ``{"actor", "critics" (two Q critics stacked on axis 0), "log_entcoef":
            {"continuous": [1], "discrete": [num_branches]}}``.
        target: the target critics, stacked like ``params["critics"]``.
        opt_state: Adam's state over ``params``.
        normalizer: running observation statistics (read-only in the update).
        step: int32 agent steps so far: drives the learning-rate schedule.
        signals: the reward signals' states (signal name -> state).
    """

    params: dict
    target: Any
    opt_state: Any
    normalizer: norm_mod.NormalizerState
    step: jax.Array
    signals: Any = None


class Minibatches(NamedTuple):
    """One compiled call's input: ``k`` minibatches ``[k, batch_size, ...]`` and which of them
    to train on (``valid`` bool ``[k]``: the gradient steps due, a prefix)."""

    transitions: Transitions
    valid: jax.Array


def init_state(
    key: jax.Array,
    spec: BehaviorSpec,
    arch: PolicyArchitecture,
    init_entcoef: float,
    signals: signals_mod.RewardSignals | None = None,
) -> TrainState:
    """Fresh actor, twin critics with a Q head per reward signal (the targets start as
    copies), entropy coefficients, Adam, the signals' states."""
    k_actor, k_critic = jax.random.split(key)
    heads = signals.names if signals is not None else ("extrinsic",)

    def init_critic(k: jax.Array) -> networks.Params:
        extra = networks.init_extra_heads(
            jax.random.fold_in(k, 1), networks.q_body_width(arch), networks.q_outputs(arch), heads, "critic/q"
        )
        return {**networks.init_q_critic(k, arch), **extra}

    critics = jax.vmap(init_critic)(jax.random.split(k_critic, 2))
    log0 = math.log(init_entcoef)
    params = {
        "actor": networks.init_actor(k_actor, arch),
        "critics": critics,
        "log_entcoef": {
            "continuous": jnp.full((1,), log0, jnp.float32),
            "discrete": jnp.full((spec.action_spec.num_branches,), log0, jnp.float32),
        },
    }
    return TrainState(
        params=params,
        target=jax.tree_util.tree_map(jnp.array, critics),
        opt_state=shared.make_optimizer().init(params),
        normalizer=norm_mod.init(spec),
        step=jnp.zeros((), jnp.int32),
        signals=signals.init(jax.random.fold_in(key, 3)) if signals is not None else None,
    )


def signal_batch(batch: Transitions) -> signals_mod.SignalBatch:
    """What the reward signals read from replayed transitions (actions already squashed)."""
    return signals_mod.SignalBatch(
        observations=tuple(batch.obs),
        next_observations=tuple(batch.next_obs),
        continuous_actions=batch.continuous_actions,
        discrete_actions=batch.discrete_actions,
        dones=batch.dones,
        rewards=batch.rewards,
    )


# -- the loss ------------------------------------------------------------------------------
class _Policy(NamedTuple):
    """The actor's view of a batch: sampled continuous action and discrete distributions."""

    action: jax.Array  # [n, c], tanh-squashed sample
    log_prob: jax.Array  # [n], log pi_c(action), 0 without continuous actions
    probs: jax.Array  # [n, sum(branches)], per-branch probabilities (masked ones exactly 0)
    log_probs: jax.Array  # [n, sum(branches)], per-branch log-probabilities (0 where masked)


def _branch_matrix(branches: tuple[int, ...]) -> np.ndarray:
    """0/1 ``[sum(branches), num_branches]``: column b sums a row's entries of branch b."""
    m = np.zeros((int(sum(branches)), len(branches)), np.float32)
    lo = 0
    for b, size in enumerate(branches):
        m[lo : lo + size, b] = 1.0
        lo += size
    return m


def make_policy_fn(arch: PolicyArchitecture) -> Callable[..., _Policy]:
    """``policy(actor_params, obs, mask, norm_stats, key) -> _Policy``: a reparameterised
    squashed continuous sample and the full discrete distributions of n agents."""
    a_spec = arch.behavior_spec.action_spec
    branches, c, nb = a_spec.discrete_branches, a_spec.continuous_size, a_spec.num_branches

    def policy(actor_params, obs, mask, norm_stats, key) -> _Policy:
        dist = networks.actor_forward(actor_params, arch, list(obs), norm_stats, mask if nb else None)
        return from_dist(dist, mask, key, obs[0].shape[0])

    def from_dist(dist: networks.DistParams, mask, key, n: int) -> _Policy:
        if c:
            action, log_prob = distributions.tanh_gaussian_rsample(dist.mu, dist.log_std, key)
        else:
            action, log_prob = jnp.zeros((n, 0), jnp.float32), jnp.zeros((n,), jnp.float32)
        if nb:
            log_probs = distributions.branch_log_softmax(dist.logits, branches)  # masked logits: p exactly 0
            probs = jnp.exp(log_probs)
            log_probs = jnp.where(mask, 0.0, log_probs)  # keeps p * log p finite (0) where masked
        else:
            log_probs = probs = jnp.zeros((n, 0), jnp.float32)
        return _Policy(action, log_prob, probs, log_probs)

    policy.from_dist = from_dist  # type: ignore[attr-defined]
    return policy


def _to_steps(x: jax.Array, length: int) -> jax.Array:
    """Rows ``[s * length, ...]`` (sequence by sequence) -> step-major ``[length, s, ...]``."""
    return jnp.swapaxes(x.reshape(-1, length, *x.shape[1:]), 0, 1)


def _to_rows(x: jax.Array) -> jax.Array:
    """Inverse of ``_to_steps``: ``[length, s, ...]`` -> ``[s * length, ...]``."""
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_recurrent_fns(arch: PolicyArchitecture, heads: tuple[str, ...]) -> tuple[Callable, Callable, Callable]:
    """The networks with memory over a minibatch of whole sequences (rows ``[S * L]``, L =
    ``sequence_length``, sequence by sequence), as ML-Agents' SAC with memory:

    * ``actor(actor_params, obs, next_obs, norm_stats, memories [S*L, m]) -> (h [S*L, m/2],
      h_next [S*L, m/2])``: the actor's LSTM from each sequence's stored acting memory (its
      first row's) over the sequence's first observation and then its next observations
      (L + 1 steps, one unbroken run: step t's next observation is step t + 1's
      observation), the hidden outputs before the heads at the observations and at the next
      observations.
    * ``critic_pass(critic_params, obs, norm_stats, actions) -> (q [H, S*L, outputs],
      memories before each step [S*L, m], memories after each step [S*L, m])``: one Q critic's LSTM (after its body over
      ``[encoding, continuous action]``) over each sequence from ZERO memories (ML-Agents
      zeroes the Q networks' memories: none is recorded while acting), fed the replayed
      actions.
    * ``critic_step(critic_params, obs, norm_stats, actions, memories [S*L, m]) -> q [H, S*L,
      outputs]``: one LSTM step per row from the given memories: Q at another action (the
      policy's sample) after the same history of replayed steps.
    """
    length, m = arch.sequence_length, arch.memory_size

    def actor(actor_params, obs, next_obs, norm_stats, memories):
        first = [o[::length] for o in obs]  # each sequence's first observation [S, ...]
        h_first = networks.encode(actor_params, "", arch, first, norm_stats)  # [S, w]
        h_next = _to_steps(networks.encode(actor_params, "", arch, list(next_obs), norm_stats), length)  # [L, S, w]
        steps = jnp.concatenate([h_first[None], h_next], axis=0)  # [L + 1, S, w]
        _, outs, _ = networks.lstm_over_sequences(actor_params, "", steps, memories[::length])
        return _to_rows(outs[:-1]), _to_rows(outs[1:])

    def critic_pass(critic_params, obs, norm_stats, actions):
        h = _to_steps(networks.q_critic_body(critic_params, arch, list(obs), norm_stats, actions), length)
        final, outs, before = networks.lstm_over_sequences(
            critic_params, "critic/", h, jnp.zeros((h.shape[1], m), jnp.float32)
        )
        after = jnp.concatenate([before[1:], final[None]], axis=0)  # [L, S, m]
        return networks.apply_heads(critic_params, _to_rows(outs), heads, "critic/q"), _to_rows(before), _to_rows(after)

    def critic_step(critic_params, obs, norm_stats, actions, memories):
        h = networks.q_critic_body(critic_params, arch, list(obs), norm_stats, actions)
        out, _ = networks.lstm_one_step(critic_params, "critic/", h, memories)
        return networks.apply_heads(critic_params, out, heads, "critic/q")

    return actor, critic_pass, critic_step


def make_loss_fn(
    arch: PolicyArchitecture, settings: TrainerSettings, signals: signals_mod.RewardSignals | None = None
) -> Callable:
    """``losses(params, target, norm_stats, batch [batch_size], key, signal_states) -> (total
    loss, metrics)``: the twin critics' regression (one target per reward signal head), the
    policy's soft value and the entropy coefficients' losses, all from the same parameters
    (one backward pass)."""
    a_spec = arch.behavior_spec.action_spec
    branches, c, nb = a_spec.discrete_branches, a_spec.continuous_size, a_spec.num_branches
    seg = jnp.asarray(_branch_matrix(branches)) if nb else None
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(branches)[:-1]]).astype(np.int32)) if nb else None
    target_c = -CONTINUOUS_TARGET_ENTROPY_SCALE * float(c)
    target_d = jnp.asarray([DISCRETE_TARGET_ENTROPY_SCALE * math.log(b) for b in branches], jnp.float32)
    signals = signals if signals is not None else signals_mod.RewardSignals(arch.behavior_spec, settings)
    heads = signals.names
    gammas = jnp.asarray(signals.gammas)[:, None]  # [H, 1]
    use_dones = jnp.asarray(~signals.ignore_done, jnp.float32)[:, None]  # [H, 1]
    policy = make_policy_fn(arch)

    def critics(critic_params, obs, norm_stats, action) -> jax.Array:  # [2, H, n, outputs]
        return jax.vmap(lambda p: networks.q_critic_heads(p, arch, list(obs), norm_stats, action, heads))(critic_params)

    def head_values(q: jax.Array, pi: _Policy, alpha_c: jax.Array, alpha_d: jax.Array) -> jax.Array:
        """Soft state value per head ``[H, n]`` from Q ``[H, n, outputs]`` (entropy in every head, as ML-Agents)."""
        return jax.vmap(lambda qh: soft_value(qh, pi, alpha_c, alpha_d)[0])(q)

    def soft_value(q: jax.Array, pi: _Policy, alpha_c: jax.Array, alpha_d: jax.Array):
        """Soft state value [n] from Q [n, outputs] at pi's continuous action, entropy [n], per-branch entropy."""
        entropy = -pi.log_prob
        if nb:
            expected_q = (pi.probs * q) @ seg  # [n, nb]
            branch_entropy = -((pi.probs * pi.log_probs) @ seg)  # [n, nb]
            value = jnp.mean(expected_q + alpha_d * branch_entropy, axis=-1)
            entropy = entropy + jnp.sum(branch_entropy, axis=-1)
        else:
            value = q[:, 0]
            branch_entropy = jnp.zeros((q.shape[0], 0), jnp.float32)
        if c:
            value = value - alpha_c * pi.log_prob
        return value, entropy, branch_entropy

    def policy_objective(q1: jax.Array, pi: _Policy, alpha_c: jax.Array, alpha_d: jax.Array) -> jax.Array:
        """ML-Agents' per-sample policy loss ``[n]`` from the first critic's Q ``[n, outputs]``:
        discrete ``sum_b sum_a p (alpha_b log p - Q1)``, continuous ``alpha_c log pi_c - Q``
        where Q is ``Q1`` alone or, with discrete actions too, ``sum_a p Q1`` over every branch."""
        loss = jnp.zeros(q1.shape[:1], jnp.float32)
        q_term = q1[:, 0]
        if nb:
            alpha_columns = seg @ alpha_d  # [sum(branches)]: each column's branch coefficient
            loss = jnp.sum(pi.probs * (alpha_columns * pi.log_probs - q1), axis=-1)
            q_term = jnp.sum(pi.probs * q1, axis=-1)
        if c:
            loss = loss + alpha_c * pi.log_prob - q_term
        return loss

    memory = bool(arch.memory_size)
    if memory:
        actor_seq, critic_pass, critic_step = make_recurrent_fns(arch, heads)
        critics_pass = jax.vmap(critic_pass, in_axes=(0, None, None, None))
        critics_step = jax.vmap(critic_step, in_axes=(0, None, None, None, 0))

    def policies(actor_params, batch: Transitions, norm_stats, k_now, k_next) -> tuple[_Policy, _Policy]:
        """The actor at the observations and at the next observations (with memory: one
        LSTM run per sequence from its stored memory, ``make_recurrent_fns``)."""
        if not memory:
            pi = policy(actor_params, batch.obs, batch.action_masks, norm_stats, k_now)
            return pi, policy(actor_params, batch.next_obs, batch.next_action_masks, norm_stats, k_next)
        h, h_next = actor_seq(actor_params, batch.obs, batch.next_obs, norm_stats, batch.memories)
        n = h.shape[0]
        dist = networks.actor_heads(actor_params, arch, h, batch.action_masks if nb else None)
        dist_next = networks.actor_heads(actor_params, arch, h_next, batch.next_action_masks if nb else None)
        return (
            policy.from_dist(dist, batch.action_masks, k_now, n),
            policy.from_dist(dist_next, batch.next_action_masks, k_next, n),
        )

    def mean_rows(x: jax.Array, weights: jax.Array | None) -> jax.Array:
        """Mean over the last axis (the rows); with memory over the real rows only."""
        if weights is None:
            return jnp.mean(x, axis=-1)
        return jnp.sum(x * weights, axis=-1) / jnp.maximum(jnp.sum(weights), 1.0)

    def losses(params, target, norm_stats, batch: Transitions, key, signal_states=None):
        k_now, k_next = jax.random.split(key)
        log_alpha_c = params["log_entcoef"]["continuous"]
        log_alpha_d = params["log_entcoef"]["discrete"]
        alpha_c = jax.lax.stop_gradient(jnp.exp(log_alpha_c[0]))
        alpha_d = jax.lax.stop_gradient(jnp.exp(log_alpha_d))
        weights = batch.loss_masks if memory else None  # [n]: padding rows out of every term
        pi, pi_next = policies(params["actor"], batch, norm_stats, k_now, k_next)
        pi_next = jax.lax.stop_gradient(pi_next)

        # critic regression on the replayed actions (with memory: the critics' LSTMs over
        # each sequence's replayed steps from zero memories)
        if memory:
            q_all, q_before, _ = critics_pass(params["critics"], batch.obs, norm_stats, batch.continuous_actions)
        else:
            q_all = critics(params["critics"], batch.obs, norm_stats, batch.continuous_actions)  # [2, H, n, outputs]

        # critic target: target critics at a' ~ pi(s'), no gradient (with memory: one step
        # from the target critics' memories after the replayed step)
        if memory:
            _, _, target_after = critics_pass(target, batch.obs, norm_stats, batch.continuous_actions)
            q_next = critics_step(target, batch.next_obs, norm_stats, pi_next.action, target_after)
        else:
            q_next = critics(target, batch.next_obs, norm_stats, pi_next.action)
        q_next = jnp.min(q_next, axis=0)  # [H, n, outputs]
        v_next = head_values(q_next, pi_next, alpha_c, alpha_d)  # [H, n]
        rewards = signals.rewards(signal_states, signal_batch(batch), norm_stats)  # [H, n], strengths applied
        y = rewards + gammas * (1.0 - use_dones * batch.dones) * v_next
        y = jax.lax.stop_gradient(y)

        if nb:
            taken = batch.discrete_actions + offsets  # [n, nb]: the output column of each choice
            q_taken = jnp.mean(jnp.take_along_axis(q_all, taken[None, None], axis=-1), axis=-1)  # [2, H, n]
        else:
            q_taken = q_all[..., 0]
        # per head, then the mean over the reward signals' heads (ML-Agents)
        q_losses = 0.5 * jnp.mean(mean_rows((q_taken - y[None]) ** 2, weights), axis=-1)  # [2]

        # policy: ML-Agents' sac_policy_loss, against the first online critic (fixed); with
        # memory Q at pi's action after the same replayed history
        frozen = jax.lax.stop_gradient(params["critics"])
        if memory:
            q_both = critics_step(frozen, batch.obs, norm_stats, pi.action, jax.lax.stop_gradient(q_before))
        else:
            q_both = critics(frozen, batch.obs, norm_stats, pi.action)  # [2, H, n, outputs]
        policy_loss = mean_rows(policy_objective(jnp.mean(q_both[0], axis=0), pi, alpha_c, alpha_d), weights)
        q_min = jnp.min(q_both, axis=0)  # [H, n, outputs]
        _, entropy, branch_entropy = soft_value(q_min[0], pi, alpha_c, alpha_d)
        v_pi = head_values(q_min, pi, alpha_c, alpha_d)  # [H, n], reported

        # entropy coefficients (ML-Agents' sac_entropy_loss): log(alpha) * (H - target), H
        # fixed, so log(alpha) falls while the entropy is above its target
        entropy_loss = jnp.zeros((), jnp.float32)
        if c:
            h_c = jax.lax.stop_gradient(-pi.log_prob)
            entropy_loss = entropy_loss + mean_rows(log_alpha_c[0] * (h_c - target_c), weights)
        if nb:
            h_d = jax.lax.stop_gradient(branch_entropy)
            entropy_loss = entropy_loss + mean_rows(jnp.mean(log_alpha_d * (h_d - target_d), axis=-1), weights)

        total = jnp.sum(q_losses) + policy_loss + entropy_loss
        coefs = ([alpha_c[None]] if c else []) + ([alpha_d] if nb else [])
        metrics = {
            "Losses/Policy Loss": policy_loss,
            "Losses/Q1 Loss": q_losses[0],
            "Losses/Q2 Loss": q_losses[1],
            "Policy/Entropy Coefficient": jnp.mean(jnp.concatenate(coefs)),
            "Policy/Entropy": mean_rows(entropy, weights),
        }
        metrics.update({tag: mean_rows(v, weights) for tag, v in zip(signals.value_tags(), v_pi)})
        if c:
            metrics["Policy/Continuous Entropy Coeff"] = alpha_c
        if nb:
            metrics["Policy/Discrete Entropy Coeff"] = jnp.mean(alpha_d)
        return total, metrics

    return losses


def soft_update(target: Any, online: Any, tau: float) -> Any:
    """Polyak averaging ``tau * online + (1 - tau) * target`` leaf by leaf (what each step applies)."""
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


# -- the update ----------------------------------------------------------------------------
def make_update_fn(
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    tx: optax.GradientTransformation,
    on_trace: Callable[[], None] | None = None,
    signals: signals_mod.RewardSignals | None = None,
) -> Callable[[TrainState, Minibatches, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure update ``(state, minibatches, key) -> (state, metric sums)``; jit it once.

    Runs one gradient step (Adam, then the target critics' Polyak step) per valid minibatch
    in a ``lax.scan``; ``lax.cond`` skips the invalid ones (they cost nothing and add 0 to
    the sums). Metrics are summed over the steps taken, on the device. ``on_trace`` is
    called whenever JAX traces the function (tests count recompilations).
    """
    grad_fn = jax.grad(make_loss_fn(arch, settings, signals), has_aux=True)
    tau = hyperparameters(settings).tau

    def gradient_step(state: TrainState, norm_stats, batch: Transitions, key: jax.Array, lr: jax.Array):
        grads, metrics = grad_fn(state.params, state.target, norm_stats, batch, key, state.signals)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
        target = soft_update(state.target, params["critics"], tau)
        return state._replace(params=params, target=target, opt_state=opt_state), metrics

    def update(state: TrainState, minibatches: Minibatches, key: jax.Array):
        if on_trace is not None:
            on_trace()
        lr = learning_rate_at(settings, state.step)
        norm_stats = norm_mod.statistics(state.normalizer) if arch.normalize else None
        k = minibatches.valid.shape[0]
        keys = jax.random.split(key, k)
        first = jax.tree_util.tree_map(lambda x: x[0], minibatches.transitions)
        metric_shapes = jax.eval_shape(lambda s: gradient_step(s, norm_stats, first, keys[0], lr)[1], state)

        def guarded(st, xs):
            # lax.cond runs only the taken branch: steps past the number due cost nothing
            batch, step_key, ok = xs
            return jax.lax.cond(
                ok,
                lambda s: gradient_step(s, norm_stats, batch, step_key, lr),
                lambda s: (s, jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes)),
                st,
            )

        new_state, metrics = jax.lax.scan(guarded, state, (minibatches.transitions, keys, minibatches.valid))
        metrics = jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)
        new_state, finite = shared.keep_finite(state, new_state)  # a non-finite call is skipped whole
        metrics[shared.SKIPPED_UPDATE_METRIC] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return update


def make_signal_update_fn(
    arch: PolicyArchitecture, signals: signals_mod.RewardSignals, on_trace: Callable[[], None] | None = None
) -> Callable:
    """The reward signals' pure update ``(signal_states, normalizer, minibatches, key, expert)
    -> (signal_states, metric sums)``: one Adam step of every learned signal per valid
    minibatch (``lax.cond`` skips the others, as ``make_update_fn``); ``expert`` is GAIL's
    ``ExpertData`` or None."""

    def update(signal_states, normalizer, minibatches: Minibatches, key: jax.Array, expert: Any = None):
        if on_trace is not None:
            on_trace()
        norm_stats = norm_mod.statistics(normalizer) if arch.normalize else None
        keys = jax.random.split(key, minibatches.valid.shape[0])
        first = jax.tree_util.tree_map(lambda x: x[0], minibatches.transitions)

        def step(states, batch, k):
            return signals.update(states, signal_batch(batch), norm_stats, k, expert)

        shapes = jax.eval_shape(lambda st: step(st, first, keys[0])[1], signal_states)

        def guarded(states, xs):
            batch, k, ok = xs
            return jax.lax.cond(
                ok,
                lambda st: step(st, batch, k),
                lambda st: (st, jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype), shapes)),
                states,
            )

        states, metrics = jax.lax.scan(guarded, signal_states, (minibatches.transitions, keys, minibatches.valid))
        return states, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

    return update


# -- the learner shell ------------------------------------------------------------------------
class SACLearner:
    """One behavior's SAC: replay buffer, networks, optimizer state; implements ``Learner``.

    Args:
        spec: the behavior's observations and actions.
        settings: the behavior's trainer settings (``hyperparameters`` are ``SACSettings``).
        seed: initialises the networks, every later PRNG key and the replay sampling.
        steps_per_call: gradient steps per compiled call (k); 0 picks it from the size of a
            transition (at most 32, the k minibatches within ~64 MiB).
        demonstrations: GAIL's expert steps (a ``Demonstrations``); None loads
            ``reward_signals.gail.demo_path`` when GAIL is configured.

    Attributes:
        step: agent steps consumed so far (ML-Agents' step).
        update_steps: gradient steps taken so far.
        replay_buffer: the transitions (kept beside the checkpoint by ``save_extra`` when
            ``save_replay_buffer``).
        trace_counts: how often the compiled update was traced ("update"): 1 after many updates.
    """

    def __init__(
        self, spec: BehaviorSpec, settings: TrainerSettings, seed: int = 0, *, steps_per_call: int = 0, demonstrations: Any = None
    ) -> None:
        a = spec.action_spec
        if a.continuous_size == 0 and a.num_branches == 0:
            raise ValueError(f"behavior {spec.name}: SAC needs at least one action (continuous or discrete)")
        if not spec.observations:
            raise ValueError(f"behavior {spec.name}: SAC needs at least one observation")
        self.spec = spec
        self.settings = settings
        self.hyperparameters = hyperparameters(settings)
        self.policy_architecture = shared.policy_architecture(spec, settings, "tanh_gaussian")
        arch = self.policy_architecture
        self._step = 0
        self.update_steps = 0
        self.reward_signal_update_steps = 0
        self.signals = signals_mod.RewardSignals(spec, settings, demonstrations)
        self._episode_rewards = signals_mod.EpisodeRewards(self.signals.reward_tags())
        self._log = log.bind(behavior=spec.name)
        self.replay_buffer = ReplayBuffer(
            self.hyperparameters.buffer_size,
            [o.shape for o in spec.observations],
            a.continuous_size,
            a.num_branches,
            a.mask_size,
            memory_size=arch.memory_size,
            sequence_length=arch.sequence_length,
        )
        self.steps_per_call = steps_per_call or self._auto_steps_per_call()
        key, k_init = jax.random.split(shared.new_key(seed))
        self._key = key
        self._sampler = new_generator(seed)
        self._state = init_state(k_init, spec, arch, self.hyperparameters.init_entcoef, self.signals)
        #: behavioral cloning after each gradient step (``behavioral_cloning``), or None
        self._bc = behavioral_cloning.for_learner(spec, settings, arch, self._state.params["actor"], seed)
        self._traces = shared.TraceCounter("update", "signals")
        self.trace_counts = self._traces.counts
        self._policy_fn = make_policy_fn(arch)
        devices.check_batch_sizes(spec.name, settings)
        count = devices.current().count
        if arch.memory_size and self.minibatch_rows() % count:
            raise ValueError(
                f"behavior {spec.name}: with memory a minibatch is {self.minibatch_rows()} rows ((batch_size // "
                f"sequence_length) whole sequences of sequence_length), not a multiple of the {count} devices the "
                "update is split across (--devices): choose batch_size and sequence_length to fit, or fewer devices"
            )
        self._update_fn = devices.compile_update(
            make_update_fn(arch, settings, shared.make_optimizer(), self._traces.hook("update"), self.signals),
            lambda p: Minibatches(transitions=p.sharded(1), valid=p.replicated),
            compiler_options=shared.cpu_compiler_options(),
        )
        self._signal_update_fn = jax.jit(make_signal_update_fn(arch, self.signals, self._traces.hook("signals")))
        self._signal_rewards_fn = jax.jit(self.signals.rewards)
        self._normalizer_update = jax.jit(lambda n, o, m: shared.keep_finite(n, norm_mod.update(n, o, m))[0])

    def warm_up(self) -> None:
        """Compiles the update now, before any experience arrives (``make_learner`` calls it).

        Why: the first ``update()`` would otherwise compile (seconds, more with memory) while
        the gateways keep collecting up to their window with the initial policy; on a short
        task that is thousands of agent steps acted by a policy that never learned. Runs one
        call whose minibatches are all skipped (zeros, ``valid`` false): nothing changes, no
        key is consumed. Skipped when the update spans several processes (they must call it
        together).
        """
        if devices.current().processes > 1:
            return
        k = self.steps_per_call
        zeros = self.replay_buffer.gather(np.zeros((k, self.minibatch_rows()), np.int64))  # the buffer's zero rows
        batches = Minibatches(transitions=zeros, valid=np.zeros((k,), bool))
        state = self._state._replace(step=jnp.asarray(0, jnp.int32))
        jax.block_until_ready(self._update_fn(state, batches, jax.random.fold_in(self._key, 0)))

    def _auto_steps_per_call(self) -> int:
        floats = sum(2 * int(np.prod(o.shape)) for o in self.spec.observations)
        a = self.spec.action_spec
        per_transition = 4 * (floats + a.continuous_size + a.num_branches + 2 + self.policy_architecture.memory_size + 1)
        per_transition += 2 * a.mask_size
        k = DEFAULT_CHUNK_BYTES // max(per_transition * self.minibatch_rows(), 1)
        return int(max(1, min(MAX_STEPS_PER_CALL, k)))

    def minibatch_rows(self) -> int:
        """Rows of one minibatch: ``batch_size``, or with memory ``batch_size //
        sequence_length`` whole sequences (at least one; ML-Agents' ``sample_mini_batch``)
        of ``sequence_length`` rows, padding included."""
        arch = self.policy_architecture
        if not arch.memory_size:
            return self.hyperparameters.batch_size
        return max(self.hyperparameters.batch_size // arch.sequence_length, 1) * arch.sequence_length

    # -- experience --------------------------------------------------------------------
    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Turns a fragment into transitions in the replay buffer; updates the normalizer.

        Step t's next observation is step t+1's observation, the last step's is
        ``trajectory.next_observations``; ``done`` is set on the last step only for a true
        terminal (done and not interrupted). The last step's next action mask is unknown
        (the trajectory does not carry it) and allows every action.

        With memory the rows also carry the actor's memory before each step (the fragment's
        ``memories``) and the buffer writes the fragment as whole sequences from its first
        step (``ReplayBuffer.add``).

        Raises:
            ValueError: when the fragment does not fit the behavior's shapes (or, with memory,
                carries no memories of ``[t, memory_size]``).
        """
        t = len(trajectory)
        if t == 0:
            return
        memory_fields = {}
        m = self.policy_architecture.memory_size
        if m:
            got = None if trajectory.memories is None else tuple(np.shape(trajectory.memories))
            if got != (t, m):
                raise ValueError(
                    f"behavior {self.spec.name}: trajectory memories have shape {got}, expected {(t, m)} "
                    "(network_settings.memory: the actor's memory before each step)"
                )
            memory_fields = {"memories": np.asarray(trajectory.memories, np.float32), "loss_masks": np.ones((t,), np.float32)}
        obs = tuple(np.asarray(o, np.float32) for o in trajectory.observations)
        next_obs = tuple(
            np.concatenate([o[1:], np.asarray(n, np.float32)[None]], axis=0)
            for o, n in zip(obs, trajectory.next_observations)
        )
        masks = np.asarray(trajectory.action_masks, bool).reshape(t, -1)
        next_masks = np.concatenate([masks[1:], np.zeros_like(masks[:1])], axis=0)
        dones = np.zeros((t,), np.float32)
        if trajectory.done and not trajectory.interrupted:
            dones[-1] = 1.0
        batch = Transitions(
            obs=obs,
            next_obs=next_obs,
            # trajectories carry the raw Gaussian sample u; the critics see tanh(u)
            continuous_actions=np.tanh(np.asarray(trajectory.continuous_actions, np.float32)),
            discrete_actions=np.asarray(trajectory.discrete_actions, np.int32),
            rewards=np.asarray(trajectory.rewards, np.float32),
            dones=dones,
            action_masks=masks,
            next_action_masks=next_masks,
            **memory_fields,
        )
        self.replay_buffer.add(batch)  # validates shapes before anything else changes
        if self.policy_architecture.normalize:
            self._update_normalizer(obs)
        if self.signals.needs_inputs:
            self._record_signal_rewards(trajectory, batch)
        self._step += t

    def _record_signal_rewards(self, trajectory: Trajectory, batch: Transitions) -> None:
        """The fragment's reward per signal (current parameters), summed into its agent's
        episode for ``Policy/{Name} Reward`` (ML-Agents evaluates them here for its stats)."""
        t = len(trajectory)
        length = self.settings.time_horizon * max(1, math.ceil(t / self.settings.time_horizon))
        padded = jax.tree_util.tree_map(lambda x: np.concatenate([x, np.zeros((length - t, *x.shape[1:]), x.dtype)]), batch)
        norm = norm_mod.statistics(self._state.normalizer) if self.policy_architecture.normalize else None
        rewards = np.asarray(self._signal_rewards_fn(self._state.signals, signal_batch(padded), norm))[:, :t]
        self._episode_rewards.add(trajectory.agent_key, rewards.sum(axis=1), trajectory.done)

    def _update_normalizer(self, obs: tuple[np.ndarray, ...]) -> None:
        # pad to a few fixed lengths so the jitted normalizer update compiles rarely
        t = obs[0].shape[0]
        horizon = self.settings.time_horizon
        length = horizon if t <= horizon else 1 << (t - 1).bit_length()
        padded = []
        for o, spec in zip(obs, self.spec.observations):
            if spec.is_visual:  # never normalized: a placeholder keeps the list's positions
                padded.append(np.zeros((length, 1), np.float32))
                continue
            p = np.zeros((length, *o.shape[1:]), np.float32)
            p[:t] = o
            padded.append(p)
        mask = np.arange(length) < t
        self._state = self._state._replace(normalizer=self._normalizer_update(self._state.normalizer, padded, mask))

    @property
    def step(self) -> int:
        """Agent steps consumed so far (ML-Agents' step)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        # Set from outside (e.g. step 0 after --initialize-from): as ML-Agents on load,
        # assume the gradient steps up to now were taken at the configured ratio.
        self._step = int(value)
        self.update_steps = self._updates_due()
        self.reward_signal_update_steps = self._signal_updates_due()

    def _signal_updates_due(self) -> int:
        hp = self.hyperparameters
        return updates_due(self._step, hp.buffer_init_steps, hp.reward_signal_steps_per_update)

    def _updates_due(self) -> int:
        return updates_due(self._step, self.hyperparameters.buffer_init_steps, self.hyperparameters.steps_per_update)

    def pending_updates(self) -> int:
        """Gradient steps due now and not yet taken."""
        return max(0, self._updates_due() - self.update_steps)

    def pending_signal_updates(self) -> int:
        """Reward-signal steps due now (``reward_signal_steps_per_update``) and not yet taken."""
        if not self.signals.trainable:
            return 0
        return max(0, self._signal_updates_due() - self.reward_signal_update_steps)

    on_policy = False
    buffered_steps = 0  # off-policy: nothing waits for an update (the replay buffer keeps everything)

    def discard_buffered(self) -> int:
        """Off-policy: experience is never stale; nothing is dropped."""
        return 0

    def ready(self) -> bool:
        """True when gradient steps are due and a minibatch can be sampled."""
        hp = self.hyperparameters
        held = self.replay_buffer.real_steps  # with memory: real steps, not the sequences' padding
        return held >= hp.batch_size and self._step >= hp.buffer_init_steps and self.pending_updates() > 0

    # -- update ------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """Runs every pending gradient step; returns the metrics averaged over them.

        Metrics (ML-Agents' tag names): "Losses/Policy Loss", "Losses/Q1 Loss",
        "Losses/Q2 Loss", "Policy/Entropy Coefficient" (mean of all coefficients),
        "Policy/Continuous Entropy Coeff" / "Policy/Discrete Entropy Coeff" (as ML-Agents),
        "Policy/Entropy", "Policy/Extrinsic Value Estimate" (mean soft value of the sampled
        states), "Policy/Learning Rate". Empty when nothing was due.
        """
        if not self.ready():
            return {}
        pending = self.pending_updates()
        state = self._state._replace(step=jnp.asarray(min(self._step, np.iinfo(np.int32).max), jnp.int32))
        self._state, out = self._in_chunks(pending, state, self._update_fn, self._sample_minibatches)
        params, bc_metrics = behavioral_cloning.after_rl_update(
            self._bc, self._state.params, self._state.normalizer, self.policy_architecture.normalize, self._step,
            times=pending,
        )
        self._state = self._state._replace(params=params)
        out.update(bc_metrics)
        self.update_steps += pending
        out.update(self._update_signals())
        out.update({k: v for k, v in self._episode_rewards.report().items() if k != "Policy/Extrinsic Reward"})
        out["Policy/Learning Rate"] = learning_rate_at(self.settings, self._step)
        self._log.debug("sac update", gradient_steps=pending, step=self._step)
        return out

    def _update_signals(self) -> dict[str, float]:
        """The reward signals' steps due (ML-Agents' ``_update_reward_signals``): each on a
        minibatch of ``batch_size`` sampled from the replay buffer; their metrics averaged."""
        pending = self.pending_signal_updates()
        if not pending:
            return {}
        normalizer, expert = self._state.normalizer, self.signals.expert
        states, out = self._in_chunks(
            pending,
            self._state.signals,
            lambda st, batches, key: self._signal_update_fn(st, normalizer, batches, key, expert),
            lambda k: self.replay_buffer.sample(self._sampler, self.hyperparameters.batch_size, num_batches=k),
        )
        self._state = self._state._replace(signals=states)
        self.reward_signal_update_steps += pending
        return out

    def _sample_minibatches(self, k: int) -> Transitions:
        """``k`` minibatches for the gradient steps ``[k, minibatch_rows, ...]``: uniform
        transitions, or with memory whole sequences (``ReplayBuffer.sample_sequences``)."""
        arch = self.policy_architecture
        if arch.memory_size:
            return self.replay_buffer.sample_sequences(self._sampler, self.minibatch_rows() // arch.sequence_length, k)
        return self.replay_buffer.sample(self._sampler, self.hyperparameters.batch_size, num_batches=k)

    def _in_chunks(
        self, pending: int, carry: Any, step: Callable, sample: Callable[[int], Transitions]
    ) -> tuple[Any, dict[str, float]]:
        """Runs ``pending`` steps of a compiled ``step(carry, Minibatches, key) -> (carry,
        metric sums)`` in calls of ``steps_per_call`` minibatches from ``sample(k)``; returns
        the carry and the metrics averaged over the steps."""
        k, done, sums = self.steps_per_call, 0, None
        while done < pending:
            n = min(k, pending - done)
            batches = Minibatches(transitions=sample(k), valid=np.arange(k) < n)
            self._key, key = jax.random.split(self._key)
            carry, metrics = step(carry, batches, key)
            sums = metrics if sums is None else jax.tree_util.tree_map(jnp.add, sums, metrics)
            done += n
        return carry, {name: float(total) / pending for name, total in jax.device_get(sums).items()}

    # -- snapshots -----------------------------------------------------------------------
    def architecture(self) -> PolicyArchitecture:
        """What the snapshot's parameters mean (``continuous_distribution="tanh_gaussian"``)."""
        return self.policy_architecture

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat float32 actor parameters (and normalizer statistics) for ``NumpyPolicy``."""
        return shared.policy_parameters(self._state.params["actor"], self._state.normalizer, self.policy_architecture.normalize)

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Params, target critics, Adam state, normalizer, step counters, PRNG key and the
        replay sampler's state (numpy leaves).

        The replay buffer is not included: ``save_extra`` keeps it beside the checkpoint.
        """
        return {
            "algorithm": "sac",
            "step": int(self._step),
            "update_steps": int(self.update_steps),
            "key": shared.key_to_numpy(self._key),
            "sampler": generator_state(self._sampler),
            "params": shared.to_numpy(self._state.params),
            "target": shared.to_numpy(self._state.target),
            "opt_state": shared.to_numpy(serialization.to_state_dict(self._state.opt_state)),
            "normalizer": shared.normalizer_state_dict(self._state.normalizer),
            **behavioral_cloning.state_entry(self._bc),
            "reward_signals": signals_mod.state_dict(self._state.signals),
            "reward_signal_update_steps": int(self.reward_signal_update_steps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned (same spec and network settings).

        Raises:
            ValueError: when the state is not a SAC state of this behavior's shapes.
        """
        shared.check_state(
            state, "sac", ("params", "target", "opt_state", "normalizer", "step", "update_steps", "key", "sampler")
        )
        current = self._state
        self._state = current._replace(
            params=shared.restore_like(current.params, state["params"], "params"),
            target=shared.restore_like(current.target, state["target"], "target"),
            opt_state=shared.restore_optimizer(current.opt_state, state["opt_state"]),
            normalizer=shared.restore_normalizer(current.normalizer, state["normalizer"]),
        )
        self._key = shared.key_from_numpy(state["key"])
        self._sampler = generator_from_state(state["sampler"])
        behavioral_cloning.load_entry(self._bc, state)
        self._step = int(np.asarray(state["step"]))
        self.update_steps = int(np.asarray(state["update_steps"]))
        if "reward_signals" in state:  # absent from checkpoints made before reward signals
            self._state = self._state._replace(signals=signals_mod.restore(current.signals, state["reward_signals"]))
            self.reward_signal_update_steps = int(np.asarray(state.get("reward_signal_update_steps", 0)))
        else:
            self.reward_signal_update_steps = self._signal_updates_due()

    def load_weights(self, state: dict[str, Any]) -> None:
        """``init_path`` / ``--initialize-from``: the checkpoint's networks, Adam state and
        normalizer; the new run counts from step 0 (and 0 gradient steps)."""
        shared.load_weights(self, state)

    def save_extra(self, folder: Path) -> None:
        """Writes the replay buffer to ``folder/REPLAY_BUFFER_FILE`` when ``save_replay_buffer``."""
        if self.hyperparameters.save_replay_buffer:
            self.replay_buffer.save(Path(folder) / REPLAY_BUFFER_FILE)

    def load_extra(self, folder: Path) -> None:
        """``--resume``: reloads the replay buffer ``save_extra`` wrote (``save_replay_buffer``);
        logs a warning and keeps it empty when the file is missing."""
        if not self.hyperparameters.save_replay_buffer:
            return
        path = Path(folder) / REPLAY_BUFFER_FILE
        if not path.is_file():
            self._log.warning("--resume: no saved replay buffer, starting it empty", path=str(path))
            return
        self.replay_buffer.load(path)
