"""Finding free ports for Unity instances (tests, benchmarks, local runs).

Why: mlagents-envs' server for instance i binds ``[::]:base_port + worker_id``, so a
launcher needs ``count`` consecutive ports free on IPv4 and IPv6 at once, not just
whatever the OS hands out for one socket.
"""

from __future__ import annotations

import random
import socket


def _bindable(port: int) -> bool:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        finally:
            sock.close()
    return True


def free_base_port(count: int = 1, low: int = 20000, high: int = 60000) -> int:
    """A base port such that ``base .. base + count - 1`` are all free right now.

    Raises:
        RuntimeError: when 200 random tries found none.
    """
    for _ in range(200):
        base = random.randint(low, high - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in [{low}, {high})")
