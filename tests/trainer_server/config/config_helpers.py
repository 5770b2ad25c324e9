"""Helpers of the configuration tests: the shared ML-Agents example files, YAML in temporary files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import ConfigError, NotSupportedError, RunOptions

REPO_ROOT = Path(__file__).resolve().parents[3]
# shared/ beside the checkout (or beside the folder of worktrees that holds it)
SHARED_CONFIGS = next(
    (p / "shared" / "mlagents-configs" for p in REPO_ROOT.parents if (p / "shared" / "mlagents-configs").is_dir()),
    REPO_ROOT.parent / "shared" / "mlagents-configs",
)
SHARED_FILES = sorted(SHARED_CONFIGS.rglob("*.yaml")) if SHARED_CONFIGS.is_dir() else []
needs_shared = pytest.mark.skipif(
    not SHARED_FILES, reason=f"ML-Agents example configs not found at {SHARED_CONFIGS} (shared/ beside the repo)"
)


def write(tmp_path: Path, text: str, name: str = "trainer.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, cli: argparse.Namespace | None = None) -> RunOptions:
    return load_run_options(write(tmp_path, text), cli)


def config_error(tmp_path: Path, text: str) -> str:
    """The message of the ConfigError (not NotSupportedError) that loading ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    assert not isinstance(info.value, NotSupportedError)
    return str(info.value)


def cli(**values: object) -> argparse.Namespace:
    """Parsed command-line arguments with only these attributes."""
    return argparse.Namespace(**values)
