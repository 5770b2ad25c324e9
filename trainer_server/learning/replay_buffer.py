"""SAC's experience replay: a fixed-capacity ring buffer of single transitions.

Why: SAC learns off-policy from transitions sampled uniformly from everything seen
recently (ML-Agents' ``buffer_size``), not from the latest rollout. Arrays are
preallocated once (``np.zeros`` pages are only committed by the OS when written, so a
large visual buffer costs what it holds) and written in place, oldest overwritten
first. Sampling draws indices with a numpy ``Generator`` that the caller owns and
checkpoints (``generator_state`` / ``generator_from_state``): a run is reproducible and
resumes exactly, and no JAX call (device round trip) happens to pick the indices.
``save``/``load`` back ML-Agents' ``save_replay_buffer: true``.

A transition i holds: ``obs[k][i]`` (observation k before the action), the action
(continuous ``[continuous_size]`` and discrete ``[num_branches]``), the reward after
it, ``done`` (1.0 only on a true terminal step: interrupted episodes and
``time_horizon`` cut-offs bootstrap), ``next_obs[k][i]`` and the action masks before
(``action_masks``) and after (``next_action_masks``) the step (true = not allowed).

With memory (``sequence_length`` L > 0, ``memory_size`` m), as ML-Agents' off-policy
trainer with ``network_settings.memory``: rows also hold the actor's memory before the
step (``memories``) and a ``loss_masks`` flag (1 on a real step, 0 on padding). Every
fragment is written as whole sequences of L rows from its first step, the last one padded
at its end with zero rows (ML-Agents' ``resequence_and_append``), and the ring's capacity
is a multiple of L, so a sequence slot (rows ``[j L, (j + 1) L)``) never holds two
fragments and never wraps. ``sample_sequences`` draws whole slots uniformly (ML-Agents'
``sample_mini_batch``); ``sample`` draws single real rows (the reward signals' minibatches).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import numpy as np

from common.logging import get_logger

_FORMAT_VERSION = 1
_UINT64 = (1 << 64) - 1


def new_generator(seed: int) -> np.random.Generator:
    """The sampling generator (PCG64, whose state ``generator_state`` can write)."""
    return np.random.Generator(np.random.PCG64(seed))


def generator_state(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's whole state as uint64 ``[6]`` (checkpoint formats hold no 128-bit ints)."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise ValueError(f"only PCG64 generators can be checkpointed, got {state['bit_generator']}")
    inner = state["state"]
    words = [inner["state"] >> 64, inner["state"] & _UINT64, inner["inc"] >> 64, inner["inc"] & _UINT64]
    return np.asarray([*words, state["has_uint32"], state["uinteger"]], np.uint64)


def generator_from_state(data: np.ndarray) -> np.random.Generator:
    """Inverse of ``generator_state``: a generator that continues exactly where the saved one was."""
    w = [int(x) for x in np.asarray(data, np.uint64)]
    if len(w) != 6:
        raise ValueError(f"sampler state: expected 6 words, got {len(w)}")
    bit_generator = np.random.PCG64()
    bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
    return np.random.Generator(bit_generator)


class Transitions(NamedTuple):
    """A batch of transitions; leading dimensions ``L`` are any (``[n]`` or ``[k, n]``).

    A NamedTuple so that it is a JAX pytree and can be handed to jitted functions.

    Attributes:
        obs: per observation, float32 ``[*L, *shape]``.
        next_obs: per observation, float32 ``[*L, *shape]``.
        continuous_actions: float32 ``[*L, continuous_size]``.
        discrete_actions: int32 ``[*L, num_branches]``.
        rewards: float32 ``[*L]``.
        dones: float32 ``[*L]``, 1.0 on true terminal steps.
        action_masks: bool ``[*L, sum(branches)]``, true = not allowed.
        next_action_masks: bool ``[*L, sum(branches)]`` for the next observation.
        memories: with memory, float32 ``[*L, memory_size]``, the actor's memory before the
            step (None without memory).
        loss_masks: with memory, float32 ``[*L]``, 1 on real steps and 0 on sequence padding
            (None without memory).
    """

    obs: tuple[np.ndarray, ...]
    next_obs: tuple[np.ndarray, ...]
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    action_masks: np.ndarray
    next_action_masks: np.ndarray
    memories: np.ndarray | None = None
    loss_masks: np.ndarray | None = None


class ReplayBuffer:
    """Ring buffer of transitions in preallocated numpy arrays.

    Args:
        capacity: the most transitions kept (ML-Agents' ``buffer_size``).
        obs_shapes: the per-agent shape of each observation.
        continuous_size: width of the continuous action.
        num_branches: number of discrete action branches.
        mask_size: sum of the discrete branch sizes (width of the action masks).
        memory_size: with memory, floats of the actor's memory per row (0: no memory).
        sequence_length: with memory, the rows of a sequence slot (the capacity is rounded
            up to a multiple of it).
    """

    def __init__(
        self,
        capacity: int,
        obs_shapes: Sequence[tuple[int, ...]],
        continuous_size: int,
        num_branches: int,
        mask_size: int,
        memory_size: int = 0,
        sequence_length: int = 0,
    ) -> None:
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        if memory_size and sequence_length < 1:
            raise ValueError(f"replay buffer with memory: sequence_length must be >= 1, got {sequence_length}")
        self.memory_size = int(memory_size)
        self.sequence_length = int(sequence_length) if memory_size else 0
        if self.sequence_length:
            capacity = -(-int(capacity) // self.sequence_length) * self.sequence_length
        self.capacity = int(capacity)
        self.obs_shapes = tuple(tuple(int(d) for d in s) for s in obs_shapes)
        self.continuous_size = int(continuous_size)
        self.num_branches = int(num_branches)
        self.mask_size = int(mask_size)
        c = self.capacity
        self._data = Transitions(
            obs=tuple(np.zeros((c, *s), np.float32) for s in self.obs_shapes),
            next_obs=tuple(np.zeros((c, *s), np.float32) for s in self.obs_shapes),
            continuous_actions=np.zeros((c, self.continuous_size), np.float32),
            discrete_actions=np.zeros((c, self.num_branches), np.int32),
            rewards=np.zeros((c,), np.float32),
            dones=np.zeros((c,), np.float32),
            action_masks=np.zeros((c, self.mask_size), bool),
            next_action_masks=np.zeros((c, self.mask_size), bool),
            memories=np.zeros((c, self.memory_size), np.float32) if self.memory_size else None,
            loss_masks=np.zeros((c,), np.float32) if self.memory_size else None,
        )
        self._size = 0
        self._position = 0  # where the next transition is written
        self._log = get_logger(__name__)

    @property
    def size(self) -> int:
        """Transitions held now (at most ``capacity``)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def _check(self, batch: Transitions) -> int:
        n = int(np.shape(batch.rewards)[0])
        expected = {
            "continuous_actions": (n, self.continuous_size),
            "discrete_actions": (n, self.num_branches),
            "rewards": (n,),
            "dones": (n,),
            "action_masks": (n, self.mask_size),
            "next_action_masks": (n, self.mask_size),
        }
        if self.memory_size:
            expected.update(memories=(n, self.memory_size), loss_masks=(n,))
        elif batch.memories is not None or batch.loss_masks is not None:
            raise ValueError("transitions carry memories but this replay buffer has no memory")
        for name, shape in expected.items():
            value = getattr(batch, name)
            if value is None:
                raise ValueError(f"transitions.{name}: missing (the replay buffer has memory)")
            got = np.shape(value)
            if got != shape:
                raise ValueError(f"transitions.{name}: shape {got}, expected {shape}")
        for name in ("obs", "next_obs"):
            arrays = getattr(batch, name)
            if len(arrays) != len(self.obs_shapes):
                raise ValueError(
                    f"transitions.{name}: {len(arrays)} observations, expected {len(self.obs_shapes)}"
                )
            for i, (a, s) in enumerate(zip(arrays, self.obs_shapes)):
                if np.shape(a) != (n, *s):
                    raise ValueError(f"transitions.{name}[{i}]: shape {np.shape(a)}, expected {(n, *s)}")
        return n

    @property
    def real_steps(self) -> int:
        """Real steps held: ``size`` without the sequences' padding rows."""
        if not self.memory_size:
            return self._size
        return int(np.count_nonzero(self._data.loss_masks[: self._size]))

    def add(self, batch: Transitions) -> None:
        """Appends ``n`` transitions (one fragment's consecutive steps), overwriting the oldest
        when full. With memory the fragment becomes whole sequences: zero rows (loss mask 0)
        are appended up to a multiple of ``sequence_length``.

        Raises:
            ValueError: naming the field whose shape does not fit this buffer.
        """
        n = self._check(batch)
        if n == 0:
            return
        if self.sequence_length:
            rows = -(-n // self.sequence_length) * self.sequence_length
            batch = jax.tree_util.tree_map(
                lambda a: np.concatenate([np.asarray(a), np.zeros((rows - n, *np.shape(a)[1:]), np.asarray(a).dtype)]), batch
            )
        self._write(batch)

    def _write(self, batch: Transitions) -> None:
        """Writes rows as they are (with memory: whole sequences) at the ring's position."""
        n = int(np.shape(batch.rewards)[0])
        if n > self.capacity:  # only the newest capacity transitions survive anyway
            batch = jax.tree_util.tree_map(lambda a: np.asarray(a)[n - self.capacity :], batch)
            n = self.capacity
        first = min(n, self.capacity - self._position)
        pairs = zip(jax.tree_util.tree_leaves(self._data), jax.tree_util.tree_leaves(batch))
        for dst, src in pairs:
            src = np.asarray(src)
            dst[self._position : self._position + first] = src[:first]
            if first < n:
                dst[: n - first] = src[first:]
        self._position = (self._position + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def sample_indices(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Uniform indices into the held transitions (with replacement), int64 ``shape``.

        Raises:
            ValueError: when the buffer is empty.
        """
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        if self.memory_size:  # single real rows: never a padding row
            real = np.flatnonzero(self._data.loss_masks[: self._size])
            if real.size == 0:
                raise ValueError("cannot sample from an empty replay buffer")
            return real[rng.integers(0, real.size, size=shape, dtype=np.int64)]
        return rng.integers(0, self._size, size=shape, dtype=np.int64)

    def sample_sequences(self, rng: np.random.Generator, num_sequences: int, num_batches: int) -> Transitions:
        """Whole sequence slots drawn uniformly (with replacement), as ML-Agents'
        ``sample_mini_batch``: ``[num_batches, num_sequences * sequence_length]`` rows,
        sequence by sequence, each in step order (``loss_masks`` 0 on padding).

        Raises:
            ValueError: without memory, or when the buffer is empty.
        """
        if not self.sequence_length:
            raise ValueError("sample_sequences needs a replay buffer with memory")
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        length = self.sequence_length
        starts = rng.integers(0, self._size // length, size=(num_batches, num_sequences), dtype=np.int64) * length
        rows = (starts[..., None] + np.arange(length)).reshape(num_batches, num_sequences * length)
        return self.gather(rows)

    def gather(self, indices: np.ndarray) -> Transitions:
        """The transitions at ``indices`` (any shape ``L``), as numpy arrays ``[*L, ...]``."""
        return jax.tree_util.tree_map(lambda a: a[indices], self._data)

    def sample(self, rng: np.random.Generator, batch_size: int, num_batches: int | None = None) -> Transitions:
        """Uniformly sampled transitions: ``[batch_size]`` or ``[num_batches, batch_size]``."""
        shape = (batch_size,) if num_batches is None else (num_batches, batch_size)
        return self.gather(self.sample_indices(rng, shape))

    def chronological(self) -> Transitions:
        """Every held transition, oldest first (copies)."""
        if self._size < self.capacity:
            return jax.tree_util.tree_map(lambda a: a[: self._size].copy(), self._data)
        order = np.concatenate([np.arange(self._position, self.capacity), np.arange(self._position)])
        return self.gather(order)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the held transitions to an ``.npz`` file, atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.chronological()
        arrays: dict[str, np.ndarray] = {
            "format_version": np.asarray(_FORMAT_VERSION),
            "continuous_actions": data.continuous_actions,
            "discrete_actions": data.discrete_actions,
            "rewards": data.rewards,
            "dones": data.dones,
            "action_masks": data.action_masks,
            "next_action_masks": data.next_action_masks,
        }
        if self.memory_size:
            arrays["memories"] = data.memories
            arrays["loss_masks"] = data.loss_masks
        for i, (o, n) in enumerate(zip(data.obs, data.next_obs)):
            arrays[f"obs_{i}"] = o
            arrays[f"next_obs_{i}"] = n
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._log.info("replay buffer saved", path=str(path), transitions=self._size, bytes=path.stat().st_size)

    def load(self, path: str | os.PathLike) -> None:
        """Replaces the contents with a file written by ``save``.

        A file with more transitions than ``capacity`` keeps its newest ones.

        Raises:
            ValueError: when the file is not a replay buffer of this behavior's shapes
                (the message names the file and the field).
            FileNotFoundError: when there is no such file.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as f:
                files = set(f.files)
                if "format_version" not in files or int(f["format_version"]) != _FORMAT_VERSION:
                    raise ValueError(f"{path}: not a Tandem replay buffer file (format {_FORMAT_VERSION})")
                n_obs = len(self.obs_shapes)
                for i in range(n_obs):
                    if f"obs_{i}" not in files:
                        raise ValueError(f"{path}: has no obs_{i}; the behavior has {n_obs} observations")
                if f"obs_{n_obs}" in files:
                    raise ValueError(f"{path}: has more observations than the behavior's {n_obs}")
                if self.memory_size and "memories" not in files:
                    raise ValueError(f"{path}: has no memories, the behavior's policy has memory (memory_size {self.memory_size})")
                if not self.memory_size and "memories" in files:
                    raise ValueError(f"{path}: holds memories, the behavior's policy has no memory")
                batch = Transitions(
                    obs=tuple(f[f"obs_{i}"] for i in range(n_obs)),
                    next_obs=tuple(f[f"next_obs_{i}"] for i in range(n_obs)),
                    continuous_actions=f["continuous_actions"],
                    discrete_actions=f["discrete_actions"],
                    rewards=f["rewards"],
                    dones=f["dones"],
                    action_masks=f["action_masks"],
                    next_action_masks=f["next_action_masks"],
                    memories=f["memories"] if "memories" in files else None,
                    loss_masks=f["loss_masks"] if "loss_masks" in files else None,
                )
                if self.sequence_length and np.shape(batch.rewards)[0] % self.sequence_length:
                    raise ValueError(f"{path}: its rows are not whole sequences of {self.sequence_length}")
        except FileNotFoundError:
            raise
        except (OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: unreadable replay buffer file: {e}") from e
        except ValueError as e:
            if str(e).startswith(str(path)):
                raise
            raise ValueError(f"{path}: unreadable replay buffer file: {e}") from e
        try:
            self._check(batch)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        self._size = 0
        self._position = 0
        self._write(batch)  # with memory: whole sequences already
        self._log.info("replay buffer loaded", path=str(path), transitions=self._size)
