"""Run folders: where a run may start, when it may resume, and how a diverged run is marked.

A run folder is either one `train` wrote (its `config.json` first) or it is
refused: nothing from an unrecognised folder (an old history, best score or
model) is ever adopted as a new run's. One process at a time writes a folder
(`lock`), and `evaluate --out` never writes over a training run's results
(`claim_for_evaluation`). A run's data is loaded here too (`load_data`, which
saves its class names beside the model) and split (`split`, `check_split`).
Keras-free, like the config it reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from alexnet_k3.config import TrainConfig
from alexnet_k3.core import (
    atomic_write_json,
    atomic_write_text,
    option_name,
    read_json,
    remove_stale_temp_files,
)
from alexnet_k3.launch import process_label

try:
    import fcntl
except ImportError:  # Windows: folders are not locked there
    fcntl = None

# What `train` writes besides config.json (model.pt: the plain PyTorch loop's model).
RUN_FILES = (
    "history.json",
    "history.csv",
    "metrics.json",
    "model.keras",
    "model.pt",
    "report.md",
    "state",
    "class_names.json",
)
# The model's class names, beside model.keras: what `evaluate` and `predict` call each
# output (an image folder's class names exist nowhere else).
CLASS_NAMES_FILE = "class_names.json"

LOCK_FILE = ".lock"
# What `evaluate --out` writes (report.write_run without a history).
EVALUATION_FILES = (
    "metrics.json",
    "report.md",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "samples.png",
)
# Fewer training images per class than this earns a warning.
FEW_IMAGES_PER_CLASS = 10


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run is marked diverged and stops."""


class RunFolderBusy(OSError):
    """Another live process holds the run folder's lock.

    Attributes:
        pid: the holder's process id (None where its lock file was still empty).
    """

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


def warn(message: str) -> None:
    """A warning about a run that goes on (stderr, one line, led by the process in a job)."""
    print(f"warning: {process_label()}{message}", file=sys.stderr)


@contextlib.contextmanager
def lock(out: Path, command: str = "train"):
    """Holds `out`'s exclusive lock (`out/.lock`, with this pid) while the block runs.

    The lock is `fcntl.flock`, which the kernel drops when its holder dies however
    it dies, so a lock file left by a killed process is stale: it is taken over
    (with a note) and that process's half-written temporary files are removed. A
    folder that the block created and left empty (a failed start) is removed.

    Raises:
        RunFolderBusy: a live process holds the lock; its pid is named.
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = None
    try:
        if fcntl is not None:
            fd = _acquire(path, out, command)
        remove_stale_temp_files(out)
        yield
    finally:
        if fd is not None:
            path.unlink(missing_ok=True)  # before unlocking: see _acquire
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # not empty: the run's files stay
                out.rmdir()


def _acquire(path: Path, out: Path, command: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _pid_in(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise RunFolderBusy(
                f"{out} is in use: {who} is writing it (lock {path}). Two writers would "
                f"mix their files, so this `{command}` stops. Wait for that process to "
                "finish"
                + (f" (or stop it: kill {holder})" if holder else "")
                + ", or give another output folder.",
                holder,
            ) from None
        # The holder removes the file before it unlocks: a lock taken on a removed
        # file excludes nobody, so take it again on the file now at `path`.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    previous = _pid_in(fd)
    if previous and previous != os.getpid():
        warn(f"took over the stale lock {path} of process {previous}, which no longer holds it.")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def claim_for_evaluation(out: Path) -> None:
    """Refuses an `evaluate --out` folder unless it is new, empty or a previous evaluation's."""
    out = Path(out)
    if not out.is_dir():
        return
    names = sorted(
        p.name for p in out.iterdir() if p.name != LOCK_FILE and not p.name.startswith(".tmp-")
    )
    metrics_path = out / "metrics.json"
    others = [n for n in names if n not in EVALUATION_FILES]
    if not others and metrics_path.exists():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError:
            metrics = None
        # evaluate() names the model it evaluated; a training run's metrics never do
        # so without also holding its training figures or a diverged status.
        evaluation = (
            isinstance(metrics, dict)
            and isinstance(metrics.get("model"), str)
            and not {"train_seconds", "status"} & set(metrics)
        )
        if not evaluation:
            others = ["metrics.json"]
    if others:
        holds = "a training run's results" if "config.json" in names else "other files"
        raise FileExistsError(
            f"{out} holds {holds} ({', '.join(others[:6])}{', ...' if len(others) > 6 else ''}); "
            f"evaluating into it would replace its metrics.json and report.md. Give "
            f"{option_name('out')} a new or empty folder, or one a previous evaluation wrote "
            f"(e.g. {out / 'evaluation'})."
        )


def saved_config(out: Path, settings: dict) -> TrainConfig:
    """The config of the run in `out`, to resume; refuses settings that contradict it."""
    config_path = out / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(
            f"Cannot resume: {config_path} does not exist. Start the run without "
            "`resume` first, or point `out` at the folder of an interrupted run."
        )
    advice = (
        "It holds the run's settings, so the run cannot be resumed as it is: restore the "
        "file, or start a new run in another folder."
    )
    saved = read_json(config_path, advice, dict)
    # Runs started before the `init` setting existed were initialized the Keras way,
    # and before `schedule` existed they decayed with a cosine.
    saved.setdefault("init", "keras")
    saved.setdefault("schedule", "cosine")
    unknown_saved = sorted(set(saved) - set(TrainConfig.__dataclass_fields__))
    if unknown_saved:
        raise ValueError(
            f"{config_path} holds unknown settings {unknown_saved}; expected only the "
            f"fields of TrainConfig. Remove them from the file if they were added by hand "
            f"(or resume with the alexnet_k3 version that started the run). {advice}"
        )
    config = TrainConfig(**saved)
    try:
        config.validate()
    except ValueError as error:
        raise ValueError(f"{config_path} holds an invalid setting: {error} {advice}") from None
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
    metrics = read_json(
        path,
        "It holds the finished run's test results: test its model.keras again with "
        "`alexnet-k3 evaluate RUN/model.keras --out NEW_FOLDER`, or start a new run.",
        dict,
    )
    if metrics.get("status") == "diverged":
        raise TrainingDiverged(f"Cannot resume {out}: {metrics.get('message', 'it diverged.')}")
    return metrics


def mark_diverged(out: Path, epoch: int, loss: float, learning_rate: float) -> TrainingDiverged:
    """Writes the diverged run's `metrics.json` and returns the error to raise.

    `metrics.json` then holds no test figures: the run produced none.
    """
    kept = next((n for n in ("model.keras", "model.pt") if (out / n).exists()), None)
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


def abandon(out: Path) -> None:
    """Removes what a start that failed before its first epoch wrote, freeing `out`."""
    for name in ("config.json", CLASS_NAMES_FILE):
        (Path(out) / name).unlink(missing_ok=True)


def load_data(out: Path, config: TrainConfig, default_size: int, save: bool = True):
    """The run's `Dataset`, its class names saved beside the model unless not `save`.

    An image folder is decoded at `cache_side` of the network's input side (the
    `image_size`, else `default_size`, `model.default_input_size`), and split by
    the run's `test_split` and `seed`.
    """
    from alexnet_k3 import datasets  # numpy only, but not needed to parse a command line

    options = {}
    if config.dataset == "folder":
        side = config.image_size or default_size
        options = {"image_size": datasets.folder.cache_side(side), "seed": config.seed}
        options.update(test_split=config.test_split, strict=config.strict)
    data = datasets.load_dataset(config.dataset, data_dir=config.data_dir, **options)
    if save:
        save_class_names(out, data.class_names)
    return data


def save_class_names(out: Path, class_names) -> None:
    """Writes the run's class names (`RUN/class_names.json`, a JSON list) beside its model."""
    atomic_write_json(Path(out) / CLASS_NAMES_FILE, list(class_names), indent=1)


def saved_class_names(model_path) -> list[str] | None:
    """The class names saved beside a model file (None where there are none).

    Example:
        >>> saved_class_names("runs/photos/model.keras")  # doctest: +SKIP
        ['cat', 'dog']
    """
    path = Path(model_path).with_name(CLASS_NAMES_FILE)
    if not path.is_file():
        return None
    names = read_json(path, "It names the model's classes: restore it, or train again.", list)
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must hold a JSON list of class names; received {names!r}.")
    return names


def split(x, y, config: TrainConfig, replicas: int = 1):
    """Holds out the last `validation_split` of a seeded shuffle, one-hot encoding the labels.

    With several replicas both parts are trimmed to a multiple of their number
    (at most `replicas - 1` images each), so every batch, the last one included,
    splits evenly across the devices.
    """
    num_classes = int(y.max()) + 1
    order = np.random.default_rng(config.seed).permutation(len(x))
    n_val = int(round(len(x) * config.validation_split))
    n_val -= n_val % replicas
    n_train = len(x) - n_val
    n_train -= n_train % replicas
    train_idx, val_idx = order[:n_train], order[len(x) - n_val :]
    onehot = np.eye(num_classes, dtype="float32")
    if isinstance(x, np.memmap) and n_train == len(x):
        # An image folder's cache, which may not fit in memory: trained on as it is
        # (`fit` shuffles every epoch), not copied in a shuffled order.
        return (x, onehot[y]), None
    train = (x[train_idx], onehot[y[train_idx]])
    validation = (x[val_idx], onehot[y[val_idx]]) if n_val else None
    return train, validation


def check_split(n_train: int, n_val: int, total: int, num_classes: int, config) -> None:
    """Refuses a validation split that leaves no training images; warns when few are left."""
    split = option_name("validation_split", config.validation_split)
    if n_train < 1:
        raise ValueError(
            f"{split} leaves no training images: of the {total} training images it holds "
            f"out {n_val}. Expected a split leaving at least one image per class "
            f"({num_classes}); use a smaller {option_name('validation_split')} (e.g. 0.1)."
        )
    if n_train < FEW_IMAGES_PER_CLASS * num_classes:
        warn(
            f"{split} leaves {n_train} of the {total} training images for training, fewer "
            f"than {FEW_IMAGES_PER_CLASS} per class ({num_classes} classes): the model will "
            f"learn little. Use a smaller {option_name('validation_split')} (e.g. 0.1)."
        )


def check_speed(config, accelerator: str) -> None:
    """Warns about settings that make this device much slower than it needs to be."""
    if config.precision == "mixed_float16" and accelerator == "cpu":
        warn(
            f"{option_name('precision', 'mixed_float16')} on a CPU: CPUs have no fast "
            "float16 kernels, so every step runs about 10x slower than in float32. Use "
            f"{option_name('precision', 'float32')} on a CPU (mixed_float16 pays off on GPUs)."
        )
