"""The gateway's typed, frozen options, validated once at the edge.

Why: the CLI, the tests and the benchmark build the same ``GatewayOptions``; every
other module trusts them. Names and defaults follow ``mlagents-learn`` where the
option exists there (``--base-port 5005``, ``--time-scale 20``, ``--width 84``, ...).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from common.environment_options import EDITOR, EngineSettings

__all__ = [
    "EDITOR",
    "ActorOptions",
    "EngineSettings",
    "EnvironmentOptions",
    "GatewayOptions",
    "InferenceOptions",
    "OptionsError",
    "RestartLimits",
    "ServerOptions",
    "validate",
]

class OptionsError(ValueError):
    """An option value that cannot work; the message names the option."""


@dataclass(frozen=True)
class RestartLimits:
    """How often a crashed or hung Unity instance may be restarted (ML-Agents' env_settings).

    Attributes:
        max_lifetime_restarts: restarts allowed over the gateway's life; -1 = unlimited.
        rate_limit_n: restarts allowed within ``rate_limit_period_s``; -1 = unlimited.
        rate_limit_period_s: the sliding window of the rate limit, in seconds.
    """

    max_lifetime_restarts: int = 10
    rate_limit_n: int = 1
    rate_limit_period_s: float = 60.0


@dataclass(frozen=True)
class EnvironmentOptions:
    """What the worker processes need to open their ``UnityEnvironment``.

    Attributes:
        file_name: the Unity build path; ``None`` = the Editor (worker 0 only).
        env_args: extra command-line arguments for the Unity process.
        num_envs: how many instances (one worker process each).
        single_in_process: in remote control, step a single instance inside the gateway
            process (no pipe hop per step); several instances, and actor mode, always use
            worker processes.
        base_port: instance i listens on ``base_port + worker_id(i)``.
        seed: the environment seed; -1 = random. Instance i gets ``seed + i``.
        num_areas: training areas per instance (``num_areas`` of mlagents).
        timeout_wait: seconds to wait for Unity before declaring it hung (>= 10).
        engine: engine settings for every instance.
        restarts: restart limits, per instance.
        log_folder: absolute folder where each launched player writes its log,
            ``Player-<worker id>.log`` (passed as ``-logFile``, as mlagents-learn does with
            ``results/<run-id>/run_logs``); None: the player logs where it would by default
            (a Unity build: Unity's own Player.log; the stand-in: the gateway's stderr).
        record_demo: absolute folder where every instance records what its agents observe
            and do as ML-Agents ``.demo`` files (``--record-demo``); None: no recording.
        unity_listen_host: the address the server Unity connects to binds (``--unity-listen-host``):
            ``localhost`` (loopback only: a Unity build runs beside the gateway), or an
            interface's address (``0.0.0.0``, ``::``, ...) for a Unity Editor on another machine.
            That port has no authentication (Unity's side of the protocol has none).
    """

    file_name: str | None
    env_args: tuple[str, ...] = ()
    num_envs: int = 1
    single_in_process: bool = True
    base_port: int = 5005
    seed: int = -1
    num_areas: int = 1
    timeout_wait: int = 60
    engine: EngineSettings = field(default_factory=EngineSettings)
    restarts: RestartLimits = field(default_factory=RestartLimits)
    log_folder: str | None = None
    record_demo: str | None = None
    unity_listen_host: str = "localhost"

    def worker_id(self, index: int) -> int:
        """The mlagents worker id of instance ``index`` (its port is ``base_port + worker_id``)."""
        return index

    def port(self, index: int) -> int:
        return self.base_port + self.worker_id(index)


@dataclass(frozen=True)
class ActorOptions:
    """Actor mode: where the trainer is and how experience is buffered.

    Attributes:
        trainer: ``host:port`` of the trainer's ``tandem.v1.Trainer`` service.
        token: bearer token for the trainer, or None.
        tls_ca: PEM file of the CA that signed the trainer's certificate; None = plaintext.
        chunk_steps: agent steps per experience chunk (a chunk is sent sooner after
            ``flush_interval_s``).
        flush_interval_s: longest time finished trajectories wait before being sent.
        max_buffered_chunks: unacknowledged chunks kept for resending; when full, stepping pauses.
        max_buffered_mb: the same bound in megabytes.
        snapshot_wait_s: how long to wait for a behavior's first snapshot; after that its
            agents act randomly and their experience is not streamed.
        reconnect_min_s: first reconnect delay; doubles up to ``reconnect_max_s``.
        reconnect_max_s: longest reconnect delay.
    """

    trainer: str
    token: str | None = None
    tls_ca: str | None = None
    chunk_steps: int = 512
    flush_interval_s: float = 1.0
    max_buffered_chunks: int = 256
    max_buffered_mb: float = 512.0
    snapshot_wait_s: float = 60.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 15.0


@dataclass(frozen=True)
class InferenceOptions:
    """Local inference (``--policy``): act with exported ONNX models, no trainer, nothing streamed.

    Attributes:
        policies: (behavior name without ``?team=``, path of its ``.onnx`` model) pairs.
        summary_interval_s: seconds between the per-behavior reward summaries in the log.
        unknown_behavior_wait_s: a behavior that appears after start-up without a model
            acts randomly after this long (with a warning).
        parameters: (name, value) environment parameters set on every instance before its
            first reset (``--env-parameter``): evaluating a model at chosen values.
        heuristics: behavior names (without ``?team=``) acted by the stand-in's scripted
            expert (``--heuristic``, ``unity_standin.heuristics``) instead of a model.
    """

    policies: tuple[tuple[str, str], ...]
    summary_interval_s: float = 10.0
    unknown_behavior_wait_s: float = 5.0
    parameters: tuple[tuple[str, float], ...] = ()
    heuristics: tuple[str, ...] = ()

    def model_for(self, behavior: str) -> str | None:
        """The model path for a fully qualified behavior name (``3DBall?team=0``), or None."""
        base = behavior.split("?", 1)[0]
        return next((path for name, path in self.policies if name == base), None)


@dataclass(frozen=True)
class ServerOptions:
    """The gRPC server the gateway exposes.

    Attributes:
        listen: ``host:port`` to listen on (port 0 = any free port).
        tls_cert: PEM certificate chain file; with ``tls_key`` enables TLS.
        tls_key: PEM private key file.
        token: shared bearer token clients must send; None = no authentication.
        max_message_mb: largest gRPC message, both directions (visual observations are big).
        keepalive_s: interval of HTTP/2 keepalive pings to clients.
        dm_env_rpc_listen: ``host:port`` where the dm_env_rpc v1 protocol is served too
            (remote-control mode; port 0 = any free port); None = not served. Same TLS,
            token and message limit as ``listen``. Needs the ``dm-env-rpc`` package.
        first_message_timeout_s: a stream (Play, reflection...) whose client sends nothing
            within this many seconds is cancelled, freeing its handler thread.
    """

    listen: str = "127.0.0.1:5756"
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = None
    max_message_mb: int = 64
    keepalive_s: float = 30.0
    dm_env_rpc_listen: str | None = None
    first_message_timeout_s: float = 20.0

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb) * 1024 * 1024


@dataclass(frozen=True)
class GatewayOptions:
    """Everything a gateway process runs with."""

    environment: EnvironmentOptions
    server: ServerOptions = field(default_factory=ServerOptions)
    actor: ActorOptions | None = None
    inference: InferenceOptions | None = None

    @property
    def is_actor(self) -> bool:
        """The gateway acts itself (with a trainer's snapshots, or locally with ``--policy``); no Play."""
        return self.actor is not None or self.inference is not None


def _check_host_port(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise OptionsError(f"{name}: expected host:port, got {value!r}")


#: a host name as RFC 1123 allows (letters, digits, hyphens, dot-separated labels)
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _check_listen_host(name: str, value: str) -> None:
    """An IP address (v4 or v6, no brackets, no port) or a host name."""
    try:
        ipaddress.ip_address(value)
        return
    except ValueError:
        pass
    if not _HOST_NAME.match(value):
        raise OptionsError(
            f"{name}: expected an address or host name without a port (localhost, 0.0.0.0, ::, 192.168.1.5), "
            f"got {value!r}"
        )


def _check_file(name: str, path: str | None) -> None:
    if path is not None and not os.path.isfile(path):
        raise OptionsError(f"{name}: no such file {path!r}")


def _check_dm_env_rpc(options: GatewayOptions) -> None:
    _check_host_port("--dm-env-rpc-listen", options.server.dm_env_rpc_listen)
    if options.is_actor:
        raise OptionsError("--dm-env-rpc-listen: remote-control mode only (not with --trainer or --policy)")
    try:
        import dm_env_rpc.v1.dm_env_rpc_pb2  # noqa: F401
    except ImportError:
        raise OptionsError(
            "--dm-env-rpc-listen: needs the dm-env-rpc package (pip install -e '.[envs]')"
        ) from None


def _check_heuristics(inf: InferenceOptions) -> None:
    from unity_standin.heuristics import HEURISTICS

    models = {name for name, _ in inf.policies}
    for name in inf.heuristics:
        if name not in HEURISTICS:
            raise OptionsError(
                f"--heuristic {name}: no scripted heuristic for it (available: {', '.join(sorted(HEURISTICS))}; "
                "the name without ?team=)"
            )
        if name in models:
            raise OptionsError(f"--heuristic {name}: also given a --policy model; choose one")
    if len(set(inf.heuristics)) != len(inf.heuristics):
        raise OptionsError("--heuristic: a behavior is given twice")


def validate(options: GatewayOptions) -> GatewayOptions:
    """Checks every option; returns ``options`` unchanged.

    Raises:
        OptionsError: naming the first bad option.
    """
    env = options.environment
    if env.num_envs < 1:
        raise OptionsError(f"--num-envs: must be >= 1, got {env.num_envs}")
    if env.file_name is None and env.num_envs != 1:
        raise OptionsError("--num-envs: the Unity Editor is a single instance (use 1)")
    if not 1 <= env.base_port <= 65535 or env.base_port + env.num_envs - 1 > 65535:
        raise OptionsError(f"--base-port: {env.base_port} + instances must stay within 1..65535")
    if env.timeout_wait < 10:
        raise OptionsError(f"--timeout-wait: must be >= 10 seconds, got {env.timeout_wait}")
    if env.num_areas < 1:
        raise OptionsError(f"--num-areas: must be >= 1, got {env.num_areas}")
    if env.seed < -1:
        raise OptionsError(f"--seed: must be >= 0, or -1 for random, got {env.seed}")
    if env.record_demo is not None and (not os.path.isabs(env.record_demo) or os.path.isfile(env.record_demo)):
        raise OptionsError(f"--record-demo: expected a folder, got {env.record_demo!r}")
    _check_listen_host("--unity-listen-host", env.unity_listen_host)
    if env.log_folder is not None and (not os.path.isabs(env.log_folder) or os.path.isfile(env.log_folder)):
        raise OptionsError(f"--log-folder: expected an absolute folder path, got {env.log_folder!r}")
    eng = env.engine
    if eng.width <= 0 or eng.height <= 0:
        raise OptionsError(f"--width/--height: must be positive, got {eng.width}x{eng.height}")
    if eng.time_scale <= 0:
        raise OptionsError(f"--time-scale: must be positive, got {eng.time_scale}")
    if not 0 <= eng.quality_level <= 5:
        raise OptionsError(f"--quality-level: must be 0..5, got {eng.quality_level}")
    lim = env.restarts
    if lim.max_lifetime_restarts < -1:
        raise OptionsError("--max-lifetime-restarts: must be >= 0, or -1 for unlimited")
    if lim.rate_limit_n < -1:
        raise OptionsError("--restarts-rate-limit-n: must be >= 0, or -1 for unlimited")
    if lim.rate_limit_period_s <= 0:
        raise OptionsError("--restarts-rate-limit-period-s: must be positive")
    srv = options.server
    _check_host_port("--listen", srv.listen)
    if (srv.tls_cert is None) != (srv.tls_key is None):
        raise OptionsError("--tls-cert/--tls-key: give both or neither")
    _check_file("--tls-cert", srv.tls_cert)
    _check_file("--tls-key", srv.tls_key)
    if srv.token is not None and not srv.token.strip():
        raise OptionsError("--token: must not be empty")
    if srv.max_message_mb < 1 or srv.max_message_mb > 2047:
        raise OptionsError(f"--max-message-mb: must be 1..2047, got {srv.max_message_mb}")
    if srv.keepalive_s <= 0:
        raise OptionsError("keepalive_s: must be positive")
    if not srv.first_message_timeout_s > 0:
        raise OptionsError("first_message_timeout_s: must be positive")
    if srv.dm_env_rpc_listen is not None:
        _check_dm_env_rpc(options)
    act = options.actor
    if act is not None:
        _check_host_port("--trainer", act.trainer)
        _check_file("--trainer-tls-ca", act.tls_ca)
        if act.token is not None and not act.token.strip():
            raise OptionsError("--trainer-token: must not be empty")
        if act.chunk_steps < 1:
            raise OptionsError(f"--chunk-steps: must be >= 1, got {act.chunk_steps}")
        if act.flush_interval_s <= 0:
            raise OptionsError("--flush-interval-s: must be positive")
        if act.max_buffered_chunks < 1:
            raise OptionsError("--max-buffered-chunks: must be >= 1")
        if act.max_buffered_mb <= 0:
            raise OptionsError("--max-buffered-mb: must be positive")
        if act.snapshot_wait_s < 0:
            raise OptionsError("--snapshot-wait-s: must be >= 0")
        if not 0 < act.reconnect_min_s <= act.reconnect_max_s:
            raise OptionsError("reconnect delays: need 0 < min <= max")
    inf = options.inference
    if inf is not None:
        if act is not None:
            raise OptionsError("--policy: runs without a trainer; give --policy or --trainer, not both")
        if not inf.policies and not inf.heuristics:
            raise OptionsError("--policy: give at least one BEHAVIOR=PATH.onnx")
        _check_heuristics(inf)
        seen = set()
        for name, path in inf.policies:
            if not name or "?" in name:
                raise OptionsError(f"--policy {name}={path}: BEHAVIOR is the name without ?team=, e.g. 3DBall")
            if name in seen:
                raise OptionsError(f"--policy {name}: given twice")
            seen.add(name)
            if not os.path.isfile(path):
                raise OptionsError(f"--policy {name}={path}: no such file")
        if inf.summary_interval_s <= 0:
            raise OptionsError("--summary-interval-s: must be positive")
        if inf.unknown_behavior_wait_s < 0:
            raise OptionsError("unknown_behavior_wait_s: must be >= 0")
    return options
