"""What every benchmark's results file needs: the machine's CPU name, and writing the file.

Why: each ``bench_*`` module renders its own Markdown table, but they all name the
machine the same way and write ``benchmarks/results/<name>.md`` the same way.
"""

from __future__ import annotations

import platform
from pathlib import Path

from common.logging import get_logger

_log = get_logger("benchmarks")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(path: Path, text: str) -> None:
    """Writes a results file (creating ``benchmarks/results/`` if needed) and logs where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    _log.info("results written", path=str(path))
