"""A study's records: what each run's folder says, and where the study ran (Keras-free)."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
from dataclasses import fields
from pathlib import Path

from alexnet_k3.config import TrainConfig
from alexnet_k3.core import JIT_SETTINGS, cpu_name
from alexnet_k3.studies.plan import PlannedRun

# The figures a run's metrics.json gives its study record.
_RECORD_METRICS = (
    "test_accuracy",
    "test_top5_accuracy",
    "test_loss",
    "class_names",
    "per_class_accuracy",
    "confusion_matrix",
    "train_seconds",
    "images_per_second",
    "initial_weights_sha256",
    "device",
    "cpu_cores",
    "other_cpu_cores",
    "contended",
)


_PACKAGES = ("alexnet-k3", "keras", "numpy", "torch", "torchvision", "jax", "jaxlib", "tensorflow")


def run_record(run: PlannedRun, metrics: dict | None = None, *, status="ok", message=None) -> dict:
    """The study.json record of `run`, from its metrics.json when it has one."""
    described = run.describe()
    record = {
        "name": run.name,
        "kind": run.kind,
        "backend": run.backend,
        "arch": described["arch"],
        "variant": described["variant"],
        "mode": described["mode"],
        "dataset": described["dataset"],
        "epochs": described["epochs"],
        "status": status,
        "message": message,
        "folder": run.name,
        "source": run.source,
        "cross_backend": {},
    }
    record.update({key: (metrics or {}).get(key) for key in _RECORD_METRICS})
    if run.kind == "evaluate":
        record.update(train_seconds=None, images_per_second=None)
    return record


def read_metrics(folder: Path) -> dict | None:
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def train_options(settings: dict) -> list[str]:
    """`alexnet-k3 train`'s command-line options for these `TrainConfig` settings."""
    options = []
    for f in fields(TrainConfig):
        if f.name not in settings or settings[f.name] is None:
            continue
        value = settings[f.name]
        flag = (f.metadata["flags"] or (f"--{f.name.replace('_', '-')}",))[0]
        if f.metadata["kind"] == "bool":
            options.append(flag if value else f"--no-{flag[2:]}")
        elif f.metadata["kind"] == "jit":
            options += [flag, next(k for k, v in JIT_SETTINGS.items() if v is value or v == value)]
        else:
            options += [flag, str(value)]
    return options


def environment(records: list[dict]) -> dict:
    versions = {}
    for package in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    devices = {}
    for record in records:
        if record.get("device") and record["kind"] != "evaluate":
            devices.setdefault(record["backend"], record["device"])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": cores,
        "packages": versions,
        "devices": devices,
    }


def iso_time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
