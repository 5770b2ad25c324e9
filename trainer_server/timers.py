"""A hierarchical timer: where the trainer's time went, for ``run_logs/timers.json``.

Why: ML-Agents users read ``timers.json`` to see whether time goes to waiting for
experience, to updates or to writing results. Each ``with timers.block("name"):`` adds
wall time to a node nested under the block that encloses it on the same thread; the
tree is shared by all threads (the gRPC handlers and the training thread), so the
same block name from two threads lands in the same node.

The JSON shape follows ML-Agents' hierarchical timer: every node has ``total``
(seconds, summed over calls), ``count`` (calls), ``self`` (total minus the children's
totals) and ``children`` (by name, only when there are some); the root also carries
``name``, ``gauges`` (``value``/``min``/``max``/``count`` per gauge) and ``metadata``.
The statistics' gauges carry ML-Agents' names (``3DBall.Environment.CumulativeReward.mean``
and ``.sum``): see ``trainer_server.stats.write_gauges``.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

TIMER_FORMAT_VERSION = "0.1.0"


class _Node:
    __slots__ = ("children", "count", "total")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.count = 0
        self.total = 0.0

    def child(self, name: str) -> _Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node()
        return node

    def as_dict(self) -> dict[str, Any]:
        children_total = sum(c.total for c in self.children.values())
        out: dict[str, Any] = {
            "total": self.total,
            "count": self.count,
            "self": max(self.total - children_total, 0.0),
        }
        if self.children:
            out["children"] = {name: c.as_dict() for name, c in self.children.items()}
        return out


class _Gauge:
    __slots__ = ("count", "max", "min", "value")

    def __init__(self, value: float) -> None:
        self.value = self.min = self.max = value
        self.count = 1

    def update(self, value: float) -> None:
        self.value = value
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.count += 1


class HierarchicalTimer:
    """A thread-aware timing tree with gauges and metadata.

    Args:
        command_line: recorded in metadata (``command_line_arguments``), as ML-Agents does.
    """

    def __init__(self, command_line: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._root = _Node()
        self._root.count = 1
        self._local = threading.local()
        self._gauges: dict[str, _Gauge] = {}
        self._start_wall = time.time()
        self._start = time.perf_counter()
        self._metadata: dict[str, str] = {
            "timer_format_version": TIMER_FORMAT_VERSION,
            "start_time_seconds": str(int(self._start_wall)),
            "python_version": sys.version.split()[0],
            "command_line_arguments": " ".join(command_line if command_line is not None else sys.argv),
        }

    def _stack(self) -> list[_Node]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = [self._root]
        return stack

    @contextmanager
    def block(self, name: str) -> Iterator[None]:
        """Times the enclosed code under ``name``, nested in the current block of this thread."""
        stack = self._stack()
        with self._lock:
            node = stack[-1].child(name)
        stack.append(node)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            stack.pop()
            with self._lock:
                node.total += elapsed
                node.count += 1

    def set_gauge(self, name: str, value: float) -> None:
        """Records a gauge value (last, min, max and count are kept); NaN is ignored, as ML-Agents does."""
        value = float(value)
        if math.isnan(value):
            return
        with self._lock:
            gauge = self._gauges.get(name)
            if gauge is None:
                self._gauges[name] = _Gauge(value)
            else:
                gauge.update(value)

    def add_metadata(self, key: str, value: str) -> None:
        with self._lock:
            self._metadata[key] = value

    def as_dict(self) -> dict[str, Any]:
        """The tree as ML-Agents' ``timers.json`` lays it out; the root's total is wall time so far."""
        with self._lock:
            self._root.total = time.perf_counter() - self._start
            tree = self._root.as_dict()
            gauges = {
                name: {"value": g.value, "min": g.min, "max": g.max, "count": g.count}
                for name, g in self._gauges.items()
            }
            metadata = dict(self._metadata)
        metadata["end_time_seconds"] = str(int(time.time()))
        return {"name": "root", "gauges": gauges, "metadata": metadata, **tree}
