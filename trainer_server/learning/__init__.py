"""The JAX learners: PPO and SAC as siblings behind one ``Learner`` protocol.

Import what the server needs from ``trainer_server.learning.registry`` (``make_learner``,
``trainer_types``) and ``trainer_server.learning.learner`` (``Learner``).
"""
