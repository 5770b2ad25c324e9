"""The messages between the gateway process and its worker processes, one dataclass each.

Why: a worker process steps one Unity instance; the gateway process (the parent) talks
to it over a ``multiprocessing`` pipe. Every message is a small frozen dataclass
declared here, so a reader (and a type checker) sees what travels in which direction,
and the receiving side dispatches with ``match``. On the hot path (a step and its
answer) the fields hold only ``bytes``, ints and strings: numpy arrays cost ten times
more to pickle than the copy they carry.

Remote control (parent -> worker, and the worker's answer):
    Reset(parameters)      -> Stepped | Failed | Refused
    PackedStep(actions)    -> Stepped | Failed | Refused   (``Step`` packed for the pipe)
    SetParameters(parameters)       no answer; applied with the next reset or step
    AwaitingEditor(message)  (answer) the Unity Editor is away; the worker listens again
                           in the background and answers every command so until Play
    Restart(forget)        after Failed: relaunch Unity (without the environment parameters
                           named in ``forget``) and reset -> like Reset
    GiveUp()               after Failed: stay down -> Stepped with the interrupted terminal steps
    StartActor(config)     hand the worker to actor mode (``gateway.actor.worker_loop``)
    Close()                -> Closed, then the worker exits
A worker first says Ready or Failed after it starts.

Actor mode (parent -> worker):
    Snapshot(behavior, version, raw)   the latest policy of a behavior, as the trainer sent it
    Credit()               the parent took one Experience message (flow control)
    Grant(behavior, version, steps, finished)   agent steps the trainer granted (flow control)
    ResetCredit()          a new trainer stream: every credit held is void
    ApplyParameters(values, reset, generation)   the trainer's environment parameters; reset: reset now
    Restart() / GiveUp()   after Failed
    Close()                flush finished trajectories, close Unity, answer Closed
Actor mode (worker -> parent):
    NewBehaviors(specs)    behaviors seen for the first time
    Experience(...)        finished trajectories of one behavior (and credit returned)
    UnityStarted(pid)      the Unity process after a restart
    Failed(message)        Unity crashed or hung; the worker waits for Restart or GiveUp
    Progress(env_steps, agent_steps)   totals, every quarter second
    InferenceReport(episodes, stats)   with Progress while behaviors act without a trainer (--policy)

``Pipe`` carries a message across a pipe as a plain tuple (its type's index and its
fields): unpickling a tuple skips the class lookup that an instance
costs (about 2 us per message, measured).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np

from common.specs import BehaviorSpec
from common.trajectory import Trajectory
from gateway.env.instance import BehaviorActions
from gateway.env.parameters import ParameterValue
from gateway.env.steps import Stat, StepBatch

if TYPE_CHECKING:  # the actor package imports this module, not the other way round
    from gateway.actor.worker_loop import ActorWorkerConfig

#: ``{behavior: (agents, float32 continuous bytes, int32 discrete bytes)}``: actions on the pipe
PackedActions = dict[str, tuple[int, bytes, bytes]]


# -- remote control: parent -> worker -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reset:
    """Reset the instance after setting these environment parameters."""

    parameters: dict[str, float]


@dataclass(frozen=True, slots=True)
class Step:
    """Step the instance with ``{behavior: BehaviorActions}`` (in-process; ``pack`` for the pipe)."""

    actions: dict[str, BehaviorActions]

    def pack(self) -> PackedStep:
        """The same actions as bytes: ``{behavior: (agents, float32 bytes, int32 bytes)}``."""
        return PackedStep({
            name: (
                len(a.continuous),
                np.ascontiguousarray(a.continuous, np.float32).tobytes(),
                np.ascontiguousarray(a.discrete, np.int32).tobytes(),
            )
            for name, a in self.actions.items()
        })


@dataclass(frozen=True, slots=True)
class PackedStep:
    """``Step`` as it crosses the pipe; the worker unpacks it with its behaviors' action specs."""

    actions: PackedActions

    def unpack(self, specs: dict[str, BehaviorSpec]) -> Step:
        out = {}
        for name, (n, continuous, discrete) in self.actions.items():
            a = specs[name].action_spec
            out[name] = BehaviorActions(
                continuous=np.frombuffer(continuous, np.float32).reshape(n, a.continuous_size),
                discrete=np.frombuffer(discrete, np.int32).reshape(n, a.num_branches),
            )
        return Step(out)


@dataclass(frozen=True, slots=True)
class SetParameters:
    """Environment parameters, applied with the next reset or step (no answer)."""

    parameters: dict[str, float]


@dataclass(frozen=True, slots=True)
class Restart:
    """After ``Failed``: relaunch Unity and reset it.

    Attributes:
        forget: environment parameters the replacement must not get again (they were new
            in the command that failed: they may be what killed Unity).
    """

    forget: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AwaitingEditor:
    """Worker -> parent: the Unity Editor left Play mode or went away (not a crash: no restart
    is counted); the worker listens again and says so until the Editor is back."""

    message: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """After ``Failed``: the restart limits are reached, stay down."""


@dataclass(frozen=True, slots=True)
class StartActor:
    """Hand the worker to actor mode with these settings."""

    config: ActorWorkerConfig


@dataclass(frozen=True, slots=True)
class Close:
    """Close Unity and exit (actor mode: flush finished trajectories first)."""


# -- actor mode: parent -> worker ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The latest policy of a behavior: ``raw`` is a serialized ``tandem.v1.PolicySnapshot``."""

    behavior: str
    version: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Credit:
    """The parent took one ``Experience`` message: the worker may have one more outstanding."""


@dataclass(frozen=True, slots=True)
class Grant:
    """This worker's share of a ``tandem.v1.CollectionGrant``: ``steps`` more agent steps of
    ``behavior``, for snapshot ``version`` (0: any); ``finished``: act without credit, stream nothing."""

    behavior: str
    version: int
    steps: int
    finished: bool = False


@dataclass(frozen=True, slots=True)
class ResetCredit:
    """The gateway (re)connected to a trainer: credit granted on an earlier stream is void."""


@dataclass(frozen=True, slots=True)
class ApplyParameters:
    """The trainer's environment parameters (``tandem.v1.EnvironmentParameters``).

    The worker sets them on its instance's channel. It resets the instance (open
    trajectories end as interrupted) when ``reset`` is set (a lesson with
    ``require_reset`` was completed), and when these are the first values it gets but
    its episodes already began without them (the first reset precedes the trainer's Hello).
    """

    values: dict[str, ParameterValue]
    reset: bool
    generation: int = 0


# -- worker -> parent ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker's Unity instance is up, with these behaviors."""

    specs: list[BehaviorSpec]
    unity_pid: int | None


@dataclass(frozen=True, slots=True)
class Failed:
    """Unity crashed, hung or did not start; the worker waits for ``Restart`` or ``GiveUp``."""

    message: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A command the instance cannot take (Unity keeps running)."""

    message: str


@dataclass(frozen=True, slots=True)
class Stepped:
    """One instance's answer to a reset or step.

    Attributes:
        index: the instance index.
        steps: a serialized ``tandem.v1.Steps`` holding this instance's behaviors and stats.
        decisions: ``{behavior: int32 agent ids as bytes}`` awaiting a decision now
            (``agent_ids`` decodes them).
        new_specs: behaviors seen for the first time.
        unity_pid: the pid of the Unity process (changes on restart), None when down.
        alive: False once the instance gave up restarting.
        batches: an in-process instance's ``{behavior: (decisions, terminals)}``, the
            same steps as ``steps`` before encoding (None from worker processes: never pickled).
    """

    index: int
    steps: bytes
    decisions: dict[str, bytes]
    new_specs: list[BehaviorSpec]
    unity_pid: int | None
    alive: bool = True
    batches: dict[str, tuple[StepBatch, StepBatch]] | None = None

    @classmethod
    def of(
        cls, index: int, steps: bytes, decisions: dict[str, np.ndarray], new_specs: list[BehaviorSpec],
        unity_pid: int | None, alive: bool = True, batches: dict[str, tuple[StepBatch, StepBatch]] | None = None,
    ) -> Stepped:
        """The answer, with ``decisions`` given as ``{behavior: agent_ids int32 [n]}``."""
        packed = {name: ids.astype(np.int32, copy=False).tobytes() for name, ids in decisions.items()}
        return cls(index, steps, packed, new_specs, unity_pid, alive, batches)

    def agent_ids(self) -> dict[str, np.ndarray]:
        """``{behavior: agent_ids int32 [n]}`` awaiting a decision (read-only arrays)."""
        return {name: np.frombuffer(ids, np.int32) for name, ids in self.decisions.items()}


@dataclass(frozen=True, slots=True)
class Closed:
    """The worker closed Unity; it exits next."""


# -- actor mode: worker -> parent ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewBehaviors:
    """Behaviors the worker's instance has for the first time."""

    specs: list[BehaviorSpec]


@dataclass(frozen=True, slots=True)
class Experience:
    """Finished trajectories of one behavior, ready to become a chunk.

    They travel as numpy (pickled, cheap) and the parent serializes them
    (``gateway.actor.wire.experience_body``): the worker's core is the one stepping Unity,
    the parent's is mostly idle.

    Attributes:
        instance: the instance index.
        behavior: the behavior name.
        trajectories: the finished fragments.
        stats: stats side channel values since the last message.
        steps: total steps in them.
        min_version: oldest snapshot version that chose an action in them.
        returned: granted agent steps given back (``ExperienceChunk.returned_steps``).
        parameters_generation: the trainer's environment parameters they were played
            with (``ApplyParameters.generation``; 0: none received).
    """

    instance: int
    behavior: str
    trajectories: list[Trajectory]
    stats: list[Stat]
    steps: int
    min_version: int
    returned: int = 0
    parameters_generation: int = 0

    def episodes(self) -> list[tuple[float, int]]:
        """(return, length) of the episodes that ended in these trajectories."""
        return [(t.episode_return, t.episode_length) for t in self.trajectories if t.done]


@dataclass(frozen=True, slots=True)
class UnityStarted:
    """The Unity process the worker (re)started."""

    pid: int | None


@dataclass(frozen=True, slots=True)
class Progress:
    """The worker's totals: environment steps and agent steps."""

    env_steps: int
    agent_steps: int


@dataclass(frozen=True, slots=True)
class InferenceReport:
    """Behaviors acting without a trainer (``--policy``): ``{behavior: [(return, length)]}`` of the episodes
    they finished, and the stats when no trajectory carries them."""

    episodes: dict[str, list[tuple[float, int]]]
    stats: list[Stat] = field(default_factory=list)


#: every message type; a message crosses the pipe as (its index here, *its fields)
_TYPES: tuple[type, ...] = (
    Reset, PackedStep, SetParameters, Restart, GiveUp, StartActor, Close, Snapshot, Credit,
    Ready, Failed, Refused, Stepped, Closed, NewBehaviors, Experience, UnityStarted, Progress, InferenceReport,
    Grant, ResetCredit, ApplyParameters, AwaitingEditor,
)
_INDEX = {cls: i for i, cls in enumerate(_TYPES)}


def _field_getter(cls: type):
    names = [f.name for f in fields(cls)]
    if not names:
        return lambda msg: ()
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda msg: (get(msg),)
    return attrgetter(*names)


_FIELDS = {cls: _field_getter(cls) for cls in _TYPES}


class Pipe:
    """One end of a worker pipe, carrying this module's messages.

    Args:
        conn: the ``multiprocessing`` connection (``conn`` for ``multiprocessing.connection.wait``).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def send(self, msg) -> None:
        """Sends ``msg`` (one of this module's message types; a ``Step`` must be packed first).

        Raises:
            OSError, ValueError: the pipe is closed.
        """
        cls = type(msg)
        self.conn.send((_INDEX[cls], *_FIELDS[cls](msg)))

    def receive(self):
        """The next message (blocks until one arrives).

        Raises:
            EOFError, OSError: the other end is gone.
        """
        index, *values = self.conn.recv()
        return _TYPES[index](*values)

    def poll(self, timeout_s: float | None = 0.0) -> bool:
        """Whether a message waits, waiting up to ``timeout_s`` (None: until one does)."""
        return self.conn.poll(timeout_s)

    def close(self) -> None:
        self.conn.close()
