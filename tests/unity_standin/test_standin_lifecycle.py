"""Launching, connecting and ending like a Unity player, and how failures show up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from standin_helpers import free_port
from mlagents_envs.environment import UnityEnvironment
from mlagents_envs.exception import (
    UnityCommunicatorStoppedException,
    UnityEnvironmentException,
    UnityTimeOutException,
)

import unity_standin
from unity_standin.tasks import task_names
from gateway.env.unity_environment import open_unity_environment

BALL = "3DBall?team=0"
GRID = "GridWorld?team=0"


def test_executable_path_is_the_installed_script():
    path = unity_standin.executable_path()
    assert os.path.isabs(path) and os.access(path, os.X_OK)
    assert os.path.basename(path) == "tandem-unity-standin"


def test_close_ends_the_player_with_status_zero(open_env):
    env = open_env("3dball")
    process = env._process  # the launched player; mlagents-envs drops it on close
    env.reset()
    env.step()
    env.close()
    assert process.wait(timeout=10) == 0


def test_close_right_after_connecting_also_exits_cleanly(open_env):
    env = open_env("3dball")
    process = env._process
    env.close()
    assert process.wait(timeout=10) == 0


def test_editor_style_connection_on_a_given_port(tmp_path):
    port = free_port()
    log = tmp_path / "editor.log"
    player = subprocess.Popen(
        [unity_standin.executable_path(), "--mlagents-port", str(port), "--task", "gridworld", "-logFile", str(log)]
    )
    try:
        env = UnityEnvironment(file_name=None, worker_id=0, base_port=port, timeout_wait=10)
        try:
            env.reset()
            assert GRID in env.behavior_specs
            env.step()
        finally:
            env.close()
        assert player.wait(timeout=10) == 0
    finally:
        if player.poll() is None:
            player.kill()
    text = log.read_text()
    assert "connected to trainer" in text and "player quitting" in text


def test_nothing_listening_gives_a_timeout_error():
    start = time.monotonic()
    with pytest.raises(UnityTimeOutException):
        open_unity_environment(None, worker_id=0, base_port=free_port(), timeout_wait=1)  # raised to 10
    assert 9 <= time.monotonic() - start < 30


def test_a_killed_player_is_detected_not_waited_for(open_env):
    env = open_env("3dball")
    env.reset()
    os.kill(env._process.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises((UnityEnvironmentException, UnityCommunicatorStoppedException)) as caught:
        for _ in range(100):
            env.step()
    assert time.monotonic() - start < 15
    assert "SIGKILL" in str(caught.value) or "Communicator" in str(caught.value)


def test_unity_arguments_log_file_and_unknown_arguments(open_env, tmp_path):
    env = open_env(
        "3dball",
        args=["-screen-width", "84", "-screen-height", "84", "--some-unity-flag"],
        log_folder=str(tmp_path),
    )
    env.reset()
    env.close()
    text = (tmp_path / "Player-0.log").read_text()
    assert "ignoring unknown arguments" in text and "-screen-width" in text
    assert "player starting" in text


def test_task_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv("TANDEM_STANDIN_TASK", "multibehavior")
    env = open_unity_environment(unity_standin.executable_path(), worker_id=0, base_port=free_port(), timeout_wait=10)
    try:
        env.reset()
        assert set(env.behavior_specs) == {"Chaser?team=0", "Runner?team=0"}
    finally:
        env.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task 'nope'; known tasks: " + ", ".join(task_names())),
        (["--num-agents", "0"], "expected a positive integer, got 0"),
        (["--mlagents-port", "abc"], "expected a port number, got 'abc'"),
        (["--decision-period", "x"], "expected a positive integer, got 'x'"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message):
    result = subprocess.run(
        [unity_standin.executable_path(), *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_no_trainer_at_start_ends_with_status_1():
    result = subprocess.run(
        [sys.executable, "-m", "unity_standin.cli", "--mlagents-port", str(free_port()), "--connect-timeout", "0.5"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "lost the connection to the trainer" in result.stderr


@pytest.mark.slow
def test_large_outputs_pass_the_raised_message_limit(open_env):
    # 20000 gridworld agents: one output is well over gRPC's default 4 MiB. Building it takes
    # seconds, many more on a loaded machine: timeout_wait only bounds the wait (the player
    # process is checked every second), it does not pace the test.
    env = open_env("gridworld", args=["--num-agents", "20000"], timeout_wait=300)
    env.reset()
    decision, _ = env.get_steps(GRID)
    assert len(decision) == 20000
    assert decision.obs[0].shape == (20000, 3, 24, 24)


@pytest.mark.slow
def test_the_default_message_limit_rejects_the_same_outputs():
    # Why gateway.env.unity_environment exists: mlagents-envs' own server refuses outputs over 4 MiB;
    # the player reports RESOURCE_EXHAUSTED and quits, the client sees it exit. timeout_wait
    # bounds the wait for the player's start and output (seconds, or a minute on a loaded
    # machine); its exit is what ends the wait (mlagents checks the process every tenth of it).
    env = UnityEnvironment(
        unity_standin.executable_path(), worker_id=0, base_port=free_port(), timeout_wait=120,
        additional_args=["--task", "gridworld", "--num-agents", "20000"],
    )
    try:
        with pytest.raises(UnityEnvironmentException, match="return code 1"):
            env.reset()
    finally:
        env.close()


def test_parser_defaults_to_the_editor_port_and_keeps_unknown_arguments():
    from unity_standin.cli import build_parser

    args, ignored = build_parser().parse_known_args(["-batchmode", "-nographics", "-screen-quality", "Fast"])
    assert args.mlagents_port == 5004 and args.task is None and args.batchmode and args.nographics
    assert ignored == ["-screen-quality", "Fast"]
    args, _ = build_parser().parse_known_args(["--mlagents-port", "6000", "-logfile", "x.log", "--num-agents", "3"])
    assert (args.mlagents_port, args.log_file, args.num_agents) == (6000, "x.log", 3)


def test_log_file_dash_writes_the_log_to_stdout():
    result = subprocess.run(
        [unity_standin.executable_path(), "-logFile", "-", "--mlagents-port", str(free_port()),
         "--connect-timeout", "0.2"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "player starting" in result.stdout and result.stderr == ""
