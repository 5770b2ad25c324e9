"""Side-channel bytes as mlagents-envs' own channels write and read them."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from mlagents_envs.side_channel import OutgoingMessage
from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel
from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel
from mlagents_envs.side_channel.float_properties_channel import FloatPropertiesChannel
from mlagents_envs.side_channel.raw_bytes_channel import RawBytesChannel
from mlagents_envs.side_channel.side_channel_manager import SideChannelManager
from mlagents_envs.side_channel.stats_side_channel import StatsAggregationMethod, StatsSideChannel

from unity_standin.side_channels import STATS_SUM, SideChannelError, SideChannels, split_messages


def _python_bytes(*channels) -> bytes:
    return bytes(SideChannelManager(list(channels)).generate_side_channel_messages())


def test_engine_configuration_is_applied():
    engine = EngineConfigurationChannel()
    engine.set_configuration_parameters(width=128, height=96, quality_level=2, time_scale=20.0, target_frame_rate=30)
    channels = SideChannels()
    channels.process(_python_bytes(engine))
    assert (channels.engine.width, channels.engine.height) == (128, 96)
    assert channels.engine.quality_level == 2
    assert channels.engine.time_scale == 20.0
    assert channels.engine.target_frame_rate == 30


def test_environment_parameters_floats_and_samplers():
    params = EnvironmentParametersChannel()
    params.set_float_parameter("mass", 2.5)
    params.set_uniform_sampler_parameters("gravity", 5.0, 6.0, seed=1)
    params.set_gaussian_sampler_parameters("scale", 1.0, 0.1, seed=2)
    params.set_multirangeuniform_sampler_parameters("gridSize", [(3.0, 4.0), (7.0, 8.0)], seed=3)
    channels = SideChannels()
    channels.process(_python_bytes(params))
    parameters = channels.parameters
    assert np.all(parameters.get("mass", 1.0, 3) == 2.5)
    assert np.all(parameters.get("unset", 9.0, 2) == 9.0)
    gravity = parameters.get("gravity", 0.0, 100)
    assert gravity.min() >= 5.0 and gravity.max() <= 6.0 and len(set(gravity)) > 50
    assert abs(parameters.get("scale", 0.0, 1000).mean() - 1.0) < 0.05
    sizes = parameters.get("gridSize", 0.0, 200)
    assert np.all(((sizes >= 3) & (sizes <= 4)) | ((sizes >= 7) & (sizes <= 8)))
    # a later fixed value replaces the sampler
    params.set_float_parameter("gravity", 1.0)
    channels.process(_python_bytes(params))
    assert np.all(parameters.get("gravity", 0.0, 4) == 1.0)


def test_stats_are_read_by_the_python_stats_channel():
    channels = SideChannels()
    channels.add_stat("Environment/Drops", 3.0, STATS_SUM)
    channels.add_stat("Environment/Gravity", 9.81)
    stats = StatsSideChannel()
    SideChannelManager([stats]).process_side_channel_message(channels.take_outgoing())
    received = stats.get_and_reset_stats()
    assert received["Environment/Drops"] == [(3.0, StatsAggregationMethod.SUM)]
    assert received["Environment/Gravity"][0][1] == StatsAggregationMethod.AVERAGE
    assert abs(received["Environment/Gravity"][0][0] - 9.81) < 1e-5
    assert channels.take_outgoing() == b""


def test_float_properties_and_unknown_channels():
    props = FloatPropertiesChannel()
    props.set_property("speed", 3.0)
    unknown = RawBytesChannel(uuid.uuid4())
    unknown.send_raw_data(bytearray(b"anything"))
    channels = SideChannels()
    channels.process(_python_bytes(props, unknown))
    assert channels.float_properties == {"speed": 3.0}


def test_malformed_bytes_raise_in_split_and_are_ignored_by_process():
    params = EnvironmentParametersChannel()
    params.set_float_parameter("mass", 2.0)
    data = _python_bytes(params)
    with pytest.raises(SideChannelError):
        split_messages(data[:-3])
    channels = SideChannels()
    channels.process(data[:-3])  # logged and skipped, no crash
    assert channels.parameters.floats == {}
    # a well-framed but garbled payload is skipped too
    broken = OutgoingMessage()
    broken.write_int32(2)
    channels.process(_python_bytes_of(params.channel_id, bytes(broken.buffer)))
    assert channels.parameters.floats == {}


def _python_bytes_of(channel_id: uuid.UUID, payload: bytes) -> bytes:
    import struct

    return channel_id.bytes_le + struct.pack("<i", len(payload)) + payload
