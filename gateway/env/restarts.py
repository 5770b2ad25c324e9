"""Restart quota of one environment instance, with ML-Agents' limits.

Why: a Unity process that crashes or hangs is restarted, but one that crashes in a
loop must not be restarted forever. Like ``mlagents-learn``, each instance may be
restarted at most ``max_lifetime_restarts`` times in total and at most
``rate_limit_n`` times within any ``rate_limit_period_s`` window (-1 = no limit).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from gateway.options import RestartLimits


class RestartQuota:
    """Counts the restarts of one instance and says whether another one is allowed."""

    def __init__(self, limits: RestartLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._recent: deque[float] = deque()
        self.restarts = 0

    def _drop_old(self, now: float) -> None:
        while self._recent and now - self._recent[0] > self._limits.rate_limit_period_s:
            self._recent.popleft()

    def allowed(self) -> bool:
        """True when one more restart stays within both limits."""
        now = self._clock()
        self._drop_old(now)
        lifetime_ok = (
            self._limits.max_lifetime_restarts == -1 or self.restarts < self._limits.max_lifetime_restarts
        )
        rate_ok = self._limits.rate_limit_n == -1 or len(self._recent) < self._limits.rate_limit_n
        return lifetime_ok and rate_ok

    def record(self) -> None:
        """Counts a restart that is about to happen."""
        self.restarts += 1
        self._recent.append(self._clock())
