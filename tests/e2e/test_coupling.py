"""The actor-learner coupling through the real processes: a trainer and a gateway started
on their own (as on two machines), the gateway collecting only what the trainer grants.

* PPO on-policy: every trained step was acted by the current policy (``Policy/Lag`` 0),
  and the gateway collects about ``max_steps``, not what its speed would allow;
* the end of the run: the trainer tells the gateway, which exits by itself (0);
* ``--resume`` of the finished run says so at once and starts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import threading

import pytest

from benchmarks.ports import free_base_port
from trainer_server.stats import read_scalars
from test_train_3dball import _tool

MAX_STEPS = 3000
CONFIG = textwrap.dedent(
    f"""
    behaviors:
      3DBall:
        trainer_type: ppo
        hyperparameters: {{batch_size: 32, buffer_size: 600, num_epoch: 1}}
        network_settings: {{hidden_units: 16, num_layers: 1}}
        max_steps: {MAX_STEPS}
        time_horizon: 64
        summary_freq: 1000
        checkpoint_interval: 100000
    """
)


class _Process:
    """A process whose JSON log lines (stderr) are collected; ``wait_for`` an event."""

    def __init__(self, cmd: list[str], cwd) -> None:
        env = dict(os.environ, TANDEM_LOG_JSON="1")
        self.process = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.events: list[dict] = []
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass
                self._changed.notify_all()

    def wait_for(self, event: str, timeout: float) -> dict:
        with self._changed:
            found = self._changed.wait_for(lambda: next((e for e in self.events if e.get("event") == event), None), timeout)
        assert found, f"no {event!r} within {timeout} s:\n" + "".join(self.lines[-60:])
        return found

    def output(self) -> str:
        with self._changed:
            return "".join(self.lines[-80:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_standalone_gateway_collects_what_the_trainer_grants_and_exits_when_training_finishes(tmp_path):
    config = tmp_path / "3DBall.yaml"
    config.write_text(CONFIG)
    results = tmp_path / "results"
    trainer_cmd = [*_tool("tandem-trainer"), str(config), "--run-id", "coupled", "--results-dir", str(results),
                   "--listen", "127.0.0.1:0", "--seed", "3"]
    trainer = _Process(trainer_cmd, tmp_path)
    gateway = None
    try:
        address = trainer.wait_for("trainer ready", 180)["address"]
        gateway = _Process(
            [*_tool("tandem-gateway"), "--trainer", address, "--listen", "127.0.0.1:0",
             "--base-port", str(free_base_port())],
            tmp_path,
        )
        assert trainer.process.wait(600) == 0, trainer.output()
        # the gateway was told, and leaves by itself
        assert gateway.process.wait(120) == 0, gateway.output()
        gateway.wait_for("the trainer finished its run: the gateway exits", 1)
        stopped = gateway.wait_for("actor stopped", 1)
    finally:
        trainer.kill()
        if gateway is not None:
            gateway.kill()
    # collection followed the grants: max_steps and at most a step of 12 agents per update, not what the gateway could do
    assert MAX_STEPS <= stopped["steps"] <= MAX_STEPS + 12 * (MAX_STEPS // 600), stopped
    scalars = read_scalars(results / "coupled" / "3DBall")
    assert {v for _, v in scalars["Policy/Lag"]} == {0.0}, scalars["Policy/Lag"]
    assert sum(v for _, v in scalars.get("Policy/Stale Steps Dropped", [])) <= 12 * (MAX_STEPS // 600)

    # --resume of the finished run: a message, exit 0, no server, no gateway
    resumed = subprocess.run(
        [*_tool("tandem-trainer"), str(config), "--run-id", "coupled", "--results-dir", str(results), "--resume",
         "--listen", "127.0.0.1:0", "--with-gateway"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "nothing to resume: every behavior of this run already reached max_steps" in resumed.stderr
    assert "trainer ready" not in resumed.stderr and "launching a local gateway" not in resumed.stderr
