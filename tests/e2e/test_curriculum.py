"""A curriculum through the real processes: ``tandem-trainer configs/ppo/WallJump.yaml --with-gateway``
(smaller budget) advances ``wall_height`` through every lesson, and the stand-in reports the heights it got."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from trainer_server.stats import read_scalars
from test_train_3dball import _json_lines, run_trainer

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 48_000
TIME_LIMIT_S = 540


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_S + 60)
def test_walljump_curriculum_advances_through_every_lesson(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "ppo" / "WallJump.yaml").read_text())
    config["behaviors"]["WallJump"].update(max_steps=MAX_STEPS, summary_freq=4000, checkpoint_interval=MAX_STEPS)
    lessons = config["environment_parameters"]["wall_height"]["curriculum"]
    path = tmp_path / "WallJump-e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    log_path = run_trainer(path, tmp_path, "curriculum", TIME_LIMIT_S, f"{MAX_STEPS} steps")

    run = tmp_path / "results" / "curriculum"
    status = json.loads((run / "run_logs" / "training_status.json").read_text())
    events = [str(e.get("event")) for e in _json_lines(log_path)]
    changes = [e for e in events if e.startswith("Parameter 'wall_height' has changed")]
    scalars = read_scalars(run / "WallJump")
    print(f"curriculum e2e: {time.monotonic() - started:.0f} s; lessons {scalars.get('Environment/Lesson Number/wall_height')}")
    assert status["wall_height"] == {"lesson_num": len(lessons) - 1}, status
    assert [c.split("'")[3] for c in changes] == [lesson["name"] for lesson in lessons[1:]]
    assert scalars["Environment/Lesson Number/wall_height"][-1][1] == len(lessons) - 1
    # the stand-in reports the heights its episodes began with: every lesson's value reached it
    heights = {round(v) for _, v in scalars["Environment/Wall Height"]}
    assert float(lessons[-1]["value"]) in heights
    # and the final lesson is learned: most episodes clear the highest wall
    assert scalars["Environment/Cumulative Reward"][-1][1] > 0.6
