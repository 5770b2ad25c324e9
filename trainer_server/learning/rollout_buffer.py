"""PPO's on-policy experience: the steps processed since the last update, in arrival order.

Why a class beside SAC's ``ReplayBuffer``: PPO consumes its experience in fixed-size
batches (``buffer_size`` steps, so the compiled update sees one shape), while fragments
arrive in any length. The buffer keeps whole processed fragments (observations, actions,
acting log-probs, critic values, GAE advantages and returns), hands out the oldest
``buffer_size`` steps and keeps the rest for the next update (ML-Agents would train on
all of them and clear the buffer; fixed shapes keep one compilation).

Each step holds: ``observations[k]`` ``[*shape_k]`` per observation spec,
``continuous_actions`` ``[c]``, ``discrete_actions`` ``[b]`` int32, ``action_masks``
``[sum(branches)]`` bool (true = not allowed), ``log_probs`` ``[c + b]`` (PPO's
per-dimension / per-branch log-probs of the acting policy), and float32 scalars ``values``,
``advantages``, ``returns``. A learner may add per-step fields of its own
(``extra_fields``: PPO with memory adds the LSTM memories and the loss mask of its
sequence padding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.specs import BehaviorSpec

#: per-step fields besides the observations
FIELDS = ("continuous_actions", "discrete_actions", "action_masks", "log_probs", "values", "advantages", "returns")
#: what a buffer ``with_signal_inputs`` also keeps per step for the reward signals' updates:
#: ``dones`` float32 and ``next_observations`` (a list per spec, like ``observations``)
SIGNAL_FIELDS = ("dones",)
SIGNAL_LISTS = ("next_observations",)


class RolloutBuffer:
    """Processed steps waiting for a PPO update, oldest first.

    Args:
        spec: the behavior (shapes of the empty buffer's arrays).
        extra_fields: per-step fields besides ``FIELDS``: name -> (shape of one step, dtype).
        with_signal_inputs: also keep ``SIGNAL_FIELDS`` and ``SIGNAL_LISTS`` (reward
            signals such as curiosity train on next observations).
    """

    def __init__(
        self,
        spec: BehaviorSpec,
        extra_fields: dict[str, tuple[tuple[int, ...], Any]] | None = None,
        with_signal_inputs: bool = False,
    ) -> None:
        self.spec = spec
        self.extra_fields = dict(extra_fields or {})
        #: every per-step field besides the per-observation lists
        self.fields = FIELDS + (SIGNAL_FIELDS if with_signal_inputs else ()) + tuple(self.extra_fields)
        self.lists = ("observations",) + (SIGNAL_LISTS if with_signal_inputs else ())
        self._chunks: list[dict[str, Any]] = []
        self._size = 0

    @property
    def size(self) -> int:
        """Steps held now."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def add(self, chunk: dict[str, Any]) -> None:
        """Appends one processed fragment: ``observations`` (a list per spec, ``[t, ...]``) and
        every name of ``fields`` (``[t, ...]``)."""
        self._chunks.append(chunk)
        self._size += int(np.shape(chunk["log_probs"])[0])

    def total(self, field: str) -> float:
        """The sum of ``field`` over every held step (e.g. the real steps among sequence padding)."""
        return float(sum(np.sum(c[field]) for c in self._chunks))

    def chronological(self) -> dict[str, Any]:
        """Every held step, oldest first: ``fields`` ``[size, ...]`` and ``observations`` (a list)."""
        if not self._chunks:
            return self._empty()
        merged = {f: np.concatenate([c[f] for c in self._chunks]) for f in self.fields}
        for name in self.lists:
            merged[name] = [np.concatenate([c[name][i] for c in self._chunks]) for i in range(len(self.spec.observations))]
        return merged

    def take(self, size: int) -> dict[str, Any]:
        """Removes and returns the oldest ``size`` steps (as ``chronological``); the rest stay.

        Raises:
            ValueError: when fewer than ``size`` steps are held.
        """
        if size > self._size:
            raise ValueError(f"rollout buffer: {size} steps asked, {self._size} held")
        merged = self.chronological()
        batch = {f: merged[f][:size] for f in self.fields}
        batch.update({name: [o[:size] for o in merged[name]] for name in self.lists})
        self._chunks, self._size = [], 0
        if len(merged["log_probs"]) > size:
            rest = {f: merged[f][size:] for f in self.fields}
            rest.update({name: [o[size:] for o in merged[name]] for name in self.lists})
            self.add(rest)
        return batch

    def _empty(self) -> dict[str, Any]:
        a = self.spec.action_spec
        empty = {
            "continuous_actions": np.zeros((0, a.continuous_size), np.float32),
            "discrete_actions": np.zeros((0, a.num_branches), np.int32),
            "action_masks": np.zeros((0, a.mask_size), bool),
        }
        out: dict[str, Any] = {f: empty.get(f, np.zeros((0,), np.float32)) for f in self.fields}
        for name in self.lists:
            out[name] = [np.zeros((0, *o.shape), np.float32) for o in self.spec.observations]
        return out

    def state_dict(self) -> dict[str, Any]:
        """The held steps for a checkpoint: ``fields`` and ``observations`` as ``{"0": ..., "1": ...}``."""
        data = self.chronological()
        for name in self.lists:
            data[name] = {str(i): o for i, o in enumerate(data[name])}
        return data

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Replaces the contents with what ``state_dict`` returned (None: empty)."""
        self._chunks, self._size = [], 0
        if state is None or not int(np.asarray(state["log_probs"]).shape[0]):
            return
        chunk = {f: np.asarray(state[f]) for f in self.fields}
        for name in self.lists:
            chunk[name] = [np.asarray(state[name][str(i)]) for i in range(len(self.spec.observations))]
        self.add(chunk)
