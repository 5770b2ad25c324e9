"""The one place that maps a behavior's ``trainer_type`` to a learner class.

Why: the server (``make_learner``) and the settings' support check (``trainer_types``)
must agree on which algorithms exist; no algorithm name appears outside this package.
The learner modules (and JAX) are imported only when a learner is made, so that the
support check at start-up stays as quick as reading the configuration.
"""

from __future__ import annotations

import importlib

from common.specs import BehaviorSpec
from trainer_server.learning.learner import Learner
from trainer_server.config.schema import TrainerSettings

#: trainer_type -> (module, class) of its learner
_LEARNERS: dict[str, tuple[str, str]] = {
    "ppo": ("trainer_server.learning.ppo", "PPOLearner"),
    "sac": ("trainer_server.learning.sac", "SACLearner"),
    "poca": ("trainer_server.learning.poca", "POCALearner"),
}


def trainer_types() -> frozenset[str]:
    """The trainer types that have a learner ("ppo", "sac", "poca")."""
    return frozenset(_LEARNERS)


def make_learner(spec: BehaviorSpec, settings: TrainerSettings, seed: int) -> Learner:
    """A new learner for one behavior.

    Args:
        spec: the behavior's observations and actions.
        settings: its trainer settings, validated and support-checked at load.
        seed: initialises the networks and every later random draw.

    Raises:
        ValueError: naming the behavior, for a trainer type without a learner.
    """
    where = _LEARNERS.get(str(settings.trainer_type))
    if where is None:
        raise ValueError(
            f"behavior {spec.name}: trainer_type {settings.trainer_type} has no learner "
            f"(available: {', '.join(sorted(_LEARNERS))})"
        )
    module, name = where
    learner_class = getattr(importlib.import_module(module), name)
    learner = learner_class(spec, settings, seed)
    warm_up = getattr(learner, "warm_up", None)  # optional: compile before experience arrives (SAC)
    if warm_up is not None:
        warm_up()
    return learner
