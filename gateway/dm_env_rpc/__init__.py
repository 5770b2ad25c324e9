"""The dm_env_rpc v1 protocol, served by the gateway beside ``tandem.v1.Gateway`` (``--dm-env-rpc-listen``).

``world`` maps a behavior's agents to dm_env_rpc tensor specs, ``service`` is the
``dm_env_rpc.v1.Environment`` servicer over the environment pool, ``server`` starts it on
its own port. Needs the optional ``dm-env-rpc`` package (``pip install -e .[envs]``).
"""
