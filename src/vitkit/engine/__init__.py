"""Training engine: run config + recipes, the training loop, checkpoints, evaluation, devices, DDP / FSDP.

Entry points: :func:`vitkit.engine.trainer.train`, :func:`vitkit.engine.evaluate.evaluate`,
:func:`vitkit.engine.predict.predict_files`; configs in :mod:`vitkit.engine.run_config` and
:mod:`vitkit.engine.recipes`. Modules are imported on demand (``vitkit.engine`` itself is light).
"""
