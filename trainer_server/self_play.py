"""Self-play (``self_play``): one team learns, the other teams act with past snapshots.

Why: in an adversarial game the opponents must be as strong as the learner, but not a
moving target. ML-Agents 1.1.0's ghost trainer trains one team at a time against a pool
of the learner's past snapshots, and rates the learner with ELO. Tandem keeps its
semantics and splits it over the two services: the trainer decides everything here,
and the gateways act with the snapshots it pushes, one per team behavior name, like any
other snapshot (a gateway acts with several versions of one trained policy at once).

Names and teams: a behavior name ``Soccer?team=1`` is team 1 of the config key
``Soccer`` (mlagents-envs' ``BehaviorIdentifiers``; no suffix is team 0). Every config
key with ``self_play`` is one :class:`SelfPlayGroup`: one learner (any trainer type of
``trainer_server.learning.registry``, wrapped, never named here) and one
``BehaviorRun`` under the key's name (its results folder, checkpoints, TensorBoard),
serving each of its team names through a :class:`TeamBehavior`. One
:class:`GhostController` per run queues the team ids of every group, so that in an
asymmetric game (``Striker?team=0`` and ``Goalie?team=1``, two keys) the learning team
rotates across groups as ML-Agents' GhostController does.

The rules, as in ML-Agents (steps are the group learner's steps unless said otherwise):

* **learning team**: the controller's; its names act with the learner's latest snapshot,
  pushed after every update; the others act with a ghost snapshot;
* ``save_steps``: when the learner's steps passed the last save by more than this, its
  latest snapshot joins the pool (``window`` places, overwritten in a ring; the initial
  policy is the first), with the learner's current ELO;
* ``swap_steps``: when the group's *ghost steps* (steps of its non-learning team names,
  streamed and dropped) passed the last swap by more than this, or the learning team
  changed, every non-learning team of the group gets a new opponent: the learner's
  latest snapshot with probability ``play_against_latest_model_ratio``, otherwise a
  uniformly drawn pool entry (seeded generator: ``uniform`` then ``integers``);
* ``team_change``: when the learner's steps passed the last change by more than this,
  the controller's next team learns;
* **ELO**: for every episode of the learning team that ends (not interrupted; in a
  group, once the whole group's episode ended), the result is the sign of its last
  reward plus its group reward (win 1, draw 0.5, loss 0); the change is
  ``result - 1 / (1 + 10 ** ((opponent - rating) / 400))`` (no K factor, as in ML-Agents),
  added to the learner's ELO and subtracted from the current opponent's entry in its
  group's pool (for the "latest" opponent that is the learner's own entry: no net change).
  Written to TensorBoard as ``Self-play/ELO`` (the only ``Self-play/`` tag ML-Agents
  writes), on the console (``ELO: 1234.567.``) and in ``training_status.json`` (``elo``,
  restored by ``--resume``).

Experience rule: gateways stream every team name (the trainer cannot know otherwise how
many ghost steps were played). Each published snapshot gets a version from the group's
own counter (started from the clock in milliseconds, so that a resumed run's versions are
newer than those gateways still hold); the group remembers which versions carried the learner's weights and of
which learner version. A step acted by any other version is a ghost step: counted
(``swap_steps``; TensorBoard ``Policy/Ghost Steps Dropped``, summed) and dropped before the learner; the learner's steps are renumbered to
the learner's own versions, so its coupling (on-policy lag 0, ``max_policy_lag``) holds.
Flow control: the learning team's names follow the learner's coupling, the others a
window (``trainer_server.collection.Coupling.tagged``), switched at team changes.

Differences from ML-Agents (``docs/SELF_PLAY.md``): a team change does not reset the
environments (open episodes of the former learning team are trained to their end; they
were acted by the learner); a group that reached ``max_steps`` while its team learns hands
the learning to the next team; snapshots are pushed, never loaded into a shared policy.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from typing import Callable
from urllib.parse import parse_qs, urlparse

import numpy as np

from common.logging import get_logger
from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from trainer_server import stats as stats_mod
from trainer_server.collection import DEFAULT_WINDOW, CollectionControl, Coupling
from trainer_server.config.schema import SelfPlaySettings, TrainerSettings
from tandem.v1 import trainer_pb2

_log = get_logger("trainer_server.self_play")

#: the TensorBoard tag of the learner's ELO (ML-Agents' name)
ELO_TAG = stats_mod.SELF_PLAY_ELO
#: steps acted by a ghost snapshot, dropped before the learner (a Tandem tag, summed per summary)
GHOST_STEPS_TAG = "Policy/Ghost Steps Dropped"
#: the ``training_status.json`` key of a self-play behavior's ELO (ML-Agents' StatusType.ELO)
ELO_STATUS_KEY = "elo"
#: publications remembered per group; steps acted by an older one count as ghost steps
MAX_PUBLICATIONS = 4096
#: ``publish(snapshot)``: hands a team name's new snapshot to the gateways (any thread, no lock held)
Publish = Callable[[trainer_pb2.PolicySnapshot], None]


def team_id(behavior: str) -> int:
    """The team of a fully qualified behavior name (``Soccer?team=1`` -> 1; no suffix -> 0)."""
    query = parse_qs(urlparse(behavior).query)
    values = query.get("team")
    return int(values[0]) if values else 0


def expected_score(rating: float, opponent: float) -> float:
    """The ELO expectation of a player rated ``rating`` against ``opponent`` (in [0, 1])."""
    r1 = 10.0 ** (rating / 400.0)
    r2 = 10.0 ** (opponent / 400.0)
    return r1 / (r1 + r2)


def game_result(final_reward: float) -> float:
    """Win 1, draw 0.5, loss 0 from the sign of the episode's last reward (ML-Agents' assumption)."""
    if final_reward > 0:
        return 1.0
    if final_reward < 0:
        return 0.0
    return 0.5


def game_over(trajectory: Trajectory) -> bool:
    """Whether ``trajectory`` ends a game that counts for ELO: its episode ended (not
    interrupted) and, for an agent in a group, the whole group's episode ended with it
    (ML-Agents counts a game once all group dones are reached)."""
    return trajectory.done and not trajectory.interrupted and not trajectory.group_continues


def final_reward(trajectory: Trajectory) -> float:
    """The last step's reward plus its group reward (when collected): the sign that decides
    the game, as ML-Agents' ghost trainer reads it."""
    reward = float(trajectory.rewards[-1])
    if trajectory.group_rewards is not None:
        reward += float(trajectory.group_rewards[-1])
    return reward


class GhostController:
    """The run's queue of team ids and its ELO arithmetic (one per run, shared by every group).

    The first team subscribed learns first; ``change_learning_team`` moves the learning
    team to the end of the queue and the next one learns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[int] = []
        self._learning_team = -1
        self._groups: dict[int, SelfPlayGroup] = {}

    @property
    def learning_team(self) -> int:
        with self._lock:
            return self._learning_team

    def subscribe(self, team: int, group: SelfPlayGroup) -> None:
        """``team`` plays for ``group`` (the first group of a team id keeps it, unless every team
        of that group was dropped before any experience and the group was made afresh)."""
        with self._lock:
            current = self._groups.get(team)
            if current is not None:
                if current is not group and not current.teams:
                    self._groups[team] = group
                return
            self._groups[team] = group
            if self._learning_team < 0:
                self._learning_team = team
            else:
                self._queue.append(team)

    def change_learning_team(self, step: int) -> int:
        """The next team in the queue learns; returns it."""
        with self._lock:
            if self._queue:
                self._queue.append(self._learning_team)
                self._learning_team = self._queue.pop(0)
            team = self._learning_team
        _log.info("self-play: learning team changed", team=team, step=step)
        return team

    def elo_change(self, rating: float, result: float) -> float:
        """The learner's ELO change for one game, applied to the opponents' entries here.

        Args:
            rating: the learning team's current ELO.
            result: 1 win, 0.5 draw, 0 loss (the learning team's).

        Returns:
            the change to add to the learner's ELO.
        """
        with self._lock:
            opponents = [g for team, g in self._groups.items() if team != self._learning_team]
        opponent_rating = 0.0
        for group in opponents:  # several opponent teams: the last one's rating (as ML-Agents)
            opponent_rating = group.opponent_elo()
        change = result - expected_score(rating, opponent_rating)
        for group in opponents:
            group.change_opponent_elo(change)
        return change


class GhostPool:
    """A group's snapshot pool and the ELO of each entry (pure bookkeeping, no threads).

    ``elos`` has ``window + 1`` entries: one per pool place, the last one the learner's
    own (``current_elo``). ``opponent`` is the pool index the non-learning team acts with
    (-1: the learner's latest snapshot).
    """

    def __init__(self, settings: SelfPlaySettings, initial_elo: float, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng
        self.snapshots: list[trainer_pb2.PolicySnapshot] = []
        self.elos = [float(initial_elo)] * (settings.window + 1)
        self._next = 0
        self.opponent = 0

    @property
    def current_elo(self) -> float:
        return self.elos[-1]

    def save(self, snapshot: trainer_pb2.PolicySnapshot) -> None:
        """``snapshot`` (the learner's latest) takes the next place of the ring, with the current ELO."""
        if self._next < len(self.snapshots):
            self.snapshots[self._next] = snapshot
        else:
            self.snapshots.append(snapshot)
        self.elos[self._next] = self.current_elo
        self._next = (self._next + 1) % self.settings.window

    def choose(self) -> int:
        """The next opponent: -1 (the latest) with probability ``play_against_latest_model_ratio``,
        otherwise a uniformly drawn pool index. Sets and returns ``opponent``."""
        if self.rng.uniform() < 1.0 - self.settings.play_against_latest_model_ratio:
            self.opponent = int(self.rng.integers(len(self.snapshots)))
        else:
            self.opponent = -1
        return self.opponent


@dataclasses.dataclass
class _Team:
    """One team behavior name of a group: its team, its latest snapshot, its role."""

    name: str
    team: int
    snapshot: trainer_pb2.PolicySnapshot
    learning: bool


class SelfPlayGroup:
    """One config key with ``self_play``: its learner's run, its teams, pool and ghost timing.

    Args:
        brain: the config key (behavior name without ``?team=``).
        spec: the first team's spec (every team must match its observations and actions).
        settings: the key's trainer settings (``self_play`` set).
        make_run: builds the learner's ``BehaviorRun`` for a spec named ``brain``, with the
            callback its updates publish through.
        controller: the run's ghost controller.
        collection: the run's flow control.
        publish: hands a team name's snapshot to the gateways.
        seed: seeds the opponent draws.
        initial_elo: the ELO to start from (``--resume``: the saved one).
    """

    def __init__(
        self,
        brain: str,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        make_run: Callable[[BehaviorSpec, Callable[[trainer_pb2.PolicySnapshot], None]], object],
        controller: GhostController,
        collection: CollectionControl,
        publish: Publish,
        seed: int,
        initial_elo: float | None = None,
    ) -> None:
        assert settings.self_play is not None
        self.brain = brain
        self.settings = settings
        self.self_play = settings.self_play
        self.controller = controller
        self._collection = collection
        self._publish_out = publish
        self._lock = threading.RLock()
        self._spec = spec
        self.teams: dict[str, _Team] = {}
        #: publication version -> learner version (None: a ghost snapshot)
        self._publications: OrderedDict[int, int | None] = OrderedDict()
        # a gateway ignores a snapshot whose version equals the one it holds (a resend): versions
        # start from the clock (ms), above those of an earlier run (--resume, live gateways)
        self._next_publication = int(time.time() * 1000)
        self.ghost_step = 0
        self.last_save = 0
        self.last_swap = 0
        self.last_team_change = 0
        self.learning_team: int | None = None
        self._finished = False
        #: ``finish`` calls so far (one per team name) and whether any of them asked to save
        self._finish_calls = 0
        self._finish_save = False
        #: the learner's checkpoint step the ELO was last recorded with
        self._elo_saved_step = -1
        elo = self.self_play.initial_elo if initial_elo is None else initial_elo
        self.pool = GhostPool(self.self_play, elo, np.random.default_rng(seed))
        self.run = make_run(dataclasses.replace(spec, name=brain), self._learner_published)
        self.latest = self.run.snapshot
        self.pool.save(self.latest)  # the initial policy is the pool's first entry

    # ------------------------------------------------------------------ teams (handler threads)

    def add_team(self, spec: BehaviorSpec) -> trainer_pb2.PolicySnapshot:
        """Registers a team behavior name; returns the snapshot it acts with first.

        Raises:
            ValueError: its observations or actions differ from the group's.
        """
        if spec.observations != self._spec.observations or spec.action_spec != self._spec.action_spec:
            raise ValueError(
                f"self-play teams of {self.brain!r} must share observations and actions: {spec.name} differs "
                f"from {self._spec.name} (an asymmetric game uses one config key per behavior)"
            )
        team = team_id(spec.name)
        self.controller.subscribe(team, self)
        with self._lock:
            if self.learning_team is None:
                self.learning_team = self.controller.learning_team
            existing = self.teams.get(spec.name)
            if existing is not None:
                return existing.snapshot
            learning = team == self.learning_team
            source = self.latest if learning else self._opponent_snapshot()
            entry = _Team(spec.name, team, self._publication(spec.name, source, learning), learning)
            self.teams[spec.name] = entry
            self._collection.add_behavior(
                spec.name, self._coupling(learning), entry.snapshot.version, self.run.learner.step,
                finished=self.run.done, held=self._held() if learning else 0,
            )
        _log.info("self-play team", behavior=spec.name, team=team, learning=learning, group=self.brain)
        return entry.snapshot

    def remove_team(self, name: str) -> bool:
        """A team name's registration was dropped; True when the group has no team left."""
        with self._lock:
            self.teams.pop(name, None)
            return not self.teams

    def snapshot(self, name: str) -> trainer_pb2.PolicySnapshot:
        with self._lock:
            return self.teams[name].snapshot

    # ------------------------------------------------------------------ experience (training thread)

    def consume(self, name: str, trajectories: list[Trajectory], gateway_id: str, sequence: int) -> None:
        """A chunk of team ``name``: ghost steps counted and dropped, the learner's steps trained,
        ELO updated for the learner's finished games; then the ghost timing advances."""
        learned: list[Trajectory] = []
        ghost = 0
        with self._lock:
            for trajectory in trajectories:
                versions = np.array(
                    [self._learner_version(int(v)) for v in trajectory.policy_versions], dtype=np.int64
                )
                ghost_rows = np.flatnonzero(versions < 0)
                start = int(ghost_rows[-1]) + 1 if ghost_rows.size else 0
                ghost += start
                if start >= len(trajectory):
                    continue
                tail = dataclasses.replace(trajectory.tail(start), policy_versions=versions[start:])
                learned.append(tail)
            self.ghost_step += ghost
        if ghost:
            self.run.stats.add(GHOST_STEPS_TAG, float(ghost), stats_mod.Aggregation.SUM)
        for trajectory in learned:
            if game_over(trajectory):
                self._record_game(final_reward(trajectory))
        if learned:
            self.run.consume(learned, gateway_id, sequence)

    def _record_game(self, final_reward: float) -> None:
        change = self.controller.elo_change(self.pool.current_elo, game_result(final_reward))
        with self._lock:
            self.pool.elos[-1] += change
            elo = self.pool.current_elo
        self.run.stats.add(ELO_TAG, elo)

    def opponent_elo(self) -> float:
        with self._lock:
            return self.pool.elos[self.pool.opponent]

    def change_opponent_elo(self, change: float) -> None:
        with self._lock:
            self.pool.elos[self.pool.opponent] -= change

    def advance(self) -> None:
        """Team change, pool save and opponent swap when due (after every chunk of the run)."""
        out: list[trainer_pb2.PolicySnapshot] = []
        with self._lock:
            step = self.run.learner.step
            finishing = self.run.done and not self._finished
            learning_here = self.controller.learning_team in {e.team for e in self.teams.values()}
            # a group that reached max_steps hands the learning over (Tandem: else an asymmetric
            # game whose other keys have steps left would wait for it forever)
            if step - self.last_team_change > self.self_play.team_change or (finishing and learning_here):
                self.controller.change_learning_team(step)
                self.last_team_change = step
            next_team = self.controller.learning_team
            if step - self.last_save > self.self_play.save_steps:
                self.pool.save(self.latest)
                self.last_save = step
            changed = next_team != self.learning_team
            if changed or self.ghost_step - self.last_swap > self.self_play.swap_steps:
                self.learning_team = next_team
                out = self._swap()
                self.last_swap = self.ghost_step
            if finishing:
                self._finished = True
                names = list(self.teams)
            else:
                names = []
        for snapshot in out:
            self._publish_out(snapshot)
        for name in names:
            self._collection.finished(name)

    def _swap(self) -> list[trainer_pb2.PolicySnapshot]:
        """New snapshots for the team names of the group (lock held): a team that just became
        the learning team gets the learner's latest, every other team a new opponent from the
        pool. Returns them for publishing."""
        out = []
        opponent: trainer_pb2.PolicySnapshot | None = None
        for entry in self.teams.values():
            learning = entry.team == self.learning_team
            if learning and entry.learning:  # already acting with the learner's latest snapshot
                continue
            if learning:
                source = self.latest
            else:
                if opponent is None:  # one draw per swap: every ghost name of a team gets it
                    self.pool.choose()
                    opponent = self._opponent_snapshot()
                source = opponent
            entry.snapshot = self._publication(entry.name, source, learning)
            out.append(entry.snapshot)
            if learning != entry.learning:
                entry.learning = learning
                self._collection.set_coupling(
                    entry.name, self._coupling(learning), entry.snapshot.version, self.run.learner.step,
                    held=self._held() if learning else 0,
                )
            else:
                self._collection.updated(entry.name, entry.snapshot.version, self.run.learner.step)
        if out:
            _log.debug(
                "self-play: opponents swapped", group=self.brain, learning_team=self.learning_team,
                opponent=self.pool.opponent, ghost_step=self.ghost_step,
            )
        return out

    def _learner_published(self, snapshot: trainer_pb2.PolicySnapshot) -> None:
        """The learner updated (training thread): its learning team names act with it."""
        out = []
        with self._lock:
            self.latest = snapshot
            if self.learning_team == self.controller.learning_team:
                for entry in self.teams.values():
                    if entry.learning:
                        entry.snapshot = self._publication(entry.name, snapshot, True)
                        out.append(entry.snapshot)
            step = self.run.learner.step
        for published in out:
            self._publish_out(published)
            self._collection.updated(published.behavior, published.version, step)

    # ------------------------------------------------------------------ helpers (lock held)

    def _opponent_snapshot(self) -> trainer_pb2.PolicySnapshot:
        index = self.pool.opponent
        return self.latest if index < 0 else self.pool.snapshots[index]

    def _publication(
        self, name: str, source: trainer_pb2.PolicySnapshot, learning: bool
    ) -> trainer_pb2.PolicySnapshot:
        """A copy of ``source`` for team name ``name`` under the group's next version."""
        version = self._next_publication
        self._next_publication += 1
        self._publications[version] = self.run.version if learning else None
        while len(self._publications) > MAX_PUBLICATIONS:
            self._publications.popitem(last=False)
        out = trainer_pb2.PolicySnapshot()
        out.CopyFrom(source)
        out.behavior = name
        out.version = version
        return out

    def _learner_version(self, publication: int) -> int:
        """The learner version a publication carried; -1 for a ghost's or an unknown one."""
        version = self._publications.get(publication)
        return -1 if version is None else version

    def _coupling(self, learning: bool) -> Coupling:
        if learning:
            return dataclasses.replace(self.run.coupling, tagged=True)
        learner = self.run.coupling
        window = max(learner.budget, DEFAULT_WINDOW)
        return Coupling(False, window, learner.max_steps, None, tagged=True)

    def _held(self) -> int:
        return self.run.learner.buffered_steps if self.run.coupling.per_version else 0

    # ------------------------------------------------------------------ end

    def save_elo(self) -> None:
        """Records the ELO in ``training_status.json`` (restored by ``--resume``)."""
        self.run.record_status(ELO_STATUS_KEY, self.pool.current_elo)

    def after_checkpoint(self) -> None:
        """Records the ELO beside a checkpoint the learner's run wrote since the last call."""
        saved = self.run.saved_step
        if saved >= 0 and saved != self._elo_saved_step:
            self._elo_saved_step = saved
            self.save_elo()

    def finish(self, save: bool) -> None:
        """The run's end, called once per team name: after the last call, the learner's final
        checkpoint (when any team name had experience) and its ELO."""
        with self._lock:
            self._finish_calls += 1
            self._finish_save = self._finish_save or save
            if self._finish_calls != max(1, len(self.teams)):
                return
            save = self._finish_save
        if save:
            self.save_elo()
        self.run.finish(save=save)


class TeamBehavior:
    """What ``TrainingApp`` holds for one team name of a self-play group (the ``BehaviorRun``
    members it uses, served by the group)."""

    def __init__(self, spec: BehaviorSpec, group: SelfPlayGroup) -> None:
        self.name = spec.name
        self.spec = spec
        self.group = group
        self.settings = group.settings

    @property
    def snapshot(self) -> trainer_pb2.PolicySnapshot:
        return self.group.snapshot(self.name)

    @property
    def learner(self):
        return self.group.run.learner

    @property
    def done(self) -> bool:
        return self.group.run.done

    @property
    def steps(self) -> int:
        return self.group.run.steps

    @property
    def stats(self) -> stats_mod.BehaviorStats:
        return self.group.run.stats

    def add_stats(self, stats: list[tuple[str, float, stats_mod.Aggregation]]) -> None:
        self.group.run.add_stats(stats)

    def consume(self, trajectories: list[Trajectory], gateway_id: str, sequence: int) -> None:
        self.group.consume(self.name, trajectories, gateway_id, sequence)

    def finish(self, save: bool = True) -> None:
        self.group.finish(save)

    def discard(self) -> None:
        if self.group.remove_team(self.name):
            self.group.run.discard()


class SelfPlay:
    """The run's self-play groups (one per config key with ``self_play``) and ghost controller."""

    def __init__(self, collection: CollectionControl, publish: Publish, seed: int) -> None:
        self.controller = GhostController()
        self._collection = collection
        self._publish = publish
        self._seed = seed
        self._groups: dict[str, SelfPlayGroup] = {}

    def team(
        self,
        spec: BehaviorSpec,
        settings: TrainerSettings,
        make_run: Callable[[BehaviorSpec, Callable[[trainer_pb2.PolicySnapshot], None]], object],
        saved_elo: Callable[[str], float | None],
    ) -> TeamBehavior:
        """The ``TeamBehavior`` of ``spec``; its group (and learner) is made on first sight."""
        brain = spec.brain_name
        group = self._groups.get(brain)
        if group is not None and not group.teams:
            group = None  # every team was dropped before any experience: start afresh
        if group is None:
            seed = (self._seed + sum(map(ord, brain))) % (2**31)
            group = SelfPlayGroup(
                brain, spec, settings, make_run, self.controller, self._collection, self._publish, seed,
                initial_elo=saved_elo(brain),
            )
            self._groups[brain] = group
        group.add_team(spec)
        return TeamBehavior(spec, group)

    def advance(self) -> None:
        """Every group's ghost timing (a team change in one group concerns the others)."""
        for group in list(self._groups.values()):
            group.advance()
            group.after_checkpoint()
