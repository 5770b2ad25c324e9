"""``tandem-trainer`` as a process: run-id refusal, serving, graceful SIGTERM, the gateway command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trainer_server.main import gateway_command
from trainer_server.config.loading import load_run_options

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ppo" / "3DBall.yaml"


def _trainer(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer_server.cli", str(CONFIG), *args]


@pytest.mark.parametrize("flags", [(), ("--inference",)], ids=["training", "inference"])
def test_an_existing_run_id_is_refused_with_a_clear_message(tmp_path, flags):
    """As mlagents-learn: also --inference needs --resume (act with the run's checkpoint) or --force."""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "configuration.yaml").write_text("behaviors: {}\n")
    done = subprocess.run(
        _trainer("--run-id", "taken", "--results-dir", str(tmp_path), "--listen", "127.0.0.1:0", *flags),
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    assert "taken" in done.stderr and "--resume" in done.stderr and "--force" in done.stderr
    assert (tmp_path / "taken" / "configuration.yaml").read_text() == "behaviors: {}\n"  # untouched


def test_trainer_serves_then_stops_gracefully_on_sigterm(tmp_path):
    process = subprocess.Popen(
        _trainer("--run-id", "r1", "--results-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--log-json"),
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    ready = threading.Event()
    address: list[str] = []

    def pump() -> None:
        for line in process.stderr:
            lines.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "trainer ready":
                address.append(event["address"])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(90), "".join(lines)
        with grpc.insecure_channel(address[0]) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run = tmp_path / "r1"
    assert (run / "configuration.yaml").is_file()
    assert "3DBall" in (run / "configuration.yaml").read_text()
    timers = json.loads((run / "run_logs" / "timers.json").read_text())
    assert timers["children"]["setup"]["count"] == 1
    assert json.loads((run / "run_logs" / "training_status.json").read_text())["metadata"]


def test_gateway_command_passes_environment_and_engine_settings(tmp_path):
    import argparse

    args = argparse.Namespace(
        run_id="x", results_dir=str(tmp_path), env_path="/builds/3DBall.x86_64", num_envs=3, seed=5,
        time_scale=10.0, width=64, no_graphics=True, env_args=["--task", "3dball"],
    )
    options = load_run_options(CONFIG, args)
    cmd = gateway_command(options, "127.0.0.1:40000", ("--chunk-steps", "256"), tls_ca="/ca.pem")
    import gateway.cli as gateway_cli
    parsed = gateway_cli.build_parser().parse_args(cmd[1:] if not cmd[0].endswith("python") else cmd[3:])
    assert parsed.trainer == "127.0.0.1:40000" and parsed.trainer_tls_ca == "/ca.pem"
    assert parsed.env_path == "/builds/3DBall.x86_64" and parsed.num_envs == 3 and parsed.seed == 5
    assert parsed.time_scale == 10.0 and parsed.width == 64 and parsed.no_graphics
    assert parsed.chunk_steps == 256 and parsed.env_args == ["--task", "3dball"]
    assert parsed.listen == "127.0.0.1:0"
    assert parsed.log_folder == str(tmp_path / "x" / "run_logs")  # the players' logs, as mlagents-learn's
    assert os.path.basename(cmd[0]).startswith("tandem-gateway") or cmd[1:3] == ["-m", "gateway.cli"]


def test_sigint_during_training_writes_a_final_checkpoint(tmp_path):
    from test_service_support import BALL, GatewayClient, chunk_message, hello_message, make_trajectory

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "behaviors:\n  3DBall:\n    trainer_type: ppo\n"
        "    hyperparameters: {batch_size: 16, buffer_size: 32}\n"
        "    network_settings: {hidden_units: 16, num_layers: 1}\n"
        "    checkpoint_interval: 100000\n    time_horizon: 16\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer_server.cli", str(config), "--run-id", "r2", "--results-dir", str(tmp_path),
         "--listen", "127.0.0.1:0", "--log-json"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    address: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in process.stderr:
            lines.append(line)
            if '"trainer ready"' in line:
                address.append(json.loads(line)["address"])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    # generous bounds, never reached on a healthy machine: they only keep a hung run from
    # hanging the suite (under load, JAX's start and the first compilation take minutes)
    patience = 600
    try:
        assert ready.wait(patience), "".join(lines)
        with grpc.insecure_channel(address[0]) as channel:
            client = GatewayClient(channel)
            client.send(hello_message("gw", BALL))
            assert client.recv(patience).HasField("welcome")
            for seq in (1, 2, 3):
                client.send(chunk_message(BALL, seq, [make_trajectory(BALL, 15, first_reward=seq)]))
            # an ack means the chunk is in the learner's state (its update included): the
            # final checkpoint holds all 45 steps once it is in
            client.recv_until(lambda m: m.HasField("ack") and m.ack.sequence == 3, timeout=patience)
            process.send_signal(signal.SIGINT)
            assert process.wait(patience) == 0, "".join(lines)
            client.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    status = json.loads((tmp_path / "r2" / "run_logs" / "training_status.json").read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] == 45
    from trainer_server.checkpoints import load_file

    state, meta = load_file(tmp_path / "r2" / "3DBall")
    assert state["step"] == 45 and meta["step"] == 45 and state["update_count"] == 1


def test_the_local_gateways_players_log_to_the_runs_run_logs(tmp_path):
    from benchmarks.ports import free_base_port

    process = subprocess.Popen(
        _trainer("--run-id", "logs", "--results-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--with-gateway",
                 "--base-port", str(free_base_port())),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "logs" / "run_logs" / "Player-0.log"
    try:
        deadline = time.monotonic() + 120
        while not (log.is_file() and "scene loaded" in log.read_text()):  # the stand-in talks to the gateway
            assert process.poll() is None and time.monotonic() < deadline, f"no player log at {log}"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "player starting" in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["build", "editor"])
def test_env_launches_the_local_gateway_without_with_gateway(tmp_path, where):
    """``--env BUILD`` runs that build as mlagents-learn --env does, and ``--env editor`` waits for the
    Editor's Play; the stand-in plays the build, or the Editor connecting to the base port."""
    import unity_standin
    from benchmarks.ports import free_base_port

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "behaviors:\n  3DBall:\n    trainer_type: ppo\n"
        "    hyperparameters: {batch_size: 32, buffer_size: 64}\n"
        "    network_settings: {hidden_units: 16, num_layers: 1}\n"
        "    max_steps: 200\n    time_horizon: 16\n    summary_freq: 100\n"
    )
    port = free_base_port()
    env = unity_standin.executable_path() if where == "build" else "editor"
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer_server.cli", str(config), "--run-id", "run", "--results-dir", str(tmp_path),
         "--listen", "127.0.0.1:0", "--env", env, "--base-port", str(port), "--log-json"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    editor = None
    if where == "editor":  # the user presses Play: the player connects to the waiting gateway
        editor = subprocess.Popen(
            [unity_standin.executable_path(), "--mlagents-port", str(port), "--connect-timeout", "300"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    try:
        _, stderr = trainer.communicate(timeout=400)
    finally:
        for process in (trainer, editor):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert trainer.returncode == 0, stderr[-4000:]
    assert "launching a local gateway" in stderr
    status = json.loads((tmp_path / "run" / "run_logs" / "training_status.json").read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] >= 200


def test_env_editor_and_with_gateway_launch_the_local_gateway(tmp_path):
    import argparse

    from trainer_server.main import launches_gateway
    from trainer_server.server_settings import ServerSettings

    def options(env_path):
        return load_run_options(CONFIG, argparse.Namespace(run_id="x", results_dir=str(tmp_path), env_path=env_path))

    assert launches_gateway(options("editor"), ServerSettings())
    assert launches_gateway(options("/builds/Game.x86_64"), ServerSettings())
    assert launches_gateway(options(None), ServerSettings(with_gateway=True))
    assert not launches_gateway(options(None), ServerSettings())  # waits for gateways to connect
