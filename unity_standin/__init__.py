"""A stand-in for a Unity player: the Unity side of the ML-Agents protocol with built-in tasks.

Launch it like a Unity build: ``UnityEnvironment(file_name=executable_path(),
additional_args=["--task", "gridworld"])``, or run ``tandem-unity-standin`` yourself.
"""

from __future__ import annotations

import os
import shutil
import sys

SCRIPT_NAME = "tandem-unity-standin"


def executable_path() -> str:
    """Absolute path of the installed ``tandem-unity-standin`` script.

    Looks next to the running interpreter first (the project's virtual environment),
    then on PATH.

    Raises:
        FileNotFoundError: when the script is not installed (run ``make setup``).
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), SCRIPT_NAME)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(SCRIPT_NAME)
    if found:
        return os.path.abspath(found)
    raise FileNotFoundError(
        f"{SCRIPT_NAME} is not installed next to {sys.executable} nor on PATH; run `make setup`"
    )


__all__ = ["SCRIPT_NAME", "executable_path"]
