"""Child processes that end when the process that started them is gone, even by ``kill -9``.

Why: ``tandem-trainer --with-gateway`` starts a gateway, which starts worker processes,
which start Unity. When the trainer is killed without a chance to clean up, its gateway,
workers and Unity used to keep running (reparented to init, still stepping, holding the
Unity port), and ``--resume --with-gateway`` then could not start. Each child therefore
watches its parent: a daemon thread polls ``os.getppid()`` and, once it differs from the
parent the process started with (it was reparented: the parent died), runs the child's own
clean-up. Polling works the same on Linux and macOS and, unlike ``PR_SET_PDEATHSIG``, does
not fire when merely the *thread* that started the child ends.

* the trainer starts its local gateway with ``EXIT_WITH_PARENT_ENV=<trainer's pid>`` in
  the environment (the pid: a parent that died before the child looked is noticed too); such
  a gateway stops itself as on SIGTERM (it closes its workers and Unity), and exits
  hard if that takes longer than ``GRACE_S``;
* a gateway's worker processes always watch the gateway: they kill their Unity process and
  exit (a real Unity build cannot watch anybody).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

from common.logging import get_logger

#: the parent's pid in a child's environment: the child stops when that parent is gone
EXIT_WITH_PARENT_ENV = "TANDEM_EXIT_WITH_PARENT"
#: how often the parent is checked (seconds)
POLL_S = 0.5
#: how long a graceful stop may take before the process exits hard (seconds)
GRACE_S = 30.0

_log = get_logger("common.lifeline")


def _terminate_self() -> None:
    """The default clean-up: the process's own SIGTERM handling, then a hard exit after ``GRACE_S``."""
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(GRACE_S)
    _log.error("still running after its parent died; exiting now", grace_s=GRACE_S)
    os._exit(1)


def watch_parent(
    on_orphaned: Callable[[], None] | None = None, poll_s: float = POLL_S, parent: int | None = None
) -> threading.Thread:
    """Starts a daemon thread that calls ``on_orphaned`` once the parent process is gone.

    Args:
        on_orphaned: the clean-up (runs on the watcher thread); default: SIGTERM to this
            process, then ``os._exit(1)`` after ``GRACE_S``.
        poll_s: seconds between checks.
        parent: the parent's pid (default: the current parent).

    Returns:
        the watcher thread (started).
    """
    parent = os.getppid() if parent is None else parent
    action = on_orphaned or _terminate_self

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != parent:
                _log.warning("parent process is gone: stopping", parent_pid=parent)
                action()
                return

    thread = threading.Thread(target=watch, name="lifeline", daemon=True)
    thread.start()
    return thread


def parent_to_watch(environ: dict[str, str] | None = None) -> int | None:
    """The parent pid ``EXIT_WITH_PARENT_ENV`` names, or None when this process was not asked to watch."""
    value = (os.environ if environ is None else environ).get(EXIT_WITH_PARENT_ENV, "")
    return int(value) if value.isdigit() else None
