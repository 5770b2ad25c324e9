"""ML-Agents' ``.demo`` files: read and write them with mlagents-envs' protobuf messages.

Why: ML-Agents users record demonstrations in Unity (``DemonstrationRecorder``) and train
GAIL and behavioral cloning from them; the gateway records them too (``--record-demo``)
and the trainer reads both. One module holds the format so that what the gateway writes
is what the trainer (and ML-Agents' own ``demo_loader``) reads.

The layout, as Unity's ``DemonstrationWriter`` writes it: a sequence of length-delimited
protobuf messages (varint length, then the bytes):

1. ``DemonstrationMetaProto`` (api_version 1, name, number of steps and episodes, mean
   episode reward) at offset 0, inside the first :data:`META_RESERVED_BYTES` bytes:
   Unity rewrites it in place when the file is closed, with the final counts;
2. ``BrainParametersProto`` (the behavior name and the action spec) at offset
   :data:`META_RESERVED_BYTES`;
3. one ``AgentInfoActionPairProto`` per step the agent was recorded: its ``AgentInfoProto``
   (observations, reward, done, max_step_reached, action mask) and the action stored with
   it.

The action of a record: Unity records an agent's info *before* it decides, so the action
stored with observation t is the one decided at t-1 (zeros at an episode's first step),
and the terminal record holds the last action. ML-Agents' loader pairs a record's
observation with its own action (one step late); Tandem's reader
(:func:`read_demonstration_file` keeps the records as stored; the trainer's
``trainer_server.demonstrations`` builds transitions with the action of the next record)
and :class:`DemonstrationWriter` writes the same layout, so files go both ways.
Records of one file are read as one agent's consecutive steps: the writer writes each
episode's records together.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from mlagents_envs.communicator_objects.agent_action_pb2 import AgentActionProto
from mlagents_envs.communicator_objects.agent_info_action_pair_pb2 import AgentInfoActionPairProto
from mlagents_envs.communicator_objects.agent_info_pb2 import AgentInfoProto
from mlagents_envs.communicator_objects.brain_parameters_pb2 import ActionSpecProto, BrainParametersProto
from mlagents_envs.communicator_objects.demonstration_meta_pb2 import DemonstrationMetaProto
from mlagents_envs.communicator_objects.observation_pb2 import ObservationProto

from common.protowire import varint
from common.specs import ActionSpec, BehaviorSpec, ObservationSpec

__all__ = [
    "API_VERSION",
    "DEMO_EXTENSION",
    "DemonstrationError",
    "DemonstrationFile",
    "DemonstrationMeta",
    "DemonstrationWriter",
    "META_RESERVED_BYTES",
    "Record",
    "demonstration_files",
    "demonstration_path",
    "read_demonstration_file",
    "read_meta",
]

#: the meta record's version Unity writes (ML-Agents reads 0 and 1)
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({0, 1})
#: bytes kept for the meta record at the start of the file (ML-Agents' ``INITIAL_POS``)
META_RESERVED_BYTES = 33
DEMO_EXTENSION = ".demo"
#: ``CompressionTypeProto.NONE``: float values (PNG otherwise)
COMPRESSION_TYPE_NONE = 0
#: Unity's DemonstrationRecorder: file names are the sanitized name, at most this long
MAX_NAME_LENGTH = 16


class DemonstrationError(ValueError):
    """A demonstration file or folder that cannot be read, or does not fit; names the file."""


@dataclass(frozen=True)
class DemonstrationMeta:
    """The meta record: what the file says about itself (Unity writes it on close)."""

    name: str
    number_steps: int
    number_episodes: int
    mean_reward: float
    api_version: int = API_VERSION


@dataclass(frozen=True)
class Record:
    """One recorded step of one agent (an ``AgentInfoActionPairProto``).

    Attributes:
        observations: per observation, float32 ``[*shape]`` (visual channels-first).
        reward: the reward received since the previous record.
        done: the episode ended with this record (terminal or interrupted).
        max_step_reached: the episode was interrupted (max step).
        continuous_actions: float32 ``[c]``: the stored action (see the module docstring).
        discrete_actions: int32 ``[b]``.
        action_mask: bool ``[sum(branches)]``, true = not allowed; None when not sent.
    """

    observations: tuple[np.ndarray, ...]
    reward: float
    done: bool
    max_step_reached: bool
    continuous_actions: np.ndarray
    discrete_actions: np.ndarray
    action_mask: np.ndarray | None = None


@dataclass(frozen=True)
class DemonstrationFile:
    """A parsed ``.demo`` file.

    Attributes:
        path: where it was read from.
        meta: its meta record.
        spec: the behavior (named by the file's brain name), observations from the first record.
        records: the recorded steps, in file order.
    """

    path: Path
    meta: DemonstrationMeta
    spec: BehaviorSpec
    records: tuple[Record, ...]


# -- reading ---------------------------------------------------------------------------------
def _read_varint(data: bytes, pos: int, path: Path) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise DemonstrationError(f"{path}: truncated (a record's length runs past the end of the file)")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DemonstrationError(f"{path}: corrupt record length at byte {pos}")


def _message(data: bytes, pos: int, path: Path, what: str) -> tuple[bytes, int]:
    size, start = _read_varint(data, pos, path)
    end = start + size
    if end > len(data):
        raise DemonstrationError(f"{path}: truncated {what} at byte {pos} ({size} bytes announced, {len(data) - start} left)")
    return data[start:end], end


def _parse(message, payload: bytes, path: Path, what: str):
    try:
        message.ParseFromString(payload)
    except Exception as exc:  # protobuf's DecodeError
        raise DemonstrationError(f"{path}: {what} is not a valid protobuf message ({exc})") from exc
    return message


def _observation_array(obs: ObservationProto, path: Path, index: int) -> np.ndarray:
    shape = tuple(int(d) for d in obs.shape)
    if obs.compression_type == COMPRESSION_TYPE_NONE:
        values = np.asarray(obs.float_data.data, np.float32)
        if values.size != int(np.prod(shape)):
            raise DemonstrationError(f"{path}: record {index}: observation {obs.name!r} has {values.size} values for shape {shape}")
        return values.reshape(shape)
    from mlagents_envs.rpc_utils import process_pixels  # PNG decoding (Pillow), only for visual demos

    image = process_pixels(obs.compressed_data, shape[0], list(obs.compressed_channel_mapping))
    if tuple(image.shape) != shape:
        raise DemonstrationError(f"{path}: record {index}: decompressed observation has shape {image.shape}, expected {shape}")
    return np.asarray(image, np.float32)


def _action_spec(brain: BrainParametersProto) -> ActionSpec:
    spec = brain.action_spec
    if spec.num_continuous_actions or spec.num_discrete_actions:
        return ActionSpec(int(spec.num_continuous_actions), tuple(int(b) for b in spec.discrete_branch_sizes))
    # files from before ML-Agents' hybrid actions describe them in the deprecated fields
    sizes = tuple(int(s) for s in brain.vector_action_size_deprecated)
    if brain.vector_action_space_type_deprecated == 1:
        return ActionSpec(sizes[0] if sizes else 0, ())
    return ActionSpec(0, sizes)


def _record(pair: AgentInfoActionPairProto, action_spec: ActionSpec, path: Path, index: int) -> Record:
    info, action = pair.agent_info, pair.action_info
    continuous = np.asarray(action.continuous_actions, np.float32)
    discrete = np.asarray(action.discrete_actions, np.float32)
    if not continuous.size and not discrete.size and len(action.vector_actions_deprecated):
        old = np.asarray(action.vector_actions_deprecated, np.float32)
        continuous, discrete = (old, discrete) if action_spec.continuous_size else (continuous, old)
    # the first record of an episode may carry no action at all: zeros of the spec's sizes
    if not continuous.size:
        continuous = np.zeros(action_spec.continuous_size, np.float32)
    if not discrete.size:
        discrete = np.zeros(action_spec.num_branches, np.float32)
    if continuous.size != action_spec.continuous_size or discrete.size != action_spec.num_branches:
        raise DemonstrationError(
            f"{path}: record {index}: action has {continuous.size} continuous and {discrete.size} discrete values, "
            f"the file's action spec {action_spec.continuous_size} and {action_spec.num_branches}"
        )
    mask = None
    if action_spec.mask_size and len(info.action_mask) == action_spec.mask_size:
        mask = np.asarray(info.action_mask, bool)
    return Record(
        observations=tuple(_observation_array(o, path, index) for o in info.observations),
        reward=float(info.reward),
        done=bool(info.done),
        max_step_reached=bool(info.max_step_reached),
        continuous_actions=continuous,
        discrete_actions=discrete.astype(np.int32),
        action_mask=mask,
    )


def read_demonstration_file(path: str | os.PathLike) -> DemonstrationFile:
    """Parses one ``.demo`` file.

    Every record is read, also past the meta record's ``number_steps`` (a file whose writer
    did not close it has 0 there).

    Raises:
        DemonstrationError: naming the file and what is wrong (missing, truncated, not a
            demonstration, an unsupported version, no records, records of another shape).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DemonstrationError(f"{path}: cannot read the demonstration file ({exc.strerror or exc})") from exc
    if len(data) < META_RESERVED_BYTES:
        raise DemonstrationError(f"{path}: not a demonstration file (only {len(data)} bytes)")
    payload, _ = _message(data, 0, path, "meta record")
    meta_proto = _parse(DemonstrationMetaProto(), payload, path, "the meta record")
    if meta_proto.api_version not in SUPPORTED_API_VERSIONS:
        raise DemonstrationError(
            f"{path}: demonstration api_version {meta_proto.api_version} is not supported "
            f"(supported: {sorted(SUPPORTED_API_VERSIONS)})"
        )
    payload, pos = _message(data, META_RESERVED_BYTES, path, "brain parameters")
    brain = _parse(BrainParametersProto(), payload, path, "the brain parameters")
    action_spec = _action_spec(brain)
    records: list[Record] = []
    first: AgentInfoProto | None = None
    while pos < len(data):
        payload, pos = _message(data, pos, path, f"record {len(records)}")
        pair = _parse(AgentInfoActionPairProto(), payload, path, f"record {len(records)}")
        if first is None:
            first = pair.agent_info
        elif len(pair.agent_info.observations) != len(first.observations):
            raise DemonstrationError(f"{path}: record {len(records)} has {len(pair.agent_info.observations)} observations, the first {len(first.observations)}")
        records.append(_record(pair, action_spec, path, len(records)))
    if first is None:
        raise DemonstrationError(f"{path}: the demonstration holds no recorded step")
    observations = tuple(
        ObservationSpec(
            name=o.name,
            shape=tuple(int(d) for d in o.shape),
            observation_type=int(o.observation_type),
            dimension_properties=tuple(int(d) for d in o.dimension_properties),
        )
        for o in first.observations
    )
    for i, record in enumerate(records):
        for obs, ospec in zip(record.observations, observations):
            if obs.shape != ospec.shape:
                raise DemonstrationError(f"{path}: record {i}: observation {ospec.name!r} has shape {obs.shape}, the first record {ospec.shape}")
    meta = DemonstrationMeta(
        name=meta_proto.demonstration_name,
        number_steps=int(meta_proto.number_steps),
        number_episodes=int(meta_proto.number_episodes),
        mean_reward=float(meta_proto.mean_reward),
        api_version=int(meta_proto.api_version),
    )
    spec = BehaviorSpec(name=brain.brain_name or meta.name, observations=observations, action_spec=action_spec)
    return DemonstrationFile(path=path, meta=meta, spec=spec, records=tuple(records))


def read_meta(path: str | os.PathLike) -> DemonstrationMeta:
    """Only the meta record (the counts a writer updates after each episode).

    Raises:
        DemonstrationError: the file cannot be read or does not start with a meta record.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(META_RESERVED_BYTES)
    except OSError as exc:
        raise DemonstrationError(f"{path}: cannot read the demonstration file ({exc.strerror or exc})") from exc
    payload, _ = _message(data, 0, path, "meta record")
    meta = _parse(DemonstrationMetaProto(), payload, path, "the meta record")
    return DemonstrationMeta(
        name=meta.demonstration_name, number_steps=int(meta.number_steps), number_episodes=int(meta.number_episodes),
        mean_reward=float(meta.mean_reward), api_version=int(meta.api_version),
    )


def demonstration_files(demo_path: str | os.PathLike) -> list[Path]:
    """The ``.demo`` files ``demo_path`` names: itself, or those in the folder (sorted).

    Raises:
        DemonstrationError: the path does not exist, is not a ``.demo`` file, or is a
            folder without one.
    """
    path = Path(demo_path)
    if path.is_file():
        if path.suffix != DEMO_EXTENSION:
            raise DemonstrationError(f"{path}: not a '{DEMO_EXTENSION}' file")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == DEMO_EXTENSION and p.is_file())
        if not files:
            raise DemonstrationError(f"{path}: the folder holds no '{DEMO_EXTENSION}' file")
        return files
    raise DemonstrationError(f"{path}: no such demonstration file or folder")


# -- writing ---------------------------------------------------------------------------------
def sanitized_name(behavior_name: str) -> str:
    """The name Unity's DemonstrationRecorder gives a recording of a behavior: the behavior
    name without ``?team=``, letters, digits, spaces and dashes kept, at most
    :data:`MAX_NAME_LENGTH` characters."""
    base = behavior_name.split("?", 1)[0]
    return re.sub(r"[^a-zA-Z0-9 -]", "", base)[:MAX_NAME_LENGTH] or "Demo"


def demonstration_path(folder: str | os.PathLike, behavior_name: str) -> Path:
    """A new file in ``folder`` named as Unity names recordings: ``NAME.demo``, or
    ``NAME_0.demo``, ``NAME_1.demo``... when taken."""
    folder = Path(folder)
    name = sanitized_name(behavior_name)
    path = folder / f"{name}{DEMO_EXTENSION}"
    counter = 0
    while path.exists():
        path = folder / f"{name}_{counter}{DEMO_EXTENSION}"
        counter += 1
    return path


def _delimited(message) -> bytes:
    payload = message.SerializeToString()
    return varint(len(payload)) + payload


def _observation_proto(value: np.ndarray, spec: ObservationSpec) -> ObservationProto:
    obs = ObservationProto(
        shape=list(spec.shape),
        compression_type=COMPRESSION_TYPE_NONE,
        name=spec.name,
        observation_type=spec.observation_type,
        dimension_properties=list(spec.dimension_properties),
    )
    obs.float_data.data.extend(np.asarray(value, np.float32).reshape(-1).tolist())
    return obs


class DemonstrationWriter:
    """Writes one behavior's ``.demo`` file, one whole episode at a time.

    The meta record is rewritten after each episode (ML-Agents' loader stops reading at its
    ``number_steps``), so the file is complete whenever an episode has been written.

    Args:
        path: the file to create (see :func:`demonstration_path`).
        spec: the behavior; its brain name names the demonstration.
        exclusive: fail with ``FileExistsError`` when the file exists (writers of several
            processes choosing names in one folder).

    Raises:
        DemonstrationError: when the file cannot be created.
    """

    def __init__(self, path: str | os.PathLike, spec: BehaviorSpec, exclusive: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.name = sanitized_name(spec.name)
        self.number_steps = 0
        self.number_episodes = 0
        self._reward_sum = 0.0
        a = spec.action_spec
        brain = BrainParametersProto(
            brain_name=spec.brain_name,
            is_training=False,
            action_spec=ActionSpecProto(
                num_continuous_actions=a.continuous_size,
                num_discrete_actions=a.num_branches,
                discrete_branch_sizes=list(a.discrete_branches),
            ),
        )
        try:
            self._file: BinaryIO = open(self.path, "xb" if exclusive else "wb")
        except FileExistsError:
            raise  # only with ``exclusive``: the caller picks another name
        except OSError as exc:
            raise DemonstrationError(f"{self.path}: cannot create the demonstration file ({exc.strerror or exc})") from exc
        self._write_meta()
        self._file.seek(META_RESERVED_BYTES)
        self._file.write(_delimited(brain))
        self._file.flush()

    def _write_meta(self) -> None:
        meta = DemonstrationMetaProto(
            api_version=API_VERSION,
            demonstration_name=self.name,
            number_steps=self.number_steps,
            number_episodes=self.number_episodes,
            mean_reward=self._reward_sum / self.number_episodes if self.number_episodes else 0.0,
        )
        encoded = _delimited(meta)
        if len(encoded) > META_RESERVED_BYTES:  # cannot happen with a 16-character name
            raise DemonstrationError(f"{self.path}: meta record of {len(encoded)} bytes does not fit")
        self._file.seek(0)
        self._file.write(encoded)

    def write_episode(self, records: Sequence[Record]) -> None:
        """Appends one episode's records (in order; the last one normally ``done``).

        Raises:
            ValueError: a record that does not fit the spec (observation shapes, action sizes).
        """
        a = self.spec.action_spec
        chunks = []
        for i, record in enumerate(records):
            if len(record.observations) != len(self.spec.observations):
                raise ValueError(f"record {i}: {len(record.observations)} observations, the spec has {len(self.spec.observations)}")
            info = AgentInfoProto(
                reward=float(record.reward),
                done=bool(record.done),
                max_step_reached=bool(record.max_step_reached),
                id=0,
                observations=[_observation_proto(o, s) for o, s in zip(record.observations, self.spec.observations)],
            )
            for obs, ospec in zip(record.observations, self.spec.observations):
                if tuple(np.shape(obs)) != tuple(ospec.shape):
                    raise ValueError(f"record {i}: observation {ospec.name!r} has shape {np.shape(obs)}, expected {ospec.shape}")
            if record.action_mask is not None and a.mask_size:
                info.action_mask.extend(np.asarray(record.action_mask, bool).reshape(-1).tolist())
            continuous = np.asarray(record.continuous_actions, np.float32).reshape(-1)
            discrete = np.asarray(record.discrete_actions, np.int32).reshape(-1)
            if continuous.size != a.continuous_size or discrete.size != a.num_branches:
                raise ValueError(f"record {i}: action sizes {continuous.size}, {discrete.size}; the spec has {a.continuous_size}, {a.num_branches}")
            action = AgentActionProto(continuous_actions=continuous.tolist(), discrete_actions=discrete.tolist())
            chunks.append(_delimited(AgentInfoActionPairProto(agent_info=info, action_info=action)))
            self._reward_sum += float(record.reward)
        self._file.seek(0, os.SEEK_END)
        self._file.write(b"".join(chunks))
        self.number_steps += len(records)
        self.number_episodes += 1
        self._write_meta()
        self._file.flush()

    def close(self) -> None:
        """Writes the final meta record and closes the file (idempotent)."""
        if self._file.closed:
            return
        self._write_meta()
        self._file.close()

    def __enter__(self) -> "DemonstrationWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
