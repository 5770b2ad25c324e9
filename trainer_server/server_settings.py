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
    "parse_devices",
    "parse_torch_device",
    "server_settings_from_args",
]

DEFAULT_LISTEN = "127.0.0.1:5755"
#: seconds a new Connect stream has to send its Hello (``--hello-timeout``)
DEFAULT_HELLO_TIMEOUT_S = 10.0



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
