"""What the CLI, training and the benchmark parent share without importing Keras.

This module imports neither Keras nor a backend framework (a test enforces it):
the command line must parse its arguments, and the benchmark parent must start
its workers, before any backend is chosen. Everything here is typed once and
imported wherever it is needed:

- the option vocabularies (backends, datasets, architectures, variants,
  optimizers, precisions, data formats, jit settings);
- `is_out_of_memory`, the one out-of-memory classifier (training, the Keras
  benchmark worker and the torchvision baseline all use it);
- the host: `cpu_name`, its CPU's model name; `keep_freed_memory`, glibc's malloc
  setting every benchmark process shares, and `freed_memory_kept`, its probe;
- `option_name`, how errors name a setting (`data_dir=` from Python, `--data-dir`
  from the command line);
- atomic file writes: a kill at any instant leaves the old file or the new one,
  never half of one.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
from pathlib import Path

# --- Option vocabularies ------------------------------------------------------------

BACKENDS = ("torch", "tensorflow", "jax")
DATASETS = ("digits", "cifar10", "folder")
# The architectures (`--arch`): each has a builder (`alexnet_k3.model.ARCHITECTURES`)
# and a converter table of the same name (`alexnet_k3.weights.loader.TABLES`).
ARCHS = ("alexnet", "vgg16")
ARCH_TITLES = {"alexnet": "AlexNet", "vgg16": "VGG16"}
# Architectures with variants (`--variant`); the others have one form only.
ARCHS_WITH_VARIANTS = ("alexnet",)
# torchvision's published ImageNet checkpoints (`weights="imagenet"`), by architecture:
# their URL and the SHA-256 prefix in their file name (torch hub's convention). The
# weights records hold them; `alexnet-k3 study` finds or fetches the files without Keras.
IMAGENET_CHECKPOINTS = {
    "alexnet": ("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"),
    "vgg16": ("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
}
# The AlexNet variants (`alexnet_k3.model.VARIANTS` holds their configurations).
VARIANTS = ("torchvision", "paper", "cifar")
# Weight initialization: torch's nn.Conv2d/nn.Linear defaults, or Keras's (Glorot).
INITS = ("torch", "keras")
# What trains a run: the package's Keras model on the active backend, or the plain
# PyTorch loop of the course notebooks (`alexnet_k3.reference`), the yardstick.
IMPLEMENTATIONS = ("keras", "torch-reference")
# Whether a dataset's augmentation flips images: mirrored digits are other symbols;
# mirrored photos are still the same class.
FLIP_AUGMENTATION = {"cifar10": True, "digits": False, "folder": True}
OPTIMIZERS = ("sgd", "adam", "adamw")
DEFAULT_LEARNING_RATES = {"sgd": 0.02, "adam": 1e-3, "adamw": 1e-3}
# SGD's default for the variants without batch normalization (torchvision's and the
# paper's AlexNet): at 0.02 the torchvision variant from scratch stayed at chance
# for 4 epochs (digits at 64x64, batch 64, benchmarks/results/torchvision-variant-*);
# torchvision's own AlexNet recipe trains at 0.01.
BN_FREE_SGD_LEARNING_RATE = 0.01


def default_learning_rate(optimizer: str, variant: str, arch: str = "alexnet") -> float:
    """The peak learning rate a run uses when it sets none.

    VGG16, like AlexNet's torchvision and paper variants, has no batch norm
    (torchvision's VGG recipe trains at 0.01 too).

    Example:
        >>> default_learning_rate("sgd", "cifar"), default_learning_rate("sgd", "torchvision")
        (0.02, 0.01)
    """
    batch_norm_free = arch not in ARCHS_WITH_VARIANTS or variant in ("torchvision", "paper")
    if optimizer == "sgd" and batch_norm_free:
        return BN_FREE_SGD_LEARNING_RATE
    return DEFAULT_LEARNING_RATES[optimizer]


# Learning rate after the warm-up: cosine decay to zero at the last step, or held.
SCHEDULES = ("cosine", "constant")
# Keras dtype policies.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# Float32 matmuls and convolutions on GPUs: each framework's default, full float32
# ("highest") or TF32 tensor cores ("high"); `alexnet_k3.backend.set_matmul_precision`.
MATMUL_PRECISIONS = ("default", "highest", "high")
IMAGE_DATA_FORMATS = ("channels_last", "channels_first")
# "recommended": `alexnet_k3.backend.recommended_image_data_format()`.
DATA_FORMATS = ("recommended", *IMAGE_DATA_FORMATS)
# Keras's `jit_compile` values, by the words the command line takes for them.
JIT_SETTINGS = {"on": True, "off": False, "auto": "auto"}


# --- Out of memory ------------------------------------------------------------------

# Class names of the frameworks' out-of-memory errors, matched along the exception's
# MRO so that no framework has to be imported to recognise them: torch's
# `torch.OutOfMemoryError` (also `torch.cuda.OutOfMemoryError`) and tensorflow's
# `tf.errors.ResourceExhaustedError`.
_OOM_TYPES = ("OutOfMemoryError", "ResourceExhaustedError")

# Lower-case fragments of out-of-memory messages, for errors whose type says
# nothing (jax raises XlaRuntimeError, many wrappers re-raise RuntimeError):
# torch "CUDA out of memory", XLA "RESOURCE_EXHAUSTED: Out of memory", tensorflow
# "OOM when allocating tensor", host allocators "failed to allocate" and
# "Cannot allocate memory" (ENOMEM).
_OOM_MARKERS = (
    "out of memory",
    "resource_exhausted",
    "resourceexhausted",
    "oom when allocating",
    "failed to allocate",
    "cannot allocate memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` means the device (or host) ran out of memory for this batch.

    Example:
        >>> is_out_of_memory(MemoryError())
        True
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
        True
        >>> is_out_of_memory(ValueError("bad shape"))
        False
    """
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ in _OOM_TYPES for cls in type(exc).__mro__):
        return True
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(marker in text for marker in _OOM_MARKERS)


# --- The host ---------------------------------------------------------------------


def cpu_name() -> str:
    """The host CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


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
    libc = ctypes.CDLL("libc.so.6")
    mmap_threshold = _LARGEST_THRESHOLD if enabled else _GLIBC_SETTLED_MMAP_THRESHOLD
    trim_threshold = _LARGEST_THRESHOLD if enabled else 2 * _GLIBC_SETTLED_MMAP_THRESHOLD
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
        and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    )


def freed_memory_kept(mib: int = 64) -> bool | None:
    """Whether this process's malloc keeps a freed `mib` MiB block (None off Linux/glibc).

    A probe, not a setting: it allocates and touches the block, frees it and
    reads the resident size from /proc/self/statm. glibc left as it is unmaps
    blocks over 32 MiB on free (the resident size drops by the block);
    after `keep_freed_memory()` the block stays for reuse. Records of the
    benchmark carry it, so a row says what its process really ran under.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = mib * 2**20
    block = libc.malloc(size)
    if not block:
        return None
    ctypes.memset(block, 1, size)
    before = _resident_bytes()
    libc.free(block)
    return before - _resident_bytes() < size // 2


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- How messages name options --------------------------------------------------------
# An error raised deep in the package tells the user what to pass: from Python a
# keyword (`data_dir=`), from the command line that command's flag (`--data-dir`).
# `alexnet_k3.cli.main` switches to the flags for its process.

_command_line = False


def use_command_line_names(on: bool = True) -> None:
    """Makes `option_name` spell options as command-line flags (the CLI calls this)."""
    global _command_line
    _command_line = on


def from_command_line() -> bool:
    """True when the command line runs this process (see `use_command_line_names`)."""
    return _command_line


def option_name(name: str, value=None) -> str:
    """How to name setting `name` (set to `value`, if given) to the user: `--data-dir`
    on the command line, else `data_dir=`.

    Example:
        >>> option_name("data_dir"), option_name("data_dir", "x")
        ('data_dir=', "data_dir='x'")
    """
    if _command_line:
        flag = f"--{name.replace('_', '-')}"
        return flag if value is None else f"{flag} {value}"
    return f"{name}=" if value is None else f"{name}={value!r}"


# --- Atomic writes ------------------------------------------------------------------
# Each file is written under a temporary name in the same folder, flushed, and
# renamed over the target: `os.replace` is atomic on POSIX and Windows. The
# temporary name, `.tmp-<pid>-<name>`, names its writer, so the files of a
# writer killed mid-save can be told apart and removed (`remove_stale_temp_files`).

_TEMP_NAME = re.compile(r"\.tmp-(\d+)-.+")


def _temp_path(path: Path) -> Path:
    # The real name stays at the end: Keras's savers require the suffix.
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists on this machine (signal 0 probes, sends nothing)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temp_files(folder) -> list[Path]:
    """Removes the atomic writes' temporary files, under `folder`, of processes that died.

    A process killed (SIGKILL, power loss) between creating its temporary file and
    renaming it leaves `.tmp-<pid>-<name>` behind; the files of live processes,
    this one included, are left alone. Returns the files removed.
    """
    removed = []
    for tmp in Path(folder).rglob(".tmp-*"):
        match = _TEMP_NAME.fullmatch(tmp.name)
        if match and tmp.is_file() and not pid_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_text(path, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
_JSON_NAMES.update({bool: "boolean", type(None): "null"})


def read_json(path, advice: str, expected: type | None = None):
    """The JSON value in file `path`; a damaged file raises ValueError naming it and `advice`.

    `advice` says what to do about it (a sentence). With `expected` (dict, list),
    another type of value is refused the same way.

    Example:
        >>> read_json("runs/x/history.json", "Start a new run.", list)  # doctest: +SKIP
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except ValueError as error:  # also UnicodeDecodeError
        size = path.stat().st_size
        raise ValueError(
            f"{path} is not valid JSON ({size} bytes; {error}): it is damaged, truncated "
            f"or was not written by alexnet_k3. {advice}"
        ) from None
    if expected is not None and not isinstance(value, expected):
        raise ValueError(
            f"{path} holds a JSON {_JSON_NAMES.get(type(value), 'value')}, expected a "
            f"JSON {_JSON_NAMES[expected]}. {advice}"
        )
    return value


def atomic_write_json(path, value, **dump_kwargs) -> None:
    """`json.dumps(value)` written atomically (see `atomic_write_text`)."""
    atomic_write_text(path, json.dumps(value, **dump_kwargs))


def atomic_save(save, path) -> None:
    """Calls `save(tmp_path)` then renames the result to `path`.

    The temporary name keeps the real suffix (`.keras`, `.weights.h5`), which
    Keras's savers require; if `save` fails, the partial file is removed and
    `path` keeps its previous content.
    """
    path = Path(path)
    tmp = _temp_path(path)
    try:
        save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
