"""Proximal Policy Optimization in JAX, as ML-Agents' PPO trainer does it.

Why: the trainer server learns one policy per behavior from the trajectory fragments that
gateways stream in; this module turns fragments into updates with ML-Agents' semantics so
that ML-Agents users' hyperparameters mean what they expect.

Flow (per behavior, one ``PPOLearner``):

1. ``process_trajectory``: the fragment (padded to a multiple of ``time_horizon`` + 1 rows,
   so the compiled function never sees a new shape) updates the running observation
   normalizer (``normalize``), gets values from the current critic, and GAE(lambda)
   advantages with the value of ``next_observations`` as bootstrap when the fragment was
   cut (``time_horizon``) or interrupted (max step), and 0 after a true terminal. Rewards
   are the environment's times the extrinsic ``strength``. The result joins the buffer.
2. ``update`` (when ``buffer_size`` steps are buffered): ONE jit-compiled pure function
   ``(state, batch, key) -> (state, metrics)``: advantages normalized over the batch,
   ``num_epoch`` passes over shuffled minibatches of ``batch_size`` (``lax.scan``, no
   Python loop), each an Adam step on ``policy_loss + 0.5 * value_loss - beta * entropy``
   with the clipped surrogate, ML-Agents' clipped ("trust region") value loss, and
   schedules of learning rate, beta and epsilon computed from ``step`` inside the function.

Buffer choice: the update uses exactly the oldest ``buffer_size`` steps (fixed shapes: one
compilation); steps beyond it stay buffered for the next update instead of being dropped
(ML-Agents trains on all buffered steps and clears the buffer). Those carried-over steps
were valued by the critic before the update; PPO's ratio and clipping account for their
slightly older policy. Within an epoch, ``buffer_size % batch_size`` randomly chosen steps
sit out, as in ML-Agents.

Differences from ML-Agents, on purpose: the ratio uses the joint log-probability of the
whole action (ML-Agents keeps one ratio per action dimension); "Policy/Entropy" is the mean
entropy over the update's minibatches (ML-Agents reports it while acting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.logging import get_logger
from common.architecture import PolicyArchitecture, PolicyOutput, vector_indices
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.learning import distributions, networks
from trainer_server.learning import normalizer as norm_mod

#: ML-Agents' floors of the linear schedules (ModelUtils.DecayedValue in its PPO optimizer)
LEARNING_RATE_MIN = 1.0e-10
EPSILON_MIN = 0.1
BETA_MIN = 1.0e-5
#: ML-Agents' advantage normalization denominator guard
ADVANTAGE_EPS = 1.0e-10
SCHEDULES = ("linear", "constant")

log = get_logger(__name__)


# -- configuration ---------------------------------------------------------------------
def _enum_name(value: Any) -> str:
    """ML-Agents' enums (ScheduleType, EncoderType) or plain strings -> lower-case string."""
    return str(getattr(value, "value", value)).lower()


@dataclass(frozen=True)
class PPOConfig:
    """What PPO needs of a behavior's trainer settings (ML-Agents' names and defaults)."""

    batch_size: int = 1024
    buffer_size: int = 10240
    num_epoch: int = 3
    learning_rate: float = 3.0e-4
    beta: float = 5.0e-3
    epsilon: float = 0.2
    lambd: float = 0.95
    gamma: float = 0.99
    strength: float = 1.0
    learning_rate_schedule: str = "linear"
    beta_schedule: str = "linear"
    epsilon_schedule: str = "linear"
    max_steps: int = 500000
    time_horizon: int = 64
    hidden_units: int = 128
    num_layers: int = 2
    normalize: bool = False
    vis_encode_type: str = "simple"
    shared_critic: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "buffer_size", "num_epoch", "max_steps", "time_horizon", "hidden_units"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"num_layers: must be >= 0, got {self.num_layers}")
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed buffer_size ({self.buffer_size})")
        for name in ("learning_rate", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"beta: must be >= 0, got {self.beta}")
        for name in ("lambd", "gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        for name in ("learning_rate_schedule", "beta_schedule", "epsilon_schedule"):
            if getattr(self, name) not in SCHEDULES:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {', '.join(SCHEDULES)}")
        if self.vis_encode_type != "simple":
            raise ValueError(f"vis_encode_type: {self.vis_encode_type!r} is not supported yet (supported: simple)")

    @classmethod
    def from_settings(cls, trainer_settings: Any) -> "PPOConfig":
        """Reads ML-Agents-named trainer settings (``trainer_server.settings.TrainerSettings``).

        Raises:
            ValueError: naming the key, for features PPO does not support yet (reward
                signals other than extrinsic, memory, behavioral cloning).
        """
        hp = trainer_settings.hyperparameters
        ns = trainer_settings.network_settings
        signals = dict(trainer_settings.reward_signals)
        others = sorted(set(signals) - {"extrinsic"})
        if others:
            raise ValueError(f"reward_signals: {', '.join(others)} not supported yet by the PPO trainer (only extrinsic)")
        if "extrinsic" not in signals:
            raise ValueError("reward_signals: the PPO trainer needs the extrinsic reward signal")
        if getattr(ns, "memory", None) is not None:
            raise ValueError("network_settings.memory: recurrent networks are not supported yet")
        if getattr(trainer_settings, "behavioral_cloning", None) is not None:
            raise ValueError("behavioral_cloning: not supported yet")
        lr_schedule = _enum_name(hp.learning_rate_schedule)
        beta_schedule = getattr(hp, "beta_schedule", None)
        epsilon_schedule = getattr(hp, "epsilon_schedule", None)
        extrinsic = signals["extrinsic"]
        return cls(
            batch_size=int(hp.batch_size),
            buffer_size=int(hp.buffer_size),
            num_epoch=int(hp.num_epoch),
            learning_rate=float(hp.learning_rate),
            beta=float(hp.beta),
            epsilon=float(hp.epsilon),
            lambd=float(hp.lambd),
            gamma=float(extrinsic.gamma),
            strength=float(extrinsic.strength),
            learning_rate_schedule=lr_schedule,
            beta_schedule=lr_schedule if beta_schedule is None else _enum_name(beta_schedule),
            epsilon_schedule=lr_schedule if epsilon_schedule is None else _enum_name(epsilon_schedule),
            max_steps=int(trainer_settings.max_steps),
            time_horizon=int(trainer_settings.time_horizon),
            hidden_units=int(ns.hidden_units),
            num_layers=int(ns.num_layers),
            normalize=bool(ns.normalize),
            vis_encode_type=_enum_name(ns.vis_encode_type),
            shared_critic=bool(getattr(hp, "shared_critic", False)),
        )


def decayed_value(schedule: str, initial: float, minimum: float, max_steps: int, step):
    """ML-Agents' schedule: ``linear`` goes from ``initial`` to ``minimum`` at ``max_steps``
    and stays there; ``constant`` is ``initial``. Works on Python numbers and JAX arrays."""
    if schedule == "constant":
        return jnp.asarray(initial, jnp.float32) if isinstance(step, jax.Array) else float(initial)
    if isinstance(step, jax.Array):
        frac = jnp.minimum(step, max_steps).astype(jnp.float32) / float(max_steps)
    else:
        frac = min(step, max_steps) / float(max_steps)
    return (initial - minimum) * (1.0 - frac) + minimum


def schedules(config: PPOConfig, step) -> tuple[Any, Any, Any]:
    """(learning rate, epsilon, beta) at ``step``."""
    return (
        decayed_value(config.learning_rate_schedule, config.learning_rate, LEARNING_RATE_MIN, config.max_steps, step),
        decayed_value(config.epsilon_schedule, config.epsilon, EPSILON_MIN, config.max_steps, step),
        decayed_value(config.beta_schedule, config.beta, BETA_MIN, config.max_steps, step),
    )


# -- GAE -------------------------------------------------------------------------------
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


# -- the update ------------------------------------------------------------------------
class PPOState(NamedTuple):
    """Everything the update reads and writes.

    Attributes:
        params: ``{"actor": flat snapshot-named params, "critic": flat critic/... params}``.
        opt_state: Adam's state for ``params``.
        normalizer: running observation statistics (read-only in the update).
        step: int32 agent steps so far: drives the schedules.
    """

    params: dict[str, dict[str, jax.Array]]
    opt_state: Any
    normalizer: norm_mod.NormalizerState
    step: jax.Array


class Batch(NamedTuple):
    """``buffer_size`` steps. Observations per spec ``[N, *shape]``; the rest ``[N, ...]``."""

    observations: tuple[jax.Array, ...]
    continuous_actions: jax.Array  # [N, c]
    discrete_actions: jax.Array  # [N, b] int32
    action_masks: jax.Array  # [N, sum(branches)] bool, true = not allowed
    log_probs: jax.Array  # [N] joint log-prob under the acting policy
    values: jax.Array  # [N] critic's values when the step was processed
    advantages: jax.Array  # [N]
    returns: jax.Array  # [N]


def _norm_stats(state: norm_mod.NormalizerState, normalize: bool):
    return norm_mod.statistics(state) if normalize else None


def ppo_loss(
    params: dict[str, dict[str, jax.Array]],
    arch: PolicyArchitecture,
    config: PPOConfig,
    batch: Batch,
    norm_stats,
    epsilon,
    beta,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """ML-Agents' PPO loss on a minibatch (advantages already normalized).

    Returns:
        (loss, aux) with aux ``policy_loss`` (the negated clipped surrogate), ``value_loss``,
        ``entropy`` (batch means) and ``approx_kl``.
    """
    obs = list(batch.observations)
    mask = batch.action_masks if arch.behavior_spec.action_spec.mask_size else None
    dist = networks.actor_forward(params["actor"], arch, obs, norm_stats, mask)
    log_prob, entropy = distributions.log_prob_and_entropy(
        dist, batch.continuous_actions, batch.discrete_actions, arch.behavior_spec.action_spec.discrete_branches
    )
    values = networks.critic_forward(params["actor"], params["critic"], arch, obs, norm_stats, config.shared_critic)
    log_ratio = log_prob - batch.log_probs
    ratio = jnp.exp(log_ratio)
    adv = batch.advantages
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * adv)
    policy_loss = -jnp.mean(surrogate)
    clipped_values = batch.values + jnp.clip(values - batch.values, -epsilon, epsilon)
    value_loss = jnp.mean(jnp.maximum((batch.returns - values) ** 2, (batch.returns - clipped_values) ** 2))
    mean_entropy = jnp.mean(entropy)
    loss = policy_loss + 0.5 * value_loss - beta * mean_entropy
    aux = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": mean_entropy,
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
    }
    return loss, aux


def make_optimizer() -> optax.GradientTransformation:
    """Adam's moment estimates (torch's defaults, as ML-Agents); the scheduled learning rate
    is applied by the update itself so that it can depend on ``step`` without recompiling."""
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def make_update_fn(
    arch: PolicyArchitecture,
    config: PPOConfig,
    tx: optax.GradientTransformation,
    on_trace: Callable[[], None] | None = None,
) -> Callable[[PPOState, Batch, jax.Array], tuple[PPOState, dict[str, jax.Array]]]:
    """The pure update ``(state, batch, key) -> (state, metrics)``; jit it once.

    ``on_trace`` is called whenever JAX traces the function (tests count recompilations).
    """
    num_minibatches = config.buffer_size // config.batch_size

    def update(state: PPOState, batch: Batch, key: jax.Array):
        if on_trace is not None:
            on_trace()
        lr, epsilon, beta = schedules(config, state.step)
        norm_stats = _norm_stats(state.normalizer, config.normalize)
        adv = batch.advantages
        batch = batch._replace(advantages=(adv - jnp.mean(adv)) / (jnp.std(adv) + ADVANTAGE_EPS))
        grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

        def minibatch_step(carry, idx):
            params, opt_state = carry
            minibatch = jax.tree.map(lambda x: x[idx], batch)
            (_, aux), grads = grad_fn(params, arch, config, minibatch, norm_stats, epsilon, beta)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            return (params, opt_state), aux

        def epoch_step(carry, epoch_key):
            order = jax.random.permutation(epoch_key, config.buffer_size)
            order = order[: num_minibatches * config.batch_size].reshape(num_minibatches, config.batch_size)
            return jax.lax.scan(minibatch_step, carry, order)

        keys = jax.random.split(key, config.num_epoch)
        (params, opt_state), aux = jax.lax.scan(epoch_step, (state.params, state.opt_state), keys)
        metrics = {
            # ML-Agents reports the absolute policy loss
            "Losses/Policy Loss": jnp.mean(jnp.abs(aux["policy_loss"])),
            "Losses/Value Loss": jnp.mean(aux["value_loss"]),
            "Policy/Entropy": jnp.mean(aux["entropy"]),
            "Policy/Approx KL": jnp.mean(aux["approx_kl"]),
            "Policy/Learning Rate": lr,
            "Policy/Epsilon": epsilon,
            "Policy/Beta": beta,
        }
        return state._replace(params=params, opt_state=opt_state), metrics

    return update


def make_process_fn(
    arch: PolicyArchitecture, config: PPOConfig, on_trace: Callable[[], None] | None = None
) -> Callable:
    """The pure per-fragment step: normalizer update, values, GAE (fixed padded shapes).

    Signature: ``(params, normalizer, observations [L+1, ...] per spec, rewards [L], length,
    bootstrap) -> (normalizer, values [L], advantages [L], returns [L])``; row ``length`` of
    each observation holds ``next_observations``.
    """

    def process(params, normalizer, observations, rewards, length, bootstrap):
        if on_trace is not None:
            on_trace()
        padded = rewards.shape[0]
        mask = jnp.arange(padded) < length
        if config.normalize:
            normalizer = norm_mod.update(normalizer, [o[:padded] for o in observations], mask)
        values_all = networks.critic_forward(
            params["actor"], params["critic"], arch, list(observations), _norm_stats(normalizer, config.normalize),
            config.shared_critic,
        )
        bootstrap_value = jnp.where(bootstrap, values_all[length], 0.0)
        values = jnp.where(mask, values_all[:padded], 0.0)
        advantages, returns = gae(rewards, values, bootstrap_value, mask, config.gamma, config.lambd)
        return normalizer, values, advantages, returns

    return process


# -- the learner -------------------------------------------------------------------------
_BUFFER_FIELDS = ("continuous_actions", "discrete_actions", "action_masks", "log_probs", "values", "advantages", "returns")


class PPOLearner:
    """One behavior's PPO: policy, critic, optimizer state, normalizer and buffer.

    Implements ``trainer_server.learner.Learner``. Several behaviors = several learners.

    Attributes:
        step: agent steps consumed so far (ML-Agents' "step").
        update_count: updates done so far.
        trace_counts: how often each compiled function was traced ("update", "process",
            "act"): a retrace means a recompilation.
    """

    def __init__(self, spec: BehaviorSpec, config: PPOConfig, seed: int = 0):
        self.spec = spec
        self.config = config
        self.policy_architecture = PolicyArchitecture(
            behavior_spec=spec,
            hidden_units=config.hidden_units,
            num_layers=config.num_layers,
            normalize=config.normalize,
            vis_encode_type=config.vis_encode_type,
            continuous_distribution="gaussian",
        )
        arch = self.policy_architecture
        key = jax.random.PRNGKey(seed)
        key, k_actor, k_critic = jax.random.split(key, 3)
        params = {
            "actor": networks.init_actor(k_actor, arch),
            "critic": networks.init_critic(k_critic, arch, config.shared_critic),
        }
        self._tx = make_optimizer()
        self._state = PPOState(
            params=params,
            opt_state=self._tx.init(params),
            normalizer=norm_mod.init(spec),
            step=jnp.zeros((), jnp.int32),
        )
        self._key = key
        self.step = 0
        self.update_count = 0
        self.trace_counts = {"update": 0, "process": 0, "act": 0}
        self._chunks: list[dict[str, Any]] = []
        self._buffered = 0
        self._warned_long = False
        self._update_fn = jax.jit(make_update_fn(arch, config, self._tx, lambda: self._count("update")))
        self._process_fn = jax.jit(make_process_fn(arch, config, lambda: self._count("process")))
        self._act_fn = jax.jit(self._act, static_argnames=("deterministic",))
        self._log = log.bind(behavior=spec.name)

    def _count(self, name: str) -> None:
        self.trace_counts[name] += 1

    # -- experience --------------------------------------------------------------------
    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Values, GAE and normalizer update for one fragment; appends it to the buffer.

        Raises:
            ValueError: when the fragment does not match the behavior's spec.
        """
        t = len(trajectory)
        self._check(trajectory)
        horizon = self.config.time_horizon
        padded = horizon * max(1, math.ceil(t / horizon))
        if t > horizon and not self._warned_long:
            self._warned_long = True
            self._log.warning("trajectory longer than time_horizon: padded to a multiple of it", length=t, time_horizon=horizon)
        observations = []
        for obs, nxt in zip(trajectory.observations, trajectory.next_observations):
            rows = np.zeros((padded + 1, *obs.shape[1:]), np.float32)
            rows[:t] = obs
            rows[t] = nxt
            observations.append(rows)
        rewards = np.zeros(padded, np.float32)
        rewards[:t] = np.asarray(trajectory.rewards, np.float32) * self.config.strength
        bootstrap = (not trajectory.done) or trajectory.interrupted
        normalizer, values, advantages, returns = self._process_fn(
            self._state.params, self._state.normalizer, tuple(observations), rewards, np.int32(t), np.bool_(bootstrap)
        )
        self._state = self._state._replace(normalizer=normalizer)
        a = self.spec.action_spec
        self._chunks.append(
            {
                "observations": [np.asarray(o, np.float32) for o in trajectory.observations],
                "continuous_actions": np.asarray(trajectory.continuous_actions, np.float32).reshape(t, a.continuous_size),
                "discrete_actions": np.asarray(trajectory.discrete_actions, np.int32).reshape(t, a.num_branches),
                "action_masks": np.asarray(trajectory.action_masks, bool).reshape(t, a.mask_size),
                "log_probs": np.asarray(trajectory.log_probs, np.float32),
                "values": np.asarray(values)[:t],
                "advantages": np.asarray(advantages)[:t],
                "returns": np.asarray(returns)[:t],
            }
        )
        self._buffered += t
        self.step += t

    def _check(self, trajectory: Trajectory) -> None:
        t = len(trajectory)
        if t == 0:
            raise ValueError(f"behavior {self.spec.name}: empty trajectory")
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

    @property
    def buffered_steps(self) -> int:
        """Steps waiting in the buffer."""
        return self._buffered

    def ready(self) -> bool:
        """True once ``buffer_size`` steps are buffered."""
        return self._buffered >= self.config.buffer_size

    def _take_batch(self) -> dict[str, Any]:
        """Concatenates the buffer, returns its oldest buffer_size steps, keeps the rest."""
        size = self.config.buffer_size
        n_obs = len(self.spec.observations)
        merged = {f: np.concatenate([c[f] for c in self._chunks]) for f in _BUFFER_FIELDS}
        merged["observations"] = [np.concatenate([c["observations"][i] for c in self._chunks]) for i in range(n_obs)]
        batch = {f: merged[f][:size] for f in _BUFFER_FIELDS}
        batch["observations"] = [o[:size] for o in merged["observations"]]
        rest = self._buffered - size
        self._chunks = []
        if rest > 0:
            left = {f: merged[f][size:] for f in _BUFFER_FIELDS}
            left["observations"] = [o[size:] for o in merged["observations"]]
            self._chunks.append(left)
        self._buffered = rest
        return batch

    # -- update ------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """One PPO update on the oldest ``buffer_size`` buffered steps.

        Returns:
            ML-Agents-named metrics: "Losses/Policy Loss", "Losses/Value Loss",
            "Policy/Entropy", "Policy/Learning Rate", "Policy/Epsilon", "Policy/Beta",
            "Policy/Extrinsic Value Estimate", and "Policy/Approx KL".

        Raises:
            RuntimeError: when fewer than buffer_size steps are buffered.
        """
        if not self.ready():
            raise RuntimeError(
                f"behavior {self.spec.name}: update needs {self.config.buffer_size} steps, {self._buffered} buffered"
            )
        data = self._take_batch()
        batch = Batch(
            observations=tuple(data["observations"]),
            continuous_actions=data["continuous_actions"],
            discrete_actions=data["discrete_actions"],
            action_masks=data["action_masks"],
            log_probs=data["log_probs"],
            values=data["values"],
            advantages=data["advantages"],
            returns=data["returns"],
        )
        self._key, key = jax.random.split(self._key)
        state = self._state._replace(step=jnp.asarray(min(self.step, np.iinfo(np.int32).max), jnp.int32))
        self._state, metrics = self._update_fn(state, batch, key)
        self.update_count += 1
        out = {name: float(value) for name, value in jax.device_get(metrics).items()}
        out["Policy/Extrinsic Value Estimate"] = float(np.mean(data["values"]))
        return out

    # -- acting and snapshots ------------------------------------------------------------
    def _act(self, actor_params, normalizer, observations, action_mask, key, deterministic: bool):
        self._count("act")
        arch = self.policy_architecture
        dist = networks.actor_forward(
            actor_params, arch, list(observations), _norm_stats(normalizer, self.config.normalize), action_mask
        )
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
        """Acts with the current policy in JAX (tests, local checks); the gateway uses NumpyPolicy.

        Args:
            observations: per observation spec, float32 ``[n, *shape]``.
            action_mask: bool ``[n, sum(branches)]``, true = not allowed; None allows all.
            key: PRNG key; None draws one from the learner's key.
        """
        if key is None:
            self._key, key = jax.random.split(self._key)
        n = np.asarray(observations[0]).shape[0]
        a = self.spec.action_spec
        mask = None
        if a.mask_size:
            mask = np.zeros((n, a.mask_size), bool) if action_mask is None else np.asarray(action_mask, bool)
        actions, env = self._act_fn(
            self._state.params["actor"],
            self._state.normalizer,
            tuple(np.asarray(o, np.float32) for o in observations),
            mask,
            key,
            deterministic=deterministic,
        )
        return PolicyOutput(
            continuous=np.asarray(actions.continuous, np.float32),
            discrete=np.asarray(actions.discrete, np.int32),
            log_probs=np.asarray(actions.log_probs, np.float32),
            env_continuous=np.asarray(env, np.float32),
        )

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat float32 actor parameters and normalizer statistics (the snapshot's ``parameters``)."""
        params = {name: np.asarray(value, np.float32) for name, value in self._state.params["actor"].items()}
        if self.config.normalize:
            mean, var = norm_mod.statistics(self._state.normalizer)
            for key in mean:
                params[f"normalizer/mean/{key}"] = np.asarray(mean[key], np.float32)
                params[f"normalizer/var/{key}"] = np.asarray(var[key], np.float32)
        return params

    def architecture(self) -> PolicyArchitecture:
        """What the snapshot's parameters mean."""
        return self.policy_architecture

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything to resume exactly, as nested dicts of numpy arrays and Python numbers
        (``flax.serialization.msgpack_serialize`` writes it): params, Adam state, normalizer,
        step, update count, PRNG key and the steps still buffered."""
        to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
        n_obs = len(self.spec.observations)
        a = self.spec.action_spec
        if self._chunks:
            buffer = {f: np.concatenate([c[f] for c in self._chunks]) for f in _BUFFER_FIELDS}
            obs = [np.concatenate([c["observations"][i] for c in self._chunks]) for i in range(n_obs)]
        else:
            empty = {
                "continuous_actions": np.zeros((0, a.continuous_size), np.float32),
                "discrete_actions": np.zeros((0, a.num_branches), np.int32),
                "action_masks": np.zeros((0, a.mask_size), bool),
            }
            buffer = {f: empty.get(f, np.zeros((0,), np.float32)) for f in _BUFFER_FIELDS}
            obs = [np.zeros((0, *o.shape), np.float32) for o in self.spec.observations]
        buffer["observations"] = {str(i): o for i, o in enumerate(obs)}
        return {
            "algorithm": "ppo",
            "params": to_np(self._state.params),
            "opt_state": to_np(serialization.to_state_dict(self._state.opt_state)),
            "normalizer": {
                "mean": to_np(self._state.normalizer.mean),
                "m2": to_np(self._state.normalizer.m2),
                "count": int(self._state.normalizer.count),
            },
            "step": int(self.step),
            "update_count": int(self.update_count),
            "key": np.asarray(self._key),
            "buffer": buffer,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``'s output (e.g. after msgpack_restore).

        Raises:
            ValueError: naming the entry that does not fit this behavior's networks.
        """
        if state.get("algorithm", "ppo") != "ppo":
            raise ValueError(f"checkpoint holds a {state.get('algorithm')!r} learner, not ppo")
        for name in ("params", "opt_state", "normalizer", "step", "update_count", "key"):
            if name not in state:
                raise ValueError(f"checkpoint: missing {name!r}")
        current = self._state
        params = _restore_like(current.params, state["params"], "params")
        opt_state = serialization.from_state_dict(
            current.opt_state, _restore_like(serialization.to_state_dict(current.opt_state), state["opt_state"], "opt_state")
        )
        n = state["normalizer"]
        normalizer = norm_mod.NormalizerState(
            mean=_restore_like(current.normalizer.mean, n["mean"], "normalizer.mean"),
            m2=_restore_like(current.normalizer.m2, n["m2"], "normalizer.m2"),
            count=jnp.asarray(int(np.asarray(n["count"])), jnp.int32),
        )
        self._state = PPOState(params=params, opt_state=opt_state, normalizer=normalizer, step=current.step)
        self.step = int(np.asarray(state["step"]))
        self.update_count = int(np.asarray(state["update_count"]))
        self._key = jnp.asarray(np.asarray(state["key"], np.uint32))
        self._chunks, self._buffered = [], 0
        buffer = state.get("buffer")
        if buffer is not None:
            size = int(np.asarray(buffer["log_probs"]).shape[0])
            if size:
                chunk = {f: np.asarray(buffer[f]) for f in _BUFFER_FIELDS}
                chunk["observations"] = [np.asarray(buffer["observations"][str(i)]) for i in range(len(self.spec.observations))]
                self._chunks.append(chunk)
                self._buffered = size


def _restore_like(template: Any, value: Any, name: str) -> Any:
    """``value`` (nested dicts of arrays) as jax arrays shaped like ``template``, checked."""
    if isinstance(template, dict):
        if not isinstance(value, dict) or set(map(str, value)) != set(map(str, template)):
            got = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"checkpoint {name}: entries {got} do not match {sorted(map(str, template))}")
        return {k: _restore_like(template[k], value[str(k)], f"{name}.{k}") for k in template}
    array = np.asarray(value)
    if array.shape != np.shape(template):
        raise ValueError(f"checkpoint {name}: shape {array.shape}, expected {np.shape(template)}")
    return jnp.asarray(array, dtype=jnp.asarray(template).dtype)
