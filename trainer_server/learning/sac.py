"""Soft Actor-Critic for one behavior, jit-compiled, with ML-Agents' SAC settings.

Why: ``trainer_type: sac`` in an ML-Agents config must train through the same gateway
streams and snapshot push as PPO. SAC is off-policy: every trajectory fragment becomes
single transitions in a replay buffer on the trainer (``trainer_server.replay_buffer``),
and gradient steps on uniformly sampled minibatches follow the agent steps at ML-Agents'
ratio (one gradient step per ``steps_per_update`` agent steps once
``buffer_init_steps`` are collected) while the gateways keep streaming.

Hot path: ``update()`` runs every pending gradient step in jit-compiled calls that each
scan (``lax.scan``) over a fixed number ``k`` of minibatches; steps beyond the number
due are skipped inside the scan (``lax.cond``), so shapes never change and the update
compiles once per learner, never again.

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
  bootstrap). Critic loss ``0.5 * mean((Q_i(s, a) - y)^2)``; policy loss ``-mean V(s)``.
* automatic entropy tuning (ML-Agents): one coefficient for the continuous actions and
  one per discrete branch, all initialised to ``init_entcoef``, target entropy ``-c``
  (continuous) and ``0.2 * log(branch size)`` per branch; loss
  ``mean(alpha * stop_gradient(H - target))`` so alpha falls while the entropy is above
  its target and rises below it.
* one Adam (torch's defaults) over actor, critics and entropy coefficients at once (Adam is
  per-parameter, so this equals ML-Agents' three Adams), all losses from the same
  parameters in one backward pass; learning rate constant or linear to 1e-10 over
  ``max_steps`` (``learning_rate_schedule``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.logging import get_logger
from common.architecture import PolicyArchitecture, encoding_size
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server.learning import networks
from trainer_server.learning import normalizer as norm
from trainer_server.learning.replay_buffer import ReplayBuffer, Transitions

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

_log = get_logger("trainer_server.sac")


# =============================================================================== config


def _get(obj: Any, name: str, default: Any) -> Any:
    """Reads ``name`` from a settings object or a mapping; ``default`` when absent or None."""
    if obj is None:
        return default
    value = obj.get(name, None) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return default if value is None else value


@dataclass(frozen=True)
class SACConfig:
    """SAC hyperparameters in ML-Agents' names, with ML-Agents' defaults.

    Attributes:
        batch_size: transitions per gradient step.
        buffer_size: replay buffer capacity.
        learning_rate: Adam step size at step 0.
        learning_rate_schedule: "constant" (ML-Agents' SAC default) or "linear" (to 1e-10
            at ``max_steps``).
        buffer_init_steps: agent steps collected before the first gradient step.
        init_entcoef: initial entropy coefficient (every branch and the continuous part).
        tau: Polyak factor of the target critics.
        steps_per_update: agent steps per gradient step (may be below 1).
        reward_signal_steps_per_update: accepted for compatibility; the extrinsic reward
            has nothing to train.
        save_replay_buffer: the server saves/loads the replay buffer with checkpoints.
        normalize: running normalization of vector observations.
        hidden_units: width of every body layer.
        num_layers: body depth.
        vis_encode_type: visual encoder; "simple" only.
        gamma: extrinsic discount.
        strength: extrinsic reward scale.
        max_steps: total agent steps (the linear schedule's horizon).
        time_horizon: cut length of trajectory fragments (pads normalizer updates).
        steps_per_call: gradient steps per compiled call (k); 0 picks it from the size of
            a transition (at most 32, the k minibatches within ~64 MiB).
    """

    batch_size: int = 128
    buffer_size: int = 50000
    learning_rate: float = 3.0e-4
    learning_rate_schedule: str = "constant"
    buffer_init_steps: int = 0
    init_entcoef: float = 1.0
    tau: float = 0.005
    steps_per_update: float = 1.0
    reward_signal_steps_per_update: float = 1.0
    save_replay_buffer: bool = False
    normalize: bool = False
    hidden_units: int = 128
    num_layers: int = 2
    vis_encode_type: str = "simple"
    gamma: float = 0.99
    strength: float = 1.0
    max_steps: int = 500000
    time_horizon: int = 64
    steps_per_call: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"sac hyperparameters: {name} {why}, got {getattr(self, name)!r}")

        for name in ("batch_size", "buffer_size", "hidden_units", "max_steps", "time_horizon"):
            if int(getattr(self, name)) <= 0:
                raise bad(name, "must be positive")
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"sac hyperparameters: batch_size ({self.batch_size}) must not exceed buffer_size ({self.buffer_size})"
            )
        for name in ("learning_rate", "init_entcoef", "steps_per_update", "reward_signal_steps_per_update"):
            if not float(getattr(self, name)) > 0:
                raise bad(name, "must be positive")
        if not 0.0 < self.tau <= 1.0:
            raise bad("tau", "must be in (0, 1]")
        if not 0.0 <= self.gamma < 1.0:
            raise bad("gamma", "must be in [0, 1)")
        if self.buffer_init_steps < 0:
            raise bad("buffer_init_steps", "must be >= 0")
        if self.num_layers < 0:
            raise bad("num_layers", "must be >= 0")
        if self.steps_per_call < 0:
            raise bad("steps_per_call", "must be >= 0 (0 = automatic)")
        if self.learning_rate_schedule not in ("constant", "linear"):
            raise bad("learning_rate_schedule", "must be 'constant' or 'linear'")
        if self.vis_encode_type != "simple":
            raise ValueError(
                f"network_settings.vis_encode_type: {self.vis_encode_type!r} is not supported yet (supported: simple)"
            )

    @classmethod
    def from_settings(cls, trainer_settings: Any, **overrides: Any) -> "SACConfig":
        """Builds the config from a behavior's resolved ML-Agents trainer settings.

        Duck-typed on ML-Agents' names: ``hyperparameters.{batch_size, buffer_size,
        learning_rate, learning_rate_schedule, buffer_init_steps, init_entcoef, tau,
        steps_per_update, reward_signal_steps_per_update, save_replay_buffer}``,
        ``network_settings.{normalize, hidden_units, num_layers, vis_encode_type}``,
        ``reward_signals["extrinsic"].{gamma, strength}``, ``max_steps``,
        ``time_horizon`` (attributes or mapping keys; absent ones take ML-Agents' defaults).
        """
        d = cls()
        hp = _get(trainer_settings, "hyperparameters", None)
        ns = _get(trainer_settings, "network_settings", None)
        signals = _get(trainer_settings, "reward_signals", None) or {}
        extrinsic = None
        for key, value in (signals.items() if hasattr(signals, "items") else []):
            if str(getattr(key, "value", key)) == "extrinsic":
                extrinsic = value
        steps_per_update = float(_get(hp, "steps_per_update", d.steps_per_update))
        vis = _get(ns, "vis_encode_type", d.vis_encode_type)
        schedule = _get(hp, "learning_rate_schedule", d.learning_rate_schedule)
        values = dict(
            batch_size=int(_get(hp, "batch_size", d.batch_size)),
            buffer_size=int(_get(hp, "buffer_size", d.buffer_size)),
            learning_rate=float(_get(hp, "learning_rate", d.learning_rate)),
            learning_rate_schedule=str(getattr(schedule, "value", schedule)),
            buffer_init_steps=int(_get(hp, "buffer_init_steps", d.buffer_init_steps)),
            init_entcoef=float(_get(hp, "init_entcoef", d.init_entcoef)),
            tau=float(_get(hp, "tau", d.tau)),
            steps_per_update=steps_per_update,
            reward_signal_steps_per_update=float(_get(hp, "reward_signal_steps_per_update", steps_per_update)),
            save_replay_buffer=bool(_get(hp, "save_replay_buffer", d.save_replay_buffer)),
            normalize=bool(_get(ns, "normalize", d.normalize)),
            hidden_units=int(_get(ns, "hidden_units", d.hidden_units)),
            num_layers=int(_get(ns, "num_layers", d.num_layers)),
            vis_encode_type=str(getattr(vis, "value", vis)),
            gamma=float(_get(extrinsic, "gamma", d.gamma)),
            strength=float(_get(extrinsic, "strength", d.strength)),
            max_steps=int(float(_get(trainer_settings, "max_steps", d.max_steps))),
            time_horizon=int(_get(trainer_settings, "time_horizon", d.time_horizon)),
        )
        values.update(overrides)
        return cls(**values)

    def learning_rate_at(self, step: int) -> float:
        """The scheduled learning rate after ``step`` agent steps."""
        if self.learning_rate_schedule == "constant":
            return float(self.learning_rate)
        frac = 1.0 - min(step, self.max_steps) / self.max_steps
        return float((self.learning_rate - MIN_LEARNING_RATE) * frac + MIN_LEARNING_RATE)


# ============================================================================= networks
# The actor is ``trainer_server.networks``' (flat parameter dict with the snapshot names of
# docs/ARCHITECTURE.md, tanh_gaussian heads), so ``policy_parameters()`` is what
# ``gateway.numpy_policy.NumpyPolicy`` reads. Each Q critic reuses the same encoders (under
# ``critic/``) and adds the continuous action to the body's input, as ML-Agents' SAC
# critics do: ``critic/body/dense{j}`` over ``[encoding, action]`` with swish, then
# ``critic/q`` with one output per discrete action of every branch (or one output).


def _encoder_arch(arch: PolicyArchitecture) -> PolicyArchitecture:
    """The architecture without body layers: ``networks.encode`` then returns the raw encoding."""
    return dataclasses.replace(arch, num_layers=0)


def _kaiming_normal(key: jax.Array, fan_in: int, fan_out: int, gain: float) -> jax.Array:
    return gain * math.sqrt(2.0 / fan_in) * jax.random.normal(key, (fan_in, fan_out), jnp.float32)


def init_critic(key: jax.Array, arch: PolicyArchitecture) -> networks.Params:
    """One Q critic's flat parameters (encoders, body over [encoding, action], ``critic/q``)."""
    k_enc, k_body, k_q = jax.random.split(key, 3)
    enc_arch = _encoder_arch(arch)
    params = {
        name: value
        for name, value in networks.init_critic(k_enc, enc_arch).items()
        if name.startswith("critic/encoder/")
    }
    a = arch.behavior_spec.action_spec
    width = encoding_size(enc_arch) + a.continuous_size
    for j in range(arch.num_layers):
        k_body, k = jax.random.split(k_body)
        params[f"critic/body/dense{j}/kernel"] = _kaiming_normal(k, width, arch.hidden_units, 1.0)
        params[f"critic/body/dense{j}/bias"] = jnp.zeros((arch.hidden_units,), jnp.float32)
        width = arch.hidden_units
    outputs = max(a.mask_size, 1)
    limit = math.sqrt(6.0 / (width + outputs))  # Xavier uniform, as ML-Agents' value heads
    params["critic/q/kernel"] = jax.random.uniform(k_q, (width, outputs), jnp.float32, -limit, limit)
    params["critic/q/bias"] = jnp.zeros((outputs,), jnp.float32)
    return params


def critic_forward(
    params: networks.Params,
    arch: PolicyArchitecture,
    observations: tuple[jax.Array, ...],
    norm_stats: networks.NormStats,
    continuous_actions: jax.Array,
) -> jax.Array:
    """Q values ``[n, max(sum(branches), 1)]`` for squashed continuous actions ``[n, c]``."""
    h = networks.encode(params, "critic/", _encoder_arch(arch), list(observations), norm_stats)
    h = jnp.concatenate([h, continuous_actions], axis=-1)
    for j in range(arch.num_layers):
        h = jax.nn.swish(h @ params[f"critic/body/dense{j}/kernel"] + params[f"critic/body/dense{j}/bias"])
    return h @ params["critic/q/kernel"] + params["critic/q/bias"]


# ============================================================================ SAC maths


class TrainState(NamedTuple):
    """Everything the gradient step changes; leaves are jax arrays.

    Attributes:
        params: ``{"actor", "critics" (two Q critics stacked on axis 0), "log_entcoef":
            {"continuous": [1], "discrete": [num_branches]}}``.
        target: the target critics, stacked like ``params["critics"]``.
        opt_state: Adam's state over ``params``.
    """

    params: dict
    target: Any
    opt_state: Any


def _branch_matrix(branches: tuple[int, ...]) -> np.ndarray:
    """0/1 ``[sum(branches), num_branches]``: column b sums a row's entries of branch b."""
    m = np.zeros((int(sum(branches)), len(branches)), np.float32)
    lo = 0
    for b, size in enumerate(branches):
        m[lo : lo + size, b] = 1.0
        lo += size
    return m


class _Policy(NamedTuple):
    """The actor's view of a batch: sampled continuous action and discrete distributions."""

    action: jax.Array  # [n, c], tanh-squashed sample
    log_prob: jax.Array  # [n], log pi_c(action), 0 without continuous actions
    probs: jax.Array  # [n, sum(branches)], per-branch probabilities (masked ones exactly 0)
    log_probs: jax.Array  # [n, sum(branches)], per-branch log-probabilities (0 where masked)


def _tanh_gaussian_sample(mu: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised squashed sample ``tanh(u)`` [n, c] and its log-density [n]."""
    noise = jax.random.normal(key, mu.shape, mu.dtype)
    u = mu + jnp.exp(log_std) * noise
    log_prob = jnp.sum(-0.5 * noise * noise - log_std - 0.5 * math.log(2 * math.pi), axis=-1)
    # log(1 - tanh(u)^2) in a form that is exact for large |u|: 2 (log 2 - u - softplus(-2u))
    log_prob = log_prob - jnp.sum(2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u)), axis=-1)
    return jnp.tanh(u), log_prob


def _branch_log_softmax(logits: jax.Array, branches: tuple[int, ...]) -> jax.Array:
    """Per-branch log-softmax of ``[n, sum(branches)]`` (already masked) logits."""
    parts, lo = [], 0
    for size in branches:
        parts.append(jax.nn.log_softmax(logits[:, lo : lo + size], axis=-1))
        lo += size
    return jnp.concatenate(parts, axis=-1)


def _make_step_fn(arch: PolicyArchitecture, config: SACConfig):
    """Builds the pure SAC functions for one behavior.

    Returns:
        ``(init, step, policy)``: ``init(key) -> TrainState``; ``step(state, norm_stats,
        batch, key, lr) -> (state, metrics)`` (one gradient step on a ``[batch]``
        minibatch); ``policy(actor_params, obs, mask, norm_stats, key) -> _Policy``.
    """
    a_spec = arch.behavior_spec.action_spec
    branches = a_spec.discrete_branches
    c = a_spec.continuous_size
    nb = len(branches)
    seg = jnp.asarray(_branch_matrix(branches)) if nb else None
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(branches)[:-1]]).astype(np.int32)) if nb else None
    target_c = -CONTINUOUS_TARGET_ENTROPY_SCALE * float(c)
    target_d = jnp.asarray([DISCRETE_TARGET_ENTROPY_SCALE * math.log(b) for b in branches], jnp.float32)
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

    def policy(actor_params, obs, mask, norm_stats, key) -> _Policy:
        dist = networks.actor_forward(actor_params, arch, list(obs), norm_stats, mask if nb else None)
        n = obs[0].shape[0]
        if c:
            action, log_prob = _tanh_gaussian_sample(dist.mu, dist.log_std, key)
        else:
            action, log_prob = jnp.zeros((n, 0), jnp.float32), jnp.zeros((n,), jnp.float32)
        if nb:
            log_probs = _branch_log_softmax(dist.logits, branches)  # masked logits: p exactly 0
            probs = jnp.exp(log_probs)
            log_probs = jnp.where(mask, 0.0, log_probs)  # keeps p * log p finite (0) where masked
        else:
            log_probs = probs = jnp.zeros((n, 0), jnp.float32)
        return _Policy(action, log_prob, probs, log_probs)

    def critics(critic_params, obs, norm_stats, action) -> jax.Array:  # [2, n, outputs]
        return jax.vmap(lambda p: critic_forward(p, arch, obs, norm_stats, action))(critic_params)

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

    def losses(params, target, norm_stats, batch: Transitions, key):
        k_now, k_next = jax.random.split(key)
        log_alpha_c = params["log_entcoef"]["continuous"]
        log_alpha_d = params["log_entcoef"]["discrete"]
        alpha_c = jax.lax.stop_gradient(jnp.exp(log_alpha_c[0]))
        alpha_d = jax.lax.stop_gradient(jnp.exp(log_alpha_d))

        # critic target: target critics at a' ~ pi(s'), no gradient
        pi_next = policy(params["actor"], batch.next_obs, batch.next_action_masks, norm_stats, k_next)
        q_next = jnp.min(critics(target, batch.next_obs, norm_stats, pi_next.action), axis=0)
        v_next, _, _ = soft_value(q_next, pi_next, alpha_c, alpha_d)
        y = config.strength * batch.rewards + config.gamma * (1.0 - batch.dones) * v_next
        y = jax.lax.stop_gradient(y)

        # critic regression on the replayed actions
        q_all = critics(params["critics"], batch.obs, norm_stats, batch.continuous_actions)  # [2, n, outputs]
        if nb:
            taken = batch.discrete_actions + offsets  # [n, nb]: the output column of each choice
            q_taken = jnp.mean(jnp.take_along_axis(q_all, taken[None], axis=-1), axis=-1)  # [2, n]
        else:
            q_taken = q_all[..., 0]
        q_losses = 0.5 * jnp.mean((q_taken - y[None]) ** 2, axis=-1)  # [2]

        # policy: maximise the soft value under the (fixed) online critics
        pi = policy(params["actor"], batch.obs, batch.action_masks, norm_stats, k_now)
        q_pi = jnp.min(critics(jax.lax.stop_gradient(params["critics"]), batch.obs, norm_stats, pi.action), axis=0)
        v_pi, entropy, branch_entropy = soft_value(q_pi, pi, alpha_c, alpha_d)
        policy_loss = -jnp.mean(v_pi)

        # entropy coefficients: alpha * (H - target) with H fixed
        entropy_loss = jnp.zeros((), jnp.float32)
        if c:
            h_c = jax.lax.stop_gradient(-pi.log_prob)
            entropy_loss = entropy_loss + jnp.mean(jnp.exp(log_alpha_c[0]) * (h_c - target_c))
        if nb:
            h_d = jax.lax.stop_gradient(branch_entropy)
            entropy_loss = entropy_loss + jnp.mean(jnp.exp(log_alpha_d) * (h_d - target_d))

        total = jnp.sum(q_losses) + policy_loss + entropy_loss
        coefs = ([alpha_c[None]] if c else []) + ([alpha_d] if nb else [])
        metrics = {
            "Losses/Policy Loss": policy_loss,
            "Losses/Q1 Loss": q_losses[0],
            "Losses/Q2 Loss": q_losses[1],
            "Policy/Entropy Coefficient": jnp.mean(jnp.concatenate(coefs)),
            "Policy/Entropy": jnp.mean(entropy),
            "Policy/Extrinsic Value Estimate": jnp.mean(v_pi),
        }
        if c:
            metrics["Policy/Continuous Entropy Coeff"] = alpha_c
        if nb:
            metrics["Policy/Discrete Entropy Coeff"] = jnp.mean(alpha_d)
        return total, metrics

    grad_fn = jax.grad(losses, has_aux=True)

    def step(state: TrainState, norm_stats, batch: Transitions, key: jax.Array, lr: jax.Array):
        grads, metrics = grad_fn(state.params, state.target, norm_stats, batch, key)
        updates, opt_state = adam.update(grads, state.opt_state, state.params)
        params = jax.tree_util.tree_map(lambda p, u: p - lr * u, state.params, updates)
        target = soft_update(state.target, params["critics"], config.tau)
        return TrainState(params, target, opt_state), metrics

    def init(key: jax.Array) -> TrainState:
        k_actor, k_critic = jax.random.split(key)
        critic_params = jax.vmap(lambda k: init_critic(k, arch))(jax.random.split(k_critic, 2))
        log0 = math.log(config.init_entcoef)
        params = {
            "actor": networks.init_actor(k_actor, arch),
            "critics": critic_params,
            "log_entcoef": {
                "continuous": jnp.full((1,), log0, jnp.float32),
                "discrete": jnp.full((nb,), log0, jnp.float32),
            },
        }
        return TrainState(params, jax.tree_util.tree_map(jnp.array, critic_params), adam.init(params))

    return init, step, policy


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


def soft_update(target: Any, online: Any, tau: float) -> Any:
    """Polyak averaging ``tau * online + (1 - tau) * target`` leaf by leaf (what each step applies)."""
    return jax.tree_util.tree_map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)


# ============================================================================== learner


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.array(x), tree)


class SACLearner:
    """One behavior's SAC: replay buffer, networks, optimizer state; implements ``Learner``.

    Args:
        spec: the behavior's observations and actions.
        config: SAC hyperparameters (``SACConfig.from_settings(trainer_settings)``).
        seed: initialises the networks and every later sampling key.

    Attributes:
        step: agent steps consumed so far (ML-Agents' step).
        update_steps: gradient steps taken so far.
        replay_buffer: the transitions (save/load it with ``save_replay_buffer``/
            ``load_replay_buffer`` when ``config.save_replay_buffer``).
        compile_count: how many times the update was traced (1 after the first update).
    """

    def __init__(self, spec: BehaviorSpec, config: SACConfig, seed: int) -> None:
        a = spec.action_spec
        if a.continuous_size == 0 and a.num_branches == 0:
            raise ValueError(f"behavior {spec.name}: SAC needs at least one action (continuous or discrete)")
        if not spec.observations:
            raise ValueError(f"behavior {spec.name}: SAC needs at least one observation")
        self.spec = spec
        self.config = config
        self._arch = PolicyArchitecture(
            behavior_spec=spec,
            hidden_units=config.hidden_units,
            num_layers=config.num_layers,
            normalize=config.normalize,
            vis_encode_type=config.vis_encode_type,
            continuous_distribution="tanh_gaussian",
        )  # validates observation shapes for the encoders
        self._step = 0
        self.update_steps = 0
        self.compile_count = 0
        self._log = _log.bind(behavior=spec.name)
        self.replay_buffer = ReplayBuffer(
            config.buffer_size,
            [o.shape for o in spec.observations],
            a.continuous_size,
            a.num_branches,
            a.mask_size,
        )
        self.steps_per_call = config.steps_per_call or self._auto_steps_per_call()

        init, step, policy = _make_step_fn(self._arch, config)
        self._policy_fn = policy
        key = jax.random.key(seed)
        key, init_key = jax.random.split(key)
        self._key = key
        self._state: TrainState = init(init_key)
        self._normalizer = norm.init(spec)
        self._update_chunk = jax.jit(self._make_chunk_fn(step))
        self._normalizer_update = jax.jit(norm.update)

    # ------------------------------------------------------------------ set-up helpers
    def _auto_steps_per_call(self) -> int:
        floats = sum(2 * int(np.prod(o.shape)) for o in self.spec.observations)
        a = self.spec.action_spec
        per_transition = 4 * (floats + a.continuous_size + a.num_branches + 2) + 2 * a.mask_size
        k = DEFAULT_CHUNK_BYTES // max(per_transition * self.config.batch_size, 1)
        return int(max(1, min(MAX_STEPS_PER_CALL, k)))

    def _make_chunk_fn(self, step: Callable) -> Callable:
        def chunk(state: TrainState, stats, batches: Transitions, keys: jax.Array, valid: jax.Array, lr: jax.Array):
            """``k`` gradient steps; step i only when ``valid[i]`` (batches ``[k, batch, ...]``)."""
            self.compile_count += 1  # runs at trace time only

            metric_shapes = jax.eval_shape(
                lambda s: step(s, stats, jax.tree_util.tree_map(lambda x: x[0], batches), keys[0], lr)[1], state
            )

            def guarded(st, xs):
                # lax.cond runs only the taken branch: steps past the number due cost nothing
                batch, key, ok = xs
                return jax.lax.cond(
                    ok,
                    lambda s: step(s, stats, batch, key, lr),
                    lambda s: (s, jax.tree_util.tree_map(lambda m: jnp.zeros(m.shape, m.dtype), metric_shapes)),
                    st,
                )

            return jax.lax.scan(guarded, state, (batches, keys, valid))

        return chunk

    # ---------------------------------------------------------------------- Learner API
    def process_trajectory(self, trajectory: Trajectory) -> None:
        """Turns a fragment into transitions in the replay buffer; updates the normalizer.

        Step t's next observation is step t+1's observation, the last step's is
        ``trajectory.next_observations``; ``done`` is set on the last step only for a true
        terminal (done and not interrupted). The last step's next action mask is unknown
        (the trajectory does not carry it) and allows every action.

        Raises:
            ValueError: when the fragment does not fit the behavior's shapes.
        """
        t = len(trajectory)
        if t == 0:
            return
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
        )
        self.replay_buffer.add(batch)  # validates shapes before anything else changes
        if self.config.normalize:
            self._update_normalizer(obs)
        self._step += t

    def _update_normalizer(self, obs: tuple[np.ndarray, ...]) -> None:
        # pad to a few fixed lengths so the jitted normalizer update compiles rarely
        t = obs[0].shape[0]
        length = self.config.time_horizon if t <= self.config.time_horizon else 1 << (t - 1).bit_length()
        padded = []
        for o, spec in zip(obs, self.spec.observations):
            if spec.is_visual:  # never normalized: a placeholder keeps the list's positions
                padded.append(np.zeros((length, 1), np.float32))
                continue
            p = np.zeros((length, *o.shape[1:]), np.float32)
            p[:t] = o
            padded.append(p)
        mask = np.arange(length) < t
        self._normalizer = self._normalizer_update(self._normalizer, padded, mask)

    def _norm_stats(self) -> networks.NormStats:
        return norm.statistics(self._normalizer) if self.config.normalize else None

    @property
    def step(self) -> int:
        """Agent steps consumed so far (ML-Agents' step)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        # Set from outside (e.g. step 0 after --initialize-from): as ML-Agents on load,
        # assume the gradient steps up to now were taken at the configured ratio.
        self._step = int(value)
        self.update_steps = updates_due(self._step, self.config.buffer_init_steps, self.config.steps_per_update)

    def pending_updates(self) -> int:
        """Gradient steps due now and not yet taken."""
        due = updates_due(self._step, self.config.buffer_init_steps, self.config.steps_per_update)
        return max(0, due - self.update_steps)

    def ready(self) -> bool:
        """True when gradient steps are due and a minibatch can be sampled."""
        return (
            self.replay_buffer.size >= self.config.batch_size
            and self._step >= self.config.buffer_init_steps
            and self.pending_updates() > 0
        )

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
        k = self.steps_per_call
        lr = self.config.learning_rate_at(self._step)
        stats = self._norm_stats()
        sums: dict[str, float] = {}
        done = 0
        while done < pending:
            n = min(k, pending - done)
            self._key, k_idx, k_steps = jax.random.split(self._key, 3)
            batches = self.replay_buffer.sample(k_idx, self.config.batch_size, num_batches=k)
            valid = np.arange(k) < n
            self._state, metrics = self._update_chunk(
                self._state, stats, batches, jax.random.split(k_steps, k), valid, jnp.float32(lr)
            )
            for name, values in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(values)[:n]))
            done += n
        self.update_steps += pending
        out = {name: total / pending for name, total in sums.items()}
        out["Policy/Learning Rate"] = lr
        self._log.debug("sac update", gradient_steps=pending, step=self._step)
        return out

    # ------------------------------------------------------------------------ snapshots
    def architecture(self) -> PolicyArchitecture:
        """What the snapshot's parameters mean (``continuous_distribution="tanh_gaussian"``)."""
        return self._arch

    @property
    def policy_architecture(self) -> PolicyArchitecture:
        """The same as the domain type of ``common.architecture``."""
        return self._arch

    def policy_parameters(self) -> dict[str, np.ndarray]:
        """Flat float32 actor parameters (and normalizer statistics) for ``NumpyPolicy``."""
        out = {name: np.asarray(v, np.float32) for name, v in self._state.params["actor"].items()}
        if self.config.normalize:
            mean, var = norm.statistics(self._normalizer)
            for key in mean:
                out[f"normalizer/mean/{key}"] = np.asarray(mean[key], np.float32)
                out[f"normalizer/var/{key}"] = np.asarray(var[key], np.float32)
        return out

    # ---------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Params, target critics, Adam state, normalizer, step counters and PRNG key (numpy leaves).

        The replay buffer is not included: save it with ``save_replay_buffer``.
        """
        return {
            "algorithm": "sac",
            "step": int(self._step),
            "update_steps": int(self.update_steps),
            "key": np.asarray(jax.random.key_data(self._key)),
            "params": _to_numpy(self._state.params),
            "target": _to_numpy(self._state.target),
            "opt_state": _to_numpy(serialization.to_state_dict(self._state.opt_state)),
            "normalizer": {
                "mean": _to_numpy(self._normalizer.mean),
                "m2": _to_numpy(self._normalizer.m2),
                "count": np.asarray(self._normalizer.count),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned (same spec and network settings).

        Raises:
            ValueError: when the state is not a SAC state of this behavior's shapes.
        """
        if state.get("algorithm") != "sac":
            raise ValueError(f"behavior {self.spec.name}: checkpoint is not a SAC learner state")

        def restore(template: Any, value: Any, what: str) -> Any:
            t_leaves, treedef = jax.tree_util.tree_flatten(template)
            v_leaves, v_def = jax.tree_util.tree_flatten(value)
            if treedef != v_def:
                raise ValueError(f"behavior {self.spec.name}: checkpoint {what} does not match the network settings")
            for t, v in zip(t_leaves, v_leaves):
                if np.shape(t) != np.shape(v):
                    raise ValueError(
                        f"behavior {self.spec.name}: checkpoint {what} has shape {np.shape(v)} "
                        f"where the network has {np.shape(t)}"
                    )
            return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v, t.dtype) for t, v in zip(t_leaves, v_leaves)])

        params = restore(self._state.params, state["params"], "params")
        target = restore(self._state.target, state["target"], "target critics")
        opt_template = serialization.to_state_dict(self._state.opt_state)
        opt_state = serialization.from_state_dict(
            self._state.opt_state, restore(opt_template, state["opt_state"], "optimizer state")
        )
        nstate = state["normalizer"]
        normalizer = norm.NormalizerState(
            mean=restore(self._normalizer.mean, nstate["mean"], "normalizer"),
            m2=restore(self._normalizer.m2, nstate["m2"], "normalizer"),
            count=jnp.asarray(nstate["count"], jnp.int32),
        )
        self._state = TrainState(params, target, opt_state)
        self._normalizer = normalizer
        self._key = jax.random.wrap_key_data(jnp.asarray(state["key"], jnp.uint32))
        self._step = int(state["step"])
        self.update_steps = int(state["update_steps"])

    def save_replay_buffer(self, path) -> None:
        """Writes the replay buffer (``save_replay_buffer: true``) to ``path`` (.npz)."""
        self.replay_buffer.save(path)

    def load_replay_buffer(self, path) -> None:
        """Restores a replay buffer written by ``save_replay_buffer`` (``--resume``)."""
        self.replay_buffer.load(path)
