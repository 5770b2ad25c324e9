"""`make bench`: runs every benchmark module (benchmarks/bench_*.py) in turn.

Each module has ``main(argv) -> int`` and writes ``benchmarks/results/<name>.md``:
a table of figures measured side by side in one run, with the command that made it.
``python -m benchmarks.run NAME...`` runs only the named ones (e.g. ``bench_env``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from common.logging import configure_logging, get_logger


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    log = get_logger("benchmarks")
    argv = list(sys.argv[1:] if argv is None else argv)
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    if argv:
        unknown = sorted(set(argv) - set(names))
        if unknown:
            log.error("unknown benchmark", names=unknown, known=names)
            return 2
        names = [n for n in names if n in argv]
    failed = []
    for name in names:
        log.info("benchmark starting", name=name)
        rc = importlib.import_module(f"benchmarks.{name}").main([])
        log.info("benchmark finished", name=name, rc=rc)
        if rc:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
