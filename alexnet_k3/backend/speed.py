"""Speed defaults: what to compile with, which layout and precision, process-wide tuning.

Training and the benchmarks take their settings from here, so what the
benchmarks time is what `alexnet-k3 train` runs. benchmarks/README.md holds
the measurements behind each choice.
"""

from __future__ import annotations

import functools
import platform

from alexnet_k3.backend import info


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
    backend = info.name()
    if backend == "torch":
        return {"jit_compile": False}
    if backend == "tensorflow":
        return {"jit_compile": info.accelerator() == "gpu"}
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
    return "channels_first" if info.name() == "torch" else "channels_last"


def runs_image_data_format(data_format: str) -> bool:
    """Whether the active backend can run AlexNet's convolutions and pooling in `data_format`.

    Always true but for one case: TensorFlow on a CPU has NCHW (channels_first)
    convolution and pooling kernels only through oneDNN, which TensorFlow turns
    on by default on CPUs with AVX-512 VNNI/BF16 or AMX (the Intel Xeon this
    project benchmarks on) and not on others (an AVX2-only AMD EPYC here fails
    with `UnimplementedError: The Conv2D op currently only supports the NHWC
    tensor format on the CPU`). So it is tried once, on a 4x4 image.
    """
    if data_format != "channels_first" or info.name() != "tensorflow":
        return True
    if info.accelerator() == "gpu":
        return True
    return _tensorflow_cpu_runs_nchw()


@functools.cache
def _tensorflow_cpu_runs_nchw() -> bool:
    import tensorflow as tf

    images = tf.zeros((1, 1, 4, 4))
    try:
        with tf.device("/CPU:0"):
            tf.nn.conv2d(images, tf.zeros((1, 1, 1, 1)), 1, "VALID", data_format="NCHW")
            tf.nn.max_pool2d(images, 2, 2, "VALID", data_format="NCHW")
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False
    return True


def check_image_data_format(data_format: str) -> None:
    """Raises ValueError, before anything runs, when `runs_image_data_format` says no.

    Otherwise a model built that way fails inside TensorFlow at its first step.
    """
    if not runs_image_data_format(data_format):
        raise ValueError(
            f"data_format={data_format!r} was asked for on the tensorflow backend, but "
            "TensorFlow has no channels_first convolutions on this CPU (they need its "
            "oneDNN kernels, which it enables only on CPUs with AVX-512 VNNI/BF16 or AMX). "
            "Use channels_last (or 'recommended', which is channels_last on tensorflow), "
            "or another backend."
        )


def recommended_precision() -> str:
    """The Keras dtype policy to train with: "mixed_bfloat16" or "float32".

    "mixed_bfloat16" on GPUs with bfloat16 tensor cores (CUDA compute capability
    8.0 or more: A100, H100) and on TPUs, where it halves memory traffic at
    float32's range (no loss scaling); "float32" on CPUs and older GPUs, which
    emulate bfloat16 matmuls. Not yet measured on a GPU (none was lent when this
    was written): `alexnet-k3 bench --precision mixed_bfloat16` gives the figure.
    """
    backend = info.name()
    if info.accelerator() != "gpu":
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
        capability = info.tensorflow_gpu_details().get("compute_capability")
    # jax says "9.0", tensorflow (9, 0).
    major = capability[0] if isinstance(capability, tuple) else str(capability).split(".")[0]
    try:
        return "mixed_bfloat16" if int(major) >= 8 else "float32"
    except (TypeError, ValueError):
        return "float32"


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
    if info.name() != "torch":
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
