"""``tandem-unity-standin``: a Unity player stand-in, launched like a Unity build.

Why: ``UnityEnvironment(file_name=PATH)`` starts a build with
``[-nographics -batchmode] --mlagents-port N [-logFile PATH] [extra args...]``; the
stand-in accepts exactly that, ignores arguments it does not know (as a Unity player
does) and adds its own: ``--task`` (or ``TANDEM_STANDIN_TASK``), ``--num-agents``,
``--seed``, ``--decision-period``, ``--agent-ids``. Without ``--mlagents-port`` it
connects to 5004 like the Editor.

Exit status: 0 when the trainer closed the connection, 1 when the connection was lost,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.logging import configure_logging, get_logger

EDITOR_PORT = 5004
TASK_ENV_VAR = "TANDEM_STANDIN_TASK"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-unity-standin",
        description="Plays the Unity side of the ML-Agents protocol (communication 1.5.0) "
        "with a built-in task, launched like a Unity build.",
        allow_abbrev=False,
    )
    unity = parser.add_argument_group("arguments Unity players receive")
    unity.add_argument("--mlagents-port", type=_port, default=EDITOR_PORT,
                       help="port of the trainer's gRPC server (default 5004, the Editor's)")
    unity.add_argument("-logFile", "-logfile", dest="log_file", default=None,
                       help="write the player log to this file ('-' for stdout)")
    unity.add_argument("-batchmode", action="store_true", help="accepted; the stand-in never opens a window")
    unity.add_argument("-nographics", action="store_true", help="accepted; the stand-in renders in memory")
    own = parser.add_argument_group("stand-in options")
    own.add_argument("--task", default=None,
                     help=f"built-in task (default: ${TASK_ENV_VAR} or 3dball)")
    own.add_argument("--num-agents", type=_positive_int, default=None,
                     help="agents per training area (overrides the task's count)")
    own.add_argument("--seed", type=int, default=None,
                     help="random seed (default: the seed the trainer sends)")
    own.add_argument("--decision-period", type=_positive_int, default=None,
                     help="academy steps between decisions (overrides the task's period)")
    own.add_argument("--agent-ids", choices=("stable", "per-episode"), default="stable",
                     help="stable: one id per agent for its life, as Unity does (default); "
                     "per-episode: a fresh id for every episode")
    own.add_argument("--connect-timeout", type=float, default=60.0,
                     help="seconds to wait for the trainer's server at start (default 60)")
    own.add_argument("--unknown-side-channel", action="store_true",
                     help="send a message on a side channel no trainer registers with every output "
                     "(as a scene with a custom channel)")
    own.add_argument("--crash-on-parameter", default=None, metavar="NAME",
                     help="die (exit status 3, no goodbye) when the environment parameter NAME is set, "
                     "as a scene that crashes on a value")
    own.add_argument("--leave-play-after", type=_positive_int, default=None, metavar="EXCHANGES",
                     help="after this many exchanges with the trainer, say goodbye (status 400) and quit, "
                     "as the Unity Editor does when the user leaves Play mode")
    own.add_argument("--log-json", action="store_true", help="JSON log lines")
    return parser


def _redirect_log(path: str | None) -> None:
    """Sends stderr (where logs go) to ``-logFile``'s target, as a Unity player writes its log."""
    if path is None:
        return
    if path == "-":
        os.dup2(sys.stdout.fileno(), sys.stderr.fileno())
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, ignored = parser.parse_known_args(argv)
    try:
        _redirect_log(args.log_file)
    except OSError as err:
        parser.error(f"cannot open -logFile {args.log_file!r}: {err.strerror}")
    configure_logging(json=args.log_json or None)
    log = get_logger("unity_standin")

    # Imported after logging is configured: these pull in grpc and the protocol modules.
    from unity_standin.academy import Academy, PlayerClosed
    from unity_standin.communicator import Communicator, ConnectionLost
    from unity_standin.side_channels import UNKNOWN_CHANNEL, SideChannels, pack_message
    from unity_standin.tasks import TaskOptions, make_task, task_names

    task_name = args.task or os.environ.get(TASK_ENV_VAR) or "3dball"
    if task_name not in task_names():
        parser.error(f"unknown task {task_name!r}; known tasks: {', '.join(task_names())}")
    if ignored:
        log.info("ignoring unknown arguments", arguments=ignored)
    log.info("player starting", task=task_name, port=args.mlagents_port, pid=os.getpid())

    communicator = Communicator(args.mlagents_port, connect_timeout_s=args.connect_timeout)
    try:
        init_input, first_input = communicator.initialize()
        if first_input is None:
            return 0
        side_channels = SideChannels()
        side_channels.fatal_parameter = args.crash_on_parameter
        if args.unknown_side_channel:
            side_channels.every_output = pack_message(UNKNOWN_CHANNEL, b"custom channel data")
        options = TaskOptions(
            seed=args.seed if args.seed is not None else init_input.seed,
            num_agents=args.num_agents,
            decision_period=args.decision_period,
            num_areas=max(1, init_input.num_areas),
        )
        task = make_task(task_name, options, side_channels)
        academy = Academy(task, side_channels, communicator.exchange,
                          new_id_per_episode=args.agent_ids == "per-episode")
        log.info(
            "scene loaded",
            task=task_name,
            seed=options.seed,
            behaviors={b.name: b.num_agents for b in task.behaviors},
        )
        try:
            academy.apply_input(first_input)
            while args.leave_play_after is None or academy.exchanges < args.leave_play_after:
                academy.step()
            log.info("leaving Play mode", exchanges=academy.exchanges)
            communicator.goodbye()
            return 0
        except PlayerClosed:
            log.info("player quitting", exchanges=academy.exchanges, academy_steps=academy.step_count)
            return 0
    except ConnectionLost as err:
        log.error("lost the connection to the trainer", port=args.mlagents_port, error=str(err))
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        communicator.close()


if __name__ == "__main__":
    sys.exit(main())
