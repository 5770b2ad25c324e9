"""Shared pieces of the trainer-service tests: a real gRPC gateway client, trajectory
builders, a small deterministic Learner and run options.

The Learner here is a stand-in for the algorithm only (the service and orchestration are
the code under test): it records exactly which trajectories reached it, so a test can
prove that a refused chunk never touched a buffer. PPO itself is tested in test_ppo*.py
and end to end in tests/e2e.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from common import specs as specs_mod
from common import trajectory as trajectory_mod
from common.architecture import PolicyArchitecture, parameter_shapes
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from common.trajectory import Trajectory
from trainer_server.app import TrainingApp
from trainer_server.results import RunResults
from trainer_server.config.schema import TrainerSettings
from trainer_server.timers import HierarchicalTimer
from tandem.v1 import trainer_pb2, trainer_pb2_grpc

BALL = BehaviorSpec(
    name="3DBall?team=0",
    observations=(ObservationSpec(name="VectorSensor", shape=(8,)),),
    action_spec=ActionSpec(continuous_size=2),
)
GRID = BehaviorSpec(
    name="Grid?team=0",
    observations=(ObservationSpec(name="VectorSensor", shape=(4,)),),
    action_spec=ActionSpec(discrete_branches=(3, 2)),
)


def test_support_module_has_no_tests() -> None:
    """(keeps pytest from reporting this helper module as empty)"""


# --------------------------------------------------------------------------- options


def make_options(
    results_dir: Path,
    run_id: str = "test-run",
    *,
    resume: bool | None = None,
    force: bool | None = None,
    inference: bool | None = None,
    initialize_from: str | None = None,
    max_steps: int = 1000,
    time_horizon: int = 16,
    summary_freq: int = 40,
    checkpoint_interval: int = 50,
    keep_checkpoints: int = 2,
    buffer_size: int = 20,
    init_path: str | None = None,
    even_checkpoints: bool = False,
    deterministic: bool | None = None,
    environment_parameters: dict | None = None,
):
    """Real ``RunOptions`` from an ML-Agents YAML (``default_settings``, optionally
    ``environment_parameters``) and mlagents-learn flags."""
    import argparse

    from trainer_server.config.loading import load_run_options

    section = {
        "trainer_type": "ppo",
        "hyperparameters": {"buffer_size": buffer_size, "batch_size": min(buffer_size, 16)},
        "max_steps": max_steps,
        "time_horizon": time_horizon,
        "summary_freq": summary_freq,
        "checkpoint_interval": checkpoint_interval,
        "keep_checkpoints": keep_checkpoints,
        "even_checkpoints": even_checkpoints,
    }
    if init_path:
        section["init_path"] = init_path
    Path(results_dir).mkdir(parents=True, exist_ok=True)
    config = Path(results_dir) / f".{run_id}-config.yaml"
    document: dict = {"default_settings": section}
    if environment_parameters is not None:
        document["environment_parameters"] = environment_parameters
    config.write_text(yaml.safe_dump(document))
    args = argparse.Namespace(
        run_id=run_id, results_dir=str(results_dir), resume=resume, force=force, inference=inference,
        initialize_from=initialize_from, seed=7, deterministic=deterministic,
    )
    return load_run_options(config, args)


# --------------------------------------------------------------------------- learner


class CountingLearner:
    """A deterministic Learner (the whole protocol): buffers trajectories, "updates" by
    shifting its parameters.

    ``seen`` keeps (instance, agent_id, first reward) of every trajectory it was given;
    ``parameter_calls`` counts ``policy_parameters()`` calls; ``save_extra`` writes
    ``EXTRA_FILE`` (its step) beside each checkpoint and ``load_extra`` reads it back
    into ``loaded_extra`` (None when missing).
    """

    EXTRA_FILE = "counting_extra.txt"
    #: off-policy by default: the app's mechanics are tested with chunks of any version;
    #: ``OnPolicyCountingLearner`` exercises the on-policy coupling
    on_policy = False

    def __init__(self, spec: BehaviorSpec, settings: TrainerSettings, seed: int) -> None:
        self.spec = spec
        self.buffer_size = int(settings.hyperparameters.buffer_size)
        self.arch = PolicyArchitecture(behavior_spec=spec, hidden_units=8, num_layers=1, normalize=True)
        rng = np.random.default_rng(seed)
        self.params = {
            k: rng.normal(size=s).astype(np.float32) * 0.1 for k, s in parameter_shapes(self.arch).items()
        }
        for k in self.params:
            if k.startswith("normalizer/var"):
                self.params[k] = np.ones_like(self.params[k])
        self.step = 0
        self.updates = 0
        self.buffered = 0
        self.seen: list[tuple[int, int, float]] = []
        self.optimizer = {"count": np.zeros((), np.int64), "mu": np.zeros(3, np.float32)}
        self.parameter_calls = 0
        self.loaded_extra: int | None = None

    def process_trajectory(self, trajectory: Trajectory) -> None:
        self.seen.append((trajectory.instance, trajectory.agent_id, float(trajectory.rewards[0])))
        self.step += len(trajectory)
        self.buffered += len(trajectory)

    def ready(self) -> bool:
        return self.buffered >= self.buffer_size

    @property
    def buffered_steps(self) -> int:
        return self.buffered if self.on_policy else 0

    def discard_buffered(self) -> int:
        dropped, self.buffered = (self.buffered, 0) if self.on_policy else (0, self.buffered)
        return dropped

    def update(self) -> dict[str, float]:
        self.buffered = max(0, self.buffered - self.buffer_size) if self.on_policy else 0
        self.updates += 1
        for k in self.params:
            if not k.startswith("normalizer/"):
                self.params[k] = self.params[k] + np.float32(0.01)
        self.optimizer = {"count": self.optimizer["count"] + 1, "mu": self.optimizer["mu"] + 0.5}
        return {"Losses/Policy Loss": 0.5 / self.updates, "Losses/Value Loss": 1.0, "Policy/Learning Rate": 3e-4}

    def policy_parameters(self) -> dict[str, np.ndarray]:
        self.parameter_calls += 1
        return dict(self.params)

    def architecture(self) -> PolicyArchitecture:
        return self.arch

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": {k: v.copy() for k, v in self.params.items()},
            "optimizer": {k: np.array(v) for k, v in self.optimizer.items()},
            "step": self.step,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.params = {k: np.asarray(v, np.float32) for k, v in state["params"].items()}
        self.optimizer = dict(state["optimizer"])
        self.step = int(state["step"])
        self.updates = int(state["updates"])

    def load_weights(self, state: dict[str, Any]) -> None:
        """Weights and optimizer of a checkpoint; the step and update count start over."""
        self.params = {k: np.asarray(v, np.float32) for k, v in state["params"].items()}
        self.optimizer = dict(state["optimizer"])

    def save_extra(self, folder: Path) -> None:
        (Path(folder) / self.EXTRA_FILE).write_text(str(self.step))

    def load_extra(self, folder: Path) -> None:
        path = Path(folder) / self.EXTRA_FILE
        self.loaded_extra = int(path.read_text()) if path.is_file() else None


class OnPolicyCountingLearner(CountingLearner):
    """``CountingLearner`` as an on-policy learner: an update trains on ``buffer_size`` steps,
    the rest stays buffered until the trainer discards it (as PPO)."""

    on_policy = True


class LearnerRegistry:
    """A learner factory that remembers the learners it made (by behavior name)."""

    def __init__(self, learner_class: type[CountingLearner] = CountingLearner) -> None:
        self.learners: dict[str, CountingLearner] = {}
        self.learner_class = learner_class

    def __call__(self, spec: BehaviorSpec, settings: TrainerSettings, seed: int) -> CountingLearner:
        learner = self.learner_class(spec, settings, seed)
        self.learners[spec.name] = learner
        return learner


# --------------------------------------------------------------------------- experience


def make_trajectory(
    spec: BehaviorSpec, steps: int, *, first_reward: float = 0.1, instance: int = 0, agent_id: int = 0,
    done: bool = False, episode_return: float = 0.0, version: int = 1,
) -> Trajectory:
    a = spec.action_spec
    rng = np.random.default_rng(int(first_reward * 1000) + agent_id)
    rewards = np.full(steps, 0.1, np.float32)
    rewards[0] = first_reward
    return Trajectory(
        instance=instance,
        agent_id=agent_id,
        observations=[rng.normal(size=(steps, *o.shape)).astype(np.float32) for o in spec.observations],
        next_observations=[rng.normal(size=o.shape).astype(np.float32) for o in spec.observations],
        continuous_actions=rng.normal(size=(steps, a.continuous_size)).astype(np.float32),
        discrete_actions=np.zeros((steps, a.num_branches), np.int32),
        log_probs=np.full(steps, -1.0, np.float32),
        rewards=rewards,
        action_masks=np.zeros((steps, a.mask_size), bool),
        policy_versions=np.full(steps, version, np.int64),
        done=done,
        episode_return=episode_return,
        episode_length=steps if done else 0,
    )


def chunk_message(
    spec: BehaviorSpec, sequence: int, trajectories: list[Trajectory], stats: list[tuple[str, float, str]] = ()
) -> trainer_pb2.GatewayMessage:
    chunk = trainer_pb2.ExperienceChunk(sequence=sequence, behavior=spec.name)
    for t in trajectories:
        trajectory_mod.to_proto(t, chunk.trajectories.add())
    for key, value, aggregation in stats:
        chunk.stats.add(key=key, value=value, aggregation=aggregation)
    return trainer_pb2.GatewayMessage(chunk=chunk)


def hello_message(gateway_id: str, *behaviors: BehaviorSpec) -> trainer_pb2.GatewayMessage:
    hello = trainer_pb2.Hello(gateway_id=gateway_id, num_instances=1)
    for b in behaviors:
        specs_mod.to_proto(b, hello.behaviors.add())
    return trainer_pb2.GatewayMessage(hello=hello)


# --------------------------------------------------------------------------- a run without a server


def prepare_results(options) -> RunResults:
    """The results folder of ``options`` (run-id rules applied), as ``trainer_server.main`` prepares it."""
    cs = options.checkpoint_settings
    return RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force, inference=cs.inference)


def train_app(options, steps_per_chunk: int, chunks: int, *, registry=None, behaviors=(BALL,), episode_every: int = 2):
    """Runs a ``TrainingApp`` (no server) on ``chunks`` chunks per behavior, then stops it.

    Returns:
        (the app, its results, the learner registry).
    """
    registry = registry or LearnerRegistry()
    results = prepare_results(options)
    results.write_configuration(options)
    app = TrainingApp(options, results, HierarchicalTimer(), learner_factory=registry)
    app.start()
    for b in behaviors:
        app.register_behavior(b)
    for seq in range(1, chunks + 1):
        for b in behaviors:
            done = seq % episode_every == 0
            t = make_trajectory(b, steps_per_chunk, first_reward=float(seq), done=done, episode_return=float(seq))
            app.submit(f"gw-{b.name}", seq, b.name, [t], [("Custom/Speed", seq, "most_recent")])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not app.finished.is_set():
        if all(registry.learners[b.name].step >= min(options.default_settings.max_steps, steps_per_chunk * chunks) for b in behaviors):
            break
        time.sleep(0.02)
    app.stop()
    app.join(20)
    return app, results, registry


# --------------------------------------------------------------------------- gRPC client


class GatewayClient:
    """A real ``Trainer.Connect`` stream: ``send`` messages, ``recv`` replies with a timeout.

    Collection grants (flow control) are kept apart in ``grants`` (and the ``grant_received``
    condition): ``recv`` returns the other messages, in order.
    """

    def __init__(self, channel: grpc.Channel, metadata: tuple = ()) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self.grants: list[trainer_pb2.CollectionGrant] = []
        self.grant_received = threading.Condition()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        stub = trainer_pb2_grpc.TrainerStub(channel)
        self._call = stub.Connect(iter(self._requests.get, None), metadata=metadata)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for message in self._call:
                if message.HasField("grant"):
                    with self.grant_received:
                        self.grants.append(message.grant)
                        self.grant_received.notify_all()
                    continue
                self._responses.put(message)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def send(self, message: trainer_pb2.GatewayMessage) -> None:
        self._requests.put(message)

    def recv(self, timeout: float = 10.0) -> trainer_pb2.TrainerMessage:
        return self._responses.get(timeout=timeout)

    def wait_grants(self, predicate, timeout: float = 30.0) -> list[trainer_pb2.CollectionGrant]:
        """Waits until ``predicate(grants received so far)`` holds; returns those grants."""
        with self.grant_received:
            assert self.grant_received.wait_for(lambda: predicate(self.grants), timeout), list(self.grants)
            return list(self.grants)

    def recv_until(self, predicate, timeout: float = 10.0) -> list[trainer_pb2.TrainerMessage]:
        """Receives messages until one satisfies ``predicate``; returns all received."""
        out = []
        while True:
            message = self.recv(timeout)
            out.append(message)
            if predicate(message):
                return out

    def wait_end(self, timeout: float = 10.0) -> grpc.RpcError | None:
        assert self.ended.wait(timeout), "stream did not end"
        return self.error

    def close(self) -> None:
        self._requests.put(None)

    def cancel(self) -> None:
        self._call.cancel()
        self.ended.wait(5)
