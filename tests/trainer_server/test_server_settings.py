"""tandem-trainer's own server options: listen address, TLS pair, token from the flag or TANDEM_TOKEN."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trainer_server.config.schema import ConfigError
from trainer_server.server_settings import server_settings_from_args


def cli(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**values)


def write(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_server_settings_defaults_token_and_tls(tmp_path: Path) -> None:
    server = server_settings_from_args(cli(), environ={})
    assert (server.listen, server.host, server.port, server.tls, server.token) == (
        "127.0.0.1:5755",
        "127.0.0.1",
        5755,
        False,
        None,
    )
    assert server.with_gateway is False and server.gateway_args == () and server.log_json is False
    assert server_settings_from_args(cli(), environ={"TANDEM_TOKEN": "s3cret"}).token == "s3cret"
    assert server_settings_from_args(cli(token="flag"), environ={"TANDEM_TOKEN": "env"}).token == "flag"
    assert "s3cret" not in repr(server_settings_from_args(cli(), environ={"TANDEM_TOKEN": "s3cret"}))
    ipv6 = server_settings_from_args(cli(listen="[::]:0", with_gateway=True, gateway_args=["--num-envs", "2"]), {})
    assert (ipv6.host, ipv6.port, ipv6.with_gateway, ipv6.gateway_args) == ("::", 0, True, ("--num-envs", "2"))
    cert, key = write(tmp_path, "cert", "c.pem"), write(tmp_path, "key", "k.pem")
    tls = server_settings_from_args(cli(tls_cert=str(cert), tls_key=str(key)), {})
    assert tls.tls and tls.tls_key == str(key)
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key must be given together"):
        server_settings_from_args(cli(tls_cert=str(cert)), {})
    with pytest.raises(ConfigError, match="--tls-key: file not found: .*missing.pem"):
        server_settings_from_args(cli(tls_cert=str(cert), tls_key=str(tmp_path / "missing.pem")), {})
    with pytest.raises(ConfigError, match="--listen: listen address must be host:port"):
        server_settings_from_args(cli(listen="localhost"), {})


def test_slow_updates_is_checked_at_the_edge() -> None:
    assert server_settings_from_args(cli(slow_updates_s=0.5), environ={}).slow_updates_s == 0.5
    with pytest.raises(ConfigError, match="--slow-updates"):
        server_settings_from_args(cli(slow_updates_s=-1.0), environ={})


def test_hello_timeout_defaults_to_ten_seconds_and_is_checked_at_the_edge() -> None:
    from trainer_server.cli import build_parser

    assert server_settings_from_args(cli(), environ={}).hello_timeout_s == 10.0
    args = build_parser().parse_args(["--hello-timeout", "2.5"])
    assert server_settings_from_args(args, environ={}).hello_timeout_s == 2.5
    with pytest.raises(ConfigError, match="--hello-timeout"):
        server_settings_from_args(cli(hello_timeout_s=0.0), environ={})
