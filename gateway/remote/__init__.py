"""Remote control: any gRPC client steps the instances (``tandem.v1.Gateway/Play``).

``service`` is the servicer (also ``Describe`` in actor mode), ``actions`` validates a
step request against the last decision steps, ``pool`` steps every instance in
parallel (``EnvironmentPool``), ``client`` is the Python client.
"""
