"""Actor mode against the real trainer service (``trainer_server.service`` + a PPO ``TrainingApp``).

The trainer learns from the gateway's experience (its snapshot version rises), goes
away and comes back on the same address with its state: the gateway, which collected
nothing beyond its credit meanwhile, reconnects, resends only what was not accepted, and
the trainer counts no chunk twice.
"""

from __future__ import annotations

import argparse

import pytest
import yaml

from gateway.options import ActorOptions
from gateway_helpers import environment_options, running_gateway, wait_until


def _app(tmp_path):
    from trainer_server.app import TrainingApp
    from trainer_server.results import RunResults
    from trainer_server.config.loading import load_run_options

    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "behaviors": {
                    "3DBall": {
                        "trainer_type": "ppo",
                        "hyperparameters": {"batch_size": 32, "buffer_size": 256, "num_epoch": 1},
                        "network_settings": {"hidden_units": 16, "num_layers": 1, "normalize": True},
                        "time_horizon": 32,
                        "max_steps": 1_000_000,
                        "summary_freq": 100_000,
                        "checkpoint_interval": 1_000_000,
                    }
                }
            }
        )
    )
    args = argparse.Namespace(
        run_id="gateway-actor", results_dir=str(tmp_path / "results"), resume=None, force=None,
        inference=None, initialize_from=None, seed=3,
    )
    options = load_run_options(config, args)
    cs = options.checkpoint_settings
    results = RunResults.prepare(cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force)
    return TrainingApp(options, results)


@pytest.mark.slow
def test_real_trainer_learns_from_the_gateway_and_survives_a_restart(tmp_path):
    from trainer_server.server import start_server

    app = _app(tmp_path)
    server = start_server(app, "127.0.0.1:0")
    port = server.port
    app.start()
    server.set_serving(True)
    try:
        actor = ActorOptions(trainer=server.address, chunk_steps=64, flush_interval_s=0.2,
                             reconnect_min_s=0.1, reconnect_max_s=0.5)
        with running_gateway(environment_options(), actor=actor) as gw:
            runner = gw.actor
            ball = "3DBall?team=0"

            def version() -> int:
                latest = runner._latest.get(ball)
                return latest[0] if latest else 0

            assert wait_until(lambda: version() >= 2, 180), "PPO updated on the gateway's experience"
            accepted = app.last_accepted_sequence(runner.gateway_id)
            assert accepted >= 1
            server.stop(0)  # the trainer goes away...
            assert wait_until(lambda: not runner.link.connected.is_set(), 10)
            # meanwhile the gateway collects only the credit the trainer granted (flow control),
            # plus less than one step of the stand-in's 12 agents per version granted; what is not
            # acked stays buffered
            assert runner.progress.steps < runner.progress.granted[ball] + 12 * version(), runner.progress
            server = start_server(app, f"127.0.0.1:{port}")  # ...and comes back with its state
            server.set_serving(True)
            assert wait_until(lambda: runner.link.connections >= 2, 30)
            target = runner.progress.chunks
            assert wait_until(lambda: app.last_accepted_sequence(runner.gateway_id) >= target, 60)
            assert runner.link.last_welcome.last_accepted_sequence >= accepted
            assert app.error is None
    finally:
        app.stop()
        server.stop(1.0)
        app.join(30)
