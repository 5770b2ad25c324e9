"""The Unity side of ML-Agents' side channels, written from the wire format.

Why: a Unity build reads the side-channel bytes of every input (engine configuration,
environment parameters, training analytics, user channels) and writes its own (stats)
into every output. The stand-in does the same so trainers can set time scale, drive
curricula through environment parameters and receive custom stats.

Wire format (little-endian): a message is ``channel id (16 bytes, UUID bytes_le) |
int32 payload length | payload``, messages are concatenated. Inside payloads, strings are
``int32 length | ASCII bytes`` and float lists are ``int32 count | float32...``.
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass, field

import numpy as np

from common.logging import get_logger

ENGINE_CONFIGURATION = uuid.UUID("e951342c-4f7e-11ea-b238-784f4387d1f7")
ENVIRONMENT_PARAMETERS = uuid.UUID("534c891e-810f-11ea-a9d0-822485860400")
STATS = uuid.UUID("a1d8f7b7-cec8-50f9-b78b-d3e165a78520")
TRAINING_ANALYTICS = uuid.UUID("b664a4a9-d86f-5a5f-95cb-e8353a7e8356")
FLOAT_PROPERTIES = uuid.UUID("60ccf7d0-4f7e-11ea-b238-784f4387d1f7")
#: a channel no trainer registers: what a scene with its own custom side channel sends
#: (``--unknown-side-channel``)
UNKNOWN_CHANNEL = uuid.UUID("7a4d0c3e-2f0b-4c55-9d5e-5a1a6e7b0c19")

# StatsAggregationMethod values as ML-Agents numbers them.
STATS_AVERAGE = 0
STATS_MOST_RECENT = 1
STATS_SUM = 2
STATS_HISTOGRAM = 3

_log = get_logger("unity_standin.side_channels")


class SideChannelError(ValueError):
    """Raised when side-channel bytes are malformed."""


class _Reader:
    """Reads little-endian values from one message payload."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def int32(self) -> int:
        (value,) = struct.unpack_from("<i", self._data, self._offset)
        self._offset += 4
        return value

    def float32(self) -> float:
        (value,) = struct.unpack_from("<f", self._data, self._offset)
        self._offset += 4
        return value

    def string(self) -> str:
        length = self.int32()
        raw = self._data[self._offset : self._offset + length]
        if len(raw) != length:
            raise SideChannelError("string runs past the end of the message")
        self._offset += length
        return raw.decode("ascii")

    def float32_list(self) -> list[float]:
        count = self.int32()
        return [self.float32() for _ in range(count)]


def split_messages(data: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """Splits the side-channel bytes of one input into (channel id, payload) pairs.

    Raises:
        SideChannelError: when a header or payload is truncated.
    """
    messages = []
    offset = 0
    while offset < len(data):
        if offset + 20 > len(data):
            raise SideChannelError("truncated side-channel header")
        channel_id = uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))
        (length,) = struct.unpack_from("<i", data, offset + 16)
        offset += 20
        payload = bytes(data[offset : offset + length])
        if length < 0 or len(payload) != length:
            raise SideChannelError(f"side-channel message of {channel_id} is shorter than its length")
        offset += length
        messages.append((channel_id, payload))
    return messages


def pack_message(channel_id: uuid.UUID, payload: bytes) -> bytes:
    """Frames one outgoing payload for ``channel_id``."""
    return channel_id.bytes_le + struct.pack("<i", len(payload)) + payload


def stats_payload(key: str, value: float, aggregation: int) -> bytes:
    """Payload of one StatsSideChannel message: key, float value, aggregation method."""
    encoded = key.encode("ascii")
    return struct.pack("<i", len(encoded)) + encoded + struct.pack("<fi", float(value), aggregation)


@dataclass
class EngineConfiguration:
    """What the EngineConfigurationChannel set; Unity applies these to the player.

    ``target_frame_rate`` > 0 paces academy steps (``target_frame_rate * time_scale`` steps
    per second at most); the default -1 leaves stepping as fast as it goes.
    """

    width: int = 84
    height: int = 84
    quality_level: int = 5
    time_scale: float = 1.0
    target_frame_rate: int = -1
    capture_frame_rate: int = 60

    def apply(self, payload: bytes) -> None:
        reader = _Reader(payload)
        kind = reader.int32()
        if kind == 0:
            self.width, self.height = reader.int32(), reader.int32()
        elif kind == 1:
            self.quality_level = reader.int32()
        elif kind == 2:
            self.time_scale = reader.float32()
        elif kind == 3:
            self.target_frame_rate = reader.int32()
        elif kind == 4:
            self.capture_frame_rate = reader.int32()
        else:
            _log.warning("unknown engine configuration type ignored", type=kind)


@dataclass
class _Sampler:
    """A sampler sent by the trainer (ML-Agents' uniform, gaussian, multi-range uniform)."""

    kind: int
    values: tuple[float, ...]
    rng: np.random.Generator

    def sample(self, n: int) -> np.ndarray:
        if self.kind == 0:
            low, high = self.values
            return self.rng.uniform(low, high, size=n)
        if self.kind == 1:
            mean, std = self.values
            return self.rng.normal(mean, std, size=n)
        # multi-range uniform: pick an interval weighted by its length, then uniform in it
        lows = np.asarray(self.values[0::2])
        highs = np.asarray(self.values[1::2])
        widths = highs - lows
        weights = widths / widths.sum() if widths.sum() > 0 else np.full(len(lows), 1.0 / len(lows))
        which = self.rng.choice(len(lows), size=n, p=weights)
        return self.rng.uniform(lows[which], highs[which])


@dataclass
class EnvironmentParameters:
    """Values set on the EnvironmentParametersChannel (``Academy.EnvironmentParameters``).

    Tasks read them when an agent's episode begins, like the ML-Agents example scenes:
    a fixed value is returned as is, a sampler yields a fresh draw per read.
    """

    floats: dict[str, float] = field(default_factory=dict)
    samplers: dict[str, _Sampler] = field(default_factory=dict)

    def apply(self, payload: bytes) -> None:
        reader = _Reader(payload)
        key = reader.string()
        kind = reader.int32()
        if kind == 0:
            self.floats[key] = reader.float32()
            self.samplers.pop(key, None)
            _log.info("environment parameter", key=key, value=self.floats[key])
        elif kind == 1:
            seed = reader.int32()
            sampler_type = reader.int32()
            if sampler_type in (0, 1):
                values = (reader.float32(), reader.float32())
            elif sampler_type == 2:
                values = tuple(reader.float32_list())
                if len(values) < 2 or len(values) % 2:
                    raise SideChannelError(f"multi-range sampler {key!r} needs (min, max) pairs")
            else:
                _log.warning("unknown sampler type ignored", key=key, sampler_type=sampler_type)
                return
            self.samplers[key] = _Sampler(sampler_type, values, np.random.default_rng(seed))
            self.floats.pop(key, None)
            _log.info("environment parameter sampler", key=key, sampler_type=sampler_type, values=values)
        else:
            _log.warning("unknown environment parameter type ignored", key=key, type=kind)

    def get(self, key: str, default: float, n: int = 1) -> np.ndarray:
        """Returns ``n`` values of ``key`` (float64 array [n]), ``default`` when never set."""
        if key in self.samplers:
            return self.samplers[key].sample(n)
        return np.full(n, self.floats.get(key, default), dtype=np.float64)


@dataclass
class SideChannels:
    """All side-channel state of one player: what came in, and stats waiting to go out."""

    engine: EngineConfiguration = field(default_factory=EngineConfiguration)
    parameters: EnvironmentParameters = field(default_factory=EnvironmentParameters)
    float_properties: dict[str, float] = field(default_factory=dict)
    #: sent with every output besides the queued messages (``--unknown-side-channel``)
    every_output: bytes = b""
    #: an environment parameter the scene cannot take: the player dies when it is set
    #: (``--crash-on-parameter``, a scene that crashes on a value)
    fatal_parameter: str | None = None
    _outgoing: list[bytes] = field(default_factory=list)

    def process(self, data: bytes) -> None:
        """Applies every message of one input's side-channel bytes; unknown channels are ignored.

        Malformed bytes are logged and skipped: a side channel never stops the player.
        """
        try:
            messages = split_messages(data)
        except SideChannelError as err:
            _log.warning("malformed side-channel data ignored", error=str(err))
            return
        for channel_id, payload in messages:
            try:
                self._dispatch(channel_id, payload)
            except (struct.error, UnicodeDecodeError, SideChannelError) as err:
                _log.warning("malformed side-channel message ignored", channel=str(channel_id), error=str(err))
        fatal = self.fatal_parameter
        if fatal is not None and (fatal in self.parameters.floats or fatal in self.parameters.samplers):
            _log.error("the scene crashed on an environment parameter", key=fatal)
            os._exit(3)  # as a crashing player: no goodbye to the trainer
        if any(channel_id == ENGINE_CONFIGURATION for channel_id, _ in messages):
            # once per input: mlagents sends one message per setting (five for one configuration)
            _log.info("engine configuration", **self.engine.__dict__)

    def _dispatch(self, channel_id: uuid.UUID, payload: bytes) -> None:
        if channel_id == ENGINE_CONFIGURATION:
            self.engine.apply(payload)
        elif channel_id == ENVIRONMENT_PARAMETERS:
            self.parameters.apply(payload)
        elif channel_id == TRAINING_ANALYTICS:
            self._training_analytics(payload)
        elif channel_id == FLOAT_PROPERTIES:
            reader = _Reader(payload)
            key = reader.string()
            self.float_properties[key] = reader.float32()
        else:
            _log.warning("unknown side channel ignored", channel=str(channel_id))

    @staticmethod
    def _training_analytics(payload: bytes) -> None:
        # The payload is a google.protobuf.Any (TrainingEnvironmentInitialized or
        # TrainingBehaviorInitialized); Unity forwards it to its analytics, we log its type.
        from google.protobuf import any_pb2

        message = any_pb2.Any()
        try:
            message.ParseFromString(payload)
        except Exception as err:  # noqa: BLE001 - a bad analytics payload must not stop training
            _log.warning("unreadable training analytics message", error=str(err))
            return
        _log.info("training analytics received", type_url=message.type_url)

    def add_stat(self, key: str, value: float, aggregation: int = STATS_AVERAGE) -> None:
        """Queues a StatsSideChannel message, like ``Academy.Instance.StatsRecorder.Add``."""
        self._outgoing.append(pack_message(STATS, stats_payload(key, value, aggregation)))

    def take_outgoing(self) -> bytes:
        """Returns and clears the side-channel bytes for the next output."""
        data = b"".join(self._outgoing) + self.every_output
        self._outgoing.clear()
        return data
