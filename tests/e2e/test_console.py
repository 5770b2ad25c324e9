"""What a user sees: ``tandem-trainer CONFIG --with-gateway`` (``make run``'s path), run briefly
with the real gateway and Unity stand-in processes, prints mlagents-learn's console lines on
stdout (hyperparameters, one summary per ``summary_freq``, "Exported"/"Copied" models) and
keeps its stderr free of the noise a run used to print, with a few progress lines before the
first summary.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from benchmarks.ports import free_base_port
from tests.e2e.test_train_3dball import _tool

TIME_LIMIT_S = 420
CONFIG = textwrap.dedent(
    """
    behaviors:
      3DBall:
        trainer_type: ppo
        hyperparameters: {batch_size: 32, buffer_size: 320, num_epoch: 1}
        network_settings: {hidden_units: 16, num_layers: 1}
        keep_checkpoints: 5
        checkpoint_interval: 1000
        max_steps: 2000
        time_horizon: 64
        summary_freq: 1000
    """
)
SUMMARY = re.compile(
    r"\[INFO\] 3DBall\. Step: (\d+)\. Time Elapsed: \d+\.\d{3} s\. "
    r"(Mean Reward: -?\d+\.\d{3}\. Std of Reward: \d+\.\d{3}|No episode was completed since last summary)\. "
    r"Training\.( Episodes by polic(?:y \d+|ies \d+-\d+), lag (\d+\.\d{2})\.)?"
)
#: lines that used to flood stderr (per update, per setting, per library probe, at shutdown)
NOISE = ("snapshot received", "Unable to initialize backend", "Got goaway", "chttp2_transport", "project.license")


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_trainer_with_gateway_prints_mlagents_console_on_stdout_and_no_noise(tmp_path):
    config = tmp_path / "3DBall.yaml"
    config.write_text(CONFIG)
    results = tmp_path / "results"
    cmd = [
        *_tool("tandem-trainer"), str(config), "--run-id", "console", "--results-dir", str(results),
        "--listen", "127.0.0.1:0", "--base-port", str(free_base_port()), "--seed", "1", "--with-gateway",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("TANDEM_LOG_JSON", "TANDEM_LOG_LEVEL")}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=TIME_LIMIT_S)
    stdout, stderr = done.stdout.splitlines(), done.stderr.splitlines()
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report

    # the hyperparameters once, when the behavior's trainer is created, in mlagents' layout
    dumps = [i for i, line in enumerate(stdout) if line == "[INFO] Hyperparameters for behavior name 3DBall: "]
    assert len(dumps) == 1, report
    assert stdout[dumps[0] + 1 : dumps[0] + 3] == ["\ttrainer_type:\tppo", "\thyperparameters:\t"], report
    # one summary per summary_freq
    matches = [m for m in map(SUMMARY.fullmatch, stdout) if m]
    steps = [int(m.group(1)) for m in matches]
    assert [step // 1000 for step in steps] == [1, 2], report
    # Tandem's addition: which policies acted the episodes, and the lag: 0, PPO is on-policy
    assert all(m.group(4) == "0.00" for m in matches if m.group(3)), report
    # a model per checkpoint, and the final one copied next to the run, in mlagents' words
    run = results / "console"
    model = re.escape(str(run / "3DBall" / "3DBall-")) + r"\d+\.onnx"
    exported = [line for line in stdout if re.fullmatch(rf"\[INFO\] Exported {model}", line)]
    assert len(exported) >= 2, report
    copied = [line for line in stdout if line.startswith("[INFO] Copied ")]
    assert len(copied) == 1 and re.fullmatch(rf"\[INFO\] Copied {model} to {re.escape(str(run / '3DBall.onnx'))}\.", copied[0]), report
    # mlagents-envs' own lines come once, on stdout only (its loggers print them themselves)
    connected = [line for line in stdout if line.startswith("[INFO] Connected to Unity environment")]
    assert len(connected) == 1, report
    assert not any("Connected to Unity environment" in line for line in stderr), report

    # stderr: Tandem's logs with the ML-Agents level prefix, without the noise
    for noise in NOISE:
        assert not any(noise in line for line in stderr), f"{noise!r} in stderr:\n{done.stderr}"
    assert sum("engine configuration" in line for line in stderr) <= 1, report  # was one per setting
    assert not any(SUMMARY.search(line) for line in stderr), report
    # progress before the first summary: the learner's creation, steps collected, the first update's
    # compilation and its time
    assert any(line.startswith("[INFO] creating the learner behavior=3DBall") for line in stderr), report
    assert any(line.startswith("[INFO] collecting experience behavior=3DBall") for line in stderr), report
    assert any(line.startswith("[INFO] first update: compiling") for line in stderr), report
    assert any(re.match(r"\[INFO\] first update done behavior=3DBall\S* seconds=\d", line) for line in stderr), report
    assert Path(run / "3DBall.onnx").is_file()
