"""The Unity Editor (``--env editor``): leaving Play, coming back, vanishing, Editor advice.

The stand-in plays the Editor: started by the test on the gateway's port (the user
pressing Play), ``--leave-play-after`` says goodbye as the Editor does when the user
leaves Play mode, SIGKILL is an Editor that vanishes without goodbye.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest

import unity_standin
from fake_trainer import FakeTrainerServer, TrainerState
from gateway.env.workers import PoolError
from gateway.options import ActorOptions, RestartLimits
from gateway.remote.client import GatewayClient, decode_steps, random_actions
from gateway_helpers import environment_options, running_gateway, wait_until
from tandem.v1 import gateway_pb2

#: ML-Agents' default limits for builds: one restart per minute
BUILD_LIMITS = RestartLimits(max_lifetime_restarts=10, rate_limit_n=1, rate_limit_period_s=60)


def _editor_options(timeout_wait: int = 10):
    return replace(environment_options(restarts=BUILD_LIMITS, timeout_wait=timeout_wait), file_name=None)


def _press_play(port: int, *args: str) -> subprocess.Popen:
    """The user presses Play: the Editor (the stand-in) connects to the waiting gateway."""
    return subprocess.Popen(
        [unity_standin.executable_path(), "--mlagents-port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _reset_once_playing(client: GatewayClient, specs, timeout_s: float = 90):
    """Resets as soon as the Editor is in Play mode; until then the gateway answers UNAVAILABLE."""
    deadline = time.monotonic() + timeout_s
    while True:
        session = client.play(timeout_s=30)
        try:
            return session, decode_steps(session.reset(), specs)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            assert "press Play in the Editor" in err.details(), err.details()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _step_random(session, specs, views, rng):
    actions = [random_actions(v, specs[v.behavior], rng, gateway_pb2.BehaviorActions()) for v in views if len(v.decisions)]
    return decode_steps(session.step(actions), specs)


def test_leaving_play_is_not_a_crash_the_instance_waits_for_the_next_play(rng):
    """Three Plays, each left after a few steps, within a minute: under the build limits (one
    restart a minute) the second would have taken the instance down; nothing is counted."""
    options = _editor_options()
    editor = _press_play(options.base_port, "--leave-play-after", "6")
    editors = [editor]
    try:
        with running_gateway(options) as gw, GatewayClient(gw.address) as client:
            specs = client.specs()
            for play in range(3):
                if play:
                    editors.append(_press_play(options.base_port, "--leave-play-after", "6"))
                session, views = _reset_once_playing(client, specs)
                assert len(views[0].decisions) == 12
                with pytest.raises(grpc.RpcError) as err:
                    for _ in range(20):
                        views = _step_random(session, specs, views, rng)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "left Play mode" in err.value.details() and "press Play in the Editor" in err.value.details()
                assert editors[-1].wait(30) == 0
                [instance] = client.describe().instances
                assert (instance.alive, instance.restarts) == (True, 0)
    finally:
        for process in editors:
            if process.poll() is None:
                process.kill()


def test_an_editor_that_vanishes_is_noticed_at_once_and_the_next_play_goes_on(rng):
    """Killed without goodbye while the client thinks: the next request is answered UNAVAILABLE
    well before --timeout-wait (60 s here; the call's deadline is 30 s), then Play goes on."""
    options = _editor_options(timeout_wait=60)
    editor = _press_play(options.base_port)
    editors = [editor]
    try:
        with running_gateway(options) as gw, GatewayClient(gw.address) as client:
            specs = client.specs()
            session, views = _reset_once_playing(client, specs)
            views = _step_random(session, specs, views, rng)
            os.kill(editor.pid, signal.SIGKILL)
            editor.wait(10)
            with pytest.raises(grpc.RpcError) as err:
                session.step([])  # no decision pending: nothing to act for
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "without a goodbye" in err.value.details() and "press Play" in err.value.details()
            editors.append(_press_play(options.base_port))
            session, views = _reset_once_playing(client, specs)
            views = _step_random(session, specs, views, rng)
            assert len(views[0].decisions) == 12
            session.close()
            assert client.describe().instances[0].restarts == 0
    finally:
        for process in editors:
            if process.poll() is None:
                process.kill()


def test_an_editor_that_never_plays_gets_editor_advice():
    with pytest.raises(PoolError) as err:
        with running_gateway(_editor_options()):
            pass
    text = str(err.value)
    assert "the Unity Editor did not answer within 10 s" in text and "press Play in the Editor" in text
    assert "--no-graphics" not in text


def test_in_actor_mode_leaving_play_is_not_counted_and_each_next_play_is_served():
    """Three Plays of 40 exchanges each: every Editor is driven to its goodbye (exit 0), and
    no restart is counted (the build limits would have taken the instance down)."""
    options = _editor_options()
    trainer = FakeTrainerServer(TrainerState(time_horizon=16))
    actor = ActorOptions(trainer=trainer.address, chunk_steps=64, flush_interval_s=0.2, reconnect_min_s=0.1)
    editors = [_press_play(options.base_port, "--leave-play-after", "40")]
    try:
        with running_gateway(options, actor=actor) as gw:
            for play in range(3):
                if play:
                    editors.append(_press_play(options.base_port, "--leave-play-after", "40"))
                assert wait_until(lambda: editors[-1].poll() is not None, 90), "the gateway drives the Editor"
                assert editors[-1].returncode == 0
            [instance] = gw.actor.instances()
            assert (instance.alive, instance.restarts) == (True, 0)
    finally:
        trainer.stop()
        for process in editors:
            if process.poll() is None:
                process.kill()
