"""``--heuristic BEHAVIOR``: the stand-in's scripted expert as a ``Policy``.

Why: Unity's "Heuristic Only" behavior type acts with a hand-written controller; the
stand-in's tasks have such controllers (``unity_standin.heuristics``), computed from the
observations alone, so the gateway's worker acts with them like with a model
(``--record-demo`` then records expert demonstrations).
"""

from __future__ import annotations

import numpy as np

from common.architecture import PolicyOutput
from unity_standin.heuristics import heuristic_for


class HeuristicPolicy:
    """Acts with the scripted expert of ``behavior`` (a ``gateway.actor.policy.Policy``).

    Raises:
        ValueError: the behavior has no scripted expert.
    """

    #: a scripted expert keeps no LSTM memory
    memory_size = 0

    def __init__(self, behavior: str) -> None:
        self.behavior = behavior
        self._heuristic = heuristic_for(behavior)

    def act(
        self, observations: list[np.ndarray], action_mask: np.ndarray | None, rng: np.random.Generator,
        deterministic: bool = False, memories: np.ndarray | None = None,
    ) -> PolicyOutput:
        """The expert's actions for n agents (log-probabilities 0: a deterministic controller)."""
        continuous, discrete = self._heuristic(observations, action_mask)
        n = int(np.asarray(observations[0]).shape[0])
        return PolicyOutput(
            continuous=continuous,
            discrete=discrete,
            log_probs=np.zeros(n, np.float32),
            env_continuous=continuous,
        )
