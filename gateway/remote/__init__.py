"""Remote control: any gRPC client steps the instances (``tandem.v1.Gateway/Play``).

``service`` is the servicer (also ``Describe`` in actor mode), ``actions`` validates a
step request against the last decision steps, ``pool`` steps every instance in
parallel (``EnvironmentPool``), ``client`` is the Python client, ``agent_slots`` keeps one
behavior's agents in fixed rows (for ``tandem_envs``' vector env and ``gateway.dm_env_rpc``).
"""
