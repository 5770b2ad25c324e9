"""``tandem-trainer``'s devices as a process: ``torch_settings.device`` and ``--devices`` are
parsed at the edge, refused clearly when not there, and the devices trained on are logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_server.config.schema import ConfigError
from trainer_server.server_settings import parse_devices, parse_torch_device

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ppo" / "3DBall.yaml"


def _trainer(tmp_path: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "trainer_server.cli", str(CONFIG), "--run-id", "dev", "--results-dir", str(tmp_path),
        "--listen", "127.0.0.1:0", *args,
    ]


def test_torch_device_words_map_to_jax_platforms():
    assert parse_torch_device(None) == (None, None)
    assert parse_torch_device("cpu") == ("cpu", None)
    assert parse_torch_device("cuda") == ("gpu", None)
    assert parse_torch_device("CUDA:1") == ("gpu", 1)
    for bad in ("mps", "cuda:x", "cuda:", "tpu:0"):
        with pytest.raises(ConfigError, match=r"torch_settings.device \(--torch-device\): .* 'cpu', 'cuda' or 'cuda:N'"):
            parse_torch_device(bad)


def test_devices_flag_is_a_count_or_all():
    assert (parse_devices(None), parse_devices("2"), parse_devices("all"), parse_devices("ALL")) == (1, 2, None, None)
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="a number of devices"):
            parse_devices(bad)


@pytest.mark.parametrize(
    "args, message",
    [(("--torch-device", "mps"), "torch_settings.device (--torch-device): 'mps' is not supported"),
     (("--devices", "0"), "--devices: a number of devices (1, 2, ...) or 'all', got '0'")],
)
def test_malformed_device_flags_are_configuration_errors(tmp_path, args, message):
    done = subprocess.run(_trainer(tmp_path, *args), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "dev").exists()


@pytest.mark.parametrize(
    "args, message",
    [(("--devices", "2"), "--devices 2: only 1 cpu device(s) here"),
     (("--torch-device", "cuda"), "no gpu device visible to JAX")],
)
def test_devices_that_are_not_there_are_refused_before_anything_starts(tmp_path, args, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(_trainer(tmp_path, *args), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stderr
    assert "cannot train on the requested devices" in done.stderr and message in done.stderr
    assert not (tmp_path / "dev").exists()


def test_the_trainer_logs_the_devices_it_trains_on(tmp_path):
    """Two forced CPU devices, ``--devices all``: the learners' devices are logged before it serves."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    process = subprocess.Popen(
        _trainer(tmp_path, "--torch-device", "cpu", "--devices", "all", "--log-json"),
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )
    events: list[dict] = []
    try:
        for line in process.stderr:  # until it serves (pytest's timeout guards a hang)
            events += [json.loads(line)] if line.startswith("{") else []
            if events and events[-1].get("event") == "trainer ready":
                break
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
        assert process.returncode == 0, events
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logged = [e for e in events if e.get("event") == "learner devices"]
    assert logged and logged[0]["devices"] == ["cpu:0", "cpu:1"] and logged[0]["data_parallel"] == 2, events
