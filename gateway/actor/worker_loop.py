"""Actor mode inside a worker process: act with the latest snapshots, build trajectories.

Why: acting where the environment is stepped costs no pipe round trip per step, and
with several instances the acting runs on several cores. The worker steps its Unity
instance in a loop; the parent only forwards snapshots and takes finished
trajectories, so the hot path is numpy on CPU: no JAX, no GPU. Per step only acting
is on the critical path: observing the previous answer, recording the actions and
flushing finished trajectories run while Unity computes the step
(``UnityInstance.step(..., while_unity_steps=...)``).

The messages with the parent (``gateway.env.messages``): ``Snapshot``, ``Credit``,
``ApplyParameters``, ``Restart``, ``GiveUp`` and ``Close`` come in; ``NewBehaviors``, ``Experience``,
``UnityStarted``, ``Failed``, ``Progress`` and ``InferenceReport`` go out.

Backpressure: at most ``max_outstanding`` experience messages may wait for the
parent's credit; beyond that the worker stops stepping (Unity pauses) rather than
dropping data.

Flow control (with a trainer, ``stream``): the worker steps only while every behavior it
streams that has agents deciding holds collection credit from the trainer (``Grant``);
acting for n agents uses n. When a behavior's credit runs out the worker *pauses*: it
ends every open fragment of every streamed behavior there (``TrajectoryBuilder.cut_all``:
bootstrapped, as at ``time_horizon``; a step still waiting for its reward is cut off and
its credit returned), sends them with the credit it did not use (``Experience.returned``:
another behavior's credit may be what another gateway waits for), and waits for a grant.
A grant for a newer policy version replaces older credit; ``ResetCredit`` voids it all
(a new trainer stream). A behavior the trainer finished acts on without credit and is
not streamed; when every behavior is finished the worker waits.

Behaviors with no snapshot yet: the worker waits up to
``snapshot_wait_s`` for one; after that their agents act uniformly at random and
their experience is not streamed. ``deterministic`` snapshots act with the mode instead
of sampling (``network_settings.deterministic``, ``--deterministic``, ``--policy``
models). Whether experience is streamed is the mode's, not the snapshot's: with a
trainer it always is (in its ``--inference`` the trainer counts steps and writes
summaries, as ML-Agents does); ``--policy`` (``stream=False``) streams nothing and
tallies episodes for the parent's reward summary.

Snapshots carry either ``parameters`` or only ``onnx_model`` (``gateway.actor.policy``).
A snapshot's ``time_horizon`` 0 means "not set": ML-Agents' default, 64, applies.

Environment parameters (``ApplyParameters``, the trainer's decision): set on the
instance's channel as they come; Unity uses them from the next episode. The instance is
reset at once (open trajectories end as interrupted, as when Unity fails) when the
message asks for it (``require_reset``), and when the first values arrive after the
instance's first reset (episodes began without them). Values already waiting when the
actor starts are applied before its first reset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from common.logging import get_logger
from common.trajectory import Trajectory
from gateway.actor.memories import AgentMemories
from gateway.actor.policy import Policy, policy_from_snapshot
from gateway.actor.trajectories import EpisodeTally, TrajectoryBuilder
from gateway.env.instance import BehaviorActions, InstanceFailure
from gateway.env.messages import ApplyParameters, Close, Closed, Credit, Experience, Failed, GiveUp, Grant
from gateway.env.messages import InferenceReport, NewBehaviors, Pipe, Progress, ResetCredit, Restart, Snapshot
from gateway.env.messages import UnityStarted
from gateway.env.steps import Stat, StepBatch
from tandem.v1 import trainer_pb2

#: seconds between the worker's progress messages
PROGRESS_EVERY_S = 0.25
#: seconds between checks for the parent's messages while stepping (snapshots, credits)
DRAIN_EVERY_S = 0.005
#: the trajectory length a snapshot gets when it leaves ``time_horizon`` at 0 (ML-Agents' default)
DEFAULT_TIME_HORIZON = 64


def time_horizon(snapshot_value: int) -> int:
    """The steps after which a trajectory is cut: the snapshot's ``time_horizon``, 0 meaning "not set"."""
    return max(1, int(snapshot_value) or DEFAULT_TIME_HORIZON)


@dataclass(frozen=True)
class ActorWorkerConfig:
    """Actor settings a worker receives from the parent.

    Attributes:
        chunk_steps: send a behavior's finished trajectories once they hold this many steps.
        flush_interval_s: or once the oldest of them waited this long.
        snapshot_wait_s: wait this long for a behavior's first snapshot before acting randomly.
        max_outstanding: experience messages that may await the parent's credit.
        seed: seed of the worker's random generator (actions are sampled from it).
        stream: build and send trajectories (a trainer takes them); False for ``--policy``,
            which only tallies episodes.
        heuristics: behavior names (without ``?team=``) acted by the stand-in's scripted
            expert (``--heuristic``), with no snapshot.
    """

    chunk_steps: int = 512
    flush_interval_s: float = 1.0
    snapshot_wait_s: float = 60.0
    max_outstanding: int = 2
    seed: int = 0
    stream: bool = True
    heuristics: tuple[str, ...] = ()


@dataclass
class _Policy:
    policy: Policy
    version: int
    deterministic: bool
    time_horizon: int
    groupmates: bool = False  # trajectories carry groupmates (architecture.collect_groupmates: POCA)


@dataclass
class _Credit:
    """Agent steps a behavior may still collect (negative: the last step overshot), for
    snapshot ``version`` (0: any). ``deliver_at``: window credit (version 0) is delivered
    early, once it falls to half of the last grant, so that the trainer tops the window up
    while the worker collects the other half (0: nothing to deliver early)."""

    version: int = 0
    steps: int = 0
    deliver_at: int = 0


class InstanceActor:
    """The actor loop of one worker process (see the module docstring)."""

    def __init__(self, worker, pipe: Pipe, config: ActorWorkerConfig) -> None:
        self.worker = worker
        self.pipe = pipe
        self.instance = worker.instance
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.policies: dict[str, _Policy] = {}
        self.builders: dict[str, TrajectoryBuilder] = {}
        self.tallies: dict[str, EpisodeTally] = {}
        self.finished: dict[str, list[Trajectory]] = {}
        self.finished_steps: dict[str, int] = {}
        self.finished_min_version: dict[str, int] = {}
        self.first_finished_at: dict[str, float] = {}
        self.stats: list[Stat] = []
        self.outstanding = 0
        self.closing = False
        self.awaiting_restart = False
        self.down = False
        #: the instance was reset at least once (its episodes began)
        self.started = False
        #: environment parameters from the trainer arrived at least once
        self.has_parameters = False
        self.parameter_resets = 0
        #: the generation of the trainer's parameters now in effect (0: none), stamped on experience
        self.parameters_generation = 0
        self.waiting_since: float | None = None
        self.random_behaviors: set[str] = set()
        #: flow control (with a trainer): credit per streamed behavior; behaviors the trainer finished
        self.credit: dict[str, _Credit] = {}
        self.finished_behaviors: set[str] = set()
        self.paused = False
        self.current: dict[str, tuple[StepBatch, StepBatch]] = {}
        #: per behavior, the LSTM memory of its agents (policies with memory only)
        self.memories: dict[str, AgentMemories] = {}
        #: the last step's answer until ``_bookkeeping`` observed it (during the next step)
        self.unobserved: dict[str, tuple[StepBatch, StepBatch]] | None = None
        self.env_steps = 0
        self.agent_steps = 0
        self.last_progress = time.monotonic()
        self.last_drain = 0.0
        self.log = get_logger("gateway.acting", instance=worker.index)

    # -- messages from the parent ---------------------------------------------------------------

    def _handle(self, msg) -> None:
        match msg:
            case Snapshot(behavior, version, raw):
                self._set_snapshot(behavior, version, raw)
            case Credit():
                self.outstanding = max(0, self.outstanding - 1)
            case Grant(behavior, version, steps, finished):
                self._grant(behavior, version, steps, finished)
            case ResetCredit():
                self.credit.clear()
            case ApplyParameters(values, reset, generation):
                self._apply_parameters(values, reset, generation)
            case Restart():
                self.awaiting_restart = False
                try:
                    self.current = self.worker.restart()
                    self.pipe.send(UnityStarted(self.instance.unity_pid))
                    self._announce()
                except InstanceFailure as e:
                    self._fail(e)
            case GiveUp():
                self.awaiting_restart = False
                self.down = True
            case Close():
                self.closing = True
            case _:
                self.log.warning("unknown message in actor mode", kind=type(msg).__name__)

    def _grant(self, behavior: str, version: int, steps: int, finished: bool) -> None:
        if finished:
            self.finished_behaviors.add(behavior)
            return
        credit = self.credit.setdefault(behavior, _Credit())
        if version > credit.version:  # a newer policy's budget: older credit is void
            credit.version, credit.steps = version, steps
        elif version == credit.version:
            credit.steps += steps
            if version == 0:
                credit.deliver_at = max(1, credit.steps // 2)
        # an older version's grant arriving late: void already

    def _deliver_early(self) -> None:
        """Window credit half used: sends the behavior's open fragments now (cut, bootstrapped)."""
        for behavior, credit in self.credit.items():
            if credit.deliver_at and credit.steps <= credit.deliver_at and behavior in self.builders:
                credit.deliver_at = 0
                self._catch_up()
                dec = self.current.get(behavior, (None, None))[0]
                trajectories, cut_off = self.builders[behavior].cut_all(dec)
                self._finish(behavior, trajectories)
                self._flush(force=True, returned={behavior: cut_off} if cut_off else None)

    def _out_of_credit(self) -> list[str]:
        """Streamed behaviors with agents deciding now and no credit left (flow control)."""
        if not self.config.stream:
            return []
        out = []
        for behavior, (dec, _) in self.current.items():
            if not len(dec) or behavior not in self.policies or behavior in self.finished_behaviors:
                continue
            credit = self.credit.get(behavior)
            if credit is None or credit.steps <= 0:
                out.append(behavior)
        return out

    def _nothing_to_collect(self) -> bool:
        """Every behavior with agents deciding was finished by the trainer: stepping on collects nothing."""
        deciding = [b for b, (dec, _) in self.current.items() if len(dec)]
        return self.config.stream and bool(deciding) and all(b in self.finished_behaviors for b in deciding)

    def _pause(self, behaviors: list[str]) -> None:
        """Out of credit: delivers every open fragment and the unused credit, then waits for grants."""
        self._catch_up()
        returned: dict[str, int] = {}
        for behavior in sorted(set(self.builders) | set(self.credit)):  # credit of a behavior it never saw too
            cut_off = 0
            builder = self.builders.get(behavior)
            if builder is not None:
                dec = self.current.get(behavior, (None, None))[0]
                trajectories, cut_off = builder.cut_all(dec)
                self._finish(behavior, trajectories)
            credit = self.credit.get(behavior)
            unused = max(0, credit.steps) if credit is not None else 0
            if credit is not None:
                credit.steps -= unused
            if cut_off + unused:
                returned[behavior] = cut_off + unused
        self._flush(force=True, returned=returned)
        self.paused = True
        self.log.debug("out of collection credit: paused", behaviors=behaviors, returned=returned)

    def _drain(self, timeout_s: float | None) -> None:
        """Handles every waiting message; waits up to ``timeout_s`` for the first (0 = poll)."""
        self.last_drain = time.monotonic()
        if self.pipe.poll(timeout_s):
            self._handle(self.pipe.receive())
            while self.pipe.poll(0):
                self._handle(self.pipe.receive())

    def _set_snapshot(self, behavior: str, version: int, raw: bytes) -> None:
        snapshot = trainer_pb2.PolicySnapshot.FromString(raw)
        try:
            policy = policy_from_snapshot(snapshot, self.instance.specs.get(behavior))
        except ValueError as e:
            self.log.error("snapshot rejected", behavior=behavior, version=version, error=str(e))
            return
        horizon = time_horizon(snapshot.time_horizon)
        previous = self.policies.get(behavior)
        self.policies[behavior] = _Policy(
            policy, int(version), bool(snapshot.deterministic), horizon, bool(snapshot.architecture.collect_groupmates)
        )
        self.random_behaviors.discard(behavior)
        if not self.config.stream:
            self.builders.pop(behavior, None)  # nothing is streamed without a trainer
            self.tallies.setdefault(behavior, EpisodeTally())
        elif behavior in self.builders:
            self.builders[behavior].set_time_horizon(horizon)
        if previous is None:
            self.log.info("first snapshot", behavior=behavior, version=version, deterministic=bool(snapshot.deterministic))

    # -- the loop -------------------------------------------------------------------------------

    def _announce(self) -> None:
        fresh = self.instance.new_behaviors()
        for spec in fresh:
            if spec.brain_name in self.config.heuristics:
                self._use_heuristic(spec.name)
        if fresh:
            self.pipe.send(NewBehaviors(fresh))

    def _use_heuristic(self, behavior: str) -> None:
        """``--heuristic``: the behavior acts with the stand-in's scripted expert (version 1, no stream)."""
        from gateway.actor.heuristic_policy import HeuristicPolicy

        self.policies[behavior] = _Policy(HeuristicPolicy(behavior), 1, True, time_horizon(0))
        self.tallies.setdefault(behavior, EpisodeTally())
        self.log.info("acting with the scripted heuristic", behavior=behavior)

    def _end_open_episodes(self) -> None:
        """Ends every open trajectory as interrupted and sends them (Unity failed or is reset)."""
        self._catch_up()
        lost: dict[str, int] = {}  # steps waiting for their reward are lost with the instance
        for behavior, builder in self.builders.items():
            if builder.pending_steps:
                lost[behavior] = builder.pending_steps
            self._finish(behavior, builder.interrupt_all())
        for tally in self.tallies.values():
            tally.forget_open()
        for memories in self.memories.values():
            memories.clear()
        self._flush(force=True, returned=lost)

    def _apply_parameters(self, values: dict, reset: bool, generation: int) -> None:
        """Sets the trainer's environment parameters; resets the instance when they must apply now.

        What was played before goes out first, stamped with the previous generation: finished
        trajectories, and with a reset the open ones, ended as interrupted.
        """
        first = not self.has_parameters
        self.has_parameters = True
        changed = self.instance.set_parameter_values(values)  # reaches Unity with the next reset or step
        self.log.info("environment parameters", parameters=sorted(values), changed=changed, reset=reset)
        # before the first reset, or while Unity is down, the (re)start applies them with its reset
        must_reset = self.started and not (self.awaiting_restart or self.down) and (reset or (first and changed))
        if must_reset:
            self._end_open_episodes()
        elif self.started:
            self._catch_up()
            self._flush(force=True)
        self.parameters_generation = generation
        if not must_reset:
            return  # Unity uses them from the next episode on
        self.current = {}
        try:
            self.current = self.instance.reset()
            self.parameter_resets += 1
            self._announce()
        except InstanceFailure as e:
            self._fail(e)

    def _fail(self, error: Exception) -> None:
        """Ends every open trajectory as interrupted, sends them, and asks the parent to restart."""
        self._end_open_episodes()
        self.current = {}
        self.instance.kill()
        self.awaiting_restart = True
        self.log.warning("unity instance failed", error=str(error))
        self.pipe.send(Failed(str(error)))

    def _ready_to_act(self) -> bool:
        """False while a behavior with agents awaiting a decision has no snapshot (within the wait)."""
        missing = [
            b for b, (dec, _) in self.current.items()
            if len(dec) and b not in self.policies and b not in self.random_behaviors
        ]
        if not missing:
            self.waiting_since = None
            return True
        now = time.monotonic()
        if self.waiting_since is None:
            self.waiting_since = now
            self.log.info("waiting for the first snapshots", behaviors=missing)
        if now - self.waiting_since >= self.config.snapshot_wait_s:
            self.log.warning("no snapshot in time: acting randomly, not streaming", behaviors=missing)
            self.random_behaviors.update(missing)
            return True
        return False

    def _act(self) -> tuple[dict[str, BehaviorActions], list[tuple]]:
        """Actions for every agent awaiting a decision.

        Returns:
            The actions per behavior, and ``(behavior, policy entry, decisions, output)``
            of every behavior that acted with a snapshot, for ``_bookkeeping`` to record.
        """
        actions: dict[str, BehaviorActions] = {}
        acted: list[tuple] = []
        for behavior, (dec, term) in self.current.items():
            store = self.memories.get(behavior)
            if store is not None and len(term):
                store.forget(term.agent_ids)  # before the decisions: an agent may restart with its id
            if not len(dec):
                continue
            entry = self.policies.get(behavior)
            if entry is None:
                actions[behavior] = self._random_actions(behavior, dec)
                continue
            memories = None
            if entry.policy.memory_size:
                if store is None or store.memory_size != entry.policy.memory_size:
                    store = self.memories[behavior] = AgentMemories(entry.policy.memory_size)
                memories = store.take(dec.agent_ids)
            out = entry.policy.act(
                dec.observations, dec.action_mask, self.rng, deterministic=entry.deterministic, memories=memories
            )
            if store is not None and memories is not None:
                store.keep(dec.agent_ids, out.memories)
            actions[behavior] = BehaviorActions(continuous=out.env_continuous, discrete=out.discrete)
            if behavior in self.finished_behaviors:
                continue  # acts on with the final policy; nothing is streamed
            credit = self.credit.get(behavior)
            if credit is not None:
                credit.steps -= len(dec)
            acted.append((behavior, entry, dec, out, memories))
        return actions, acted

    def _bookkeeping(self, acted: list[tuple]) -> None:
        """The trajectory work of one step: runs while Unity computes the step (off the critical path).

        First the previous step's answer is observed (rewards, ends of episodes), then the
        actions just sent are recorded, then finished trajectories are flushed to the parent.
        """
        self._catch_up()
        for behavior, entry, dec, out, memories in acted:
            if not self.config.stream:
                tally = self.tallies.get(behavior)
                if tally is not None:
                    tally.acted(dec)
                continue
            self.tallies.pop(behavior, None)
            builder = self.builders.get(behavior)
            if builder is None:
                builder = self.builders[behavior] = TrajectoryBuilder(
                    self.instance.specs[behavior], self.worker.index, entry.time_horizon, capacity=max(16, len(dec)),
                    memory_size=entry.policy.memory_size, groupmates=entry.groupmates,
                )
            builder.record(dec, out.continuous, out.discrete, out.log_probs, entry.version, memories)
        self._flush()

    def _catch_up(self) -> None:
        """Observes the last step's answer if that has not happened yet."""
        if self.unobserved is not None:
            out, self.unobserved = self.unobserved, None
            self._observe(out)

    def _random_actions(self, behavior: str, dec: StepBatch) -> BehaviorActions:
        a = self.instance.specs[behavior].action_spec
        n = len(dec)
        continuous = self.rng.uniform(-1, 1, (n, a.continuous_size)).astype(np.float32)
        discrete = np.zeros((n, a.num_branches), np.int32)
        start = 0
        for b, size in enumerate(a.discrete_branches):
            allowed = ~dec.action_mask[:, start : start + size]
            scores = self.rng.random((n, size)) * allowed  # masked actions score 0
            discrete[:, b] = np.argmax(scores, axis=1)
            start += size
        return BehaviorActions(continuous=continuous, discrete=discrete)

    def _observe(self, out: dict[str, tuple[StepBatch, StepBatch]]) -> None:
        for behavior, (dec, term) in out.items():
            builder = self.builders.get(behavior)
            if builder is not None:
                self._finish(behavior, builder.observe(dec, term))
            tally = self.tallies.get(behavior)
            if tally is not None:
                tally.observe(dec, term)
        self.stats.extend(self.instance.drain_stats())

    def _report_inference(self) -> None:
        """Finished episodes of behaviors acting without a trainer; the stats too when no trajectory carries them."""
        if not self.tallies:
            return
        episodes = {behavior: tally.take() for behavior, tally in self.tallies.items()}
        stats: list[Stat] = []
        if not self.builders:
            stats, self.stats = self.stats, []
        self.pipe.send(InferenceReport(episodes, stats))

    def _finish(self, behavior: str, trajectories: list) -> None:
        if not trajectories:
            return
        bucket = self.finished.setdefault(behavior, [])
        bucket.extend(trajectories)
        steps = sum(len(t) for t in trajectories)
        self.finished_steps[behavior] = self.finished_steps.get(behavior, 0) + steps
        v = min(int(t.policy_versions.min()) for t in trajectories)
        self.finished_min_version[behavior] = min(self.finished_min_version.get(behavior, v), v)
        self.first_finished_at.setdefault(behavior, time.monotonic())

    def _flush(self, force: bool = False, returned: dict[str, int] | None = None) -> None:
        """Sends each behavior's finished trajectories once due (``force``: now), with the
        credit it gives back (``returned``; sent even without trajectories)."""
        returned = returned or {}
        if not self.finished and not returned:
            return
        now = time.monotonic()
        for behavior in sorted(set(self.finished) | set(returned)):
            steps = self.finished_steps.get(behavior, 0)
            given_back = returned.get(behavior, 0)
            if not self.finished.get(behavior) and not given_back:
                continue
            if self.finished.get(behavior):
                due = steps >= self.config.chunk_steps or now - self.first_finished_at[behavior] >= self.config.flush_interval_s
            else:
                due = False
            if not (due or force or given_back):
                continue
            batch = Experience(
                instance=self.worker.index,
                behavior=behavior,
                trajectories=self.finished.pop(behavior, []),
                stats=self.stats,
                steps=steps,
                min_version=self.finished_min_version.pop(behavior, 0),
                returned=given_back,
                parameters_generation=self.parameters_generation,
            )
            self.stats = []
            self.finished_steps.pop(behavior, None)
            self.first_finished_at.pop(behavior, None)
            self.pipe.send(batch)
            self.outstanding += 1

    def run(self) -> None:
        """Steps until the parent says close (or goes away)."""
        self._drain(0)  # environment parameters already sent go with the first reset
        try:
            self.started = True
            self.current = self.instance.reset()
            self._announce()
        except InstanceFailure as e:
            self._fail(e)
        while not self.closing:
            if self.awaiting_restart or self.down:
                self._drain(0.5)
                continue
            if self.outstanding >= self.config.max_outstanding:
                self._drain(0.5)  # the parent's buffer is full: pause stepping
                continue
            if time.monotonic() - self.last_drain >= DRAIN_EVERY_S:  # a poll costs ~15 us: not every step
                self._drain(0)
            if self.closing or self.awaiting_restart:
                continue
            if not self._ready_to_act():
                self._drain(0.2)
                continue
            blocked = self._out_of_credit()
            if blocked or self._nothing_to_collect():
                # a behavior whose credit ran out: deliver and give back; one never granted yet
                # (its grant follows its snapshot): just wait for it
                if any(b in self.credit for b in blocked) and not self.paused:
                    self._pause(blocked)
                self._drain(0.5)  # until a grant (or the end)
                continue
            self.paused = False
            self._deliver_early()
            actions, acted = self._act()
            try:
                out = self.instance.step(actions, while_unity_steps=lambda: self._bookkeeping(acted))
            except InstanceFailure as e:
                self._fail(e)
                continue
            self.current = self.unobserved = out
            self._announce()
            self.env_steps += 1
            self.agent_steps += sum(len(d) for d, _ in out.values())
            now = time.monotonic()
            if now - self.last_progress >= PROGRESS_EVERY_S:
                self.last_progress = now
                self._report_inference()
                self.pipe.send(Progress(self.env_steps, self.agent_steps))
        self._catch_up()
        self._flush(force=True)
        self._report_inference()
        self.pipe.send(Progress(self.env_steps, self.agent_steps))


def run_actor(worker, pipe: Pipe, config: ActorWorkerConfig) -> None:
    """Entry from ``gateway.env.workers``: runs actor mode until closed, then closes Unity."""
    actor = InstanceActor(worker, pipe, config)
    try:
        actor.run()
    except (EOFError, OSError, BrokenPipeError):
        pass  # the parent is gone
    finally:
        worker.instance.close()
        try:
            pipe.send(Closed())
        except (OSError, ValueError):
            pass
