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


def test_force_overwrites_and_resume_needs_a_previous_run(tmp_path):
    first = prepare_results(make_options(tmp_path))
    (first.run_dir / "old-file").write_text("x")
    forced = prepare_results(make_options(tmp_path, force=True))
    assert not (forced.run_dir / "old-file").exists()
    with pytest.raises(RunDirectoryError, match="--resume"):
        prepare_results(make_options(tmp_path, run_id="never-ran", resume=True))


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
