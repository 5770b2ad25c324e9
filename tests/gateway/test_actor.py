"""Actor mode end to end: a real gateway streaming to a real gRPC Trainer server (``fake_trainer``)."""

from __future__ import annotations

import os
import signal
import time

import grpc
import numpy as np
import pytest

from common import specs as specs_mod
from common import trajectory as trajectory_mod
from gateway.remote.client import GatewayClient
from gateway.options import ActorOptions
from tandem.v1 import gateway_pb2, trainer_pb2
from fake_trainer import FakeTrainerServer, TrainerState
from gateway_helpers import environment_options, running_gateway, wait_until

BALL = "3DBall?team=0"


def actor_options(trainer: str, **kw) -> ActorOptions:
    kw.setdefault("chunk_steps", 64)
    kw.setdefault("flush_interval_s", 0.2)
    kw.setdefault("reconnect_min_s", 0.1)
    kw.setdefault("reconnect_max_s", 0.5)
    return ActorOptions(trainer=trainer, **kw)


def decoded(state: TrainerState) -> list:
    """Every accepted chunk's trajectories, decoded and validated against the Hello specs."""
    specs = {b.name: specs_mod.from_proto(b) for h in state.hellos for b in h.behaviors}
    with state.lock:
        chunks = [state.chunks[k] for k in sorted(state.chunks)]
    return [
        (c, [trajectory_mod.from_proto(t, specs[c.behavior], name=f"chunk {c.sequence}") for t in c.trajectories])
        for c in chunks
    ]


@pytest.mark.slow
def test_streams_valid_trajectories_in_numbered_chunks():
    state = TrainerState(time_horizon=16)
    trainer = FakeTrainerServer(state)
    try:
        with running_gateway(environment_options(), actor=actor_options(trainer.address)) as gw:
            assert state.wait_for(lambda s: len(s.chunks) >= 8, 60)
            with GatewayClient(gw.address) as client:
                d = client.describe()
                assert d.mode == gateway_pb2.GATEWAY_MODE_ACTOR
                assert [b.name for b in d.behaviors] == [BALL]
                with pytest.raises(grpc.RpcError) as err:
                    client.play(timeout_s=10).reset()
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert state.wait_for(lambda s: len(s.chunks) >= 40, 60), "drops end episodes within a few hundred steps"
    finally:
        trainer.stop()
    [hello] = state.hellos
    assert hello.gateway_id and hello.num_instances == 1 and [b.name for b in hello.behaviors] == [BALL]
    chunks = decoded(state)
    assert [c.sequence for c, _ in chunks] == list(range(1, len(chunks) + 1))
    trajectories = [t for _, ts in chunks for t in ts]
    assert all(1 <= len(t) <= 16 for t in trajectories)
    assert all((t.policy_versions == 1).all() for t in trajectories)
    assert {t.agent_id for t in trajectories} == set(range(12))
    done = [t for t in trajectories if t.done]
    assert done, "random-ish early policies drop balls"
    assert all(t.episode_length >= len(t) for t in done)
    assert all(t.rewards[-1] < -0.5 for t in done if not t.interrupted)  # the drop's -1
    cut = [t for t in trajectories if not t.done]
    assert all(len(t) == 16 and t.episode_length == 0 for t in cut)
    # each agent's fragments chain: a cut's next observation starts the agent's next fragment
    by_agent: dict[int, list] = {}
    for t in trajectories:
        by_agent.setdefault(t.agent_id, []).append(t)
    for frags in by_agent.values():
        for a, b in zip(frags, frags[1:]):
            if not a.done:
                np.testing.assert_array_equal(a.next_observations[0], b.observations[0][0])
    # log-probs are the policy's: finite and below the max density of the N(mu, 0.6) samples
    assert all(np.isfinite(t.log_probs).all() for t in trajectories)
    assert any(c.stats for c, _ in chunks), "Environment/Drops stats ride along"


@pytest.mark.slow
def test_trainer_goes_away_and_comes_back_nothing_lost_nothing_resent():
    state = TrainerState(time_horizon=8)
    trainer = FakeTrainerServer(state)
    port = trainer.port
    with running_gateway(environment_options(), actor=actor_options(trainer.address, chunk_steps=16)) as gw:
        assert state.wait_for(lambda s: len(s.chunks) >= 5, 60)
        trainer.stop()
        assert wait_until(lambda: not gw.actor.link.connected.is_set(), 10)
        produced_while_away = gw.actor.progress.chunks
        assert wait_until(lambda: gw.actor.progress.chunks > produced_while_away + 3, 30), "keeps acting, buffering"
        unacked = len(gw.actor.link.buffer)
        assert unacked > 0
        trainer = FakeTrainerServer(state, port=port)  # the trainer comes back on the same address
        try:
            target = gw.actor.progress.chunks + 3
            assert state.wait_for(lambda s: len(s.chunks) >= target, 60)
            assert gw.actor.link.connections >= 2
            assert gw.actor.link.chunks_resent >= 1
        finally:
            gw.stop()
            trainer.stop()
    assert state.duplicates == 0, "chunks the trainer accepted were not sent again"
    assert len(state.hellos) >= 2 and len({h.gateway_id for h in state.hellos}) == 1
    sequences = sorted(seq for _, seq in state.chunks)
    assert sequences == list(range(1, len(sequences) + 1)), "nothing lost"


@pytest.mark.slow
def test_full_buffer_pauses_stepping_instead_of_dropping():
    state = TrainerState(time_horizon=4)
    state.ack.clear()  # the trainer takes one chunk and holds its ack: nothing more is acked
    trainer = FakeTrainerServer(state)
    try:
        with running_gateway(
            environment_options(), actor=actor_options(trainer.address, chunk_steps=8, max_buffered_chunks=3)
        ) as gw:
            assert wait_until(lambda: gw.actor.progress.paused_workers == 1, 60)
            time.sleep(1.5)
            chunks, steps = gw.actor.progress.chunks, gw.actor.env_steps.get(0, (0, 0))[0]
            time.sleep(1.5)
            assert gw.actor.progress.chunks == chunks, "no new experience while the buffer is full"
            assert gw.actor.env_steps.get(0, (0, 0))[0] == steps, "Unity is paused"
            assert len(gw.actor.link.buffer) <= 3 + 2  # the bound plus the worker's outstanding batches
            state.ack.set()  # acks flow again: stepping resumes, everything arrives in order
            assert state.wait_for(lambda s: len(s.chunks) >= chunks + 5, 60)
    finally:
        state.ack.set()
        trainer.stop()
    sequences = sorted(seq for _, seq in state.chunks)
    assert sequences == list(range(1, len(sequences) + 1))


@pytest.mark.slow
def test_deterministic_trainer_snapshots_act_with_the_mode_and_still_stream():
    """network_settings.deterministic: ML-Agents acts with the mode while it trains (and counts steps in
    --inference), so the trainer still receives the experience."""
    state = TrainerState(deterministic=True)
    trainer = FakeTrainerServer(state)
    try:
        with running_gateway(environment_options(), actor=actor_options(trainer.address, chunk_steps=64)):
            assert state.wait_for(lambda s: len(s.chunks) >= 2, 60), "experience is streamed"
    finally:
        trainer.stop()
    trajectories = [t for _, ts in decoded(state) for t in ts]
    log_probs = np.concatenate([t.log_probs for t in trajectories])
    # the mode of a Gaussian: no noise, so every step has the same log-probability (a sample would not)
    assert np.allclose(log_probs, log_probs[0], atol=1e-5)


@pytest.mark.slow
def test_two_behaviors_two_instances_and_a_killed_unity():
    state = TrainerState(time_horizon=32)
    trainer = FakeTrainerServer(state)
    env = environment_options(num_envs=2, env_args=("--task", "multibehavior", "--num-agents", "2"))
    try:
        with running_gateway(env, actor=actor_options(trainer.address)) as gw:
            assert state.wait_for(lambda s: len({c.behavior for c in s.chunks.values()}) == 2, 60)
            os.kill(gw.actor.workers[1].unity_pid, signal.SIGKILL)
            assert state.wait_for(
                lambda s: any(
                    t.interrupted and t.done and t.instance == 1 for c in s.chunks.values() for t in c.trajectories
                ),
                60,
            ), "the killed instance's open trajectories end as interrupted"
            assert wait_until(lambda: gw.actor.instances()[1].restarts == 1, 30)
            count = len(state.chunks)
            assert state.wait_for(
                lambda s: any(t.instance == 1 for c in list(s.chunks.values())[count:] for t in c.trajectories), 60
            ), "the restarted instance streams again"
    finally:
        trainer.stop()
    [hello] = state.hellos[:1]
    assert sorted(b.name for b in hello.behaviors) == ["Chaser?team=0", "Runner?team=0"]
    assert hello.num_instances == 2
    chunks = decoded(state)
    assert {t.instance for _, ts in chunks for t in ts} == {0, 1}
    runner = [t for c, ts in chunks if c.behavior.startswith("Runner") for t in ts]
    assert runner and all(t.discrete_actions.shape[1] == 1 for t in runner)


@pytest.mark.slow
def test_visual_observations_and_masks_in_actor_mode():
    state = TrainerState(time_horizon=16, hidden_units=16, num_layers=1)
    trainer = FakeTrainerServer(state)
    try:
        env = environment_options(env_args=("--task", "gridworld"))
        with running_gateway(env, actor=actor_options(trainer.address)) as gw:
            assert state.wait_for(lambda s: len(s.chunks) >= 3, 60)
    finally:
        trainer.stop()
    trajectories = [t for _, ts in decoded(state) for t in ts]
    assert trajectories
    for t in trajectories:
        visual = next(o for o in t.observations if o.ndim == 4)
        assert visual.shape[1:] == (3, 24, 24) and 0.0 <= visual.min() and visual.max() <= 1.0
        chosen = np.take_along_axis(t.action_masks[:, :5], t.discrete_actions[:, :1].astype(int), axis=1)
        assert not chosen.any(), "the policy never picks a masked move"


@pytest.mark.slow
def test_collection_stops_where_the_grant_ends_and_resumes_with_the_next():
    """Flow control: a gateway steps Unity only within the agent steps granted; out of
    credit it sends every open fragment (bootstrapped) and waits; a new grant resumes it."""
    state = TrainerState(time_horizon=1000)  # no time_horizon cut: only episode ends and pauses end fragments
    state.grant_steps = 120  # 10 steps of the stand-in's 12 agents, who all decide at every step

    def streamed(s: TrainerState) -> int:
        return sum(len(c.trajectories[i].log_probs.data) // 4 for c in s.chunks.values() for i in range(len(c.trajectories)))

    def open_fragments() -> set[int]:
        return {t.agent_id for _, ts in decoded(state) for t in ts if not t.done}

    trainer = FakeTrainerServer(state)
    try:
        with running_gateway(environment_options(), actor=actor_options(trainer.address, chunk_steps=10_000)) as gw:
            # the pause sends every agent's open fragment: all 12 agents, 120 steps in all
            assert state.wait_for(lambda s: streamed(s) >= 120, 60)
            assert wait_until(lambda: len(open_fragments()) == 12, 60)
            assert streamed(state) == 120 and gw.actor.progress.granted == {BALL: 120}
            gw.actor._on_grant(trainer_pb2.CollectionGrant(behavior=BALL, agent_steps=60))
            assert state.wait_for(lambda s: streamed(s) >= 180, 60)
            assert streamed(state) == 180 == gw.actor.progress.steps, "nothing is collected beyond the grants"
    finally:
        trainer.stop()

