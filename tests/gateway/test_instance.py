"""UnityInstance (re)starts against the real stand-in while its port is briefly held."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading

import numpy as np
import pytest

from gateway.env import instance as environment
from gateway.env.instance import BehaviorActions, InstanceFailure, UnityInstance
from gateway.options import GatewayOptions, OptionsError, validate
from gateway_helpers import environment_options


def _zero_actions(out) -> dict[str, BehaviorActions]:
    """Zero actions for every agent awaiting a decision in ``out`` (3DBall: 2 continuous, no discrete)."""
    return {
        name: BehaviorActions(np.zeros((len(dec), 2), np.float32), np.zeros((len(dec), 0), np.int32))
        for name, (dec, _) in out.items()
    }


def _hold(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("localhost", port))
    sock.listen()
    return sock


def test_open_waits_for_a_port_still_held_by_the_previous_server():
    options = environment_options()
    holder = _hold(options.port(0))
    threading.Timer(1.0, holder.close).start()  # released a moment later, as after a crash
    instance = UnityInstance(options, 0)
    try:
        instance.open()
        assert instance.unity_pid is not None
    finally:
        instance.close()


def test_a_port_that_stays_in_use_is_a_clear_failure(monkeypatch):
    monkeypatch.setattr(environment, "PORT_RELEASE_WAIT_S", 0.5)
    options = environment_options()
    holder = _hold(options.port(0))
    try:
        with pytest.raises(InstanceFailure, match="instance 0: Unity did not start: .*worker number 0 is still in use"):
            UnityInstance(options, 0).open()
    finally:
        holder.close()


def test_work_alongside_a_step_runs_once_before_unity_answers_and_also_when_the_step_fails():
    instance = UnityInstance(environment_options(env_args=("--num-agents", "2")), 0)
    try:
        instance.open()
        out = instance.reset()
        communicator = instance._env._communicator
        calls = []

        def alongside():
            # called by the communicator inside the exchange (Unity has the actions, its answer
            # is not read yet), not by the fallback after the step
            calls.append(communicator.while_unity_steps is not None)

        for _ in range(3):
            out = instance.step(_zero_actions(out), while_unity_steps=alongside)
        assert calls == [True, True, True]
        os.kill(instance.unity_pid, signal.SIGKILL)
        attempts = 0
        with pytest.raises(InstanceFailure):
            for _ in range(50):  # the kill may land between steps
                attempts += 1
                instance.step({}, while_unity_steps=alongside)
        assert len(calls) == 3 + attempts  # once per step, the failed one included
    finally:
        instance.close()


def test_an_error_of_the_work_alongside_is_raised_after_the_step_not_taken_for_a_unity_failure():
    instance = UnityInstance(environment_options(env_args=("--num-agents", "1")), 0)
    try:
        instance.open()
        out = instance.reset()

        def broken():
            raise BrokenPipeError("the parent is gone")

        with pytest.raises(BrokenPipeError, match="the parent is gone"):
            instance.step(_zero_actions(out), while_unity_steps=broken)
        assert instance.step({})  # Unity is fine and answers the next step
    finally:
        instance.close()


def test_each_player_logs_to_player_n_log_in_the_log_folder_and_a_failure_says_where(tmp_path):
    folder = tmp_path / "run_logs"  # created by the instance, as mlagents-learn's run_logs
    instance = UnityInstance(environment_options(num_envs=2, log_folder=str(folder)), 1)
    log = folder / "Player-1.log"  # Player-<worker id>.log, as mlagents-envs names it
    try:
        instance.open()
        out = instance.reset()
        instance.step(_zero_actions(out))
        assert instance.player_log == str(log)
        assert "player starting" in log.read_text()
        os.kill(instance.unity_pid, signal.SIGKILL)
        with pytest.raises(InstanceFailure, match=re.escape(f"(player log: {log})")):
            for _ in range(50):  # the kill may land between steps
                instance.step({})
        instance.close()
        instance.open()  # a restart: the failed player's log is kept beside the new one
        assert "player starting" in (folder / "Player-1-prev.log").read_text()
        assert "player starting" in log.read_text()
    finally:
        instance.close()


def test_the_log_folder_option_is_made_absolute_and_a_log_file_in_env_args_wins(tmp_path, monkeypatch):
    from gateway.cli import build_parser, options_from_args

    monkeypatch.chdir(tmp_path)
    environment = options_from_args(build_parser().parse_args(["--log-folder", "logs"])).environment
    assert environment.log_folder == str(tmp_path / "logs")
    assert options_from_args(build_parser().parse_args([])).environment.log_folder is None
    with pytest.raises(OptionsError, match="--log-folder"):
        validate(GatewayOptions(environment=environment_options(log_folder="relative/logs")))
    own = UnityInstance(environment_options(log_folder=str(tmp_path), env_args=("-logFile", "/tmp/mine.log")), 0)
    assert own.player_log == "/tmp/mine.log"
    assert UnityInstance(environment_options(), 0).player_log is None
