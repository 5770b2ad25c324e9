"""Which trainer types have a learner.

Replaced by the learning helper's registry at merge (which also provides ``make_learner``):
this stand-in only lets the configuration's support check run before that merge.
"""

from __future__ import annotations


def trainer_types() -> frozenset[str]:
    """The trainer types that have a learner."""
    return frozenset({"ppo", "sac"})
