"""The process-tree CPU accounting that ``benchmarks.before_after_cpu`` compares checkouts with."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.before_after_cpu import cpu_seconds, process_tree


def test_process_tree_finds_a_child_and_counts_its_cpu():
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE, text=True)
    try:
        tree = process_tree(os.getpid())
        assert tree[0] == os.getpid() and child.pid in tree
        while cpu_seconds([child.pid]) < 0.25:  # the child burns 0.3 s of CPU, then waits on stdin
            assert child.poll() is None
            time.sleep(0.01)
        assert cpu_seconds(tree) >= cpu_seconds([child.pid])
    finally:
        child.communicate("\n", timeout=60)
    assert cpu_seconds([child.pid]) == 0.0  # gone: nothing to read, no error
