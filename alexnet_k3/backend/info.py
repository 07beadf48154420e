"""What the active backend runs on: its name, versions, device; synchronization and memory.

`name()` is the one call in the package that reads `keras.config.backend()`;
the other modules of `alexnet_k3.backend` ask it (as `info.name()`, so that a
test patching it here reaches all of them).
"""

from __future__ import annotations

import gc
import importlib.metadata
import platform
import sys

import keras

from alexnet_k3.core import cpu_name


def name() -> str:
    """The active Keras backend: "torch", "tensorflow" or "jax"."""
    return keras.config.backend()


def keep_tensorflow_unimported() -> None:
    """On torch and jax, keeps Keras from importing TensorFlow just to ask whether it can.

    Keras asks `tf.available` of a lazy module, and the question imports
    TensorFlow whenever it is installed: `keras.utils.set_random_seed` asks it
    (to seed TensorFlow too), and so does every `model.save` (to recognise
    TensorFlow shapes in a config). On torch or jax that costs seconds of
    start-up and prints TensorFlow's oneDNN and CUDA-stub lines for a backend
    that never uses it. Where TensorFlow is not the backend and not imported
    yet, Keras's lazy module is told it is unavailable: those questions then
    import nothing. `import tensorflow` itself still works; what it creates
    afterwards is not seeded by `set_random_seed`.
    """
    if name() == "tensorflow" or "tensorflow" in sys.modules:
        return
    from keras.src.utils import module_utils  # Keras has no public switch for this

    lazy = getattr(module_utils, "tensorflow", None)
    if isinstance(lazy, module_utils.LazyModule) and lazy.module is None:
        lazy._available = False


def versions() -> dict[str, str]:
    """Versions of Python, Keras, the active backend framework and numpy."""
    packages = {"keras": "keras", "numpy": "numpy", name(): _distribution_of(name())}
    result = {"python": platform.python_version()}
    for label, dist in packages.items():
        try:
            result[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            result[label] = "unknown"
    return result


def _distribution_of(backend: str) -> str:
    if backend != "tensorflow":
        return backend
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
    if accelerator() != "gpu":
        return cpu_name()
    backend = name()
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0)
    if backend == "jax":
        import jax

        return jax.devices()[0].device_kind
    return tensorflow_gpu_details().get("device_name", "GPU")


def tensorflow_gpu_details() -> dict:
    """`tf.config.experimental.get_device_details` of the first GPU tensorflow lists."""
    import tensorflow as tf

    gpu = tf.config.list_physical_devices("GPU")[0]
    return tf.config.experimental.get_device_details(gpu)


def gpu_versions() -> dict:
    """CUDA and cuDNN versions as the active backend reports them; {} on a CPU.

    torch: its CUDA build and cuDNN; jax: the CUDA runtime and cuDNN its jaxlib
    plugin loaded; tensorflow: its build's CUDA and cuDNN. Values it cannot
    read are left out.
    """
    if accelerator() != "gpu":
        return {}
    backend = name()
    found = {}
    if backend == "torch":
        import torch

        found = {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    elif backend == "jax":
        from jax._src.lib import cuda_versions

        for key, getter in (("cuda", "cuda_runtime_get_version"), ("cudnn", "cudnn_get_version")):
            try:
                found[key] = getattr(cuda_versions, getter)()
            except Exception:  # noqa: BLE001 - a version jaxlib does not expose is left out
                pass
    else:
        import tensorflow as tf

        build = tf.sysconfig.get_build_info()
        found = {"cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version")}
    return {key: str(value) for key, value in found.items() if value is not None}


def synchronize(value=None):
    """Blocks until the device has finished the work that produced `value`.

    Timers must stop only after this returns: torch CUDA kernels and jax
    computations are asynchronous, so a clock read earlier measures dispatch only.

    Example:
        >>> logits = synchronize(model(x))  # then stop the clock
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


def free_memory() -> None:
    """Releases what finished models held, before the next one is built.

    Clears Keras's global state and collects garbage (`keras.utils.clear_session`).
    On torch with CUDA it also hands the caching allocator's free blocks back to
    the device (`torch.cuda.empty_cache()`): after an out-of-memory error they
    stay reserved and fragmented, and the next, smaller batch could be refused.
    jax and tensorflow keep their own pools, which no public call empties.

    Example:
        >>> try:
        ...     model.train_on_batch(x, y)
        ... except Exception as exc:
        ...     if not is_out_of_memory(exc):
        ...         raise
        ...     free_memory()
    """
    keras.utils.clear_session(free_memory=True)
    gc.collect()
    if name() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
