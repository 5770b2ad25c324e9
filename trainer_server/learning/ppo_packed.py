"""PPO's per-fragment processing for a whole batch of fragments in one compiled call, rows packed.

Why: ``make_batch_process_fn`` pads every fragment of a call to one length and batches
only consecutive fragments of equal padded length. 3DBall's chunks hold about twenty
fragments of 14 to 64 steps in mixed order, so a chunk took about eight calls of two or
three fragments each, padded to four fragments of a power-of-two length: 12 us of CPU per
agent step for 1.8 us of arithmetic (benchmarks/results/bench_trainer_parts.md). Here the
fragments' rows are packed one after the other (no padding between them), the networks
run once over all rows, and GAE runs over the packed rows as one linear recurrence that
restarts at each fragment's end.

Layout of a packed batch of K fragments with S steps in all (``PackedBatch``): rows ``0..S-1``
are the fragments' steps in order, rows ``S..S+K-1`` their ``next_observations`` (row
``S + k`` for fragment k), then zero rows up to ``packed_rows(S + K)`` rows R (two shapes per
octave, ``packed_shape``: a handful of compilations). Per-fragment arrays have F = R //
``ROWS_PER_SLOT`` >= K slots (empty fragments of length 0).

Semantics are ``make_process_fn`` applied to each fragment in turn: the normalizer folds
each fragment's real rows in the fragments' order (ML-Agents' parallel update, through
each fragment's own mean and centred sum of squares, algebraically the same fold), each
fragment's values and signal rewards see the statistics after it, old log-probs use the
acting statistics; values, advantages and returns equal the one-by-one ones up to float
summation order. Without memory only (an LSTM runs along each fragment from the critic
memory of the agent's previous fragment: ``make_batch_process_fn`` keeps that case).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.architecture import PolicyArchitecture
from common.trajectory import Trajectory
from trainer_server.learning import distributions, networks, shared
from trainer_server.learning import normalizer as norm_mod
from trainer_server.learning import reward_signals as signals_mod

#: the fewest rows of a packed batch (smaller batches share this compiled shape)
MIN_PACKED_ROWS = 64
#: rows per fragment slot: a packed batch of R rows has R // ROWS_PER_SLOT fragment slots (one
#: compiled shape per row count)
ROWS_PER_SLOT = 4
#: a rare batch (see ``COMPILE_SHARE``) runs in an already compiled shape of up to this many
#: times its own rows rather than compile its own (a compilation costs about one CPU second:
#: 250k 3DBall steps' processing)
REUSE_FACTOR = 16
#: a batch's own shape is compiled once at least this share of the calls so far asked for it
#: (this one included): GridWorld's batches between its frequent updates recur and get their
#: own shapes at once; 3DBall's short batch before an update (a few percent of the calls,
#: spread over several sizes) rides on the chunks' shape
COMPILE_SHARE = 0.1
#: agent steps one packed call takes at most: a longer run of fragments is split (a longer
#: fragment goes alone), which bounds the compiled shapes and the call's memory
MAX_PACKED_STEPS = 4096


def packed_rows(rows: int) -> int:
    """Rows a packed batch of ``rows`` rows (steps plus next observations) is padded to:
    ``MIN_PACKED_ROWS``, then two sizes per octave (3/4 of a power of two, the power)."""
    if rows <= MIN_PACKED_ROWS:
        return MIN_PACKED_ROWS
    power = 1 << (rows - 1).bit_length()
    return power * 3 // 4 if rows <= power * 3 // 4 else power


def packed_shape(
    steps: int, fragments: int, compiled: set[int] | frozenset[int] = frozenset(), asked: int = 0, calls: int = 0
) -> int:
    """Rows R of the packed call for ``fragments`` fragments of ``steps`` steps in all.

    The batch's own bucket is ``own_rows``. It is the answer when already compiled, or when
    ``asked`` (earlier batches whose own bucket it was) + 1 is at least ``COMPILE_SHARE`` of
    ``calls`` (earlier batches) + 1; otherwise the smallest shape of ``compiled`` (row counts
    already compiled) between it and ``REUSE_FACTOR`` times it, if any.

    Why: the trainer cuts a chunk's fragments into batches where an update falls, so batch
    sizes vary; compiling a bucket for each compiled up to a dozen shapes on 3DBall, most of
    them for the rare short batch before an update, about a CPU second each, while the
    padding a rare batch brings costs next to nothing."""
    own = own_rows(steps, fragments)
    if own in compiled or asked + 1 >= COMPILE_SHARE * (calls + 1):
        return own
    reuse = [rows for rows in compiled if own <= rows <= REUSE_FACTOR * own]
    return min(reuse) if reuse else own


def own_rows(steps: int, fragments: int) -> int:
    """The batch's own bucket in ``packed_shape`` (what ``asked`` counts)."""
    return packed_rows(max(steps + fragments, ROWS_PER_SLOT * fragments))


def packed_groups(trajectories: list[Trajectory]) -> list[list[Trajectory]]:
    """Consecutive runs of fragments of at most ``MAX_PACKED_STEPS`` steps (a longer fragment alone)."""
    groups: list[list[Trajectory]] = []
    steps = 0
    for trajectory in trajectories:
        if not groups or steps + len(trajectory) > MAX_PACKED_STEPS:
            groups.append([])
            steps = 0
        groups[-1].append(trajectory)
        steps += len(trajectory)
    return groups


class PackedBatch(NamedTuple):
    """K fragments packed for ``make_packed_process_fn`` (R rows, F = R // ``ROWS_PER_SLOT``
    fragment slots).

    Attributes:
        steps: S, the real steps (rows ``0..S-1``).
        offsets: ``[K]`` each fragment's first row.
        lengths: ``[F]`` int32 steps per fragment (0 on empty slots).
        observations: per spec ``[R, *shape]`` float32: steps, next observations, zeros.
        segments: ``[R]`` int32 the fragment of each row (steps and next-observation rows).
        next_rows: ``[R]`` int32 the row of each step's next observation (the next step, or
            the fragment's next-observation row after its last step; other rows: themselves).
        real: ``[R]`` bool, true on the S steps.
        last: ``[R]`` bool, true on each fragment's last step.
        bootstrap: ``[R]`` bool, on a last step: GAE bootstraps from the next observation
            (the fragment was cut or interrupted).
        dones: ``[R]`` float32, 1 on the last step of a fragment whose episode ended.
        rewards: ``[R]`` float32 the environment's rewards.
        continuous: ``[R, c]`` float32; discrete: ``[R, b]`` int32; action_masks: ``[R, m]`` bool.
        log_probs: ``[R]`` float32 the acting policy's joint log-prob.
    """

    steps: int
    offsets: np.ndarray
    lengths: np.ndarray
    observations: tuple[np.ndarray, ...]
    segments: np.ndarray
    next_rows: np.ndarray
    real: np.ndarray
    last: np.ndarray
    bootstrap: np.ndarray
    dones: np.ndarray
    rewards: np.ndarray
    continuous: np.ndarray
    discrete: np.ndarray
    action_masks: np.ndarray
    log_probs: np.ndarray


def _padded(rows: np.ndarray, total: int) -> np.ndarray:
    out = np.zeros((total, *rows.shape[1:]), rows.dtype)
    out[: rows.shape[0]] = rows
    return out


def pack(group: list[Trajectory], actions: list[dict[str, np.ndarray]], bootstraps: list[bool], rows: int) -> PackedBatch:
    """The fragments of ``group`` packed in ``rows`` rows (``packed_shape``; ``actions``: each
    one's buffer actions ``[t, ...]``; ``bootstraps``: whether GAE bootstraps from each one's
    next observation)."""
    lengths = np.array([len(t) for t in group], np.int64)
    k, steps = len(group), int(lengths.sum())
    slots = rows // ROWS_PER_SLOT
    if steps + k > rows or k > slots:
        raise ValueError(f"pack: {k} fragments of {steps} steps do not fit {rows} rows")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = offsets + lengths - 1
    observations = []
    for i in range(len(group[0].observations)):
        obs = np.zeros((rows, *np.shape(group[0].next_observations[i])), np.float32)
        obs[:steps] = np.concatenate([t.observations[i] for t in group])
        obs[steps : steps + k] = np.stack([t.next_observations[i] for t in group])
        observations.append(obs)
    segments = np.zeros(rows, np.int32)
    segments[:steps] = np.repeat(np.arange(k, dtype=np.int32), lengths)
    segments[steps : steps + k] = np.arange(k)
    next_rows = np.arange(rows, dtype=np.int32)
    next_rows[:steps] += 1
    next_rows[ends] = steps + np.arange(k)
    flags = {name: np.zeros(rows, bool) for name in ("real", "last", "bootstrap")}
    flags["real"][:steps] = True
    flags["last"][ends] = True
    flags["bootstrap"][ends] = bootstraps
    dones = np.zeros(rows, np.float32)
    dones[ends] = [t.done for t in group]
    fragment_lengths = np.zeros(slots, np.int32)
    fragment_lengths[:k] = lengths
    return PackedBatch(
        steps=steps,
        offsets=offsets,
        lengths=fragment_lengths,
        observations=tuple(observations),
        segments=segments,
        next_rows=next_rows,
        dones=dones,
        rewards=_padded(np.concatenate([np.asarray(t.rewards, np.float32).reshape(-1) for t in group]), rows),
        continuous=_padded(np.concatenate([a["continuous_actions"] for a in actions]), rows),
        discrete=_padded(np.concatenate([a["discrete_actions"] for a in actions]), rows),
        action_masks=_padded(np.concatenate([a["action_masks"] for a in actions]), rows),
        log_probs=_padded(np.concatenate([np.asarray(t.log_probs, np.float32).reshape(-1) for t in group]), rows),
        **flags,
    )


def _fold(normalizer: norm_mod.NormalizerState, observations, segments, real, lengths):
    """The normalizer after each fragment in turn: ``(final state, per-fragment states [F, ...])``.

    Fragment k's rows fold in as ``norm_mod.update`` would fold them, written through their
    count n, mean mu and centred sum of squares M2: the mean moves by ``n (mu - old) / total``
    and m2 grows by ``M2 + n (mu - new)(mu - old)`` (the same sums regrouped); a fold that
    would not be finite is skipped, as one by one."""
    slots = lengths.shape[0]
    weight = real.astype(jnp.float32)[:, None]
    n = lengths.astype(jnp.float32)[:, None]  # [F, 1]
    moments = {}
    for key in normalizer.mean:
        x = observations[int(key)].reshape(real.shape[0], -1)  # [R, size]
        mu = jax.ops.segment_sum(x * weight, segments, num_segments=slots) / jnp.maximum(n, 1.0)
        m2 = jax.ops.segment_sum(jnp.square(x - mu[segments]) * weight, segments, num_segments=slots)
        moments[key] = (mu, m2)

    def step(state: norm_mod.NormalizerState, fragment):
        count, parts = fragment
        total = state.count + count
        total_f, count_f = total.astype(jnp.float32), count.astype(jnp.float32)
        mean, m2 = {}, {}
        for key, old in state.mean.items():
            mu, centred = parts[key]
            mean[key] = old + count_f * (mu - old) / total_f
            m2[key] = state.m2[key] + centred + count_f * (mu - mean[key]) * (mu - old)
        kept = shared.keep_finite(state, norm_mod.NormalizerState(mean=mean, m2=m2, count=total))[0]
        return kept, kept

    return jax.lax.scan(step, normalizer, (lengths, moments))


def _row_statistics(after: norm_mod.NormalizerState, segments: jax.Array) -> networks.NormStats:
    """Per row, the (mean, var) after its fragment folded in: ``[R, size]`` per vector observation."""
    count = after.count.astype(jnp.float32)[segments][:, None]
    return {k: v[segments] for k, v in after.mean.items()}, {k: v[segments] / count for k, v in after.m2.items()}


def discounted_sums(deltas: jax.Array, discounts: jax.Array) -> jax.Array:
    """``a[r] = deltas[r] + discounts[r] * a[r + 1]`` (``a[R] = 0``) along axis 0: GAE's
    backward recursion over packed rows, where a 0 discount ends a run so that fragments
    packed one after the other stay apart. Shapes ``[R, ...]``. A serial scan: on the CPU
    it costs about 10 ns a row, ten times less than an associative scan's log2 R passes."""

    def back(later, row):
        delta, discount = row
        advantage = delta + discount * later
        return advantage, advantage

    return jax.lax.scan(back, jnp.zeros(deltas.shape[1:], deltas.dtype), (deltas, discounts), reverse=True)[1]


def make_packed_process_fn(
    arch: PolicyArchitecture,
    signals: signals_mod.RewardSignals,
    lambd: float,
    shared_critic: bool,
    on_trace: Callable[[], None] | None = None,
) -> Callable:
    """The pure step for one ``PackedBatch``: normalizer, values, signal rewards, GAE.

    Signature: ``(params, normalizer, acting_normalizer, observations [R, ...] per spec,
    segments, next_rows, real, last, bootstrap, dones, rewards, continuous, discrete,
    action_masks, log_probs, lengths [F], signal_states) -> (normalizer, values [R, H],
    advantages [R], returns [R, H], old_log_probs [R, c + b], signal_rewards [H, R])``, every
    result 0 off the real rows (``make_process_fn`` for what each means).
    """
    if arch.memory_size:
        raise ValueError("make_packed_process_fn: not for memory (make_batch_process_fn carries the critic's LSTM)")
    a_spec = arch.behavior_spec.action_spec
    heads = signals.names
    gammas, ignore_done = jnp.asarray(signals.gammas), jnp.asarray(signals.ignore_done)

    def process(
        params, normalizer, acting_normalizer, observations, segments, next_rows, real, last, bootstrap, dones,
        rewards, continuous, discrete, action_masks, log_probs, lengths, signal_states,
    ):
        if on_trace is not None:
            on_trace()
        observations = list(observations)
        row_stats = None
        if arch.normalize:
            normalizer, after = _fold(normalizer, observations, segments, real, lengths)
            row_stats = _row_statistics(after, segments)
        acting = norm_mod.statistics(acting_normalizer) if arch.normalize else None
        dist = networks.actor_forward(
            params["actor"], arch, observations, acting, action_masks if a_spec.mask_size else None
        )
        parts = distributions.log_prob_parts(dist, continuous, discrete, a_spec.discrete_branches)
        old_log_probs = parts + ((log_probs - jnp.sum(parts, axis=-1)) / parts.shape[-1])[:, None]
        values_all = networks.critic_values(
            params["actor"], params["critic"], arch, observations, row_stats, shared_critic, heads
        )  # [R, H]
        inputs = signals_mod.SignalBatch(
            observations=tuple(observations),
            next_observations=tuple(o[next_rows] for o in observations),
            continuous_actions=distributions.env_continuous(continuous),
            discrete_actions=discrete,
            dones=dones,
            rewards=rewards,
        )
        signal_rewards = jnp.where(real[None], signals.rewards(signal_states, inputs, row_stats), 0.0)  # [H, R]
        values = jnp.where(real[:, None], values_all, 0.0)
        # after a fragment's last step: its next observation's value when it bootstraps (per
        # signal: curiosity and RND past true terminals too), else 0
        next_values = values_all[next_rows]
        keep = ~last[:, None] | bootstrap[:, None] | ignore_done[None, :]
        next_values = jnp.where(keep, next_values, 0.0)
        deltas = jnp.where(real[:, None], signal_rewards.T + gammas * next_values - values, 0.0)  # [R, H]
        discounts = jnp.where((real & ~last)[:, None], gammas * lambd, 0.0) * jnp.ones_like(deltas)
        advantages = jnp.where(real[:, None], discounted_sums(deltas, discounts), 0.0)
        returns = jnp.where(real[:, None], advantages + values, 0.0)
        old_log_probs = jnp.where(real[:, None], old_log_probs, 0.0)
        return normalizer, values, jnp.mean(advantages, axis=1), returns, old_log_probs, signal_rewards

    return process
