"""Crashed and hung Unity processes, restart limits, and clean shutdown of the gateway process."""

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
import numpy as np
import pytest

from gateway.remote.client import GatewayClient, decode_steps, random_actions
from gateway.options import RestartLimits
from tandem.v1 import gateway_pb2
from gateway_helpers import environment_options, free_ports, pid_alive, pids_with_arg, running_gateway, wait_until

BALL = "3DBall?team=0"


def _step_random(session, specs, views, rng):
    actions = [random_actions(v, specs[v.behavior], rng, gateway_pb2.BehaviorActions()) for v in views if len(v.decisions)]
    return decode_steps(session.step(actions), specs)


@pytest.mark.slow
def test_killed_unity_is_restarted_and_its_agents_end_interrupted(rng):
    with running_gateway(environment_options()) as gw:
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=60)
            views = decode_steps(session.reset(), specs)
            views = _step_random(session, specs, views, rng)
            awaiting = set(views[0].decisions.agent_ids.tolist())
            old_pid = gw.pool.workers[0].unity_pid
            os.kill(old_pid, signal.SIGKILL)
            [view] = _step_random(session, specs, views, rng)
            # the agents that awaited a decision end as interrupted; the new Unity's agents decide
            assert set(view.terminals.agent_ids.tolist()) == awaiting
            assert view.terminals.interrupted.all()
            assert (view.terminals.rewards == 0).all()
            assert len(view.decisions) == 12
            [inst] = client.describe().instances
            assert (inst.restarts, inst.alive) == (1, True)
            assert gw.pool.workers[0].unity_pid not in (None, old_pid)
            assert not pid_alive(old_pid)
            # and play goes on
            for _ in range(5):
                [view] = _step_random(session, specs, [view], rng)
            session.close()


@pytest.mark.slow
def test_killed_worker_process_is_replaced_and_its_agents_end_interrupted(rng):
    with running_gateway(environment_options(single_in_process=False)) as gw:
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=90)
            views = decode_steps(session.reset(), specs)
            last_obs = views[0].decisions.observations[0].copy()
            worker = gw.pool.workers[0]
            old_unity = worker.unity_pid
            worker.process.kill()
            [view] = _step_random(session, specs, views, rng)
            assert view.terminals.interrupted.all() and len(view.terminals) == 12
            np.testing.assert_array_equal(view.terminals.observations[0], last_obs)
            assert len(view.decisions) == 12
            assert client.describe().instances[0].restarts == 1
            assert wait_until(lambda: not pid_alive(old_unity), 10)
            session.close()


@pytest.mark.slow
def test_restart_limit_reached_takes_the_instance_down_but_keeps_serving(rng):
    limits = RestartLimits(max_lifetime_restarts=0, rate_limit_n=1, rate_limit_period_s=60)
    with running_gateway(environment_options(num_envs=2, env_args=("--num-agents", "2"), restarts=limits)) as gw:
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=60)
            views = decode_steps(session.reset(), specs)
            os.kill(gw.pool.workers[1].unity_pid, signal.SIGKILL)
            views = _step_random(session, specs, views, rng)
            by_instance = {v.instance: v for v in views}
            assert by_instance[1].terminals.interrupted.all() and len(by_instance[1].terminals) == 2
            assert len(by_instance[1].decisions) == 0
            assert len(by_instance[0].decisions) == 2
            instances = client.describe().instances
            assert [(i.alive, i.restarts) for i in instances] == [(True, 0), (False, 0)]
            views = _step_random(session, specs, views, rng)
            assert [v.instance for v in views] == [0]
            # actions for the dead instance are refused, naming the field
            bad = random_actions(by_instance[0], specs[BALL], rng, gateway_pb2.BehaviorActions())
            bad.instance = 1
            with pytest.raises(grpc.RpcError) as err:
                session.step([bad])
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "step.actions[0].instance" in err.value.details()


def test_once_every_instance_is_down_requests_say_why(rng):
    limits = RestartLimits(max_lifetime_restarts=0, rate_limit_n=-1)
    with running_gateway(environment_options(restarts=limits)) as gw, GatewayClient(gw.address) as client:
        specs = client.specs()
        session = client.play(timeout_s=60)
        views = decode_steps(session.reset(), specs)
        os.kill(gw.pool.workers[0].unity_pid, signal.SIGKILL)
        [view] = _step_random(session, specs, views, rng)
        assert view.terminals.interrupted.all() and len(view.decisions) == 0
        with pytest.raises(grpc.RpcError) as err:
            session.step([])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "every environment instance is down (instance 0: restart limits reached after:" in err.value.details()


@pytest.mark.slow
def test_hung_unity_is_detected_after_timeout_wait_and_restarted(rng):
    with running_gateway(environment_options(timeout_wait=10)) as gw:
        with GatewayClient(gw.address) as client:
            specs = client.specs()
            session = client.play(timeout_s=120)
            views = decode_steps(session.reset(), specs)
            pid = gw.pool.workers[0].unity_pid
            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                [view] = _step_random(session, specs, views, rng)
                waited = time.monotonic() - started
            finally:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            assert 9 <= waited < 40
            assert view.terminals.interrupted.all() and len(view.terminals) == 12
            assert len(view.decisions) == 12
            assert client.describe().instances[0].restarts == 1
            session.close()


def _start_cli(*args: str, env=None, start_new_session: bool = False) -> tuple[subprocess.Popen, dict, list[str]]:
    """Runs ``tandem-gateway`` and waits for its "gateway ready" JSON log line."""
    exe = Path(sys.executable).with_name("tandem-gateway")
    proc = subprocess.Popen(
        [str(exe), "--listen", "127.0.0.1:0", "--log-json", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=start_new_session,
    )
    lines: list[str] = []
    ready: dict = {}
    got_ready = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if '"gateway ready"' in line:
                ready.update(json.loads(line))
                got_ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not got_ready.wait(60):
        proc.kill()
        raise AssertionError("gateway did not become ready:\n" + "".join(lines[-30:]))
    return proc, ready, lines


@pytest.mark.slow
@pytest.mark.parametrize("num_envs", [1, 2])  # 1: the instance steps inside the gateway process
@pytest.mark.parametrize(
    "signum, to_group",
    # to the whole process group, as ``timeout`` and container runtimes send it: the worker
    # processes get it too (Unity runs in its own session, as mlagents-envs launches it)
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
)
def test_signal_shuts_down_closing_unity_cleanly_and_leaving_no_unity_process(tmp_path, signum, to_group, num_envs):
    base = free_ports(num_envs)
    proc, ready, lines = _start_cli(
        "--num-envs", str(num_envs), "--base-port", str(base), "--timeout-wait", "10", "--log-folder", str(tmp_path),
        start_new_session=True,
    )
    try:
        unity = [pid for i in range(num_envs) for pid in pids_with_arg("--mlagents-port", str(base + i))]
        assert len(unity) == num_envs
        with GatewayClient(f"127.0.0.1:{ready['port']}") as client:
            session = client.play(timeout_s=30)
            session.reset()
            if to_group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            assert proc.wait(30) == 0
        assert wait_until(lambda: not any(pid_alive(p) for p in unity), 20)
        assert any('"gateway stopped"' in line for line in lines)
        for i in range(num_envs):  # Unity got its closing message, not a broken connection
            text = (tmp_path / f"Player-{i}.log").read_text()
            assert "trainer closed the connection" in text and "player quitting" in text, text[-2000:]
            assert "lost the connection" not in text, text[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_rejects_bad_options_naming_them():
    exe = Path(sys.executable).with_name("tandem-gateway")
    for args, named in (
        (["--timeout-wait", "5"], "--timeout-wait"),
        (["--num-envs", "0"], "--num-envs"),
        (["--listen", "nowhere"], "--listen"),
        (["--tls-cert", "/nonexistent.pem"], "--tls-cert"),
        (["--env", "/no/such/build"], "--env"),
        (["--trainer", "no-port"], "--trainer"),
    ):
        out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2, (args, out.stderr)
        assert named in out.stderr, (args, out.stderr)


def test_cli_reports_a_taken_listen_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        exe = Path(sys.executable).with_name("tandem-gateway")
        out = subprocess.run(
            [str(exe), "--listen", f"127.0.0.1:{s.getsockname()[1]}", "--base-port", str(free_ports(1))],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2
        assert "--listen" in out.stderr
    finally:
        s.close()


def test_a_single_instance_steps_in_process_unless_worker_process_is_asked():
    from gateway.cli import build_parser, options_from_args
    from gateway.env.workers import InProcessWorkerHandle, WorkerHandle
    from gateway.remote.pool import EnvironmentPool

    default = options_from_args(build_parser().parse_args([])).environment
    isolated = options_from_args(build_parser().parse_args(["--worker-process"])).environment
    assert default.single_in_process and not isolated.single_in_process
    assert isinstance(EnvironmentPool(default).workers[0], InProcessWorkerHandle)
    assert isinstance(EnvironmentPool(isolated).workers[0], WorkerHandle)
    two = options_from_args(build_parser().parse_args(["--num-envs", "2"])).environment
    assert all(isinstance(w, WorkerHandle) for w in EnvironmentPool(two).workers)


@pytest.mark.parametrize("num_envs", [1, 2])  # 1: the in-process instance; 2: worker processes
def test_instances_that_cannot_start_are_one_clear_error_and_nothing_is_left_running(tmp_path, num_envs):
    import dataclasses

    from gateway.env.workers import PoolError
    from gateway.remote.pool import EnvironmentPool

    missing = str(tmp_path / "NoSuchBuild.x86_64")
    pool = EnvironmentPool(dataclasses.replace(environment_options(num_envs=num_envs), file_name=missing))
    with pytest.raises(PoolError, match="environment instances failed to start: instance 0: Unity did not start"):
        pool.start()
    assert all(getattr(w, "process", None) is None and w.unity_pid is None for w in pool.workers)
    with pytest.raises(PoolError, match="shutting down"):
        pool.reset()
