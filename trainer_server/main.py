"""``tandem-trainer`` after argument parsing: results folder, training app, gRPC server,
optionally a local gateway, and a graceful end.

Why: ``make run`` must be one command on one machine: the trainer starts its server,
launches ``tandem-gateway --trainer <its address>`` (the built-in stand-in unless
``--env`` names a Unity build), trains until every behavior reaches ``max_steps`` and
stops everything. ``--env`` (a build, or ``editor``) launches that gateway without
``--with-gateway``, as ``mlagents-learn --env`` launches the build: a trainer told which
environment to use and then waiting for someone else to start it would be a trap. SIGINT/SIGTERM (Ctrl-C) end the run the same way: the training
thread writes final checkpoints, ``training_status.json`` and ``timers.json``, the
streams end, the gateway is stopped (terminated, then killed if it lingers). A trainer
killed without clean-up (``kill -9``) takes its gateway, the gateway's workers and Unity
with it (``common.lifeline``), so that ``--resume`` finds the Unity port free.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
from typing import Any

from common import lifeline
from common.environment_options import environment_arguments
from common.logging import get_logger
from trainer_server.app import TrainingApp
from trainer_server.config.schema import RunOptions
from trainer_server.results import RunDirectoryError, RunResults
from trainer_server.server import start_server
from trainer_server.server_settings import ServerSettings, parse_torch_device
from trainer_server.timers import HierarchicalTimer

EXIT_OK = 0
EXIT_FAILED = 1

_log = get_logger("trainer_server.main")


def gateway_command(
    options: RunOptions, trainer_address: str, extra_args: tuple[str, ...] = (), tls_ca: str | None = None
) -> list[str]:
    """The ``tandem-gateway`` command line for a gateway acting for this trainer.

    Passes ``env_settings`` and ``engine_settings`` through with mlagents-learn's flag
    names; without ``env_path`` the gateway runs the built-in stand-in. Its own server
    listens on a free local port so that it never collides with another run. The Unity
    players log to ``<results>/<run-id>/run_logs/Player-<n>.log``, as with mlagents-learn.
    """
    exe = shutil.which("tandem-gateway", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-m", "gateway.cli"]
    cmd += ["--trainer", trainer_address, "--listen", "127.0.0.1:0"]
    cmd += ["--log-folder", str(options.checkpoint_settings.run_logs_dir.absolute())]
    if tls_ca:
        cmd += ["--trainer-tls-ca", str(tls_ca)]
    env = options.env_settings
    cmd += environment_arguments({**dataclasses.asdict(env), **dataclasses.asdict(options.engine_settings)})
    cmd += list(extra_args)
    if env.env_args:
        cmd += ["--env-args", *env.env_args]
    return cmd


def launches_gateway(options: RunOptions, server: ServerSettings) -> bool:
    """Whether this run launches a local gateway: ``--with-gateway``, or an environment named by
    ``--env``/``env_settings.env_path`` (which only a gateway can run)."""
    return server.with_gateway or bool(options.env_settings.env_path)


class _Stopper:
    """SIGINT/SIGTERM set an event (installed only on the main thread); restored on exit."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.event.is_set():  # a second Ctrl-C: stop waiting politely
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _stop_gateway(process: subprocess.Popen, wait_s: float) -> None:
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        _log.info("stopping the local gateway", pid=process.pid)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            _log.warning("the local gateway did not stop; killing it", pid=process.pid)
            process.kill()
            process.wait(5)


def _already_finished(options: RunOptions, results: RunResults) -> bool:
    """``--resume`` of a run whose every behavior already reached ``max_steps``: says so.

    Why: otherwise the trainer, the gateway and Unity would start, and the run would end
    at the first chunk. A behavior of the configuration that never trained leaves the run
    unfinished (it may still connect).
    """
    saved = results.saved_steps()
    if not saved:
        return False
    names = set(saved) | set(options.behaviors)
    done = {name: saved.get(name, 0) >= options.behavior_settings(name).max_steps for name in names}
    if not all(done.values()):
        return False
    _log.info(
        "nothing to resume: every behavior of this run already reached max_steps "
        "(raise max_steps in the configuration to train further)",
        run_id=options.checkpoint_settings.run_id,
        steps=saved,
    )
    return True


def select_devices(options: RunOptions, server: ServerSettings) -> None:
    """Puts the learners on ``torch_settings.device`` (``--torch-device``) and ``--devices``
    of them, and logs which; checks that every configured behavior's batches split evenly.

    Raises:
        ValueError: the devices are not there, or a batch does not split across them.
        ConfigError: ``torch_settings.device`` names no JAX device.
    """
    from trainer_server.learning import devices  # JAX starts here, not at import

    platform, index = parse_torch_device(options.torch_settings.device)
    placement = devices.select(platform, index, server.devices)
    if server.multi_host is not None:  # every process's devices in one mesh (a collective)
        from trainer_server.learning import multihost

        placement = multihost.spanning(placement)
    names = sorted(options.behaviors)
    for name in names:
        devices.check_batch_sizes(name, options.behavior_settings(name), placement.count)
    if options.default_settings is not None:
        devices.check_batch_sizes("default_settings", options.default_settings, placement.count)
    devices.use(placement)


def run(options: RunOptions, server: ServerSettings) -> int:
    """Trains with ``options`` behind a gRPC server set up by ``server``; with
    ``server.multi_host``, as one process of a multi-host learner (``learning.multihost``):
    process 0 trains and serves, the others follow it.

    Returns:
        0 when training completed or was stopped by a signal after saving; 1 when the
        run could not start or failed (the reason is logged).
    """
    hosts = server.multi_host
    if hosts is not None:
        from trainer_server.learning import multihost

        try:
            multihost.initialize(multihost.Cluster(
                hosts.coordinator_address, hosts.num_processes, hosts.process_id,
                hosts.initialization_timeout_s, hosts.heartbeat_timeout_s,
            ))
        except TimeoutError as e:
            _log.error("cannot join the multi-host learner", error=str(e))
            return EXIT_FAILED
    try:
        select_devices(options, server)
    except ValueError as e:  # ConfigError too
        _log.error("cannot train on the requested devices", error=str(e))
        return EXIT_FAILED
    if hosts is None:
        return _train(options, server)
    return _run_multi_host(options, server)


def _run_multi_host(options: RunOptions, server: ServerSettings) -> int:
    """Process 0 trains (telling the others its learners and updates, and when it ends);
    the others follow until it ends; then everyone leaves ``jax.distributed`` together."""
    import jax

    from trainer_server.learning import multihost
    from trainer_server.learning.registry import make_learner

    if multihost.is_follower():
        ignored = [flag for flag, given in (("--with-gateway", server.with_gateway),
                                            ("--env", options.env_settings.env_path)) if given]
        if ignored:
            _log.info("a follower launches no gateway: ignored", flags=ignored)
        with _Stopper() as stopper:
            code = multihost.follow(make_learner, stopper.event)
        if stopper.event.is_set():  # leaving alone: no farewell barrier with process 0
            return code
    else:
        code = EXIT_FAILED
        try:
            code = _train(options, server, multihost.learner_factory(make_learner))
        finally:
            multihost.stop_followers(code)
    jax.distributed.shutdown()
    return code


def _train(options: RunOptions, server: ServerSettings, learner_factory: Any = None) -> int:
    """``run`` once the devices are chosen: the results folder, the app, the server, the
    local gateway, until the run ends."""
    timer = HierarchicalTimer()
    cs = options.checkpoint_settings
    try:
        with timer.block("setup"):
            results = RunResults.prepare(
                cs.results_dir, cs.run_id, resume=cs.resume, force=cs.force, inference=cs.inference
            )
            if not (cs.inference and results.configuration_path.is_file()):  # keep the training run's
                results.write_configuration(options)
    except RunDirectoryError as e:
        _log.error(str(e), run_id=cs.run_id)
        return EXIT_FAILED
    if cs.resume and not cs.inference and _already_finished(options, results):
        return EXIT_OK
    factory = {"learner_factory": learner_factory} if learner_factory is not None else {}
    app = TrainingApp(options, results, timer, slow_updates_s=server.slow_updates_s, **factory)
    try:
        running = start_server(
            app, server.listen, tls_cert=server.tls_cert, tls_key=server.tls_key, token=server.token,
            hello_timeout_s=server.hello_timeout_s,
        )
    except (ValueError, RuntimeError, OSError) as e:
        _log.error("cannot start the trainer server", listen=server.listen, error=str(e))
        return EXIT_FAILED
    gateway: subprocess.Popen | None = None
    outcome = EXIT_OK
    with _Stopper() as stopper:
        try:
            app.start()
            running.set_serving(True)
            _log.info(
                "trainer ready",
                run_id=cs.run_id,
                results=str(results.run_dir),
                address=running.address,
                inference=cs.inference,
            )
            if launches_gateway(options, server):
                address = running.address if not server.tls_cert else f"localhost:{running.port}"
                cmd = gateway_command(options, address, server.gateway_args, tls_ca=server.tls_cert)
                env = dict(os.environ)
                if server.token:  # not on the command line, where other users could read it
                    env["TANDEM_TRAINER_TOKEN"] = server.token
                if server.log_json:  # its logs join the trainer's stderr: one format
                    env["TANDEM_LOG_JSON"] = "1"
                # it stops (with its workers and Unity) when this process is gone, even after kill -9
                env[lifeline.EXIT_WITH_PARENT_ENV] = str(os.getpid())
                _log.info("launching a local gateway", command=" ".join(cmd))
                gateway = subprocess.Popen(cmd, env=env)
            while not app.wait(0.5):
                if stopper.event.is_set():
                    _log.info(
                        "stopping" if cs.inference else "stopping: saving final checkpoints", signal=stopper.signal_name
                    )
                    break
                if gateway is not None and gateway.poll() is not None:
                    _log.error("the local gateway exited before training completed", returncode=gateway.returncode)
                    outcome = EXIT_FAILED
                    break
        except KeyboardInterrupt:
            _log.warning("interrupted again: stopping now")
        finally:
            # the local gateway first: it would otherwise keep reconnecting to a server that is going away
            if gateway is not None and gateway.poll() is None:
                _stop_gateway(gateway, 0.0)
            app.stop()
            app.join(120)
            running.stop(5.0)
    if app.error is not None:
        _log.error("training failed: the run stopped", run_id=cs.run_id, error=str(app.error))
        return EXIT_FAILED
    if app.completed:
        _log.info("training complete", run_id=cs.run_id, results=str(results.run_dir))
    return outcome
