"""Step timing, result records and progress lines shared by every benchmark worker.

Framework-free on purpose (numpy and `alexnet_k3.core` only, which imports no
Keras): the torchvision baseline runs on machines without keras, and the parent
process never imports a framework. The option vocabularies, the out-of-memory
classifier and the CPU name come from `alexnet_k3.core`, typed once there.

The timing follows timm's `benchmark.py`: warm-up steps (compilation included)
are timed apart from the measured steps, every step ends with a device
synchronization before its clock stops, and records are flat dictionaries.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet_k3.core import atomic_write_json

KERAS_IMPLS = ("keras-torch", "keras-jax", "keras-tensorflow")
BASELINE_IMPLS = ("torchvision-eager", "torchvision-compile")
IMPLS = KERAS_IMPLS + BASELINE_IMPLS
MODES = ("train", "infer")
# Not a mode one asks for with --modes: `--end-to-end` adds these records.
E2E_MODE = "train-e2e"

# Every record carries every one of these keys (None where not applicable or
# where the run failed; `error` says why).
RECORD_KEYS = (
    "impl",
    "mode",
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
    "peak_memory_bytes",
    "data_format",
    # The process-wide speed settings the worker ran under (`tune_for_speed()`'s record).
    "cudnn_benchmark",
    "keep_freed_memory",
    "variant",
    "num_classes",
    "error",
    "error_detail",
)


def short_error(exc: BaseException, limit: int = 300) -> str:
    """One line naming the error type and the first line of its message."""
    message = str(exc).strip().splitlines()
    first = message[0] if message else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Timing:
    """Wall-clock seconds of the warm-up steps and of the measured steps."""

    warmup_seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)


def time_steps(
    step: Callable[[], object],
    synchronize: Callable[[object], object],
    *,
    warmup: int,
    steps: int,
) -> Timing:
    """Runs `warmup` then `steps` calls of `step`, each clock stopped after `synchronize`.

    Args:
        step: one training or inference step on a device-resident batch.
        synchronize: blocks until the device has finished the work that produced
            the step's return value (asynchronous CUDA/XLA dispatch otherwise makes
            a step look as fast as its Python launch).
        warmup: untimed-for-throughput steps run first (tracing, compilation,
            autotuning, allocator growth); at least 1.
        steps: measured steps; at least 1.

    Example:
        >>> t = time_steps(lambda: sum(range(10)), lambda v: v, warmup=1, steps=3)
        >>> len(t.step_seconds)
        3
    """
    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, received warmup={warmup}, steps={steps}.")
    timing = Timing()
    for seconds, count in ((timing.warmup_seconds, warmup), (timing.step_seconds, steps)):
        for _ in range(count):
            start = time.perf_counter()
            synchronize(step())
            seconds.append(time.perf_counter() - start)
    return timing


def summarize(timing: Timing, batch_size: int) -> dict:
    """Throughput and step-time statistics of one measurement.

    `images_per_sec` is the measured images over the summed measured step times.
    `compile_seconds` is the warm-up time beyond what the same number of
    steady-state steps takes: tracing and compilation (including any
    recompilation on the second call), not the steps themselves.
    """
    times = np.asarray(timing.step_seconds, dtype=np.float64)
    median = float(np.median(times))
    warm = float(sum(timing.warmup_seconds))
    return {
        "images_per_sec": batch_size * len(times) / float(times.sum()),
        "step_ms_median": 1e3 * median,
        "step_ms_p90": 1e3 * float(np.percentile(times, 90)),
        "step_ms_mean": 1e3 * float(times.mean()),
        "step_ms_min": 1e3 * float(times.min()),
        "compile_seconds": max(0.0, warm - len(timing.warmup_seconds) * median),
        "first_step_seconds": float(timing.warmup_seconds[0]),
        "steps": len(times),
        "warmup": len(timing.warmup_seconds),
    }


def new_record(impl: str, mode: str, batch_size: int, config: dict, **fields) -> dict:
    """A record with every key of `RECORD_KEYS`, settings filled from `config`."""
    record = dict.fromkeys(RECORD_KEYS)
    record.update(
        impl=impl,
        mode=mode,
        batch_size=int(batch_size),
        image_size=config.get("image_size"),
        precision=config.get("precision"),
        jit_requested=config.get("jit"),
        variant=config.get("variant"),
        num_classes=config.get("num_classes"),
        steps=config.get("steps"),
        warmup=config.get("warmup"),
        device_type=config.get("device"),
    )
    if config.get("note"):
        record["note"] = config["note"]
    record.update(fields)
    return record


def error_records(impl: str, config: dict, error: str, detail: str | None = None, **fields):
    """One failed record per (mode, batch size) that `impl` was asked to measure."""
    modes = list(config["modes"])
    if config.get("end_to_end") and impl in KERAS_IMPLS:
        modes.append(E2E_MODE)
    return [
        new_record(impl, mode, batch, config, error=error, error_detail=detail, **fields)
        for mode in modes
        for batch in config["batch_sizes"]
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
    keys = ("impl", "mode", "batch_size")
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

    what = f"{record['impl']} {record['mode']} batch {record['batch_size']}"
    if record.get("error"):
        line = f"{what}: {record['error']}"
    elif record.get("e2e_ratio") is not None:
        line = (
            f"{what}: {record['images_per_sec']:.1f} images/s over a {record['dataset']} epoch, "
            f"{record['e2e_ratio']:.0%} of synthetic"
        )
    else:
        line = (
            f"{what}: {record['images_per_sec']:.1f} images/s, "
            f"median {record['step_ms_median'] or float('nan'):.1f} ms, "
            f"compile {record['compile_seconds'] or 0.0:.1f} s"
        )
    print(f"[bench] {line}", file=sys.stderr, flush=True)
