"""What PPO and SAC do the same way: settings access, schedules, PRNG keys, retrace counts,
snapshot parameters and checkpoint restore.

Why one module: the two learners are siblings (``ppo.py``, ``sac.py`` read top to bottom as
config -> networks -> loss -> update -> learner shell); every piece they share lives here
once, so that they cannot drift apart (e.g. one kind of PRNG key, one linear schedule, one
checkpoint restore that checks shapes and names the mismatching entry).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from common.architecture import PolicyArchitecture
from common.specs import BehaviorSpec
from trainer_server.learning import devices
from trainer_server.learning import normalizer as norm_mod
from trainer_server.config.schema import RewardSignalSettings, TrainerSettings

#: the metric a learner's ``update()`` reports as 1.0 when its result was not finite and its
#: state was left as it was (``keep_finite``); ``trainer_server.stats.SKIPPED_UPDATES``
SKIPPED_UPDATE_METRIC = "Policy/Skipped Updates"

#: state_dict entries that belong to a run rather than to the networks: ``load_weights``
#: (``init_path`` / ``--initialize-from``) leaves them out, the new run counts from step 0
RUN_ENTRIES = ("buffer", "step")


# -- settings ----------------------------------------------------------------------------
def extrinsic(settings: TrainerSettings) -> RewardSignalSettings:
    """The extrinsic reward signal (gamma, strength).

    Raises KeyError for a behavior without one (e.g. GAIL alone): the learners read every
    signal through ``trainer_server.learning.reward_signals.RewardSignals`` instead.
    """
    return settings.reward_signals["extrinsic"]


def policy_architecture(spec: BehaviorSpec, settings: TrainerSettings, continuous_distribution: str) -> PolicyArchitecture:
    """The actor's architecture (what a snapshot's parameters mean) from ``network_settings``."""
    network = settings.network_settings
    return PolicyArchitecture(
        behavior_spec=spec,
        hidden_units=network.hidden_units,
        num_layers=network.num_layers,
        normalize=network.normalize,
        vis_encode_type=network.vis_encode_type,
        continuous_distribution=continuous_distribution,
        memory_size=network.memory.memory_size if network.memory is not None else 0,
        sequence_length=network.memory.sequence_length if network.memory is not None else 0,
    )


def decayed_value(schedule: str, initial: float, minimum: float, max_steps: int, step: Any) -> Any:
    """ML-Agents' schedule (``ModelUtils.DecayedValue``).

    ``linear`` goes from ``initial`` to ``minimum`` at ``max_steps`` and stays there;
    ``constant`` is ``initial``. Works on Python numbers (float out) and on JAX arrays
    inside a compiled function (float32 scalar out).
    """
    if schedule == "constant":
        return jnp.asarray(initial, jnp.float32) if isinstance(step, jax.Array) else float(initial)
    horizon = float(max(max_steps, 1))
    if isinstance(step, jax.Array):
        frac = jnp.minimum(step, max_steps).astype(jnp.float32) / horizon
    else:
        frac = min(step, max_steps) / horizon
    return (initial - minimum) * (1.0 - frac) + minimum


def make_optimizer() -> optax.GradientTransformation:
    """Adam's moment estimates (torch's defaults, as ML-Agents); the scheduled learning rate
    is applied by each update itself so that it can depend on ``step`` without recompiling."""
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


# -- XLA options on the CPU ------------------------------------------------------------------
#: what ``cpu_compiler_options`` gives on the CPU (see there for why)
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_multi_thread_eigen": False, "xla_cpu_prefer_vector_width": 512}


def cpu_compiler_options() -> dict[str, Any] | None:
    """XLA options for the learners' compiled updates and per-fragment steps: on the CPU, one
    thread per computation and 512-bit vectors where the CPU has them; None elsewhere.

    Why (benchmarks/results/bench_vs_mlagents.md): the learners' matrices are small (a
    minibatch of 64 through 128 units), so splitting each operation across the cores gains
    nothing even on an idle machine, while on a busy one every split operation waits for its
    slowest thread to be scheduled: a PPO update took 3x its CPU time in wall time. One
    thread per computation keeps wall time near CPU time and leaves the other cores to the
    gateways and to gRPC. 512-bit vectors (AVX-512, where present) cut the update's CPU time
    by about a tenth; where the CPU lacks them the option changes nothing.
    """
    platform = devices.current().devices[0].platform
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else None


# -- PRNG keys -----------------------------------------------------------------------------
def new_key(seed: int) -> jax.Array:
    """A typed JAX PRNG key: the one kind of key both learners use."""
    return jax.random.key(seed)


def key_to_numpy(key: jax.Array) -> np.ndarray:
    """The key's raw uint32 data, for a checkpoint."""
    return np.asarray(jax.random.key_data(key))


def key_from_numpy(data: Any) -> jax.Array:
    """Inverse of ``key_to_numpy``."""
    return jax.random.wrap_key_data(jnp.asarray(np.asarray(data, np.uint32)))


# -- compilation count --------------------------------------------------------------------------
class TraceCounter:
    """Counts how often each compiled function is traced: a retrace means a recompilation.

    Attributes:
        counts: function name -> traces so far (tests assert 1 after many calls).
    """

    def __init__(self, *names: str) -> None:
        self.counts: dict[str, int] = {name: 0 for name in names}

    def hook(self, name: str) -> Callable[[], None]:
        """A callback for ``name`` that a pure function calls at trace time."""

        def count() -> None:
            self.counts[name] += 1

        return count


# -- snapshots and checkpoints ------------------------------------------------------------------
def to_numpy(tree: Any) -> Any:
    """A pytree of jax arrays as numpy arrays (copies), for a checkpoint."""
    return jax.tree_util.tree_map(np.array, tree)


def policy_parameters(
    actor: dict[str, jax.Array], normalizer: norm_mod.NormalizerState, normalize: bool
) -> dict[str, np.ndarray]:
    """Flat float32 actor parameters plus ``normalizer/{mean,var}/<index>`` when ``normalize``:
    the snapshot's ``parameters`` that ``gateway.actor.numpy_policy.NumpyPolicy`` reads."""
    params = {name: np.asarray(value, np.float32) for name, value in actor.items()}
    if normalize:
        mean, var = norm_mod.statistics(normalizer)
        for key in mean:
            params[f"normalizer/mean/{key}"] = np.asarray(mean[key], np.float32)
            params[f"normalizer/var/{key}"] = np.asarray(var[key], np.float32)
    return params


def normalizer_state_dict(normalizer: norm_mod.NormalizerState) -> dict[str, Any]:
    """The normalizer's checkpoint entry: ``{"mean", "m2", "count"}``."""
    return {"mean": to_numpy(normalizer.mean), "m2": to_numpy(normalizer.m2), "count": int(normalizer.count)}


def restore_like(template: Any, value: Any, name: str) -> Any:
    """``value`` (nested dicts of arrays, as msgpack restores them) as jax arrays shaped and
    typed like ``template`` (nested dicts of arrays).

    Raises:
        ValueError: naming the entry (``name.key.key``) whose keys or shape differ, e.g.
            after a change of network settings.
    """
    if isinstance(template, dict):
        if not isinstance(value, dict) or set(map(str, value)) != set(map(str, template)):
            got = sorted(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise ValueError(f"checkpoint {name}: entries {got} do not match the network's {sorted(map(str, template))}")
        return {k: restore_like(template[k], value[str(k)], f"{name}.{k}") for k in template}
    array = np.asarray(value)
    if array.shape != np.shape(template):
        raise ValueError(f"checkpoint {name}: shape {array.shape}, the network has {np.shape(template)}")
    return jnp.asarray(array, dtype=jnp.asarray(template).dtype)


def restore_normalizer(template: norm_mod.NormalizerState, value: dict[str, Any]) -> norm_mod.NormalizerState:
    """Inverse of ``normalizer_state_dict``, checked against ``template``."""
    return norm_mod.NormalizerState(
        mean=restore_like(template.mean, value["mean"], "normalizer.mean"),
        m2=restore_like(template.m2, value["m2"], "normalizer.m2"),
        count=jnp.asarray(int(np.asarray(value["count"])), jnp.int32),
    )


def restore_optimizer(template: Any, value: Any) -> Any:
    """An optax state from its checkpoint entry (``serialization.to_state_dict`` of it),
    checked against ``template`` (the learner's current optimizer state).

    Raises:
        ValueError: naming the entry whose keys or shape differ.
    """
    entries = restore_like(serialization.to_state_dict(template), value, "opt_state")
    return serialization.from_state_dict(template, entries)


def check_state(state: dict[str, Any], algorithm: str, entries: tuple[str, ...]) -> None:
    """Refuses another algorithm's checkpoint or one that lacks an entry.

    Raises:
        ValueError: naming the algorithm or the missing entry.
    """
    if state.get("algorithm") != algorithm:
        raise ValueError(f"checkpoint holds a {state.get('algorithm')!r} learner state, not a {algorithm.upper()} learner state")
    for name in entries:
        if name not in state:
            raise ValueError(f"checkpoint: missing {name!r}")


class _Resumable(Protocol):
    step: int

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def load_weights(learner: _Resumable, state: dict[str, Any]) -> None:
    """``init_path`` / ``--initialize-from``: a checkpoint's networks, optimizer state and
    normalizer (and PRNG key), not its run: the buffered experience is dropped and the new
    run counts from step 0 (setting ``step`` lets a learner reset what depends on it)."""
    learner.load_state_dict({**{k: v for k, v in state.items() if k not in RUN_ENTRIES}, "step": 0})
    learner.step = 0


# -- finite updates --------------------------------------------------------------------------
def keep_finite(old: Any, new: Any) -> tuple[Any, jax.Array]:
    """``new`` when every floating-point leaf of it is finite, else ``old`` (inside jit).

    Why: one update on extreme (finite) inputs can make parameters, optimizer moments or the
    normalizer infinite, and nothing recovers from that; skipping the update keeps the last
    finite state. Cost: one reduction per leaf.

    Returns:
        the state to keep (same structure as ``old``/``new``) and a bool scalar: ``new`` was finite.
    """
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(new) if jnp.issubdtype(x.dtype, jnp.inexact)]
    ok = jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, b, a), old, new), ok
