"""``tandem-trainer`` as users run it: the installed console script, real files, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer_server import cli

REPO_ROOT = Path(__file__).resolve().parents[2]
# shared/ beside the checkout (or beside the folder of worktrees that holds it)
SHARED_CONFIGS = next(
    (p / "shared" / "mlagents-configs" for p in REPO_ROOT.parents if (p / "shared" / "mlagents-configs").is_dir()),
    REPO_ROOT.parent / "shared" / "mlagents-configs",
)


def _script() -> Path | None:
    for candidate in (REPO_ROOT / ".venv" / "bin" / "tandem-trainer", Path(sys.executable).parent / "tandem-trainer"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


SCRIPT = _script()
needs_script = pytest.mark.skipif(SCRIPT is None, reason="tandem-trainer console script not installed (make setup)")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT is not None
    env = {k: v for k, v in os.environ.items() if k not in ("TANDEM_TOKEN", "TANDEM_LOG_JSON")}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=cwd or REPO_ROOT, env=env
    )


@needs_script
def test_dry_run_prints_the_resolved_settings_and_exits_0() -> None:
    result = run("configs/ppo/3DBall.yaml", "--dry-run", "--run-id", "dry", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("default_settings: null\n")
    resolved = yaml.safe_load(result.stdout)
    behavior = resolved["behaviors"]["3DBall"]
    assert behavior["hyperparameters"]["batch_size"] == 64
    assert behavior["hyperparameters"]["beta_schedule"] == "linear"  # resolved, not in the file
    assert behavior["network_settings"]["memory"] is None
    assert behavior["reward_signals"]["extrinsic"]["gamma"] == 0.99
    assert resolved["checkpoint_settings"]["run_id"] == "dry"
    assert resolved["env_settings"]["seed"] == 7
    assert not (REPO_ROOT / "results" / "dry").exists()  # nothing started, nothing written


@needs_script
def test_dry_run_without_config_uses_mlagents_defaults(tmp_path: Path) -> None:
    result = run("--dry-run", "--env-args", "--level", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["behaviors"] == {} and resolved["default_settings"] is None
    assert resolved["env_settings"]["env_args"] == ["--level", "3"]
    assert list(tmp_path.iterdir()) == []


@needs_script
def test_bad_config_exits_non_zero_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("behaviors:\n  3DBall:\n    hyperparameters:\n      batch_sise: 64\n")
    result = run(str(config), "--dry-run")
    assert result.returncode == cli.EXIT_CONFIG_ERROR
    assert result.stdout == ""
    assert f"{config}: behaviors.3DBall.hyperparameters.batch_sise: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@needs_script
def test_missing_config_file_is_named(tmp_path: Path) -> None:
    result = run(str(tmp_path / "missing.yaml"), "--dry-run")
    assert result.returncode == cli.EXIT_CONFIG_ERROR
    assert f"config file not found: {tmp_path / 'missing.yaml'}" in result.stderr
    assert "Traceback" not in result.stderr


@needs_script
def test_unsupported_feature_prints_settings_then_says_not_supported_yet(tmp_path: Path) -> None:
    config = tmp_path / "team.yaml"
    config.write_text("behaviors:\n  Team:\n    trainer_type: poca\n    reward_signals:\n      rnd: {}\n")
    result = run(str(config), "--dry-run")
    assert result.returncode == cli.EXIT_NOT_SUPPORTED
    assert yaml.safe_load(result.stdout)["behaviors"]["Team"]["trainer_type"] == "poca"
    assert f"{config}: behaviors.Team.reward_signals.rnd: the rnd reward signal is not supported yet with poca" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not (SHARED_CONFIGS / "imitation" / "Hallway.yaml").is_file(), reason=f"no {SHARED_CONFIGS}")
def test_shared_gail_config_with_memory_is_supported(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([str(SHARED_CONFIGS / "imitation" / "Hallway.yaml"), "--dry-run"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_OK, err
    assert yaml.safe_load(out)["behaviors"]["Hallway"]["network_settings"]["memory"]["memory_size"] == 256
    assert "not supported yet" not in err  # PPO's memory trains with gail (and behavioral cloning)


def test_resume_and_force_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--dry-run", "--resume", "--force"]) == cli.EXIT_CONFIG_ERROR
    assert "--resume and --force cannot be used together" in capsys.readouterr().err


def test_command_line_value_errors_name_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--dry-run", "--num-envs", "0"]) == cli.EXIT_CONFIG_ERROR
    assert "command line --num-envs: must be at least 1, got 0" in capsys.readouterr().err
    assert cli.main(["--dry-run", "--tls-cert", "cert.pem"]) == cli.EXIT_CONFIG_ERROR
    assert "--tls-cert and --tls-key must be given together" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--dry-run", "--run_id", "x"]) == 2
    assert "unrecognized arguments: --run_id" in capsys.readouterr().err


def test_unsupported_config_is_refused_before_training_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "poca.yaml"
    config.write_text("behaviors:\n  A:\n    trainer_type: poca\n    reward_signals:\n      curiosity: {}\n")
    assert cli.main([str(config), "--run-id", "never", "--results-dir", str(tmp_path / "results")]) == 3
    out, err = capsys.readouterr()
    assert out == "" and "behaviors.A.reward_signals.curiosity: the curiosity reward signal is not supported yet with poca" in err
    assert not (tmp_path / "results").exists()
    # a GAIL demonstration that is not there is named before anything starts
    config = tmp_path / "gail.yaml"
    config.write_text("behaviors:\n  A:\n    reward_signals:\n      gail:\n        demo_path: expert.demo\n")
    assert cli.main([str(config), "--run-id", "never", "--results-dir", str(tmp_path / "results")]) == cli.EXIT_CONFIG_ERROR
    out, err = capsys.readouterr()
    assert "behaviors.A.reward_signals.gail.demo_path:" in err and "expert.demo" in err
    assert not (tmp_path / "results").exists()


def test_parser_maps_flags_to_mlagents_destinations() -> None:
    args = cli.build_parser().parse_args(
        [
            "c.yaml",
            "--env", "build/Game",
            "--torch-device", "cpu",
            "--no-graphics",
            "--gateway-arg=--num-envs",
            "--gateway-arg", "2",
            "--with-gateway",
            "--env-args", "--a", "b",
        ]
    )  # fmt: skip
    assert (args.config, args.env_path, args.device, args.no_graphics) == ("c.yaml", "build/Game", "cpu", True)
    assert args.gateway_args == ["--num-envs", "2"] and args.with_gateway is True
    assert args.env_args == ["--a", "b"]
    assert args.resume is None and args.seed is None  # not given: the YAML's value stays


@needs_script
def test_key_given_twice_is_warned_about_and_the_last_value_used(tmp_path: Path) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text("behaviors:\n  A:\n    max_steps: 10\n    max_steps: 20\n")
    result = run(str(config), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("default_settings: null\n")  # only YAML on stdout, logs on stderr
    assert yaml.safe_load(result.stdout)["behaviors"]["A"]["max_steps"] == 20
    assert "key given twice" in result.stderr and "max_steps" in result.stderr and "line=4" in result.stderr


@needs_script
@pytest.mark.skipif(not (SHARED_CONFIGS / "ppo" / "3DBall_randomize.yaml").is_file(), reason=f"no {SHARED_CONFIGS}")
def test_environment_parameters_are_accepted_without_a_warning() -> None:
    result = run(str(SHARED_CONFIGS / "ppo" / "3DBall_randomize.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("default_settings: null\n")
    resolved = yaml.safe_load(result.stdout)
    assert resolved["environment_parameters"]["mass"]["curriculum"][0]["value"]["sampler_type"] == "uniform"
    assert "environment_parameters" not in result.stderr and "WARN" not in result.stderr.upper()


@needs_script
@pytest.mark.skipif(not (SHARED_CONFIGS / "ppo" / "Sorter_curriculum.yaml").is_file(), reason=f"no {SHARED_CONFIGS}")
def test_dry_run_of_sorter_warns_of_nothing() -> None:
    """Sorter's curriculum config is valid and its BufferSensor (rank-2 observations) is supported."""
    result = run(str(SHARED_CONFIGS / "ppo" / "Sorter_curriculum.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "BufferSensor" not in result.stderr and "WARN" not in result.stderr.upper()


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """``--torch`` (a flag ML-Agents removed) must not be taken as ``--torch-device``."""
    assert cli.main(["--dry-run", "--torch"]) == cli.EXIT_CONFIG_ERROR
    assert "unrecognized arguments: --torch" in capsys.readouterr().err
    assert cli.main(["--dry-run", "--torch-dev", "cpu"]) == cli.EXIT_CONFIG_ERROR
    assert "unrecognized arguments: --torch-dev" in capsys.readouterr().err


@needs_script
def test_help_names_both_algorithms_and_what_env_launches() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert "PPO and SAC" in text
    assert "--env editor (the Unity Editor: press Play) launches a local gateway" in text
    assert "``" not in text
