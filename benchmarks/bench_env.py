"""Agent steps per second of a plain ``UnityEnvironment`` loop against the stand-in.

This is the baseline the gateway is compared to: mlagents-envs' own client stepping the
stand-in's ``3dball`` task with random actions, for 1, 16 and 256 agents, a fixed number
of ``env.step()`` calls each after a short warm-up. The task runs with
``--decision-period 1`` so that every exchange is one decision for every agent (with
the default period of 5, balls dropped between decisions add exchanges holding only
terminal steps, which would blur the per-step cost). A StatsSideChannel is
registered, as a trainer does, so the task's stats are consumed rather than warned about.

``make bench BENCH=bench_env`` writes ``benchmarks/results/bench_env.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

from mlagents_envs.environment import UnityEnvironment
from mlagents_envs.side_channel.stats_side_channel import StatsSideChannel

import unity_standin
from benchmarks import report
from common.logging import configure_logging, get_logger
from benchmarks.ports import free_base_port

RESULTS = Path(__file__).parent / "results" / "bench_env.md"
BEHAVIOR = "3DBall?team=0"
# (agents, env.step() calls): a few seconds each on a small machine
CASES = ((1, 3000), (16, 2000), (256, 1000))
WARMUP_STEPS = 20


def measure(num_agents: int, steps: int) -> dict[str, float]:
    """Runs one case; returns decisions/s, steps/s and counts."""
    env = UnityEnvironment(  # mlagents-envs' own class: the gateway's communicator is not the baseline
        unity_standin.executable_path(),
        worker_id=0,
        base_port=free_base_port(),
        seed=0,
        timeout_wait=30,
        additional_args=["--task", "3dball", "--num-agents", str(num_agents), "--decision-period", "1"],
        side_channels=[StatsSideChannel()],
    )
    try:
        env.reset()
        spec = env.behavior_specs[BEHAVIOR]

        def loop(count: int) -> tuple[int, int]:
            decisions = terminals = 0
            for _ in range(count):
                decision, terminal = env.get_steps(BEHAVIOR)
                decisions += len(decision)
                terminals += len(terminal)
                env.set_actions(BEHAVIOR, spec.action_spec.random_action(len(decision)))
                env.step()
            return decisions, terminals

        loop(WARMUP_STEPS)
        start = time.perf_counter()
        decisions, terminals = loop(steps)
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    return {
        "agents": num_agents,
        "steps": steps,
        "seconds": elapsed,
        "decisions": decisions,
        "terminals": terminals,
        "agent_steps_per_s": decisions / elapsed,
        "env_steps_per_s": steps / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    configure_logging(level=os.environ.get("TANDEM_LOG_LEVEL", "WARNING"))
    log = get_logger("bench_env")
    parser = argparse.ArgumentParser(prog="bench_env", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file to write")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the step counts (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; best and median reported (default 3)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.scale <= 0:
        log.error("--scale must be positive", scale=args.scale)
        return 2
    if args.repeats < 1:
        log.error("--repeats must be at least 1", repeats=args.repeats)
        return 2

    load = os.getloadavg()[0]
    rows = []
    for agents, steps in CASES:
        runs = []
        for _ in range(args.repeats):
            run = measure(agents, max(1, int(steps * args.scale)))
            log.warning("measured", **{k: round(v, 1) if isinstance(v, float) else v for k, v in run.items()})
            runs.append(run)
        runs.sort(key=lambda r: r["agent_steps_per_s"])
        row = dict(runs[-1])
        row["median_agent_steps_per_s"] = runs[len(runs) // 2]["agent_steps_per_s"]
        rows.append(row)

    lines = [
        "# bench_env",
        "",
        "Agent steps per second of a plain mlagents-envs `UnityEnvironment` loop (random actions) "
        "against the stand-in's `3dball` task: the baseline for the gateway.",
        "",
        "Command: `make bench BENCH=bench_env` (`python -m benchmarks.run bench_env`).",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {report.cpu_name()}, {os.cpu_count()} cores visible (shared with other work while measured), "
        f"Python {platform.python_version()}; client and stand-in on the same machine, CPU only; "
        f"load average before the run: {load:.1f}.",
        "",
        f"Each case ran {args.repeats} times; the table shows the best run and the median agent steps/s.",
        "",
        "| agents | `env.step()` calls | seconds (best) | agent steps/s, best | agent steps/s, median "
        "| `env.step()`/s, best | terminal steps |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['agents']} | {r['steps']:,} | {r['seconds']:.2f} | {r['agent_steps_per_s']:,.0f} "
            f"| {r['median_agent_steps_per_s']:,.0f} | {r['env_steps_per_s']:,.0f} | {r['terminals']:,} |"
        )
    lines += [
        "",
        "An agent step is one agent's decision (a row of `DecisionSteps`); the stand-in runs "
        "`--task 3dball --num-agents N --decision-period 1`, so each `env.step()` is one decision for "
        "every agent. Per-step cost is dominated by the pipe/gRPC round trip at 1 agent and by "
        "per-agent protobuf handling (mlagents-envs' `steps_from_proto` and the stand-in's output "
        "building) at 256 agents.",
        "",
    ]
    report.write_results(args.output, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
