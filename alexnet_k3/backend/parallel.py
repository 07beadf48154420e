"""Data parallelism with the engines Keras already has (jax, tensorflow; not torch)."""

from __future__ import annotations

import os

import keras

from alexnet_k3.backend import info


class DataParallel:
    """Data-parallel training over `devices` local accelerators (or all), per backend.

    - jax: `keras.distribution.DataParallel` over `keras.distribution.list_devices()`;
      with several hosts, call `keras.distribution.initialize()` first (it reads
      KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and
      KERAS_DISTRIBUTION_PROCESS_ID) and every host's devices join one mesh.
    - tensorflow: `tf.distribute.MirroredStrategy` over the local GPUs, or the
      logical CPU devices when there is no GPU.
    - torch: Keras has no distribution support for torch; raises with what to use.

    The model must be built and compiled, and `fit` run, inside `scope()`. The
    global batch is split evenly across the replicas.
    """

    def __init__(self, devices: int | None = None):
        backend = info.name()
        if backend == "torch":
            raise ValueError(
                "Data-parallel training is not available on the torch backend: Keras "
                f"{keras.__version__} has no distribution support for torch. Use "
                "--backend jax (keras.distribution.DataParallel) or --backend tensorflow "
                "(tf.distribute.MirroredStrategy), or train on one device."
            )
        if devices is not None and (not isinstance(devices, int) or devices < 1):
            raise ValueError(f"`devices` must be a positive integer, received devices={devices!r}.")
        if backend == "jax":
            if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") and not _jax_initialized():
                # Several hosts: join the cluster the KERAS_DISTRIBUTION_* variables describe.
                keras.distribution.initialize()
            available = keras.distribution.list_devices()
        else:
            import tensorflow as tf

            available = [d.name for d in tf.config.list_logical_devices("GPU")] or [
                d.name for d in tf.config.list_logical_devices("CPU")
            ]
        if devices is not None and devices > len(available):
            raise ValueError(
                f"devices={devices} asked for, but the {backend} backend sees {len(available)}: "
                f"{available}. Ask for at most {len(available)}."
            )
        self.devices = list(available[: devices or len(available)])
        if backend == "jax":
            self._engine = keras.distribution.DataParallel(devices=self.devices)
        else:
            import tensorflow as tf

            self._engine = tf.distribute.MirroredStrategy(devices=self.devices)

    @property
    def num_replicas(self) -> int:
        return len(self.devices)

    def scope(self):
        """Context manager under which models are built, compiled and fit."""
        return self._engine.scope()


def _jax_initialized() -> bool:
    import jax.distributed

    return jax.distributed.is_initialized()


def replicas_holding(model) -> int:
    """How many devices hold a copy of `model`'s first weight: what really got replicated."""
    value = model.weights[0].value
    if info.name() == "jax":
        return len(value.sharding.device_set)
    if info.name() == "tensorflow" and hasattr(value, "values"):
        return len(value.values)  # a MirroredVariable has one component per replica
    return 1
