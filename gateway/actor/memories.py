"""The LSTM memory every agent of one behavior carries between its decisions.

Why: a policy with ``network_settings.memory`` acts from the memory its previous step
left (ML-Agents' ``recurrent_in`` / ``recurrent_out``); the memory belongs to the agent,
not to the snapshot, so the worker loop keeps it here, per agent id: zeros when an
agent starts an episode (a new id, or the same id after its terminal step), kept across
``time_horizon`` cuts and snapshot changes within the episode, forgotten when the
episode ends or the instance is reset, as ML-Agents' policy does with its memory dict.
"""

from __future__ import annotations

import numpy as np


class AgentMemories:
    """Memories ``[memory_size]`` per agent id of one behavior in one instance.

    Args:
        memory_size: floats per agent (the policy's ``memory_size``, > 0).
    """

    def __init__(self, memory_size: int) -> None:
        self.memory_size = int(memory_size)
        self._rows: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def take(self, agent_ids: np.ndarray) -> np.ndarray:
        """float32 ``[n, memory_size]``: each agent's memory, zeros for an agent starting an episode."""
        out = np.zeros((len(agent_ids), self.memory_size), np.float32)
        rows = self._rows
        for k, agent in enumerate(np.asarray(agent_ids).tolist()):
            row = rows.get(agent)
            if row is not None:
                out[k] = row
        return out

    def keep(self, agent_ids: np.ndarray, memories: np.ndarray) -> None:
        """Stores each agent's memory after its step (``memories`` ``[n, memory_size]``)."""
        memories = np.asarray(memories, np.float32)
        for k, agent in enumerate(np.asarray(agent_ids).tolist()):
            self._rows[agent] = memories[k]

    def forget(self, agent_ids: np.ndarray) -> None:
        """The agents' episodes ended: their next step starts from zeros."""
        for agent in np.asarray(agent_ids).tolist():
            self._rows.pop(agent, None)

    def clear(self) -> None:
        """Every episode ended (the instance failed or was reset)."""
        self._rows.clear()
