"""The trainer server's own options (``--listen``, TLS, token, ``--with-gateway``), typed and validated.

Why: these are not ML-Agents sections (they never reach ``configuration.yaml``); they come
from ``tandem-trainer``'s command line only and are checked once, here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.environment_options import TOKEN_ENV_VAR
from trainer_server.config.schema import ConfigError

__all__ = [
    "DEFAULT_HELLO_TIMEOUT_S",
    "DEFAULT_LISTEN",
    "ServerSettings",
    "MultiHostSettings",
    "parse_devices",
    "parse_torch_device",
    "server_settings_from_args",
]

DEFAULT_LISTEN = "127.0.0.1:5755"
#: seconds a new Connect stream has to send its Hello (``--hello-timeout``)
DEFAULT_HELLO_TIMEOUT_S = 10.0
#: the environment variables of a multi-host learner (JAX itself reads the first one)
COORDINATOR_ENV_VAR = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV_VAR = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV_VAR = "JAX_PROCESS_ID"


@dataclass(frozen=True)
class MultiHostSettings:
    """One trainer process of a multi-host learner (``--coordinator-address`` and friends).

    Attributes:
        coordinator_address: ``host:port`` where process 0 runs JAX's coordination service.
        num_processes: trainer processes in all, one per host.
        process_id: this one's index; 0 serves the gateways and writes the results.
        initialization_timeout_s: how long to wait for the coordinator and the other processes.
        heartbeat_timeout_s: a process silent this long is taken for dead: the others stop.
    """

    coordinator_address: str
    num_processes: int
    process_id: int
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100



@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Tandem's own trainer-server options (command line only; not an ML-Agents section).

    Attributes:
        listen: ``host:port`` of the gRPC server (``[::]:5755`` for IPv6; port 0 = any).
        tls_cert: PEM certificate chain file; TLS is on when cert and key are given.
        tls_key: PEM private key file.
        token: bearer token gateways must present (``--token`` or ``TANDEM_TOKEN``).
        with_gateway: also launch a local gateway (on the built-in stand-in unless
            ``env_settings.env_path`` names a Unity build), as ``make run`` does.
        gateway_args: extra command-line arguments for that gateway.
        log_json: JSON-lines logs.
        slow_updates_s: seconds of sleep after every update: emulates a slow trainer
            (benchmarks and tests of the actor-learner coupling; 0 in real runs).
        hello_timeout_s: seconds a new Connect stream has to send its Hello
            (``--hello-timeout``): a peer that says nothing must not hold a server thread.
        devices: local devices every update is split across (``--devices N``; None =
            ``all`` of the training platform's); 1 = no data parallelism.
        multi_host: this process's place in a multi-host learner, or None (one process).
    """

    listen: str = DEFAULT_LISTEN
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)
    with_gateway: bool = False
    gateway_args: tuple[str, ...] = ()
    log_json: bool = False
    slow_updates_s: float = 0.0
    hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S
    devices: int | None = 1
    multi_host: MultiHostSettings | None = None

    @property
    def host(self) -> str:
        """The host part of ``listen`` (brackets of an IPv6 address removed)."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of ``listen``."""
        return _split_listen(self.listen)[1]

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen address must be host:port, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def server_settings_from_args(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Builds :class:`ServerSettings` from ``tandem-trainer``'s parsed arguments.

    Args:
        args: namespace with any of ``listen``, ``tls_cert``, ``tls_key``, ``token``,
            ``with_gateway``, ``gateway_args``, ``log_json`` (missing or None = default).
        environ: environment for ``TANDEM_TOKEN`` (defaults to ``os.environ``).

    Raises:
        ConfigError: a malformed listen address, half a TLS pair, or a missing TLS file.
    """
    environ = os.environ if environ is None else environ
    values = vars(args) if args is not None else {}

    def given(name: str) -> Any:
        return values.get(name)

    listen = given("listen") or DEFAULT_LISTEN
    try:
        _split_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    tls_cert, tls_key = given("tls_cert"), given("tls_key")
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key must be given together")
    for flag, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag}: file not found: {Path(path).resolve()}")
    token = given("token") or environ.get(TOKEN_ENV_VAR) or None
    slow = given("slow_updates_s") or 0.0
    if not (0.0 <= slow <= 3600.0):
        raise ConfigError(f"--slow-updates: seconds between 0 and 3600, got {slow}")
    hello = given("hello_timeout_s")
    hello = DEFAULT_HELLO_TIMEOUT_S if hello is None else hello
    if not (0.1 <= hello <= 3600.0):
        raise ConfigError(f"--hello-timeout: seconds between 0.1 and 3600, got {hello}")
    try:
        devices = parse_devices(given("devices"))
    except ValueError as exc:
        raise ConfigError(f"--devices: {exc}") from None
    return ServerSettings(
        multi_host=multi_host_settings(values, environ),
        devices=devices,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        token=token,
        with_gateway=bool(given("with_gateway")),
        gateway_args=tuple(given("gateway_args") or ()),
        log_json=bool(given("log_json")),
        slow_updates_s=float(slow),
        hello_timeout_s=float(hello),
    )


def multi_host_settings(values: Mapping[str, Any], environ: Mapping[str, str]) -> MultiHostSettings | None:
    """The multi-host flags (``coordinator_address``, ``num_processes``, ``process_id``,
    ``coordinator_timeout_s``, ``heartbeat_timeout_s``), each flag before its environment
    variable (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``).

    Returns:
        None when no coordinator is named (one process).

    Raises:
        ConfigError: naming the flag: half a set, a malformed address, an id out of range.
    """
    names = (
        ("coordinator_address", "--coordinator-address", COORDINATOR_ENV_VAR),
        ("num_processes", "--num-processes", NUM_PROCESSES_ENV_VAR),
        ("process_id", "--process-id", PROCESS_ID_ENV_VAR),
    )
    given = {key: values.get(key) if values.get(key) is not None else environ.get(env) for key, _, env in names}
    if all(v is None or v == "" for v in given.values()):
        return None
    missing = [f"{flag} ({env})" for key, flag, env in names if given[key] is None or given[key] == ""]
    if missing:
        raise ConfigError(f"a multi-host learner needs {', '.join(missing)} as well")
    address = str(given["coordinator_address"])
    try:
        _split_listen(address)
    except ValueError:
        raise ConfigError(f"--coordinator-address: host:port of process 0, got {address!r}") from None
    numbers = {}
    for key, flag, env in names[1:]:
        try:
            numbers[key] = int(given[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} ({env}): a whole number, got {given[key]!r}") from None
    count, index = numbers["num_processes"], numbers["process_id"]
    if count < 1:
        raise ConfigError(f"--num-processes: at least 1, got {count}")
    if not 0 <= index < count:
        raise ConfigError(f"--process-id {index} is out of range: {count} processes are numbered 0 to {count - 1}")
    timeouts = {}
    for key, flag, default in (("coordinator_timeout_s", "--coordinator-timeout", 300),
                               ("heartbeat_timeout_s", "--heartbeat-timeout", 100)):
        value = values.get(key)
        value = default if value is None else value
        if not 1 <= value <= 86400:
            raise ConfigError(f"{flag}: seconds between 1 and 86400, got {value}")
        timeouts[key] = int(value)
    return MultiHostSettings(
        coordinator_address=address,
        num_processes=count,
        process_id=index,
        initialization_timeout_s=timeouts["coordinator_timeout_s"],
        heartbeat_timeout_s=timeouts["heartbeat_timeout_s"],
    )


def parse_devices(text: str | int | None) -> int | None:
    """``--devices``: a positive count, or ``all`` (None); missing = 1.

    Raises:
        ValueError: anything else.
    """
    if text is None:
        return 1
    if isinstance(text, str) and text.strip().lower() == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"a number of devices (1, 2, ...) or 'all', got {text!r}") from None
    if count < 1:
        raise ValueError(f"a number of devices (1, 2, ...) or 'all', got {text!r}")
    return count


#: ML-Agents' ``torch_settings.device`` words -> JAX platform
_TORCH_PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}


def parse_torch_device(text: str | None) -> tuple[str | None, int | None]:
    """ML-Agents' ``torch_settings.device`` (``--torch-device``) as a JAX (platform, index).

    ``None`` -> JAX's default backend (a GPU when the CUDA build of JAX sees one, else the
    CPU); ``cpu`` -> ("cpu", None); ``cuda`` -> ("gpu", None); ``cuda:N`` -> ("gpu", N);
    ``cpu:N`` -> ("cpu", N). Other torch devices (``mps``, ``xpu``, ...) have no JAX
    counterpart here.

    Raises:
        ConfigError: naming ``torch_settings.device`` and the accepted forms.
    """
    if text is None or not str(text).strip():
        return None, None
    name, sep, index_text = str(text).strip().lower().partition(":")
    platform = _TORCH_PLATFORMS.get(name)
    if platform is None or (sep and not index_text.isdigit()):
        raise ConfigError(
            f"torch_settings.device (--torch-device): {text!r} is not supported: Tandem trains with JAX on "
            "'cpu', 'cuda' or 'cuda:N' (N = the GPU's index)"
        )
    return platform, int(index_text) if sep else None
