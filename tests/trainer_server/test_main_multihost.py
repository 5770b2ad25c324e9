"""``tandem-trainer`` as a multi-host learner: two trainer processes on loopback train from a
real gateway and stand-in with identical parameters; bad flags, an unreachable coordinator
and a dead process end with clear errors, never a hang."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trainer_server.config.schema import ConfigError
from trainer_server.server_settings import multi_host_settings

REPO = Path(__file__).resolve().parents[2]
TINY = (
    "behaviors:\n  3DBall:\n    trainer_type: ppo\n"
    "    hyperparameters: {batch_size: 32, buffer_size: 128}\n"
    "    network_settings: {hidden_units: 16, num_layers: 1}\n"
    "    max_steps: 500\n    time_horizon: 16\n    summary_freq: 200\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer(tmp_path: Path, results: str, *args: str) -> list[str]:
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    return [
        sys.executable, "-m", "trainer_server.cli", str(config), "--run-id", "mh", "--results-dir",
        str(tmp_path / results), "--listen", "127.0.0.1:0", "--log-json", *args,
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def _host(tmp_path: Path, address: str, index: int, *args: str) -> subprocess.Popen:
    cmd = _trainer(tmp_path, f"results{index}", "--with-gateway", "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", str(index), *args)
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True)


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_two_trainer_processes_train_from_a_real_gateway_with_identical_parameters(tmp_path):
    """The same command on both 'hosts' (but --process-id): process 0 serves its stand-in gateway and
    trains a few PPO updates with process 1; each update's state digest is the same on both,
    process 0 writes the results, process 1 nothing."""
    address = f"127.0.0.1:{free_port()}"
    hosts = [_host(tmp_path, address, i) for i in range(2)]
    outputs = [p.communicate(timeout=400)[1] for p in hosts]
    for p, err in zip(hosts, outputs):
        assert p.returncode == 0, err[-4000:]
    digests = [[(e["update"], e["digest"]) for e in _events(err) if e.get("event") == "multi-host update"]
               for err in outputs]
    assert len(digests[0]) >= 3 and digests[0] == digests[1], digests  # 500 steps / 128 per update
    assert any(e.get("event") == "training complete" for e in _events(outputs[0]))
    assert list((tmp_path / "results0" / "mh" / "3DBall").glob("*.onnx"))
    assert not (tmp_path / "results1").exists()


def test_a_dead_process_stops_the_other_with_an_error(tmp_path):
    """Process 1 killed (-9) once it follows: process 0 ends with JAX's error naming the dead task
    within the heartbeat timeout, instead of waiting for it forever."""
    address = f"127.0.0.1:{free_port()}"
    leader = _host(tmp_path, address, 0, "--heartbeat-timeout", "5")
    follower = _host(tmp_path, address, 1, "--heartbeat-timeout", "5")
    leader_err: list[str] = []
    reader = threading.Thread(target=lambda: leader_err.append(leader.stderr.read()), daemon=True)
    reader.start()
    try:
        for line in follower.stderr:  # until it follows (pytest's timeout guards a hang)
            if "following process 0" in line:
                break
        follower.send_signal(signal.SIGKILL)
        follower.wait(60)
        leader.wait(300)
        reader.join(60)
    finally:
        for p in (leader, follower):
            if p.poll() is None:
                p.kill()
                p.wait()
    assert leader.returncode not in (0, None)
    assert "stopped sending heartbeats" in leader_err[0] or "another task died" in leader_err[0], leader_err[0][-3000:]


def test_an_unreachable_coordinator_is_a_clear_error(tmp_path):
    cmd = _trainer(tmp_path, "r", "--coordinator-address", f"127.0.0.1:{free_port()}", "--num-processes", "2",
                   "--process-id", "1", "--coordinator-timeout", "2")
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "cannot join the multi-host learner" in done.stderr and "was not reachable within 2 s" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [(("--coordinator-address", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"),
      "--process-id 2 is out of range: 2 processes are numbered 0 to 1"),
     (("--coordinator-address", "127.0.0.1:1", "--num-processes", "2"), "needs --process-id (JAX_PROCESS_ID) as well"),
     (("--coordinator-address", "nowhere", "--num-processes", "2", "--process-id", "0"),
      "--coordinator-address: host:port of process 0, got 'nowhere'")],
)
def test_bad_multi_host_flags_are_configuration_errors(tmp_path, args, message):
    done = subprocess.run(_trainer(tmp_path, "r", *args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr
    assert not (tmp_path / "r").exists()


def test_multi_host_settings_read_flags_before_jax_environment_variables():
    environ = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert multi_host_settings({}, {}) is None
    from_env = multi_host_settings({}, environ)
    assert (from_env.coordinator_address, from_env.num_processes, from_env.process_id) == ("10.0.0.1:1234", 4, 3)
    flags = multi_host_settings({"process_id": "1", "heartbeat_timeout_s": 7}, environ)
    assert (flags.process_id, flags.heartbeat_timeout_s, flags.initialization_timeout_s) == (1, 7, 300)
    with pytest.raises(ConfigError, match=r"--num-processes \(JAX_NUM_PROCESSES\): a whole number, got 'x'"):
        multi_host_settings({"num_processes": "x"}, environ)
