"""The gateway's dm_env_rpc endpoint: dm_env_rpc's own compliance suites, and a dm_env client loop.

The compliance classes (``dm_env_rpc.v1.compliance``) are absltest cases; pytest runs them
against real gateways in front of the stand-in: 3DBall (continuous actions) and GridWorld
(discrete branches with masks, a visual observation).
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
from dm_env_rpc.v1 import compliance, connection as dm_connection, dm_env_adaptor, dm_env_rpc_pb2, error, tensor_utils

from gateway.options import ActorOptions, GatewayOptions, OptionsError, ServerOptions, validate
from gateway.remote.agent_slots import discover
from gateway.remote.client import GatewayClient, behavior_actions, decode_steps
from gateway_helpers import environment_options, running_gateway

BALL_SETTINGS = {"behavior": tensor_utils.pack_tensor("3DBall")}


def _gateway(task: str):
    """Module fixture: a gateway serving dm_env_rpc in front of the stand-in's ``task`` (2 agents)."""

    @pytest.fixture(scope="module")
    def fixture():
        server = ServerOptions(listen="127.0.0.1:0", dm_env_rpc_listen="127.0.0.1:0")
        with running_gateway(environment_options(env_args=("--task", task, "--num-agents", "2")), server=server) as gw:
            yield gw

    return fixture


def _address_for_class(gateway_fixture: str):
    """Class fixture: the suite's ``address`` is that gateway's dm_env_rpc endpoint."""

    @pytest.fixture(scope="class")
    def fixture(request):
        request.cls.address = f"127.0.0.1:{request.getfixturevalue(gateway_fixture).dm_env_rpc_port}"

    return fixture


ball_gateway, grid_gateway = _gateway("3dball"), _gateway("gridworld")
on_ball, on_grid = _address_for_class("ball_gateway"), _address_for_class("grid_gateway")


class _Connected:
    """A dm_env_rpc connection per test, closed after it (suites below run once per gateway)."""

    __test__ = False
    address: str

    def setUp(self):
        super().setUp()
        self._channel = grpc.insecure_channel(self.address)
        self._connection = dm_connection.Connection(self._channel)

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            self._connection.close()
            self._channel.close()

    @property
    def connection(self):
        return self._connection


class _WithWorld(_Connected):
    """Connected, with a world created (``self.world_name``), left and destroyed after the test."""

    def setUp(self):
        super().setUp()
        self._world = self.connection.send(dm_env_rpc_pb2.CreateWorldRequest()).world_name

    def tearDown(self):
        try:
            self.connection.send(dm_env_rpc_pb2.LeaveWorldRequest())
            self.connection.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=self._world))
        finally:
            super().tearDown()

    @property
    def world_name(self):
        return self._world

    def join_world(self):
        return self.connection.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=self._world)).specs


class _InWorld(_WithWorld):
    """... and joined (its specs in ``self.specs``)."""

    def setUp(self):
        super().setUp()
        self._specs = _WithWorld.join_world(self)

    @property
    def specs(self):
        return self._specs


class _CreateDestroyWorld(_Connected, compliance.CreateDestroyWorld):
    required_world_settings = {}
    invalid_world_settings = {
        "behavior": tensor_utils.pack_tensor("NoSuchBehavior"),
        "unknown_setting": tensor_utils.pack_tensor(1),
    }
    has_multiple_world_support = False


class _JoinLeaveWorld(_WithWorld, compliance.JoinLeaveWorld):
    invalid_join_settings = {"unknown_setting": tensor_utils.pack_tensor(1)}
    join_world = compliance.JoinLeaveWorld.join_world


class _Reset(_WithWorld, compliance.Reset):
    pass


class _ResetWorld(_WithWorld, compliance.ResetWorld):
    join_world = compliance.ResetWorld.join_world


class _Step(_InWorld, compliance.Step):
    pass


# Each suite against each gateway: TestStepOnBall, TestStepOnGrid, ...
for _suite in (_CreateDestroyWorld, _JoinLeaveWorld, _Reset, _ResetWorld, _Step):
    for _fixture in ("on_ball", "on_grid"):
        _name = f"Test{_suite.__name__[1:]}{''.join(w.title() for w in _fixture.split('_'))}"
        globals()[_name] = pytest.mark.usefixtures(_fixture)(type(_name, (_suite,), {"__test__": True}))


def test_a_dm_env_client_loop_sees_rewards_and_per_agent_episode_ends(grid_gateway):
    """The README's loop: dm_env_rpc's DmEnvAdaptor over the gateway's endpoint (GridWorld, 2 agents)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{grid_gateway.dm_env_rpc_port}")
    conn = dm_connection.Connection(channel)
    try:
        world = conn.send(dm_env_rpc_pb2.CreateWorldRequest()).world_name
        specs = conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=world)).specs
        env = dm_env_adaptor.DmEnvAdaptor(conn, specs)
        assert env.action_spec()["discrete"].shape == (2, 2)
        assert env.observation_spec()["CameraSensor"].shape == (2, 3, 24, 24)
        timestep = env.reset()
        assert timestep.first()
        stay = {"discrete": np.zeros((2, 2), np.int32)}  # never reaches the goal or the pit
        truncated_at = None
        for t in range(1, 150):
            timestep = env.step(stay)
            assert timestep.mid()  # Unity restarts agents itself: the world runs on
            np.testing.assert_allclose(timestep.reward, -0.01, atol=1e-6)
            if timestep.observation["truncated"].any():
                truncated_at = t
                break
        assert truncated_at == 100
        assert timestep.observation["truncated"].all() and not timestep.observation["terminated"].any()
        np.testing.assert_array_equal(timestep.discount, [1.0, 1.0])  # truncated, not terminated
        assert timestep.observation["action_mask"].shape == (2, 7)
        conn.send(dm_env_rpc_pb2.LeaveWorldRequest())
        conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))
    finally:
        conn.close()
        channel.close()


def test_a_joined_world_holds_the_gateway_against_play_streams_and_back(ball_gateway):
    channel = grpc.insecure_channel(f"127.0.0.1:{ball_gateway.dm_env_rpc_port}")
    conn = dm_connection.Connection(channel)
    try:
        world = conn.send(dm_env_rpc_pb2.CreateWorldRequest(settings=BALL_SETTINGS)).world_name
        conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=world))
        with GatewayClient(ball_gateway.address) as client:
            session = client.play(timeout_s=60)
            with pytest.raises(grpc.RpcError) as e:
                session.reset()
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            conn.send(dm_env_rpc_pb2.LeaveWorldRequest())
            session = client.play(timeout_s=60)
            assert session.reset().behaviors  # free again
            with pytest.raises(error.DmEnvRpcError, match="another client is driving"):
                conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=world))
            session.close()
        conn.send(dm_env_rpc_pb2.DestroyWorldRequest(world_name=world))
    finally:
        conn.close()
        channel.close()


def test_dm_env_rpc_listen_is_checked():
    options = GatewayOptions(environment=environment_options())
    with pytest.raises(OptionsError, match="--dm-env-rpc-listen: expected host:port"):
        validate(replace(options, server=ServerOptions(dm_env_rpc_listen="nowhere")))
    with pytest.raises(OptionsError, match="--dm-env-rpc-listen: remote-control mode only"):
        validate(
            replace(options, server=ServerOptions(dm_env_rpc_listen="127.0.0.1:0"), actor=ActorOptions("127.0.0.1:1"))
        )


def test_the_cli_flag_reaches_the_server_options():
    from gateway.cli import build_parser, options_from_args

    options = options_from_args(build_parser().parse_args(["--dm-env-rpc-listen", "127.0.0.1:0"]))
    assert options.server.dm_env_rpc_listen == "127.0.0.1:0"
    assert options_from_args(build_parser().parse_args([])).server.dm_env_rpc_listen is None


def test_the_services_never_import_the_adapter_libraries():
    """The extra is optional: the gateway (without --dm-env-rpc-listen) and the trainer run without it."""
    import subprocess
    import sys

    code = (
        "import sys, gateway.cli, gateway.app, trainer_server.cli, trainer_server.main\n"
        "loaded = {'gymnasium', 'pettingzoo', 'dm_env_rpc', 'dm_env', 'tandem_envs'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([True, False, True]),
        np.zeros((0, 2), np.float32),
        np.array([1, -5], np.int32),
        np.full((2, 3, 4, 5), 0.5, np.float32),
    ],
)
def test_observation_tensors_are_the_ones_dm_env_rpc_packs(array):
    from gateway.dm_env_rpc.world import _tensor_bytes

    assert dm_env_rpc_pb2.Tensor.FromString(_tensor_bytes(array)) == tensor_utils.pack_tensor(array)


@pytest.mark.parametrize("count", [0, 1, 31, 32, 512, 40000])
def test_packed_floats_equal_dm_env_rpc_unpacking(count):
    """The fast action path reads the same values as dm_env_rpc's own unpacking (lengths of 1-3 varint bytes)."""
    from gateway.dm_env_rpc.world import _packed_floats

    values = np.random.default_rng(count).uniform(-1, 1, count).astype(np.float32)
    tensor = tensor_utils.pack_tensor(values)
    np.testing.assert_array_equal(_packed_floats(tensor.floats, count), tensor_utils.unpack_tensor(tensor).reshape(-1))
    assert _packed_floats(tensor.floats, count + 1) is None  # another count: the general path decides


def test_fast_and_general_action_paths_agree():
    """Within bounds the fast path gives the general path's array; NaN, infinity and values out of
    bounds fall through to the general path, whose messages name the uid."""
    from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
    from gateway.dm_env_rpc.world import BehaviorWorld, WorldError
    from gateway.remote.agent_slots import AgentSlots

    spec = BehaviorSpec("B?team=0", (ObservationSpec("v", (3,)),), ActionSpec(2))
    slots = AgentSlots(spec)
    slots.keys = [(0, 1), (0, 2), (0, 3)]
    world = BehaviorWorld(spec, slots)
    uid = next(iter(world.actions))
    good = np.array([[-1, 1], [0.5, -0.25], [0, 0.999]], np.float32)
    request = dm_env_rpc_pb2.StepRequest()
    request.actions[uid].CopyFrom(tensor_utils.pack_tensor(good))
    assert world._fast_action(uid, world.actions[uid], request.actions[uid]) is not None
    continuous, discrete = world.decode_actions(request.actions)
    np.testing.assert_array_equal(continuous, good)
    assert discrete is None
    for bad, message in ((np.nan, "NaN or infinity"), (np.inf, "NaN or infinity"), (1.5, "out of bounds")):
        values = good.copy()
        values[1, 0] = bad
        request.actions[uid].CopyFrom(tensor_utils.pack_tensor(values))
        assert world._fast_action(uid, world.actions[uid], request.actions[uid]) is None
        with pytest.raises(WorldError, match=rf"actions\[{uid}\] \(continuous\): .*{message}"):
            world.decode_actions(request.actions)


@pytest.mark.parametrize("worker_process", [False, True])
def test_pool_hands_over_in_process_arrays_equal_to_its_steps_bytes(worker_process):
    """The dm_env_rpc driver reads an in-process instance's arrays instead of decoding its bytes:
    they must be the same steps (decisions and terminals, every field); a worker process's
    answers come as bytes only (None: the driver decodes)."""
    import dataclasses

    from gateway.remote.client import decode_steps
    from gateway.remote.pool import EnvironmentPool
    from gateway_helpers import environment_options
    from tandem.v1 import gateway_pb2

    options = environment_options(env_args=("--task", "3dball", "--num-agents", "3"))
    pool = EnvironmentPool(dataclasses.replace(options, single_in_process=not worker_process))
    pool.start()
    try:
        ended = 0
        parts = pool.reset({})
        for _ in range(60):  # 3DBall episodes end within this many steps for zero actions
            batches = pool.last_batches()
            if worker_process:
                assert batches is None
            else:
                steps = gateway_pb2.Steps()
                for part in parts:
                    steps.MergeFromString(part)
                decoded = decode_steps(steps, pool.specs)
                assert [(v.instance, v.behavior) for v in decoded] == [(i, b) for i in batches for b in batches[i]]
                for view in decoded:
                    for got, want in zip(batches[view.instance][view.behavior], (view.decisions, view.terminals)):
                        for name in ("rewards", "agent_ids", "group_ids", "group_rewards", "action_mask", "interrupted"):
                            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
                        for a, b in zip(got.observations, want.observations, strict=True):
                            np.testing.assert_array_equal(a, b)
                    ended += len(view.terminals)
            parts = pool.step({})
        assert worker_process or ended > 0  # terminal batches were compared too
    finally:
        pool.close()


def test_step_response_bytes_parse_to_dm_env_rpc_s_own_tensors():
    """The response written around framing fixed at the join parses to the tensors dm_env_rpc packs."""
    from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
    from gateway.dm_env_rpc.world import BehaviorWorld
    from gateway.remote.agent_slots import AgentSlots, SlotStep

    spec = BehaviorSpec("B?team=0", (ObservationSpec("v", (3,)), ObservationSpec("cam", (2, 4, 4))), ActionSpec(1, (2, 3)))
    slots = AgentSlots(spec)
    slots.keys = [(0, 7), (1, 3)]
    world = BehaviorWorld(spec, slots)
    rng = np.random.default_rng(0)
    step = SlotStep(
        observations=[rng.normal(size=(2, 3)).astype(np.float32), rng.uniform(size=(2, 2, 4, 4)).astype(np.float32)],
        rewards=np.array([0.5, -1], np.float32),
        terminated=np.array([True, False]),
        truncated=np.array([False, True]),
        decided=np.array([True, True]),
        final_observations=None,
        action_mask=rng.uniform(size=(2, 5)) < 0.5,
        group_rewards=np.zeros(2, np.float32),
    )
    expected = {
        "v": step.observations[0], "cam": step.observations[1], "reward": step.rewards,
        "discount": np.array([0.0, 1.0], np.float32), "terminated": step.terminated, "truncated": step.truncated,
        "decision_requested": step.decided, "final_observation.v": step.observations[0],
        "final_observation.cam": step.observations[1], "action_mask": step.action_mask,
        "agent_id": np.array([7, 3], np.int32), "instance": np.array([0, 1], np.int32), "group_reward": step.group_rewards,
    }
    uids = list(world.observations)  # every observation, float, bool and int32 ones
    assert sorted(world.observations[uid].name for uid in uids) == sorted(expected)
    response = dm_env_rpc_pb2.StepResponse.FromString(world.step_response(step, uids))
    assert response.state == dm_env_rpc_pb2.EnvironmentStateType.RUNNING
    assert sorted(response.observations) == sorted(uids)
    for uid in uids:
        name = world.observations[uid].name
        assert response.observations[uid] == tensor_utils.pack_tensor(expected[name]), name
    # where episodes ended, the final observations are the ended episodes' last ones
    final = [rng.normal(size=(2, 3)).astype(np.float32), rng.uniform(size=(2, 2, 4, 4)).astype(np.float32)]
    response = dm_env_rpc_pb2.StepResponse.FromString(world.step_response(replace(step, final_observations=final), uids))
    by_name = {world.observations[uid].name: response.observations[uid] for uid in uids}
    assert by_name["final_observation.v"] == tensor_utils.pack_tensor(final[0])
    assert by_name["final_observation.cam"] == tensor_utils.pack_tensor(final[1])


BALL = "3DBall?team=0"
#: decisions (summed over agents) each side of the accounting test plays
ACCOUNTED_DECISIONS = 16 * 60


def _action(agent_id: int, k: int) -> np.ndarray:
    """Agent ``agent_id``'s ``k``-th action, the same on both sides: random enough to drop balls at varied steps."""
    return np.random.default_rng((agent_id, k)).uniform(-1.0, 1.0, 2).astype(np.float32)


def _ball_gateway(server: ServerOptions | None = None):
    return running_gateway(environment_options(env_args=("--task", "3dball", "--num-agents", "16")), server=server)


def _plain_episode_returns() -> tuple[dict[int, list[float]], int]:
    """Every agent's episode returns over the Play stream, summed the plain way (a terminal step ends
    the episode, a decision in the same response opens the next), after the Unity steps a dm_env_rpc
    join takes (reset, one decision period, reset, first step); and the responses with ends and no decision."""
    episodes: dict[int, list[float]] = {}
    running: dict[int, float] = {}
    counts: dict[int, int] = {}
    ends_alone = decided = 0
    with _ball_gateway() as gw, GatewayClient(f"127.0.0.1:{gw.port}") as client:
        specs = client.specs()
        session = client.play()
        try:
            views = lambda steps: decode_steps(steps, specs, only=BALL)  # noqa: E731
            discover(BALL, lambda: views(session.reset()), lambda: views(session.step()))
            steps = session.reset()
            while decided < ACCOUNTED_DECISIONS:
                actions = []
                for v in views(steps):
                    for a, r in zip(v.terminals.agent_ids.tolist(), v.terminals.rewards.tolist()):
                        episodes.setdefault(a, []).append(running.pop(a, 0.0) + r)
                    ends_alone += bool(len(v.terminals)) and not len(v.decisions)
                    ids = v.decisions.agent_ids.tolist()
                    for a, r in zip(ids, v.decisions.rewards.tolist()):
                        running[a] = running.get(a, 0.0) + r
                        counts[a] = counts.get(a, -1) + 1
                    decided += len(ids)
                    if ids:
                        act = np.stack([_action(a, counts[a]) for a in ids])
                        actions.append(behavior_actions(v.instance, BALL, np.asarray(ids, np.int32), act, np.zeros((len(ids), 0), np.int32)))
                steps = session.step(actions)
        finally:
            session.close()
    return episodes, ends_alone


def test_dm_env_rpc_steps_merge_ends_between_decisions_and_keep_every_episode_s_reward():
    """Each dm_env_rpc step runs Unity on to the next decision: ends in between come with it, every
    step has a decision to answer, and each agent's episode returns equal the Play stream's
    (same seed, same actions per agent and decision): no reward crosses an episode boundary."""
    expected, ends_alone = _plain_episode_returns()
    assert ends_alone >= 3  # the scene does end episodes between decisions
    names = ("reward", "terminated", "truncated", "decision_requested", "agent_id")
    episodes: dict[int, list[float]] = {}
    running: dict[int, float] = {}
    counts: dict[int, int] = {}
    server = ServerOptions(listen="127.0.0.1:0", dm_env_rpc_listen="127.0.0.1:0")
    with _ball_gateway(server) as gw:
        channel = grpc.insecure_channel(f"127.0.0.1:{gw.dm_env_rpc_port}")
        conn = dm_connection.Connection(channel)
        try:
            world = conn.send(dm_env_rpc_pb2.CreateWorldRequest()).world_name
            specs = conn.send(dm_env_rpc_pb2.JoinWorldRequest(world_name=world)).specs
            uid = {s.name: u for u, s in specs.observations.items()}
            (continuous,) = [u for u, s in specs.actions.items() if s.name == "continuous"]
            request = dm_env_rpc_pb2.StepRequest(requested_observations=[uid[n] for n in names])
            decided = 0
            while decided < ACCOUNTED_DECISIONS:
                response = conn.send(request)
                obs = {n: np.asarray(tensor_utils.unpack_tensor(response.observations[uid[n]])) for n in names}
                deciding = obs["decision_requested"]
                assert deciding.any()
                act = np.zeros((len(deciding), 2), np.float32)
                for row, a in enumerate(obs["agent_id"].tolist()):
                    running[a] = running.get(a, 0.0) + float(obs["reward"][row])
                    if obs["terminated"][row] or obs["truncated"][row]:
                        episodes.setdefault(a, []).append(running.pop(a))
                    if deciding[row]:
                        counts[a] = counts.get(a, -1) + 1
                        act[row] = _action(a, counts[a])
                decided += int(deciding.sum())
                request = dm_env_rpc_pb2.StepRequest(
                    requested_observations=request.requested_observations, actions={continuous: tensor_utils.pack_tensor(act)}
                )
        finally:
            conn.close()
            channel.close()
    compared = 0
    for a, returns in expected.items():
        common = min(len(returns), len(episodes.get(a, [])))
        np.testing.assert_allclose(episodes.get(a, [])[:common], returns[:common], atol=1e-5, err_msg=f"agent {a}")
        compared += common
    assert compared >= 20


def test_a_request_without_payload_is_unimplemented_and_the_stream_goes_on(ball_gateway):
    from dm_env_rpc.v1 import dm_env_rpc_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{ball_gateway.dm_env_rpc_port}")
    try:
        requests = [
            dm_env_rpc_pb2.EnvironmentRequest(),
            dm_env_rpc_pb2.EnvironmentRequest(create_world=dm_env_rpc_pb2.CreateWorldRequest(settings=BALL_SETTINGS)),
        ]
        empty, created = dm_env_rpc_pb2_grpc.EnvironmentStub(channel).Process(iter(requests), timeout=60)
        assert empty.error.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
        assert "an empty payload is not supported" in empty.error.message
        assert created.create_world.world_name.startswith("3DBall")
    finally:
        channel.close()
