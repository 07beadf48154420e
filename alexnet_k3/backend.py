"""The only module that looks at which Keras backend is active.

Everything else in the package is backend-agnostic. What cannot be, lives here:
device names, synchronizing before a clock stops, peak memory, version strings.
Backend frameworks are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import importlib.metadata
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
    """"gpu" when the active backend computes on a GPU, else "cpu"."""
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

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
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
