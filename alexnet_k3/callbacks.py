"""Keras callbacks for runs that can be killed at any moment and resumed.

Every file goes through `alexnet_k3.core`'s write-then-rename, so a run killed
mid-write leaves the previous complete file, never a truncated one. With
`write=False` (the processes of a multi-process job other than process 0) a
callback keeps its bookkeeping and writes nothing. `fit_callbacks` is the list
`train` passes to `fit`, and `stop_diverged` how it ends a diverged run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from alexnet_k3 import backend, runs
from alexnet_k3.core import atomic_write_text, read_json
from alexnet_k3.progress import load_history, write_history


def finite_loss(logs) -> bool:
    """False when an epoch's training loss is NaN or infinite: the run diverged."""
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class DivergenceGuard(keras.callbacks.Callback):
    """Stops `fit` after the first epoch whose training loss is not finite.

    Checked once an epoch, not per batch as Keras's `TerminateOnNaN` does: a
    batch-level callback makes Keras read every step's loss back from the
    device, so no step can run ahead. The other callbacks here skip such an
    epoch, so no backup or best model ever holds its weights.
    """

    def __init__(self):
        super().__init__()
        self.epoch = None  # the epoch (1-based) that diverged
        self.loss = None

    def on_epoch_end(self, epoch, logs=None):
        if not finite_loss(logs):
            self.epoch, self.loss = epoch + 1, float(logs["loss"])
            self.model.stop_training = True


class EpochBackup(keras.callbacks.Callback):
    """Backs up the model (weights and optimizer state) after every epoch, atomically.

    Written with Keras's public API only: `on_epoch_end` saves, and `restore`,
    called before `fit`, loads the last backup and returns the epoch to pass as
    `fit(initial_epoch=...)`. (Keras's own `BackupAndRestore` writes the
    weights and then the epoch counter in place, so a kill during either write
    can leave a truncated file or a counter that disagrees with the weights;
    changing that would mean overriding its private methods.) Here each epoch's
    weights go to a new file and a small JSON pointer naming that file, its epoch
    and the random state after it is renamed into place last: the pointer always
    names complete weights of the epoch it states.

    Example:
        >>> backup = EpochBackup("runs/x/state/backup")
        >>> start = backup.restore(model, default=0)
        >>> model.fit(x, y, epochs=10, initial_epoch=start, callbacks=[backup])
    """

    def __init__(self, backup_dir, write: bool = True):
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.write = write
        self._pointer = self.backup_dir / "latest.json"
        self._random_state = None  # restored as the first epoch begins

    def restore(self, model, default: int = 0) -> int:
        """Loads the last backup into `model` (compiled); returns the epochs it had done."""
        if not self._pointer.exists():
            return default
        advice = (
            f"Delete the folder {self.backup_dir} and resume again: the run then restarts "
            "this phase from its start, and reruns the epochs since."
        )
        state = read_json(self._pointer, advice, dict)
        if model.optimizer is not None and not model.optimizer.built:
            # The backup holds the optimizer's variables (momentum, step count):
            # they need to exist before they can be loaded.
            model.optimizer.build(model.trainable_variables)
        try:
            weights = self.backup_dir / state["weights"]
            model.load_weights(str(weights))
            epoch = int(state["epoch"])
        except MemoryError:
            raise
        except Exception as error:  # h5py's OSError, KeyError, ValueError...
            raise ValueError(
                f"The backup in {self.backup_dir} cannot be restored "
                f"({type(error).__name__}: {error}): the file is damaged or truncated. " + advice
            ) from None
        self._random_state = state.get("random_state")  # older backups have none
        return epoch

    def on_epoch_begin(self, epoch, logs=None):
        # Here, not in `restore`: `fit` draws from the global generators as it starts
        # (torch: once, before its first epoch), which the uninterrupted run did not
        # do between these two epochs.
        if self._random_state is not None:
            backend.set_random_state(self.model, self._random_state)
            self._random_state = None

    def on_epoch_end(self, epoch, logs=None):
        if not finite_loss(logs) or not self.write:
            return
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        done = epoch + 1
        name = f"epoch-{done:04d}.weights.h5"
        save = lambda p: self.model.save_weights(p, overwrite=True)  # noqa: E731
        backend.save_alone(self.model, save, self.backup_dir / name)
        # The random state goes with the weights: the next epoch then shuffles and
        # drops out as it would have without the interruption.
        pointer = {"epoch": done, "weights": name, "random_state": backend.random_state(self.model)}
        atomic_write_text(self._pointer, json.dumps(pointer))
        for old in self.backup_dir.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink(missing_ok=True)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (`.keras`) whenever `monitor` improves, atomically.

    Args:
        path: where the best model goes.
        monitor: a key of the epoch logs, e.g. "val_accuracy".
        mode: "max" or "min".
        best: the best value seen so far (when resuming a run).
        write: False tracks the best value without saving.
    """

    def __init__(self, path, monitor="val_accuracy", mode="max", best=None, write=True):
        super().__init__()
        self.write = write
        self.path = Path(path)
        self.monitor = monitor
        self.better = (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not finite_loss(logs):
            return
        if self.best is None or self.better(float(value), self.best):
            self.best = float(value)
            if self.write:
                backend.save_alone(self.model, lambda p: self.model.save(p), self.path)


class LoadSampler(keras.callbacks.Callback):
    """Samples the machine's load after every epoch (`contention.LoadMonitor.sample`)."""

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        self.monitor.sample()


class HistoryWriter(keras.callbacks.Callback):
    """Keeps `history.json` (epoch logs and seconds per epoch) up to date, atomically.

    Entries are keyed by epoch, so an epoch that is run again after a resume
    replaces its earlier, interrupted record rather than adding a second one.
    """

    def __init__(self, path, phase="train", write: bool = True):
        super().__init__()
        self.path = Path(path)
        self.phase = phase
        self.write = write
        self.epochs = load_history(self.path)
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {key: float(value) for key, value in (logs or {}).items()}
        record.update(
            epoch=epoch + 1, phase=self.phase, seconds=time.perf_counter() - self._started
        )
        if not finite_loss(logs):
            record["diverged"] = True
        self.epochs = [e for e in self.epochs if e["epoch"] != epoch + 1] + [record]
        self.epochs.sort(key=lambda e: e["epoch"])
        if self.write:
            write_history(self.path, self.epochs)


def fit_callbacks(out: Path, phase: str, *, validation: bool, best=None, write=True) -> list:
    """The callbacks `train` passes to `fit` for one phase of the run in `out`.

    In order: `DivergenceGuard`, `HistoryWriter`, with `validation` a
    `BestModelCheckpoint` of `val_accuracy` (to beat `best`), and `EpochBackup`
    last, so an epoch counts as done only once its history and best model are
    written: a kill before the backup reruns the epoch, it never skips a write.

    All of them act once an epoch, none per batch: a callback with a batch hook
    (`on_train_batch_end`...) turns off Keras's asynchronous logs, and every
    step then waits for the device to hand its loss back to the host. With
    `write=False` (a job's processes other than 0) they write nothing.

    Example:
        >>> model.fit(x, y, callbacks=fit_callbacks(Path("runs/x"), "train", validation=True))
    """
    callbacks = [DivergenceGuard(), HistoryWriter(out / "history.json", phase, write)]
    if validation:
        callbacks.append(BestModelCheckpoint(out / "model.keras", best=best, write=write))
    callbacks.append(EpochBackup(out / "state" / f"backup-{phase}", write))
    return callbacks


def stop_diverged(model, config, out: Path, guard, backup, keep_last: bool, write: bool):
    """Keeps the last finite epoch as `model.keras`, marks the run diverged, raises.

    Without a validation hold-out `model.keras` is the last epoch's model: the
    backup of the last finite epoch becomes it. With one, the best model saved
    so far (never a diverged epoch's) stays. Without `write` (a job's processes
    other than 0) it only raises.
    """
    if keep_last and backup.restore(model, default=None) is not None:
        backend.save_alone(model, lambda p: model.save(p), out / "model.keras")
    if not write:
        raise runs.TrainingDiverged(f"Training diverged in epoch {guard.epoch}: see process 0.")
    raise runs.mark_diverged(out, guard.epoch, guard.loss, config.peak_learning_rate)
