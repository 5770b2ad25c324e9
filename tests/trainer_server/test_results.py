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


# --------------------------------------------------------------------------- training_status.json


def test_final_checkpoint_points_at_the_run_folders_model_and_the_metadata_has_mlagents_keys(tmp_path):
    import json

    from trainer_server.checkpoints import SavedCheckpoint

    results = prepare_results(make_options(tmp_path))
    folder = results.behavior_dir("3DBall?team=0")
    saved = SavedCheckpoint(500, folder / "3DBall-500.npz", 1.0)
    results.record_checkpoint("3DBall?team=0", saved, 2.5, [], final=True, model_path=folder / "3DBall-500.onnx")
    failed_export = SavedCheckpoint(300, results.behavior_dir("Grid") / "Grid-300.npz", 1.0)
    results.record_checkpoint("Grid", failed_export, None, [], model_path=None)
    results.mark_final("Grid", 300)

    status = json.loads(results.training_status_path.read_text())
    ball = status["3DBall"]
    assert ball["checkpoints"][0]["file_path"] == str(folder / "3DBall-500.onnx")
    assert ball["final_checkpoint"] == {**ball["checkpoints"][0], "file_path": str(results.run_dir / "3DBall.onnx")}
    # without a model, the checkpoint itself stays the final one's file
    assert status["Grid"]["final_checkpoint"] == status["Grid"]["checkpoints"][0]
    assert status["Grid"]["final_checkpoint"]["file_path"].endswith("Grid-300.npz")
    metadata = status["metadata"]
    assert {"stats_format_version", "mlagents_version", "torch_version", "tandem_version", "jax_version"} <= set(metadata)
    assert metadata["torch_version"] == metadata["jax_version"]


def test_temporaries_a_killed_writer_left_in_the_run_folder_are_removed_at_start(tmp_path):
    results = prepare_results(make_options(tmp_path, "r"))
    results.write_training_status()
    leftover = results.run_logs / ".training_status.json.1a2b3c4d.tmp"
    leftover.write_text("{")
    model = results.run_dir / ".3DBall.onnx.5e6f7a8b.tmp"
    model.write_bytes(b"\0")
    again = prepare_results(make_options(tmp_path, "r", resume=True))
    assert not leftover.exists() and not model.exists()
    assert (again.run_logs / "training_status.json").is_file()
