"""The multi-host learner's update: two processes on loopback (``jax.distributed``, one CPU
device each, gloo collectives) give the single-process update at the same global batch,
and both processes end every update with the same state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
CHECK = Path(__file__).with_name("multihost_check.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    return env


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _load(path: Path) -> tuple[list[np.ndarray], list[dict[str, float]]]:
    with np.load(path) as saved:
        params = [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)]
        return params, json.loads(str(saved["metrics"]))


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_two_processes_give_the_single_process_update(tmp_path, algorithm):
    """Two updates through two processes equal the same two updates on one device (parameters
    within 1e-5, metrics within 1e-4 relative), and the processes logged equal state digests."""
    address = f"127.0.0.1:{free_port()}"
    run = lambda *args: subprocess.Popen(  # noqa: E731
        [sys.executable, str(CHECK), algorithm, *args], cwd=REPO, env=_env(), stderr=subprocess.PIPE, text=True
    )
    processes = [run(str(tmp_path / f"p{i}.npz"), str(i), "2", address) for i in range(2)]
    single = run(str(tmp_path / "single.npz"), "single")
    outputs = [p.communicate(timeout=400)[1] for p in processes + [single]]
    for p, err in zip(processes + [single], outputs):
        assert p.returncode == 0, err[-4000:]
    digests = [[(e["update"], e["digest"]) for e in _events(err) if e.get("event") == "multi-host update"]
               for err in outputs[:2]]
    assert len(digests[0]) == 2 and digests[0] == digests[1], digests
    assert not (tmp_path / "p1.npz").exists()  # the follower writes nothing
    (multi, multi_metrics), (ref, ref_metrics) = _load(tmp_path / "p0.npz"), _load(tmp_path / "single.npz")
    assert len(multi) == len(ref) > 0
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(multi, ref)) < 1e-5
    assert max(abs(m[k] - r[k]) / max(1.0, abs(r[k])) for m, r in zip(multi_metrics, ref_metrics) for k in r) < 1e-4
    assert set(multi_metrics[-1]) == set(ref_metrics[-1])
