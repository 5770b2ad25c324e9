"""``tandem-trainer``: the trainer server's command line, in mlagents-learn's words.

Why: ML-Agents users start training with ``mlagents-learn CONFIG --run-id ...``; the
same file and the same flags start Tandem's trainer server. Tandem's own flags (where
to listen, TLS, token, launching a local gateway) come on top.

Exit codes: 0 success; 2 bad command line or invalid configuration; 3 a valid
configuration that uses features Tandem cannot train yet; 1 the trainer failed to start.

``--dry-run`` loads and validates the configuration, prints the resolved settings as
ML-Agents' ``configuration.yaml`` would hold them (YAML on stdout) and starts nothing.
A configuration that uses features Tandem cannot train yet is still printed, then
reported on stderr with exit code 3, so the resolved values can be inspected either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.logging import configure_logging, get_logger
from trainer_server.settings import (
    DEFAULT_LISTEN,
    TOKEN_ENV_VAR,
    ConfigError,
    NotSupportedError,
    check_supported,
    load_run_options,
    server_settings_from_args,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_NOT_SUPPORTED = 3

_PROG = "tandem-trainer"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Override flags default to None: only given flags override the YAML."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Tandem trainer server: trains ML-Agents behaviors (JAX PPO) from the experience "
            "that gateways stream in. Reads mlagents-learn's trainer YAML and flags."
        ),
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=None,
        metavar="CONFIG",
        help="ML-Agents trainer configuration YAML (default: ML-Agents' default settings for every behavior)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="load and validate CONFIG, print the resolved settings (YAML) and exit without training",
    )

    run = parser.add_argument_group("run (as mlagents-learn)")
    run.add_argument("--run-id", default=None, help="name of the run: results go to RESULTS_DIR/RUN_ID (default: ppo)")
    run.add_argument(
        "--resume", action="store_true", default=None, help="continue the run RUN_ID from its latest checkpoint"
    )
    run.add_argument("--force", action="store_true", default=None, help="overwrite the results of an existing RUN_ID")
    run.add_argument(
        "--initialize-from", metavar="RUN_ID", default=None, help="start from the trained model of another run"
    )
    run.add_argument("--inference", action="store_true", default=None, help="act with the policy without training it")
    run.add_argument("--results-dir", default=None, help="base folder of the results (default: results)")
    run.add_argument("--seed", type=int, default=None, help="random seed (default: -1, random)")
    run.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="act with the most likely action instead of sampling",
    )
    run.add_argument("--debug", action="store_true", default=None, help="debug-level logging")
    run.add_argument(
        "--torch-device",
        dest="device",
        default=None,
        help="accepted for mlagents-learn compatibility and recorded; JAX chooses its own device",
    )

    env = parser.add_argument_group("environment (passed to the gateway that --with-gateway launches)")
    env.add_argument(
        "--env", dest="env_path", default=None, help="path to a Unity build (default: the built-in stand-in)"
    )
    env.add_argument("--base-port", type=int, default=None, help="first port of the Unity instances (default: 5005)")
    env.add_argument("--num-envs", type=int, default=None, help="number of Unity instances (default: 1)")
    env.add_argument("--num-areas", type=int, default=None, help="training areas per instance (default: 1)")
    env.add_argument(
        "--timeout-wait", type=int, default=None, help="seconds to wait for a Unity instance to start (default: 60)"
    )
    env.add_argument(
        "--max-lifetime-restarts",
        type=int,
        default=None,
        help="crashes allowed per instance, -1 = no limit (default: 10)",
    )
    env.add_argument(
        "--restarts-rate-limit-n", type=int, default=None, help="crashes allowed per period, -1 = no limit (default: 1)"
    )
    env.add_argument(
        "--restarts-rate-limit-period-s", type=int, default=None, help="that period in seconds (default: 60)"
    )
    env.add_argument(
        "--env-args",
        nargs=argparse.REMAINDER,
        default=None,
        help="arguments for the Unity executable: everything after this flag",
    )

    engine = parser.add_argument_group("engine")
    engine.add_argument("--width", type=int, default=None, help="window width in pixels (default: 84)")
    engine.add_argument("--height", type=int, default=None, help="window height in pixels (default: 84)")
    engine.add_argument("--quality-level", type=int, default=None, help="Unity quality level (default: 5)")
    engine.add_argument("--time-scale", type=float, default=None, help="Unity Time.timeScale (default: 20)")
    engine.add_argument("--target-frame-rate", type=int, default=None, help="Unity target frame rate (default: -1)")
    engine.add_argument("--capture-frame-rate", type=int, default=None, help="Unity capture frame rate (default: 60)")
    engine.add_argument("--no-graphics", action="store_true", default=None, help="run Unity without graphics")
    engine.add_argument(
        "--no-graphics-monitor", action="store_true", default=None, help="run Unity without graphics except for monitor"
    )

    server = parser.add_argument_group("Tandem trainer server")
    server.add_argument("--listen", default=None, help=f"host:port of the gRPC server (default: {DEFAULT_LISTEN})")
    server.add_argument("--tls-cert", default=None, help="PEM certificate chain; enables TLS with --tls-key")
    server.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    server.add_argument(
        "--token",
        default=None,
        help=f"bearer token that gateways must present (prefer the {TOKEN_ENV_VAR} environment variable: "
        "command lines are visible to other users)",
    )
    server.add_argument(
        "--with-gateway",
        action="store_true",
        help="also launch a local gateway (on the built-in stand-in unless --env names a Unity build)",
    )
    server.add_argument(
        "--gateway-arg",
        dest="gateway_args",
        action="append",
        default=None,
        metavar="ARG",
        help="extra argument for that gateway, repeatable (write --gateway-arg=--flag for flags)",
    )
    server.add_argument("--log-json", action="store_true", help="JSON-lines logs")
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``tandem-trainer``; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has already printed usage and the message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_CONFIG_ERROR
    if args.resume and args.force:
        _error("--resume and --force cannot be used together (resume continues the run, force overwrites it)")
        return EXIT_CONFIG_ERROR

    configure_logging(json=True if args.log_json else None, level="DEBUG" if args.debug else None)
    log = get_logger("trainer_server.cli")

    try:
        options = load_run_options(args.config, args)
        server = server_settings_from_args(args)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_CONFIG_ERROR

    if args.dry_run:
        sys.stdout.write(options.to_yaml())
        sys.stdout.flush()
    try:
        check_supported(options)
    except NotSupportedError as exc:
        _error(f"this configuration uses features that are not supported yet:\n{exc}")
        return EXIT_NOT_SUPPORTED
    if args.dry_run:
        return EXIT_OK

    try:
        from trainer_server.main import run
    except ModuleNotFoundError as exc:
        if exc.name not in ("trainer_server.main",):
            raise
        _error("the trainer service (trainer_server.main) is not available in this installation")
        return EXIT_FAILED

    log.info(
        "starting trainer",
        run_id=options.checkpoint_settings.run_id,
        config=options.config_path,
        behaviors=sorted(options.behaviors),
        listen=server.listen,
    )
    try:
        return int(run(options, server))
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
