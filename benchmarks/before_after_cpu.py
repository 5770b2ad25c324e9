"""Remote control's cost per step in a base checkout and in this one, measured alternately.

Why: wall-clock benchmarks (``bench_gateway``) swing by 10-20 % when other work shares the
two cores; the CPU time the whole gateway process tree (gateway, worker processes, the
stand-in) spends per step swings much less, so a before/after comparison of the gateway's
own code is read here first. Both checkouts need their ``.venv`` (``make setup``); the
client is this checkout's (the wire API is the same).

Usage: ``python -m benchmarks.before_after_cpu BASE_CHECKOUT [--rounds 3] [--steps 2000]``;
logs one event per run and a summary per case (medians, after/base ratios).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_gateway import random_step_actions, start_gateway_process, stop_process
from common.logging import configure_logging, get_logger

#: (agents per instance, instances): one instance steps inside the gateway, two in worker processes
CASES = [(1, 1), (16, 1), (256, 1), (16, 2)]
WARM_UP_STEPS = 300
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (from ``/proc``); ones that exited meanwhile are skipped."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += process_tree(int(child))
    except FileNotFoundError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds these processes have used so far (all their threads)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICKS_PER_S


def measure(checkout: Path, agents: int, instances: int, steps: int) -> tuple[float, float, int]:
    """One gateway run of ``checkout``: (CPU us per step of its process tree, wall us per step, processes)."""
    from gateway.remote.client import GatewayClient

    proc, port = start_gateway_process(agents, instances, exe=checkout / ".venv" / "bin" / "tandem-gateway")
    client = GatewayClient(f"127.0.0.1:{port}")
    try:
        specs = client.specs()
        session = client.play()
        rng = np.random.default_rng(0)
        steps_msg = session.reset()
        for _ in range(WARM_UP_STEPS):
            steps_msg = session.step(random_step_actions(steps_msg, specs, rng)[0])
        pids = process_tree(proc.pid)
        cpu0, wall0 = cpu_seconds(pids), time.perf_counter()
        for _ in range(steps):
            steps_msg = session.step(random_step_actions(steps_msg, specs, rng)[0])
        cpu1, wall1 = cpu_seconds(pids), time.perf_counter()
        session.close()
    finally:
        client.close()
        stop_process(proc)
    return (cpu1 - cpu0) / steps * 1e6, (wall1 - wall0) / steps * 1e6, len(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout (with its .venv)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per run")
    args = parser.parse_args(argv)
    configure_logging()
    log = get_logger("benchmarks.before_after_cpu")
    checkouts = {"base": args.base.resolve(), "after": Path(__file__).resolve().parent.parent}
    runs: dict[tuple[int, int, str], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for agents, instances in CASES:
            for side, checkout in checkouts.items():
                cpu_us, wall_us, processes = measure(checkout, agents, instances, args.steps)
                runs.setdefault((agents, instances, side), []).append((cpu_us, wall_us))
                log.info("run", round=r, agents=agents, instances=instances, side=side,
                         cpu_us_per_step=round(cpu_us, 1), wall_us_per_step=round(wall_us, 1), processes=processes)
    for agents, instances in CASES:
        base = np.median(runs[(agents, instances, "base")], axis=0)
        after = np.median(runs[(agents, instances, "after")], axis=0)
        log.info(
            "median per step", agents=agents, instances=instances,
            cpu_us_base=round(base[0]), cpu_us_after=round(after[0]), cpu_after_over_base=round(after[0] / base[0], 3),
            wall_us_base=round(base[1]), wall_us_after=round(after[1]), wall_after_over_base=round(after[1] / base[1], 3),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
