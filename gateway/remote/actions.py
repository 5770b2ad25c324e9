"""Checks a client's ``StepRequest`` and turns it into per-instance actions.

Why: in remote-control mode, actions come from any client in any language. Every
mistake must become ``INVALID_ARGUMENT`` naming the field, before any instance is
stepped (a request is applied whole or not at all). The result is ordered like the
instance's last decision steps, with zero actions for agents the client left out,
which is what mlagents-envs expects.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common import tensor
from common.specs import BehaviorSpec
from gateway.env.instance import BehaviorActions
from gateway.env.steps import read_tensor
from tandem.v1 import gateway_pb2

_F32, _I32 = np.dtype("<f4"), np.dtype("<i4")


#: the longest name a request may carry (behavior names are a few words and a team)
MAX_NAME_CHARS = 256


class InvalidArgument(ValueError):
    """A client request that cannot be applied; the message starts with the field's path."""


def _short(name: str, limit: int = 80) -> str:
    """``repr`` of a client-given name, cut to ``limit`` characters (messages stay readable)."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} characters)"


def _positions(decision_ids: np.ndarray, agent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each of ``agent_ids`` in ``decision_ids``, and a mask of the ones found."""
    if decision_ids.size == 0:
        return np.zeros(agent_ids.shape, np.intp), np.zeros(agent_ids.shape, bool)
    sorter = np.argsort(decision_ids, kind="stable")
    where = np.searchsorted(decision_ids, agent_ids, sorter=sorter)
    where = np.minimum(where, decision_ids.size - 1)
    positions = sorter[where]
    return positions, decision_ids[positions] == agent_ids


def decode_step_request(
    request: gateway_pb2.StepRequest,
    decisions: Mapping[int, Mapping[str, np.ndarray]],
    specs: Mapping[str, BehaviorSpec],
) -> dict[int, dict[str, BehaviorActions]]:
    """Validates ``request`` against the last decision steps.

    Args:
        request: the client's StepRequest.
        decisions: for each live instance, ``{behavior: agent_ids int32 [n]}`` of the agents
            that requested a decision in the last response.
        specs: every known behavior's spec.

    Returns:
        ``{instance: {behavior: BehaviorActions}}`` with arrays ordered like the decision steps.

    Raises:
        InvalidArgument: naming the first bad field (``step.actions[i].continuous``, ...).
    """
    out: dict[int, dict[str, BehaviorActions]] = {}
    for i, entry in enumerate(request.actions):
        field = f"step.actions[{i}]"
        if entry.instance not in decisions:
            raise InvalidArgument(
                f"{field}.instance: no live environment instance {entry.instance} "
                f"(live instances: {sorted(decisions)})"
            )
        if len(entry.behavior) > MAX_NAME_CHARS:
            raise InvalidArgument(
                f"{field}.behavior: a behavior name of {len(entry.behavior)} characters (at most {MAX_NAME_CHARS})"
            )
        spec = specs.get(entry.behavior)
        if spec is None:
            raise InvalidArgument(
                f"{field}.behavior: unknown behavior {_short(entry.behavior)} (known: {sorted(specs)})"
            )
        decision_ids = decisions[entry.instance].get(entry.behavior)
        if decision_ids is None:  # mlagents-envs would refuse actions for it
            raise InvalidArgument(
                f"{field}.behavior: instance {entry.instance} has no agents of behavior {entry.behavior!r} "
                f"(its behaviors: {sorted(decisions[entry.instance])})"
            )
        if entry.behavior in out.get(entry.instance, {}):
            raise InvalidArgument(
                f"{field}: a second entry for behavior {entry.behavior!r} in instance {entry.instance}"
            )
        try:
            actions = _decode_entry(entry, field, spec, decision_ids)
        except tensor.TensorError as e:
            raise InvalidArgument(str(e)) from None
        out.setdefault(entry.instance, {})[entry.behavior] = actions
    return out


def _decode_entry(
    entry: gateway_pb2.BehaviorActions, field: str, spec: BehaviorSpec, decision_ids: np.ndarray
) -> BehaviorActions:
    if not entry.HasField("agent_ids"):
        raise InvalidArgument(f"{field}.agent_ids: required")
    agent_ids = read_tensor(entry.agent_ids, f"{field}.agent_ids", _I32, (None,))
    n = agent_ids.shape[0]
    # Cheap checks first: more ids than agents awaiting a decision cannot be right, and
    # finding out which ones are wrong (sorting, a hash of every id) costs seconds per
    # million ids, while the caller holds the one-driver lock.
    if n > decision_ids.size:
        raise InvalidArgument(
            f"{field}.agent_ids: {n} agent ids given, but {decision_ids.size} agents of behavior "
            f"{_short(spec.name)} requested a decision in instance {entry.instance}"
        )
    # The usual request answers every agent in the order of the decision steps: then the
    # client's arrays are the actions as they are (no duplicate check, no reordering).
    in_order = n == decision_ids.size and np.array_equal(agent_ids, decision_ids)
    if not in_order:
        ordered = np.sort(agent_ids)
        if n > 1 and (ordered[1:] == ordered[:-1]).any():
            raise InvalidArgument(f"{field}.agent_ids: an agent id appears more than once")
        positions, found = _positions(decision_ids, agent_ids)
        if not found.all():
            missing = agent_ids[~found][:10].tolist()
            raise InvalidArgument(
                f"{field}.agent_ids: agents {missing} of behavior {spec.name!r} did not request a decision "
                f"in instance {entry.instance}"
            )
    a = spec.action_spec
    continuous = discrete = None
    if a.continuous_size or entry.HasField("continuous"):
        if not entry.HasField("continuous"):
            raise InvalidArgument(f"{field}.continuous: required, float32 [{n}, {a.continuous_size}]")
        values = read_tensor(entry.continuous, f"{field}.continuous", _F32, (n, a.continuous_size))
        if not np.isfinite(values).all():
            raise InvalidArgument(f"{field}.continuous: contains NaN or infinity")
        continuous = values
    if a.num_branches or entry.HasField("discrete"):
        if not entry.HasField("discrete"):
            raise InvalidArgument(f"{field}.discrete: required, int32 [{n}, {a.num_branches}]")
        values = read_tensor(entry.discrete, f"{field}.discrete", _I32, (n, a.num_branches))
        if a.num_branches:
            bad = (values < 0) | (values >= np.asarray(a.discrete_branches, np.int32))
            if bad.any():
                row, branch = (int(x) for x in np.argwhere(bad)[0])
                raise InvalidArgument(
                    f"{field}.discrete: value {int(values[row, branch])} of agent "
                    f"{int(agent_ids[row])} is out of branch {branch}'s range "
                    f"[0, {a.discrete_branches[branch]})"
                )
        discrete = values
    if in_order:
        if continuous is None:
            continuous = np.zeros((n, a.continuous_size), np.float32)
        if discrete is None:
            discrete = np.zeros((n, a.num_branches), np.int32)
        return BehaviorActions(continuous=continuous, discrete=discrete)
    full_continuous = np.zeros((decision_ids.size, a.continuous_size), np.float32)
    full_discrete = np.zeros((decision_ids.size, a.num_branches), np.int32)
    if continuous is not None:
        full_continuous[positions] = continuous
    if discrete is not None:
        full_discrete[positions] = discrete
    return BehaviorActions(continuous=full_continuous, discrete=full_discrete)
