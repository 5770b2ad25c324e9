"""Helpers for the gateway tests: free ports, in-process gateways, process lookups.

Every gateway here is real: worker processes, stand-in Unity processes, gRPC over
loopback sockets on ports the OS picked (other test runs share the machine).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path

import unity_standin
from benchmarks.ports import free_base_port as free_ports
from gateway.app import Gateway
from gateway.options import (
    ActorOptions,
    EnvironmentOptions,
    GatewayOptions,
    RestartLimits,
    ServerOptions,
    validate,
)


def environment_options(
    num_envs: int = 1, env_args: tuple[str, ...] = (), restarts: RestartLimits | None = None, **kw
) -> EnvironmentOptions:
    return EnvironmentOptions(
        file_name=unity_standin.executable_path(),
        env_args=env_args,
        num_envs=num_envs,
        base_port=free_ports(num_envs),
        seed=kw.pop("seed", 1),
        timeout_wait=kw.pop("timeout_wait", 10),
        restarts=restarts or RestartLimits(max_lifetime_restarts=10, rate_limit_n=-1),
        **kw,
    )


@contextlib.contextmanager
def running_gateway(
    environment: EnvironmentOptions | None = None,
    server: ServerOptions | None = None,
    actor: ActorOptions | None = None,
):
    """Starts a gateway in this process (workers and stand-ins are real processes) and stops it."""
    options = validate(
        GatewayOptions(
            environment=environment or environment_options(),
            server=server or ServerOptions(listen="127.0.0.1:0"),
            actor=actor,
        )
    )
    gateway = Gateway(options)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


def with_server(server: ServerOptions, **changes) -> ServerOptions:
    return replace(server, **changes)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pids_with_arg(*needles: str) -> list[int]:
    """Pids whose command line contains every one of ``needles`` as consecutive arguments."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args]
        n = len(needles)
        if any(tuple(args[i : i + n]) == needles for i in range(len(args) - n + 1)) and pid_alive(int(entry)):
            out.append(int(entry))
    return out


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
