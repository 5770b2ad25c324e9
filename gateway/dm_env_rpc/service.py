"""The dm_env_rpc v1 ``Environment`` servicer: a Unity behavior as a dm_env_rpc world.

Why: DeepMind's stack (dm_env, Acme) drives remote environments through dm_env_rpc's
one bidirectional stream of create/join/step/reset requests. The gateway serves it on
its own port (``--dm-env-rpc-listen``) from the same environment pool as
``tandem.v1.Gateway``, in process, so a step costs no extra hop.

Rules (beside the protocol's own):

* **Worlds**: one at a time. ``CreateWorld`` takes an optional ``behavior`` setting (a
  string: ``3DBall`` or ``3DBall?team=0``; required when the gateway has several
  behaviors). A world a connection created is destroyed when that connection ends.
* **Joining** takes the gateway's one-driver lock (a ``Play`` stream, or another joined
  connection, makes it fail), resets every Unity instance, watches one decision period
  to find every agent of the behavior (``agent_slots.discover``) and resets again; the
  agents found fix the tensors' first dimension (``gateway.dm_env_rpc.world``). No join
  settings. ``LeaveWorld`` or the end of the stream releases the lock.
* **Step**: the first step after a join or reset returns the observations and ignores
  actions (the protocol's rule); later ones act for the agents that requested a decision
  and step Unity until an agent of the behavior decides: episode ends in between (Unity
  reports them in responses without a decision) come with that step, so a step nearly always has
  a decision to answer (``agent_slots.step_until`` keeps a row's second end for the step
  after, and returns ends that wait ``MAX_END_WAIT_STEPS`` steps for a decision). The state is
  always RUNNING: Unity restarts each agent's episode itself, and per-agent ends are the
  ``terminated`` / ``truncated`` / ``discount`` observations.
* **Reset**: settings are environment parameters (float scalars), set before the reset.
  **ResetWorld** resets the environment when the caller has joined the world; otherwise it
  only checks the name (every join resets anyway).
* Errors are the protocol's: an ``error`` status in the response (the stream goes on),
  the message naming the field or uid.
"""

from __future__ import annotations

import itertools
import threading

import grpc
import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2, dm_env_rpc_pb2_grpc, tensor_utils
from google.rpc import status_pb2

from common import protowire
from common.logging import get_logger
from gateway.dm_env_rpc.world import BehaviorWorld, WorldError
from gateway.env.instance import BehaviorActions
from gateway.env.workers import PoolError
from gateway.remote.agent_slots import AgentSlots, any_decision, discover, step_until
from gateway.remote.actions import InvalidArgument, decode_step_request
from gateway.remote.client import BehaviorStepsView, behavior_actions, decode_steps
from gateway.remote.pool import EnvironmentPool
from tandem.v1 import gateway_pb2


_STEP_FIELD = dm_env_rpc_pb2.EnvironmentResponse.DESCRIPTOR.fields_by_name["step"].number


def serialize_response(response: dm_env_rpc_pb2.EnvironmentResponse | bytes) -> bytes:
    """The server's response serializer: ``Process`` yields step responses already serialized."""
    return response if isinstance(response, bytes) else response.SerializeToString()


class RequestError(Exception):
    """A request refused with a gRPC status code; the message names the field."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _scalar_setting(settings, key: str, kind):
    try:
        value = tensor_utils.unpack_tensor(settings[key])
    except (ValueError, TypeError) as e:
        raise _invalid(f"settings[{key!r}]: {e}") from None
    if isinstance(value, np.ndarray) or not isinstance(value, kind):
        raise _invalid(f"settings[{key!r}]: expected a scalar {kind}, got {value!r}")
    return value


class PoolDriver:
    """Steps one behavior's rows on the environment pool (what ``tandem_envs.driver`` does over gRPC)."""

    def __init__(self, pool: EnvironmentPool, behavior: str) -> None:
        self.pool = pool
        self.behavior = behavior
        self.specs = pool.specs
        self.slots = AgentSlots(self.specs[behavior])

    def _views(self, parts: list[bytes]) -> list[BehaviorStepsView]:
        """This behavior's steps of the pool's last operation, whose ``Steps`` bytes are ``parts``:
        the in-process instance's arrays as they are, else the bytes decoded."""
        batches = self.pool.last_batches()
        if batches is not None:
            return [
                BehaviorStepsView(instance, self.behavior, *by_behavior[self.behavior])
                for instance, by_behavior in batches.items()
                if self.behavior in by_behavior
            ]
        steps = gateway_pb2.Steps()
        for part in parts:
            steps.MergeFromString(part)
        return decode_steps(steps, self.specs, only=self.behavior)

    def _step_once(self, actions) -> list:
        """One step of every instance; ``actions`` (continuous, discrete) for the pending rows, or None."""
        decoded: dict[int, dict[str, BehaviorActions]] = {}
        if actions is not None:
            decisions = self.pool.decisions
            request = gateway_pb2.StepRequest()
            for instance, (ids, cont, disc) in self.slots.pending_actions(*actions).items():
                expected = decisions.get(instance, {}).get(self.behavior)
                if expected is not None and np.array_equal(ids, expected):  # the usual case: every agent, in order
                    decoded[instance] = {self.behavior: BehaviorActions(continuous=cont, discrete=disc)}
                else:  # some agents left out: the Play path's checks fill in zeros
                    request.actions.append(behavior_actions(instance, self.behavior, ids, cont, disc))
            if request.actions:
                for instance, by_behavior in decode_step_request(request, decisions, self.specs).items():
                    decoded.setdefault(instance, {}).update(by_behavior)
        return self._views(self.pool.step(decoded))

    def reset(self, parameters: dict[str, float], known=(), discover_agents: bool = False):
        """Resets every instance (parameters set first); rows for the agents deciding now and ``known``
        ones, and with ``discover_agents`` for every agent found over one decision period."""
        known = set(known)
        if discover_agents:
            known |= discover(self.behavior, lambda: self._views(self.pool.reset(parameters)), lambda: self._step_once(None))
        return self.slots.start(self._views(self.pool.reset(parameters)), known)

    def step(self, continuous, discrete):
        """Acts for the pending rows, then steps until an agent decides (ends in between merged in)."""
        return step_until(self.slots, self._step_once, (continuous, discrete), any_decision)


class _Connection:
    """One stream's state: the world it joined and the last steps."""

    def __init__(self, context) -> None:
        self.context = context
        self.world_name: str | None = None
        self.driver: PoolDriver | None = None
        self.world: BehaviorWorld | None = None
        self.last = None
        self.first_step = True
        self.created: set[str] = set()


class DmEnvRpcServicer(dm_env_rpc_pb2_grpc.EnvironmentServicer):
    """Serves dm_env_rpc over a gateway's environment pool (see the module docstring).

    Args:
        gateway: the ``GatewayServicer``, whose one-driver lock a joined world holds.
        pool: the environment pool (remote-control mode).
    """

    def __init__(self, gateway, pool: EnvironmentPool) -> None:
        self._gateway = gateway
        self._pool = pool
        self._worlds: dict[str, str] = {}  # world name -> behavior name
        self._joined: dict[str, object] = {}  # world name -> the joined connection
        self._lock = threading.Lock()
        self._names = itertools.count(1)
        self.log = get_logger("gateway.dm_env_rpc")

    def Process(self, request_iterator, context):
        conn = _Connection(context)
        log = self.log.bind(peer=context.peer())
        try:
            for request in request_iterator:
                kind = request.WhichOneof("payload")
                response = dm_env_rpc_pb2.EnvironmentResponse()
                try:
                    answer = self._answer(conn, kind, getattr(request, kind) if kind else None)
                    if isinstance(answer, bytes):  # a serialized StepResponse: wrapped, not parsed
                        yield protowire.length_delimited(_STEP_FIELD, answer)
                        continue
                    getattr(response, kind).CopyFrom(answer)
                except RequestError as e:
                    response.error.CopyFrom(status_pb2.Status(code=e.code.value[0], message=str(e)))
                except (WorldError, InvalidArgument) as e:
                    response.error.CopyFrom(status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=str(e)))
                except PoolError as e:
                    log.warning("dm_env_rpc request failed", error=str(e))
                    response.error.CopyFrom(status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=str(e)))
                except Exception as e:  # a bug: the client gets INTERNAL, the stream and the gateway go on
                    log.exception("dm_env_rpc request crashed", request=kind)
                    response.error.CopyFrom(
                        status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=f"{kind}: internal error: {e}")
                    )
                yield response
        finally:
            self._leave(conn)
            with self._lock:
                for name in conn.created:
                    self._worlds.pop(name, None)

    def _answer(self, conn: _Connection, kind: str | None, request):
        match kind:
            case "create_world":
                return self._create_world(conn, request)
            case "destroy_world":
                return self._destroy_world(request)
            case "join_world":
                return self._join_world(conn, request)
            case "leave_world":
                self._leave(conn)
                return dm_env_rpc_pb2.LeaveWorldResponse()
            case "reset":
                return self._reset(conn, request)
            case "reset_world":
                return self._reset_world(conn, request)
            case "step":
                return self._step(conn, request)
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"request: {kind or 'an empty payload'} is not supported")

    # -- worlds -----------------------------------------------------------------------------------

    def _create_world(self, conn: _Connection, request):
        specs = self._pool.specs
        unknown = sorted(set(request.settings) - {"behavior"})
        if unknown:
            raise _invalid(f"settings: unknown setting(s) {unknown}; the only one is 'behavior'")
        if "behavior" in request.settings:
            wanted = _scalar_setting(request.settings, "behavior", str)
            matches = [n for n in sorted(specs) if wanted in (n, specs[n].brain_name)]
            if len(matches) != 1:
                raise _invalid(f"settings['behavior']: {wanted!r} is not one of the gateway's behaviors {sorted(specs)}")
            behavior = matches[0]
        elif len(specs) == 1:
            behavior = next(iter(specs))
        else:
            raise _invalid(f"settings['behavior']: required, one of {sorted(specs)}")
        with self._lock:
            if self._worlds:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"create_world: one world at a time; destroy {sorted(self._worlds)[0]!r} first",
                )
            name = f"{behavior}#{next(self._names)}"
            self._worlds[name] = behavior
            conn.created.add(name)
        return dm_env_rpc_pb2.CreateWorldResponse(world_name=name)

    def _destroy_world(self, request):
        with self._lock:
            self._joinable(request.world_name)  # exists, and nobody is in it
            del self._worlds[request.world_name]
        return dm_env_rpc_pb2.DestroyWorldResponse()

    def _join_world(self, conn: _Connection, request):
        if conn.world_name is not None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"join_world: already joined {conn.world_name!r}")
        if request.settings:
            raise _invalid(f"settings: unknown setting(s) {sorted(request.settings)}; joining takes none")
        self._joinable(request.world_name)
        # the claim may wait for a departed driver (seconds): not under the lock
        if not self._gateway.claim_play(conn.context):
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "join_world: another client is driving the environments")
        with self._lock:
            try:
                behavior = self._joinable(request.world_name)
            except RequestError:
                self._gateway.release_play()
                raise
            self._joined[request.world_name] = conn
        conn.world_name = request.world_name
        try:
            conn.driver = PoolDriver(self._pool, behavior)
            conn.last = conn.driver.reset({}, discover_agents=True)
            conn.world = BehaviorWorld(conn.driver.slots.spec, conn.driver.slots)
        except BaseException:
            self._leave(conn)
            raise
        conn.first_step = True
        self.log.info("dm_env_rpc world joined", world=conn.world_name, agents=conn.world.n)
        return dm_env_rpc_pb2.JoinWorldResponse(specs=conn.world.specs())

    def _existing(self, world_name: str) -> str:
        """The behavior of ``world_name``; raises NOT_FOUND naming it."""
        behavior = self._worlds.get(world_name)
        if behavior is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"world_name: no world {world_name!r}")
        return behavior

    def _joinable(self, world_name: str) -> str:
        """The behavior of ``world_name`` if it exists and nobody joined it.

        Raises:
            RequestError: NOT_FOUND or FAILED_PRECONDITION naming the world.
        """
        behavior = self._existing(world_name)
        if world_name in self._joined:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"world_name: {world_name!r} is joined")
        return behavior

    def _leave(self, conn: _Connection) -> None:
        if conn.world_name is None:
            return
        with self._lock:
            self._joined.pop(conn.world_name, None)
            conn.world_name = conn.driver = conn.world = conn.last = None
            self._gateway.release_play()

    # -- environment ------------------------------------------------------------------------------

    def _joined_world(self, conn: _Connection, what: str) -> BehaviorWorld:
        if conn.world is None:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{what}: join a world first")
        return conn.world

    def _reset_environment(self, conn: _Connection, settings) -> None:
        parameters = {key: float(_scalar_setting(settings, key, (float, int, np.number))) for key in settings}
        n = conn.world.n
        conn.last = conn.driver.reset(parameters, known=conn.driver.slots.keys)
        if conn.driver.slots.n != n:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"reset: {conn.driver.slots.n} agents after the reset, {n} in the world's specs; join again",
            )
        conn.first_step = True

    def _reset(self, conn: _Connection, request):
        world = self._joined_world(conn, "reset")
        self._reset_environment(conn, request.settings)
        return dm_env_rpc_pb2.ResetResponse(specs=world.specs())

    def _reset_world(self, conn: _Connection, request):
        with self._lock:
            self._existing(request.world_name)
        if conn.world_name == request.world_name:
            self._reset_environment(conn, request.settings)
        return dm_env_rpc_pb2.ResetWorldResponse()

    def _step(self, conn: _Connection, request):
        world = self._joined_world(conn, "step")
        uids = world.check_requested(request.requested_observations)
        if conn.first_step:
            conn.first_step = False  # the protocol: the first step's actions are ignored
        else:
            continuous, discrete = world.decode_actions(request.actions)
            conn.last = conn.driver.step(continuous, discrete)
        return world.step_response(conn.last, uids)
