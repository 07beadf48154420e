"""The only module that looks at which Keras backend is active.

Everything else in the package is backend-agnostic. What cannot be, lives here:
device names, synchronizing before a clock stops, peak memory, version strings.
Backend frameworks are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import keras

BACKENDS = ("torch", "tensorflow", "jax")


def name() -> str:
    """The active Keras backend: "torch", "tensorflow" or "jax"."""
    return keras.config.backend()


def versions() -> dict[str, str]:
    """Versions of Keras, the active backend framework and numpy."""
    packages = {"keras": "keras", "numpy": "numpy", name(): _distribution_of(name())}
    result = {"python": platform.python_version()}
    for label, dist in packages.items():
        try:
            result[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            result[label] = "unknown"
    return result


def _distribution_of(backend: str) -> str:
    if backend == "tensorflow":
        return _tensorflow_distribution()
    return backend


def _tensorflow_distribution() -> str:
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            importlib.metadata.version(dist)
            return dist
        except importlib.metadata.PackageNotFoundError:
            continue
    return "tensorflow"


def accelerator() -> str:
    """ "gpu" when the active backend computes on a GPU, else "cpu"."""
    backend = name()
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    if backend == "jax":
        import jax

        return "gpu" if jax.default_backend() in ("gpu", "cuda", "rocm") else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def device_name() -> str:
    """A human-readable name of the device the backend computes on (GPU model or CPU)."""
    if accelerator() == "gpu":
        backend = name()
        if backend == "torch":
            import torch

            return torch.cuda.get_device_name(0)
        if backend == "jax":
            import jax

            return jax.devices()[0].device_kind
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        details = tf.config.experimental.get_device_details(gpu)
        return details.get("device_name", "GPU")
    return _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def array_feed(x, y=None, *, batch_size: int, shuffle: bool = False) -> dict:
    """Keyword arguments that feed in-memory arrays to `fit`, `evaluate` or `predict`.

    jax and torch: the arrays themselves, Keras's own path (`x`, `y`,
    `batch_size`, `shuffle` when asked for).

    tensorflow: `{"x": dataset}` (and `shuffle=False`: the dataset shuffles
    itself), a `tf.data.Dataset` of `(x, y)` batches (of
    `x` alone when `y` is None), reshuffled every epoch when `shuffle`, the last
    batch partial, with tf.data's autotuning off. Keras's own dataset for
    arrays autotunes, and deleting an autotuned iterator waits for tf.data's
    optimization thread, which wakes every 5-10 s: every epoch, validation
    pass and `predict` call ended on that tick. Measured on the 2-core CPU: a
    30-step epoch of 10.0 s took 20.5 s, a 2.9 s predict took 5.1 s.
    """
    if name() != "tensorflow":
        feed = {"x": x, "batch_size": batch_size}
        if y is not None:
            feed["y"] = y
        if shuffle:
            feed["shuffle"] = True
        return feed
    import tensorflow as tf

    arrays = (tf.constant(x),) if y is None else (tf.constant(x), tf.constant(y))
    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        indices = indices.shuffle(len(x), reshuffle_each_iteration=True)

    def gather(i):
        batch = tuple(tf.gather(a, i) for a in arrays)
        return batch if y is not None else batch[0]

    batches = indices.batch(batch_size).map(gather)
    options = tf.data.Options()
    options.autotune.enabled = False
    feed = {"x": batches.prefetch(1).with_options(options)}
    if shuffle:
        # The dataset reshuffles itself; this silences Keras's warning that it would
        # ignore `fit`'s default shuffle=True for a dataset.
        feed["shuffle"] = False
    return feed


def synchronize(value=None):
    """Blocks until the device has finished the work that produced `value`.

    Timers must stop only after this returns: torch CUDA kernels and jax
    computations are asynchronous, so a clock read earlier measures dispatch only.
    """
    backend = name()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif backend == "jax":
        import jax

        if value is not None:
            jax.block_until_ready(value)
        else:
            jax.effects_barrier()
    elif value is not None:
        # tensorflow: reading a value forces the computation that produced it.
        keras.tree.map_structure(lambda v: v.numpy() if hasattr(v, "numpy") else v, value)
    return value


def reset_peak_memory() -> None:
    """Starts a new peak-memory window where the backend exposes one (torch CUDA)."""
    if name() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """Peak device memory in bytes on a GPU, or None where the backend does not say."""
    if accelerator() != "gpu":
        return None
    backend = name()
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return int(peak) if peak is not None else None
    import tensorflow as tf

    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])


# --- Speed defaults and failure classification, shared by training and the benchmarks. ---
# benchmarks/README.md holds the measurements behind each choice.


def recommended_compile_kwargs() -> dict:
    """`model.compile` keyword arguments that train AlexNet fastest on the active backend.

    Measured with `alexnet-k3 bench` (benchmarks/README.md), training, batch 16,
    224x224, float32 on a shared 2-core Xeon, each pair interleaved in one process:

    - jax: XLA (`jit_compile=True`); without it jax runs op by op.
    - tensorflow: XLA on a GPU, not on a CPU. On the CPU, TensorFlow's own
      oneDNN kernels beat XLA's: 906 ms vs 1399 ms a step (1.54x). This is also
      Keras's own "auto" rule; on GPUs XLA fuses the elementwise work.
    - torch: eager (`jit_compile=False`). Keras's `torch.compile` of the train
      step recompiles the shared `Layer.forward` per layer type, hits dynamo's
      recompile limit (8) and falls back to eager: 0.80x torchvision-eager vs
      0.84x eager, after 53-75 s of compilation.

    Example:
        >>> model.compile(optimizer="sgd", loss="mse", **recommended_compile_kwargs())
    """
    backend = name()
    if backend == "torch":
        return {"jit_compile": False}
    if backend == "tensorflow":
        return {"jit_compile": accelerator() == "gpu"}
    return {"jit_compile": True}


def recommended_image_data_format() -> str:
    """The `keras.config.image_data_format()` under which AlexNet runs fastest here.

    torch: "channels_first". Keras 3's torch backend makes every channels_last
    convolution and pooling input contiguous in NCHW (`_transpose_spatial_inputs`
    calls `.contiguous()`), a full copy of each activation forward and backward.
    Under channels_first nothing is copied, and the input pipeline's final
    `Permute` hands the network an NCHW view of NHWC memory, which torch keeps
    as its channels_last memory format through conv, ReLU and pooling (oneDNN's
    fast layout on CPUs, cuDNN's on tensor cores). Measured on the 2-core Xeon,
    training, batch 16, 224x224, float32, interleaved in one process
    (`benchmarks/settings_ab.py`): 331 ms a step vs 377 ms under channels_last,
    the profile's copies and slow NCHW max-pooling gone (443 ms when the
    channels_first input is contiguous NCHW instead).

    jax and tensorflow: "channels_last", the layout XLA and oneDNN are fastest
    in (jax: 658 ms vs 721 ms a step under channels_first).
    """
    return "channels_first" if name() == "torch" else "channels_last"


def check_image_data_format(data_format: str) -> None:
    """Raises ValueError when the active backend cannot run convolutions in `data_format` here.

    TensorFlow has no NCHW (channels_first) convolution or pooling kernels on a
    CPU: a model built that way fails inside TensorFlow at its first step
    (`UnimplementedError`). This says so before anything runs.
    """
    if data_format == "channels_first" and name() == "tensorflow" and accelerator() != "gpu":
        raise ValueError(
            "data_format='channels_first' was asked for on the tensorflow backend without a "
            "GPU, but TensorFlow has no channels_first convolutions on a CPU. Use "
            "channels_last (or 'recommended', which is channels_last on tensorflow), or "
            "another backend."
        )


def recommended_precision() -> str:
    """The Keras dtype policy to train with: "mixed_bfloat16" or "float32".

    "mixed_bfloat16" on GPUs with bfloat16 tensor cores (CUDA compute capability
    8.0 or more: A100, H100) and on TPUs, where it halves memory traffic at
    float32's range (no loss scaling); "float32" on CPUs and older GPUs, which
    emulate bfloat16 matmuls. Not yet measured on a GPU (none was lent when this
    was written): `alexnet-k3 bench --precision mixed_bfloat16` gives the figure.
    """
    backend = name()
    if accelerator() != "gpu":
        if backend == "jax":
            import jax

            if jax.default_backend() == "tpu":
                return "mixed_bfloat16"
        return "float32"
    if backend == "torch":
        import torch

        return "mixed_bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if backend == "jax":
        import jax

        capability = getattr(jax.devices()[0], "compute_capability", None)
    else:
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    # jax says "9.0", tensorflow (9, 0).
    major = capability[0] if isinstance(capability, tuple) else str(capability).split(".")[0]
    try:
        return "mixed_bfloat16" if int(major) >= 8 else "float32"
    except (TypeError, ValueError):
        return "float32"


# Lower-case fragments of out-of-memory messages: torch "CUDA out of memory",
# XLA "RESOURCE_EXHAUSTED: Out of memory", tensorflow "OOM when allocating tensor".
_OOM_MARKERS = ("out of memory", "resource_exhausted", "oom when allocating", "failed to allocate")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` means the device (or host) ran out of memory for this batch."""
    if isinstance(exc, MemoryError):
        return True
    backend = name()
    if backend == "torch":
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    elif backend == "tensorflow":
        import tensorflow as tf

        if isinstance(exc, tf.errors.ResourceExhaustedError):
            return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _OOM_MARKERS)


def tune_for_speed(*, keep_freed: bool = True) -> dict:
    """Process-wide settings for fixed-shape training; call before building a model.

    - torch on CUDA: `cudnn.benchmark` (autotune each convolution once per input
      shape, as timm's benchmark and training scripts do). XLA autotunes on its own.
    - torch on a CPU, Linux with glibc, unless `keep_freed=False`:
      `keep_freed_memory()`. jax and tensorflow measured no different with it
      (their step times within 4%, either way), so they are left as they are.

    Returns:
        What was applied, for the run's records: `{"cudnn_benchmark": bool,
        "keep_freed_memory": bool}`.
    """
    applied = {"cudnn_benchmark": False, "keep_freed_memory": False}
    if name() != "torch":
        return applied
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        applied["cudnn_benchmark"] = True
    elif keep_freed:
        applied["keep_freed_memory"] = keep_freed_memory()
    return applied


# glibc's mallopt parameters (malloc.h). Left alone, glibc raises its mmap
# threshold each time a mapped block of up to 32 MiB is freed, and its trim
# threshold to twice that: a training process settles at these.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_SETTLED_MMAP_THRESHOLD = 32 * 1024 * 1024
_LARGEST_THRESHOLD = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory(enabled: bool = True) -> bool:
    """Let glibc's malloc reuse freed large blocks instead of returning them to the OS.

    By default glibc serves every block over 32 MiB (at most) with a fresh `mmap`
    and gives it back on free. A CPU training step frees and re-allocates the
    same large buffers every step (AlexNet's first dense layer alone has a
    151 MB gradient), so each step pays a page fault per 4 KiB page of them:
    measured on the 2-core Xeon, the [9216, 4096] weight gradient took 37 ms
    with a fresh buffer and 7 ms with a reused one, and whole training steps
    (batch 16, 224x224) ran 1.12-1.13x faster in fresh processes taking
    turns (`benchmarks/settings_ab.py --malloc`): Keras on torch 378 -> 337 ms,
    torchvision's own eager AlexNet 345 -> 305 ms. Raising `M_MMAP_THRESHOLD`
    and `M_TRIM_THRESHOLD` to their maximum makes malloc keep and reuse that
    memory. The cost: the process's resident memory stays at its peak until it
    exits. Plain PyTorch code gains the same by calling this function.

    `enabled=False` sets the thresholds glibc's own rule settles at in a
    training process (mmap 32 MiB, trim 64 MiB). Returns whether the setting
    was applied (False off Linux/glibc, where this does nothing).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    mmap_threshold = _LARGEST_THRESHOLD if enabled else _GLIBC_SETTLED_MMAP_THRESHOLD
    trim_threshold = _LARGEST_THRESHOLD if enabled else 2 * _GLIBC_SETTLED_MMAP_THRESHOLD
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
        and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    )


# --- Data parallelism: the engines Keras already has (issue: scaling out). ---


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
        backend = name()
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
    if name() == "jax":
        return len(value.sharding.device_set)
    if name() == "tensorflow" and hasattr(value, "values"):
        return len(value.values)  # a MirroredVariable has one component per replica
    return 1
