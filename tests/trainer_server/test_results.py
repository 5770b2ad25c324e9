"""The results folder: layout, run-id rules, the plain form of settings."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_service_support import make_options, prepare_results
from trainer_server.results import RunDirectoryError, behavior_folder_name, to_plain


# --------------------------------------------------------------------------- run-id rules


def test_existing_run_id_is_refused_without_resume_or_force(tmp_path):
    prepare_results(make_options(tmp_path)).write_configuration({"a": 1})
    with pytest.raises(RunDirectoryError) as e:
        prepare_results(make_options(tmp_path))
    assert "test-run" in str(e.value) and "--resume" in str(e.value) and "--force" in str(e.value)


def test_force_deletes_only_tensorboard_event_files_and_resume_needs_a_previous_run(tmp_path):
    """As mlagents-learn --force: earlier checkpoints and models stay, TensorBoard event files go."""
    first = prepare_results(make_options(tmp_path))
    behavior = first.run_dir / "3DBall"
    behavior.mkdir()
    kept = [behavior / "3DBall-500.npz", behavior / "3DBall-500.onnx", first.run_dir / "3DBall.onnx"]
    for path in kept:
        path.write_text("x")
    (behavior / "events.out.tfevents.1.host").write_text("x")
    forced = prepare_results(make_options(tmp_path, force=True))
    assert all(path.read_text() == "x" for path in kept)
    assert not list((forced.run_dir / "3DBall").glob("events.out*"))
    with pytest.raises(RunDirectoryError, match="--resume"):
        prepare_results(make_options(tmp_path, run_id="never-ran", resume=True))


def test_inference_on_an_existing_run_needs_resume_or_force(tmp_path):
    """mlagents-learn refuses --inference on an existing run-id unless --resume (or --force) says what to do."""
    prepare_results(make_options(tmp_path)).write_configuration({"a": 1})
    with pytest.raises(RunDirectoryError) as e:
        prepare_results(make_options(tmp_path, inference=True))
    assert "--resume to act with its latest checkpoint" in str(e.value) and "--force" in str(e.value)
    assert prepare_results(make_options(tmp_path, inference=True, resume=True)).run_dir == tmp_path / "test-run"


def test_behavior_folder_names():
    assert behavior_folder_name("3DBall?team=0") == "3DBall"
    assert behavior_folder_name("3DBall") == "3DBall"
    assert behavior_folder_name("Soccer?team=1") == "Soccer_team1"
    assert behavior_folder_name("a/b:c") == "a_b_c"


class _Color(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class _Section:
    color: _Color
    path: Path
    values: tuple[int, ...]


def test_to_plain_gives_yaml_friendly_builtins(tmp_path):
    assert to_plain({"a": _Section(_Color.RED, Path("x/y"), (1, 2))}) == {
        "a": {"color": "red", "path": "x/y", "values": [1, 2]}
    }
    settings = make_options(tmp_path).default_settings
    assert to_plain(settings) == settings.as_dict()
