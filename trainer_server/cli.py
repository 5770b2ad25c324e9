"""``tandem-trainer``: the trainer server's command line, in mlagents-learn's words.

Why: ML-Agents users start training with ``mlagents-learn CONFIG --run-id ...``; the
same file and the same flags start Tandem's trainer server. Tandem's own flags (where
to listen, TLS, token, launching a local gateway) come on top.

Exit codes: 0 success; 2 bad command line or invalid configuration; 3 a valid
configuration that uses features Tandem cannot train yet; 1 the trainer failed to start
(or the run-id's results folder does not fit ``--resume``/``--force``/``--inference``).

``--env BUILD`` (or ``--env editor``) launches the local gateway as ``--with-gateway``
does, since ``mlagents-learn --env`` launches the build itself. Abbreviated flags are
refused (``allow_abbrev=False``): ``--torch``, a flag ML-Agents removed, must not
silently become ``--torch-device``.

``--dry-run`` loads and validates the configuration, prints the resolved settings as
ML-Agents' ``configuration.yaml`` would hold them (YAML on stdout) and starts nothing.
A configuration that uses features Tandem cannot train yet is still printed, then
reported on stderr with exit code 3, so the resolved values can be inspected either way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from common.environment_options import add_environment_arguments, add_server_arguments
from common.logging import configure_logging, get_logger
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import ConfigError, NotSupportedError
from trainer_server.config.support import check_supported, environment_warnings
from trainer_server.server_settings import DEFAULT_LISTEN, parse_torch_device, server_settings_from_args

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG_ERROR = 2
EXIT_NOT_SUPPORTED = 3

_PROG = "tandem-trainer"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Override flags default to None: only given flags override the YAML."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        allow_abbrev=False,
        description=(
            "Tandem trainer server: trains ML-Agents behaviors (PPO and SAC, in JAX) from the "
            "experience that gateways stream in. Reads mlagents-learn's trainer YAML and flags. "
            "Without --env or --with-gateway it waits for gateways to connect; --env BUILD "
            "(a Unity build) or --env editor (the Unity Editor: press Play) launches a local "
            "gateway for it, as mlagents-learn --env does."
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
    run.add_argument(
        "--force",
        action="store_true",
        default=None,
        help="start RUN_ID over although it has results: its TensorBoard event files are deleted, its "
        "checkpoints stay (those of the same steps are overwritten)",
    )
    run.add_argument(
        "--initialize-from", metavar="RUN_ID", default=None, help="start from the trained model of another run"
    )
    run.add_argument(
        "--inference",
        action="store_true",
        default=None,
        help="act with the policy without training it (with --resume: the run's latest checkpoint); "
        "summaries are still written, and it runs until stopped",
    )
    run.add_argument("--results-dir", default=None, help="base folder of the results (default: results)")
    run.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="act with the most likely action instead of sampling, while training and in --inference "
        "(sets network_settings.deterministic of every behavior)",
    )
    run.add_argument("--debug", action="store_true", default=None, help="debug-level logging")
    run.add_argument(
        "--torch-device",
        dest="device",
        default=None,
        help="the JAX device the learners train on: cpu, cuda or cuda:N (default: torch_settings.device, "
        "else a GPU when the CUDA build of JAX sees one, else the CPU)",
    )

    run.add_argument(
        "--demos",
        metavar="DEMO_PATH",
        default=None,
        help="train by behavioral cloning from these demonstrations alone (a .demo file or a folder of them), "
        "with no environment: each behavior recorded there trains with its settings from CONFIG "
        "(what ML-Agents' removed offline_bc trainer did)",
    )

    _, engine = add_environment_arguments(
        parser,
        overrides=True,
        environment_title="environment (passed to the local gateway, which --env or --with-gateway launches)",
    )
    engine.add_argument(
        "--no-graphics-monitor",
        action="store_true",
        default=None,
        help="run Unity without graphics except for monitor (recorded; the gateway does not use it)",
    )

    server = add_server_arguments(parser, title="Tandem trainer server", listen=DEFAULT_LISTEN)
    server.add_argument(
        "--with-gateway",
        action="store_true",
        help="also launch a local gateway: on the built-in stand-in without --env (--env launches one anyway)",
    )
    server.add_argument(
        "--gateway-arg",
        dest="gateway_args",
        action="append",
        default=None,
        metavar="ARG",
        help="extra argument for that gateway, repeatable (write --gateway-arg=--flag for flags)",
    )
    server.add_argument(
        "--slow-updates",
        dest="slow_updates_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="sleep this long after every update, to emulate a slow trainer (benchmarks of the coupling)",
    )
    server.add_argument(
        "--hello-timeout",
        dest="hello_timeout_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a gateway stream that sends no Hello within this many seconds is ended with "
        "DEADLINE_EXCEEDED (default: 10)",
    )
    server.add_argument(
        "--devices",
        default=None,
        metavar="N|all",
        help="split every update's batch across N local devices of the training platform, or all of "
        "them (data parallelism; default 1)",
    )
    hosts = parser.add_argument_group(
        "multi-host learner (jax.distributed; docs/SCALING.md)",
        "one trainer process per host, the same command on each but --process-id: process 0 serves the "
        "gateways and writes the results, the others lend their devices to every update",
    )
    hosts.add_argument(
        "--coordinator-address",
        default=None,
        metavar="HOST:PORT",
        help="where process 0 runs JAX's coordination service (env JAX_COORDINATOR_ADDRESS)",
    )
    hosts.add_argument(
        "--num-processes", default=None, metavar="N", help="trainer processes in all (env JAX_NUM_PROCESSES)"
    )
    hosts.add_argument(
        "--process-id", default=None, metavar="I", help="this process's index, 0 to N-1 (env JAX_PROCESS_ID)"
    )
    hosts.add_argument(
        "--coordinator-timeout",
        dest="coordinator_timeout_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long to wait for the coordinator and every process to join (default 300)",
    )
    hosts.add_argument(
        "--heartbeat-timeout",
        dest="heartbeat_timeout_s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a process silent this long is taken for dead and the others stop with an error (default 100)",
    )
    return parser


def _error(message: str) -> None:
    sys.stderr.write(f"{_PROG}: error: {message}\n")


def _run_offline(args: argparse.Namespace, options) -> int:
    """``--demos``: offline behavioral cloning (``trainer_server.offline``), no server, no gateway."""
    clashes = [flag for flag, given in (("--with-gateway", args.with_gateway), ("--env", options.env_settings.env_path),
                                        ("--inference", args.inference)) if given]
    if clashes:
        _error(f"--demos trains from demonstrations alone: it cannot be used with {', '.join(clashes)}")
        return EXIT_CONFIG_ERROR
    from trainer_server.offline import run_offline

    try:
        return int(run_offline(options, args.demos))
    except KeyboardInterrupt:
        return 130


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
        parse_torch_device(options.torch_settings.device)
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_CONFIG_ERROR

    if args.dry_run:
        sys.stdout.write(options.to_yaml())
        sys.stdout.flush()
    for warning in environment_warnings(options):
        log.warning("environment not supported", detail=warning)
    try:
        check_supported(options)
    except NotSupportedError as exc:
        _error(f"this configuration uses features that are not supported yet:\n{exc}")
        return EXIT_NOT_SUPPORTED
    if args.dry_run:
        return EXIT_OK

    if args.demos is not None:
        if server.multi_host is not None:
            _error("--demos trains on one host: it cannot be used with a multi-host learner (--coordinator-address)")
            return EXIT_CONFIG_ERROR
        return _run_offline(args, options)
    from trainer_server.demonstrations import demonstration_problems

    problems = demonstration_problems(options)
    if problems:
        _error("\n".join(problems))
        return EXIT_CONFIG_ERROR

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
