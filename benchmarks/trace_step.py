"""Where one step's time goes, process by process: a timeline of remote control and of the direct loop.

Why: ``bench_gateway`` measures whole steps; to know which part of a remote-control
step to make cheaper, this diagnostic timestamps each hand-over along the path
(client -> gateway -> Unity stand-in -> gateway -> client) with ``time.perf_counter_ns``
(CLOCK_MONOTONIC on Linux, so the three processes' clocks agree), and the same for a
direct ``UnityEnvironment`` loop (script -> stand-in -> script). The median of each
segment over every step goes to ``benchmarks/results/trace_step.md``.

The probes wrap named functions of the gateway, mlagents-envs and the stand-in (the
``PROBES`` table); each adds about a microsecond. The gateway and the stand-in run
through this module (``--probe ROLE -- ARGS``), which installs the probes, runs the
real entry point and writes the timestamps to a file every second. A renamed
function makes the probe fail loudly.

Run: ``python -m benchmarks.trace_step [--agents 1 16] [--seconds 3]`` (not part of ``make bench``).
"""

from __future__ import annotations

import argparse
import bisect
import importlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from common.logging import configure_logging, get_logger

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "trace_step.md"

#: role -> (module, attribute path, label): the label's "begin"/"end" events mark the call
PROBES = {
    "gateway": [
        ("gateway.remote.service", "GatewayServicer._answer", "gateway answers a request"),
        ("gateway.remote.service", "decode_step_request", "gateway validates the actions"),
        ("gateway.remote.pool", "EnvironmentPool.step", "pool steps"),
        ("mlagents_envs.environment", "UnityEnvironment.set_actions", "mlagents set_actions"),
        ("gateway.env.unity_environment", "LargeMessageRpcCommunicator._to_unity", "gateway hands the input over"),
        ("gateway.env.unity_environment", "_Handoff._call", "gateway gRPC thread serves Unity's Exchange"),
        ("gateway.env.unity_environment", "LargeMessageRpcCommunicator._from_unity", "gateway waits for Unity"),
        ("mlagents_envs.environment", "UnityEnvironment._update_state", "mlagents reads Unity's output"),
        ("gateway.env.workers", "InstanceWorker.result", "gateway encodes Steps"),
    ],
    "standin": [
        ("unity_standin.communicator", "Communicator._call", "Unity's Exchange call"),
    ],
    "direct": [
        ("mlagents_envs.environment", "UnityEnvironment.step", "mlagents step"),
        ("mlagents_envs.rpc_communicator", "RpcCommunicator.exchange", "mlagents exchange"),
        ("mlagents_envs.rpc_communicator", "UnityToExternalServicerImplementation.Exchange",
         "mlagents gRPC thread serves Unity's Exchange"),
        ("mlagents_envs.environment", "UnityEnvironment._update_state", "mlagents reads Unity's output"),
    ],
}

log = get_logger("benchmarks.trace_step")


class Recorder:
    """Timestamps of one process, written to ``path`` every second and at exit."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: list[tuple[str, int]] = []
        threading.Thread(target=self._flush_forever, daemon=True).start()

    def record(self, name: str) -> None:
        self.events.append((name, time.perf_counter_ns()))

    def flush(self) -> None:
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.events, f)
        os.replace(tmp, self.path)

    def _flush_forever(self) -> None:
        while True:
            time.sleep(1.0)
            self.flush()


def install(role: str, recorder: Recorder) -> None:
    """Wraps every probe of ``role`` so that calls record "<label> begin" and "<label> end"."""
    for module_name, path, label in PROBES[role]:
        owner = importlib.import_module(module_name)
        *parents, attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part)
        original = getattr(owner, attr)  # AttributeError: the probe table is out of date

        def probe(*args, _f=original, _label=label, **kwargs):
            recorder.record(f"{_label} begin")
            try:
                return _f(*args, **kwargs)
            finally:
                recorder.record(f"{_label} end")

        setattr(owner, attr, probe)


def run_probed(role: str, out: str, argv: list[str]) -> int:
    """Entry point of a probed gateway or stand-in process."""
    recorder = Recorder(out)
    install(role, recorder)
    try:
        if role == "gateway":
            from gateway.cli import main
        else:
            from unity_standin.cli import main
        return main(argv)
    finally:
        recorder.flush()


def _standin_wrapper(directory: str) -> str:
    """An executable that runs the probed stand-in (the gateway launches it as its Unity build)."""
    path = os.path.join(directory, "probed-standin")
    with open(path, "w") as f:
        f.write(
            "#!/bin/sh\n"
            f"PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}} exec {sys.executable} -m benchmarks.trace_step "
            f"--probe standin --out {directory}/standin.json -- \"$@\"\n"
        )
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def _drain(stream) -> None:
    for _ in stream:
        pass


def _segments(marks: list[tuple[int, list[tuple[str, int]]]]) -> list[tuple[str, float]]:
    """Median duration of each segment between consecutive events, over the steps whose
    event sequence is the most common one (a step with a GC pause or a log line in between
    keeps its sequence; only steps with missing or extra events are left out)."""
    common, _ = Counter(tuple(n for n, _ in events) for _, events in marks).most_common(1)[0]
    durations = np.array(
        [np.diff([t for _, t in events]) for _, events in marks if tuple(n for n, _ in events) == common]
    ) / 1e3
    medians = np.median(durations, axis=0)
    return [(f"{a} -> {b}", float(m)) for a, b, m in zip(common[:-1], common[1:], medians)]


def _load(paths: list[str]) -> list[tuple[str, int]]:
    events = []
    for p in paths:
        with open(p) as f:
            events += [tuple(e) for e in json.load(f)]
    return sorted(events, key=lambda e: e[1])


def trace_remote(agents: int, seconds: float, directory: str) -> tuple[list[tuple[str, float]], float]:
    """Timeline of remote-control steps (the Python client of ``bench_gateway``)."""
    from benchmarks.bench_gateway import stop_process
    from benchmarks.ports import free_base_port
    from gateway.remote.client import GatewayClient, decode_steps, random_actions
    from tandem.v1 import gateway_pb2

    cmd = [
        sys.executable, "-m", "benchmarks.trace_step", "--probe", "gateway", "--out", f"{directory}/gateway.json",
        "--", "--listen", "127.0.0.1:0", "--log-json", "--env", _standin_wrapper(directory),
        "--base-port", str(free_base_port(1)), "--no-graphics", "--env-args", "--num-agents", str(agents),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        if '"gateway ready"' in line:
            port = json.loads(line)["port"]
            break
    if port is None:
        proc.wait()
        raise RuntimeError("the probed gateway did not start")
    threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()  # else the gateway blocks on a full pipe
    client = GatewayClient(f"127.0.0.1:{port}")
    marks = []
    try:
        specs = client.specs()
        session = client.play()
        rng = np.random.default_rng(0)

        def request_for(steps) -> gateway_pb2.PlayRequest:
            request = gateway_pb2.PlayRequest()
            request.step.SetInParent()
            for view in decode_steps(steps, specs):
                if len(view.decisions):
                    random_actions(view, specs[view.behavior], rng, request.step.actions.add())
            return request

        steps = session.reset()
        for _ in range(300):
            steps = session.request(request_for(steps)).steps
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter_ns()
            request = request_for(steps)
            t1 = time.perf_counter_ns()
            steps = session.request(request).steps
            t2 = time.perf_counter_ns()
            marks.append((t0, t1, t2))
        session.close()
    finally:
        client.close()
        stop_process(proc)
    time.sleep(1.5)  # the stand-in's last flush
    events = _load([f"{directory}/gateway.json", f"{directory}/standin.json"])
    times = [t for _, t in events]
    steps_marks = []
    for (t0, t1, t2), (next_t0, _, _) in zip(marks, marks[1:]):
        inside = events[bisect.bisect_left(times, t1) : bisect.bisect_right(times, t2)]
        steps_marks.append((t0, [("client decodes and picks actions", t0), ("client sends", t1), *inside,
                                 ("client has the answer", t2), ("client's next step", next_t0)]))
    step_us = float(np.median([b[0] - a[0] for a, b in zip(marks, marks[1:])])) / 1e3
    return _segments(steps_marks), step_us


def trace_direct(agents: int, seconds: float, directory: str) -> tuple[list[tuple[str, float]], float]:
    """Timeline of a direct ``UnityEnvironment`` loop (as ``bench_gateway``'s), in this process."""
    from mlagents_envs.environment import UnityEnvironment
    from mlagents_envs.side_channel.stats_side_channel import StatsSideChannel

    from benchmarks.ports import free_base_port

    recorder = Recorder(f"{directory}/direct.json")
    install("direct", recorder)
    env = UnityEnvironment(
        _standin_wrapper(directory), worker_id=0, base_port=free_base_port(1), seed=0, no_graphics=True,
        timeout_wait=60, additional_args=["--num-agents", str(agents)], side_channels=[StatsSideChannel()],
    )
    starts = []
    try:
        env.reset()

        def step() -> None:
            for name, spec in env.behavior_specs.items():
                decisions, _ = env.get_steps(name)
                if len(decisions):
                    env.set_actions(name, spec.action_spec.random_action(len(decisions)))
            env.step()

        for _ in range(300):
            step()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            recorder.record("loop picks actions")
            starts.append(time.perf_counter_ns())
            step()
        recorder.record("loop picks actions")
    finally:
        env.close()
    time.sleep(1.5)
    recorder.flush()
    events = _load([f"{directory}/direct.json", f"{directory}/standin.json"])
    events = [e for e in events if e[1] >= starts[0]]
    bounds = [i for i, (n, _) in enumerate(events) if n == "loop picks actions"]
    marks = [(events[a][1], events[a : b + 1]) for a, b in zip(bounds, bounds[1:])]
    step_us = float(np.median(np.diff(starts))) / 1e3
    return _segments(marks), step_us


def render(traces: dict[int, tuple]) -> str:
    """``traces``: agents -> (remote timeline, direct timeline), each (segments, median step us)."""
    counts = " ".join(str(n) for n in traces)
    lines = [
        "# trace_step: one step's timeline, remote control vs the direct loop",
        "",
        f"Command: `python -m benchmarks.trace_step --agents {counts}` (a diagnostic, not part of `make bench`). "
        "Medians over every step of each segment between consecutive timestamps (CLOCK_MONOTONIC, shared by "
        "the processes); the probes themselves add about a microsecond each. One instance, the stand-in's "
        "3DBall, random actions; client = `gateway.remote.client`, direct = mlagents-envs' own `UnityEnvironment`.",
        "",
    ]
    for agents, (remote, direct) in traces.items():
        for title, (segments, step_us) in (("remote control", remote), ("direct loop", direct)):
            lines += [
                f"## {agents} agent(s), {title}: median step {step_us:.0f} us",
                "",
                "| segment | median (us) |",
                "|---|---:|",
                *(f"| {name} | {us:.1f} |" for name, us in segments),
                f"| sum of the medians | {sum(us for _, us in segments):.0f} |",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--probe"]:  # a probed gateway or stand-in: --probe ROLE --out FILE -- ARGS
        split = argv.index("--") if "--" in argv else len(argv)
        parser = argparse.ArgumentParser()
        parser.add_argument("--probe", choices=("gateway", "standin"))
        parser.add_argument("--out", required=True)
        args = parser.parse_args(argv[:split])
        return run_probed(args.probe, args.out, argv[split + 1 :])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    configure_logging()
    traces = {}
    for agents in args.agents:
        with tempfile.TemporaryDirectory() as directory:
            remote = trace_remote(agents, args.seconds, directory)
        with tempfile.TemporaryDirectory() as directory:
            direct = trace_direct(agents, args.seconds, directory)
        traces[agents] = (remote, direct)
    RESULTS.write_text(render(traces))
    log.info("results written", path=str(RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
