"""The run's environment parameters: values, samplers and curriculum lessons, decided here.

Why: ML-Agents users randomize (samplers Unity draws from at every episode) and teach
with curricula (lessons that advance on completion criteria) through the trainer
YAML's ``environment_parameters``. The trainer owns that state for every gateway, so
that all Unity instances, on any machine, train on the same lesson: this module keeps
the current lesson of each parameter, advances it with ML-Agents 1.1.0's rules, and
describes the current values as one ``tandem.v1.EnvironmentParameters`` message that the
service sends to every gateway.

Rules (as ``mlagents-learn`` computes them):

* A plain value or a sampler is a one-lesson curriculum. Every lesson whose sampler
  ``seed`` is -1 gets the run's seed plus an offset, counted over the parameters and
  their lessons in the file's order (constants count too).
* After each chunk of experience, each parameter whose current lesson has
  ``completion_criteria`` (and is not the last) is checked against the named
  ``behavior``: nothing before the behavior has ``min_lesson_length`` finished episodes
  in its reward buffer; ``measure: progress`` advances when steps / max_steps exceeds
  ``threshold``; ``measure: reward`` advances when the mean of the reward buffer
  (smoothed ``0.25 * previous + 0.75 * mean`` when ``signal_smoothing``) exceeds it.
* A behavior's reward buffer holds the returns of its last episodes, as many as the
  largest ``min_lesson_length`` naming it (at least 1); every buffer is cleared when any
  lesson changes. ``require_reset`` asks the gateways to reset their environments.
* The lesson of each parameter is recorded in ``run_logs/training_status.json`` as
  ``{"<parameter>": {"lesson_num": n}}`` and restored by ``--resume``; the smoothed
  values start again at 0, as in ML-Agents.

Everything here runs on the training thread, except :meth:`RunParameters.message`,
which gRPC handler threads read (under a lock).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from common.logging import console, get_logger
from trainer_server import stats as stats_mod
from trainer_server.config.schema import (
    ConstantSettings,
    EnvironmentParameterSettings,
    GaussianSettings,
    Lesson,
    MultiRangeUniformSettings,
    SamplerSettings,
    TrainerSettings,
    UniformSettings,
    behavior_base_name,
)
from tandem.v1 import trainer_pb2

_log = get_logger("trainer_server.environment_parameters")

#: the key of a parameter's lesson in training_status.json (ML-Agents' StatusType.LESSON_NUM)
LESSON_NUM = "lesson_num"
#: the TensorBoard tag of a parameter's lesson, per behavior
LESSON_TAG = "Environment/Lesson Number/{}"
#: ML-Agents' smoothing of the reward measure: new = 0.25 * previous + 0.75 * mean
SMOOTHING_KEEP = 0.25

#: ``listener(message)``: called on the training thread after a lesson changed
ParametersListener = Callable[[trainer_pb2.EnvironmentParameters], None]


def sampler_seeds(settings: Mapping[str, EnvironmentParameterSettings], run_seed: int) -> dict[tuple[str, int], int]:
    """The seed of every lesson's value: its own, or ``run_seed`` + an offset when it is -1.

    Returns:
        ``{(parameter, lesson index): seed}``.
    """
    seeds: dict[tuple[str, int], int] = {}
    offset = 0
    for name, parameter in settings.items():
        for i, lesson in enumerate(parameter.curriculum):
            if lesson.value.seed == -1:
                seeds[(name, i)] = run_seed + offset
                offset += 1
            else:
                seeds[(name, i)] = lesson.value.seed
    return seeds


def value_proto(value: SamplerSettings, seed: int) -> trainer_pb2.EnvironmentParameter:
    """One lesson's value as the wire message (without its lesson fields)."""
    out = trainer_pb2.EnvironmentParameter(seed=int(np.int32(seed)))
    if isinstance(value, ConstantSettings):
        out.constant = value.value
    elif isinstance(value, UniformSettings):
        out.uniform.min_value, out.uniform.max_value = value.min_value, value.max_value
    elif isinstance(value, GaussianSettings):
        out.gaussian.mean, out.gaussian.st_dev = value.mean, value.st_dev
    elif isinstance(value, MultiRangeUniformSettings):
        out.multirange_uniform.intervals.extend(x for interval in value.intervals for x in interval)
    else:  # the schema has no other sampler
        raise TypeError(f"unknown sampler settings {type(value).__name__}")
    return out


def describe_value(value: SamplerSettings) -> str:
    """A lesson's value for the console: ``4.0``, ``uniform(min_value=1, max_value=2)``..."""
    if isinstance(value, ConstantSettings):
        return f"{value.value:g}"
    fields = {k: v for k, v in vars(value).items() if k != "seed"}
    return f"{value.sampler_type}({', '.join(f'{k}={v}' for k, v in fields.items())})"


def need_increment(
    lesson: Lesson, progress: float, rewards: list[float], smoothed: float
) -> tuple[bool, float]:
    """Whether ``lesson`` is complete, and the parameter's new smoothed reward.

    Args:
        lesson: the current lesson (with ``completion_criteria``).
        progress: the behavior's steps / max_steps.
        rewards: the behavior's reward buffer (returns of its last episodes).
        smoothed: the parameter's smoothed reward so far (0 at the start of a run).
    """
    criteria = lesson.completion_criteria
    assert criteria is not None
    if len(rewards) < criteria.min_lesson_length:
        return False, smoothed
    if criteria.measure == "progress":
        return progress > criteria.threshold, smoothed
    if not rewards:
        return False, smoothed
    measure = float(np.mean(rewards))
    if np.isnan(measure):
        return False, smoothed
    if criteria.signal_smoothing:
        measure = SMOOTHING_KEEP * smoothed + (1.0 - SMOOTHING_KEEP) * measure
        smoothed = measure
    return measure > criteria.threshold, smoothed


@dataclass(frozen=True)
class LessonChange:
    """One parameter moving to its next lesson."""

    parameter: str
    lesson: int
    lesson_name: str
    value: str
    require_reset: bool


class BehaviorView(Protocol):
    """What the curriculum reads from a behavior of the run (``BehaviorRun``)."""

    name: str
    settings: TrainerSettings
    stats: stats_mod.BehaviorStats

    @property
    def steps(self) -> int: ...


class ParameterStatus(Protocol):
    """Where the lessons are recorded (``RunResults``)."""

    def parameter_state(self, parameter: str) -> dict: ...

    def set_parameter_state(self, parameter: str, key: str, value: int) -> None: ...


class EnvironmentParameterManager:
    """The lessons of the run's parameters and ML-Agents' rules to advance them (no I/O).

    Args:
        settings: ``RunOptions.environment_parameters`` (None or empty: no parameters).
        run_seed: the run's seed (``env_settings.seed``, drawn when it is -1).
        lessons: lessons to start in (``--resume``), by parameter; others start at 0.
            Out-of-range values are clamped to the last lesson.
    """

    def __init__(
        self,
        settings: Mapping[str, EnvironmentParameterSettings] | None,
        run_seed: int,
        lessons: Mapping[str, int] | None = None,
    ) -> None:
        self.settings: dict[str, EnvironmentParameterSettings] = dict(settings or {})
        self._seeds = sampler_seeds(self.settings, run_seed)
        lessons = lessons or {}
        self.lessons: dict[str, int] = {
            name: min(max(int(lessons.get(name, 0)), 0), len(p.curriculum) - 1) for name, p in self.settings.items()
        }
        self.smoothed: dict[str, float] = {name: 0.0 for name in self.settings}

    def __bool__(self) -> bool:
        return bool(self.settings)

    @property
    def generation(self) -> int:
        """1 + the lesson changes that led here (lessons only move forward: their sum); 0 means "unknown" on the wire."""
        return 1 + sum(self.lessons.values())

    def reward_buffer_size(self, brain_name: str) -> int:
        """Episodes kept for ``brain_name``: the largest ``min_lesson_length`` naming it, at least 1."""
        size = 1
        for parameter in self.settings.values():
            for lesson in parameter.curriculum:
                criteria = lesson.completion_criteria
                if criteria is not None and criteria.behavior == brain_name:
                    size = max(size, criteria.min_lesson_length)
        return size

    def current(self, name: str) -> Lesson:
        return self.settings[name].curriculum[self.lessons[name]]

    def message(self, reset: bool = False) -> trainer_pb2.EnvironmentParameters:
        """The current value of every parameter, for the gateways."""
        out = trainer_pb2.EnvironmentParameters(generation=self.generation, reset=reset)
        for name in self.settings:
            index = self.lessons[name]
            lesson = self.current(name)
            value = out.parameters[name]
            value.CopyFrom(value_proto(lesson.value, self._seeds[(name, index)]))
            value.lesson = index
            value.lesson_name = lesson.name
        return out

    def update(
        self, steps: Mapping[str, int], max_steps: Mapping[str, int], rewards: Mapping[str, list[float]]
    ) -> list[LessonChange]:
        """Advances every parameter whose current lesson is complete (at most one lesson each).

        Args:
            steps: agent steps per behavior (brain name, without ``?team=``).
            max_steps: ``max_steps`` per behavior.
            rewards: each behavior's reward buffer.

        Returns:
            the lesson changes, in the parameters' order.
        """
        changes: list[LessonChange] = []
        for name, parameter in self.settings.items():
            index = self.lessons[name]
            lesson = parameter.curriculum[index]
            criteria = lesson.completion_criteria
            if criteria is None or index + 1 >= len(parameter.curriculum) or criteria.behavior not in steps:
                continue
            progress = float(steps[criteria.behavior]) / float(max(max_steps[criteria.behavior], 1))
            done, self.smoothed[name] = need_increment(
                lesson, progress, rewards.get(criteria.behavior, []), self.smoothed[name]
            )
            if done:
                self.lessons[name] = index + 1
                following = parameter.curriculum[index + 1]
                changes.append(
                    LessonChange(name, index + 1, following.name, describe_value(following.value), criteria.require_reset)
                )
        return changes


class RunParameters:
    """The run's environment parameters on the training thread: rewards in, lesson changes out.

    Args:
        settings: ``RunOptions.environment_parameters``.
        run_seed: the run's seed.
        status: ``RunResults`` (lessons read on ``resume``, written at every change).
        resume: ``--resume``: continue in the recorded lessons.
    """

    def __init__(
        self,
        settings: Mapping[str, EnvironmentParameterSettings] | None,
        run_seed: int,
        status: ParameterStatus,
        resume: bool,
    ) -> None:
        restored: dict[str, int] = {}
        if resume:
            for name in settings or {}:
                lesson = status.parameter_state(name).get(LESSON_NUM)
                if isinstance(lesson, int):
                    restored[name] = lesson
        self.manager = EnvironmentParameterManager(settings, run_seed, restored)
        self._status = status
        self._lock = threading.Lock()
        self._listeners: list[ParametersListener] = []
        self._buffers: dict[str, deque[float]] = {}
        self._message = self.manager.message() if self.manager else None
        for name, lesson in self.manager.lessons.items():
            status.set_parameter_state(name, LESSON_NUM, lesson)
        if self.manager:
            _log.info(
                "environment parameters",
                lessons={name: self.manager.current(name).name for name in self.manager.lessons},
                resumed=bool(restored),
            )

    def add_listener(self, listener: ParametersListener) -> None:
        """``listener(message)`` is called on the training thread after every lesson change."""
        with self._lock:
            self._listeners.append(listener)

    def message(self) -> trainer_pb2.EnvironmentParameters | None:
        """The current values (None when the run has no environment parameters); any thread."""
        with self._lock:
            return self._message

    def after_chunk(
        self, behaviors: Iterable[BehaviorView], episode_returns: Mapping[str, list[float]], generation: int = 0
    ) -> None:
        """Records finished episodes, advances lessons, and records the lesson numbers.

        Args:
            behaviors: every behavior of the run.
            episode_returns: returns of the episodes that just ended, by behavior name.
            generation: the parameters' generation the episodes were played with (the
                chunk's ``parameters_generation``; 0: unknown, counted as current). Episodes
                of an earlier lesson (experience queued before the gateway applied the
                change) do not count toward the current lesson.
        """
        if not self.manager:
            return
        behaviors = list(behaviors)
        if generation and generation != self.manager.generation:
            episode_returns = {}
        for behavior in behaviors:
            returns = episode_returns.get(behavior.name)
            if returns:
                brain = behavior_base_name(behavior.name)
                buffer = self._buffers.get(brain)
                if buffer is None:
                    buffer = self._buffers[brain] = deque(maxlen=self.manager.reward_buffer_size(brain))
                buffer.extend(returns)
        steps = {behavior_base_name(b.name): b.steps for b in behaviors}
        max_steps = {behavior_base_name(b.name): b.settings.max_steps for b in behaviors}
        changes = self.manager.update(steps, max_steps, {k: list(v) for k, v in self._buffers.items()})
        if changes:
            self._changed(changes)
        for name, lesson in self.manager.lessons.items():
            for behavior in behaviors:
                behavior.stats.add(LESSON_TAG.format(name), float(lesson), stats_mod.Aggregation.MOST_RECENT)

    def _changed(self, changes: list[LessonChange]) -> None:
        for buffer in self._buffers.values():
            buffer.clear()
        for change in changes:
            self._status.set_parameter_state(change.parameter, LESSON_NUM, change.lesson)
            console(
                f"Parameter '{change.parameter}' has changed. Now in lesson '{change.lesson_name}'",
                component="trainer_server.environment_parameters",
                parameter=change.parameter,
                lesson=change.lesson,
                value=change.value,
            )
        message = self.manager.message(reset=any(c.require_reset for c in changes))
        with self._lock:
            self._message = self.manager.message()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(message)
