"""Environment instances: Unity driven through mlagents-envs, one worker (process) each.

``unity_environment`` opens mlagents' ``UnityEnvironment`` with the gateway's
communicator; ``instance`` is one Unity instance (``UnityInstance``); ``steps`` the
batched agent steps (``StepBatch``) and their wire form; ``workers`` the worker
processes and the parent's handles on them; ``messages`` what travels on their pipes;
``restarts`` ML-Agents' restart limits. Both modes (``gateway.remote``,
``gateway.actor``) run their instances through this package.
"""
