"""One learner across hosts: ``jax.distributed``, one trainer process per host, in lockstep.

Why: a visual task's update outgrows one box's devices before its experience outgrows one
trainer's network; JAX's own distributed runtime (``jax.distributed.initialize``) joins the
devices of several hosts into one mesh, and the data-parallel update of
``trainer_server.learning.devices`` then spans them unchanged.

Topology (docs/SCALING.md, "Multi-host learner"): process 0 is the trainer the gateways see.
It serves ``tandem.v1.Trainer``, owns the behaviors, the buffers, the results folder
(snapshots, checkpoints, summaries) and every computation that is not an update. The other
processes (*followers*) serve nothing and write nothing: they contribute their devices to
every update. Process 0 sends them an ordered stream of commands through the key-value
store of JAX's coordination service (which process 0 hosts):

* ``learner`` (spec, settings, seed): build the same learner (the follower needs its compiled
  update, never its buffers), in the order process 0 builds them;
* ``update`` (which learner's update, the arguments' tree and shapes): every process enters
  the same collective: process 0's arguments (learner state, batch, key) are broadcast to all
  (``multihost_utils.broadcast_one_to_all``), placed on the global mesh (state replicated,
  batch split along its sample axis across every process's devices), and the update runs as
  one SPMD program, the gradient all-reduce spanning the hosts. Every process ends with the
  same replicated state; process 0 keeps its local copy and goes on alone;
* ``stop`` (process 0's exit code): the followers leave.

Process 0's state is the authority: it is broadcast with every update, so whatever process 0
did between updates (normalizer updates while processing, ``--resume``, behavioral cloning
after the update) reaches the followers without a protocol of its own. Every process logs a
digest of the updated state (``multi-host update``): equal digests = identical parameters.

Failures: a process that dies stops sending heartbeats, and JAX's coordination service ends
the others after ``heartbeat_timeout_s`` (a fatal error naming the dead task, exit status
134), never a hang; a follower that cannot reach the coordinator within
``initialization_timeout_s`` stops with an error saying so.

Shapes: commands are pickled Python objects (kilobytes); the arrays of an update travel
through the collective, not through the key-value store. The coordination service has no
authentication: its port belongs on a private network between the trainer hosts.
"""

from __future__ import annotations

import hashlib
import pickle
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from common.logging import get_logger

__all__ = [
    "Cluster",
    "DistributedUpdate",
    "follow",
    "initialize",
    "is_follower",
    "learner_factory",
    "spanning",
    "stop_followers",
    "wait_for_coordinator",
]

_log = get_logger(__name__)

#: the key-value store's keys of the command stream
_PREFIX = "tandem/command/"
#: how long one blocking read of the next command waits before it looks again (seconds)
_POLL_S = 2.0


@dataclass(frozen=True)
class Cluster:
    """Where this trainer process stands among the hosts (``--coordinator-address`` ...).

    Attributes:
        coordinator_address: ``host:port`` of process 0's coordination service.
        num_processes: trainer processes in all, one per host.
        process_id: this process's index, 0 = the one that serves gateways.
        initialization_timeout_s: how long a process waits for the coordinator and the others.
        heartbeat_timeout_s: how long a silent process is given before the others are ended.
    """

    coordinator_address: str
    num_processes: int
    process_id: int
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until a TCP connection to ``address`` succeeds.

    Why: JAX's client ends the process with a fatal log when it cannot register; this check
    first turns an unreachable coordinator into a clear error.

    Raises:
        TimeoutError: naming the address and the deadline.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, max(0.1, timeout_s))):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"the coordinator {address} (process 0, --coordinator-address) was not reachable within "
                f"{timeout_s:g} s ({last}): start process 0 first, check the address and the firewall"
            )
        time.sleep(0.2)


def initialize(cluster: Cluster) -> None:
    """Joins the cluster: ``jax.distributed.initialize`` before JAX starts its backends.

    Raises:
        TimeoutError: a follower could not reach the coordinator in time.
    """
    if cluster.process_id > 0:
        wait_for_coordinator(cluster.coordinator_address, cluster.initialization_timeout_s)
    _log.info(
        "joining the multi-host learner",
        coordinator=cluster.coordinator_address,
        process_id=cluster.process_id,
        num_processes=cluster.num_processes,
        waits_up_to_s=cluster.initialization_timeout_s,
    )
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address,
        num_processes=cluster.num_processes,
        process_id=cluster.process_id,
        initialization_timeout=cluster.initialization_timeout_s,
        heartbeat_timeout_seconds=cluster.heartbeat_timeout_s,
    )
    _channel.reset()
    _log.info("multi-host learner joined", process_id=jax.process_index(), processes=jax.process_count())


def is_follower() -> bool:
    """True in a process other than process 0 of a multi-host learner."""
    return jax.process_count() > 1 and jax.process_index() > 0


def spanning(local: Any) -> Any:
    """The placement over every process's devices, from this process's local one.

    Every process must call it (a collective): each says which local devices it trains on,
    and the mesh is their concatenation in process order.

    Args:
        local: this process's ``devices.Placement``.

    Raises:
        ValueError: the processes chose different numbers of devices.
    """
    from jax.sharding import Mesh

    from trainer_server.learning import devices as devices_mod

    counts = np.asarray(multihost_utils.process_allgather(np.int32(local.count))).reshape(-1)
    if len(set(counts.tolist())) != 1:
        raise ValueError(
            f"the trainer processes train on different numbers of devices ({counts.tolist()} by process): "
            "give every process the same --devices and torch_settings.device"
        )
    ids = np.asarray(multihost_utils.process_allgather(np.asarray([d.id for d in local.devices], np.int64)))
    by_id = {d.id: d for d in jax.devices(local.devices[0].platform)}
    mesh_devices = [by_id[int(i)] for i in ids.reshape(-1)]
    return devices_mod.Placement(
        devices=local.devices, mesh=Mesh(mesh_devices, (devices_mod.AXIS,)), processes=jax.process_count()
    )


class _Channel:
    """The ordered command stream from process 0 to the followers (the coordination
    service's key-value store: key ``tandem/command/<n>``, a pickled ``(kind, payload)``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._sent = 0
        self._received = 0
        self._unacknowledged: list[int] = []

    @staticmethod
    def _client() -> Any:
        from jax._src import distributed  # the runtime's client: JAX exports no public handle to it

        if distributed.global_state.client is None:
            raise RuntimeError("jax.distributed is not initialized")
        return distributed.global_state.client

    def send(self, kind: str, payload: Any) -> int:
        """Process 0: appends a command; returns its number."""
        with self._lock:
            number = self._sent
            self._client().key_value_set_bytes(f"{_PREFIX}{number}", pickle.dumps((kind, payload)))
            self._sent += 1
            self._unacknowledged.append(number)
            return number

    def forget_through(self, number: int) -> None:
        """Process 0: every follower has read the commands up to ``number`` (they took part in
        its collective): their keys are deleted."""
        with self._lock:
            done = [n for n in self._unacknowledged if n <= number]
            self._unacknowledged = [n for n in self._unacknowledged if n > number]
        for n in done:
            self._client().key_value_delete(f"{_PREFIX}{n}")

    def receive(self, stop: threading.Event | None = None) -> tuple[int, str, Any]:
        """A follower: the next command ``(number, kind, payload)``, waiting as long as it takes
        (process 0's death ends this process through JAX's heartbeat, not through a timeout here).

        Raises:
            InterruptedError: ``stop`` was set while waiting.
        """
        key = f"{_PREFIX}{self._received}"
        while True:
            if stop is not None and stop.is_set():
                raise InterruptedError("stopped while waiting for process 0")
            try:
                data = self._client().blocking_key_value_get_bytes(key, int(_POLL_S * 1000))
            except jax.errors.JaxRuntimeError as e:
                if "DEADLINE_EXCEEDED" in str(e):
                    continue
                raise
            number = self._received
            self._received += 1
            kind, payload = pickle.loads(data)
            return number, kind, payload


_channel = _Channel()
#: every ``DistributedUpdate`` of this process, in creation order (the same order on every process)
_updates: list["DistributedUpdate"] = []
_creation = threading.Lock()


@dataclass(frozen=True)
class _Leaf:
    """What a follower needs to take part in an update: one argument's shape and dtype."""

    shape: tuple[int, ...]
    dtype: str
    key: bool  # a typed PRNG key, sent as its raw uint32 data


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host(x: Any) -> np.ndarray:
    return np.asarray(jax.random.key_data(x) if _is_key(x) else x)


def _broadcast(host: list[np.ndarray] | None, layout: tuple[_Leaf, ...]) -> list[np.ndarray]:
    """Process 0's arrays on every process, as ONE int32 all-reduce of their packed bytes.

    Why one: several collectives in one program may run in a different order on each
    process on the CPU, which deadlocks gloo; and one transfer is cheaper than many.
    """
    sizes = [int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize for leaf in layout]
    total = -(-sum(sizes) // 4) * 4
    packed = np.zeros(total, np.uint8)
    if host is not None and host:
        packed[: sum(sizes)] = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in host])
    data = np.asarray(multihost_utils.broadcast_one_to_all(packed.view(np.int32)))
    data = data.astype(np.int32, copy=False).view(np.uint8)
    out, start = [], 0
    for size, leaf in zip(sizes, layout):
        out.append(data[start : start + size].view(leaf.dtype).reshape(leaf.shape))
        start += size
    return out


def digest(tree: Any) -> str:
    """A short SHA-256 of a pytree's arrays (their bytes in tree order)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(_host(leaf)).tobytes())
    return h.hexdigest()[:16]


class DistributedUpdate:
    """A learner's update as one SPMD program over every process's devices.

    Created by ``devices.compile_update`` when the placement spans several processes.
    Process 0 calls it like the plain compiled update (process-local arrays in, process-local
    arrays out); followers run the same program when ``follow`` reads its command.

    Args:
        fn: the learner's pure update ``fn(state, batch, key, ...) -> (state, metrics)``.
        shardings: the in-shardings (a pytree prefix of the arguments) on the global mesh.
        out_sharding: the outputs' sharding (replicated).
        compiler_options: XLA options for ``jax.jit`` (``shared.cpu_compiler_options``), or None.
    """

    def __init__(self, fn: Callable, shardings: tuple, out_sharding: Any, compiler_options: dict | None = None) -> None:
        self._fn = fn
        self._compiler_options = compiler_options
        self._shardings = shardings
        self._out_sharding = out_sharding
        self._compiled: dict[tuple, tuple[Callable, dict[str, Any]]] = {}
        self.index = len(_updates)
        _updates.append(self)

    def __call__(self, *args: Any) -> Any:
        leaves, treedef = jax.tree.flatten(args)
        host = [_host(x) for x in leaves]
        layout = tuple(_Leaf(a.shape, str(a.dtype), _is_key(x)) for a, x in zip(host, leaves))
        number = _channel.send("update", (self.index, treedef, layout))
        out = self.run(number, treedef, layout, host)
        _channel.forget_through(number)
        return out

    def run(self, number: int, treedef: Any, layout: tuple[_Leaf, ...], host: list[np.ndarray] | None) -> Any:
        """Takes part in update ``number``: process 0 gives its arguments (``host``), a follower
        None (zeros of the layout's shapes stand in, overwritten by the broadcast)."""
        received = _broadcast(host, layout)
        shardings = self._leaf_shardings(treedef)
        inputs = [
            jax.make_array_from_callback(leaf.shape, s, lambda index, a=a: a[index])
            for a, leaf, s in zip(received, layout, shardings)
        ]
        program, traced = self._program(treedef, layout, shardings)
        local = [x.addressable_data(0) for x in program(*inputs)]
        local = [jax.random.wrap_key_data(x) if key else x for x, key in zip(local, traced["keys"])]
        out = jax.tree.unflatten(traced["def"], local)
        _log.info("multi-host update", update=number, learner=self.index, digest=digest(out[0]))
        return out

    def _leaf_shardings(self, treedef: Any) -> list[Any]:
        args = jax.tree.unflatten(treedef, [0] * treedef.num_leaves)
        is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)  # noqa: E731
        full = jax.tree.map(
            lambda s, sub: jax.tree.map(lambda _: s, sub), self._shardings, args, is_leaf=is_sharding
        )
        return jax.tree.leaves(full, is_leaf=is_sharding)

    def _program(self, treedef: Any, layout: tuple[_Leaf, ...], shardings: list[Any]) -> tuple[Callable, dict]:
        """The jitted update over flat arguments (keys as raw data), and what its tracing
        learned of the outputs: their tree ("def") and which leaves are keys ("keys")."""
        entry = self._compiled.get((treedef, layout))
        if entry is None:
            traced: dict[str, Any] = {}

            def program(*raw):
                leaves = [jax.random.wrap_key_data(x) if leaf.key else x for x, leaf in zip(raw, layout)]
                out_leaves, traced["def"] = jax.tree.flatten(self._fn(*jax.tree.unflatten(treedef, leaves)))
                traced["keys"] = [_is_key(x) for x in out_leaves]
                return [jax.random.key_data(x) if _is_key(x) else x for x in out_leaves]

            jitted = jax.jit(
                program,
                in_shardings=tuple(shardings),
                out_shardings=self._out_sharding,
                compiler_options=self._compiler_options,
            )
            entry = (jitted, traced)
            self._compiled[(treedef, layout)] = entry
        return entry


def learner_factory(make: Callable[..., Any]) -> Callable[..., Any]:
    """Process 0's learner factory: tells the followers to build the same learner first.

    Args:
        make: ``make_learner(spec, settings, seed)``.
    """

    def factory(spec: Any, settings: Any, seed: int) -> Any:
        with _creation:
            _channel.send("learner", (len(_updates), spec, settings, seed))
            return make(spec, settings, seed)

    return factory


def stop_followers(exit_code: int) -> None:
    """Process 0: the followers may leave (with ``exit_code``: 0 = the run succeeded)."""
    _channel.send("stop", exit_code)


def follow(make: Callable[..., Any], stop: threading.Event | None = None) -> int:
    """A follower's whole life: runs process 0's commands until it says stop.

    Args:
        make: ``make_learner(spec, settings, seed)``.
        stop: set (by a signal) to leave early.

    Returns:
        Process 0's exit code (0: the run succeeded), or 1 when this process cannot follow.
    """
    _log.info("following process 0: this process serves no gateways and writes no results")
    #: process 0's update index -> this process's update (the same learner built here)
    mirrored: dict[int, DistributedUpdate] = {}
    #: process 0's first update index of a learner this process could not build -> why
    unbuilt: dict[int, str] = {}
    while True:
        try:
            number, kind, payload = _channel.receive(stop)
        except InterruptedError:
            _log.warning("stopped by a signal while following process 0 (it will stop too: heartbeat)")
            return 1
        if kind == "learner":
            first, spec, settings, seed = payload
            before = len(_updates)
            try:
                make(spec, settings, seed)  # only its compiled update is kept (``_updates``)
            except Exception as e:  # as process 0 refuses it too, unless a file it needs is missing here
                _log.warning("cannot build process 0's learner here", behavior=spec.name, error=str(e))
                unbuilt[first] = f"behavior {spec.name}: {e}"
                continue
            for k, update in enumerate(_updates[before:]):
                mirrored[first + k] = update
            _log.info("learner built", behavior=spec.name, command=number)
        elif kind == "update":
            index, treedef, layout = payload
            if index not in mirrored:
                why = unbuilt.get(index, "never announced")
                _log.error("process 0 updates a learner this process could not build", reason=why)
                return 1
            mirrored[index].run(number, treedef, layout, None)
        elif kind == "stop":
            _log.info("process 0 ended the run", exit_code=payload)
            return int(payload)
        else:
            _log.error("unknown command from process 0", kind=kind)
            return 1
