"""ML-Agents' own PPO and SAC update, timed: the other half of ``bench_vs_mlagents``.

Why a separate script: it runs under ML-Agents' interpreter (``/work/mlagents-venv``, torch
on the CPU), which has none of this project's packages, while ``bench_vs_mlagents`` runs
under ours; the bench starts this script in a subprocess and reads one JSON line from it.

What it times is ML-Agents' code itself: a ``TorchPolicy`` and ``TorchPPOOptimizer`` /
``TorchSACOptimizer`` built from ML-Agents' ``TrainerSettings``, fed an ``AgentBuffer`` of
synthetic steps with every key the optimizers read. PPO: one update is what ML-Agents'
on-policy trainer does per update (advantages normalized over the buffer, then per epoch
a shuffle and ``optimizer.update`` + ``update_reward_signals`` on each minibatch). SAC: one
gradient step is a ``sample_mini_batch`` from the replay buffer, the extrinsic reward
evaluation and ``optimizer.update`` (ML-Agents' off-policy trainer loop).

Usage (one JSON object on the command line, one JSON line out)::

    python mlagents_update_worker.py '{"algorithm": "ppo", "buffer_size": 12000, "batch_size": 64,
        "num_epoch": 3, "hidden_units": 128, "num_layers": 2, "normalize": true, "repeats": 3}'

Output: ``{"seconds": [wall per timed repeat], "cpu_seconds": [process CPU per repeat],
"torch_threads": n, "torch": version}``; PPO
repeats are whole updates, SAC repeats are ``steps`` gradient steps each.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from mlagents.torch_utils import torch
from mlagents.trainers.buffer import AgentBuffer, BufferKey, RewardSignalUtil
from mlagents.trainers.policy.torch_policy import TorchPolicy
from mlagents.trainers.settings import TrainerSettings
from mlagents.trainers.torch_entities.networks import SimpleActor
from mlagents.trainers.trajectory import ObsUtil
from mlagents_envs.base_env import ActionSpec, BehaviorSpec, DimensionProperty, ObservationSpec, ObservationType

#: the benchmarked behavior: 3DBall's sizes (8 vector observations, 2 continuous actions)
OBSERVATION_SIZE, ACTION_SIZE = 8, 2


def behavior_spec() -> BehaviorSpec:
    obs = ObservationSpec(
        shape=(OBSERVATION_SIZE,), dimension_property=(DimensionProperty.NONE,),
        observation_type=ObservationType.DEFAULT, name="vector",
    )
    return BehaviorSpec(observation_specs=[obs], action_spec=ActionSpec.create_continuous(ACTION_SIZE))


def settings(args: dict) -> TrainerSettings:
    """ML-Agents' typed settings from the bench's sizes (everything else ML-Agents' default)."""
    from mlagents.plugins.trainer_type import register_trainer_plugins

    register_trainer_plugins()  # what mlagents-learn does first: makes "ppo" and "sac" known
    hyper = {"batch_size": args["batch_size"], "buffer_size": args["buffer_size"]}
    if args["algorithm"] == "ppo":
        hyper["num_epoch"] = args["num_epoch"]
    else:
        hyper.update({"buffer_init_steps": 0, "steps_per_update": 1.0})
    return TrainerSettings.structure(
        {
            "trainer_type": args["algorithm"],
            "hyperparameters": hyper,
            "network_settings": {
                "hidden_units": args["hidden_units"], "num_layers": args["num_layers"], "normalize": args["normalize"],
            },
        },
        TrainerSettings,
    )


def fill(buffer: AgentBuffer, steps: int, rng: np.random.Generator, off_policy: bool) -> None:
    """``steps`` synthetic steps with every key ML-Agents' optimizers read."""
    obs = rng.normal(size=(steps, OBSERVATION_SIZE)).astype(np.float32)
    buffer[ObsUtil.get_name_at(0)].extend(list(obs))
    buffer[ObsUtil.get_name_at_next(0)].extend(list(np.roll(obs, -1, axis=0)))
    buffer[BufferKey.CONTINUOUS_ACTION].extend(list(rng.normal(size=(steps, ACTION_SIZE)).astype(np.float32)))
    buffer[BufferKey.DISCRETE_ACTION].extend(list(np.zeros((steps, 0), np.int64)))
    buffer[BufferKey.ACTION_MASK].extend(list(np.ones((steps, 0), np.float32)))
    buffer[BufferKey.CONTINUOUS_LOG_PROBS].extend(list(rng.normal(-1.0, 0.1, size=(steps, ACTION_SIZE)).astype(np.float32)))
    buffer[BufferKey.DISCRETE_LOG_PROBS].extend(list(np.zeros((steps, 0), np.float32)))
    buffer[BufferKey.MASKS].extend([1.0] * steps)
    buffer[BufferKey.DONE].extend(list((rng.random(steps) < 0.01).astype(np.float32)))
    buffer[BufferKey.ENVIRONMENT_REWARDS].extend(list(rng.normal(size=steps).astype(np.float32)))
    if not off_policy:
        buffer[BufferKey.ADVANTAGES].extend(list(rng.normal(size=steps).astype(np.float32)))
        # ML-Agents 1.1.0 keys value estimates and returns alike (one field serves both)
        for key in {RewardSignalUtil.value_estimates_key("extrinsic"), RewardSignalUtil.returns_key("extrinsic")}:
            buffer[key].extend(list(rng.normal(size=steps).astype(np.float32)))


def ppo_update(optimizer, buffer: AgentBuffer, args: dict) -> None:
    """One update as ML-Agents' on-policy trainer runs it (no memory: sequence length 1)."""
    advantages = np.asarray(buffer[BufferKey.ADVANTAGES].get_batch(), np.float32)
    buffer[BufferKey.ADVANTAGES].set(list((advantages - advantages.mean()) / (advantages.std() + 1e-10)))
    batch = args["batch_size"]
    for _ in range(args["num_epoch"]):
        buffer.shuffle(sequence_length=1)
        for start in range(0, (buffer.num_experiences // batch) * batch, batch):
            minibatch = buffer.make_mini_batch(start, start + batch)
            optimizer.update(minibatch, batch)
            optimizer.update_reward_signals(minibatch)


def sac_steps(optimizer, buffer: AgentBuffer, args: dict) -> None:
    """``steps`` gradient steps as ML-Agents' off-policy trainer runs them."""
    for _ in range(args["steps"]):
        minibatch = buffer.sample_mini_batch(args["batch_size"], sequence_length=1)
        for name, signal in optimizer.reward_signals.items():
            minibatch[RewardSignalUtil.rewards_key(name)] = signal.evaluate(minibatch) * signal.strength
        optimizer.update(minibatch, args["batch_size"])


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    rng = np.random.default_rng(0)
    trainer_settings = settings(args)
    spec = behavior_spec()
    off_policy = args["algorithm"] == "sac"
    kwargs = {"conditional_sigma": off_policy, "tanh_squash": off_policy}
    policy = TorchPolicy(0, spec, trainer_settings.network_settings, SimpleActor, kwargs)
    if off_policy:
        from mlagents.trainers.sac.optimizer_torch import TorchSACOptimizer as Optimizer
    else:
        from mlagents.trainers.ppo.optimizer_torch import TorchPPOOptimizer as Optimizer
    optimizer = Optimizer(policy, trainer_settings)
    buffer = AgentBuffer()
    fill(buffer, args["replay_steps"] if off_policy else args["buffer_size"], rng, off_policy)
    run = sac_steps if off_policy else ppo_update
    if off_policy:
        sac_steps(optimizer, buffer, {**args, "steps": 20})  # warm-up
    seconds, cpu_seconds = [], []
    for _ in range(args["repeats"]):
        start, cpu = time.perf_counter(), time.process_time()
        run(optimizer, buffer, args)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu)
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
