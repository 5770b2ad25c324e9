"""The Node.js client (clients/node) against a real gateway: its own ``node --test`` suite and its CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.options import ServerOptions
from gateway_helpers import environment_options, running_gateway

NODE_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "node"


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("clients/node has no node_modules: run `make node-client` (make test does)")
    return node


@pytest.mark.slow
def test_node_test_suite_passes_against_a_running_gateway():
    node = _node()
    with running_gateway(environment_options(env_args=("--task", "gridworld"))) as gw:
        env = dict(os.environ, TANDEM_GATEWAY_ADDRESS=gw.address)
        out = subprocess.run(
            [node, "--test", "test/"], cwd=NODE_CLIENT, env=env, capture_output=True, text=True, timeout=180
        )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout
    assert "# pass 6" in out.stdout


@pytest.mark.slow
def test_node_cli_sends_the_token_and_a_wrong_one_is_refused():
    node = _node()
    server = ServerOptions(listen="127.0.0.1:0", token="node-secret")
    with running_gateway(environment_options(env_args=("--num-agents", "4")), server) as gw:
        cmd = [node, "client.js", "--address", gw.address, "--episodes", "2", "--max-steps", "2000"]
        ok = subprocess.run([*cmd, "--token", "node-secret"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        summary = json.loads(ok.stdout)
        assert summary["describe"]["behaviors"][0]["name"] == "3DBall?team=0"
        assert len(summary["episodes"]) >= 2
        bad = subprocess.run([*cmd, "--token", "nope"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1
        assert "gRPC 16" in bad.stderr  # UNAUTHENTICATED


def test_node_cli_help_prints_usage_and_exits_0():
    """The README tells users to run ``node clients/node/client.js --help``."""
    node = _node()
    for flag in ("--help", "-h"):
        done = subprocess.run([node, "client.js", flag], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Usage: node client.js") and "--address HOST:PORT" in done.stdout
    bad = subprocess.run([node, "client.js", "--bogus", "1"], cwd=NODE_CLIENT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--help lists the options" in bad.stderr
