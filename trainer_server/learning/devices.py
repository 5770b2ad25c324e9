"""Which JAX devices the learners train on, and the data-parallel update across them.

Why: a trainer on a GPU box must train on the GPU that ML-Agents' ``torch_settings.device``
names (``cpu``, ``cuda``, ``cuda:N``), and a box with several devices should use them for
one update: ``--devices N|all`` splits every update's batch across N local devices.

How the data-parallel update works: the learners' pure update functions are unchanged;
``compile_update`` jits them with shardings over a one-axis mesh (``"data"``): the state
(parameters, Adam moments, normalizer) replicated on every device, the batch split along
its sample axis. XLA's SPMD partitioner then runs each device's share of every minibatch
and inserts the all-reduce that sums the gradient partials inside the compiled function
(the losses are means over the global minibatch, so the sum of the partials is the
global gradient); every device applies the same Adam step, so the replicas stay equal.
The global computation is the single-device one (same permutation, same minibatches, same
random draws: ``jax_threefry_partitionable``), so the result matches the single-device
update up to float reassociation. PPO's minibatches are gathered from the batch by a
random permutation; ``batch_constraint`` keeps each gathered minibatch split across the
devices (otherwise the partitioner may gather it whole on every device).

The placement is process-wide (JAX's devices are): ``tandem-trainer`` selects it once at
start-up with ``use(select(...))`` before any learner exists; learners read ``current()``
when they compile. Tests use ``use()`` and restore the previous placement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.logging import get_logger

__all__ = [
    "AXIS",
    "Placement",
    "batch_constraint",
    "check_batch_sizes",
    "compile_update",
    "current",
    "select",
    "split_sizes",
    "use",
]

#: the mesh axis the batch is split along
AXIS = "data"

_log = get_logger(__name__)


@dataclass(frozen=True)
class Placement:
    """The devices every learner of this process trains on.

    Attributes:
        devices: the local devices, the first one holding everything that is not sharded.
        mesh: a one-axis mesh (``AXIS``) over ``devices`` when there are several, else None;
            with several processes (``multihost.spanning``) over every process's devices.
        processes: the trainer processes the mesh spans (``jax.distributed``); 1 = this one.
    """

    devices: tuple[Any, ...]
    mesh: Mesh | None = None
    processes: int = 1

    @property
    def count(self) -> int:
        """The devices an update is split across (every process's, with several)."""
        return int(self.mesh.devices.size) if self.mesh is not None else len(self.devices)

    @property
    def data_parallel(self) -> bool:
        return self.mesh is not None

    @property
    def replicated(self) -> NamedSharding:
        """Every device holds the whole array (parameters, optimizer state, keys)."""
        return NamedSharding(self._mesh(), PartitionSpec())

    def sharded(self, axis: int) -> NamedSharding:
        """Arrays split along ``axis`` (the sample axis of a batch) across the devices."""
        return NamedSharding(self._mesh(), PartitionSpec(*([None] * axis), AXIS))

    def _mesh(self) -> Mesh:
        if self.mesh is None:
            raise RuntimeError("a single-device placement has no shardings")
        return self.mesh

    def describe(self) -> list[str]:
        """The devices as JAX names them, e.g. ``['cuda:0', 'cuda:1']``."""
        return [f"{d.platform}:{d.id}" for d in self.devices]


def select(platform: str | None = None, index: int | None = None, count: int | None = 1) -> Placement:
    """The devices to train on.

    Args:
        platform: ``"cpu"``, ``"gpu"``, or None for JAX's default backend (a GPU when the
            CUDA build sees one, else the CPU).
        index: one device of that platform by its index (``cuda:N``); needs ``count`` 1.
        count: how many local devices of the platform (``--devices N``); None = all.

    Raises:
        ValueError: the request cannot be met (no such platform or device, too few devices),
            naming what is available and the set-up that brings the rest.
    """
    if platform == "cpu":
        _prefer_cpu()
    try:
        available = jax.local_devices(backend=platform) if platform else jax.local_devices()
    except RuntimeError:
        found = sorted({d.platform for d in jax.devices()})
        hint = " (the CPU build of JAX is installed: `make setup JAX=cuda12` or `JAX=cuda13` installs the CUDA one)"
        raise ValueError(
            f"no {platform} device visible to JAX (found: {', '.join(found)})" + (hint if platform == "gpu" else "")
        ) from None
    if index is not None:
        if count != 1:
            many = "all" if count is None else count
            raise ValueError(f"device {platform}:{index} names one device; --devices {many} needs a platform (cuda or cpu)")
        if not 0 <= index < len(available):
            raise ValueError(f"device {platform}:{index} does not exist: {len(available)} {available[0].platform} device(s)")
        chosen = (available[index],)
    else:
        wanted = len(available) if count is None else count
        if wanted < 1 or wanted > len(available):
            hint = (
                " (on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N devices)"
                if available[0].platform == "cpu"
                else ""
            )
            raise ValueError(f"--devices {wanted}: only {len(available)} {available[0].platform} device(s) here{hint}")
        chosen = tuple(available[:wanted])
    mesh = Mesh(list(chosen), (AXIS,)) if len(chosen) > 1 else None
    return Placement(devices=tuple(chosen), mesh=mesh)


def _prefer_cpu() -> None:
    # before JAX starts its backends: a CPU run on a GPU box then does not take GPU memory
    try:
        jax.config.update("jax_platforms", "cpu")
    except Exception:  # backends already started (a test process): the CPU is there anyway
        pass


_current: Placement | None = None


def current() -> Placement:
    """The process's placement: what ``use`` set, else JAX's default device alone."""
    if _current is None:
        return Placement(devices=(jax.devices()[0],))
    return _current


def use(placement: Placement | None) -> Placement | None:
    """Makes ``placement`` the process's placement (None: back to JAX's default); returns
    the previous one. Unsharded computations (per-trajectory processing, acting) then run
    on its first device."""
    global _current
    previous, _current = _current, placement
    jax.config.update("jax_default_device", placement.devices[0] if placement is not None else None)
    if placement is not None:
        _log.info(
            "learner devices",
            devices=placement.describe(),
            data_parallel=placement.count if placement.data_parallel else 1,
            **({"processes": placement.processes} if placement.processes > 1 else {}),
        )
    return previous


def compile_update(
    fn: Callable,
    batch_sharding: Callable[[Placement], Any] | None = None,
    trailing_args: int = 1,
    compiler_options: dict[str, Any] | None = None,
) -> Callable:
    """``jax.jit(fn)`` for ``fn(state, batch, key, ...) -> (state, metrics)``, data-parallel when
    the current placement has several devices.

    Args:
        fn: the learner's pure update.
        batch_sharding: the batch argument's sharding (a pytree prefix of it) for a placement,
            e.g. ``lambda p: p.sharded(0)``; None = sharded along axis 0.
        trailing_args: the arguments after the batch (the key, then e.g. PPO's expert data
            for GAIL), all replicated.
        compiler_options: XLA options of this computation (``jax.jit``'s ``compiler_options``),
            e.g. ``shared.cpu_compiler_options()``; None = XLA's defaults.

    Returns:
        The compiled update: on one device plain ``jax.jit``; on several the state and key
        replicated, the batch split as ``batch_sharding`` says, every output replicated;
        across processes a ``multihost.DistributedUpdate`` (same call, process-local arrays).
    """
    placement = current()
    if not placement.data_parallel:
        return jax.jit(fn, compiler_options=compiler_options)
    batch = batch_sharding(placement) if batch_sharding is not None else placement.sharded(0)
    replicated = placement.replicated
    in_shardings = (replicated, batch) + (replicated,) * trailing_args
    if placement.processes > 1:  # every process runs it together (``multihost``)
        from trainer_server.learning.multihost import DistributedUpdate

        return DistributedUpdate(fn, in_shardings, replicated, compiler_options)
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=replicated, compiler_options=compiler_options)


def batch_constraint(axis: int = 0) -> Callable[[Any], Any]:
    """A function that keeps a pytree of batch arrays split along ``axis`` across the current
    placement's devices inside a compiled function (identity on one device)."""
    placement = current()
    if not placement.data_parallel:
        return lambda tree: tree
    sharding = placement.sharded(axis)
    return lambda tree: jax.lax.with_sharding_constraint(tree, sharding)


def split_sizes(settings: Any) -> dict[str, int]:
    """The hyperparameters whose sizes a data-parallel update splits: every learner's
    ``batch_size`` (a minibatch), and PPO's ``buffer_size`` (the batch it permutes)."""
    hp = settings.hyperparameters
    sizes = {"batch_size": int(hp.batch_size)}
    if str(getattr(settings.trainer_type, "value", settings.trainer_type)) == "ppo":
        sizes["buffer_size"] = int(hp.buffer_size)
    return sizes


def check_batch_sizes(name: str, settings: Any, count: int | None = None) -> None:
    """Refuses batch sizes the devices cannot split evenly.

    Args:
        name: the behavior (for the message).
        settings: its ``TrainerSettings``.
        count: the number of devices; None = the current placement's.

    Raises:
        ValueError: naming the behavior, the hyperparameter and the device count.
    """
    count = current().count if count is None else count
    for key, value in split_sizes(settings).items():
        if value % count:
            raise ValueError(
                f"behavior {name}: hyperparameters.{key} {value} is not a multiple of the {count} devices "
                f"the update is split across (--devices): choose a multiple or fewer devices"
            )
