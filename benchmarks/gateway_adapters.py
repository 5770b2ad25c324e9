"""``bench_gateway``'s adapter rows: agent-steps/s through the Gymnasium vector env and the dm_env_rpc endpoint.

Why: the adapters (issue 21) must cost little over the plain Python client
(``gateway.remote.client``), target at most 10 % fewer agent-steps/s. One
``tandem-gateway`` process on the stand-in's 3DBall (one instance, N agents) serves the
three side by side, measured in turn (plain, Gymnasium, dm_env_rpc, plain, ...), each
with uniformly random continuous actions:

* plain: the Python client's Play stream, actions from ``random_step_actions``;
* Gymnasium: ``tandem_envs.gymnasium_env.UnityVectorEnv`` (one slot per agent);
* dm_env_rpc: dm_env_rpc's own ``DmEnvAdaptor`` (what a dm_env user runs) on the
  gateway's ``--dm-env-rpc-listen`` endpoint, asking for the observations an agent loop
  needs (the sensor, ``reward``, ``discount``, ``decision_requested``).

Agent-steps = agents that requested a decision, summed over steps, for all three.
Called by ``bench_gateway.main`` (``--adapters-only`` runs just these rows).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import report

RESULTS = Path(__file__).parent / "results" / "bench_gateway_adapters.md"
BALL = "3DBall?team=0"


def _rate(step: Callable[[], int], seconds: float) -> float:
    """Agent-steps/s of ``step`` (returns the agents that acted) after a 1 s warm-up."""
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline:
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += step()
    return count / (time.perf_counter() - start)


def plain(address: str, seconds: float) -> float:
    from benchmarks.bench_gateway import random_step_actions
    from gateway.remote.client import GatewayClient

    with GatewayClient(address) as client:
        specs = client.specs()
        session = client.play()
        rng = np.random.default_rng(0)
        state = {"steps": session.reset()}

        def step() -> int:
            actions, n = random_step_actions(state["steps"], specs, rng)
            state["steps"] = session.step(actions)
            return n

        try:
            return _rate(step, seconds)
        finally:
            session.close()


def gymnasium_vector(address: str, seconds: float) -> float:
    from tandem_envs.gymnasium_env import UnityVectorEnv

    env = UnityVectorEnv(address, behavior=BALL)
    rng = np.random.default_rng(0)
    try:
        env.reset()
        state = {"acting": np.ones(env.num_envs, bool)}

        def step() -> int:
            n = int(state["acting"].sum())
            actions = rng.uniform(-1, 1, (env.num_envs, 2)).astype(np.float32)
            _, _, _, _, info = env.step(actions)
            state["acting"] = info["decision_requested"]
            return n

        return _rate(step, seconds)
    finally:
        env.close()


def dm_env_rpc(address: str, seconds: float) -> float:
    import grpc
    from dm_env_rpc.v1 import connection, dm_env_adaptor, dm_env_rpc_pb2

    channel = grpc.insecure_channel(address)
    conn = connection.Connection(channel)
    try:
        world = conn.send(dm_env_rpc_pb2.CreateWorldRequest()).world_name
        specs = conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=world)).specs
        wanted = ["VectorSensor_size8", "reward", "discount", "decision_requested"]
        env = dm_env_adaptor.DmEnvAdaptor(conn, specs, requested_observations=wanted)
        n = env.action_spec()["continuous"].shape[0]
        rng = np.random.default_rng(0)
        env.reset()
        state = {"acting": np.ones(n, bool)}

        def step() -> int:
            acting = int(state["acting"].sum())
            timestep = env.step({"continuous": rng.uniform(-1, 1, (n, 2)).astype(np.float32)})
            state["acting"] = timestep.observation["decision_requested"]
            return acting

        rate = _rate(step, seconds)
        conn.send(dm_env_rpc_pb2.LeaveWorldRequest())
        conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))
        return rate
    finally:
        conn.close()
        channel.close()


MODES = {"plain client": plain, "Gymnasium VectorEnv": gymnasium_vector, "dm_env_rpc (DmEnvAdaptor)": dm_env_rpc}


def measure(agents: int, seconds: float, repeats: int) -> dict[str, list[float]]:
    """Every mode's agent-steps/s, ``repeats`` times interleaved, on one gateway process."""
    from benchmarks.bench_gateway import start_gateway_process, stop_process

    ready: dict = {}
    proc, port = start_gateway_process(agents, 1, extra=["--dm-env-rpc-listen", "127.0.0.1:0"], ready=ready)
    addresses = {
        "plain client": f"127.0.0.1:{port}",
        "Gymnasium VectorEnv": f"127.0.0.1:{port}",
        "dm_env_rpc (DmEnvAdaptor)": f"127.0.0.1:{ready['dm_env_rpc_port']}",
    }
    try:
        out: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(repeats):
            for mode, run in MODES.items():
                out[mode].append(run(addresses[mode], seconds))
        return out
    finally:
        stop_process(proc)


def render(rows: dict[int, dict[str, list[float]]], seconds: float, repeats: int) -> str:
    lines = [
        "# bench_gateway (adapters): agent-steps/s through the Gymnasium and dm_env_rpc adapters vs the plain client",
        "",
        f"Command: `python -m benchmarks.bench_gateway --adapters-only` ({seconds:g} s per measurement, {repeats} "
        "measurements per mode interleaved: plain, Gymnasium, dm_env_rpc, plain, ...; medians shown; all figures "
        f"from one run). Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({report.cpu_name()}, {platform.python_implementation()} "
        f"{platform.python_version()}), shared with other work while measuring. Scene: one `tandem-gateway` process "
        "(one stand-in 3DBall instance, `--num-agents` N, `--dm-env-rpc-listen`), random continuous actions; "
        "agent-steps = agents that requested a decision. See `benchmarks/gateway_adapters.py` for what each mode runs.",
        "",
        "| agents | plain client (agent-steps/s) | Gymnasium VectorEnv | Gymnasium / plain | dm_env_rpc (DmEnvAdaptor) "
        "| dm_env_rpc / plain |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    goals = []
    for agents, by_mode in rows.items():
        med = {mode: float(np.median(values)) for mode, values in by_mode.items()}
        base = med["plain client"]
        gym, dm = med["Gymnasium VectorEnv"], med["dm_env_rpc (DmEnvAdaptor)"]
        lines.append(f"| {agents} | {base:.0f} | {gym:.0f} | {gym / base:.2f}x | {dm:.0f} | {dm / base:.2f}x |")
        for label, value in (("Gymnasium VectorEnv", gym), ("dm_env_rpc", dm)):
            ratio = value / base
            goals.append(
                f"- {label} >= 0.90x the plain client, {agents} agents: {ratio:.2f}x, "
                f"{'met' if ratio >= 0.9 else 'NOT met'}"
            )
    lines += ["", "Every measurement (agent-steps/s), to judge the noise:", ""]
    for agents, by_mode in rows.items():
        parts = "; ".join(f"{mode} {', '.join(f'{v:.0f}' for v in values)}" for mode, values in by_mode.items())
        lines.append(f"- {agents} agents: {parts}")
    lines += ["", "## Goals (issue 21: the adapters add at most 10 %)", "", *goals, ""]
    return "\n".join(lines)


def main(agents: list[int], seconds: float, repeats: int, out: Path = RESULTS) -> None:
    rows = {n: measure(n, seconds, repeats) for n in agents}
    report.write_results(out, render(rows, seconds, repeats))
