"""Run folders: where a run may start, when it may resume, and how a diverged run is marked.

A run folder is either one `train` wrote (its `config.json` first) or it is
refused: nothing from an unrecognised folder (an old history, best score or
model) is ever adopted as a new run's. Keras-free, like the config it reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from alexnet_k3.config import TrainConfig
from alexnet_k3.core import atomic_write_json, atomic_write_text

# What `train` writes besides config.json.
RUN_FILES = ("history.json", "history.csv", "metrics.json", "model.keras", "report.md", "state")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run is marked diverged and stops."""


def saved_config(out: Path, settings: dict) -> TrainConfig:
    """The config of the run in `out`, to resume; refuses settings that contradict it."""
    config_path = out / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"Cannot resume: {config_path} does not exist. Start the run without "
            "`resume` first, or point `out` at the folder of an interrupted run."
        )
    saved = json.loads(config_path.read_text())
    # Runs started before the `init` setting existed were initialized the Keras way,
    # and before `schedule` existed they decayed with a cosine.
    saved.setdefault("init", "keras")
    saved.setdefault("schedule", "cosine")
    config = TrainConfig(**saved)
    # Every setting given explicitly must agree with the run's, defaults included:
    # a resumed run never silently drops what the user asked for.
    changed = [
        f"{k}={v!r} was asked for, the run has {k}={getattr(config, k)!r}"
        for k, v in settings.items()
        if k in TrainConfig.__dataclass_fields__ and getattr(config, k) != v
    ]
    unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        changed.append(f"unknown settings {unknown}")
    if changed:
        raise ValueError(
            f"Cannot resume {out}: {'; '.join(changed)}. A resumed run keeps the settings "
            f"saved in {config_path}: leave those options out (or give the saved values), "
            "or start a new run in another folder."
        )
    return config


def start(out: Path, config: TrainConfig) -> None:
    """Claims `out` for a new run by writing its config; refuses a folder holding a run."""
    config_path = out / "config.json"
    if config_path.exists():
        raise FileExistsError(
            f"{out} already holds a run ({config_path}). Resume it with `resume=True` "
            "(`--resume`), or choose another output folder."
        )
    found = sorted(name for name in RUN_FILES if (out / name).exists())
    if found:
        raise FileExistsError(
            f"{out} holds {', '.join(found)} but no config.json, so they belong to no run "
            "this package can recognise. Start the run in a new or empty folder, or move "
            "those files away first."
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, json.dumps(asdict(config), indent=1))


def finished(out: Path) -> dict | None:
    """The metrics of the finished run in `out`, None if it has not finished.

    Raises `TrainingDiverged` for a run marked diverged: resuming it would start
    again from the same weights with the same settings.
    """
    path = out / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    if metrics.get("status") == "diverged":
        raise TrainingDiverged(f"Cannot resume {out}: {metrics.get('message', 'it diverged.')}")
    return metrics


def mark_diverged(out: Path, epoch: int, loss: float, learning_rate: float) -> TrainingDiverged:
    """Writes the diverged run's `metrics.json` and returns the error to raise.

    `metrics.json` then holds no test figures: the run produced none.
    """
    kept = "model.keras" if (out / "model.keras").exists() else None
    message = (
        f"Training diverged in epoch {epoch}: the training loss was {loss}. "
        + (
            f"{out / kept} holds the last good model. "
            if kept
            else "No epoch finished with a finite loss, so there is no model. "
        )
        + f"The run is marked diverged in {out / 'metrics.json'} and cannot be resumed: "
        "start a new run with a lower learning rate (--lr, or learning_rate= from Python; "
        f"{learning_rate:g} in this run) or a longer warm-up (--warmup-epochs)."
    )
    atomic_write_json(
        out / "metrics.json",
        {
            "status": "diverged",
            "diverged_epoch": epoch,
            "loss": loss,
            "model": kept,
            "message": message,
        },
    )
    return TrainingDiverged(message)
