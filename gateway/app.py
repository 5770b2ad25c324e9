"""The gateway's life cycle: server up, environments up, serve, shut down cleanly.

Why: the CLI, the tests and the benchmark all run a gateway the same way; the
order matters (the server answers health checks while Unity starts; on shutdown
no new Play is accepted before the instances are closed, and no Unity process is
left behind).
"""

from __future__ import annotations

import signal
import threading

from common import lifeline
from common.grpc_server import GrpcServer
from common.logging import get_logger
from gateway.options import GatewayOptions
from gateway.server import start_server
from gateway.remote.service import GatewayServicer
from gateway.remote.pool import EnvironmentPool


class Gateway:
    """A running gateway in either mode.

    Args:
        options: validated options (``gateway.options.validate``).
        log_json: workers log JSON lines too.

    Attributes:
        port: the bound port, once started.
        pool: the environment pool (remote-control mode).
        actor: the actor runner (actor mode).
    """

    def __init__(self, options: GatewayOptions, log_json: bool = False) -> None:
        self.options = options
        self.log_json = log_json
        self.servicer = GatewayServicer(options.environment.engine, actor_mode=options.is_actor)
        self.server: GrpcServer | None = None
        self.dm_env_rpc_server: GrpcServer | None = None
        self.pool: EnvironmentPool | None = None
        self.actor = None
        self.log = get_logger("gateway")

    @property
    def port(self) -> int:
        return self.server.port if self.server else 0

    @property
    def address(self) -> str:
        return self.server.address if self.server else ""

    @property
    def dm_env_rpc_port(self) -> int | None:
        """The dm_env_rpc server's bound port, or None when not served."""
        return self.dm_env_rpc_server.port if self.dm_env_rpc_server else None

    def start(self) -> None:
        """Starts the server (health NOT_SERVING), then the environments, then says SERVING.

        Raises:
            OSError: the address cannot be bound.
            gateway.env.workers.PoolError: an environment instance failed to start.
        """
        self.server = start_server(self.options.server, self.servicer)
        self.log.info(
            "gateway listening",
            address=self.server.address,
            port=self.server.port,
            tls=bool(self.options.server.tls_cert),
            auth=bool(self.options.server.token),
            mode="actor" if self.options.is_actor else "remote-control",
        )
        if self.options.is_actor:
            from gateway.actor.runner import ActorRunner

            self.actor = ActorRunner(self.options, self.log_json)
            self.actor.start()
            self.servicer.attach(self.actor)
        else:
            self.pool = EnvironmentPool(self.options.environment, self.log_json)
            self.pool.start()
            self.servicer.attach(self.pool)
            if self.options.server.dm_env_rpc_listen is not None:
                from gateway.dm_env_rpc.server import start_dm_env_rpc_server

                self.dm_env_rpc_server = start_dm_env_rpc_server(self.options.server, self.servicer, self.pool)
                self.log.info("dm_env_rpc listening", address=self.dm_env_rpc_server.address, port=self.dm_env_rpc_port)
        self.server.set_serving(True)
        self.log.info(
            "gateway ready", address=self.server.address, port=self.server.port, dm_env_rpc_port=self.dm_env_rpc_port
        )

    def stop(self) -> None:
        """Stops accepting calls, closes every instance (killing what does not quit), stops the server."""
        if self.server is not None:
            self.server.set_serving(False)
        if self.dm_env_rpc_server is not None:
            self.dm_env_rpc_server.set_serving(False)
        if self.actor is not None:
            self.actor.stop()
        if self.pool is not None:
            self.pool.close()
        if self.dm_env_rpc_server is not None:
            self.dm_env_rpc_server.stop(grace_s=1.0)
        if self.server is not None:
            self.server.stop(grace_s=1.0)
        self.log.info("gateway stopped")

    def failed(self) -> str | None:
        """Why the gateway cannot go on (actor mode: every instance is down), or None."""
        if self.actor is not None:
            return self.actor.failure()
        return None


class _Interrupted(Exception):
    pass


def run(options: GatewayOptions, log_json: bool = False) -> int:
    """Runs a gateway until SIGTERM or SIGINT; returns the process exit status."""
    log = get_logger("gateway")
    stop = threading.Event()
    starting = True

    def on_signal(signum, frame):
        log.info("shutdown requested", signal=signal.Signals(signum).name)
        stop.set()
        if starting:
            raise _Interrupted()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    parent = lifeline.parent_to_watch()
    if parent is not None:  # launched by tandem-trainer: stop (as on SIGTERM) when it is gone
        lifeline.watch_parent(parent=parent)
    gateway = Gateway(options, log_json)
    try:
        try:
            gateway.start()
        except _Interrupted:
            return 0
        starting = False
        while not stop.wait(0.5):
            reason = gateway.failed()
            if reason:
                log.error("gateway cannot go on", reason=reason)
                return 1
            if gateway.actor is not None and gateway.actor.training_finished.is_set():
                log.info("the trainer finished its run: the gateway exits")
                return 0
        return 0
    finally:
        starting = False
        gateway.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
