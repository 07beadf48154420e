"""Step timing, result records and progress lines shared by every benchmark worker.

Framework-free on purpose (numpy and `alexnet_k3.core` only, which imports no
Keras): the torchvision baseline runs on machines without keras, and the parent
process never imports a framework. The option vocabularies, the out-of-memory
classifier and the CPU name come from `alexnet_k3.core`, typed once there.

Two timing modes, both in every record set (Keras's own benchmarks and
timm's `benchmark.py` between them):

- `pipelined`: N steps issued back to back, one device synchronization at the
  end, the way `fit` runs (no step waits for the previous one; the host runs
  ahead of the device). Throughput is batch x N over the whole span.
- `per-step`: timm's view, a synchronization after every step, for step-time
  percentiles. It adds each step's launch and read-back to its time.

Both run warm-up steps first (compilation included, reported apart) and then
measure for at least `steps` steps and at least `min_seconds`. Records are flat
dictionaries.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_k3.contention import LoadMonitor
from alexnet_k3.core import ARCHS_WITH_VARIANTS, atomic_write_json, is_out_of_memory

KERAS_IMPLS = ("keras-torch", "keras-jax", "keras-tensorflow")
BASELINE_IMPLS = ("torchvision-eager", "torchvision-compile")
IMPLS = KERAS_IMPLS + BASELINE_IMPLS
MODES = ("train", "infer")
TIMINGS = ("pipelined", "per-step")
# Not a mode one asks for with --modes: `--end-to-end` adds these records.
E2E_MODE = "train-e2e"

# Every record carries every one of these keys (None where not applicable or
# where the run failed; `error` says why).
RECORD_KEYS = (
    "impl",
    "mode",
    "timing",
    "batch_size",
    "image_size",
    "precision",
    "jit",
    "jit_requested",
    "device",
    "device_type",
    "versions",
    "images_per_sec",
    "step_ms_median",
    "step_ms_p90",
    "step_ms_mean",
    "step_ms_min",
    "compile_seconds",
    "first_step_seconds",
    "steps",
    "warmup",
    "min_seconds",
    "measured_seconds",
    "peak_memory_bytes",
    "data_format",
    # The process-wide speed settings the worker ran under, as applied and probed:
    # glibc's malloc keeping freed memory (`keep_freed_memory`, and the probe
    # `freed_memory_kept`), cuDNN autotuning, TF32 for float32 matmuls and convolutions.
    "cudnn_benchmark",
    "keep_freed_memory",
    "freed_memory_kept",
    "tf32_matmul",
    "tf32_conv",
    # The dtype the last Dense/Linear computes in (float32 policy: float32).
    "head_dtype",
    # The machine while the steps were measured (`alexnet_k3.contention`): usable
    # cores, 1-minute load average, cores this process and others kept busy, and
    # whether others competed for the cores (then the figure is not comparable).
    "cpu_cores",
    "load_average",
    "own_cpu_cores",
    "other_cpu_cores",
    "contended",
    # The run's requested settings and the machine, identical in every record of a run.
    "settings",
    "metadata",
    "arch",
    "variant",
    "num_classes",
    "error",
    "error_detail",
)


def worker_env(device: str) -> dict:
    """The environment of a benchmark's worker process on `device` ("cpu" or "gpu").

    This checkout on PYTHONPATH (the runner is not in the wheel), TensorFlow's
    C++ info lines off, and on a CPU no GPU visible to any framework.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line naming the error type and the first line of its message."""
    message = str(exc).strip().splitlines()
    first = message[0] if message else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_error(record: dict, exc: BaseException) -> None:
    """Marks `record` failed: "oom" when the batch did not fit, else the error's first line."""
    record["error"] = "oom" if is_out_of_memory(exc) else short_error(exc)
    record["error_detail"] = short_error(exc, limit=2000)


@dataclass
class Timing:
    """Wall-clock seconds of the warm-up and of the measured steps.

    `step_seconds` holds one entry per step (per-step timing) or one entry for
    all `steps` steps together (pipelined timing, `pipelined=True`).
    """

    warmup_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    steps: int = 0
    warmup: int = 0
    pipelined: bool = False
    # `LoadMonitor.summary()` over the measured steps (the warm-up left out).
    conditions: dict = field(default_factory=dict)


def _check_counts(warmup: int, steps: int, min_seconds: float) -> None:
    if warmup < 1 or steps < 1 or not min_seconds >= 0:
        raise ValueError(
            f"warmup and steps must be >= 1 and min_seconds >= 0, received warmup={warmup}, "
            f"steps={steps}, min_seconds={min_seconds}."
        )


def time_steps(
    step: Callable[[], object],
    synchronize: Callable[[object], object],
    *,
    warmup: int,
    steps: int,
    min_seconds: float = 0.0,
) -> Timing:
    """Per-step timing: `warmup` then at least `steps` calls of `step`, each synchronized.

    Args:
        step: one training or inference step on a device-resident batch.
        synchronize: blocks until the device has finished the work that produced
            the step's return value (asynchronous CUDA/XLA dispatch otherwise makes
            a step look as fast as its Python launch).
        warmup: untimed-for-throughput steps run first (tracing, compilation,
            autotuning, allocator growth); at least 1.
        steps: measured steps; at least 1.
        min_seconds: measured steps go on until they add up to this long too.

    Example:
        >>> t = time_steps(lambda: sum(range(10)), lambda v: v, warmup=1, steps=3)
        >>> len(t.step_seconds)
        3
    """
    _check_counts(warmup, steps, min_seconds)
    timing = Timing(warmup=warmup)
    for _ in range(warmup):
        start = time.perf_counter()
        synchronize(step())
        timing.warmup_seconds.append(time.perf_counter() - start)
    monitor = LoadMonitor()
    while len(timing.step_seconds) < steps or sum(timing.step_seconds) < min_seconds:
        start = time.perf_counter()
        synchronize(step())
        timing.step_seconds.append(time.perf_counter() - start)
    monitor.sample()
    timing.steps = len(timing.step_seconds)
    timing.conditions = monitor.summary()
    return timing


def time_pipelined(
    run_steps: Callable[[int], object],
    synchronize: Callable[[object], object],
    *,
    warmup: int,
    steps: int,
    min_seconds: float = 0.0,
) -> Timing:
    """Pipelined timing: `run_steps(n)` issues n steps back to back; one sync at the end.

    The warm-up call (`warmup` steps) holds the compilation. Then `steps` steps
    are timed as one span; while the span is shorter than `min_seconds`, a
    longer one (scaled to reach it) is timed instead, and the last one counts.

    Args:
        run_steps: issues n steps without waiting for any of them (a Python loop
            over the step, or `fit` with `steps_per_epoch=n`) and returns what to
            synchronize on: a value the last step produced, or the updated weights.
        synchronize: as in `time_steps`.

    Example:
        >>> t = time_pipelined(lambda n: sum(range(n)), lambda v: v, warmup=1, steps=4)
        >>> t.steps, len(t.step_seconds)
        (4, 1)
    """
    _check_counts(warmup, steps, min_seconds)
    timing = Timing(warmup=warmup, pipelined=True)
    start = time.perf_counter()
    synchronize(run_steps(warmup))
    timing.warmup_seconds.append(time.perf_counter() - start)
    count = steps
    monitor = LoadMonitor()
    while True:
        start = time.perf_counter()
        synchronize(run_steps(count))
        seconds = time.perf_counter() - start
        if seconds >= min_seconds:
            break
        # 10% over the target, so the next span is not just short of it again.
        count = max(count + 1, math.ceil(count * 1.1 * min_seconds / max(seconds, 1e-9)))
    monitor.sample()
    timing.step_seconds, timing.steps = [seconds], count
    timing.conditions = monitor.summary()
    return timing


def summarize(timing: Timing, batch_size: int) -> dict:
    """Throughput and step-time statistics of one measurement.

    `images_per_sec` is the measured images over the measured time. Per-step
    timing gives the step-time percentiles; pipelined timing only their mean
    (no step is timed alone). `compile_seconds` is the warm-up time beyond what
    the same number of steady-state steps takes: tracing and compilation
    (including any recompilation on the second call), not the steps themselves.
    """
    times = np.asarray(timing.step_seconds, dtype=np.float64)
    total = float(times.sum())
    mean = total / timing.steps
    warm = float(sum(timing.warmup_seconds))
    result = {
        "timing": "pipelined" if timing.pipelined else "per-step",
        "images_per_sec": batch_size * timing.steps / total,
        "step_ms_mean": 1e3 * mean,
        "steps": timing.steps,
        "warmup": timing.warmup,
        "measured_seconds": total,
        "step_ms_median": None,
        "step_ms_p90": None,
        "step_ms_min": None,
        "first_step_seconds": None,
        **timing.conditions,
    }
    if timing.pipelined:
        result["compile_seconds"] = max(0.0, warm - timing.warmup * mean)
        return result
    median = float(np.median(times))
    result.update(
        step_ms_median=1e3 * median,
        step_ms_p90=1e3 * float(np.percentile(times, 90)),
        step_ms_min=1e3 * float(times.min()),
        compile_seconds=max(0.0, warm - len(timing.warmup_seconds) * median),
        first_step_seconds=float(timing.warmup_seconds[0]),
    )
    return result


def new_record(
    impl: str, mode: str, timing: str | None, batch_size: int, config: dict, **fields
) -> dict:
    """A record with every key of `RECORD_KEYS`, settings filled from `config`."""
    record = dict.fromkeys(RECORD_KEYS)
    record.update(
        impl=impl,
        mode=mode,
        timing=timing,
        batch_size=int(batch_size),
        image_size=config.get("image_size"),
        precision=config.get("precision"),
        jit_requested=config.get("jit"),
        arch=config.get("arch", "alexnet"),
        # The variant is AlexNet's: None for a network without variants.
        variant=config.get("variant")
        if config.get("arch", "alexnet") in ARCHS_WITH_VARIANTS
        else None,
        num_classes=config.get("num_classes"),
        steps=config.get("steps"),
        warmup=config.get("warmup"),
        min_seconds=config.get("min_seconds"),
        device_type=config.get("device"),
        settings=config.get("settings"),
        metadata=config.get("metadata"),
    )
    if config.get("note"):
        record["note"] = config["note"]
    record.update(fields)
    return record


def record_key(record: dict) -> tuple:
    """What a record measured: (mode, timing, batch size)."""
    return record["mode"], record.get("timing"), record["batch_size"]


def planned(impl: str, config: dict) -> list[tuple]:
    """The (mode, timing, batch size) keys `impl` measures, in order.

    Every synthetic mode in every timing mode; the end-to-end epoch (a real
    `fit`, so pipelined) for the Keras implementations when asked for.
    """
    keys = [
        (mode, timing, batch)
        for mode in config["modes"]
        for batch in config["batch_sizes"]
        for timing in config.get("timings", TIMINGS)
    ]
    if config.get("end_to_end") and impl in KERAS_IMPLS:
        keys += [(E2E_MODE, "pipelined", batch) for batch in config["batch_sizes"]]
    return keys


def error_records(impl: str, config: dict, error: str, detail: str | None = None, **fields):
    """One failed record per (mode, timing, batch size) that `impl` was asked to measure."""
    return [
        new_record(impl, mode, timing, batch, config, error=error, error_detail=detail, **fields)
        for mode, timing, batch in planned(impl, config)
    ]


# Where a worker process keeps its finished records (set by the runner's worker
# entry), rewritten after each one: a worker that dies later loses nothing measured.
RESULT_SINK: dict = {"path": None, "records": []}


def write_records(path, records: list[dict]) -> None:
    """Writes a worker's records to `path` atomically.

    The parent may kill a worker at any instant (its timeout): the file then
    holds the previous complete list or the new one, never half of one.
    """
    atomic_write_json(path, records, default=str)


def read_records(path: Path) -> tuple[list[dict], str | None]:
    """A worker's saved records, and why the file could not be read (None when it could).

    No file: no records (the worker ended before its first). A file that is not
    a JSON list of records (truncated by a kill mid-write, or written by
    anything else): no records and the parse error, never an exception, so the
    parent records the failure and goes on with the next worker.
    """
    if not path.exists():
        return [], None
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        return [], short_error(exc)
    keys = ("impl", "mode", "timing", "batch_size")
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and all(k in r for k in keys) for r in records
    ):
        return [], f"not a JSON list of records with {list(keys)}"
    return records, None


def progress(record: dict, *, save: bool = True) -> None:
    """Saves a finished record to the worker's sink, and prints one line about it on stderr.

    The parent relays `[bench]` lines.
    """
    if save and RESULT_SINK["path"] is not None:
        RESULT_SINK["records"].append(record)
        write_records(RESULT_SINK["path"], RESULT_SINK["records"])

    what = f"{record['impl']} {record['mode']} {record.get('timing')} batch {record['batch_size']}"
    if record.get("error"):
        line = f"{what}: {record['error']}"
    elif record.get("e2e_ratio") is not None:
        line = (
            f"{what}: {record['images_per_sec']:.1f} images/s over a {record['dataset']} epoch, "
            f"{record['e2e_ratio']:.0%} of synthetic"
        )
    else:
        median = record.get("step_ms_median")
        step = f"median {median:.1f} ms" if median else f"mean {record['step_ms_mean']:.1f} ms"
        line = (
            f"{what}: {record['images_per_sec']:.1f} images/s, {step} a step over "
            f"{record['steps']} steps, compile {record['compile_seconds'] or 0.0:.1f} s"
        )
    if record.get("contended"):
        line += (
            f" [contended: other processes kept {record['other_cpu_cores']} of "
            f"{record['cpu_cores']} cores busy; not comparable]"
        )
    print(f"[bench] {line}", file=sys.stderr, flush=True)
