"""Actor mode: the workers act with policy snapshots and stream trajectories to a trainer.

Worker side: ``worker_loop`` (``InstanceActor``: act, step, build trajectories),
``trajectories`` (per-agent fragments, episode tallies), ``policy`` (the ``Policy``
interface, ``NumpyPolicy`` in ``numpy_policy``, ``OnnxPolicy`` in ``onnx_policy``).
Parent side: ``runner`` (``ActorRunner``: snapshots to workers, chunks to the trainer,
restarts, credits), ``trainer_link`` (the ``Trainer.Connect`` stream and its bounded
buffer), ``local_models`` (``--policy``: snapshots from ONNX files instead), ``wire``
(chunks and snapshots as bytes).
"""
