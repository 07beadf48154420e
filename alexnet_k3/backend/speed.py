"""Speed defaults: what to compile with, which layout and precision, process-wide tuning.

Training and the benchmarks take their settings from here, so what the
benchmarks time is what `alexnet-k3 train` runs. benchmarks/README.md holds
the measurements behind each choice.
"""

from __future__ import annotations

import functools

from alexnet_k3.backend import info
from alexnet_k3.core import keep_freed_memory  # noqa: F401 - re-exported; it is Keras-free


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
    Never a precision that `precision_warning` knows to be slower than float32 here.
    """
    precision = _device_precision()
    return "float32" if precision_warning(precision) else precision


# Training throughput on CPUs, images/s at the precision and at float32, where the
# precision was measured slower: `alexnet-k3 bench --modes train --baselines none`.
# A CPU without the precision's matmul units (these cpuinfo flags) emulates it:
# benchmarks/results/precision-cpu-2core.md (2-core AMD EPYC, AVX2 only, batch 8, 128x128).
_NATIVE_FLAGS = {"mixed_bfloat16": {"amx_bf16", "avx512_bf16"}, "mixed_float16": {"amx_fp16"}}
_NATIVE_NAMES = {"mixed_bfloat16": "AMX or AVX-512 BF16", "mixed_float16": "AMX-FP16"}
_EMULATED_ON_CPU = {
    ("torch", "mixed_bfloat16"): (1.1, 6.0),
    ("jax", "mixed_bfloat16"): (7.0, 13.5),
    ("tensorflow", "mixed_bfloat16"): (1.7, 5.9),
    ("torch", "mixed_float16"): (1.8, 6.0),
    ("jax", "mixed_float16"): (5.3, 13.5),
    ("tensorflow", "mixed_float16"): (2.3, 5.9),
}
_CPU_MEASUREMENT = "2-core AMD EPYC without AMX, batch 8, 128x128"
# jax's mixed_bfloat16 is slower even on a CPU with AMX (2-core Xeon, batch 16, 224x224).
_ON_AMX_CPU = {("jax", "mixed_bfloat16"): (13.2, 18.0)}  # float32: about 18 (issue 18)
_AMX_MEASUREMENT = "2-core Xeon with AMX, batch 16, 224x224"


def precision_warning(precision: str) -> str | None:
    """A one-line reason when `precision` is measured slower than float32 here, else None.

    Known slower on a CPU (measured by `alexnet-k3 bench`, figures in the message):
    mixed_bfloat16 on CPUs without AMX or AVX-512 BF16 and mixed_float16 on CPUs
    without AMX-FP16, which emulate them, on every backend; jax's mixed_bfloat16
    even with AMX. GPUs, TPUs and CPUs other than x86 on Linux: None (not
    measured). `train` prints it as a warning, and `recommended_precision` never
    picks such a precision.

    Example:
        >>> precision_warning("mixed_bfloat16")  # jax on an AVX2-only CPU
        "precision='mixed_bfloat16' is slower than float32 on this CPU ..."
    """
    if precision == "float32" or info.accelerator() != "cpu":
        return None
    backend = info.name()
    if backend == "jax":
        import jax

        if jax.default_backend() == "tpu":  # info.accelerator() says "cpu" there
            return None
    key, flags = (backend, precision), _cpu_flags()
    if flags is None or precision not in _NATIVE_FLAGS:  # not an x86 CPU on Linux
        return None
    if flags & _NATIVE_FLAGS[precision]:
        # Measured with AMX only (not, say, AVX-512 BF16 alone).
        measured = _ON_AMX_CPU.get(key) if "amx_bf16" in flags else None
        setting, why = _AMX_MEASUREMENT, "even with AMX"
    else:
        measured, setting = _EMULATED_ON_CPU.get(key), _CPU_MEASUREMENT
        why = f"which has no {_NATIVE_NAMES[precision]} and emulates it"
    if measured is None:
        return None
    from alexnet_k3.core import option_name  # `--precision` on the command line

    return (
        f"{option_name('precision', precision)} is slower than float32 on this CPU "
        f"({info.cpu_name()}, {why}): keras-{backend} trained {measured[0]} images/s vs "
        f"{measured[1]} in float32, measured on a {setting}. "
        f"Use {option_name('precision', 'float32')} here."
    )


@functools.cache
def _cpu_flags() -> frozenset | None:
    """This x86 CPU's feature flags from Linux's /proc/cpuinfo; None where it lists none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _device_precision() -> str:
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
    - Any backend on a CPU, Linux with glibc, unless `keep_freed=False`:
      `keep_freed_memory()`. torch gains 1.1x from it; jax and tensorflow measured
      no different (step times within 4%, either way), and it is applied to them
      too so that every process of a comparison runs under the same allocator
      (`alexnet-k3 bench` applies the same call to its torchvision baselines).

    Returns:
        What was applied, for the run's records: `{"cudnn_benchmark": bool,
        "keep_freed_memory": bool}`.
    """
    applied = {"cudnn_benchmark": False, "keep_freed_memory": False}
    if info.name() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            applied["cudnn_benchmark"] = True
    if keep_freed and info.accelerator() == "cpu":
        applied["keep_freed_memory"] = keep_freed_memory()
    return applied


def set_matmul_precision(precision: str = "default") -> dict:
    """How float32 matmuls and convolutions run on a GPU: TF32 tensor cores or full float32.

    Args:
        precision: one of `alexnet_k3.core.MATMUL_PRECISIONS`. "default" leaves
            the framework's own default: torch runs float32 matmuls in full
            float32 (`torch.backends.cuda.matmul.allow_tf32` is False) and cuDNN
            convolutions in TF32 (`torch.backends.cudnn.allow_tf32` is True);
            tensorflow runs both in TF32
            (`tf.config.experimental.enable_tensor_float_32_execution`); jax
            leaves XLA's default precision, which is TF32 for both on GPUs with
            TF32 tensor cores. "highest": full float32 for both on every
            framework; "high": TF32 for both.

    Returns:
        `{"tf32_matmul": bool, "tf32_conv": bool}` as the process now runs, or
        both None on a CPU (no TF32 there; float32 is float32).
    """
    from alexnet_k3.core import MATMUL_PRECISIONS

    if precision not in MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul precision must be one of {MATMUL_PRECISIONS}, received {precision!r}."
        )
    backend = info.name()
    tf32 = None if precision == "default" else precision == "high"
    if backend == "torch":
        import torch

        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        state = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    elif backend == "jax":
        import jax

        if tf32 is not None:
            value = "tensorfloat32" if tf32 else "float32"
            jax.config.update("jax_default_matmul_precision", value)
        chosen = jax.config.jax_default_matmul_precision
        # None: XLA's default, TF32 on GPUs that have it.
        on = chosen is None or chosen in ("tensorfloat32", "high", "default", "bfloat16")
        state = (on, on)
    else:
        import tensorflow as tf

        if tf32 is not None:
            tf.config.experimental.enable_tensor_float_32_execution(tf32)
        on = tf.config.experimental.tensor_float_32_execution_enabled()
        state = (on, on)
    if info.accelerator() != "gpu":
        return {"tf32_matmul": None, "tf32_conv": None}
    return {"tf32_matmul": bool(state[0]), "tf32_conv": bool(state[1])}
