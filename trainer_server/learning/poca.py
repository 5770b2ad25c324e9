"""MA-POCA in JAX, as ML-Agents 1.1.0's POCA trainer does it (``trainer_type: poca``).

Why: in cooperative groups (ML-Agents' ``SimpleMultiAgentGroup``) the reward often belongs
to the group, and an agent's own contribution to it is hidden among its groupmates'. POCA
trains each agent's policy (PPO's actor, one per behavior, acting on the agent's own
observations: the gateway's numpy actor and the ONNX model are PPO's) with a centralized
critic over the group and a counterfactual baseline per agent.

The critic (all under ``critic/``, ML-Agents' ``MultiAgentNetworkBody`` + value head):
every agent's observations through the observation encoders (``critic/encoder/...``; vector
observations normalized with the learner's normalizer); an agent seen with its
observations only is embedded by ``critic/group/obs_embedding`` ``[encoding, h]``, one seen
with its observations and action (continuous raw sample, one-hot discrete branches) by
``critic/group/obs_action_embedding`` ``[encoding + c + sum(branches), h]``, both with swish;
then residual self-attention over the group's entities (``critic/group/attention/q|k|v|out``
``[h, h]``, ``networks.residual_self_attention``, 4 heads, padded entities masked, mean
over the real ones), ``num_layers`` dense layers of h with swish (``critic/group/body``),
and the value head ``critic/value`` ``[h + 1, 1]`` reading the encoding and the number of
agents scaled to [-1, 1] by the most agents seen in a group so far (``max_agents``).

- the group's value V(s_t): every agent of the group (the agent and its groupmates) with
  observations only;
- the agent's baseline b(s_t, a_-i): the agent with its observations only and its
  groupmates with their observations and actions, so the agent's own action is
  marginalized: its advantage is ``return - baseline``.

Flow (per behavior, one ``POCALearner``):

1. ``process_trajectory``: a fragment whose steps carry their groupmates
   (``Trajectory.groupmates``, padded to ``mates`` rows, a capacity that only grows:
   3, 7, 15... so groups of 2 to 4 agents share one compiled shape) and group rewards.
   The reward is ML-Agents' POCA extrinsic reward: the agent's own reward, plus its
   groupmates' own rewards, plus the group reward, times ``strength``. Values and
   baselines come from the current critic; the returns are ML-Agents' lambda-returns
   (``lambda_returns``) bootstrapped from the group's value after the last step (the
   agent's ``next_observations`` with its groupmates' latest ones), which is 0 only when
   the whole group's episode ended (the agent done, not interrupted, and no groupmate
   still acting: ``group_continues`` false). So an agent removed before its group finished
   is credited with what the group earns after it, through that value.
2. ``update`` (``buffer_size`` steps buffered): ONE jit-compiled pure function
   ``(state, batch, key) -> (state, metrics)``: advantages normalized over the batch,
   ``num_epoch`` passes over shuffled minibatches (``lax.scan``), each an Adam step on
   ``policy_loss + 0.5 * (value_loss + 0.5 * baseline_loss) - beta * entropy`` with PPO's
   per-dimension clipped surrogate and ML-Agents' clipped value loss for both the value
   and the baseline.

Only the extrinsic reward signal, no memory, no behavioral cloning (refused at load,
``trainer_server.config.support``). Differences from ML-Agents, on purpose: PPO's (the
oldest ``buffer_size`` steps, entropy over the update's minibatches).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.architecture import PolicyArchitecture, PolicyOutput, encoding_size
from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.config.schema import POCASettings, TrainerSettings
from trainer_server.learning import devices, distributions, networks, ppo, rollout_buffer, shared
from trainer_server.learning import normalizer as norm_mod

log = get_logger(__name__)

#: the groupmate capacities (rows of padding per step): 2**k - 1, so a group of 2**k agents fits
MIN_MATES = 3
#: ML-Agents' POCA tags besides PPO's
BASELINE_LOSS = "Losses/Baseline Loss"
BASELINE_ESTIMATE = "Policy/Extrinsic Baseline Estimate"
VALUE_ESTIMATE = "Policy/Extrinsic Value Estimate"
GROUP_REWARD = "Environment/Group Cumulative Reward"


def hyperparameters(settings: TrainerSettings) -> POCASettings:
    """``settings.hyperparameters``, typed as POCA's."""
    return settings.hyperparameters  # type: ignore[return-value]


def mates_capacity(mates: int) -> int:
    """Groupmate rows for a group with ``mates`` other agents: the smallest ``2**k - 1``
    >= ``mates`` (at least ``MIN_MATES``)."""
    capacity = MIN_MATES
    while capacity < mates:
        capacity = 2 * capacity + 1
    return capacity


def action_width(spec: BehaviorSpec) -> int:
    """Width of a flat action: the continuous dimensions and one-hot discrete branches."""
    return spec.action_spec.continuous_size + spec.action_spec.mask_size


def flat_actions(spec: BehaviorSpec, continuous: np.ndarray, discrete: np.ndarray) -> np.ndarray:
    """Actions ``[..., c]`` and ``[..., b]`` as ML-Agents' ``AgentAction.to_flat``: the raw
    continuous values then one one-hot block per discrete branch, ``[..., c + sum(branches)]``."""
    parts = [np.asarray(continuous, np.float32)]
    for j, size in enumerate(spec.action_spec.discrete_branches):
        parts.append(np.eye(size, dtype=np.float32)[np.asarray(discrete[..., j], np.int64)])
    return np.concatenate(parts, axis=-1)


# -- state and batch --------------------------------------------------------------------------
class POCAState(NamedTuple):
    """Everything the update reads and writes.

    Attributes:
        params: ``{"actor": snapshot-named params, "critic": critic/... params}``.
        opt_state: Adam's state for ``params``.
        normalizer: running observation statistics (read-only in the update).
        step: int32 agent steps so far: drives the schedules.
        max_agents: float32, the most agents seen in a group (the critic's count feature).
    """

    params: dict[str, dict[str, jax.Array]]
    opt_state: Any
    normalizer: norm_mod.NormalizerState
    step: jax.Array
    max_agents: jax.Array


class Batch(NamedTuple):
    """``buffer_size`` steps; M = the groupmate capacity."""

    observations: tuple[jax.Array, ...]  # per spec [N, *shape]
    mate_observations: tuple[jax.Array, ...]  # per spec [N, M, *shape]
    mate_actions: jax.Array  # [N, M, c + sum(branches)] flat (``flat_actions``)
    mate_present: jax.Array  # [N, M] float32, 1 on real groupmates
    continuous_actions: jax.Array  # [N, c]
    discrete_actions: jax.Array  # [N, b] int32
    action_masks: jax.Array  # [N, sum(branches)] bool, true = not allowed
    log_probs: jax.Array  # [N, c + b] per-dimension log-probs of the acting policy
    values: jax.Array  # [N] the group's value when processed
    baselines: jax.Array  # [N] the agent's baseline when processed
    advantages: jax.Array  # [N] lambda-return minus baseline
    returns: jax.Array  # [N] lambda-returns


# -- the group critic -------------------------------------------------------------------------
def _normal_dense(key: jax.Array, fan_in: int, fan_out: int, prefix: str, std: float) -> networks.Params:
    """ML-Agents' ``Initialization.Normal`` layer (kernel ``std * N(0, 1)``), zero bias."""
    return {f"{prefix}/kernel": std * jax.random.normal(key, (fan_in, fan_out), jnp.float32), f"{prefix}/bias": jnp.zeros((fan_out,), jnp.float32)}


def init_critic(key: jax.Array, arch: PolicyArchitecture) -> networks.Params:
    """The group critic's parameters (see the module docstring), initialized as ML-Agents'."""
    h = arch.hidden_units
    std = math.sqrt(0.125 / h)
    keys = jax.random.split(key, 9 + arch.num_layers)
    enc = encoding_size(arch)
    params = networks.init_observation_encoders(keys[0], arch, "critic/")
    params.update(_normal_dense(keys[1], enc, h, "critic/group/obs_embedding", std))
    params.update(_normal_dense(keys[2], enc + action_width(arch.behavior_spec), h, "critic/group/obs_action_embedding", std))
    for k, part in zip(keys[3:7], ("q", "k", "v", "out")):
        params.update(_normal_dense(k, h, h, f"critic/group/attention/{part}", std))
    for j in range(arch.num_layers):
        params.update(networks.init_dense(keys[9 + j], h, h, f"critic/group/body/dense{j}", gain=std))
    params.update(networks.init_dense(keys[8], h + 1, 1, "critic/value", xavier=True))
    return params


def _group_value(critic: networks.Params, arch: PolicyArchitecture, entities: jax.Array, padding: jax.Array, max_agents) -> jax.Array:
    """Values ``[n]`` of groups of embedded entities ``[n, m, h]`` (``padding`` ``[n, m]`` 1 = none)."""
    state = networks.residual_self_attention(critic, "critic/group/attention", entities, padding)
    for j in range(arch.num_layers):
        state = jax.nn.swish(networks.dense(critic, f"critic/group/body/dense{j}", state))
    count = jnp.sum(1.0 - padding, axis=1, keepdims=True)
    scaled = count * 2.0 / max_agents - 1.0  # -1 for a lone agent, +1 at the most agents seen
    return networks.dense(critic, "critic/value", jnp.concatenate([state, scaled], axis=-1))[:, 0]


def values_and_baselines(
    critic: networks.Params,
    arch: PolicyArchitecture,
    observations: list[jax.Array],
    mate_observations: list[jax.Array],
    mate_actions: jax.Array,
    mate_present: jax.Array,
    norm: networks.NormStats,
    max_agents,
) -> tuple[jax.Array, jax.Array]:
    """The group's values and each agent's baselines.

    Args:
        observations: per spec, the agents' own ``[n, *shape]``.
        mate_observations: per spec, their groupmates' ``[n, M, *shape]``.
        mate_actions: ``[n, M, c + sum(branches)]`` flat groupmate actions.
        mate_present: ``[n, M]``, 1 on real groupmates.
        max_agents: the most agents seen in a group (scalar).

    Returns:
        (V over the agent and its mates' observations ``[n]``, baseline over the agent's
        observations and its mates' observations and actions ``[n]``).
    """
    n, m = mate_present.shape
    group = [jnp.concatenate([own[:, None], mates], axis=1) for own, mates in zip(observations, mate_observations)]
    flat = [o.reshape(n * (m + 1), *o.shape[2:]) for o in group]
    encoded = networks.observation_encoding(critic, "critic/", arch, flat, norm).reshape(n, m + 1, -1)
    padding = jnp.concatenate([jnp.zeros((n, 1), jnp.float32), 1.0 - mate_present.astype(jnp.float32)], axis=1)
    obs_only = jax.nn.swish(networks.dense(critic, "critic/group/obs_embedding", encoded))
    values = _group_value(critic, arch, obs_only, padding, max_agents)
    with_actions = jax.nn.swish(
        networks.dense(critic, "critic/group/obs_action_embedding", jnp.concatenate([encoded[:, 1:], mate_actions], axis=-1))
    )
    baselines = _group_value(critic, arch, jnp.concatenate([obs_only[:, :1], with_actions], axis=1), padding, max_agents)
    return values, baselines


def lambda_returns(
    rewards: jax.Array, values: jax.Array, value_next: jax.Array, mask: jax.Array, gamma: float, lambd: float
) -> jax.Array:
    """ML-Agents' ``lambda_return`` over one padded fragment.

    ``G_{T-1} = r_{T-1} + gamma * value_next`` and ``G_t = r_t + gamma * (lambd * G_{t+1} +
    (1 - lambd) * V_{t+1})`` before it.

    Args:
        rewards: ``[L]``; values: ``[L]`` V_t; value_next: the value after the last real
        step (0 when the group's episode ended); mask: bool ``[L]``, the T real steps (a prefix).

    Returns:
        ``[L]`` returns, 0 on padding rows.
    """
    length = jnp.sum(mask.astype(jnp.int32))
    idx = jnp.arange(rewards.shape[0])
    next_values = jnp.concatenate([values[1:], jnp.zeros((1,), values.dtype)])

    def back(carry, x):
        r, v_next, i = x
        ret = jnp.where(i == length - 1, r + gamma * value_next, r + gamma * (lambd * carry + (1.0 - lambd) * v_next))
        ret = jnp.where(i < length, ret, 0.0)
        return ret, ret

    _, returns = jax.lax.scan(back, jnp.zeros((), rewards.dtype), (rewards, next_values, idx), reverse=True)
    return returns


# -- the loss and the update -------------------------------------------------------------------
def clipped_value_loss(values: jax.Array, old: jax.Array, returns: jax.Array, epsilon) -> jax.Array:
    """ML-Agents' ``trust_region_value_loss``: the larger of the plain and the clipped squared error."""
    clipped = old + jnp.clip(values - old, -epsilon, epsilon)
    return jnp.mean(jnp.maximum((returns - values) ** 2, (returns - clipped) ** 2))


def poca_loss(params, arch: PolicyArchitecture, batch: Batch, norm_stats, max_agents, epsilon, beta):
    """ML-Agents' POCA loss on a minibatch (advantages already normalized).

    Returns:
        (loss, aux) with ``policy_loss``, ``value_loss``, ``baseline_loss``, ``entropy``, ``approx_kl``.
    """
    a_spec = arch.behavior_spec.action_spec
    obs = list(batch.observations)
    dist = networks.actor_forward(params["actor"], arch, obs, norm_stats, batch.action_masks if a_spec.mask_size else None)
    branches = a_spec.discrete_branches
    log_prob = distributions.log_prob_parts(dist, batch.continuous_actions, batch.discrete_actions, branches)
    _, entropy = distributions.log_prob_and_entropy(dist, batch.continuous_actions, batch.discrete_actions, branches)
    values, baselines = values_and_baselines(
        params["critic"], arch, obs, list(batch.mate_observations), batch.mate_actions, batch.mate_present, norm_stats, max_agents
    )
    log_ratio = log_prob - batch.log_probs  # [n, c + b]
    ratio = jnp.exp(log_ratio)
    adv = batch.advantages[:, None]
    policy_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv))
    value_loss = clipped_value_loss(values, batch.values, batch.returns, epsilon)
    baseline_loss = clipped_value_loss(baselines, batch.baselines, batch.returns, epsilon)
    mean_entropy = jnp.mean(entropy)
    loss = policy_loss + 0.5 * (value_loss + 0.5 * baseline_loss) - beta * mean_entropy
    aux = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "baseline_loss": baseline_loss,
        "entropy": mean_entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
    }
    return loss, aux


def make_update_fn(
    arch: PolicyArchitecture,
    settings: TrainerSettings,
    tx: optax.GradientTransformation,
    on_trace: Callable[[], None] | None = None,
    constrain: Callable[[Batch], Batch] | None = None,
) -> Callable[[POCAState, Batch, jax.Array], tuple[POCAState, dict[str, jax.Array]]]:
    """The pure update ``(state, batch, key) -> (state, metrics)``; jit it once
    (``constrain``: as PPO's, keeps minibatches split across data-parallel devices)."""
    hp = hyperparameters(settings)
    num_minibatches = hp.buffer_size // hp.batch_size

    def update(state: POCAState, batch: Batch, key: jax.Array):
        if on_trace is not None:
            on_trace()
        lr, epsilon, beta = ppo.schedules(settings, state.step)
        norm_stats = ppo._norm_stats(state.normalizer, arch.normalize)
        adv = batch.advantages
        batch = batch._replace(advantages=(adv - jnp.mean(adv)) / (jnp.std(adv) + ppo.ADVANTAGE_EPS))
        grad_fn = jax.value_and_grad(poca_loss, has_aux=True)

        def minibatch_step(carry, idx):
            params, opt_state = carry
            minibatch = jax.tree.map(lambda x: x[idx], batch)
            if constrain is not None:
                minibatch = constrain(minibatch)
            (_, aux), grads = grad_fn(params, arch, minibatch, norm_stats, state.max_agents, epsilon, beta)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state), aux

        def epoch_step(carry, epoch_key):
            order = jax.random.permutation(epoch_key, hp.buffer_size)[: num_minibatches * hp.batch_size]
            return jax.lax.scan(minibatch_step, carry, order.reshape(num_minibatches, hp.batch_size))

        (params, opt_state), aux = jax.lax.scan(epoch_step, (state.params, state.opt_state), jax.random.split(key, hp.num_epoch))
        metrics = {
            "Losses/Policy Loss": jnp.mean(jnp.abs(aux["policy_loss"])),  # ML-Agents reports the absolute value
            "Losses/Value Loss": jnp.mean(aux["value_loss"]),
            BASELINE_LOSS: jnp.mean(aux["baseline_loss"]),
            "Policy/Entropy": jnp.mean(aux["entropy"]),
            "Policy/Approx KL": jnp.mean(aux["approx_kl"]),
            "Policy/Learning Rate": lr,
            "Policy/Epsilon": epsilon,
            "Policy/Beta": beta,
        }
        new_state, finite = shared.keep_finite(state, state._replace(params=params, opt_state=opt_state))
        metrics[shared.SKIPPED_UPDATE_METRIC] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return update


def make_process_fn(arch: PolicyArchitecture, settings: TrainerSettings, on_trace: Callable[[], None] | None = None) -> Callable:
    """The pure per-fragment step: normalizer update, values, baselines, lambda-returns, advantages.

    Signature: ``(params, normalizer, acting_normalizer, max_agents, observations [L+1, ...]
    per spec, mate_observations [L+1, M, ...] per spec, mate_actions [L, M, A], mate_present
    [L+1, M], rewards [L], length, bootstrap, continuous [L, c], discrete [L, b], action_masks
    [L, m], log_probs [L]) -> (normalizer, values [L], baselines [L], returns [L], advantages
    [L], old_log_probs [L, c + b])``. Row ``length`` holds ``next_observations`` and the
    groupmates' latest observations; ``rewards`` are POCA's (own + groupmates' + group),
    before ``strength``; ``bootstrap`` false: the group's episode ended, no value after it.
    The per-dimension acting log-probs are PPO's (``ppo.make_process_fn``).
    """
    hp = hyperparameters(settings)
    extrinsic = shared.extrinsic(settings)
    a_spec = arch.behavior_spec.action_spec

    def process(
        params, normalizer, acting_normalizer, max_agents, observations, mate_observations, mate_actions, mate_present,
        rewards, length, bootstrap, continuous, discrete, action_masks, log_probs,
    ):
        if on_trace is not None:
            on_trace()
        padded = rewards.shape[0]
        mask = jnp.arange(padded) < length
        own = [o[:padded] for o in observations]
        dist = networks.actor_forward(
            params["actor"], arch, own, ppo._norm_stats(acting_normalizer, arch.normalize),
            action_masks if a_spec.mask_size else None,
        )
        parts = distributions.log_prob_parts(dist, continuous, discrete, a_spec.discrete_branches)
        old_log_probs = parts + ((log_probs - jnp.sum(parts, axis=-1)) / parts.shape[-1])[:, None]
        if arch.normalize:
            normalizer, _ = shared.keep_finite(normalizer, norm_mod.update(normalizer, own, mask))
        norm_stats = ppo._norm_stats(normalizer, arch.normalize)
        actions = jnp.concatenate([mate_actions, jnp.zeros_like(mate_actions[:1])])  # row L: no actions needed
        values_all, baselines = values_and_baselines(
            params["critic"], arch, list(observations), list(mate_observations), actions, mate_present, norm_stats, max_agents
        )
        values = jnp.where(mask, values_all[:padded], 0.0)
        value_next = jnp.where(bootstrap, values_all[length], 0.0)
        returns = lambda_returns(rewards * extrinsic.strength, values, value_next, mask, extrinsic.gamma, hp.lambd)
        baselines = jnp.where(mask, baselines[:padded], 0.0)
        return normalizer, values, baselines, returns, jnp.where(mask, returns - baselines, 0.0), old_log_probs

    return process


# -- the learner shell -------------------------------------------------------------------------
class POCALearner:
    """One behavior's POCA: PPO's actor, the group critic, optimizer state, normalizer, buffer.

    Implements ``trainer_server.learning.learner.Learner``.

    Attributes:
        step: agent steps consumed so far.
        update_count: updates done so far.
        mates: the groupmate capacity (rows per step) of the compiled functions and the buffer.
        max_agents: the most agents seen in one group (the critic's count feature).
        trace_counts: traces of "update", "process", "act" (a retrace is a recompilation).
    """

    on_policy = True

    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, seed: int = 0):
        self.spec = spec
        self.settings = settings
        self.hyperparameters = hyperparameters(settings)
        arch = shared.policy_architecture(spec, settings, "gaussian")
        self.policy_architecture = dataclasses.replace(arch, collect_groupmates=True)
        if arch.memory_size:
            raise ValueError(f"behavior {spec.name}: POCA with memory is not supported yet")
        key, k_init = jax.random.split(shared.new_key(seed))
        k_actor, k_critic = jax.random.split(k_init)
        params = {"actor": networks.init_actor(k_actor, arch), "critic": init_critic(k_critic, arch)}
        self._tx = shared.make_optimizer()
        self._state = POCAState(
            params=params,
            opt_state=self._tx.init(params),
            normalizer=norm_mod.init(spec),
            step=jnp.zeros((), jnp.int32),
            max_agents=jnp.ones((), jnp.float32),
        )
        self._key = key
        self._acting_normalizer = self._state.normalizer
        self.step = 0
        self.update_count = 0
        self.mates = MIN_MATES
        self.max_agents = 1
        self.rollout_buffer = self._new_buffer(self.mates)
        self._group_returns: dict[tuple[int, int], float] = {}
        self._finished_group_returns: list[float] = []
        self._estimates: dict[str, list[float]] = {VALUE_ESTIMATE: [], BASELINE_ESTIMATE: []}
        self._traces = shared.TraceCounter("update", "process", "act")
        self.trace_counts = self._traces.counts
        devices.check_batch_sizes(spec.name, settings)
        self._update_fn = devices.compile_update(
            make_update_fn(arch, settings, self._tx, self._traces.hook("update"), devices.batch_constraint(0))
        )
        self._process_fn = jax.jit(make_process_fn(arch, settings, self._traces.hook("process")))
        self._on_act_trace = self._traces.hook("act")
        self._act_fn = jax.jit(self._act, static_argnames=("deterministic",))
        self._log = log.bind(behavior=spec.name)

    # -- the buffer ---------------------------------------------------------------------------
    def _new_buffer(self, mates: int) -> rollout_buffer.RolloutBuffer:
        extra: dict[str, tuple[tuple[int, ...], Any]] = {
            f"mate_observations/{i}": ((mates, *o.shape), np.float32) for i, o in enumerate(self.spec.observations)
        }
        extra.update(
            mate_actions=((mates, action_width(self.spec)), np.float32),
            mate_present=((mates,), np.float32),
            baselines=((), np.float32),
        )
        return rollout_buffer.RolloutBuffer(self.spec, extra)

    def _grow(self, mates: int) -> None:
        """A larger group: the capacity grows (one recompilation) and the buffered steps are padded."""
        capacity = mates_capacity(mates)
        if capacity <= self.mates:
            return
        self._log.info("group critic capacity grows", groupmates=capacity)
        data = self.rollout_buffer.chronological()
        grown = self._new_buffer(capacity)
        for name in grown.extra_fields if len(data["log_probs"]) else ():
            if name.startswith("mate_"):
                value = data[name]
                padded = np.zeros((value.shape[0], capacity, *value.shape[2:]), value.dtype)
                padded[:, : value.shape[1]] = value
                data[name] = padded
        if len(data["log_probs"]):
            grown.add(data)
        self.rollout_buffer, self.mates = grown, capacity

    # -- experience --------------------------------------------------------------------------
    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Values, baselines, lambda-returns and normalizer update for one fragment; buffers it.

        Raises:
            ValueError: when the fragment does not match the behavior's spec.
        """
        t = len(trajectory)
        self._check(trajectory)
        mates_in = trajectory.groupmates
        width = 0 if mates_in is None else max(mates_in.present.shape[1], mates_in.next_observations[0].shape[0] if mates_in.next_observations else 0)
        self._grow(width)
        m = self.mates
        padded = ppo.padded_length(t, self.settings.time_horizon)
        a = self.spec.action_spec
        observations, mate_obs = [], []
        present = np.zeros((padded + 1, m), np.float32)
        mate_actions = np.zeros((padded, m, action_width(self.spec)), np.float32)
        rewards = np.zeros(padded, np.float32)
        rewards[:t] = trajectory.rewards
        if trajectory.group_rewards is not None:
            rewards[:t] += trajectory.group_rewards
        for i, (obs, nxt, spec) in enumerate(zip(trajectory.observations, trajectory.next_observations, self.spec.observations)):
            rows = np.zeros((padded + 1, *spec.shape), np.float32)
            rows[:t], rows[t] = obs, nxt
            observations.append(rows)
            mate_rows = np.zeros((padded + 1, m, *spec.shape), np.float32)
            if mates_in is not None:
                width_t = mates_in.present.shape[1]
                mate_rows[:t, :width_t] = mates_in.observations[i]
                k = mates_in.next_observations[i].shape[0]
                mate_rows[t, :k] = mates_in.next_observations[i]
            mate_obs.append(mate_rows)
        agents = np.ones(1)
        if mates_in is not None:
            width_t = mates_in.present.shape[1]
            present[:t, :width_t] = mates_in.present
            present[t, : mates_in.next_observations[0].shape[0]] = 1.0
            flat = flat_actions(self.spec, mates_in.continuous_actions, mates_in.discrete_actions)
            mate_actions[:t, :width_t] = flat * mates_in.present[..., None]
            rewards[:t] += np.sum(mates_in.rewards * mates_in.present, axis=1)
            agents = 1 + present[: t + 1].sum(axis=1)
        self.max_agents = max(self.max_agents, int(agents.max()))
        bootstrap = (not trajectory.done) or trajectory.interrupted or trajectory.group_continues
        actions = {
            "continuous_actions": np.asarray(trajectory.continuous_actions, np.float32).reshape(t, a.continuous_size),
            "discrete_actions": np.asarray(trajectory.discrete_actions, np.int32).reshape(t, a.num_branches),
            "action_masks": np.asarray(trajectory.action_masks, bool).reshape(t, a.mask_size),
        }
        padded_actions = {name: ppo._pad_rows(value, padded) for name, value in actions.items()}
        joint = ppo._pad_rows(np.asarray(trajectory.log_probs, np.float32).reshape(t), padded)
        normalizer, values, baselines, returns, advantages, old_log_probs = self._process_fn(
            self._state.params, self._state.normalizer, self._acting_normalizer, np.float32(self.max_agents),
            tuple(observations), tuple(mate_obs), mate_actions, present, rewards, np.int32(t), np.bool_(bootstrap),
            padded_actions["continuous_actions"], padded_actions["discrete_actions"], padded_actions["action_masks"], joint,
        )
        self._state = self._state._replace(normalizer=normalizer)
        chunk = {
            "observations": [np.asarray(o, np.float32) for o in trajectory.observations],
            **actions,
            "log_probs": np.asarray(old_log_probs)[:t],
            "values": np.asarray(values)[:t],
            "baselines": np.asarray(baselines)[:t],
            "advantages": np.asarray(advantages)[:t],
            "returns": np.asarray(returns)[:t],
            "mate_actions": mate_actions[:t],
            "mate_present": present[:t],
            **{f"mate_observations/{i}": o[:t] for i, o in enumerate(mate_obs)},
        }
        self.rollout_buffer.add(chunk)
        self._estimates[VALUE_ESTIMATE].append(float(np.mean(chunk["values"])))
        self._estimates[BASELINE_ESTIMATE].append(float(np.mean(chunk["baselines"])))
        self._tally_group_reward(trajectory)
        self.step += t

    def _tally_group_reward(self, trajectory: Trajectory) -> None:
        """ML-Agents' ``Environment/Group Cumulative Reward``: an agent's sum of group rewards
        over its episode, recorded when its whole group finished (not for agents that left)."""
        agent = (int(trajectory.instance), int(trajectory.agent_id))
        total = self._group_returns.pop(agent, 0.0)
        if trajectory.group_rewards is not None:
            total += float(np.sum(trajectory.group_rewards))
        if not trajectory.done:
            self._group_returns[agent] = total
        elif not trajectory.group_continues:
            self._finished_group_returns.append(total)

    def _check(self, trajectory: Trajectory) -> None:
        t = len(trajectory)
        if t == 0:
            raise ValueError(f"behavior {self.spec.name}: empty trajectory")
        for i, (obs, nxt, ospec) in enumerate(zip(trajectory.observations, trajectory.next_observations, self.spec.observations)):
            if tuple(obs.shape) != (t, *ospec.shape) or tuple(nxt.shape) != tuple(ospec.shape):
                raise ValueError(
                    f"behavior {self.spec.name}: observation {i} has shape {obs.shape} (next {nxt.shape}), expected {(t, *ospec.shape)}"
                )
        mates = trajectory.groupmates
        if mates is not None and (mates.present.shape[0] != t or len(mates.observations) != len(self.spec.observations)):
            raise ValueError(f"behavior {self.spec.name}: groupmates cover {mates.present.shape[0]} steps, the trajectory {t}")

    @property
    def buffered_steps(self) -> int:
        """Steps waiting in the buffer."""
        return self.rollout_buffer.size

    def discard_buffered(self) -> int:
        """Drops the steps waiting in the buffer (the on-policy coupling, as PPO); returns how many."""
        dropped = self.rollout_buffer.size
        self.rollout_buffer.load_state_dict(None)
        return dropped

    def ready(self) -> bool:
        """True once ``buffer_size`` steps are buffered."""
        return self.rollout_buffer.size >= self.hyperparameters.buffer_size

    # -- update ------------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """One POCA update on the oldest ``buffer_size`` buffered steps.

        Returns:
            ML-Agents' POCA tags: "Losses/Policy Loss", "Losses/Value Loss", "Losses/Baseline
            Loss", "Policy/Entropy", "Policy/Learning Rate", "Policy/Epsilon", "Policy/Beta",
            "Policy/Extrinsic Value Estimate", "Policy/Extrinsic Baseline Estimate" (means over
            the fragments processed since the last update), "Environment/Group Cumulative
            Reward" (mean over the groups finished since, when any), and "Policy/Approx KL".

        Raises:
            RuntimeError: when fewer than buffer_size steps are buffered.
        """
        n = self.hyperparameters.buffer_size
        if not self.ready():
            raise RuntimeError(f"behavior {self.spec.name}: update needs {n} steps, {self.rollout_buffer.size} buffered")
        data = self.rollout_buffer.take(n)
        batch = Batch(
            observations=tuple(data["observations"]),
            mate_observations=tuple(data[f"mate_observations/{i}"] for i in range(len(self.spec.observations))),
            **{f: data[f] for f in Batch._fields if f not in ("observations", "mate_observations")},
        )
        self._key, key = jax.random.split(self._key)
        state = self._state._replace(
            step=jnp.asarray(min(self.step, np.iinfo(np.int32).max), jnp.int32),
            max_agents=jnp.asarray(self.max_agents, jnp.float32),
        )
        self._state, metrics = self._update_fn(state, batch, key)
        self._acting_normalizer = self._state.normalizer
        self.update_count += 1
        out = {name: float(value) for name, value in jax.device_get(metrics).items()}
        for tag, estimates in self._estimates.items():
            if estimates:
                out[tag] = float(np.mean(estimates))
            estimates.clear()
        if self._finished_group_returns:
            out[GROUP_REWARD] = float(np.mean(self._finished_group_returns))
            self._finished_group_returns.clear()
        return out

    # -- acting and snapshots --------------------------------------------------------------------
    def _act(self, actor_params, normalizer, observations, action_mask, key, deterministic: bool):
        self._on_act_trace()
        arch = self.policy_architecture
        dist = networks.actor_forward(actor_params, arch, list(observations), ppo._norm_stats(normalizer, arch.normalize), action_mask)
        n = observations[0].shape[0]
        actions = distributions.sample(dist, key, n, arch.behavior_spec.action_spec.discrete_branches, deterministic=deterministic)
        return actions, distributions.env_continuous(actions.continuous)

    def act(
        self,
        observations: list[np.ndarray],
        action_mask: np.ndarray | None = None,
        key: jax.Array | None = None,
        deterministic: bool = False,
    ) -> PolicyOutput:
        """Acts with the current policy in JAX (tests); the gateway uses NumpyPolicy."""
        if key is None:
            self._key, key = jax.random.split(self._key)
        n = np.asarray(observations[0]).shape[0]
        a = self.spec.action_spec
        mask = None
        if a.mask_size:
            mask = np.zeros((n, a.mask_size), bool) if action_mask is None else np.asarray(action_mask, bool)
        actions, env = self._act_fn(
            self._state.params["actor"], self._acting_normalizer, tuple(np.asarray(o, np.float32) for o in observations),
            mask, key, deterministic=deterministic,
        )
        return PolicyOutput(
            continuous=np.asarray(actions.continuous, np.float32),
            discrete=np.asarray(actions.discrete, np.int32),
            log_probs=np.asarray(actions.log_probs, np.float32),
            env_continuous=np.asarray(env, np.float32),
        )

    def architecture(self) -> PolicyArchitecture:
        """PPO's actor (``gaussian``), with ``collect_groupmates`` so that gateways send groupmates."""
        return self.policy_architecture

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat float32 actor parameters and the normalizer statistics of the last update."""
        return shared.policy_parameters(self._state.params["actor"], self._acting_normalizer, self.policy_architecture.normalize)

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly (nested dicts of numpy arrays and numbers)."""
        return {
            "algorithm": "poca",
            "params": shared.to_numpy(self._state.params),
            "opt_state": shared.to_numpy(serialization.to_state_dict(self._state.opt_state)),
            "normalizer": shared.normalizer_state_dict(self._state.normalizer),
            "acting_normalizer": shared.normalizer_state_dict(self._acting_normalizer),
            "step": int(self.step),
            "update_count": int(self.update_count),
            "key": shared.key_to_numpy(self._key),
            "mates": int(self.mates),
            "max_agents": int(self.max_agents),
            "buffer": self.rollout_buffer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``'s output.

        Raises:
            ValueError: naming the entry that does not fit this behavior's networks.
        """
        shared.check_state(state, "poca", ("params", "opt_state", "normalizer", "step", "update_count", "key"))
        current = self._state
        params = shared.restore_like(current.params, state["params"], "params")
        opt_state = shared.restore_optimizer(current.opt_state, state["opt_state"])
        normalizer = shared.restore_normalizer(current.normalizer, state["normalizer"])
        self._state = current._replace(params=params, opt_state=opt_state, normalizer=normalizer)
        self.step = int(np.asarray(state["step"]))
        self.update_count = int(np.asarray(state["update_count"]))
        self._key = shared.key_from_numpy(state["key"])
        self.max_agents = max(self.max_agents, int(np.asarray(state.get("max_agents", 1))))
        self.mates = max(self.mates, int(np.asarray(state.get("mates", MIN_MATES))))
        self.rollout_buffer = self._new_buffer(self.mates)
        self.rollout_buffer.load_state_dict(state.get("buffer"))
        acting = state.get("acting_normalizer")
        self._acting_normalizer = normalizer if acting is None else shared.restore_normalizer(current.normalizer, acting)

    def load_weights(self, state: dict[str, Any]) -> None:
        """``init_path`` / ``--initialize-from``: networks, Adam state, normalizer; not the run."""
        shared.load_weights(self, state)

    def save_extra(self, folder: Path) -> None:
        """Nothing to keep beside the checkpoint: the buffered steps are in ``state_dict``."""

    def load_extra(self, folder: Path) -> None:
        """Nothing to load beside the checkpoint (see ``save_extra``)."""
