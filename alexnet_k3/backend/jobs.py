"""Multi-process data-parallel jobs: torch (torchrun, DDP), jax, tensorflow (TF_CONFIG).

A job is described by its launcher's variables (`alexnet_k3.launch.job_process`):
torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT on torch,
KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID on jax, TF_CONFIG
on tensorflow (`tf_job`: MultiWorkerMirroredStrategy, routed around
keras-team/keras#20585). Every
process runs the same `train`; each feeds its share of every global batch
(`feed.shard_feed`), and process 0 alone writes the run folder.

Every wait on another process is bounded by ALEXNET_K3_DIST_TIMEOUT seconds
(`launch.dist_timeout`, 300 by default): a lost process ends the others with
`WorkerLost` (a `ConnectionError`, so the command line prints one line) instead
of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import signal

import keras
import numpy as np

from alexnet_k3 import core, launch
from alexnet_k3.backend import feed, info, tf_job
from alexnet_k3.core import atomic_save


class WorkerLost(ConnectionError):
    """A process of a multi-process job was lost; the survivors stop with this."""


_JOINED = None  # the Job this process joined: a process joins one job, once


def job_in_environment() -> tuple[int, int] | None:
    """(rank, processes) of the job this backend's launch variables describe, or None."""
    return launch.job_process(info.name())


def join(devices: int | None = None) -> Job:
    """Joins the job the environment describes (once per process) and returns it."""
    global _JOINED
    if _JOINED is None:
        rank, processes = job_in_environment()
        _JOINED = Job(rank, processes, devices)
    return _JOINED


def save_alone(model, save, path) -> None:
    """`core.atomic_save(save, path)` of `model`, outside any distribution: process 0's saves.

    Keras's savers build throwaway optimizers and metrics to know which attributes
    to skip. Under a multi-process distribution each new variable is a collective
    (jax: `jax.device_put` checks every process passes the same value;
    tensorflow: its initial value is broadcast from worker 0), which process 0
    alone would enter: the processes then fall out of step, or wait until the
    timeout. So jax saves with no distribution set, tensorflow outside the
    strategy's scope (`tf_job.save_outside_scope`).
    """
    if _JOINED is not None and _JOINED.backend == "tensorflow":
        tf_job.save_outside_scope(lambda: atomic_save(save, path), model)
        return
    with _no_jax_distribution():
        atomic_save(save, path)


@contextlib.contextmanager
def _no_jax_distribution():
    if info.name() != "jax" or keras.distribution.distribution() is None:
        yield
        return
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


class Job:
    """This process's part in a data-parallel job of `processes` processes.

    torch: `torch.distributed.init_process_group` (NCCL on cuda:LOCAL_RANK when
    CUDA is available, gloo on CPUs) with `timeout=` ALEXNET_K3_DIST_TIMEOUT;
    `prepare` wraps the model in `DistributedDataParallel` through a custom
    `train_step`, so DDP all-reduces the gradients (bucketed, overlapped with the
    backward pass). jax: `jax.distributed.initialize` from the
    KERAS_DISTRIBUTION_* variables, with gloo collectives on CPUs, heartbeat and
    shutdown bounded by the same timeout, and `keras.distribution.DataParallel`
    over every process's devices. tensorflow: `tf_job.strategy`
    (MultiWorkerMirroredStrategy from TF_CONFIG, collectives bounded by the same
    timeout) over every worker's local GPUs, or one CPU each. One device per
    process on torch.

    Attributes:
        rank, processes: this process's index and the job's process count.
        devices: the devices of the whole job (`num_replicas` of them).
        writes: True on process 0, the one process that writes the run folder.
    """

    def __init__(self, rank: int, processes: int, devices: int | None = None):
        self.rank, self.processes = rank, processes
        self.writes = rank == 0
        self.timeout = launch.dist_timeout()
        self.backend = info.name()
        self._shards = None  # tensorflow: the training feed's shard_feed, for FeedEpoch
        self._ddp_models = []  # torch: models whose train_step holds a DDP wrapper
        if self.backend == "torch":
            self.devices = [f"process-{r}" for r in range(processes)]
            self._engine = None
            self._join_torch()
        elif self.backend == "tensorflow":
            self._engine = tf_job.strategy(self.timeout)
            self.devices = [f"replica-{i}" for i in range(self._engine.num_replicas_in_sync)]
            self._check_devices(devices)
        else:
            self._join_jax()
            self.devices = list(keras.distribution.list_devices())
            self._check_devices(devices)
            # Each process already feeds its own share (`train_feed`): Keras's auto-sharding
            # (for a tf.data.Dataset only) would shard it again.
            self._engine = keras.distribution.DataParallel(
                devices=self.devices, auto_shard_dataset=False
            )
        if self.backend == "torch":
            # torchrun stops the other processes with SIGTERM when one fails: they
            # then end with the same one-line advice as a lost connection.
            signal.signal(signal.SIGTERM, self._stopped)

    @property
    def num_replicas(self) -> int:
        return len(self.devices)

    def _check_devices(self, devices: int | None) -> None:
        if devices is not None and devices != self.num_replicas:
            raise ValueError(
                f"devices={devices} asked for, but this {self.processes}-process job has "
                f"{self.num_replicas} devices: a job uses all of them. Leave out "
                f"{core.option_name('devices')}, or launch the job on fewer devices."
            )

    def _join_torch(self):
        import torch
        import torch.distributed as dist

        if dist.is_initialized():
            return
        timeout = datetime.timedelta(seconds=self.timeout)
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)  # Keras's "cuda" is the current device
            device = torch.device("cuda", local)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)

    def _join_jax(self):
        import jax

        if jax.distributed.is_initialized():
            return
        # What keras.distribution.initialize() does with these variables, plus
        # bounded waits it has no arguments for (jax waits 100-300 s by default).
        addresses = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES", "")
        if not addresses:
            raise ValueError(
                "KERAS_DISTRIBUTION_PROCESS_ID and _NUM_PROCESSES are set but "
                "KERAS_DISTRIBUTION_JOB_ADDRESSES is not: set it to process 0's HOST:PORT "
                "on every process of the job."
            )
        # CPU processes exchange gradients over gloo (jax's default, made explicit).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        seconds = max(int(self.timeout), 1)
        jax.distributed.initialize(
            coordinator_address=addresses.split(",")[0],
            num_processes=self.processes,
            process_id=self.rank,
            initialization_timeout=seconds,
            heartbeat_timeout_seconds=seconds,
            shutdown_timeout_seconds=seconds,
        )

    def scope(self):
        """Context manager under which the model is built, compiled and fit."""
        return self._engine.scope() if self._engine is not None else contextlib.nullcontext()

    def prepare(self, model) -> None:
        """Readies a compiled `model` for `fit` in the job (call again per compile).

        torch: DDP; tensorflow: `tf_job.prepare` (keras-team/keras#20585).
        """
        if self.backend == "torch":
            _use_ddp(model)
            if model not in self._ddp_models:  # compiled again: the new step replaced the old
                self._ddp_models.append(model)
        elif self.backend == "tensorflow":
            tf_job.prepare(model)

    def callbacks(self, train_feed) -> list:
        """Callbacks to put first in `fit`'s list: `train_feed`'s epoch; on torch `TorchSync`."""
        first = [TorchSync(self.processes)] if self.backend == "torch" else []
        shards = self._shards if self.backend == "tensorflow" else train_feed["x"]
        return [*first, FeedEpoch(shards)]

    def train_feed(self, x, y, batch_size: int, seed: int) -> dict:
        """`fit`'s training data: this process's share of each global batch, reshuffled."""
        shards = feed.shard_feed(
            x,
            y,
            batch_size=batch_size,
            rank=self.rank,
            processes=self.processes,
            replicas=self.num_replicas,
            shuffle_seed=seed,
        )
        if self.backend != "tensorflow":
            return {"x": shards}
        self._shards = shards
        return {"x": self._distributed(shards), "shuffle": False}  # the feed shuffles

    def _distributed(self, shards):
        local = self.num_replicas // self.processes  # every worker has as many
        return tf_job.distributed_feed(self._engine, shards, local)

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Global batches in an epoch of `n` images, padded as `train_feed` pads them."""
        return -(-(n + -n % self.num_replicas) // batch_size)

    def validation_feed(self, x, y, batch_size: int):
        """jax, tensorflow: this process's share (the metrics are the job's); torch: all of it.

        On torch every process validates the whole hold-out on identical weights.
        """
        if self.backend == "torch":
            return x, y
        n = len(x) - len(x) % self.num_replicas  # at most num_replicas - 1 images left out
        shards = feed.shard_feed(
            x[:n], y[:n], batch_size=batch_size, rank=self.rank, processes=self.processes
        )
        return self._distributed(shards) if self.backend == "tensorflow" else shards

    def lost(self, error: BaseException) -> WorkerLost | None:
        """The `WorkerLost` that `error` (raised while training) means, or None."""
        if isinstance(error, WorkerLost):
            return error
        text = f"{type(error).__name__}: {error}".lower()
        markers = ("connection closed", "connection reset", "gloo", "nccl", "timed out")
        markers += ("distbackenderror", "heartbeat", "unavailable", "deadline")
        if not any(m in text for m in markers):
            return None
        return WorkerLost(self.advice(f"lost contact with {self._other()}"))

    def _other(self) -> str:
        if self.processes == 2:
            return f"process {1 - self.rank}"
        return "another process of the job"

    def advice(self, what: str) -> str:
        return (
            f"process {self.rank} of {self.processes} {what} (waits are bounded by "
            f"ALEXNET_K3_DIST_TIMEOUT={self.timeout:g} s), so the job stops. Re-launch the "
            "same command with --resume: every process continues from the last finished epoch."
        )

    def _stopped(self, signum, frame):
        raise WorkerLost(self.advice("was stopped by its launcher (another process failed)"))

    def finish(self) -> None:
        """Leaves the job once training is over (torch; jax and tensorflow leave at exit)."""
        if self.backend == "torch":
            import torch.distributed as dist

            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # DDP's reducer holds the process group: released here, before the group is
            # destroyed. Left to the interpreter's exit, gloo's threads were torn down
            # still running ("terminate called without an active exception", SIGABRT;
            # 1 in 2-5 two-process bench jobs on the 2-core CPU).
            for model in self._ddp_models:
                del model.train_step  # Keras's own step again
                model.train_function = None
            self._ddp_models.clear()
            gc.collect()
            if dist.is_initialized():
                dist.destroy_process_group()


def _use_ddp(model) -> None:
    """Sets `model.train_step` to Keras's torch step with the forward pass through DDP.

    Keras's documented extension point (a custom `train_step`, as in "Customizing
    what happens in fit() with PyTorch"), set on this model instance: the loss's
    backward pass then fires DDP's gradient hooks, which average the gradients
    over the processes in buckets while backward still runs. A new wrapper per
    compile: DDP fixes the set of trainable parameters when it is built.
    """
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel(
        model,
        # Keras keeps moving statistics as non-trainable parameters, not buffers, so
        # DDP's buffer broadcast has nothing to send: `TorchSync` hands them over.
        device_ids=[torch.cuda.current_device()] if torch.cuda.is_available() else None,
    )
    loss_tracker = next(m for m in model.metrics if m.name == "loss")

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = ddp(x, training=True)
        model.zero_grad()
        loss = model.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
        )
        loss_tracker.update_state(loss, sample_weight=keras.ops.shape(y_pred)[0])
        if model.optimizer is not None:
            loss = model.optimizer.scale_loss(loss)
        trainable = model.trainable_weights[:]
        loss.backward()
        with torch.no_grad():
            model.optimizer.apply([v.value.grad for v in trainable], trainable)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    model.train_step = train_step
    model.train_function = None  # built again around this step


class FeedEpoch(keras.callbacks.Callback):
    """Tells a `feed.shard_feed` which epoch begins: its permutation is seeded by it.

    The epoch `fit` counts, so a resumed run draws the epochs it has left as the
    uninterrupted run would have; the feed reads its batches only after this.
    """

    def __init__(self, shard_feed):
        super().__init__()
        self.feed = shard_feed

    def on_epoch_begin(self, epoch, logs=None):
        self.feed.epoch = epoch


class TorchSync(keras.callbacks.Callback):
    """Makes every torch process see the job's epoch, not its own share of it.

    After an epoch, the training logs become the mean over the processes (each
    fed equal shares, so the mean of their means is the epoch's), and the moving
    statistics (non-trainable floats) are process 0's, as DDP's own buffer
    broadcast would make them; before validation too, so every process
    validates the same model. Goes first, so the other callbacks see these logs.
    """

    def __init__(self, processes: int):
        super().__init__()
        self.processes = processes

    def on_test_begin(self, logs=None):
        self._share_statistics()

    def on_epoch_end(self, epoch, logs=None):
        import torch
        import torch.distributed as dist

        self._share_statistics()
        keys = sorted(k for k in (logs or {}) if not k.startswith("val_"))
        if keys:
            values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64)
            dist.all_reduce(values)
            logs.update(zip(keys, (values / self.processes).tolist(), strict=True))

    def _share_statistics(self):
        import torch
        import torch.distributed as dist

        variables = [
            v
            for v in self.model.non_trainable_variables
            if "float" in str(v.dtype) and "seed_generator" not in v.path
        ]
        if not variables:
            return
        flat = torch.cat([v.value.detach().reshape(-1) for v in variables])
        dist.broadcast(flat, src=0)
        offset = 0
        for v in variables:
            size = int(np.prod(v.shape))
            v.assign(flat[offset : offset + size].reshape(v.shape))
            offset += size
