"""Self-play over real sockets: the real trainer service (a PPO ``TrainingApp`` with ``self_play``)
and a real actor-mode gateway stepping the stand-in's ``pong`` game (real worker and Unity
stand-in processes). The gateway acts with two versions of the one trained policy at
once, one per team behavior name: the learning team's latest, and the opponent's past
snapshot; the opponent's steps reach the trainer and are dropped, never trained.
"""

from __future__ import annotations

import argparse

import pytest
import yaml

from gateway.options import ActorOptions
from gateway_helpers import environment_options, running_gateway, wait_until
from tandem.v1 import trainer_pb2

TEAM0, TEAM1 = "Pong?team=0", "Pong?team=1"


def _app(tmp_path):
    from trainer_server.app import TrainingApp
    from trainer_server.config.loading import load_run_options
    from trainer_server.results import RunResults

    config = tmp_path / "config.yaml"
    section = {
        "trainer_type": "ppo",
        "hyperparameters": {"batch_size": 32, "buffer_size": 256, "num_epoch": 1},
        "network_settings": {"hidden_units": 16, "num_layers": 1},
        "time_horizon": 32,
        "max_steps": 1_000_000,
        "summary_freq": 100_000,
        "checkpoint_interval": 1_000_000,
        # the opponent always acts with a pool entry (the initial policy until a save)
        "self_play": {"save_steps": 100_000, "swap_steps": 200, "team_change": 100_000,
                      "play_against_latest_model_ratio": 0.0},
    }
    config.write_text(yaml.safe_dump({"behaviors": {"Pong": section}}))
    args = argparse.Namespace(
        run_id="gateway-self-play", results_dir=str(tmp_path / "results"), resume=None, force=None,
        inference=None, initialize_from=None, seed=3,
    )
    options = load_run_options(config, args)
    cs = options.checkpoint_settings
    return TrainingApp(options, RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force))


def _parameters(raw: bytes) -> dict[str, bytes]:
    snapshot = trainer_pb2.PolicySnapshot.FromString(raw)
    return {name: tensor.SerializeToString() for name, tensor in snapshot.parameters.items()}


@pytest.mark.slow
def test_the_gateway_acts_with_the_learner_and_a_past_snapshot_at_once(tmp_path):
    from trainer_server.server import start_server

    app = _app(tmp_path)
    server = start_server(app, "127.0.0.1:0")
    app.start()
    server.set_serving(True)
    try:
        actor = ActorOptions(trainer=server.address, chunk_steps=64, flush_interval_s=0.2)
        with running_gateway(environment_options(env_args=("--task", "pong")), actor=actor) as gw:
            runner = gw.actor

            def group():
                return app.self_play._groups.get("Pong")

            # the learner updated twice on team 0's steps, and team 1 swapped opponents at least once
            assert wait_until(lambda: group() is not None and group().run.version >= 3 and group().last_swap > 0, 180), (
                runner.progress
            )
            latest = runner._latest
            assert wait_until(lambda: TEAM0 in latest and TEAM1 in latest, 30)
            v0, raw0 = latest[TEAM0]
            v1, raw1 = latest[TEAM1]
            assert v0 != v1
            # two versions of one policy at once: the learner's latest for team 0, the initial
            # policy (the pool's only entry) for team 1
            g = group()
            assert _parameters(raw0) != _parameters(raw1)
            assert _parameters(raw1) == {
                n: t.SerializeToString() for n, t in g.pool.snapshots[0].parameters.items()
            }
            # both teams' experience arrived; the opponent's was counted and dropped
            learner_steps = g.run.learner.step
            assert g.ghost_step > 0 and learner_steps > 0
            assert app.error is None
    finally:
        app.stop()
        server.stop(1.0)
        app.join(30)
