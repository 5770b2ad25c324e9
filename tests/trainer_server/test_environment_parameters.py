"""The run's environment parameters: seeds, lesson advance as ML-Agents 1.1.0 computes it, resume."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trainer_server import stats as stats_mod
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import RunOptions, TrainerSettings
from trainer_server.environment_parameters import (
    LESSON_TAG,
    EnvironmentParameterManager,
    RunParameters,
    sampler_seeds,
)
from trainer_server.results import RunResults

CURRICULUM = """
environment_parameters:
  gravity: 20
  mass:
    sampler_type: uniform
    sampler_parameters: {min_value: 0.5, max_value: 2.0}
  scale:
    sampler_type: gaussian
    sampler_parameters: {mean: 1.0, st_dev: 0.1, seed: 7}
  wall_height:
    curriculum:
      - name: Low
        completion_criteria: {measure: reward, behavior: WallJump, threshold: 0.5, min_lesson_length: 3,
                              signal_smoothing: false}
        value: 1.0
      - name: Middle
        completion_criteria: {measure: reward, behavior: WallJump, threshold: 0.5, min_lesson_length: 2,
                              require_reset: true}
        value:
          sampler_type: multirangeuniform
          sampler_parameters: {intervals: [[2, 3], [5, 6]]}
      - name: High
        value: 8.0
"""


def options(tmp_path: Path, text: str) -> RunOptions:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_run_options(str(path))


@dataclass
class FakeBehavior:
    """What RunParameters reads from a BehaviorRun."""

    name: str = "WallJump?team=0"
    steps: int = 0
    settings: TrainerSettings = field(default_factory=lambda: TrainerSettings(max_steps=1000))
    stats: stats_mod.BehaviorStats = field(default_factory=stats_mod.BehaviorStats)


def test_sampler_seeds_follow_the_run_seed_in_file_order(tmp_path):
    settings = options(tmp_path, CURRICULUM).environment_parameters
    seeds = sampler_seeds(settings, 100)
    # constants count too, a lesson with its own seed keeps it and takes no offset
    assert seeds == {
        ("gravity", 0): 100, ("mass", 0): 101, ("scale", 0): 7,
        ("wall_height", 0): 102, ("wall_height", 1): 103, ("wall_height", 2): 104,
    }


def test_message_describes_constants_and_samplers(tmp_path):
    manager = EnvironmentParameterManager(options(tmp_path, CURRICULUM).environment_parameters, 100)
    message = manager.message()
    p = message.parameters
    assert p["gravity"].WhichOneof("value") == "constant" and p["gravity"].constant == 20
    assert (p["mass"].uniform.min_value, p["mass"].uniform.max_value, p["mass"].seed) == (0.5, 2.0, 101)
    assert (p["scale"].gaussian.mean, p["scale"].gaussian.st_dev, p["scale"].seed) == (1.0, 0.1, 7)
    assert (p["wall_height"].constant, p["wall_height"].lesson, p["wall_height"].lesson_name) == (1.0, 0, "Low")
    assert message.generation == 1 and not message.reset


def test_reward_measure_waits_for_min_lesson_length_then_compares_the_mean(tmp_path):
    manager = EnvironmentParameterManager(options(tmp_path, CURRICULUM).environment_parameters, 0)
    steps, max_steps = {"WallJump": 10}, {"WallJump": 1000}
    assert manager.update(steps, max_steps, {"WallJump": [1.0, 1.0]}) == []  # 2 < min_lesson_length 3
    assert manager.update(steps, max_steps, {"WallJump": [0.0, 0.5, 1.0]}) == []  # mean 0.5 is not > 0.5
    assert manager.update({"Other": 10}, {"Other": 10}, {"Other": [9.0] * 5}) == []  # another behavior
    [change] = manager.update(steps, max_steps, {"WallJump": [0.0, 1.0, 1.0]})
    assert (change.parameter, change.lesson, change.lesson_name, change.require_reset) == ("wall_height", 1, "Middle", False)
    assert manager.lessons["wall_height"] == 1 and manager.generation == 2
    assert manager.message().parameters["wall_height"].multirange_uniform.intervals == [2, 3, 5, 6]


def test_signal_smoothing_as_ml_agents_blends_a_quarter_of_the_previous_value(tmp_path):
    manager = EnvironmentParameterManager(options(tmp_path, CURRICULUM).environment_parameters, 0, {"wall_height": 1})
    steps, max_steps = {"WallJump": 10}, {"WallJump": 1000}
    # smoothed = 0.25 * 0 + 0.75 * 0.6 = 0.45: not above 0.5 although the mean is
    assert manager.update(steps, max_steps, {"WallJump": [0.6, 0.6]}) == []
    assert manager.smoothed["wall_height"] == pytest.approx(0.45)
    # then 0.25 * 0.45 + 0.75 * 0.6 = 0.5625 > 0.5
    [change] = manager.update(steps, max_steps, {"WallJump": [0.6, 0.6]})
    assert change.lesson == 2 and change.require_reset
    # the last lesson never advances
    assert manager.update(steps, max_steps, {"WallJump": [9.0, 9.0]}) == []


def test_progress_measure_compares_steps_over_max_steps(tmp_path):
    text = """
environment_parameters:
  num_tiles:
    curriculum:
      - {name: A, value: 2, completion_criteria: {measure: progress, behavior: Sorter, threshold: 0.3, min_lesson_length: 2}}
      - {name: B, value: 4}
"""
    manager = EnvironmentParameterManager(options(tmp_path, text).environment_parameters, 0)
    assert manager.update({"Sorter": 400}, {"Sorter": 1000}, {"Sorter": [0.0]}) == []  # min_lesson_length
    assert manager.update({"Sorter": 300}, {"Sorter": 1000}, {"Sorter": [0.0, 0.0]}) == []  # 0.3 is not > 0.3
    assert [c.lesson_name for c in manager.update({"Sorter": 301}, {"Sorter": 1000}, {"Sorter": [0.0, 0.0]})] == ["B"]


def test_run_parameters_keep_a_reward_buffer_record_lessons_and_notify(tmp_path, capsys):
    results = RunResults.prepare(tmp_path / "results", "run", resume=False, force=False)
    run = RunParameters(options(tmp_path, CURRICULUM).environment_parameters, 5, results, resume=False)
    pushed = []
    run.add_listener(pushed.append)
    behavior = FakeBehavior(steps=100)
    run.after_chunk([behavior], {behavior.name: [1.0, 1.0]})
    assert not pushed  # two episodes, min_lesson_length 3
    run.after_chunk([behavior], {behavior.name: [1.0]})
    [message] = pushed
    assert message.generation == 2 and not message.reset
    assert run.message().parameters["wall_height"].lesson_name == "Middle"
    assert "Parameter 'wall_height' has changed. Now in lesson 'Middle'" in capsys.readouterr().out
    status = json.loads(results.training_status_path.read_text())
    assert status["wall_height"] == {"lesson_num": 1} and status["gravity"] == {"lesson_num": 0}
    summary = behavior.stats.summarize()
    assert summary[LESSON_TAG.format("wall_height")].mean == 1.0
    # the buffers were cleared by the change: one good episode is not min_lesson_length 2
    run.after_chunk([behavior], {behavior.name: [5.0]})
    assert len(pushed) == 1
    run.after_chunk([behavior], {behavior.name: [5.0]})  # smoothed 0.25 * 0 + 0.75 * 5 > 0.5
    assert len(pushed) == 2 and pushed[1].reset and pushed[1].generation == 3
    assert not run.message().reset  # a gateway joining later gets the values without a reset


def test_resume_continues_in_the_recorded_lesson(tmp_path):
    settings = options(tmp_path, CURRICULUM).environment_parameters
    results = RunResults.prepare(tmp_path / "results", "run", resume=False, force=False)
    first = RunParameters(settings, 5, results, resume=False)
    first.manager.lessons["wall_height"] = 2
    results.set_parameter_state("wall_height", "lesson_num", 2)
    resumed = RunResults.prepare(tmp_path / "results", "run", resume=True, force=False)
    again = RunParameters(settings, 5, resumed, resume=True)
    assert again.manager.lessons == {"gravity": 0, "mass": 0, "scale": 0, "wall_height": 2}
    assert again.message().parameters["wall_height"].constant == 8.0 and again.message().generation == 3
    forced = RunParameters(settings, 5, RunResults.prepare(tmp_path / "results", "run", resume=False, force=True), resume=False)
    assert forced.manager.lessons["wall_height"] == 0


def test_no_parameters_no_message(tmp_path):
    results = RunResults.prepare(tmp_path / "results", "run", resume=False, force=False)
    run = RunParameters(None, 1, results, resume=False)
    run.after_chunk([FakeBehavior()], {"WallJump?team=0": [1.0]})
    assert run.message() is None and not run.manager


def test_episodes_played_with_an_earlier_lesson_do_not_count(tmp_path):
    """Experience queued before the gateways applied a change names the old generation: ignored."""
    results = RunResults.prepare(tmp_path / "results", "run", resume=False, force=False)
    run = RunParameters(options(tmp_path, CURRICULUM).environment_parameters, 5, results, resume=False)
    behavior = FakeBehavior(steps=100)
    run.after_chunk([behavior], {behavior.name: [1.0] * 3}, generation=1)
    assert run.manager.lessons["wall_height"] == 1 and run.manager.generation == 2
    run.after_chunk([behavior], {behavior.name: [9.0] * 5}, generation=1)  # still the old lesson's episodes
    assert run.manager.lessons["wall_height"] == 1
    run.after_chunk([behavior], {behavior.name: [9.0] * 2}, generation=2)
    assert run.manager.lessons["wall_height"] == 2
