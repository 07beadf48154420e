"""Data parallelism: one process over local devices (jax, tensorflow), or a job of several.

`data_parallel` picks the engine: a multi-process `jobs.Job` where the
environment describes a job (torchrun on torch, KERAS_DISTRIBUTION_* on jax,
TF_CONFIG on tensorflow), else the one-process `DataParallel`.
Both answer the same questions for `train`.
"""

from __future__ import annotations

import contextlib

import keras

from alexnet_k3 import core, launch
from alexnet_k3.backend import feed, info, jobs


def data_parallel(devices: int | None = None):
    """The engine `train(data_parallel=True)` uses in this process (see the module doc).

    Raises ValueError for a setup that cannot train: torch without torchrun, bad `devices`.
    """
    job = jobs.job_in_environment()
    if job is not None:
        return jobs.join(devices)
    return DataParallel(devices)


class OneDevice:
    """Training on one device, in one process: what `train` uses without `data_parallel`.

    The base of `DataParallel`; `jobs.Job` answers the same questions for a job.
    """

    rank, processes, writes, num_replicas = 0, 1, True, 1

    def scope(self):
        """Context manager under which models are built, compiled and fit."""
        return contextlib.nullcontext()

    def prepare(self, model) -> None:
        """Readies a compiled model for `fit`: nothing to do in one process."""

    def callbacks(self, train_feed) -> list:
        """Callbacks to put first in `fit`'s list: none in one process."""
        return []

    def train_feed(self, x, y, batch_size: int, seed: int) -> dict:
        """`fit`'s keyword arguments for the training data (`array_feed`, reshuffled)."""
        return feed.array_feed(x, y, batch_size=batch_size, shuffle=True)

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Global batches in an epoch of `n` images (the schedule counts them)."""
        return -(-n // batch_size)

    def validation_feed(self, x, y, batch_size: int):
        """`fit`'s `validation_data` in the form `array_feed` chose."""
        data = feed.array_feed(x, y, batch_size=batch_size)
        return (data["x"], data["y"]) if "y" in data else data["x"]

    def lost(self, error: BaseException) -> None:
        """The job's lost-process error that `error` means: none in one process."""
        return None

    def finish(self) -> None:
        """Leaves the job after training: nothing to leave in one process."""


def refuse_job_without_data_parallel() -> None:
    """Refuses a job's process that would train alone (no `data_parallel`)."""
    job = jobs.job_in_environment()
    if job is not None and job[1] > 1:
        names = " and ".join(launch.JOB_VARIABLES[info.name()])
        raise ValueError(
            f"This process is process {job[0]} of a {job[1]}-process job ({names} are set), "
            f"but {core.option_name('data_parallel', False)}: every process would train alone "
            f"and write the same run folder. Add {core.option_name('data_parallel', True)}, "
            "or start one process without the launcher's variables."
        )


class DataParallel(OneDevice):
    """Data-parallel training over `devices` local accelerators (or all), per backend.

    - jax: `keras.distribution.DataParallel` over `keras.distribution.list_devices()`
      (a job of several processes is `jobs.Job`).
    - tensorflow: `tf.distribute.MirroredStrategy` over the local GPUs, or the
      logical CPU devices when there is no GPU.
    - torch: one process drives one device; raises, saying to launch with
      torchrun (`jobs.Job`: DistributedDataParallel, one process per device).

    The model must be built and compiled, and `fit` run, inside `scope()`. The
    global batch is split evenly across the replicas. The methods below are the
    one-process answers to what `jobs.Job` answers for a job.
    """

    def __init__(self, devices: int | None = None):
        backend = info.name()
        if backend == "torch":
            raise ValueError(
                "Data-parallel training on the torch backend runs one process per device: "
                "launch the same command with torchrun, e.g. `torchrun --nproc-per-node 2 "
                "-m alexnet_k3 train --data-parallel ...` (torch.nn.parallel."
                "DistributedDataParallel; RANK and WORLD_SIZE are not set here). Or use "
                "--backend jax or --backend tensorflow in one process, or train on one device."
            )
        if devices is not None and (not isinstance(devices, int) or devices < 1):
            raise ValueError(f"`devices` must be a positive integer, received devices={devices!r}.")
        if backend == "jax":
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
        return self._engine.scope()


def replicas_holding(model) -> int:
    """How many devices hold a copy of `model`'s first weight: what really got replicated."""
    value = model.weights[0].value
    if info.name() == "jax":
        return len(value.sharding.device_set)
    if info.name() == "tensorflow" and hasattr(value, "values"):
        return len(value.values)  # a MirroredVariable has one component per replica
    return 1
