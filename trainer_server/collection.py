"""Flow control between the gateways' collection and the learners: who may collect how much.

Why: gateways step Unity as fast as they can and the trainer may be slower, or there may
be many gateways. Left alone, they collect far ahead of the learner: PPO then trains on
experience of policies many versions old, SAC's replay ratio (``steps_per_update``) no
longer holds, and the console reports returns of long-gone policies. ML-Agents avoids
this by being synchronous. Tandem keeps the processes apart and grants *credit*: agent
steps a gateway may still collect for a behavior (``tandem.v1.CollectionGrant``). A
gateway whose credit for a behavior runs out ends its open fragments there, sends them
and waits (``gateway.actor.worker_loop``).

Two modes per behavior, from the learner and the behavior's ``tandem:`` settings:

* **per version** (on-policy learners, PPO's default ``coupling: on_policy``): for policy
  version v the trainer grants, over all connected gateways together, exactly the steps the
  learner still needs for its next update (``buffer_size`` minus what it holds, and never
  past ``max_steps``), tagged with v. Once they are collected nobody collects until the
  update publishes v+1 with new grants. Shares follow each gateway's instance count; a
  gateway that disconnects gives its unused share back, and it is granted to the others.
* **window** (off-policy learners such as SAC, and PPO's ``coupling: async``): each
  gateway may hold at most ``collection_window`` agent steps that the learner has not yet
  taken in (granted but not received, plus received but not yet trained on); the window is
  topped up as the learner takes experience in. A slow trainer therefore slows collection,
  and a gateway gets its next half-window while the learner trains on the last one, so a
  fast trainer does not starve it.

A behavior that reached ``max_steps`` gets a ``finished`` grant: gateways act with its last
snapshot without credit and stream nothing more of it.

This module is pure bookkeeping, thread-safe, and knows nothing of gRPC: grants go out
through each connection's ``send_grant`` (see :class:`Collector`). Its counters are agent
steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from common.logging import get_logger
from trainer_server.config.schema import TrainerSettings

_log = get_logger("trainer_server.collection")

#: ``collection_window`` of off-policy learners when the ``tandem:`` section leaves it unset
DEFAULT_WINDOW = 2048


@dataclass(frozen=True)
class Grant:
    """One ``tandem.v1.CollectionGrant``: ``agent_steps`` more for ``behavior`` (see the proto)."""

    behavior: str
    policy_version: int
    agent_steps: int
    finished: bool = False


class Collector(Protocol):
    """A connected gateway, as flow control sees it.

    Attributes:
        weight: its share of per-version budgets (its number of environment instances, >= 1).
    """

    weight: int

    def send_grant(self, grant: Grant) -> None:
        """Queues ``grant`` for the gateway (must not block; called without locks held)."""


@dataclass(frozen=True)
class Coupling:
    """How one behavior's collection follows its learner, and which experience is fresh enough.

    Attributes:
        per_version: on-policy (see the module docstring); otherwise a window.
        budget: per version: the steps one update trains on (``buffer_size``); window: the
            steps each gateway may hold ahead of the learner (``collection_window``).
        max_steps: the behavior's ``max_steps``: nothing is granted past it.
        max_lag: steps acted by a policy more than this many versions old are dropped
            (0 per version; None: any age is trained, off-policy).
        tagged: a window whose grants name the behavior's current snapshot version instead
            of 0, and whose outstanding credit is void at every new version (the gateway
            replaces older credit then). Self-play's team behaviors (``trainer_server.self_play``)
            switch between per-version and window coupling at team changes: a gateway ignores a
            version-0 grant once it held per-version credit, so their windows are tagged.
    """

    per_version: bool
    budget: int
    max_steps: int
    max_lag: int | None
    tagged: bool = False

    def __post_init__(self) -> None:
        if self.budget < 1 or self.max_steps < 1:
            raise ValueError(f"coupling needs budget >= 1 and max_steps >= 1, got {self.budget}, {self.max_steps}")

    def first_fresh(self, versions: np.ndarray, current: int) -> int:
        """Where the trained part of a fragment starts: after its last step that is too old.

        Args:
            versions: int64 ``[T]``, the policy version that acted each step (non-decreasing).
            current: the learner's current policy version.

        Returns:
            an index in ``[0, T]``: steps before it are dropped (T: the whole fragment). A
            version newer than ``current`` (a gateway still acting for another trainer run)
            counts as too old.
        """
        if self.max_lag is None:
            return 0
        lag = current - np.asarray(versions, np.int64)
        stale = np.flatnonzero((lag > self.max_lag) | (lag < 0))
        return int(stale[-1]) + 1 if stale.size else 0


def inference_coupling() -> Coupling:
    """``--inference``: nothing is learned and the run lasts until stopped (past ``max_steps``):
    a window, so that gateways act at the pace the trainer counts their steps."""
    return Coupling(False, DEFAULT_WINDOW, 2**62, None)


def coupling_for(settings: TrainerSettings, on_policy: bool) -> Coupling:
    """A behavior's coupling from its learner kind and its ``tandem:`` section."""
    tandem = settings.tandem
    if on_policy and tandem.coupling == "on_policy":
        return Coupling(True, settings.hyperparameters.buffer_size, settings.max_steps, 0)
    if on_policy:  # async
        window = tandem.collection_window or settings.hyperparameters.buffer_size
        return Coupling(False, window, settings.max_steps, tandem.max_policy_lag)
    return Coupling(False, tandem.collection_window or DEFAULT_WINDOW, settings.max_steps, None)


@dataclass
class _Behavior:
    """The counters of one behavior (agent steps)."""

    coupling: Coupling
    version: int
    #: the learner's step count (steps taken in); with ``queued``, what has been received
    learner_step: int
    finished: bool = False
    #: per version: steps of the current version received since the version began (those
    #: the learner held when it began included), and the learner's step count then
    collected: int = 0
    version_start_step: int = 0
    #: per connection: granted and not yet received (or returned); negative after an
    #: overshoot (the gateway's credit is negative by as much)
    outstanding: dict[Collector, int] = field(default_factory=dict)
    #: per connection: received and not yet taken in by the learner
    queued: dict[Collector, int] = field(default_factory=dict)


class CollectionControl:
    """The trainer's credit bookkeeping over every connected gateway and behavior.

    Calls come from gRPC reader threads (``received``), handler threads (``announce``,
    ``disconnect``) and the training thread (``taken_in``, ``updated``, ``finished``);
    grants are sent after the lock is released. A gateway's share of per-version budgets
    is its ``weight``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._behaviors: dict[str, _Behavior] = {}
        self._members: dict[str, set[Collector]] = {}  # behavior -> gateways that announced it

    # -- behaviors (training thread / registration) ---------------------------------------------

    def add_behavior(
        self, behavior: str, coupling: Coupling, version: int, learner_step: int, finished: bool, held: int = 0
    ) -> None:
        """Registers a behavior (once, when its learner is made or restored).

        ``held``: steps the learner already holds for its next update (a resumed buffer).
        """
        with self._lock:
            self._behaviors[behavior] = _Behavior(
                coupling, version, learner_step, finished=finished, collected=held,
                version_start_step=learner_step - held,
            )
            self._members.setdefault(behavior, set())
            grants = self._plan(behavior)
        self._send(grants)

    def updated(self, behavior: str, version: int, learner_step: int) -> None:
        """The learner updated and version ``version`` was published: grants for it (per version)."""
        with self._lock:
            b = self._behaviors[behavior]
            b.version = version
            b.learner_step = learner_step
            if b.coupling.per_version:
                b.collected = 0
                b.version_start_step = learner_step
                b.outstanding.clear()  # grants for older versions are void on the gateways too
            elif b.coupling.tagged:
                b.outstanding.clear()  # the next grant names the new version: older credit is void there
            grants = self._plan(behavior)
        self._send(grants)

    def set_coupling(
        self, behavior: str, coupling: Coupling, version: int, learner_step: int, held: int = 0
    ) -> None:
        """Replaces a registered behavior's coupling (self-play's team change), from ``version`` on.

        Credit granted before is void (the next grant names ``version``, newer than any
        before); what was received and is not taken in yet stays counted. ``held``: steps the
        learner holds for its next update (per version).
        """
        with self._lock:
            b = self._behaviors.get(behavior)
            if b is None:
                return
            b.coupling = coupling
            b.version = version
            b.learner_step = learner_step
            b.collected = held
            b.version_start_step = learner_step - held
            b.outstanding.clear()
            grants = self._plan(behavior)
        self._send(grants)

    def taken_in(self, collector: Collector | None, behavior: str, steps: int, learner_step: int) -> None:
        """The training thread took a chunk of ``steps`` received from ``collector`` in (or dropped it)."""
        with self._lock:
            b = self._behaviors.get(behavior)
            if b is None:
                return
            if collector is not None and collector in b.queued:
                b.queued[collector] = max(0, b.queued[collector] - steps)
            b.learner_step = learner_step
            grants = self._plan(behavior)
        self._send(grants)

    def finished(self, behavior: str) -> None:
        """The behavior reached ``max_steps``: every gateway is told to stop streaming it."""
        with self._lock:
            b = self._behaviors.get(behavior)
            if b is None or b.finished:
                return
            b.finished = True
            b.outstanding.clear()
            members = list(self._members.get(behavior, ()))
        self._send([(c, Grant(behavior, 0, 0, finished=True)) for c in members])

    # -- gateways (handler and reader threads) ----------------------------------------------------

    def announce(self, collector: Collector, behavior: str) -> None:
        """``collector`` streams ``behavior`` from now on: it gets its share (after its snapshot)."""
        with self._lock:
            self._members.setdefault(behavior, set()).add(collector)
            b = self._behaviors.get(behavior)
            if b is None:
                return
            if b.finished:
                grants = [(collector, Grant(behavior, 0, 0, finished=True))]
            else:
                grants = self._plan(behavior)
        self._send(grants)

    def disconnect(self, collector: Collector) -> None:
        """The gateway went away: its unused credit goes to the others."""
        with self._lock:
            affected = []
            for behavior, members in self._members.items():
                if collector in members:
                    members.discard(collector)
                    b = self._behaviors.get(behavior)
                    if b is not None:
                        b.outstanding.pop(collector, None)
                        b.queued.pop(collector, None)
                        affected.append(behavior)
            grants = [g for behavior in affected for g in self._plan(behavior)]
        self._send(grants)

    def received(
        self, collector: Collector | None, behavior: str, steps_by_version: dict[int, int], returned: int
    ) -> None:
        """A chunk arrived (queued for the learner): its steps per acting version, and returned credit."""
        with self._lock:
            b = self._behaviors.get(behavior)
            if b is None:
                return
            total = sum(steps_by_version.values())
            if b.coupling.per_version:
                fresh = steps_by_version.get(b.version, 0)
                b.collected += fresh
            elif b.coupling.tagged:  # credit of older versions is void already
                fresh = steps_by_version.get(b.version, 0)
            else:
                fresh = total
            if collector is not None:
                if collector in b.outstanding:
                    # exact, negative when the gateway overshot: it starts its next grant in debt
                    # by as much, and clamping here would count steps it never collects
                    b.outstanding[collector] -= fresh + int(returned)
                b.queued[collector] = b.queued.get(collector, 0) + total
            grants = self._plan(behavior)
        self._send(grants)

    # -- what tests and logs read ---------------------------------------------------------------

    def outstanding(self, behavior: str) -> dict[Collector, int]:
        with self._lock:
            b = self._behaviors.get(behavior)
            return dict(b.outstanding) if b else {}

    def collected(self, behavior: str) -> int:
        with self._lock:
            b = self._behaviors.get(behavior)
            return b.collected if b else 0

    # -- planning (lock held) ---------------------------------------------------------------------

    def _plan(self, behavior: str) -> list[tuple[Collector, Grant]]:
        b = self._behaviors.get(behavior)
        members = sorted(self._members.get(behavior, ()), key=id)
        if b is None or b.finished or not members:
            return []
        if b.coupling.per_version:
            return self._plan_version(behavior, b, members)
        return self._plan_window(behavior, b, members)

    def _plan_version(self, behavior: str, b: _Behavior, members: list[Collector]) -> list[tuple[Collector, Grant]]:
        """Grants the steps the next update still lacks, split by the gateways' weights."""
        c = b.coupling
        wanted = min(c.budget, c.max_steps - b.version_start_step) - b.collected
        need = wanted - sum(b.outstanding.values())
        if need <= 0:
            return []
        weights = [max(1, int(m.weight)) for m in members]
        total = sum(weights)
        shares = [need * w // total for w in weights]
        for i in range(need - sum(shares)):  # the remainder, one step each, in a fixed order
            shares[i % len(shares)] += 1
        grants = []
        for member, share in zip(members, shares):
            if share > 0:
                b.outstanding[member] = b.outstanding.get(member, 0) + share
                grants.append((member, Grant(behavior, b.version, share)))
        return grants

    def _plan_window(self, behavior: str, b: _Behavior, members: list[Collector]) -> list[tuple[Collector, Grant]]:
        """Tops each gateway up to the window once half of it is used, never past ``max_steps``."""
        c = b.coupling
        left = c.max_steps - b.learner_step - sum(b.queued.values()) - sum(b.outstanding.values())
        grants = []
        for member in members:
            held = b.outstanding.get(member, 0) + b.queued.get(member, 0)
            if held > c.budget // 2 or left <= 0:
                continue
            share = min(c.budget - held, left)
            if share <= 0:
                continue
            left -= share
            b.outstanding[member] = b.outstanding.get(member, 0) + share
            grants.append((member, Grant(behavior, b.version if c.tagged else 0, share)))
        return grants

    @staticmethod
    def _send(grants: list[tuple[Collector, Grant]]) -> None:
        for collector, grant in grants:
            collector.send_grant(grant)
