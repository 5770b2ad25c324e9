"""Environment parameters in actor mode: the trainer's values reach Unity (the stand-in's stats say so),
before the first acting; a lesson change with require_reset resets; a gateway joining mid-lesson gets it."""

from __future__ import annotations

import pytest

from fake_trainer import FakeTrainerServer, TrainerState
from gateway_helpers import environment_options, running_gateway
from test_actor import actor_options, decoded
from tandem.v1 import trainer_pb2


def _parameters(gravity: float, mass: tuple[float, float], generation: int, reset: bool = False):
    message = trainer_pb2.EnvironmentParameters(generation=generation, reset=reset)
    message.parameters["gravity"].constant = gravity
    message.parameters["mass"].uniform.min_value, message.parameters["mass"].uniform.max_value = mass
    message.parameters["mass"].seed = 5
    return message


def _stats_of(state: TrainerState, gateway_id: str, key: str, after: int = 0) -> list[float]:
    """A stat's values in one gateway's chunks after sequence ``after``; for ``wait_for`` predicates,
    which run holding the state's lock."""
    chunks = [c for (g, q), c in sorted(state.chunks.items()) if g == gateway_id and q > after]
    return [s.value for c in chunks for s in c.stats if s.key == key]


def _gateway_chunks(state: TrainerState, gateway_id: str, after: int = 0) -> list:
    """(chunk, decoded trajectories) of one gateway's chunks after sequence ``after``."""
    with state.lock:
        mine = {id(c) for (g, q), c in state.chunks.items() if g == gateway_id and q > after}
    return [(c, ts) for c, ts in decoded(state) if id(c) in mine]


def _stats(chunks, key: str) -> list[float]:
    return [s.value for c, _ in chunks for s in c.stats if s.key == key]


@pytest.mark.slow
def test_trainer_parameters_reach_unity_before_acting_and_a_reset_lesson_applies_at_once():
    state = TrainerState(time_horizon=16)
    state.parameters = _parameters(20.0, (2.0, 3.0), generation=1)
    trainer = FakeTrainerServer(state)
    try:
        with running_gateway(environment_options(), actor=actor_options(trainer.address)) as first:
            gw1 = first.actor.gateway_id
            assert state.wait_for(lambda s: len(_stats_of(s, gw1, "Environment/Mass")) >= 3, 90)
            before = _gateway_chunks(state, gw1)
            assert _stats(before, "Environment/Gravity")[-1] == pytest.approx(20.0)
            masses = [m for m in _stats(before, "Environment/Mass") if m != 1.0]  # 1.0: the default of the first reset
            assert masses and all(2.0 <= m <= 3.0 for m in masses)
            trajectories = [t for _, ts in before for t in ts]
            # acting began after the trainer's values were applied: nothing was cut short by their reset
            assert not [t for t in trajectories if t.interrupted]

            # a lesson change with require_reset: Unity gets the new values, open episodes end interrupted
            last = max(c.sequence for c, _ in before)
            state.push_parameters(_parameters(5.0, (4.0, 5.0), generation=2, reset=True))
            assert state.wait_for(lambda s: 5.0 in _stats_of(s, gw1, "Environment/Gravity", last), 90)
            assert state.wait_for(
                lambda s: any(4.0 <= m <= 5.0 for m in _stats_of(s, gw1, "Environment/Mass", last)), 90
            )
            after = [t for _, ts in _gateway_chunks(state, gw1, last) for t in ts]
            assert [t for t in after if t.interrupted], "the reset ended the open episodes as interrupted"

            # a gateway joining mid-lesson gets the current values before it acts
            with running_gateway(environment_options(), actor=actor_options(trainer.address)) as second:
                gw2 = second.actor.gateway_id
                assert state.wait_for(lambda s: len(_stats_of(s, gw2, "Environment/Mass")) >= 3, 90)
                joined = _gateway_chunks(state, gw2)
                assert _stats(joined, "Environment/Gravity")[-1] == pytest.approx(5.0)
                assert all(4.0 <= m <= 5.0 for m in _stats(joined, "Environment/Mass") if m != 1.0)
                assert not [t for _, ts in joined for t in ts if t.interrupted]
    finally:
        trainer.stop()
