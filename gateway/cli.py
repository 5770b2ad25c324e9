"""``tandem-gateway``: run Unity environments behind the ``tandem.v1.Gateway`` API.

Remote-control mode (default): any gRPC client drives the environments with Play.
Actor mode (``--trainer host:port``): the gateway acts with the trainer's policy
snapshots and streams experience to it.
Local inference (``--policy BEHAVIOR=PATH.onnx``): the gateway acts with exported
models, deterministically, and logs the mean reward per behavior (no trainer, no Unity Editor needed).

Examples:
    tandem-gateway                                   # the built-in stand-in (3DBall-like)
    tandem-gateway --env builds/3DBall --num-envs 2 --no-graphics
    tandem-gateway --trainer 127.0.0.1:5757 --env-args --task gridworld
    tandem-gateway --policy 3DBall=results/tandem-3dball/3DBall.onnx
"""

from __future__ import annotations

import argparse
import os
import sys

from common.logging import configure_logging, get_logger
from gateway.options import (
    EDITOR,
    ActorOptions,
    EngineSettings,
    EnvironmentOptions,
    GatewayOptions,
    InferenceOptions,
    OptionsError,
    RestartLimits,
    ServerOptions,
    validate,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem-gateway",
        description=__doc__.split("\n\n")[0],
        epilog="Options after --env-args are passed to the Unity process unchanged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    env = p.add_argument_group("environment (as mlagents-learn)")
    env.add_argument(
        "--env",
        default=None,
        help=f"Unity build path; '{EDITOR}' connects to the Unity Editor; default: the built-in stand-in",
    )
    env.add_argument(
        "--num-envs", type=int, default=1,
        help="environment instances, one worker process each (a single one in remote control is stepped "
        "inside the gateway process unless --worker-process)",
    )
    env.add_argument(
        "--worker-process", action="store_true",
        help="remote control with one instance: step it in a worker process too (isolation over latency)",
    )
    env.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="instance i uses base-port + worker id i (None: 5005, or 5004 for the Editor, as mlagents)",
    )
    env.add_argument("--seed", type=int, default=-1, help="environment seed (instance i gets seed + i); -1 = random")
    env.add_argument("--num-areas", type=int, default=1, help="training areas per instance")
    env.add_argument("--timeout-wait", type=int, default=60, help="seconds to wait for Unity (>= 10)")
    env.add_argument("--max-lifetime-restarts", type=int, default=10, help="restarts per instance; -1 = unlimited")
    env.add_argument("--restarts-rate-limit-n", type=int, default=1, help="restarts per period; -1 = unlimited")
    env.add_argument("--restarts-rate-limit-period-s", type=float, default=60.0, help="rate-limit period")
    eng = p.add_argument_group("engine settings (EngineConfigurationChannel)")
    eng.add_argument("--no-graphics", action="store_true", help="run Unity with -nographics -batchmode")
    eng.add_argument("--width", type=int, default=84)
    eng.add_argument("--height", type=int, default=84)
    eng.add_argument("--quality-level", type=int, default=5)
    eng.add_argument("--time-scale", type=float, default=20.0)
    eng.add_argument("--target-frame-rate", type=int, default=-1)
    eng.add_argument("--capture-frame-rate", type=int, default=60)
    srv = p.add_argument_group("server")
    srv.add_argument("--listen", default="127.0.0.1:5756", help="host:port of the gRPC server (port 0 = any)")
    srv.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS (with --tls-key)")
    srv.add_argument("--tls-key", default=None, help="PEM private key")
    srv.add_argument(
        "--token",
        default=os.environ.get("TANDEM_TOKEN") or None,
        help="bearer token clients must send (from $TANDEM_TOKEN when set; None = no authentication)",
    )
    srv.add_argument("--max-message-mb", type=int, default=64, help="largest gRPC message")
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
        "--summary-interval-s", type=float, default=10.0, help="seconds between reward summaries with --policy"
    )
    log = p.add_argument_group("logging")
    log.add_argument("--log-json", action="store_true", help="JSON log lines (also TANDEM_LOG_JSON=1)")
    log.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING... (None: $TANDEM_LOG_LEVEL or INFO)")
    p.add_argument(
        "--env-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="arguments for the Unity process (must come last)",
    )
    return p


def _default_env() -> str:
    import unity_standin

    return str(unity_standin.executable_path())


def options_from_args(args: argparse.Namespace) -> GatewayOptions:
    """Builds and validates the options.

    Raises:
        OptionsError: naming the bad option.
    """
    if args.env is None:
        file_name: str | None = _default_env()
    elif args.env == EDITOR:
        file_name = None
    else:
        file_name = args.env
    environment = EnvironmentOptions(
        file_name=file_name,
        env_args=tuple(args.env_args or ()),
        num_envs=args.num_envs,
        single_in_process=not args.worker_process,
        base_port=args.base_port if args.base_port is not None else (5004 if file_name is None else 5005),
        seed=args.seed,
        num_areas=args.num_areas,
        timeout_wait=args.timeout_wait,
        engine=EngineSettings(
            width=args.width,
            height=args.height,
            quality_level=args.quality_level,
            time_scale=args.time_scale,
            target_frame_rate=args.target_frame_rate,
            capture_frame_rate=args.capture_frame_rate,
            no_graphics=args.no_graphics,
        ),
        restarts=RestartLimits(
            max_lifetime_restarts=args.max_lifetime_restarts,
            rate_limit_n=args.restarts_rate_limit_n,
            rate_limit_period_s=args.restarts_rate_limit_period_s,
        ),
    )
    server = ServerOptions(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        token=args.token,
        max_message_mb=args.max_message_mb,
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
    if args.policy:
        inference = InferenceOptions(
            policies=tuple(_parse_policy(text) for text in args.policy),
            summary_interval_s=args.summary_interval_s,
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
