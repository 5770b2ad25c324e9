"""Self-play: the learner's ELO over agent steps on the stand-in's two-player ``pong`` game.

``tandem-trainer configs/selfplay/Pong.yaml --with-gateway`` (PPO, ``self_play`` as shipped)
for ``--steps`` agent steps of the learning team, once per seed, one after the other in one
invocation (same machine, same load). Reported per summary (every ``summary_freq`` steps):
the mean ``Self-play/ELO`` of each seed and their mean, and the wall time of each run. A
learner that improves wins more often against its past snapshots than their ratings
predict, so its ELO rises (``docs/SELF_PLAY.md``).

``make bench BENCH=bench_self_play`` writes ``benchmarks/results/bench_self_play.md``.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import yaml

from benchmarks import report
from benchmarks.bench_curriculum import train
from common.logging import configure_logging, get_logger
from trainer_server.stats import read_scalars

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "bench_self_play.md"
CONFIG = REPO / "configs" / "selfplay" / "Pong.yaml"
ELO_TAG = "Self-play/ELO"

_log = get_logger("benchmarks.self_play")


def run_seed(steps: int, seed: int, time_limit_s: float) -> tuple[dict[int, float], float]:
    """One training run; returns {summary step: mean ELO} and its wall time (s)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["behaviors"]["Pong"].update(max_steps=steps, checkpoint_interval=steps)
    with tempfile.TemporaryDirectory() as tmp:
        run, _, wall = train(config, Path(tmp), seed, time_limit_s)
        scalars = read_scalars(run / "Pong")
    elo = {int(step): float(value) for step, value in scalars.get(ELO_TAG, [])}
    _log.info("self-play run", seed=seed, wall_s=round(wall, 1), last_elo=max(elo.items())[1] if elo else None)
    return elo, wall


def render(command: str, steps: int, seeds: list[int], runs: list[tuple[dict[int, float], float]], initial: float) -> str:
    summary_steps = sorted({s for elo, _ in runs for s in elo})
    lines = [
        "# Self-play: ELO over agent steps (stand-in `pong`)",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today().isoformat()}; machine: {report.cpu_name()}  ",
        f"Config: `configs/selfplay/Pong.yaml` (PPO, `self_play` as shipped), {steps} agent steps of the "
        f"learning team, initial ELO {initial:g}; seeds run one after the other.",
        "",
        "| agent steps | " + " | ".join(f"ELO seed {s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for step in summary_steps:
        values = [elo.get(step) for elo, _ in runs]
        known = [v for v in values if v is not None]
        mean = f"{sum(known) / len(known):.1f}" if known else "-"
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in values)
        lines.append(f"| {step} | {cells} | {mean} |")
    lines += [
        "",
        "Wall time per run (start-up and JAX compilation included): "
        + ", ".join(f"seed {s}: {wall:.0f} s" for s, (_, wall) in zip(seeds, runs))
        + ".",
        "",
        "ML-Agents' ELO has no K factor: a game moves it by less than 1, so it rises steadily but slowly; "
        "games against the latest policy (`play_against_latest_model_ratio`) do not move it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="bench_self_play", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40_000, help="agent steps of the learning team per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--time-limit-s", type=float, default=600.0, help="per run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    initial = float(yaml.safe_load(CONFIG.read_text())["behaviors"]["Pong"]["self_play"]["initial_elo"])
    runs = [run_seed(args.steps, seed, args.time_limit_s) for seed in args.seeds]
    command = "python -m benchmarks.bench_self_play " + " ".join(argv or [])
    report.write_results(args.output, render(command.strip(), args.steps, args.seeds, runs, initial))
    return 0 if all(elo for elo, _ in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
