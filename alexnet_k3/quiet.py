"""A console without the frameworks' C++ start-up logging (Keras-free, framework-free).

TensorFlow (and XLA inside jax) log through absl/tsl straight to file
descriptor 2. `TF_CPP_MIN_LOG_LEVEL` filters what they log once running,
but TensorFlow 2.20+ prints its start-up lines ("oneDNN custom operations are
on", "Could not find cuda drivers", the absl "before InitializeLog" preamble)
from static initializers that ignore it, and prints them twice: the profiler
plugin library (`_pywrap_profiler_plugin.so`) carries its own copy of
TensorFlow's platform code, so its initializers run again when it loads
(about 15 ms; TensorFlow is not initialized twice). Those lines can only be
kept off the console by catching fd 2 while TensorFlow is imported, which
`quiet_frameworks` arranges for the rest of the process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from pathlib import Path

# Set to 1 to see every line the frameworks print (as `--debug` does).
VERBOSE_ENV_VAR = "ALEXNET_K3_VERBOSE_FRAMEWORKS"

# Holds the level this package set, so that the processes a command starts (a
# study's runs) tell the inherited value from one the user set.
_SET_BY_PACKAGE_ENV_VAR = "ALEXNET_K3_QUIETED_TF_LOG_LEVEL"

# 2: TensorFlow's and XLA's C++ logging keeps errors and fatal errors (E, F),
# drops info and warnings. Not 3: an error a user must see would go too.
QUIET_LOG_LEVEL = "2"

# An absl/glog line: severity letter, MMDD, then time, thread, file:line].
FRAMEWORK_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")
ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# cpu_feature_guard's info line goes on in a second line of its own.
_CONTINUATION = "To enable the following instructions:"
# What TensorFlow's CUDA platform says at start-up where there is no GPU at all.
_NO_GPU_ERROR = "failed call to cuInit"


def quiet_frameworks(verbose: bool = False):
    """Keeps the frameworks' C++ info and warning lines off this process's console.

    Sets `TF_CPP_MIN_LOG_LEVEL` to 2 unless the user set it (their value wins,
    and then nothing else is changed either; the value a parent command set,
    as a study's runs inherit it, is not the user's), and catches fd 2 while TensorFlow
    is imported, whenever something imports it: its start-up info lines, the
    absl preamble, and on a machine without an NVIDIA driver its error-level
    `cuInit` line are dropped; everything else it printed (errors, Python
    warnings) is written out after the import. Inherited by the processes this
    one starts.

    Args:
        verbose: True (`--debug`) changes nothing; so does `ALEXNET_K3_VERBOSE_FRAMEWORKS=1`.

    Returns:
        A function that undoes it (for callers of the CLI's `main` in a Python
        process), or None when nothing was changed.

    Example:
        >>> undo = quiet_frameworks(verbose=args.debug)  # before anything imports Keras
    """
    if verbose or os.environ.get(VERBOSE_ENV_VAR) == "1":
        return None
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    inherited = level is not None and level == os.environ.get(_SET_BY_PACKAGE_ENV_VAR)
    if level is not None and not inherited:
        return None  # the user's own
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ[_SET_BY_PACKAGE_ENV_VAR] = QUIET_LOG_LEVEL
    finder = None
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path
    ):
        finder = _QuietTensorFlowFinder()
        sys.meta_path.insert(0, finder)

    def undo():
        if not inherited:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
            os.environ.pop(_SET_BY_PACKAGE_ENV_VAR, None)
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)

    return undo


def kept_lines(text: str, gpu_driver: bool) -> list[str]:
    """The lines of `text` (what TensorFlow's import printed) that reach the console.

    Dropped: info and warning log lines, the absl preamble and the info line's
    continuation; the `cuInit` error too when `gpu_driver` is False (no GPU, so
    nothing to report). Kept: every other error or fatal log line, and anything
    else (Python warnings, tracebacks).
    """
    kept = []
    for line in text.splitlines(keepends=True):
        if line.startswith(ABSL_PREAMBLE) or line.startswith(_CONTINUATION):
            continue
        if FRAMEWORK_LOG_LINE.match(line):
            if line[0] in "IW" or (not gpu_driver and _NO_GPU_ERROR in line):
                continue
        kept.append(line)
    return kept


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loaded: only then is a failed `cuInit` news."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as usual and hands it a loader that imports it quietly."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # resources and the like: the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with tempfile.TemporaryFile(mode="w+b") as caught:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(caught.fileno(), 2)
            failed = True
            try:
                self._loader.exec_module(module)
                # The CUDA platform starts here, not at the first operation, so
                # its start-up lines are caught as well (this takes < 1 ms).
                module.config.list_physical_devices()
                failed = False
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                text = caught.read().decode(errors="replace")
                # A failed import shows all it printed: that is the diagnosis.
                lines = text.splitlines(True) if failed else kept_lines(text, gpu_driver_present())
                sys.stderr.write("".join(lines))
                sys.stderr.flush()
