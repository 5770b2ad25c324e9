"""``make setup``'s JAX build: CUDA where ``nvidia-smi`` lists a GPU, CPU elsewhere, ``JAX=`` overrides.

The commands are checked with ``make -n`` (printed, not run; ``-W`` as if the set-up had just changed): installing CUDA wheels is the
GPU script's job (benchmarks/gpu_check.sh). Where no NVIDIA driver is installed, a
stand-in ``nvidia-smi`` on PATH plays the driver's answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _dry_run(*args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("JAX", None)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run(["make", "-n", "-W", ".venv/.tandem-setup", "setup", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _nvidia_smi(folder: Path, cuda_version: str | None) -> Path:
    """A stand-in driver tool: lists one GPU and reports ``cuda_version`` (None: no GPU)."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    if cuda_version is None:
        script.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n")
    else:
        script.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"; exit 0; fi\n'
            f'echo "| NVIDIA-SMI 580.00   Driver Version: 580.00   CUDA Version: {cuda_version}     |"\n'
        )
    script.chmod(0o755)
    return folder


@pytest.mark.parametrize("build", ["cuda12", "cuda13"])
def test_explicit_cuda_build_installs_jaxs_matching_cuda_extra(build):
    done = _dry_run(f"JAX={build}")
    assert done.returncode == 0, done.stderr
    assert f"pip install --quiet -e '.[{build}]'" in done.stdout
    assert f"touch .venv/.tandem-jax-{build}" in done.stdout
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras[build] == [f"jax[{build}]"]  # jax's own extra pins the plugin to jax's version


def test_cpu_build_removes_cuda_plugins():
    done = _dry_run("JAX=cpu")
    assert done.returncode == 0, done.stderr
    assert "pip uninstall --quiet --yes jax-cuda12-plugin jax-cuda12-pjrt jax-cuda13-plugin jax-cuda13-pjrt" in done.stdout
    assert "touch .venv/.tandem-jax-cpu" in done.stdout


def test_unknown_build_is_refused():
    done = _dry_run("JAX=rocm")
    assert done.returncode != 0
    assert "JAX=rocm: expected auto, cpu, cuda12 or cuda13" in done.stderr


@pytest.mark.parametrize("cuda_version, build", [("12.4", "cuda12"), ("13.0", "cuda13"), (None, "cpu")])
def test_auto_follows_the_driver(tmp_path, cuda_version, build):
    done = _dry_run(path_prefix=_nvidia_smi(tmp_path / "bin", cuda_version))
    assert done.returncode == 0, done.stderr
    assert f"touch .venv/.tandem-jax-{build}" in done.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA driver")
def test_auto_without_a_driver_is_the_cpu_build():
    done = _dry_run()
    assert done.returncode == 0, done.stderr
    assert "touch .venv/.tandem-jax-cpu" in done.stdout
