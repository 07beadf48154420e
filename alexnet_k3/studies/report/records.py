"""The numbers of study.json's records as the report uses them, and its tables' cells as text."""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath

from alexnet_k3 import contention
from alexnet_k3.core import read_json
from alexnet_k3.report import _fmt

TRAIN_KINDS = ("keras", "torch-reference")

# (title, record key, decimals): the summary table's plain columns, in order.
SUMMARY_COLUMNS = [
    ("name", "name", None),
    ("kind", "kind", None),
    ("backend", "backend", None),
    ("arch", "arch", None),
    ("variant", "variant", None),
    ("mode", "mode", None),
    ("epochs", "epochs", None),
    ("status", "status", None),
    ("test accuracy", "test_accuracy", 4),
    ("top-5", "test_top5_accuracy", 4),
    ("test loss", "test_loss", 4),
    ("train time (s)", "train_seconds", 1),
    ("images/s", "images_per_second", 1),
    ("initial weights (sha256)", "initial_weights_sha256", None),
    ("cross-backend accuracy", "cross_backend", None),
]
NUMERIC_KEYS = {key for _, key, digits in SUMMARY_COLUMNS if digits is not None} | {"epochs"}
# Marked (`contention.MARK`) in the runs measured while other processes used the cores.
SPEED_KEYS = {"train_seconds", "images_per_second"}


def contended_runs(study: dict) -> list[dict]:
    """The runs whose speed figures were measured under contention."""
    return [r for r in study.get("runs") or [] if contention.contended(r)]


def contention_note(study: dict) -> str | None:
    """The tables' footnote when a run's figures are marked, else None."""
    return f"{contention.MARK} {contention.NOTE}." if contended_runs(study) else None


def num(value) -> float | None:
    """`value` as a finite float, or None (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def is_ok(record: dict) -> bool:
    return record.get("status") == "ok"


def train_runs(study: dict) -> list[dict]:
    """The ok train runs (not evaluations) that have a test accuracy."""
    return [
        r
        for r in study["runs"]
        if is_ok(r) and r.get("kind") in TRAIN_KINDS and num(r.get("test_accuracy")) is not None
    ]


def read_histories(out: Path, records: list[dict]) -> dict[str, list[dict] | None]:
    """Each ok train run's epochs (epoch, phase, accuracy, loss), or None where unreadable."""
    histories = {}
    for record in records:
        if is_ok(record) and record.get("kind") in TRAIN_KINDS:
            histories[record["name"]] = _read_history(out, record.get("folder") or record["name"])
    return histories


def _read_history(out: Path, folder) -> list[dict] | None:
    # study.json names the folder; one that leaves the study folder is not followed.
    relative = PurePosixPath(str(folder))
    if relative.is_absolute() or ".." in relative.parts:
        return None
    path = out / relative / "history.json"
    if not path.is_file():
        return None
    try:
        epochs = read_json(path, "The study report leaves this run's curve out.", list)
    except (ValueError, OSError):
        return None
    points = []
    for entry in epochs:
        if not isinstance(entry, dict) or num(entry.get("epoch")) is None:
            return None
        points.append(
            {
                "epoch": int(entry["epoch"]),
                "phase": str(entry.get("phase", "train")),
                "accuracy": num(entry.get("accuracy")),
                "loss": num(entry.get("loss")),
            }
        )
    return sorted(points, key=lambda e: e["epoch"]) or None


def pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def status_text(record: dict) -> str:
    status = str(record.get("status", "?"))
    message = record.get("message")
    if not message or status == "ok":
        return status
    message = str(message)
    return message if message.startswith(status) else f"{status}: {message}"


def kind_text(record: dict, separator: str = " ") -> str:
    kind = str(record.get("kind", "?"))
    return f"{kind}{separator}of {record['source']}" if record.get("source") else kind


def cross_text(record: dict, separator: str = ", ") -> str:
    cross = record.get("cross_backend")
    if not isinstance(cross, dict) or not cross:
        return "-"
    return separator.join(f"{backend} {_fmt(num(a))}" for backend, a in cross.items())


def summary_cells(record: dict, separator: str = ", ") -> list[str]:
    """The summary row of `record`, one plain-text string per column; `separator` joins
    the parts of a cell that has several (cross-backend accuracies, an evaluation's source)."""
    cells = []
    for _, key, digits in SUMMARY_COLUMNS:
        if key == "status":
            cells.append(status_text(record))
        elif key == "kind":
            cells.append(kind_text(record, " " if separator == ", " else separator))
        elif key == "cross_backend":
            cells.append(cross_text(record, separator))
        elif key == "initial_weights_sha256":
            sha = record.get(key)
            cells.append(str(sha)[:12] if sha else "-")
        elif key in SPEED_KEYS:
            cells.append(contention.marked(_fmt(num(record.get(key)), digits), record))
        elif key in NUMERIC_KEYS and key != "epochs":
            cells.append(_fmt(num(record.get(key)), digits))
        else:
            cells.append(_fmt(record.get(key)))
    return cells


def _class_names(study: dict) -> list[str]:
    """Every class named by a run, in the order the runs first name them."""
    names: dict[str, None] = {}
    for record in _class_runs(study):
        names.update(
            dict.fromkeys(map(str, record.get("class_names") or record["per_class_accuracy"]))
        )
    return list(names)


def _class_runs(study: dict) -> list[dict]:
    return [r for r in study["runs"] if is_ok(r) and isinstance(r.get("per_class_accuracy"), dict)]


def per_class_rows(study: dict) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    names = _class_names(study)
    rows = []
    for record in _class_runs(study):
        values = record["per_class_accuracy"]
        rows.append((record["name"], [num(values.get(name)) for name in names]))
    return names, rows


def settings_text(settings) -> str:
    if not isinstance(settings, dict):
        return _fmt(settings)
    return ", ".join(f"{k}={_plain(v)}" for k, v in settings.items()) or "-"


def _plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def environment_items(study: dict) -> list[tuple[str, str]]:
    env = study.get("environment") if isinstance(study.get("environment"), dict) else {}
    items = []
    devices = env.get("devices")
    if isinstance(devices, dict) and devices:
        items.append(("devices", ", ".join(f"{b}: {d}" for b, d in devices.items())))
    for key in ("cpu", "cores", "platform", "python"):
        if env.get(key) is not None:
            items.append((key, str(env[key])))
    packages = env.get("packages")
    if isinstance(packages, dict) and packages:
        items.append(("packages", ", ".join(f"{p} {v}" for p, v in packages.items())))
    plan = study.get("plan") if isinstance(study.get("plan"), dict) else {}
    defaults = plan.get("defaults") if isinstance(plan.get("defaults"), dict) else {}
    if defaults.get("seed") is not None:
        items.append(("seed", str(defaults["seed"])))
    for key in ("started", "finished"):
        if study.get(key):
            items.append((key, str(study[key])))
    for key in ("wall_seconds", "overhead_seconds"):
        if num(study.get(key)) is not None:
            items.append((key.replace("_", " ").replace("seconds", "(s)"), f"{study[key]:.1f}"))
    return items


def plan_of(study: dict) -> dict:
    return study.get("plan") if isinstance(study.get("plan"), dict) else {}


def plan_name(study: dict) -> str:
    return str(plan_of(study).get("name") or "study")
