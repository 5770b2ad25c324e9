"""``.demo`` files: Tandem's writer and reader, and ML-Agents' own loader and writer on the same files."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from common.demonstration_file import (
    META_RESERVED_BYTES,
    DemonstrationError,
    DemonstrationWriter,
    Record,
    demonstration_files,
    demonstration_path,
    read_demonstration_file,
)
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from trainer_server.demonstrations import load_demonstrations

#: ML-Agents 1.1.0's Python (with torch); CI does not have it
MLAGENTS_PYTHON = Path(os.environ.get("TANDEM_MLAGENTS_PYTHON", "/work/mlagents-venv/bin/python"))
needs_mlagents = pytest.mark.skipif(
    not MLAGENTS_PYTHON.is_file(),
    reason=f"ML-Agents 1.1.0 is not installed at {MLAGENTS_PYTHON} (set TANDEM_MLAGENTS_PYTHON to its venv's python)",
)

HYBRID = BehaviorSpec(
    name="Hybrid?team=0",
    observations=(ObservationSpec("VectorSensor_size3", (3,), dimension_properties=(1,)), ObservationSpec("Ray", (2,), dimension_properties=(1,))),
    action_spec=ActionSpec(continuous_size=2, discrete_branches=(3, 2)),
)


def _episode(rng: np.random.Generator, length: int, interrupted: bool = False) -> list[Record]:
    """Records as Unity writes them: the action stored with record t was decided at t-1."""
    records = []
    previous_c, previous_d = np.zeros(2, np.float32), np.zeros(2, np.int32)
    for t in range(length + 1):
        done = t == length
        records.append(
            Record(
                observations=(rng.normal(size=3).astype(np.float32), rng.normal(size=2).astype(np.float32)),
                reward=0.0 if t == 0 else float(t),
                done=done,
                max_step_reached=done and interrupted,
                continuous_actions=previous_c,
                discrete_actions=previous_d,
                action_mask=np.array([False, True, False, False, False]),
            )
        )
        previous_c = rng.uniform(-1, 1, size=2).astype(np.float32)
        previous_d = np.array([rng.integers(3), rng.integers(2)], np.int32)
    return records


def _write(path: Path, episodes: list[list[Record]], spec: BehaviorSpec = HYBRID) -> None:
    with DemonstrationWriter(path, spec) as writer:
        for episode in episodes:
            writer.write_episode(episode)


def test_round_trip_keeps_every_record_and_the_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, 4), _episode(rng, 3, interrupted=True)]
    path = tmp_path / "Hybrid.demo"
    _write(path, episodes)
    demo = read_demonstration_file(path)
    assert demo.spec.brain_name == "Hybrid"
    assert demo.spec.action_spec == HYBRID.action_spec
    assert [o.shape for o in demo.spec.observations] == [(3,), (2,)]
    assert [o.name for o in demo.spec.observations] == ["VectorSensor_size3", "Ray"]
    assert demo.meta.number_steps == 9 and demo.meta.number_episodes == 2 and demo.meta.name == "Hybrid"
    assert demo.meta.mean_reward == pytest.approx((10 + 6) / 2)
    flat = [r for e in episodes for r in e]
    assert len(demo.records) == len(flat)
    for got, want in zip(demo.records, flat):
        np.testing.assert_array_equal(got.observations[0], want.observations[0])
        np.testing.assert_array_equal(got.continuous_actions, want.continuous_actions)
        np.testing.assert_array_equal(got.discrete_actions, want.discrete_actions)
        np.testing.assert_array_equal(got.action_mask, want.action_mask)
        assert (got.reward, got.done, got.max_step_reached) == (want.reward, want.done, want.max_step_reached)


def test_steps_pair_each_observation_with_the_action_decided_there(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    episodes = [_episode(rng, 4), _episode(rng, 3, interrupted=True)]
    folder = tmp_path / "demos"
    folder.mkdir()
    _write(folder / "a.demo", episodes[:1])
    _write(folder / "b.demo", episodes[1:])
    (folder / "notes.txt").write_text("not a demo")
    demos = load_demonstrations(folder, HYBRID)
    assert demos.num_steps == 7 and demos.num_episodes == 2
    first = episodes[0]
    np.testing.assert_array_equal(demos.observations[0][0], first[0].observations[0])
    np.testing.assert_array_equal(demos.continuous_actions[0], first[1].continuous_actions)
    np.testing.assert_array_equal(demos.discrete_actions[3], first[4].discrete_actions)
    assert demos.rewards.tolist() == [1, 2, 3, 4, 1, 2, 3]
    assert demos.dones.tolist() == [False, False, False, True, False, False, True]
    assert demos.interrupted.tolist() == [False] * 6 + [True]
    assert demos.episode_returns().tolist() == [10, 6]
    assert demos.observations[1].shape == (7, 2) and demos.continuous_actions.dtype == np.float32
    assert demos.discrete_actions.dtype == np.int32 and demos.action_masks[:, 1].all()


def test_file_names_follow_unity_recorder(tmp_path: Path) -> None:
    first = demonstration_path(tmp_path, "3DBall?team=0")
    assert first.name == "3DBall.demo"
    first.touch()
    second = demonstration_path(tmp_path, "3DBall?team=0")
    assert second.name == "3DBall_0.demo"
    assert demonstration_path(tmp_path, "A very long behavior name!").name == "A very long beha.demo"


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DemonstrationError, match="no such demonstration"):
        demonstration_files(tmp_path / "missing.demo")
    with pytest.raises(DemonstrationError, match="holds no '.demo' file"):
        demonstration_files(tmp_path)
    wrong = tmp_path / "x.txt"
    wrong.write_text("hi")
    with pytest.raises(DemonstrationError, match="not a '.demo' file"):
        demonstration_files(wrong)
    garbage = tmp_path / "garbage.demo"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(DemonstrationError, match="garbage.demo"):
        read_demonstration_file(garbage)
    good = tmp_path / "good.demo"
    _write(good, [_episode(np.random.default_rng(2), 3)])
    truncated = tmp_path / "truncated.demo"
    truncated.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(DemonstrationError, match="truncated.demo: truncated record"):
        read_demonstration_file(truncated)
    empty = tmp_path / "empty.demo"
    _write(empty, [])
    with pytest.raises(DemonstrationError, match="empty.demo: the demonstration holds no recorded step"):
        read_demonstration_file(empty)
    other = BehaviorSpec("Hybrid", HYBRID.observations, ActionSpec(continuous_size=3))
    with pytest.raises(DemonstrationError, match=r"good.demo: the demonstration's actions .* do not match behavior Hybrid"):
        load_demonstrations(good, other)
    other = BehaviorSpec("Hybrid", HYBRID.observations[:1], HYBRID.action_spec)
    with pytest.raises(DemonstrationError, match=r"observation shapes \[\(3,\), \(2,\)\] do not match"):
        load_demonstrations(good, other)


def _mlagents(script: str, *args: str) -> str:
    done = subprocess.run(
        [str(MLAGENTS_PYTHON), "-c", textwrap.dedent(script), *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_mlagents
def test_mlagents_loader_reads_a_file_written_by_tandem(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    episodes = [_episode(rng, 4), _episode(rng, 3, interrupted=True)]
    path = tmp_path / "Hybrid.demo"
    _write(path, episodes)
    out = _mlagents(
        """
        import json, sys
        import numpy as np
        from mlagents.trainers.buffer import BufferKey, ObservationKeyPrefix
        from mlagents.trainers.demo_loader import demo_to_buffer
        spec, buffer = demo_to_buffer(sys.argv[1], 1)
        print(json.dumps({
            "continuous": spec.action_spec.continuous_size,
            "branches": list(spec.action_spec.discrete_branches),
            "shapes": [list(o.shape) for o in spec.observation_specs],
            "steps": buffer.num_experiences,
            "obs0": np.asarray(buffer[(ObservationKeyPrefix.OBSERVATION, 0)]).tolist(),
            "actions": np.asarray(buffer[BufferKey.CONTINUOUS_ACTION]).tolist(),
            "discrete": np.asarray(buffer[BufferKey.DISCRETE_ACTION]).tolist(),
            "rewards": np.asarray(buffer[BufferKey.ENVIRONMENT_REWARDS]).tolist(),
            "dones": np.asarray(buffer[BufferKey.DONE]).tolist(),
        }))
        """,
        str(path),
    )
    got = json.loads(out.strip().splitlines()[-1])
    assert got["continuous"] == 2 and got["branches"] == [3, 2] and got["shapes"] == [[3], [2]]
    flat = [r for e in episodes for r in e]
    # ML-Agents pairs every record but the last with its own stored action and the next record's reward
    assert got["steps"] == len(flat) - 1
    np.testing.assert_allclose(got["obs0"], [r.observations[0] for r in flat[:-1]], rtol=1e-6)
    np.testing.assert_allclose(got["actions"], [r.continuous_actions for r in flat[:-1]], rtol=1e-6)
    np.testing.assert_array_equal(got["discrete"], [r.discrete_actions for r in flat[:-1]])
    assert got["rewards"] == [r.reward for r in flat[1:]]
    assert got["dones"] == [r.done for r in flat[1:]]


@needs_mlagents
def test_tandem_reads_a_file_written_by_mlagents(tmp_path: Path) -> None:
    path = tmp_path / "Written.demo"
    _mlagents(
        """
        import sys
        from mlagents.trainers.demo_loader import write_demo
        from mlagents_envs.communicator_objects.agent_action_pb2 import AgentActionProto
        from mlagents_envs.communicator_objects.agent_info_action_pair_pb2 import AgentInfoActionPairProto
        from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
        from mlagents_envs.communicator_objects.brain_parameters_pb2 import ActionSpecProto, BrainParametersProto
        from mlagents_envs.communicator_objects.demonstration_meta_pb2 import DemonstrationMetaProto
        from mlagents_envs.communicator_objects.observation_pb2 import ObservationProto
        pairs = []
        for t in range(6):
            obs = ObservationProto(shape=[4], name="VectorSensor_size4")
            obs.float_data.data.extend([t, t + 0.5, -t, 1.0])
            info = AgentInfoProto(reward=0.1 * t, done=t in (3, 5), observations=[obs], action_mask=[False, False, True])
            action = AgentActionProto(continuous_actions=[0.1 * t], discrete_actions=[t % 3])
            pairs.append(AgentInfoActionPairProto(agent_info=info, action_info=action))
        brain = BrainParametersProto(brain_name="Written", action_spec=ActionSpecProto(
            num_continuous_actions=1, num_discrete_actions=1, discrete_branch_sizes=[3]))
        meta = DemonstrationMetaProto(api_version=1, demonstration_name="Written", number_steps=6, number_episodes=2)
        write_demo(sys.argv[1], meta, brain, pairs)
        """,
        str(path),
    )
    demo = read_demonstration_file(path)
    assert demo.meta.number_steps == 6 and demo.meta.name == "Written"
    assert demo.spec.name == "Written" and demo.spec.action_spec == ActionSpec(1, (3,))
    assert demo.spec.observations[0].shape == (4,) and demo.spec.observations[0].name == "VectorSensor_size4"
    demos = load_demonstrations(path)
    # records 0-2 then 4 act (3 and 5 end episodes); each takes the next record's action
    assert demos.num_steps == 4 and demos.num_episodes == 2
    np.testing.assert_allclose(demos.observations[0][:, 0], [0, 1, 2, 4])
    np.testing.assert_allclose(demos.continuous_actions[:, 0], [0.1, 0.2, 0.3, 0.5], rtol=1e-6)
    assert demos.discrete_actions[:, 0].tolist() == [1, 2, 0, 2]
    np.testing.assert_allclose(demos.rewards, [0.1, 0.2, 0.3, 0.5], rtol=1e-6)
    assert demos.dones.tolist() == [False, False, True, True]
    assert demos.action_masks.tolist() == [[False, False, True]] * 4


def test_meta_record_fits_the_reserved_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.demo"
    _write(path, [_episode(np.random.default_rng(4), 2)] * 3)
    data = path.read_bytes()
    assert data[0] < META_RESERVED_BYTES  # one-byte length prefix, payload within the reserved bytes


def test_visual_observations_float_written_and_png_compressed_read(tmp_path: Path) -> None:
    import io

    from PIL import Image
    from mlagents_envs.communicator_objects.agent_action_pb2 import AgentActionProto
    from mlagents_envs.communicator_objects.agent_info_action_pair_pb2 import AgentInfoActionPairProto
    from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
    from mlagents_envs.communicator_objects.observation_pb2 import ObservationProto

    spec = BehaviorSpec("Eyes", (ObservationSpec("CameraSensor", (3, 4, 5), dimension_properties=(1, 2, 2)),), ActionSpec(discrete_branches=(2,)))
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    channels_first = np.transpose(image.astype(np.float32) / 255.0, (2, 0, 1))
    records = [
        Record((channels_first,), 0.0, False, False, np.zeros(0, np.float32), np.array([0], np.int32)),
        Record((channels_first,), 1.0, True, False, np.zeros(0, np.float32), np.array([1], np.int32)),
    ]
    path = tmp_path / "Eyes.demo"
    _write(path, [records], spec)
    demo = read_demonstration_file(path)
    assert demo.spec.observations[0].shape == (3, 4, 5)
    np.testing.assert_allclose(demo.records[0].observations[0], channels_first, rtol=1e-6)
    # a camera sensor's PNG, as Unity sends it, appended by hand in the record layout
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    obs = ObservationProto(shape=[3, 4, 5], compression_type=1, compressed_data=png.getvalue(), name="CameraSensor")
    pair = AgentInfoActionPairProto(agent_info=AgentInfoProto(observations=[obs]), action_info=AgentActionProto(discrete_actions=[1]))
    payload = pair.SerializeToString()
    from common.protowire import varint

    with open(path, "ab") as f:
        f.write(varint(len(payload)) + payload)
    decoded = read_demonstration_file(path).records[-1].observations[0]
    np.testing.assert_allclose(decoded, channels_first, atol=1e-6)
