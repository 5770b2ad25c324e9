"""Built-in tasks of the stand-in, by the name ``--task`` takes."""

from __future__ import annotations

from unity_standin.side_channels import SideChannels
from unity_standin.tasks.ball3d import Ball3D
from unity_standin.tasks.base import Task, TaskOptions
from unity_standin.tasks.coop_push import CoopPush, DungeonEscape
from unity_standin.tasks.crawler import Crawler
from unity_standin.tasks.gridworld import GridWorld, GridWorld84
from unity_standin.tasks.hallway import Hallway
from unity_standin.tasks.multibehavior import MultiBehavior
from unity_standin.tasks.pong import Pong, PongAsymmetric, SoccerTwosCourt
from unity_standin.tasks.pyramids import Pyramids
from unity_standin.tasks.sorter import Sorter
from unity_standin.tasks.walljump import WallJump

TASKS: dict[str, type[Task]] = {
    Ball3D.name: Ball3D,
    CoopPush.name: CoopPush,
    Crawler.name: Crawler,
    DungeonEscape.name: DungeonEscape,
    GridWorld.name: GridWorld,
    GridWorld84.name: GridWorld84,
    Hallway.name: Hallway,
    MultiBehavior.name: MultiBehavior,
    Pyramids.name: Pyramids,
    Sorter.name: Sorter,
    WallJump.name: WallJump,
    Pong.name: Pong,
    PongAsymmetric.name: PongAsymmetric,
    SoccerTwosCourt.name: SoccerTwosCourt,
}


def task_names() -> list[str]:
    return sorted(TASKS)


def make_task(name: str, options: TaskOptions, side_channels: SideChannels) -> Task:
    """Builds the task called ``name``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return TASKS[name](options, side_channels)


__all__ = ["TASKS", "Task", "TaskOptions", "make_task", "task_names"]
