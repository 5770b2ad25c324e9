"""Reward signals: each signal's rewards and training, per-signal GAE, checkpoints, support."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from benchmarks.direct_rollout import DirectRunner, task_spec
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from tests.trainer_server.config.config_helpers import SHARED_CONFIGS
from trainer_server.config.loading import load_run_options, trainer_settings_from_dict
from trainer_server.config.schema import CuriositySettings, GAILSettings, NetworkSettings, RewardSignalSettings, RNDSettings
from trainer_server.config.support import SUPPORTED_REWARD_SIGNALS, check_supported
from trainer_server.learning import ppo
from trainer_server.learning.ppo import PPOLearner
from trainer_server.learning.reward_signals import ExpertData, RewardSignals, SignalBatch
from trainer_server.learning.reward_signals.curiosity import CuriositySignal
from trainer_server.learning.reward_signals.gail import GAILSignal
from trainer_server.learning.reward_signals.rnd import RNDSignal
from trainer_server.learning.sac import SACLearner
from unity_standin.side_channels import SideChannels
from unity_standin.tasks import TaskOptions, make_task

SPEC = BehaviorSpec(
    name="S?team=0",
    observations=(ObservationSpec(name="v", shape=(6,)),),
    action_spec=ActionSpec(continuous_size=2, discrete_branches=(3, 2)),
)
SMALL = NetworkSettings(hidden_units=32, num_layers=1)


def _batch(rng: np.random.Generator, n: int = 64, shift: float = 0.0) -> SignalBatch:
    obs = rng.standard_normal((n, 6)).astype(np.float32) + shift
    return SignalBatch(
        observations=(jnp.asarray(obs),),
        next_observations=(jnp.asarray(obs + 0.1),),
        continuous_actions=jnp.asarray(rng.uniform(-1, 1, (n, 2)).astype(np.float32)),
        discrete_actions=jnp.asarray(np.stack([rng.integers(0, 3, n), rng.integers(0, 2, n)], 1).astype(np.int32)),
        dones=jnp.zeros((n,), jnp.float32),
        rewards=jnp.asarray(rng.standard_normal(n).astype(np.float32)),
    )


def _train(signal, state, batch, steps: int, expert=None):
    step = jax.jit(lambda s, k: signal.update(s, batch, None, k, expert))
    metrics = []
    for i in range(steps):
        state, m = step(state, jax.random.key(i))
        metrics.append(jax.device_get(m))
    return state, metrics


def test_curiosity_rewards_are_zero_before_its_first_update_then_positive_capped_and_its_forward_loss_falls() -> None:
    rng = np.random.default_rng(0)
    signal = CuriositySignal(SPEC, CuriositySettings(strength=0.5, network_settings=SMALL))
    state = signal.init(jax.random.key(0))
    batch = _batch(rng)
    assert np.asarray(signal.rewards(state, batch, None)).shape == (64,)
    assert np.all(np.asarray(signal.rewards(state, batch, None)) == 0.0)  # ML-Agents: 0 until trained once
    state, metrics = _train(signal, state, batch, 60)
    rewards = np.asarray(signal.rewards(state, batch, None))
    assert np.all(rewards >= 0.0) and np.all(rewards <= 2.0) and rewards.max() > 0.0  # capped at 1 / strength
    forward = [m["Losses/Curiosity Forward Loss"] for m in metrics]
    inverse = [m["Losses/Curiosity Inverse Loss"] for m in metrics]
    assert forward[-1] < 0.5 * forward[0]  # repeated transitions become predictable
    assert inverse[-1] < inverse[0]


def test_rnd_predictor_error_falls_on_seen_states_and_stays_high_on_unseen_ones() -> None:
    rng = np.random.default_rng(1)
    signal = RNDSignal(SPEC, RNDSettings(learning_rate=1e-2, network_settings=SMALL))
    state = signal.init(jax.random.key(1))
    seen, unseen = _batch(rng), _batch(rng, shift=4.0)
    before = np.asarray(signal.rewards(state, seen, None))
    assert before.shape == (64,) and np.all(before > 0.0)
    target = jax.tree_util.tree_map(np.asarray, state["target"])
    state, metrics = _train(signal, state, seen, 200)
    after = np.asarray(signal.rewards(state, seen, None))
    assert after.mean() < 0.3 * before.mean()
    assert np.asarray(signal.rewards(state, unseen, None)).mean() > 2.0 * after.mean()
    assert metrics[-1]["Losses/RND Loss"] < metrics[0]["Losses/RND Loss"]
    for name, value in target.items():  # the target network is never trained
        np.testing.assert_array_equal(np.asarray(state["target"][name]), value)


@dataclass(frozen=True)
class _Demos:
    """What GAIL reads of a ``Demonstrations`` (built from arrays, as the tests of the reader do)."""

    observations: tuple[np.ndarray, ...]
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    dones: np.ndarray


def _expert(rng: np.random.Generator, n: int = 256) -> _Demos:
    obs = (rng.standard_normal((n, 6)) * 0.3 + 2.0).astype(np.float32)  # the expert lives elsewhere
    return _Demos(
        observations=(obs,),
        continuous_actions=np.tanh(obs[:, :2]).astype(np.float32),
        discrete_actions=np.zeros((n, 2), np.int32),
        dones=np.zeros(n, bool),
    )


@pytest.mark.parametrize("use_actions,use_vail", [(False, False), (True, True)])
def test_gail_discriminator_separates_expert_from_random_steps(use_actions: bool, use_vail: bool) -> None:
    rng = np.random.default_rng(2)
    settings = GAILSettings(demo_path="unused.demo", learning_rate=1e-3, use_actions=use_actions, use_vail=use_vail, network_settings=SMALL)
    signal = GAILSignal(SPEC, settings)
    state = signal.init(jax.random.key(2))
    demos = _expert(rng)
    expert = ExpertData.from_demonstrations(demos)
    policy = _batch(rng)
    state, metrics = _train(signal, state, policy, 150, expert)
    last = metrics[-1]
    assert last["Policy/GAIL Expert Estimate"] > 0.6 and last["Policy/GAIL Expert Estimate"] - last["Policy/GAIL Policy Estimate"] > 0.3
    assert metrics[-1]["Losses/GAIL Loss"] < metrics[0]["Losses/GAIL Loss"]
    penalty = np.asarray([m["Policy/GAIL Grad Mag Loss"] for m in metrics])
    assert np.all(np.isfinite(penalty)) and np.all(penalty > 0.0)
    expert_steps = SignalBatch(
        observations=(jnp.asarray(demos.observations[0][:64]),),
        next_observations=(jnp.asarray(demos.observations[0][:64]),),
        continuous_actions=jnp.asarray(demos.continuous_actions[:64]),
        discrete_actions=jnp.asarray(demos.discrete_actions[:64]),
        dones=jnp.zeros((64,), jnp.float32),
        rewards=jnp.zeros((64,), jnp.float32),
    )
    r_expert, r_policy = np.asarray(signal.rewards(state, expert_steps, None)), np.asarray(signal.rewards(state, policy, None))
    assert r_expert.shape == r_policy.shape == (64,)
    assert np.all(r_policy >= 0.0) and r_expert.mean() > 1.5 * r_policy.mean()  # -log(1 - D): higher where D says expert
    if use_vail:
        assert "Losses/GAIL KL Loss" in last and np.isfinite(last["Losses/GAIL KL Loss"])
        assert float(state["beta"]) >= 0.0 and state["params"]["z_sigma"].shape == (128,)


def test_vail_bottleneck_raises_beta_while_the_kl_exceeds_its_target() -> None:
    rng = np.random.default_rng(3)
    settings = GAILSettings(demo_path="unused.demo", use_vail=True, network_settings=SMALL)
    signal = GAILSignal(SPEC, settings)
    state = signal.init(jax.random.key(3))
    assert float(state["beta"]) == 0.0
    state, metrics = _train(signal, state, _batch(rng), 5, ExpertData.from_demonstrations(_expert(rng)))
    kl = metrics[0]["Losses/GAIL KL Loss"]
    assert kl > 0.5  # 128 unit-variance codes: far above the information target
    assert float(state["beta"]) == pytest.approx(sum(5e-4 * (m["Losses/GAIL KL Loss"] - 0.5) for m in metrics), rel=1e-4)


def _gae_loop(rewards, values, bootstrap, gamma, lambd):
    advantages, last = np.zeros(len(rewards)), 0.0
    for t in reversed(range(len(rewards))):
        next_value = bootstrap if t == len(rewards) - 1 else values[t + 1]
        last = rewards[t] + gamma * next_value - values[t] + gamma * lambd * last
        advantages[t] = last
    return advantages, advantages + values


@pytest.mark.parametrize("terminal", [False, True])
def test_ppo_gae_per_signal_matches_a_python_loop_with_each_gamma_and_curiosity_bootstrapping_past_terminals(terminal: bool) -> None:
    spec = replace(SPEC, action_spec=ActionSpec(discrete_branches=(3,)))
    settings = trainer_settings(
        "ppo",
        time_horizon=8,
        hyperparameters={"batch_size": 8, "buffer_size": 16, "lambd": 0.8},
        reward_signals={
            "curiosity": {"gamma": 0.7, "strength": 0.5, "network_settings": {"hidden_units": 16, "num_layers": 1}},
            "extrinsic": {"gamma": 0.9, "strength": 2.0},
        },
    )
    learner = PPOLearner(spec, settings, seed=0)
    assert learner.signals.names == ("extrinsic", "curiosity")  # extrinsic first: head 0 is critic/value
    rng = np.random.default_rng(4)
    obs, nxt = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    out = learner.act([obs])
    rewards = rng.standard_normal(5).astype(np.float32)
    state = learner._state
    all_obs = np.vstack([obs, nxt])
    values = np.asarray(ppo.networks.critic_values(state.params["actor"], state.params["critic"], learner.policy_architecture, [jnp.asarray(all_obs)], None, False, learner.signals.names))
    from common.trajectory import Trajectory

    learner.process_trajectory(
        Trajectory(
            instance=0, agent_id=0, observations=[obs], next_observations=[nxt],
            continuous_actions=np.zeros((5, 0), np.float32), discrete_actions=out.discrete, log_probs=out.log_probs,
            rewards=rewards, action_masks=np.zeros((5, 3), bool), policy_versions=np.zeros(5, np.int64), done=terminal,
        )
    )
    chunk = learner.rollout_buffer.chronological()
    assert chunk["values"].shape == (5, 2) and chunk["returns"].shape == (5, 2)
    # curiosity has not been trained yet: its rewards are 0 (ML-Agents), extrinsic ones are scaled by strength
    ext_adv, ext_ret = _gae_loop(2.0 * rewards, values[:5, 0], 0.0 if terminal else values[5, 0], 0.9, 0.8)
    cur_adv, cur_ret = _gae_loop(np.zeros(5), values[:5, 1], values[5, 1], 0.7, 0.8)  # ignores the episode's end
    np.testing.assert_allclose(chunk["returns"][:, 0], ext_ret, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunk["returns"][:, 1], cur_ret, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(chunk["advantages"], (ext_adv + cur_adv) / 2, rtol=1e-4, atol=1e-4)  # mean over signals
    np.testing.assert_allclose(chunk["next_observations"][0][-1], nxt)
    np.testing.assert_array_equal(chunk["dones"], [0, 0, 0, 0, float(terminal)])


def _pyramids_expert(episodes: int = 10) -> _Demos:
    """A scripted expert stepped on the stand-in task directly: left to the switch, then right to the goal."""
    task = make_task("pyramids", TaskOptions(seed=1, num_agents=1), SideChannels())
    name, one = task.behaviors[0].name, np.arange(1)
    task.begin_episodes(name, one)
    obs, actions, dones = [], [], []
    while sum(dones) < episodes:
        obs.append(task.observe(name, one)[0][0])
        action = np.where(task.pressed, 2, 1)[:, None].astype(np.int32)
        result = task.act({name: (np.zeros((1, 0), np.float32), action)})[name]
        actions.append(action[0])
        dones.append(bool(result.ended[0]))
        if result.ended[0]:
            assert result.reward[0] == 1.0  # the expert always reaches the goal
            task.begin_episodes(name, one)
    return _Demos((np.stack(obs),), np.zeros((len(obs), 0), np.float32), np.stack(actions), np.asarray(dones))


def _run_pyramids(trainer_type: str, signals: dict, steps: int, **hyper):
    spec = task_spec("pyramids")
    settings = trainer_settings(trainer_type, time_horizon=32, network_settings={"hidden_units": 32, "num_layers": 1},
                                hyperparameters=hyper, reward_signals=signals)
    demos = _pyramids_expert() if "gail" in signals else None
    learner = (PPOLearner if trainer_type == "ppo" else SACLearner)(spec, settings, seed=0, demonstrations=demos)
    runner = DirectRunner("pyramids", learner, 32, num_agents=8)
    runner.run(steps)
    return learner, runner


SIGNALS = {
    "extrinsic": {"gamma": 0.99, "strength": 1.0},
    "curiosity": {"strength": 0.02, "network_settings": {"hidden_units": 16, "num_layers": 1}},
    "rnd": {"strength": 0.01, "network_settings": {"hidden_units": 16, "num_layers": 1}},
}


def _same_leaves(a, b) -> bool:
    left, right = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(left) == len(right) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(left, right))


def test_ppo_with_curiosity_and_rnd_trains_reports_mlagents_tags_and_resumes_from_its_checkpoint() -> None:
    learner, runner = _run_pyramids("ppo", SIGNALS, 640, batch_size=64, buffer_size=256, num_epoch=1)
    assert learner.update_count >= 1 and learner.trace_counts["update"] == 1 and learner.trace_counts["process"] == 1
    tags = {"Losses/Curiosity Forward Loss", "Losses/Curiosity Inverse Loss", "Losses/RND Loss", "Losses/Value Loss",
            "Policy/Extrinsic Value Estimate", "Policy/Curiosity Value Estimate", "Policy/Rnd Value Estimate"}
    assert tags <= set(runner.last_metrics)
    assert all(np.isfinite(v) for v in runner.last_metrics.values())
    state = serialization.msgpack_restore(serialization.msgpack_serialize(learner.state_dict()))
    twin = PPOLearner(learner.spec, learner.settings, seed=99)
    twin.load_state_dict(state)
    assert _same_leaves(learner._state.signals, twin._state.signals)
    assert _same_leaves(learner._state.params, twin._state.params)
    assert "critic/value/curiosity/kernel" in twin._state.params["critic"]
    # the same fragment gets the same signal rewards, values and returns from both
    obs = task_spec("pyramids")
    rng = np.random.default_rng(6)
    x = np.zeros((6, 33), np.float32)
    x[np.arange(6), rng.integers(0, 11, 6)] = 1.0
    out = learner.act([x[:5]])
    from common.trajectory import Trajectory

    fragment = Trajectory(
        instance=1, agent_id=0, observations=[x[:5]], next_observations=[x[5]],
        continuous_actions=np.zeros((5, 0), np.float32), discrete_actions=out.discrete, log_probs=out.log_probs,
        rewards=np.zeros(5, np.float32), action_masks=np.zeros((5, 3), bool), policy_versions=np.zeros(5, np.int64),
    )
    del obs
    chunks = []
    for each in (learner, twin):
        each.rollout_buffer.load_state_dict(None)
        each.process_trajectory(fragment)
        chunks.append(each.rollout_buffer.chronological())
    for name in ("values", "returns", "advantages"):
        np.testing.assert_allclose(chunks[0][name], chunks[1][name], rtol=1e-6, atol=1e-6)
    assert np.any(chunks[0]["returns"][:, 1] != chunks[0]["values"][:, 1])  # curiosity rewards flow into its returns


GAIL = {"demo_path": "expert.demo", "use_actions": True, "use_vail": True, "network_settings": {"hidden_units": 16, "num_layers": 1}}


def test_ppo_with_gail_alone_trains_its_discriminator_on_scripted_expert_demonstrations() -> None:
    learner, runner = _run_pyramids("ppo", {"gail": GAIL}, 1280, batch_size=64, buffer_size=256, num_epoch=2)
    assert learner.signals.names == ("gail",) and learner.update_count >= 1
    metrics = runner.last_metrics
    for tag in ("Losses/GAIL Loss", "Policy/GAIL Expert Estimate", "Policy/GAIL Policy Estimate", "Losses/GAIL KL Loss",
                "Policy/GAIL Beta", "Policy/GAIL Grad Mag Loss", "Policy/Gail Value Estimate", "Policy/Gail Reward"):
        assert tag in metrics and np.isfinite(metrics[tag]), tag
    assert "Policy/Extrinsic Value Estimate" not in metrics
    assert learner.trace_counts["update"] == 1
    state = serialization.msgpack_restore(serialization.msgpack_serialize(learner.state_dict()))
    twin = PPOLearner(learner.spec, learner.settings, seed=1, demonstrations=_pyramids_expert())
    twin.load_state_dict(state)
    assert _same_leaves(learner._state.signals, twin._state.signals)


def test_sac_with_curiosity_updates_signals_at_their_own_ratio_and_round_trips_its_checkpoint() -> None:
    signals = {"extrinsic": SIGNALS["extrinsic"], "curiosity": SIGNALS["curiosity"], "gail": {**GAIL, "strength": 0.1}}
    learner, runner = _run_pyramids("sac", signals, 400, batch_size=32, buffer_size=2000, steps_per_update=4.0,
                            reward_signal_steps_per_update=8.0)
    assert learner.update_steps > 0 and "Losses/Curiosity Forward Loss" in runner.last_metrics
    assert "Losses/GAIL Loss" in runner.last_metrics
    assert {"Policy/Extrinsic Value Estimate", "Policy/Curiosity Value Estimate"} <= set(runner.last_metrics)
    assert learner.reward_signal_update_steps == pytest.approx(learner.update_steps / 2, abs=2)
    state = serialization.msgpack_restore(serialization.msgpack_serialize(learner.state_dict()))
    twin = SACLearner(learner.spec, learner.settings, seed=3, demonstrations=_pyramids_expert())
    twin.load_state_dict(state)
    assert twin.reward_signal_update_steps == learner.reward_signal_update_steps
    a = jax.tree_util.tree_leaves(learner._state.signals["curiosity"])
    b = jax.tree_util.tree_leaves(twin._state.signals["curiosity"])
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert "critic/q/curiosity/kernel" in twin._state.params["critics"]


def trainer_settings(trainer_type: str, **section) -> object:
    return trainer_settings_from_dict({"trainer_type": trainer_type, **section})


def test_supported_signals_and_gail_refused_while_the_demonstrations_reader_is_missing() -> None:
    import importlib.util

    assert {"extrinsic", "curiosity", "rnd"} <= SUPPORTED_REWARD_SIGNALS
    has_reader = importlib.util.find_spec("trainer_server.demonstrations") is not None
    assert ("gail" in SUPPORTED_REWARD_SIGNALS) == has_reader


@pytest.mark.skipif(not (SHARED_CONFIGS / "ppo" / "Pyramids.yaml").is_file(), reason=f"no {SHARED_CONFIGS}")
def test_mlagents_pyramids_config_is_supported_and_trains_on_the_standin_task() -> None:
    options = load_run_options(SHARED_CONFIGS / "ppo" / "Pyramids.yaml")
    check_supported(options)
    settings = options.behaviors["Pyramids"]
    # its own network and signals; a smaller buffer so that a few hundred steps update
    small = replace(settings, hyperparameters=replace(settings.hyperparameters, buffer_size=256, batch_size=128))
    learner = PPOLearner(task_spec("pyramids"), small, seed=0)
    runner = DirectRunner("pyramids", learner, small.time_horizon, num_agents=8)
    runner.run(640)  # episodes of 44 steps: fragments end with them
    assert learner.update_count >= 1
    assert learner.signals.names == ("extrinsic", "curiosity")
    assert learner.signals.signals[1].strength == pytest.approx(0.02)


def test_ppo_with_rnd_learns_the_sparse_pyramids_task() -> None:
    """The CI-sized version of benchmarks/bench_reward_signals.py: with the RND bonus, PPO
    finds and learns the switch-then-goal corridor (seed 1 took 32,768 steps there; PPO on
    the extrinsic reward alone did not within 81,920)."""
    options = load_run_options(Path(__file__).resolve().parents[3] / "configs" / "ppo" / "Pyramids_rnd.yaml")
    settings = options.behaviors["Pyramids"]
    learner = PPOLearner(task_spec("pyramids"), settings, seed=1)
    runner = DirectRunner("pyramids", learner, settings.time_horizon, seed=1)
    while runner.steps < 49152 and not (len(runner.returns) >= 100 and runner.mean_return() >= 0.8):
        runner.run(2048)
    assert runner.mean_return() >= 0.8, f"mean return {runner.mean_return():.2f} after {runner.steps} agent steps"


def _mlagents_signal_updates(steps_seen: list[int], init: int, ratio: float) -> int:
    """ML-Agents' off-policy trainer: after each trajectory that leaves the trainer ready, its
    ``_update_reward_signals`` loop runs while ``(step - init) / counter > ratio`` (the counter
    starts at 1 and counts one per update)."""
    counter = 1
    for step in steps_seen:
        while (step - init) / counter > ratio:
            counter += 1
    return counter - 1


@pytest.mark.parametrize("ratio", [0.5, 8.0])
def test_sac_reward_signal_steps_per_update_counts_signal_adam_steps_as_mlagents(ratio: float) -> None:
    """``reward_signal_steps_per_update`` is agent steps per reward-signal update, apart from
    ``steps_per_update`` (here 2): 0.5 means two signal updates per agent step, 8 one per eight."""
    settings = trainer_settings(
        "sac", network_settings={"hidden_units": 16, "num_layers": 1}, reward_signals={"extrinsic": {}, "curiosity": SIGNALS["curiosity"]},
        hyperparameters={"batch_size": 8, "buffer_init_steps": 10, "steps_per_update": 2.0, "reward_signal_steps_per_update": ratio},
    )
    learner = SACLearner(SPEC, settings, seed=0)
    rng = np.random.default_rng(0)
    from common.trajectory import Trajectory

    ready_at = []
    for _ in range(12):
        t = 5
        learner.process_trajectory(Trajectory(
            instance=0, agent_id=0, observations=[rng.normal(size=(t, 6)).astype(np.float32)],
            next_observations=[rng.normal(size=(6,)).astype(np.float32)],
            continuous_actions=rng.normal(size=(t, 2)).astype(np.float32),
            discrete_actions=np.stack([rng.integers(0, 3, t), rng.integers(0, 2, t)], 1).astype(np.int32),
            log_probs=np.zeros(t, np.float32), rewards=rng.normal(size=t).astype(np.float32),
            action_masks=np.zeros((t, 5), bool), policy_versions=np.zeros(t, np.int64), done=False,
        ))
        if learner.ready():
            ready_at.append(learner.step)
            learner.update()
    expected = _mlagents_signal_updates(ready_at, 10, ratio)
    assert expected == {0.5: 99, 8.0: 6}[ratio]  # 60 agent steps, the first 10 only buffered
    assert learner.reward_signal_update_steps == expected
    adam_steps = jax.tree_util.tree_leaves(learner._state.signals["curiosity"]["opt_state"])[0]
    assert int(adam_steps) == expected  # the curiosity model took exactly that many Adam steps
    assert learner.update_steps == _mlagents_signal_updates(ready_at, 10, 2.0)  # the policy at its own ratio
