"""Proof that it learns: the real ``tandem-trainer`` and ``tandem-gateway`` processes (the
gateway launching the real Unity stand-in through mlagents-envs) train the 3DBall-like
task for a bounded number of steps, and the mean episode reward must rise well above a
random policy's.

This is ``make run``'s path (``tandem-trainer CONFIG --with-gateway``) with a smaller,
faster PPO configuration. A random policy scores about RANDOM_REWARD per episode on the
stand-in (the ball falls after a dozen decisions: +0.1 per decision, -1 on the fall).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from trainer_server.stats import read_scalars
from benchmarks.ports import free_base_port

REPO = Path(__file__).resolve().parents[2]
#: mean episode reward of uniformly random actions on the stand-in's 3dball (measured)
RANDOM_REWARD = 1.3
MAX_STEPS = 60_000
TIME_LIMIT_S = 540

PPO_CONFIG = textwrap.dedent(
    f"""
    behaviors:
      3DBall:
        trainer_type: ppo
        hyperparameters:
          batch_size: 64
          buffer_size: 2400
          learning_rate: 0.0003
          beta: 0.001
          epsilon: 0.2
          lambd: 0.99
          num_epoch: 3
          learning_rate_schedule: linear
        network_settings:
          normalize: true
          hidden_units: 64
          num_layers: 2
        reward_signals:
          extrinsic:
            gamma: 0.99
            strength: 1.0
        keep_checkpoints: 2
        checkpoint_interval: 20000
        max_steps: {MAX_STEPS}
        time_horizon: 1000
        summary_freq: 6000
    """
)
#: ML-Agents' SAC 3DBall settings, for fewer steps (SAC needs fewer samples than PPO)
SAC_MAX_STEPS = 48_000
SAC_CONFIG = textwrap.dedent(
    f"""
    behaviors:
      3DBall:
        trainer_type: sac
        hyperparameters:
          learning_rate: 0.0003
          learning_rate_schedule: constant
          batch_size: 64
          buffer_size: 200000
          buffer_init_steps: 0
          tau: 0.005
          steps_per_update: 10.0
          save_replay_buffer: false
          init_entcoef: 0.5
        network_settings:
          normalize: true
          hidden_units: 64
          num_layers: 2
        reward_signals:
          extrinsic:
            gamma: 0.99
            strength: 1.0
        keep_checkpoints: 2
        checkpoint_interval: 20000
        max_steps: {SAC_MAX_STEPS}
        time_horizon: 1000
        summary_freq: 6000
    """
)
#: tags every run writes; each algorithm adds its own losses
COMMON_TAGS = {
    "Environment/Cumulative Reward", "Environment/Episode Length", "Policy/Entropy", "Policy/Learning Rate",
    "Policy/Extrinsic Reward", "Policy/Extrinsic Value Estimate", "Losses/Policy Loss", "Policy/Lag",
    "Environment/Drops",  # the stand-in's stats side channel (SUM), through the gateway
}


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (make setup)")
    return [found]


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_ppo_trains_3dball_through_gateway_and_trainer_processes(tmp_path):
    _train_and_check(
        tmp_path, PPO_CONFIG, MAX_STEPS,
        COMMON_TAGS | {"Losses/Value Loss", "Policy/Epsilon", "Policy/Beta"},
    )


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_sac_trains_3dball_through_gateway_and_trainer_processes(tmp_path):
    _train_and_check(
        tmp_path, SAC_CONFIG, SAC_MAX_STEPS,
        COMMON_TAGS | {"Losses/Q1 Loss", "Losses/Q2 Loss", "Policy/Entropy Coefficient"},
    )


def _train_and_check(tmp_path: Path, config_text: str, max_steps: int, expected_tags: set[str]) -> None:
    """Runs ``tandem-trainer CONFIG --with-gateway`` to max_steps and checks what it learned and wrote."""
    config = tmp_path / "3DBall-e2e.yaml"
    config.write_text(config_text)
    started = time.monotonic()
    log_path = run_trainer(config, tmp_path, "e2e", TIME_LIMIT_S, f"{max_steps} steps")
    elapsed = time.monotonic() - started

    run = tmp_path / "results" / "e2e"
    scalars = read_scalars(run / "3DBall")
    assert expected_tags <= set(scalars), sorted(expected_tags - set(scalars))
    rewards = scalars["Environment/Cumulative Reward"]
    steps = [s for s, _ in rewards]
    assert steps and steps[-1] >= max_steps - 6000, rewards
    final = max(v for _, v in rewards[-2:])
    summaries = _json_lines(log_path)
    lines = [str(e.get("event")) for e in summaries if str(e.get("event", "")).startswith("3DBall. Step: ")]
    print(f"3DBall e2e: {max_steps} steps in {elapsed:.0f} s; rewards by step: {rewards}")
    assert final > 3 * RANDOM_REWARD, f"mean reward {final:.2f} after {steps[-1]} steps: {rewards}\n" + "\n".join(lines)

    status = json.loads((run / "run_logs" / "training_status.json").read_text())
    assert status["3DBall"]["final_checkpoint"]["steps"] >= max_steps
    assert (run / "3DBall" / "checkpoint.npz").is_file()
    assert (run / "3DBall.onnx").is_file()
    assert json.loads((run / "run_logs" / "timers.json").read_text())["children"]
    if "Losses/Value Loss" in expected_tags:  # PPO is on-policy: every trained step was acted by the current policy
        assert {v for _, v in scalars["Policy/Lag"]} == {0.0}, scalars["Policy/Lag"]
    assert any(line.startswith("3DBall. Step: ") and "Mean Reward" in line for line in lines)


def run_trainer(config: Path, tmp_path: Path, run_id: str, time_limit_s: float, what: str) -> Path:
    """Runs ``tandem-trainer CONFIG --with-gateway`` (results in ``tmp_path/results``) to its end; fails
    the test when it runs past ``time_limit_s`` or exits with an error.

    Returns:
        the log file (stdout and stderr, JSON lines).
    """
    cmd = [
        *_tool("tandem-trainer"), str(config),
        "--run-id", run_id, "--results-dir", str(tmp_path / "results"),
        "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--seed", "1",
        "--with-gateway", "--log-json",
    ]
    log_path = tmp_path / "trainer.log"
    env = dict(os.environ, TANDEM_LOG_JSON="1")
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = process.wait(time_limit_s)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(60)
            pytest.fail(f"training did not finish {what} in {time_limit_s} s:\n{_tail(log_path)}")
        finally:
            if process.poll() is None:
                process.kill()
    assert returncode == 0, _tail(log_path)
    return log_path


def _json_lines(path: Path) -> list[dict]:
    """The JSON log events; the trainer and the gateway share the file, so a line may be torn."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
