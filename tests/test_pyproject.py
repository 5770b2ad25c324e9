"""``pyproject.toml`` reads without setuptools' deprecation warnings (printed 4 times per set-up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = """
import warnings
from setuptools.config.pyprojecttoml import apply_configuration, read_configuration
from setuptools.dist import Distribution
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    config = read_configuration("pyproject.toml")
    apply_configuration(Distribution(), "pyproject.toml")
print(config["project"]["license"])
for warning in caught:
    print("WARNING", warning.category.__name__, str(warning.message).splitlines()[0])
"""


def test_license_is_an_spdx_expression_setuptools_reads_without_warnings():
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "Apache-2.0", done.stdout + done.stderr
    assert not [line for line in lines if line.startswith("WARNING")], done.stdout + done.stderr
    assert "project.license" not in done.stderr
