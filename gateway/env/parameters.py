"""Environment parameter values as the gateway sets them on Unity's EnvironmentParametersChannel.

Why: a parameter is either a constant or a sampler that Unity draws from at every episode
(domain randomization). The trainer decides them (``tandem.v1.EnvironmentParameters``,
actor mode) and remote-control clients set constants (``SetEnvironmentParameters``);
either way an instance remembers the values (to set them again after a restart) and
hands them to mlagents-envs' channel, whose setters write the bytes Unity reads.
A ``ParameterValue`` is a small frozen dataclass so that it crosses the worker pipe
cheaply and compares by value (an instance skips values it already has).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tandem.v1 import trainer_pb2

#: the largest magnitude of an environment parameter value: far inside float32's range
#: (3.4e38, the type Unity reads), so that a scene's arithmetic on a value stays finite
MAX_MAGNITUDE = 1e9
#: the longest environment parameter name (ML-Agents' names are a few words)
MAX_NAME_CHARS = 256

CONSTANT = "constant"
UNIFORM = "uniform"
GAUSSIAN = "gaussian"
MULTIRANGE_UNIFORM = "multirangeuniform"


@dataclass(frozen=True, slots=True)
class ParameterValue:
    """One parameter's value.

    Attributes:
        kind: ``constant``, ``uniform``, ``gaussian`` or ``multirangeuniform``.
        values: ``(value,)``, ``(min, max)``, ``(mean, st_dev)`` or ``(min_0, max_0, min_1, ...)``.
        seed: the sampler's seed (unused by constants).
    """

    kind: str
    values: tuple[float, ...]
    seed: int = 0

    @classmethod
    def constant(cls, value: float) -> ParameterValue:
        return cls(CONSTANT, (float(value),))


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be an environment parameter's name, or None when it can.

    Unity reads names as ASCII (mlagents-envs' channel encodes them so; another character
    fails inside the worker, after the request was acknowledged), so names are printable
    ASCII, not empty, at most ``MAX_NAME_CHARS`` characters.
    """
    if not name:
        return "parameter names must not be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a parameter name of {len(name)} characters (at most {MAX_NAME_CHARS})"
    if not (name.isascii() and name.isprintable()):
        return f"parameter name {name!r} must be printable ASCII (Unity reads names as ASCII)"
    return None


def check_value(value: float) -> str | None:
    """Why ``value`` cannot be an environment parameter's value, or None when it can (finite, bounded)."""
    if not math.isfinite(value):
        return f"must be finite, got {value}"
    if abs(value) > MAX_MAGNITUDE:
        return f"must be within [-{MAX_MAGNITUDE:g}, {MAX_MAGNITUDE:g}] (Unity computes in float32), got {value:g}"
    return None


def from_proto(message: trainer_pb2.EnvironmentParameters) -> dict[str, ParameterValue]:
    """The trainer's message as ``{name: ParameterValue}``.

    Raises:
        ValueError: a parameter without a value, or multi-range intervals that are not pairs.
    """
    out: dict[str, ParameterValue] = {}
    for name, p in sorted(message.parameters.items()):
        kind = p.WhichOneof("value")
        if kind == "constant":
            out[name] = ParameterValue(CONSTANT, (p.constant,), p.seed)
        elif kind == "uniform":
            out[name] = ParameterValue(UNIFORM, (p.uniform.min_value, p.uniform.max_value), p.seed)
        elif kind == "gaussian":
            out[name] = ParameterValue(GAUSSIAN, (p.gaussian.mean, p.gaussian.st_dev), p.seed)
        elif kind == "multirange_uniform":
            intervals = tuple(p.multirange_uniform.intervals)
            if not intervals or len(intervals) % 2:
                raise ValueError(f"environment parameter {name!r}: multirange_uniform.intervals must be (min, max) pairs")
            out[name] = ParameterValue(MULTIRANGE_UNIFORM, intervals, p.seed)
        else:
            raise ValueError(f"environment parameter {name!r}: no value")
    return out


def apply(channel, values: Mapping[str, ParameterValue]) -> None:
    """Queues ``values`` on an mlagents-envs ``EnvironmentParametersChannel`` (sent with the next step).

    Args:
        channel: the instance's ``EnvironmentParametersChannel``.
        values: the parameters to set.
    """
    for name, v in values.items():
        if v.kind == CONSTANT:
            channel.set_float_parameter(name, float(v.values[0]))
        elif v.kind == UNIFORM:
            channel.set_uniform_sampler_parameters(name, float(v.values[0]), float(v.values[1]), int(v.seed))
        elif v.kind == GAUSSIAN:
            channel.set_gaussian_sampler_parameters(name, float(v.values[0]), float(v.values[1]), int(v.seed))
        elif v.kind == MULTIRANGE_UNIFORM:
            pairs = [(float(v.values[i]), float(v.values[i + 1])) for i in range(0, len(v.values), 2)]
            channel.set_multirangeuniform_sampler_parameters(name, pairs, int(v.seed))
        else:
            raise ValueError(f"environment parameter {name!r}: unknown kind {v.kind!r}")
