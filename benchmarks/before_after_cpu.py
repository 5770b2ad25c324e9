"""Remote control's cost per step in a base checkout and in this one, measured alternately.

Why: wall-clock benchmarks (``bench_gateway``) swing by 10-20 % when other work shares the
two cores; the CPU time the whole gateway process tree (gateway, worker processes, the
stand-in) spends per step swings much less, so a before/after comparison of the gateway's
own code is read here first. Both checkouts need their ``.venv`` (``make setup``); the
client is this checkout's (the wire API is the same).

Usage: ``python -m benchmarks.before_after_cpu BASE_CHECKOUT [--rounds 3] [--steps 2000]``;
prints one JSON line per run and a summary of medians (after/base ratios).
"""
import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.ports import free_base_port
from gateway.remote.client import GatewayClient, decode_steps, random_actions
from tandem.v1 import gateway_pb2

TICK = os.sysconf("SC_CLK_TCK")

def tree(pid: int) -> list[int]:
    """The process and its descendants."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for c in f.read().split():
                    out += tree(int(c))
    except FileNotFoundError:
        pass
    return out

def cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / TICK

def run(checkout: str, agents: int, instances: int, steps: int) -> tuple[float, float, int]:
    """(CPU us per step of the gateway's tree, wall us per step, processes) for one gateway run."""
    exe = f"{checkout}/.venv/bin/tandem-gateway"
    cmd = [exe, "--listen", "127.0.0.1:0", "--log-json", "--num-envs", str(instances),
           "--base-port", str(free_base_port(instances)), "--no-graphics", "--env-args", "--num-agents", str(agents)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=checkout)
    port = queue.Queue()
    def read():
        for line in proc.stderr:
            if '"gateway ready"' in line:
                port.put(json.loads(line)["port"])
    threading.Thread(target=read, daemon=True).start()
    p = port.get(timeout=120)
    client = GatewayClient(f"127.0.0.1:{p}")
    specs = client.specs()
    session = client.play()
    rng = np.random.default_rng(0)
    def acts(st):
        out = []
        for view in decode_steps(st, specs):
            if len(view.decisions):
                out.append(random_actions(view, specs[view.behavior], rng, gateway_pb2.BehaviorActions()))
        return out
    st = session.reset()
    for _ in range(300):
        st = session.step(acts(st))
    pids = tree(proc.pid)
    c0, t0 = cpu(pids), time.perf_counter()
    for _ in range(steps):
        st = session.step(acts(st))
    c1, t1 = cpu(pids), time.perf_counter()
    session.close(); client.close()
    proc.terminate(); proc.wait(30)
    return (c1 - c0) / steps * 1e6, (t1 - t0) / steps * 1e6, len(pids)

CASES = [(1, 1), (16, 1), (256, 1), (16, 2)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout (with its .venv)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per run")
    args = parser.parse_args(argv)
    after = Path(__file__).resolve().parent.parent
    res = {}
    for r in range(args.rounds):
        for agents, instances in CASES:
            for side, checkout in [("base", args.base.resolve()), ("after", after)]:
                c, w, n = run(str(checkout), agents, instances, args.steps)
                res.setdefault((agents, instances, side), []).append((c, w))
                line = {"round": r, "agents": agents, "instances": instances, "side": side,
                        "cpu_us_per_step": round(c, 1), "wall_us_per_step": round(w, 1), "processes": n}
                print(json.dumps(line), flush=True)
    print("summary: medians of CPU us per step of the gateway's process tree, and of wall us per step")
    for agents, instances in CASES:
        b, a = res[(agents, instances, "base")], res[(agents, instances, "after")]
        bc, ac = np.median([x[0] for x in b]), np.median([x[0] for x in a])
        bw, aw = np.median([x[1] for x in b]), np.median([x[1] for x in a])
        print(f"{agents} agents x {instances}: cpu base {bc:.0f} after {ac:.0f} after/base {ac / bc:.3f}; "
              f"wall base {bw:.0f} after {aw:.0f} after/base {aw / bw:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
