"""Self-play's ghost logic (``trainer_server.self_play``): ELO arithmetic, the snapshot pool and
opponent draws, and, through a real ``TrainingApp`` (the counting learner stands in for the
algorithm only), which team learns, when snapshots join the pool, swap and change team, and
that the non-learning team's steps never reach the learner."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
import yaml

from common.specs import ActionSpec, BehaviorSpec, ObservationSpec
from test_service_support import LearnerRegistry, OnPolicyCountingLearner, make_trajectory, prepare_results
from trainer_server.app import TrainingApp, UnsupportedBehaviorError
from trainer_server.config.loading import load_run_options
from trainer_server.config.schema import SelfPlaySettings
from common.trajectory import Trajectory
from trainer_server.self_play import (
    ELO_TAG,
    GHOST_STEPS_TAG,
    GhostPool,
    expected_score,
    final_reward,
    game_over,
    game_result,
    team_id,
)
from tandem.v1 import trainer_pb2

OBS = (ObservationSpec(name="VectorSensor", shape=(6,)),)
TEAM0 = BehaviorSpec("Pong?team=0", OBS, ActionSpec(discrete_branches=(3,)))
TEAM1 = BehaviorSpec("Pong?team=1", OBS, ActionSpec(discrete_branches=(3,)))


# --------------------------------------------------------------------------- pure arithmetic


def test_team_ids_come_from_the_behavior_name_as_mlagents_parses_them() -> None:
    assert [team_id(n) for n in ("Pong?team=0", "Pong?team=1", "Goalie?team=12", "Pong")] == [0, 1, 12, 0]


def test_elo_expectation_and_results() -> None:
    assert expected_score(1200, 1200) == pytest.approx(0.5)
    assert expected_score(1600, 1200) == pytest.approx(1 / (1 + 10 ** (-400 / 400)))  # 0.909
    assert expected_score(1200, 1600) == pytest.approx(1 - expected_score(1600, 1200))
    assert [game_result(r) for r in (1.0, 0.1, 0.0, -0.5)] == [1.0, 1.0, 0.5, 0.0]


def _snapshot(version: int) -> trainer_pb2.PolicySnapshot:
    return trainer_pb2.PolicySnapshot(behavior="Pong", version=version)


def test_the_pool_is_a_ring_of_window_snapshots_each_with_the_elo_it_joined_with() -> None:
    pool = GhostPool(SelfPlaySettings(window=3), 1200.0, np.random.default_rng(0))
    for version in range(1, 6):
        pool.elos[-1] = 1200.0 + version  # the learner's ELO when the snapshot joins
        pool.save(_snapshot(version))
    assert [s.version for s in pool.snapshots] == [4, 5, 3]  # 4 and 5 took the oldest places
    assert pool.elos == [1204.0, 1205.0, 1203.0, 1205.0]  # window entries, then the learner's own


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_opponents_are_drawn_as_mlagents_draws_them_with_a_seeded_generator(ratio: float) -> None:
    pool = GhostPool(SelfPlaySettings(window=4, play_against_latest_model_ratio=ratio), 1200.0, np.random.default_rng(5))
    for version in range(1, 4):
        pool.save(_snapshot(version))
    reference = np.random.default_rng(5)  # uniform for "latest or not", then the pool index
    expected = []
    for _ in range(2000):
        expected.append(int(reference.integers(3)) if reference.uniform() < 1.0 - ratio else -1)
    drawn = [pool.choose() for _ in range(2000)]
    assert drawn == expected
    latest = drawn.count(-1) / len(drawn)
    assert latest == pytest.approx(ratio, abs=0.04)
    if ratio < 1.0:
        assert set(drawn) - {-1} == {0, 1, 2}  # every pool entry is drawn


# --------------------------------------------------------------------------- through the app


def _options(tmp_path, **self_play):
    config = tmp_path / "selfplay.yaml"
    section = {
        "trainer_type": "ppo",
        "hyperparameters": {"buffer_size": 10, "batch_size": 10},
        "max_steps": 100_000,
        "time_horizon": 16,
        "summary_freq": 1_000_000,
        "checkpoint_interval": 1_000_000,
        "self_play": {"save_steps": 20, "swap_steps": 30, "team_change": 100, "window": 3,
                      "play_against_latest_model_ratio": 0.0, **self_play},
    }
    config.write_text(yaml.safe_dump({"behaviors": {"Pong": section}}))
    args = argparse.Namespace(
        run_id="selfplay", results_dir=str(tmp_path / "results"), resume=None, force=None,
        inference=None, initialize_from=None, seed=7,
    )
    return load_run_options(config, args)


class _Game:
    """A TrainingApp with the teams of ``behaviors`` registered, fed chunk by chunk."""

    def __init__(self, options, behaviors: tuple[BehaviorSpec, ...] = (TEAM0, TEAM1)) -> None:
        self.registry = LearnerRegistry(OnPolicyCountingLearner)
        self.app = TrainingApp(options, prepare_results(options), learner_factory=self.registry)
        self.published: list[trainer_pb2.PolicySnapshot] = []
        self.app.add_snapshot_listener(self.published.append)
        self.app.start()
        self.first = {s.name: self.app.register_behavior(s) for s in behaviors}
        self.sequence = 0

    @property
    def learner(self) -> OnPolicyCountingLearner:
        return self.registry.learners["Pong"]

    @property
    def group(self):
        return self.app.self_play._groups["Pong"]

    def version(self, spec: BehaviorSpec) -> int:
        return self.app.latest_snapshot(spec.name).version

    def play(self, spec: BehaviorSpec, steps: int = 10, *, last_reward: float | None = None) -> None:
        """One chunk of ``spec`` acted by its current snapshot (a finished game when ``last_reward``)."""
        trajectory = make_trajectory(spec, steps, version=self.version(spec), done=last_reward is not None)
        if last_reward is not None:
            trajectory.rewards[-1] = last_reward
        self.sequence += 1
        self.app.submit("gw", self.sequence, spec.name, [trajectory], [])
        deadline = time.monotonic() + 30
        while self.app.last_accepted_sequence("gw") < self.sequence:
            assert time.monotonic() < deadline and self.app.error is None, self.app.error
            time.sleep(0.01)

    def close(self) -> None:
        self.app.stop()
        self.app.join(30)


@pytest.fixture
def game(tmp_path):
    g = _Game(_options(tmp_path))
    yield g
    g.close()


def test_one_learner_serves_both_teams_and_only_the_learning_teams_steps_reach_it(game) -> None:
    assert set(game.registry.learners) == {"Pong"}  # one learner for the config key
    assert game.app.self_play.controller.learning_team == 0
    first0, first1 = game.first[TEAM0.name], game.first[TEAM1.name]
    assert (first0.behavior, first1.behavior) == (TEAM0.name, TEAM1.name)
    assert first0.version != first1.version  # one version counter per group: never ambiguous
    assert dict(first0.parameters) == dict(first1.parameters)  # the initial policy on both sides
    game.play(TEAM1, 10)
    assert game.learner.step == 0 and game.group.ghost_step == 10  # counted, dropped
    assert game.group.run.stats.summarize()[GHOST_STEPS_TAG].value == 10  # TensorBoard, summed
    game.play(TEAM0, 10)  # a buffer's worth: the learner updates, team 0 gets its new snapshot
    assert game.learner.step == 10 and game.learner.updates == 1
    assert game.published[-1].behavior == TEAM0.name
    assert game.version(TEAM0) > first0.version and game.version(TEAM1) == first1.version
    assert dict(game.app.latest_snapshot(TEAM0.name).parameters) != dict(first1.parameters)
    game.play(TEAM0, 10)  # acted by the new snapshot: trained (a learner version, renumbered)
    assert game.learner.step == 20


def test_snapshots_join_the_pool_every_save_steps_and_opponents_swap_after_swap_steps_ghost_steps(game) -> None:
    group = game.group
    assert len(group.pool.snapshots) == 1  # the initial policy
    for _ in range(2):
        game.play(TEAM0)
    assert len(group.pool.snapshots) == 1  # 20 steps: not more than save_steps yet
    game.play(TEAM0)
    assert len(group.pool.snapshots) == 2 and group.last_save == 30
    before = game.version(TEAM1)
    for _ in range(3):
        game.play(TEAM1)
    assert game.version(TEAM1) == before  # 30 ghost steps: not more than swap_steps
    game.play(TEAM1)
    assert game.version(TEAM1) > before and group.last_swap == 40  # ratio 0: a pool entry
    swapped = game.app.latest_snapshot(TEAM1.name)
    assert group.pool.opponent in (0, 1)
    assert dict(swapped.parameters) == dict(group.pool.snapshots[group.pool.opponent].parameters)
    assert game.learner.step == 30  # none of it trained


def test_the_learning_team_changes_after_team_change_learner_steps(game) -> None:
    for _ in range(10):
        game.play(TEAM0)
    assert game.app.self_play.controller.learning_team == 0  # 100 steps: not more than team_change
    game.play(TEAM0)
    assert game.app.self_play.controller.learning_team == 1
    # team 1 acts with the learner's latest policy now, team 0 with a pool entry
    assert dict(game.app.latest_snapshot(TEAM1.name).parameters) == dict(game.group.latest.parameters)
    step = game.learner.step
    game.play(TEAM0)
    assert game.learner.step == step  # team 0 is a ghost now
    game.play(TEAM1)
    assert game.learner.step == step + 10


def test_elo_follows_the_learning_teams_results_against_its_opponent(game) -> None:
    group = game.group
    game.play(TEAM0, 5, last_reward=1.0)  # a win against the initial policy (pool entry 0, 1200)
    assert group.pool.current_elo == pytest.approx(1200.5) and group.pool.elos[0] == pytest.approx(1199.5)
    game.play(TEAM0, 5, last_reward=-1.0)  # a loss, 1200.5 against 1199.5
    change = 0.0 - expected_score(1200.5, 1199.5)
    assert group.pool.current_elo == pytest.approx(1200.5 + change)
    assert group.pool.elos[0] == pytest.approx(1199.5 - change)
    game.play(TEAM1, 5, last_reward=1.0)  # the ghost team's games do not count
    assert group.pool.current_elo == pytest.approx(1200.5 + change)
    summary = group.run.stats.summarize()
    assert summary[ELO_TAG].count == 2 and summary[ELO_TAG].mean == pytest.approx((1200.5 + 1200.5 + change) / 2)


def test_interrupted_games_do_not_count_for_elo(game) -> None:
    trajectory = make_trajectory(TEAM0, 5, version=game.version(TEAM0), done=True)
    trajectory.interrupted = True
    trajectory.rewards[-1] = 1.0
    game.app.submit("gw", 1, TEAM0.name, [trajectory], [])
    deadline = time.monotonic() + 30
    while game.app.last_accepted_sequence("gw") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert game.group.pool.current_elo == 1200.0


def test_latest_opponent_games_leave_elo_unchanged(tmp_path) -> None:
    g = _Game(_options(tmp_path, play_against_latest_model_ratio=1.0, swap_steps=1))
    try:
        g.play(TEAM1, 5)  # more than swap_steps ghost steps: the next opponent is the latest policy
        assert g.group.pool.opponent == -1
        g.play(TEAM0, 5, last_reward=1.0)
        assert g.group.pool.current_elo == pytest.approx(1200.0)  # its own entry: +0.5 - 0.5
    finally:
        g.close()


def test_teams_of_one_key_must_share_observations_and_actions(game) -> None:
    other = BehaviorSpec("Pong?team=2", OBS, ActionSpec(discrete_branches=(4,)))
    with pytest.raises(UnsupportedBehaviorError, match="self-play teams of 'Pong' must share observations and actions"):
        game.app.register_behavior(other)


# --------------------------------------------------------------------------- asymmetric games

STRIKER = BehaviorSpec("Striker?team=0", OBS, ActionSpec(discrete_branches=(3,)))
GOALIE = BehaviorSpec("Goalie?team=1", (ObservationSpec(name="VectorSensor", shape=(5,)),), ActionSpec(discrete_branches=(3,)))


def test_an_asymmetric_game_rotates_the_learning_team_across_its_config_keys(tmp_path) -> None:
    """``Striker?team=0`` and ``Goalie?team=1``: two keys, two learners, one learning team at a time."""
    config = tmp_path / "asymmetric.yaml"
    section = {
        "trainer_type": "ppo", "hyperparameters": {"buffer_size": 10, "batch_size": 10}, "max_steps": 100_000,
        "time_horizon": 16, "summary_freq": 1_000_000, "checkpoint_interval": 1_000_000,
        "self_play": {"save_steps": 20, "swap_steps": 30, "team_change": 40, "window": 3},
    }
    config.write_text(yaml.safe_dump({"default_settings": section, "behaviors": {"Striker": {}, "Goalie": {}}}))
    args = argparse.Namespace(
        run_id="asym", results_dir=str(tmp_path / "results"), resume=None, force=None,
        inference=None, initialize_from=None, seed=7,
    )
    g = _Game(load_run_options(config, args), (STRIKER, GOALIE))
    try:
        controller = g.app.self_play.controller
        striker, goalie = g.registry.learners["Striker"], g.registry.learners["Goalie"]
        groups = g.app.self_play._groups
        assert controller.learning_team == 0
        g.play(GOALIE, 10)
        assert goalie.step == 0 and groups["Goalie"].ghost_step == 10  # the goalie is the ghost
        g.play(STRIKER, 5, last_reward=1.0)  # the striker wins against the goalie's initial policy
        assert groups["Striker"].pool.current_elo == pytest.approx(1200.5)
        assert groups["Goalie"].pool.elos[0] == pytest.approx(1199.5)  # the opponent entry lost it
        for _ in range(4):
            g.play(STRIKER, 10)
        assert striker.step == 45 and controller.learning_team == 1  # 45 > team_change: the goalie learns
        goalie_snapshot = g.app.latest_snapshot(GOALIE.name)
        assert dict(goalie_snapshot.parameters) == dict(groups["Goalie"].latest.parameters)
        g.play(STRIKER, 10)
        assert striker.step == 45  # the striker acts with a past snapshot now
        g.play(GOALIE, 10)
        assert goalie.step == 10
    finally:
        g.close()


def test_teams_dropped_before_any_experience_start_afresh_when_they_come_back(game) -> None:
    """A gateway that announced both teams and left before any experience: the group is dropped,
    and the next registration makes a new learner that the controller rates."""
    old = game.group
    for spec in (TEAM0, TEAM1):
        game.app.release_behavior(spec.name)
    assert game.app.behaviors() == []
    for spec in (TEAM0, TEAM1):
        game.app.register_behavior(spec)
    assert game.group is not old
    game.play(TEAM0, 5, last_reward=1.0)
    assert game.group.pool.current_elo == pytest.approx(1200.5)
    assert game.group.pool.elos[0] == pytest.approx(1199.5)  # the new group's entry, not the old one's
    assert old.pool.elos[0] == 1200.0



def test_a_group_game_counts_once_the_group_ended_with_the_group_reward_in_its_result() -> None:
    rewards = np.array([0.0, 0.1], np.float32)
    common = dict(
        instance=0, agent_id=1, observations=[np.zeros((2, 1), np.float32)], next_observations=[np.zeros(1, np.float32)],
        continuous_actions=np.zeros((2, 0), np.float32), discrete_actions=np.zeros((2, 1), np.int32),
        log_probs=np.zeros(2, np.float32), rewards=rewards, action_masks=np.zeros((2, 0), bool),
        policy_versions=np.zeros(2, np.int64),
    )
    won = Trajectory(**common, done=True, group_rewards=np.array([0.0, 1.0], np.float32), group_id=3)
    assert game_over(won) and final_reward(won) == pytest.approx(1.1)
    lost = Trajectory(**common, done=True, group_rewards=np.array([0.0, -1.0], np.float32), group_id=3)
    assert game_result(final_reward(lost)) == 0.0
    assert not game_over(Trajectory(**common, done=True, group_continues=True, group_id=3))  # mates still playing
    assert not game_over(Trajectory(**common, done=True, interrupted=True))
    assert not game_over(Trajectory(**common, done=False))
    assert final_reward(Trajectory(**common, done=True)) == pytest.approx(0.1)  # no group reward collected
