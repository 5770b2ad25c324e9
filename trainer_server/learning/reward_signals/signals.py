"""A behavior's reward signals together: heads, gammas, rewards, updates, stats, checkpoints.

Why: the learners see the signals as one object with fixed-shape pure functions
(``rewards`` ``[H, n]``, ``update``) over one state pytree (signal name -> state), plus
the host-side bookkeeping ML-Agents does per signal (episode sums for ``Policy/{Name}
Reward``, ``Policy/{Name} Value Estimate`` tags). The extrinsic signal comes first when
configured, so that head 0 (``critic/value``, ``critic/q``) keeps its name in
extrinsic-only runs and old checkpoints load.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from common.specs import BehaviorSpec
from trainer_server.config.schema import TrainerSettings
from trainer_server.learning import networks
from trainer_server.learning.reward_signals.base import ExtrinsicSignal, Metrics, RewardSignal, SignalBatch, State
from trainer_server.learning.reward_signals.curiosity import CuriositySignal
from trainer_server.learning.reward_signals.gail import ExpertData, GAILSignal
from trainer_server.learning.reward_signals.rnd import RNDSignal

#: the reward signal kinds the learners train (``reward_signals`` keys)
SIGNAL_CLASSES: dict[str, type[RewardSignal]] = {
    "extrinsic": ExtrinsicSignal,
    "curiosity": CuriositySignal,
    "rnd": RNDSignal,
    "gail": GAILSignal,
}

DemoLoader = Callable[[str, BehaviorSpec], Any]


def load_demonstrations_lazily(demo_path: str, spec: BehaviorSpec) -> Any:
    """``trainer_server.demonstrations.load_demonstrations`` (imported when GAIL needs it)."""
    from trainer_server.demonstrations import load_demonstrations  # type: ignore[import-not-found]

    return load_demonstrations(demo_path, spec)


class RewardSignals:
    """The configured signals of one behavior, in head order.

    Args:
        spec: the behavior.
        settings: its trainer settings (``reward_signals``).
        demonstrations: GAIL's expert steps (a ``Demonstrations``); None loads them from
            ``reward_signals.gail.demo_path`` with ``demo_loader``.
        demo_loader: ``(demo_path, spec) -> Demonstrations``; default
            ``trainer_server.demonstrations.load_demonstrations``.

    Attributes:
        signals: the signals, extrinsic first.
        names: their ``reward_signals`` keys (the value heads' names).
        gammas: float32 ``[H]``; strengths float32 ``[H]``; ignore_done bool ``[H]``.
        expert: GAIL's ``ExpertData`` or None.
        needs_inputs: whether any signal reads more than the environment's rewards (then
            the learners keep next observations and dones for the updates).
    """

    def __init__(
        self,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        demonstrations: Any = None,
        demo_loader: DemoLoader | None = None,
    ) -> None:
        kinds = list(head_names(settings))
        unknown = [k for k in kinds if k not in SIGNAL_CLASSES]
        if unknown:
            raise ValueError(f"behavior {spec.name}: reward signals {unknown} are not supported")
        self.spec = spec
        self.signals: tuple[RewardSignal, ...] = tuple(SIGNAL_CLASSES[k](spec, settings.reward_signals[k]) for k in kinds)
        self.names: tuple[str, ...] = tuple(kinds)
        self.gammas = np.asarray([s.gamma for s in self.signals], np.float32)
        self.strengths = np.asarray([s.strength for s in self.signals], np.float32)
        self.ignore_done = np.asarray([s.ignore_done for s in self.signals], bool)
        self.needs_inputs = any(s.kind != "extrinsic" for s in self.signals)
        self.expert: ExpertData | None = None
        if "gail" in settings.reward_signals:
            if demonstrations is None:
                demonstrations = (demo_loader or load_demonstrations_lazily)(settings.reward_signals["gail"].demo_path, spec)
            self.expert = ExpertData.from_demonstrations(demonstrations)

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def trainable(self) -> bool:
        """Whether any signal has something to train."""
        return any(s.trainable for s in self.signals)

    # -- pure functions (jit them inside the learners) ------------------------------------
    def init(self, key: jax.Array) -> dict[str, State]:
        """A fresh state per signal."""
        keys = jax.random.split(key, len(self.signals))
        return {name: signal.init(k) for name, signal, k in zip(self.names, self.signals, keys)}

    def rewards(self, states: dict[str, State] | None, batch: SignalBatch, norm: networks.NormStats) -> jax.Array:
        """Every signal's reward times its strength: ``[H, n]`` (``states`` may be None with
        the extrinsic signal alone)."""
        return jnp.stack(
            [
                s.rewards((states or {}).get(name), batch, _own(s, norm)) * s.strength
                for name, s in zip(self.names, self.signals)
            ]
        )

    def update(
        self, states: dict[str, State], batch: SignalBatch, norm: networks.NormStats, key: jax.Array, expert: Any
    ) -> tuple[dict[str, State], Metrics]:
        """One Adam step of every trainable signal on ``batch``; their ML-Agents-named metrics."""
        keys = jax.random.split(key, len(self.signals))
        out, metrics = dict(states), {}
        for name, signal, k in zip(self.names, self.signals, keys):
            out[name], m = signal.update(states[name], batch, _own(signal, norm), k, expert if signal.kind == "gail" else None)
            metrics.update(m)
        return out, metrics

    # -- tags and bookkeeping ---------------------------------------------------------------
    def value_tags(self) -> list[str]:
        """``Policy/{Name} Value Estimate`` per head (ML-Agents' capitalised provider names)."""
        return [f"Policy/{s.stat_name} Value Estimate" for s in self.signals]

    def reward_tags(self) -> list[str]:
        """``Policy/{Name} Reward`` per head: the mean episode sum of the signal's reward."""
        return [f"Policy/{s.stat_name} Reward" for s in self.signals]


def _own(signal: RewardSignal, norm: networks.NormStats) -> networks.NormStats:
    """The observation statistics a signal's encoder uses: the policy's running ones when the
    signal's ``network_settings.normalize`` is set (and the policy keeps them), else none."""
    return norm if signal.settings.network_settings.normalize else None


class EpisodeRewards:
    """Per-agent sums of every signal's (strength-scaled) rewards until the episode ends.

    Why: ML-Agents reports ``Policy/{Name} Reward`` once per finished episode; the learners
    report the mean over the episodes finished since the last update.
    """

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self._running: dict[Any, np.ndarray] = {}
        self._finished: list[np.ndarray] = []

    def add(self, agent: Any, sums: np.ndarray, episode_ended: bool) -> None:
        """Adds a fragment's per-signal sums ``[H]`` for ``agent``; closes its episode when ended."""
        total = self._running.pop(agent, np.zeros(len(self.tags), np.float64)) + np.asarray(sums, np.float64)
        if episode_ended:
            self._finished.append(total)
        else:
            self._running[agent] = total

    def report(self) -> dict[str, float]:
        """Mean per tag over the episodes finished since the last report (empty if none)."""
        if not self._finished:
            return {}
        mean = np.mean(np.stack(self._finished), axis=0)
        self._finished = []
        return {tag: float(v) for tag, v in zip(self.tags, mean)}


def state_dict(states: dict[str, State]) -> dict[str, Any]:
    """The signals' states as nested dicts of numpy arrays (for a checkpoint)."""
    from flax import serialization

    return jax.tree_util.tree_map(np.array, {name: serialization.to_state_dict(s) for name, s in states.items()})


def restore(template: dict[str, State], value: dict[str, Any]) -> dict[str, State]:
    """Inverse of ``state_dict``, checked against ``template`` (names and shapes).

    Raises:
        ValueError: naming the entry that does not match (e.g. a signal added or removed).
    """
    from flax import serialization

    from trainer_server.learning import shared

    out = {}
    if set(map(str, value)) != set(template):
        raise ValueError(f"checkpoint reward_signals: {sorted(map(str, value))} do not match the configured {sorted(template)}")
    for name, state in template.items():
        as_dict = serialization.to_state_dict(state)
        restored = shared.restore_like(as_dict, value[name], f"reward_signals.{name}")
        out[name] = serialization.from_state_dict(state, restored)
    return out


def head_names(settings: TrainerSettings) -> tuple[str, ...]:
    """The reward signals' names in head order: extrinsic first, then as configured."""
    names = list(settings.reward_signals)
    return tuple(sorted(names, key=lambda k: (k != "extrinsic", names.index(k))))
