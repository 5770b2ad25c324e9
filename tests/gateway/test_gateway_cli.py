"""``tandem-gateway``'s command line as users read it: --help in plain text, no abbreviations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_help_is_plain_text() -> None:
    """Help strings are shown as they are: reST markup such as double backticks would show literally."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines
    assert "``" not in text
    assert "tandem.v1.Gateway API" in text and "(--policy BEHAVIOR=PATH.onnx)" in text


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--num-env", "2"])  # not --num-envs
    assert exited.value.code == 2
    assert "unrecognized arguments: --num-env" in capsys.readouterr().err


def test_env_parameter_needs_policy_and_a_number(tmp_path: Path) -> None:
    from gateway.cli import _parse_parameter, options_from_args
    from gateway.options import OptionsError

    assert _parse_parameter(" gravity = 20.5") == ("gravity", 20.5)
    for bad in ("gravity", "gravity=fast", "=3", "gravity=nan"):
        with pytest.raises(OptionsError, match="expected NAME=NUMBER"):
            _parse_parameter(bad)
    with pytest.raises(OptionsError, match="--env-parameter: only with --policy"):
        options_from_args(build_parser().parse_args(["--env-parameter", "gravity=20"]))


def test_heuristic_and_record_demo_options(tmp_path: Path) -> None:
    from gateway.cli import options_from_args
    from gateway.options import OptionsError

    options = options_from_args(build_parser().parse_args(["--heuristic", "3DBall", "--record-demo", str(tmp_path / "d")]))
    assert options.inference is not None and options.inference.heuristics == ("3DBall",) and options.is_actor
    assert options.environment.record_demo == str(tmp_path / "d")
    with pytest.raises(OptionsError, match=r"--heuristic Walker: no scripted heuristic for it \(available: 3DBall, GridWorld"):
        options_from_args(build_parser().parse_args(["--heuristic", "Walker"]))
    with pytest.raises(OptionsError, match="--heuristic: a behavior is given twice"):
        options_from_args(build_parser().parse_args(["--heuristic", "3DBall", "--heuristic", "3DBall"]))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OptionsError, match="--record-demo: expected a folder"):
        options_from_args(build_parser().parse_args(["--record-demo", str(afile)]))
