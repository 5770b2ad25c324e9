"""Unity environments behind a Tandem gateway, for the rest of the RL ecosystem.

* ``tandem_envs.gymnasium_env``: ``UnityEnv`` (a single-agent ``gymnasium.Env``) and
  ``UnityVectorEnv`` (a ``gymnasium.vector.VectorEnv``, one slot per agent of a behavior);
* ``tandem_envs.pettingzoo_env``: ``UnityParallelEnv`` (a PettingZoo ``ParallelEnv`` over
  every behavior and agent).

Each is a thin adapter over ``gateway.remote.client`` (the gateway's ``tandem.v1.Gateway``
Play stream). They need the optional extra: ``pip install -e .[envs]``. The dm_env_rpc
protocol is served by the gateway itself (``tandem-gateway --dm-env-rpc-listen``).

Importing this package registers ``tandem/Unity-v0`` with Gymnasium (when installed), so
``gymnasium.make("tandem/Unity-v0", address="127.0.0.1:5756")`` works.
"""

from __future__ import annotations

ENV_ID = "tandem/Unity-v0"


def _register() -> None:
    try:
        import gymnasium
    except ImportError:  # the extra is not installed: nothing to register
        return
    if ENV_ID not in gymnasium.registry:
        # nondeterministic: Unity takes its seed at launch and its physics need not repeat
        gymnasium.register(id=ENV_ID, entry_point="tandem_envs.gymnasium_env:UnityEnv", nondeterministic=True)


_register()
