"""Built-in tasks of the stand-in, by the name ``--task`` takes."""

from __future__ import annotations

from unity_standin.tasks.base import Task, TaskOptions


def task_names() -> list[str]:
    return sorted(_registry())


def _registry() -> dict[str, type[Task]]:
    from unity_standin.tasks.ball3d import Ball3D

    registry: dict[str, type[Task]] = {"3dball": Ball3D}
    try:
        from unity_standin.tasks.gridworld import GridWorld

        registry["gridworld"] = GridWorld
    except ImportError:  # pragma: no cover - while a task is being written
        pass
    try:
        from unity_standin.tasks.multibehavior import MultiBehavior

        registry["multibehavior"] = MultiBehavior
    except ImportError:  # pragma: no cover
        pass
    return registry


def make_task(name: str, options: TaskOptions, side_channels) -> Task:
    """Builds the task called ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(registry))}")
    return registry[name](options, side_channels)
