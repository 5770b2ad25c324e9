"""What a built-in task is: the scene logic behind one or more behaviors.

Why: the academy (``unity_standin.academy``) plays ML-Agents' stepping rules (decision
requests, rewards between decisions, episode ends, max step, resets) for any task; a
task only says what its agents observe, which actions are masked, and what an action
does. Every method works on all agents of a behavior at once (numpy, vectorized), so
hundreds of agents stay cheap.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from unity_standin.side_channels import SideChannels

# ML-Agents' DimensionProperty flags.
DIM_NONE = 1
DIM_TRANSLATIONAL_EQUIVARIANCE = 2
DIM_VARIABLE_SIZE = 4


@dataclass(frozen=True)
class ObservationDef:
    """One sensor of a behavior, as Unity describes it on the wire.

    Attributes:
        name: sensor name (Unity sorts sensors by name; tasks list them in that order).
        shape: vector ``(size,)``; visual ``(channels, height, width)`` as com.unity.ml-agents
            3.x/4.x sends camera sensors (mlagents-envs decodes them channels-first);
            variable-length ``(max_entities, entity_size)`` as a BufferSensor sends it
            (entities first, all-zero padding rows after them).
        compressed: visual only: sent PNG-compressed like a CameraSensor.
    """

    name: str
    shape: tuple[int, ...]
    compressed: bool = False

    @property
    def dimension_properties(self) -> tuple[int, ...]:
        if len(self.shape) == 3:
            return (DIM_NONE, DIM_TRANSLATIONAL_EQUIVARIANCE, DIM_TRANSLATIONAL_EQUIVARIANCE)
        if len(self.shape) == 2:  # a BufferSensor
            return (DIM_VARIABLE_SIZE, DIM_NONE)
        return (DIM_NONE,) * len(self.shape)


@dataclass(frozen=True)
class BehaviorDef:
    """A behavior of a task (``BehaviorParameters`` + ``DecisionRequester`` + ``MaxStep``).

    Attributes:
        name: fully qualified behavior name, e.g. ``3DBall?team=0``.
        observations: sensors in wire order.
        continuous_size: number of continuous actions.
        discrete_branches: size of each discrete branch.
        num_agents: agents of this behavior in the scene (all training areas).
        max_step: academy steps after which an episode is interrupted (0: never).
        decision_period: an agent requests a decision every ``decision_period`` academy steps
            and repeats its last action in between (``TakeActionsBetweenDecisions``).
        decision_offsets: per agent, the step (mod period) at which it requests decisions.
        overwrite_reward: rewards use ``SetReward`` (last value wins) instead of ``AddReward``.
    """

    name: str
    observations: tuple[ObservationDef, ...]
    continuous_size: int
    discrete_branches: tuple[int, ...]
    num_agents: int
    max_step: int
    decision_period: int = 1
    decision_offsets: tuple[int, ...] = ()
    overwrite_reward: bool = False

    @property
    def mask_size(self) -> int:
        return int(sum(self.discrete_branches))

    def offsets(self) -> np.ndarray:
        """Decision offsets as an int array [num_agents]."""
        if self.decision_offsets:
            return np.asarray(self.decision_offsets, dtype=np.int64) % self.decision_period
        return np.zeros(self.num_agents, dtype=np.int64)


@dataclass(frozen=True)
class ActResult:
    """What acting did to the agents of one behavior.

    Attributes:
        reward: float32 [n]; added (or set, see ``overwrite_reward``) to the pending reward.
        ended: bool [n]; the agent called ``EndEpisode()`` this step.
        group_reward: float32 [n] added to the agent's group reward, or None.
        interrupted: bool [n]; the episode was interrupted by the scene (ML-Agents'
            ``EpisodeInterrupted``, e.g. a group's ``GroupEpisodeInterrupted``), or None.
    """

    reward: np.ndarray
    ended: np.ndarray
    group_reward: np.ndarray | None = None
    interrupted: np.ndarray | None = None


@dataclass(frozen=True)
class TaskOptions:
    """Options every task accepts (from the command line and the initialization input)."""

    seed: int = 0
    num_agents: int | None = None
    decision_period: int | None = None
    num_areas: int = 1


class Task(abc.ABC):
    """Scene logic for one or more behaviors.

    Subclasses define ``behaviors`` in ``__init__`` and keep per-agent state arrays.
    """

    name: str = ""
    behaviors: tuple[BehaviorDef, ...] = ()

    def __init__(self, options: TaskOptions, side_channels: SideChannels) -> None:
        self.options = options
        self.side_channels = side_channels
        self.rng = np.random.default_rng(options.seed)

    @property
    def parameters(self):
        return self.side_channels.parameters

    @abc.abstractmethod
    def begin_episodes(self, behavior: str, idx: np.ndarray) -> None:
        """``OnEpisodeBegin`` for the agents ``idx`` (int array) of ``behavior``."""

    @abc.abstractmethod
    def observe(self, behavior: str, idx: np.ndarray) -> list[np.ndarray]:
        """Observations of agents ``idx``, one array per ObservationDef.

        Vector observations are float32 ``[k, size]``; visual ones uint8 ``[k, H, W, C]``
        (compressed) or float32 ``[k, C, H, W]`` in [0, 1] (uncompressed).
        """

    def action_masks(self, behavior: str, idx: np.ndarray) -> np.ndarray | None:
        """bool ``[k, sum(branches)]``, True = action not allowed; None: nothing masked."""
        return None

    def group_ids(self, behavior: str, idx: np.ndarray) -> np.ndarray | None:
        """int [k] multi-agent group of agents ``idx`` (0: no group); None: no groups."""
        return None

    def active(self, behavior: str) -> np.ndarray | None:
        """bool [n]: agents that take part now (a disabled agent requests no decisions and
        sends nothing until the task enables it again); None: all of them."""
        return None

    @abc.abstractmethod
    def act(self, actions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, ActResult]:
        """One academy step: every agent applies its stored action.

        Args:
            actions: per behavior, (continuous float32 [n, c], discrete int32 [n, b]).
        """

    def before_output(self) -> None:
        """Called right before an output is sent; tasks queue their stats here."""


def resolve_period(options: TaskOptions, default: int) -> int:
    period = options.decision_period or default
    if period < 1:
        raise ValueError(f"--decision-period must be >= 1, got {period}")
    return period


def agent_count(options: TaskOptions, default: int) -> int:
    """The scene's agents (or areas): ``--num-agents`` (else the task's ``default``) times ``--num-areas``."""
    return (options.num_agents or default) * max(1, options.num_areas)


def vector_behavior(
    name: str,
    size: int,
    num_agents: int,
    decision_period: int,
    *,
    continuous_size: int = 0,
    discrete_branches: tuple[int, ...] = (),
    max_decisions: int = 0,
    overwrite_reward: bool = False,
) -> BehaviorDef:
    """A behavior whose agents see one vector observation, named as Unity's ``VectorSensor`` names it.

    Args:
        max_decisions: decisions per episode before Unity interrupts it (its ``MaxStep`` is
            that many decision periods); 0 = no limit.
    """
    return BehaviorDef(
        name=name,
        observations=(ObservationDef(f"VectorSensor_size{size}", (size,)),),
        continuous_size=continuous_size,
        discrete_branches=discrete_branches,
        num_agents=num_agents,
        max_step=max_decisions * decision_period,
        decision_period=decision_period,
        overwrite_reward=overwrite_reward,
    )
