"""The two output streams of a Tandem process: ML-Agents console lines on stdout, logs on stderr.

Each case runs a real Python process that configures logging as the command lines do and
logs through structlog, mlagents-envs' own loggers (which add a stdout handler each) and
JAX's platform probe, then reads what came out of its stdout and stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from benchmarks.ports import free_base_port

REPO = Path(__file__).resolve().parents[2]

_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from common.logging import configure_logging, console, get_logger
    configure_logging(json=sys.argv[1] == "json", level=sys.argv[2])
    from mlagents_envs.logging_util import get_logger as mlagents_logger
    mlagents_logger("mlagents_envs.environment").info("Connected to Unity environment")
    logging.getLogger("jax._src.xla_bridge").info("Unable to initialize backend 'tpu': not found")
    logging.getLogger("some").addHandler(logging.NullHandler())  # as libraries do
    logging.getLogger("some.library").warning("a library warning")
    get_logger("trainer_server.main").info("trainer ready", run_id="r1", results="my results")
    console("3DBall. Step: 10. Time Elapsed: 1.000 s. Mean Reward: 1.000. Std of Reward: 0.000. Training.",
            component="trainer_server.summary", behavior="3DBall", step=10)
    get_logger("trainer_server.main").debug("a debug event", n=1)
    """
)


def _run(mode: str, level: str = "INFO") -> tuple[list[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode, level],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout.splitlines(), done.stderr.splitlines()


def test_human_format_puts_console_lines_on_stdout_once_and_leaves_noise_out():
    stdout, stderr = _run("human")
    summary = "[INFO] 3DBall. Step: 10. Time Elapsed: 1.000 s. Mean Reward: 1.000. Std of Reward: 0.000. Training."
    # stdout: what mlagents-learn prints, each line once (mlagents' own handler prints its line)
    assert stdout == ["[INFO] Connected to Unity environment", summary]
    # stderr: Tandem's events and other libraries' records with ML-Agents' level prefix
    assert stderr == [
        "[WARNING] a library warning",
        "[INFO] trainer ready run_id=r1 results='my results'",
    ]


def test_debug_format_adds_time_and_component_and_keeps_jax_probe():
    stdout, stderr = _run("human", "DEBUG")
    assert "[INFO] Connected to Unity environment" in stdout
    text = "\n".join(stderr)
    assert "DEBUG [trainer_server.main] a debug event n=1" in text
    assert "INFO [trainer_server.main] trainer ready run_id=r1" in text
    assert "Unable to initialize backend 'tpu'" in text  # only at DEBUG


def test_json_lines_on_stderr_and_console_lines_still_on_stdout():
    stdout, stderr = _run("json")
    events = [json.loads(line) for line in stderr]  # every line is JSON, library records included
    by_event = {e["event"]: e for e in events}
    ready = by_event["trainer ready"]
    assert list(ready) == ["component", "run_id", "results", "event", "level", "timestamp"]
    assert (ready["component"], ready["level"], ready["results"]) == ("trainer_server.main", "info", "my results")
    summary = next(e for e in events if e["event"].startswith("3DBall. Step: 10."))
    assert (summary["component"], summary["level"], summary["behavior"], summary["step"]) == (
        "trainer_server.summary", "info", "3DBall", 10,
    )
    library = by_event["a library warning"]
    assert (library["component"], library["level"]) == ("some.library", "warning")
    assert by_event["Connected to Unity environment"]["component"] == "mlagents_envs.environment"
    assert not any("Unable to initialize backend" in e["event"] for e in events)
    assert stdout[-1].startswith("[INFO] 3DBall. Step: 10. ")


_OPEN_AND_CLOSE = textwrap.dedent(
    """
    import sys
    import unity_standin
    from mlagents_envs.environment import UnityEnvironment
    for i in range(6):
        env = UnityEnvironment(
            file_name=str(unity_standin.executable_path()), worker_id=i, base_port=int(sys.argv[1]), timeout_wait=60
        )
        env.reset()
        env.step()
        env.close()
    """
)


def test_unity_player_close_prints_no_grpc_goaway():
    """mlagents stops its server without grace at close; the player's channel used to log
    ``chttp2_transport.cc ... Got goaway [2] ... Cancelling all calls`` most times."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "TANDEM_LOG_LEVEL")}
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_AND_CLOSE, str(free_base_port(6))],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Got goaway" not in done.stderr and "chttp2_transport" not in done.stderr, done.stderr
    # mlagents-envs' close() puts the 400 answer in its pipe and stops its server without grace:
    # on a busy machine the stop may cancel the call before the answer leaves. Either way each
    # player ends: it read the 400, or the call was cancelled (and it says so once)
    closed = done.stderr.count("trainer closed the connection")
    cancelled = done.stderr.count("lost the connection to the trainer")
    assert closed + cancelled == 6 and closed >= 1, done.stderr
    assert cancelled == done.stderr.count("Cancelling all calls"), done.stderr
