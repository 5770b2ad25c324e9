"""The learners' devices: selection, refusals, and the data-parallel update (PPO, SAC) equal
to the single-device one on two forced CPU devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from learning_helpers import trainer_settings
from trainer_server.learning import devices

REPO = Path(__file__).resolve().parents[3]
CHECK = Path(__file__).with_name("data_parallel_check.py")


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_data_parallel_update_matches_the_single_device_update(algorithm):
    """Two updates split across 2 CPU devices give the single-device parameters and metrics;
    the compiled update holds the cross-device all-reduce and the parameters stay replicated."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, str(CHECK), algorithm], cwd=REPO, env=env, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["changed"] > 1e-3, result  # the updates moved the parameters
    assert result["param_diff"] < 1e-5, result
    assert result["metric_diff"] < 1e-4, result
    assert result["sharded_all_reduce"], result
    assert len(result["param_devices"]) == 2, result
    assert result["param_replicated"], result


def test_one_device_by_default_and_on_request():
    assert devices.current().count == 1 and not devices.current().data_parallel
    placement = devices.select("cpu", count=1)
    assert placement.describe() == ["cpu:0"] and placement.mesh is None
    assert devices.select("cpu", index=0).devices == (jax.local_devices(backend="cpu")[0],)


def test_missing_devices_are_refused_with_what_is_there_and_how_to_get_more():
    with pytest.raises(ValueError, match=r"--devices 64: only 1 cpu device\(s\) here.*xla_force_host_platform_device_count"):
        devices.select("cpu", count=64)
    with pytest.raises(ValueError, match=r"device cpu:3 does not exist: 1 cpu device"):
        devices.select("cpu", index=3)
    with pytest.raises(ValueError, match=r"cpu:0 names one device; --devices all"):
        devices.select("cpu", index=0, count=None)
    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ValueError, match=r"no gpu device visible to JAX.*make setup JAX=cuda12"):
            devices.select("gpu")


def test_batch_sizes_that_do_not_split_evenly_are_refused_by_name():
    ppo = trainer_settings("ppo", batch_size=64, buffer_size=1000)
    devices.check_batch_sizes("Ball", ppo, 4)
    devices.check_batch_sizes("Ball", ppo, 8)
    with pytest.raises(ValueError, match=r"behavior Ball: hyperparameters.buffer_size 1000 is not a multiple of the 16 devices"):
        devices.check_batch_sizes("Ball", ppo, 16)
    assert devices.split_sizes(trainer_settings("sac", batch_size=128)) == {"batch_size": 128}  # not the replay size
    with pytest.raises(ValueError, match=r"hyperparameters.batch_size 128 is not a multiple of the 3 devices"):
        devices.check_batch_sizes("Crawler", trainer_settings("sac", batch_size=128), 3)
