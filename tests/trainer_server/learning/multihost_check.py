"""Child process of test_multihost.py: one process of a two-process learner, or the
single-process reference.

``python multihost_check.py ppo|sac OUT single``: trains data_parallel_check's learner (same
spec, seed and fragments) on one CPU device and writes ``OUT`` (an .npz of the parameters and
the metrics). ``python multihost_check.py ppo|sac OUT PROCESS_ID NUM_PROCESSES ADDRESS``: the
same through ``jax.distributed``, one CPU device per process: process 0 trains and writes
``OUT``, the others follow (``multihost.follow``). Logs are JSON lines on stderr, among them
``multi-host update`` with the state's digest on every process.
"""

from __future__ import annotations

import json
import sys

import jax
import numpy as np

from common.logging import configure_logging
from data_parallel_check import SPEC, run_updates, settings
from trainer_server.learning import devices, multihost
from trainer_server.learning.registry import make_learner


def train(algorithm: str, make) -> tuple[list[np.ndarray], list[dict[str, float]]]:
    learner = make(SPEC, settings(algorithm), 3)
    metrics = run_updates(learner)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(learner._state.params)], metrics


def save(out: str, params: list[np.ndarray], metrics: list[dict[str, float]]) -> None:
    np.savez(out, *params, metrics=np.asarray(json.dumps(metrics)))


def main(argv: list[str]) -> int:
    configure_logging(json=True)
    algorithm, out, role = argv[0], argv[1], argv[2]
    if role == "single":
        devices.use(devices.select("cpu", count=1))
        save(out, *train(algorithm, make_learner))
        return 0
    cluster = multihost.Cluster(argv[4], int(argv[3]), int(role), initialization_timeout_s=120, heartbeat_timeout_s=30)
    multihost.initialize(cluster)
    devices.use(multihost.spanning(devices.select("cpu", count=1)))
    if multihost.is_follower():
        code = multihost.follow(make_learner)
    else:
        try:
            save(out, *train(algorithm, multihost.learner_factory(make_learner)))
        finally:
            multihost.stop_followers(0)
        code = 0
    jax.distributed.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
