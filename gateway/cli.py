"""``tandem-gateway``: run Unity environments behind the ``tandem.v1.Gateway`` API.

Remote-control mode (default): any gRPC client drives the environments with Play.
Actor mode (``--trainer host:port``): the gateway acts with the trainer's policy
snapshots and streams experience to it.
Local inference (``--policy BEHAVIOR=PATH.onnx``): the gateway acts with exported
models, deterministically, and logs the mean reward per behavior (no trainer, no Unity Editor needed);
``--heuristic BEHAVIOR`` acts with the stand-in's scripted expert instead.
``--record-demo DIR`` records what the agents do, in any mode, as ML-Agents ``.demo`` files.

Examples:
    tandem-gateway                                   # the built-in stand-in (3DBall-like)
    tandem-gateway --env builds/3DBall --num-envs 2 --no-graphics
    tandem-gateway --trainer 127.0.0.1:5757 --env-args --task gridworld
    tandem-gateway --policy 3DBall=results/tandem-3dball/3DBall.onnx
    tandem-gateway --heuristic 3DBall --record-demo demos   # expert demonstrations from the stand-in
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from common.environment_options import (
    EDITOR,
    TOKEN_ENV_VAR,
    add_environment_arguments,
    add_server_arguments,
    engine_settings_from_args,
)
from common.logging import configure_logging, get_logger
from gateway.options import (
    ActorOptions,
    EnvironmentOptions,
    GatewayOptions,
    InferenceOptions,
    OptionsError,
    RestartLimits,
    ServerOptions,
    validate,
)


#: ``--help``'s description: plain text (the module docstring's reST markup would show literally)
_DESCRIPTION = (
    "Run Unity environments behind the tandem.v1.Gateway API. Remote-control mode (default): any gRPC "
    "client drives the environments with Play. Actor mode (--trainer HOST:PORT): act with the trainer's "
    "policy snapshots and stream experience to it. Local inference (--policy BEHAVIOR=PATH.onnx): act "
    "with exported models, deterministically, and log the mean reward per behavior."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem-gateway",
        allow_abbrev=False,  # a mistyped or removed flag must not silently become another one
        description=_DESCRIPTION,
        epilog="Options after --env-args are passed to the Unity process unchanged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    env, _ = add_environment_arguments(p, overrides=False)
    env.add_argument(
        "--worker-process",
        action="store_true",
        help="remote control with one instance: step it in a worker process too, not inside the gateway process "
        "(isolation over latency)",
    )
    env.add_argument(
        "--log-folder",
        default=None,
        help="folder for each Unity player's log, Player-<worker id>.log (passed as -logFile, as mlagents-learn "
        "does with results/<run-id>/run_logs); default: none, players log where they would by default",
    )
    env.add_argument(
        "--record-demo",
        default=None,
        metavar="DIR",
        help="record what every behavior's agents observe and do (under a trainer, --policy, --heuristic or "
        "remote control) into ML-Agents .demo files in DIR, one per behavior and instance (<Behavior>.demo, "
        "then <Behavior>_0.demo...), for demo_path (behavioral_cloning, gail) and tandem-trainer --demos",
    )
    env.add_argument(
        "--unity-listen-host",
        default="localhost",
        metavar="HOST",
        help="address where the gateway's server for Unity (port --base-port + i) listens: localhost = loopback "
        "only (default; a Unity build runs on this machine); 0.0.0.0 or :: (all interfaces) or one interface's "
        "address for a Unity Editor on another machine. That port has no authentication (Unity's protocol has "
        "none): open it on trusted networks only",
    )
    srv = add_server_arguments(p, title="server", listen="127.0.0.1:5756")
    srv.add_argument("--max-message-mb", type=int, default=64, help="largest gRPC message")
    srv.add_argument(
        "--dm-env-rpc-listen",
        default=None,
        metavar="HOST:PORT",
        help="also serve the dm_env_rpc v1 protocol here (remote-control mode; port 0 = any free port; "
        "needs pip install -e '.[envs]'); default: not served",
    )
    act = p.add_argument_group("actor mode")
    act.add_argument("--trainer", default=None, help="host:port of a trainer: act and stream experience to it")
    act.add_argument(
        "--trainer-token",
        default=os.environ.get("TANDEM_TRAINER_TOKEN") or None,
        help="bearer token for the trainer (from $TANDEM_TRAINER_TOKEN when set)",
    )
    act.add_argument("--trainer-tls-ca", default=None, help="PEM CA certificate: connect to the trainer over TLS")
    act.add_argument("--chunk-steps", type=int, default=512, help="agent steps per experience chunk")
    act.add_argument("--max-buffered-chunks", type=int, default=256, help="unacknowledged chunks kept")
    act.add_argument("--max-buffered-mb", type=float, default=512.0, help="unacknowledged megabytes kept")
    act.add_argument(
        "--snapshot-wait-s",
        type=float,
        default=60.0,
        help="wait this long for a behavior's first snapshot, then act randomly without streaming",
    )
    inf = p.add_argument_group("local inference (no trainer)")
    inf.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="BEHAVIOR=PATH.onnx",
        help="act with this exported model for BEHAVIOR (name without ?team=), deterministically, without a "
        "trainer; repeat for each behavior; logs the mean reward, streams nothing",
    )
    inf.add_argument(
        "--heuristic",
        action="append",
        default=None,
        metavar="BEHAVIOR",
        help="act for BEHAVIOR (3DBall, GridWorld: the stand-in's tasks) with a scripted expert, as Unity's "
        "Heuristic Only behavior type; repeatable, with --policy for other behaviors (to make demonstrations "
        "with --record-demo)",
    )
    inf.add_argument(
        "--summary-interval-s", type=float, default=10.0, help="seconds between reward summaries with --policy"
    )
    inf.add_argument(
        "--env-parameter",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="with --policy: set this environment parameter (EnvironmentParametersChannel) on every instance before "
        "its first reset, e.g. gravity=20; repeat for each parameter (with --trainer the trainer decides them)",
    )
    log = p.add_argument_group("logging")
    log.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING... (None: $TANDEM_LOG_LEVEL or INFO)")
    return p


def _default_env() -> str:
    import unity_standin

    return str(unity_standin.executable_path())


def options_from_args(args: argparse.Namespace) -> GatewayOptions:
    """Builds and validates the options.

    Raises:
        OptionsError: naming the bad option.
    """
    if args.env_path is None:
        file_name: str | None = _default_env()
    elif args.env_path == EDITOR:
        file_name = None
    else:
        file_name = args.env_path
    environment = EnvironmentOptions(
        file_name=file_name,
        env_args=tuple(args.env_args or ()),
        num_envs=args.num_envs,
        single_in_process=not args.worker_process,
        base_port=args.base_port if args.base_port is not None else (5004 if file_name is None else 5005),
        seed=args.seed,
        num_areas=args.num_areas,
        timeout_wait=args.timeout_wait,
        engine=engine_settings_from_args(args),
        restarts=RestartLimits(
            max_lifetime_restarts=args.max_lifetime_restarts,
            rate_limit_n=args.restarts_rate_limit_n,
            rate_limit_period_s=args.restarts_rate_limit_period_s,
        ),
        log_folder=os.path.abspath(args.log_folder) if args.log_folder else None,
        record_demo=os.path.abspath(args.record_demo) if args.record_demo else None,
        unity_listen_host=args.unity_listen_host,
    )
    server = ServerOptions(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.token or os.environ.get(TOKEN_ENV_VAR) or None,
        max_message_mb=args.max_message_mb,
        dm_env_rpc_listen=args.dm_env_rpc_listen,
    )
    actor = None
    if args.trainer:
        actor = ActorOptions(
            trainer=args.trainer,
            token=args.trainer_token,
            tls_ca=args.trainer_tls_ca,
            chunk_steps=args.chunk_steps,
            max_buffered_chunks=args.max_buffered_chunks,
            max_buffered_mb=args.max_buffered_mb,
            snapshot_wait_s=args.snapshot_wait_s,
        )
    inference = None
    if args.env_parameter and not (args.policy or args.heuristic):
        raise OptionsError(
            "--env-parameter: only with --policy (with --trainer the trainer's environment_parameters decide; "
            "in remote control, clients send set_environment_parameters)"
        )
    if args.policy or args.heuristic:
        inference = InferenceOptions(
            policies=tuple(_parse_policy(text) for text in args.policy or ()),
            heuristics=tuple(args.heuristic or ()),
            summary_interval_s=args.summary_interval_s,
            parameters=tuple(_parse_parameter(text) for text in args.env_parameter or ()),
        )
    if file_name is not None and not os.path.exists(file_name) and not _looks_like_build(file_name):
        raise OptionsError(f"--env: no Unity build at {file_name!r}")
    options = validate(GatewayOptions(environment=environment, server=server, actor=actor, inference=inference))
    if inference is not None:
        _check_models(inference)
    return options


def _parse_policy(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise OptionsError(f"--policy {text!r}: expected BEHAVIOR=PATH.onnx, e.g. 3DBall=results/run/3DBall.onnx")
    return name.strip(), path.strip()


def _parse_parameter(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not sep or not name.strip() or not math.isfinite(number):
        raise OptionsError(f"--env-parameter {text!r}: expected NAME=NUMBER, e.g. gravity=20")
    return name.strip(), number


def _check_models(inference: InferenceOptions) -> None:
    """Loads every model once before Unity starts: a bad file fails fast (its fit is checked at start-up)."""
    from gateway.actor.onnx_policy import OnnxModelError, OnnxPolicy

    for name, path in inference.policies:
        try:
            OnnxPolicy.from_file(path)
        except OnnxModelError as e:
            raise OptionsError(f"--policy {name}: {e}") from None


def _looks_like_build(path: str) -> bool:
    """mlagents accepts a build path without its extension (``builds/3DBall`` for ``3DBall.x86_64``)."""
    from mlagents_envs.env_utils import validate_environment_path

    return validate_environment_path(path) is not None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_logging(json=True if args.log_json else None, level=args.log_level)
    except ValueError as e:
        parser.error(f"--log-level: {e}")
    log = get_logger("gateway.cli")
    try:
        options = options_from_args(args)
    except OptionsError as e:
        parser.error(str(e))
    from gateway.app import run

    try:
        return run(options, log_json=bool(args.log_json) or os.environ.get("TANDEM_LOG_JSON", "") not in ("", "0"))
    except OSError as e:
        log.error("gateway failed to start", error=str(e))
        return 2
    except Exception as e:
        from gateway.actor.onnx_policy import OnnxModelError

        if isinstance(e, OnnxModelError):
            log.error("gateway failed to start: the --policy models do not fit the environment", error=str(e))
            return 2
        from gateway.env.workers import PoolError

        if isinstance(e, PoolError):
            log.error("gateway failed to start", error=str(e))
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
