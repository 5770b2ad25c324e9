"""Checkpoint files: the format round trip, unreadable files, atomic writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from trainer_server import checkpoints as ckpt

REPO = Path(__file__).resolve().parents[2]


def test_checkpoint_roundtrip_keeps_nesting_dtypes_and_big_integers(tmp_path):
    import optax

    opt_state = optax.adam(1e-3).init({"w": np.ones(3, np.float32)})
    state = {"opt": opt_state, "step": 2**62 + 1, "lr": 0.1, "none": None, "key": np.array([1, 2], np.uint32),
             "list": [np.zeros((2, 2)), "x", True]}
    ckpt.save_file(tmp_path / "c.npz", state, {"behavior": "3DBall"})
    back, meta = ckpt.load_file(tmp_path / "c.npz")
    assert meta == {"behavior": "3DBall"}
    assert type(back["opt"][0]).__name__ == "ScaleByAdamState"
    np.testing.assert_array_equal(back["opt"][0].mu["w"], opt_state[0].mu["w"])
    assert back["step"] == 2**62 + 1 and back["lr"] == 0.1 and back["none"] is None
    assert back["key"].dtype == np.uint32 and back["list"][1:] == ["x", True]


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.npz"
    ckpt.save_file(path, {"a": np.ones(1000)}, {})
    path.write_bytes(path.read_bytes()[:300])  # what a non-atomic writer could leave
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.npz"):
        ckpt.load_file(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load_file(tmp_path / "missing")


def test_a_crash_between_temporary_write_and_replace_keeps_the_previous_checkpoint(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path / "3DBall", "3DBall", keep=5)
    manager.save(100, {"w": np.full(1000, 1.0)}, {"step": 100}, time.time())
    # a separate process writes the next checkpoint and dies (os._exit, no cleanup) right
    # before the rename, as a kill -9 or a power cut would leave it
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from trainer_server import checkpoints as ckpt
        def die(src, dst):
            assert os.path.getsize(src) > 0
            os._exit(17)
        ckpt.atomic_write_bytes(
            ckpt.Path({str(manager.latest_path)!r}), ckpt.dumps({{"w": np.full(1000, 2.0)}}, {{"step": 200}}), replace=die
        )
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 17, done.stderr.decode()
    leftovers = list((tmp_path / "3DBall").glob(".*.tmp"))
    assert leftovers, "the crashed writer should have left its temporary file"
    state, meta = ckpt.load_file(manager.latest_path)
    assert meta["step"] == 100 and float(state["w"][0]) == 1.0
    # the next start cleans the temporaries up
    ckpt.CheckpointManager(tmp_path / "3DBall", "3DBall", keep=5)
    assert not list((tmp_path / "3DBall").glob(".*.tmp"))
