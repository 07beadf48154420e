"""What `alexnet_k3.tracking` logs of a finished run folder: params, metrics, tags, files."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

# metrics.json's figures logged as final metrics (each where the run has it).
FINAL_METRICS = (
    "test_accuracy",
    "test_loss",
    "test_top5_accuracy",
    "train_seconds",
    "images_per_second",
    "images_per_second_after_first_epoch",
    "eval_images_per_second",
)
# metrics.json's fields that become tags, so runs can be filtered and grouped in the UI.
TAG_FIELDS = ("backend", "arch", "variant", "mode", "dataset")
# An evaluation folder has no config.json: its parameters are what was evaluated, where.
EVALUATION_PARAMS = (
    "backend",
    "trained_on_backend",
    "dataset",
    "model",
    "arch",
    "variant",
    "mode",
    "epochs",
    "image_size",
    "weights",
    "precision",
)
# What is copied as artifacts, in this order (the model last: it is the big one).
# class_names.json travels with model.keras: evaluate and predict read it beside it.
ARTIFACTS = (
    "report.md",
    "*.png",
    "history.csv",
    "metrics.json",
    "config.json",
    "class_names.json",
    "model.keras",
)
# Tags this module sets besides TAG_FIELDS: the run folder and its metrics.json's
# SHA-256, which makes logging the same finished folder twice a no-op.
RUN_DIR_TAG = "alexnet_k3.run_dir"
METRICS_SHA_TAG = "alexnet_k3.metrics_sha256"


def read_run(run_dir: Path) -> dict:
    """What `log_run` logs of `run_dir`: params, metrics (key, value, step), tags, files."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} does not exist: only a finished run folder can be logged"
        )
    metrics_bytes = metrics_path.read_bytes()
    metrics = _json_object(metrics_path, json.loads(metrics_bytes), dict)
    config_path = run_dir / "config.json"
    config = (
        _json_object(config_path, json.loads(config_path.read_text()), dict)
        if config_path.is_file()
        else None
    )
    if config is not None:
        params = {str(k): _param_value(v) for k, v in config.items()}
    else:
        params = {k: _param_value(metrics[k]) for k in EVALUATION_PARAMS if k in metrics}
    kind = metrics.get("kind") or ("train" if config is not None else "evaluation")

    logged = []
    history_path = run_dir / "history.json"
    if history_path.is_file():
        history = _json_object(history_path, json.loads(history_path.read_text()), list)
        for index, epoch in enumerate(history, start=1):
            if not isinstance(epoch, dict):
                continue
            step = epoch.get("epoch", index)
            step = step if isinstance(step, int) and not isinstance(step, bool) else index
            for key, value in epoch.items():
                if key != "epoch" and _is_number(value):
                    logged.append((metric_key(key), float(value), step))
    for key in FINAL_METRICS:
        if _is_number(metrics.get(key)):
            logged.append((key, float(metrics[key]), 0))
    per_class = metrics.get("per_class_accuracy")
    if isinstance(per_class, dict):
        used: set[str] = set()
        for name, accuracy in per_class.items():
            if _is_number(accuracy):
                key = _unique(metric_key(f"class_accuracy/{metric_key(str(name), '/')}"), used)
                logged.append((key, float(accuracy), 0))

    tags = {k: str(metrics[k]) for k in TAG_FIELDS if metrics.get(k) is not None}
    tags.update(
        {
            "kind": str(kind),
            RUN_DIR_TAG: str(run_dir.resolve()),
            METRICS_SHA_TAG: hashlib.sha256(metrics_bytes).hexdigest(),
        }
    )
    if metrics.get("status"):
        tags["status"] = str(metrics["status"])
    artifacts = []
    for pattern in ARTIFACTS:
        artifacts += [p for p in sorted(run_dir.glob(pattern)) if p.is_file()]
    return {
        "params": params,
        "metrics": logged,
        "tags": tags,
        "artifacts": artifacts,
        "failed": metrics.get("status") in ("diverged", "failed"),
    }


def metric_key(name: str, also_replace: str = "") -> str:
    """`name` as an MLflow metric name: characters MLflow refuses (anything but letters,
    digits, `_ - . /` and spaces) and those in `also_replace` become `_`; a name MLflow
    would read as a path (empty, `.`, `..`) becomes `_`.

    Example:
        >>> metric_key("chat/chien: ok?", "/")
        'chat_chien_ ok_'
    """
    key = re.sub(r"[^A-Za-z0-9_.\- /]", "_", name)
    for char in also_replace:
        key = key.replace(char, "_")
    parts = [part if part.strip(".") else "_" * max(1, len(part)) for part in key.split("/")]
    return "/".join(parts)[:250]


def _unique(key: str, used: set[str]) -> str:
    candidate, n = key, 1
    while candidate in used:
        n += 1
        candidate = f"{key}_{n}"
    used.add(candidate)
    return candidate


def _json_object(path: Path, value, expected: type):
    if not isinstance(value, expected):
        raise ValueError(
            f"{path} holds a JSON {type(value).__name__}, expected a {expected.__name__}"
        )
    return value


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit for a parameter's value


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
