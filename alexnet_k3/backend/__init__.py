"""The only part of the package that looks at which Keras backend is active.

Everything else is backend-agnostic and calls `from alexnet_k3 import backend`,
then `backend.device_name()` and so on. What cannot be agnostic lives here, by job:

- `info`: the backend's name (the one `keras.config.backend()` call), versions,
  device, synchronizing before a clock stops, peak memory, freeing memory,
  keeping TensorFlow unimported on torch and jax;
- `feed`: how in-memory arrays reach `fit` (`array_feed`; the benchmark's
  `repeated_batch_feed` and `device_predict`), and the random state a resumed run
  restores (`random_state`, `set_random_state`);
- `speed`: the recommended compile settings, data format and precision, and
  the process-wide tuning (`tune_for_speed`, glibc's `keep_freed_memory`),
  and which precisions are measured slower than float32 here (`precision_warning`);
- `parallel`: data-parallel training (`data_parallel`: `DataParallel` in one
  process, `OneDevice` without it, `replicas_holding`);
- `jobs`: multi-process jobs (torchrun + DistributedDataParallel on torch,
  jax.distributed on jax, `tf_job`'s MultiWorkerMirroredStrategy on tensorflow:
  `job_in_environment`, `WorkerLost`, `save_alone` for process 0's saves).
- `updates`: optimizer updates written for one backend where the generic one is
  measurably slower (`TorchSGD`'s multi-tensor step on torch, TF's fused momentum
  kernel on tensorflow).
- `seeds`: seed generators for random layers whose draws never wait on the
  device (`seed_generator`: on torch, state kept on the CPU).

Backend frameworks are imported lazily, inside the functions that need them.
The modules here read the backend as `info.name()` (and `info.accelerator()`):
a test that patches those two in `alexnet_k3.backend.info` reaches every function
of the package (the names re-exported below stay the real ones).
`is_out_of_memory` is `alexnet_k3.core`'s (it recognises every framework's
out-of-memory errors without importing one), re-exported for the callers here.
"""

from alexnet_k3.backend.feed import (
    array_feed,
    device_predict,
    random_state,
    repeated_batch_feed,
    set_random_state,
    shard_feed,
)
from alexnet_k3.backend.info import (
    accelerator,
    device_name,
    free_memory,
    gpu_versions,
    keep_tensorflow_unimported,
    name,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
    versions,
)
from alexnet_k3.backend.jobs import WorkerLost, job_in_environment, save_alone
from alexnet_k3.backend.parallel import (
    DataParallel,
    OneDevice,
    data_parallel,
    refuse_job_without_data_parallel,
    replicas_holding,
)
from alexnet_k3.backend.seeds import seed_generator
from alexnet_k3.backend.speed import (
    check_image_data_format,
    keep_freed_memory,
    precision_warning,
    recommended_compile_kwargs,
    recommended_image_data_format,
    recommended_precision,
    runs_image_data_format,
    set_matmul_precision,
    tune_for_speed,
)
from alexnet_k3.core import is_out_of_memory

__all__ = [
    "DataParallel",
    "OneDevice",
    "WorkerLost",
    "accelerator",
    "array_feed",
    "device_predict",
    "check_image_data_format",
    "data_parallel",
    "runs_image_data_format",
    "device_name",
    "free_memory",
    "gpu_versions",
    "is_out_of_memory",
    "keep_freed_memory",
    "job_in_environment",
    "keep_tensorflow_unimported",
    "name",
    "peak_memory_bytes",
    "precision_warning",
    "random_state",
    "recommended_compile_kwargs",
    "recommended_image_data_format",
    "recommended_precision",
    "refuse_job_without_data_parallel",
    "replicas_holding",
    "repeated_batch_feed",
    "reset_peak_memory",
    "save_alone",
    "seed_generator",
    "set_matmul_precision",
    "set_random_state",
    "shard_feed",
    "synchronize",
    "tune_for_speed",
    "versions",
]
