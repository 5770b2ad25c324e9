"""A ``tandem-trainer --with-gateway`` killed with ``kill -9`` takes its gateway, workers and the
Unity stand-in with it, and ``--resume --with-gateway`` then starts on the same Unity port
(issue 19). Real processes, a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process tree from /proc")


def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> set[int]:
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(tmp_path: Path, base_port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainer_server.cli", "--run-id", "orphans", "--results-dir", str(tmp_path),
           "--listen", "127.0.0.1:0", "--with-gateway", "--num-envs", "2", "--base-port", str(base_port), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_players(process: subprocess.Popen, logs: list[Path], timeout: float = 600) -> None:
    """Waits until each player's log says its scene loaded."""
    deadline = time.monotonic() + timeout
    while not all(log.is_file() and "scene loaded" in log.read_text() for log in logs):
        assert process.poll() is None, f"the trainer exited with {process.returncode}"
        assert time.monotonic() < deadline, "the players never loaded their scenes"
        time.sleep(0.2)


def test_kill_9_of_the_trainer_takes_gateway_workers_and_unity_along_and_resume_starts(tmp_path):
    from benchmarks.ports import free_base_port

    base_port = free_base_port()
    logs = [tmp_path / "orphans" / "run_logs" / f"Player-{i}.log" for i in range(2)]
    trainer = _start(tmp_path, base_port)
    resumed = None
    family: set[int] = set()
    try:
        _wait_for_players(trainer, logs)
        family = _descendants(trainer.pid)
        # gateway, two workers, two stand-ins at least
        assert len(family) >= 5, family
        os.kill(trainer.pid, signal.SIGKILL)
        trainer.wait()
        deadline = time.monotonic() + 120
        while any(_alive(p) for p in family):
            assert time.monotonic() < deadline, [p for p in family if _alive(p)]
            time.sleep(0.2)
        for log in logs:  # the resumed run's players write them afresh
            log.unlink()
        resumed = _start(tmp_path, base_port, "--resume")
        _wait_for_players(resumed, logs)
        resumed.send_signal(signal.SIGTERM)
        assert resumed.wait(300) == 0
    finally:
        for p in (trainer, resumed):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
