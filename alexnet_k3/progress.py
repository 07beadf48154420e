"""A run's progress: its epochs' records (`history.json`), their timing, how it prints.

Shared by the Keras runs (`training`, `callbacks.HistoryWriter`) and the plain
PyTorch loop (`reference`), so both write the same records and report the
same speed figures. Keras-free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alexnet_k3.core import atomic_write_text, read_json


def load_history(path) -> list[dict]:
    """The epochs' records in a run's `history.json` ([] where there is none yet)."""
    path = Path(path)
    if not path.exists():
        return []
    advice = (
        "It holds the run's record of epochs, so the run cannot be resumed as it is: "
        "restore the file, or start a new run in another folder."
    )
    return read_json(path, advice, list)


def write_history(path, epochs: list[dict]) -> None:
    """Writes the epochs' records to `history.json`, atomically."""
    atomic_write_text(path, json.dumps(epochs, indent=1))


def timing(history: list[dict], n_train: int) -> dict:
    """A run's training time and speed, from its epochs' `seconds`.

    The first epoch includes tracing/compilation (or, in plain PyTorch, the first
    allocations and cuDNN's autotuning); the steady figure leaves it out.
    """
    seconds = sum(e["seconds"] for e in history)
    steady = history[1:] if len(history) > 1 else history
    steady_seconds = sum(e["seconds"] for e in steady)
    return {
        "train_images": n_train,
        "train_seconds": round(seconds, 3),
        "images_per_second": round(n_train * len(history) / seconds, 1) if seconds else None,
        "images_per_second_after_first_epoch": (
            round(n_train * len(steady) / steady_seconds, 1) if steady_seconds else None
        ),
    }


def verbosity(verbose, isatty: bool | None = None):
    """The verbosity a run prints with: "auto" is 1 (redrawn progress) on a terminal only.

    Keras's own "auto" draws the bar everywhere, refreshed twice a second; into
    a file or a CI log that is not a terminal those refreshes pile up as lines,
    so there it is one line per epoch (2).
    """
    if verbose != "auto":
        return verbose
    return 1 if (sys.stdout.isatty() if isatty is None else isatty) else 2
