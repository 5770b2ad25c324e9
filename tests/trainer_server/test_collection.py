"""Flow control (``trainer_server.collection``): grants per policy version and windows.

The first tests drive ``CollectionControl`` event by event; the simulation tests run
gateways that follow their grants (with the overshoot a whole step of agents causes)
against trainers that take chunks in slowly or fast, and check what the learner trains on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pytest

from trainer_server.collection import DEFAULT_WINDOW, CollectionControl, Coupling, Grant, coupling_for
from trainer_server.config.loading import trainer_settings_from_dict

BEHAVIOR = "3DBall?team=0"


class Gateway:
    """A ``Collector`` that records its grants."""

    def __init__(self, weight: int = 1) -> None:
        self.weight = weight
        self.grants: list[Grant] = []

    def send_grant(self, grant: Grant) -> None:
        self.grants.append(grant)

    def total(self, version: int | None = None) -> int:
        return sum(g.agent_steps for g in self.grants if version is None or g.policy_version == version)


def per_version(budget=100, max_steps=10_000) -> Coupling:
    return Coupling(True, budget, max_steps, 0)


def window(budget=100, max_steps=10_000, max_lag=None) -> Coupling:
    return Coupling(False, budget, max_steps, max_lag)


def control_with(coupling: Coupling, *gateways: Gateway, learner_step: int = 0) -> CollectionControl:
    control = CollectionControl()
    control.add_behavior(BEHAVIOR, coupling, version=1, learner_step=learner_step, finished=False)
    for g in gateways:
        control.announce(g, BEHAVIOR)
    return control


# --------------------------------------------------------------------------- per version


def test_one_gateway_gets_the_update_budget_for_the_current_version_then_waits_for_the_update():
    g = Gateway()
    control = control_with(per_version(100), g)
    assert g.grants == [Grant(BEHAVIOR, 1, 100)]
    control.received(g, BEHAVIOR, {1: 60}, 0)
    control.received(g, BEHAVIOR, {1: 45}, 0)  # overshoot: a whole step of agents
    assert len(g.grants) == 1 and control.collected(BEHAVIOR) == 105
    control.updated(BEHAVIOR, version=2, learner_step=105)
    assert g.grants[-1] == Grant(BEHAVIOR, 2, 100) and control.collected(BEHAVIOR) == 0


def test_the_budget_is_shared_by_instance_count_and_sums_to_what_the_update_needs():
    gateways = [Gateway(1), Gateway(2), Gateway(1)]
    control = control_with(per_version(101), *gateways)
    totals = sorted(g.total(1) for g in gateways)
    # shares are planned when each gateway announces: the first one gets everything, later
    # ones nothing until credit comes back; after a version change the split follows weights
    assert sum(totals) == 101
    control.updated(BEHAVIOR, version=2, learner_step=101)
    shares = {g.weight: [] for g in gateways}
    for g in gateways:
        shares[g.weight].append(g.total(2))
    assert sum(g.total(2) for g in gateways) == 101
    assert shares[2][0] in (50, 51) and all(s in (25, 26) for s in shares[1])


def test_a_gateway_that_disconnects_with_credit_does_not_stall_the_others():
    a, b = Gateway(), Gateway()
    control = control_with(per_version(100), a, b)
    control.updated(BEHAVIOR, version=2, learner_step=0)  # a fresh split: 50 / 50
    assert a.total(2) == 50 and b.total(2) == 50
    control.received(b, BEHAVIOR, {2: 50}, 0)
    control.disconnect(a)  # a leaves holding 50 unused steps
    assert b.total(2) == 100 and control.outstanding(BEHAVIOR) == {b: 50}


def test_returned_credit_is_granted_again():
    a, b = Gateway(), Gateway()
    control = control_with(per_version(100), a, b)
    control.updated(BEHAVIOR, version=2, learner_step=0)
    control.received(a, BEHAVIOR, {2: 30}, returned=20)  # paused: 30 sent, 20 given back
    assert a.total(2) + b.total(2) == 120  # the 20 went out again
    assert sum(control.outstanding(BEHAVIOR).values()) == 70


def test_stale_steps_do_not_count_toward_the_current_version():
    g = Gateway()
    control = control_with(per_version(100), g)
    control.updated(BEHAVIOR, version=2, learner_step=100)
    control.received(g, BEHAVIOR, {1: 40, 2: 10}, 0)
    assert control.collected(BEHAVIOR) == 10


def test_nothing_is_granted_past_max_steps():
    g = Gateway()
    control = control_with(per_version(100, max_steps=1030), g, learner_step=1000)
    assert g.total() == 30


def test_a_finished_behavior_tells_every_gateway_and_every_later_one():
    a, b = Gateway(), Gateway()
    control = control_with(per_version(), a)
    control.finished(BEHAVIOR)
    assert a.grants[-1].finished
    control.announce(b, BEHAVIOR)
    assert b.grants == [Grant(BEHAVIOR, 0, 0, finished=True)]
    control.updated(BEHAVIOR, version=2, learner_step=0)  # (an update racing the end) grants nothing
    assert [g.agent_steps for g in a.grants] == [100, 0] and len(b.grants) == 1


def test_a_resumed_buffer_counts_toward_the_first_update():
    g = Gateway()
    control = CollectionControl()
    control.add_behavior(BEHAVIOR, per_version(100), version=5, learner_step=460, finished=False, held=60)
    control.announce(g, BEHAVIOR)
    assert g.grants == [Grant(BEHAVIOR, 5, 40)]


# --------------------------------------------------------------------------- window


def test_a_window_is_topped_up_once_the_learner_has_taken_half_of_it_in():
    g = Gateway()
    control = control_with(window(100), g)
    assert g.grants == [Grant(BEHAVIOR, 0, 100)]
    control.received(g, BEHAVIOR, {1: 60, 2: 0}, 0)
    assert g.total() == 100  # 40 outstanding + 60 queued: nothing more
    control.taken_in(g, BEHAVIOR, 60, learner_step=60)
    assert g.total() == 160  # held 40 <= 50: topped up to 100


def test_a_slow_learner_holds_the_window():
    g = Gateway()
    control = control_with(window(100), g)
    control.received(g, BEHAVIOR, {1: 100}, 0)
    control.received(g, BEHAVIOR, {1: 4}, 0)  # overshoot
    assert g.total() == 100  # nothing was taken in: no more credit


def test_window_grants_stop_at_max_steps():
    g = Gateway()
    control = control_with(window(100, max_steps=150), g)
    control.received(g, BEHAVIOR, {1: 100}, 0)
    control.taken_in(g, BEHAVIOR, 100, learner_step=100)
    assert g.total() == 150


# --------------------------------------------------------------------------- coupling


def test_coupling_from_settings():
    ppo = trainer_settings_from_dict({"hyperparameters": {"buffer_size": 1200, "batch_size": 64}, "max_steps": 9000})
    assert coupling_for(ppo, on_policy=True) == Coupling(True, 1200, 9000, 0)
    asynchronous = trainer_settings_from_dict(
        {"hyperparameters": {"buffer_size": 1200, "batch_size": 64}, "tandem": {"coupling": "async", "max_policy_lag": 3}}
    )
    assert coupling_for(asynchronous, on_policy=True) == Coupling(False, 1200, 500000, 3)
    sac = trainer_settings_from_dict({"trainer_type": "sac"})
    assert coupling_for(sac, on_policy=False) == Coupling(False, DEFAULT_WINDOW, 500000, None)
    sac_window = trainer_settings_from_dict({"trainer_type": "sac", "tandem": {"collection_window": 512}})
    assert coupling_for(sac_window, on_policy=False).budget == 512


@pytest.mark.parametrize(
    "coupling, versions, current, expected",
    [
        (per_version(), [3, 3, 4, 4], 4, 2),
        (per_version(), [4, 4], 4, 0),
        (per_version(), [3, 3], 4, 2),
        (per_version(), [5, 5], 4, 2),  # another run's policy: dropped
        (window(max_lag=2), [1, 2, 3, 4], 4, 1),
        (window(max_lag=None), [1, 2], 40, 0),
    ],
)
def test_first_fresh_step(coupling, versions, current, expected):
    assert coupling.first_fresh(np.array(versions), current) == expected


# --------------------------------------------------------------------------- simulations


@dataclass(eq=False)  # compared and hashed by identity, as a connection
class SimGateway:
    """A gateway that follows its grants: each tick it steps ``agents`` agents if it has
    credit (per version: for the version it acts with), sends a chunk every ``chunk`` steps,
    and, out of credit, sends what it holds and pauses."""

    weight: int
    agents: int
    chunk: int = 64
    credit: int = 0
    credit_version: int = 0
    acting_version: int = 1
    held: list[int] = field(default_factory=list)  # versions of collected, unsent steps
    grants: list[Grant] = field(default_factory=list)
    collected: int = 0

    def send_grant(self, grant: Grant) -> None:
        self.grants.append(grant)

    def tick(self, control: CollectionControl, trainer: SimTrainer) -> None:
        for grant in self.grants:
            if grant.policy_version > self.credit_version:
                self.credit_version, self.credit = grant.policy_version, grant.agent_steps
            elif grant.policy_version == self.credit_version:
                self.credit += grant.agent_steps
        self.grants.clear()
        self.acting_version = trainer.version  # the snapshot arrives before its grant
        if self.credit <= 0:
            self.send(control, trainer)
            return
        self.credit -= self.agents
        self.collected += self.agents
        self.held += [self.acting_version] * self.agents
        if len(self.held) >= self.chunk:
            self.send(control, trainer)

    def send(self, control: CollectionControl, trainer: SimTrainer) -> None:
        if not self.held:
            return
        versions, counts = np.unique(self.held, return_counts=True)
        control.received(self, BEHAVIOR, dict(zip(versions.tolist(), counts.tolist())), 0)
        trainer.queue.append((self, list(self.held)))
        self.held.clear()


@dataclass
class SimTrainer:
    """Takes one chunk in every ``every`` ticks; per version it updates at ``budget`` steps
    and drops stale steps, as ``BehaviorRun`` does; a window learner just counts."""

    coupling: Coupling
    every: int
    version: int = 1
    step: int = 0
    buffered: int = 0
    trained_lags: list[int] = field(default_factory=list)
    dropped: int = 0
    updates: int = 0
    queue: deque = field(default_factory=deque)

    def tick(self, control: CollectionControl, now: int) -> None:
        if now % self.every or not self.queue:
            return
        gateway, versions = self.queue.popleft()
        for v in versions:
            if self.coupling.first_fresh(np.array([v]), self.version):
                self.dropped += 1
                continue
            self.trained_lags.append(self.version - v)
            self.step += 1
            self.buffered += 1
            if self.coupling.per_version and self.buffered >= self.coupling.budget:
                self.updates += 1
                self.version += 1
                self.buffered = 0
                control.updated(BEHAVIOR, self.version, self.step)
        control.taken_in(gateway, BEHAVIOR, len(versions), self.step)


def simulate(coupling: Coupling, gateways: list[SimGateway], every: int, ticks: int) -> SimTrainer:
    control = CollectionControl()
    trainer = SimTrainer(coupling, every)
    control.add_behavior(BEHAVIOR, coupling, version=1, learner_step=0, finished=False)
    for g in gateways:
        control.announce(g, BEHAVIOR)
    for now in range(1, ticks + 1):
        for g in gateways:
            g.tick(control, trainer)
        trainer.tick(control, now)
    return trainer


@pytest.mark.parametrize("every", [1, 7])  # a fast and a slow trainer
@pytest.mark.parametrize("gateways", [[(1, 12)], [(1, 12), (2, 5)], [(1, 3), (1, 7), (3, 16)]])
def test_on_policy_trains_only_on_the_current_policy_whatever_the_gateways_and_the_trainer(every, gateways):
    sims = [SimGateway(weight, agents) for weight, agents in gateways]
    trainer = simulate(per_version(budget=600, max_steps=100_000), sims, every, ticks=3000)
    assert trainer.updates >= 3
    assert trainer.trained_lags and max(trainer.trained_lags) == 0
    # only the overshoot of the last step before a pause is ever left over: a step of agents per gateway
    assert trainer.dropped <= trainer.updates * sum(g.agents for g in sims)


def test_on_policy_sharing_follows_the_instance_counts():
    sims = [SimGateway(1, 4), SimGateway(3, 4)]
    simulate(per_version(budget=800, max_steps=1_000_000), sims, every=1, ticks=4000)
    assert 2.5 < sims[1].collected / sims[0].collected < 3.5


@pytest.mark.parametrize("every", [1, 9])
@pytest.mark.parametrize("gateways", [[(1, 12)], [(1, 12), (1, 12), (1, 4)]])
def test_a_window_bounds_how_far_collection_runs_ahead_of_the_learner(every, gateways):
    sims = [SimGateway(weight, agents) for weight, agents in gateways]
    budget = 256
    control = CollectionControl()
    trainer = SimTrainer(window(budget, max_steps=10**9), every)
    control.add_behavior(BEHAVIOR, trainer.coupling, version=1, learner_step=0, finished=False)
    for g in sims:
        control.announce(g, BEHAVIOR)
    worst = 0
    for now in range(1, 3001):
        for g in sims:
            g.tick(control, trainer)
        trainer.tick(control, now)
        ahead = sum(g.collected for g in sims) - trainer.step
        worst = max(worst, ahead)
    # each gateway holds at most its window, plus one step of agents of overshoot
    assert worst <= sum(budget + g.agents for g in sims)
    assert trainer.step > 0 and trainer.dropped == 0
    if every == 1:  # a fast learner: nobody waits for credit
        assert all(g.collected == g.agents * 3000 for g in sims)


def test_an_overshoot_is_a_debt_on_the_next_grant_not_steps_the_gateway_still_owes():
    """A window gateway that overshoots (a whole step of agents) starts its next grant in debt;
    near max_steps the trainer must not wait for steps it believes the gateway still holds."""
    g = Gateway()
    control = control_with(window(100, max_steps=210), g)
    control.received(g, BEHAVIOR, {1: 104}, 0)  # 100 granted, 104 collected: credit -4 on the gateway
    control.taken_in(g, BEHAVIOR, 104, learner_step=104)
    assert g.total() == 204  # topped up to the window: the gateway holds -4 + 104 = 100
    control.received(g, BEHAVIOR, {1: 100}, 0)  # it used them all and paused
    control.taken_in(g, BEHAVIOR, 100, learner_step=204)
    # the last 6 steps of max_steps (with the overshoot clamped away it would wait for 4 more)
    assert g.total() == 210 and control.outstanding(BEHAVIOR) == {g: 6}


# --------------------------------------------------------------------------- tagged windows (self-play)


def test_a_tagged_window_names_its_version_and_voids_older_credit_at_each_new_version():
    """Self-play's team names: window grants carry the snapshot version (a gateway ignores a
    version-0 grant once it held per-version credit) and a new version voids the old credit."""
    g = Gateway()
    control = control_with(Coupling(False, 100, 10_000, None, tagged=True), g)
    assert g.grants == [Grant(BEHAVIOR, 1, 100)]
    control.received(g, BEHAVIOR, {1: 60}, 0)
    control.taken_in(g, BEHAVIOR, 60, 60)
    assert g.grants[-1] == Grant(BEHAVIOR, 1, 60)  # topped up under the same version (added there)
    control.updated(BEHAVIOR, 2, 60)  # a swap: new snapshot, the gateway's credit is replaced
    assert g.grants[-1] == Grant(BEHAVIOR, 2, 100)
    control.received(g, BEHAVIOR, {1: 30}, 0)  # late steps of version 1 do not use version 2's credit
    assert control.outstanding(BEHAVIOR)[g] == 100


def test_set_coupling_switches_a_name_between_window_and_per_version_from_a_new_version():
    g = Gateway()
    control = control_with(Coupling(False, 300, 10_000, None, tagged=True), g)
    assert g.grants == [Grant(BEHAVIOR, 1, 300)]
    control.set_coupling(BEHAVIOR, Coupling(True, 100, 10_000, 0, tagged=True), 5, 1000, held=40)
    assert g.grants[-1] == Grant(BEHAVIOR, 5, 60)  # what the next update still lacks, for version 5
    control.received(g, BEHAVIOR, {5: 60}, 0)
    assert control.collected(BEHAVIOR) == 100
    control.set_coupling(BEHAVIOR, Coupling(False, 300, 10_000, None, tagged=True), 6, 1060)
    assert g.grants[-1].policy_version == 6 and g.grants[-1].agent_steps > 0
