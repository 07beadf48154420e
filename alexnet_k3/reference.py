"""The plain PyTorch reference: the course notebooks' training loop, as a run of the package.

`train(out, ...)` (also `alexnet_k3.train(out, implementation="torch-reference", ...)`
and `alexnet-k3 train --implementation torch-reference`) trains torch's own
`nn.Module` AlexNet (`torch_loop`: the `cifar` variant's layers in torch, or
torchvision's AlexNet) with the loop every course notebook wrote by hand, on the
package's data, and writes the run folder a Keras run writes, so that the loop
the package is measured against is a run like any other (`compare`, reports).

The loop: `torch.optim.SGD(lr, momentum=0.9, weight_decay=wd)` (coupled decay,
on every parameter, biases and batch norm included), cross-entropy, a constant
learning rate, torch's default initialization after `torch.manual_seed(seed)`,
the training images shuffled (and augmented) every epoch by a generator seeded
with `seed`, the last epoch kept.

Besides the Keras run's files (config.json, class_names.json, history.json and
.csv, metrics.json, report.md, the plots) the folder holds `model.pt`, the last
epoch's `state_dict` (no `model.keras`: no Keras model is trained), and between
epochs `state/`, what a resumed run continues from. Keras-free: this module
imports torch, never Keras.
"""

from __future__ import annotations

import math
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from alexnet_k3 import progress, runs
from alexnet_k3.config import TrainConfig
from alexnet_k3.contention import LoadMonitor
from alexnet_k3.core import FLIP_AUGMENTATION, atomic_save, cpu_name, keep_freed_memory
from alexnet_k3.metrics import metrics_from_logits

# torch through torch_loop, whose import says what to do when torch is missing.
from alexnet_k3.torch_loop import (
    DEFAULT_SIZES,
    MOMENTUM,
    build_model,
    predict_logits,
    run_epoch,
    state_sha256,
    torch,
)

IMPLEMENTATION = "torch-reference"
MODEL_FILE = "model.pt"
STATE_FILE = Path("state") / "reference.pt"
_STATE_KEYS = {"epoch", "model", "optimizer", "generator", "torch_rng", "cuda_rng"}


def train(out="runs/latest", *, resume=False, verbose="auto", **settings) -> dict:
    """Trains the plain PyTorch reference, tests its last epoch and writes the run folder.

    The contract of `alexnet_k3.training.train`: the same settings (`TrainConfig`;
    those the loop does not honour are refused by `TrainConfig.validate`), the same
    run-folder rules (one writer, `config.json` first, a resume refusing settings that
    contradict the saved ones), the same data and files, the same `metrics.json` keys.

    Args:
        out: folder for everything the run writes (created if needed).
        resume: continue the run in `out`: a run killed at any moment, even
            mid-epoch, completes the same total number of epochs, from the state
            saved after its last finished epoch (weights, momentum, the shuffle
            generator and torch's random state).
        verbose: 0 silent, 1 one line per epoch redrawn as the steps go (a terminal),
            2 one line per epoch, or "auto": 1 on a terminal, 2 into a file or a log.
        **settings: fields of `TrainConfig` (`implementation` is "torch-reference").

    Returns:
        The metrics dict also written to `out/metrics.json`.

    Raises:
        runs.TrainingDiverged: the training loss became NaN or infinite; the run is
            marked diverged in `metrics.json` and `model.pt` holds the last finite epoch.

    Example:
        >>> metrics = train("runs/reference", dataset="digits", epochs=2)
        >>> metrics["implementation"], metrics["backend"]
        ('torch-reference', 'torch')
    """
    out = Path(out)
    settings = {"implementation": IMPLEMENTATION, **settings}
    if settings["implementation"] != IMPLEMENTATION:
        raise ValueError(
            f"alexnet_k3.reference.train trains implementation={IMPLEMENTATION!r}, received "
            f"implementation={settings['implementation']!r}: call alexnet_k3.train instead."
        )
    with runs.lock(out):
        return _train(out, resume, progress.verbosity(verbose), settings)


def _train(out: Path, resume: bool, verbose, settings: dict) -> dict:
    if resume:
        config = runs.saved_config(out, settings)
    else:
        config = TrainConfig.from_settings(settings)
        runs.start(out, config)
    done = runs.finished(out) if resume else None
    if done is not None:
        print(f"{out} already holds a finished run; nothing to resume.")
        return done
    try:
        return _run(out, config, verbose)
    except BaseException:
        # Failed before finishing one epoch (no data, ...): nothing to resume, so
        # free the folder for a corrected start with the same `out`.
        if not resume and not (out / "history.json").exists():
            runs.abandon(out)
        raise


def _run(out: Path, config, verbose) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The process-wide settings `backend.tune_for_speed` gives Keras runs, so that a
    # comparison's processes run under the same ones.
    speed = {"cudnn_benchmark": False, "keep_freed_memory": False}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = speed["cudnn_benchmark"] = True
    elif config.keep_freed_memory:
        speed["keep_freed_memory"] = keep_freed_memory()
    size = config.image_size or DEFAULT_SIZES[config.variant]
    data = runs.load_data(out, config, size)

    torch.manual_seed(config.seed)
    model = build_model(config.variant, len(data.class_names), size).to(device)
    initial_checksum = state_sha256(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.peak_learning_rate,
        momentum=MOMENTUM,
        weight_decay=config.weight_decay,
    )
    done = _restore(out / STATE_FILE, model, optimizer, generator, config.epochs)
    history_path = out / "history.json"
    # An epoch recorded after the last saved state is run again and recorded anew.
    history = [e for e in progress.load_history(history_path) if e.get("epoch", 0) <= done]

    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train)).to(device)
    x_train = x_train.permute(0, 3, 1, 2).contiguous()
    y_train = torch.from_numpy(np.asarray(data.y_train, dtype="int64")).to(device)
    monitor = LoadMonitor()  # the conditions its speed is measured under, as a Keras run's
    for epoch in range(done + 1, config.epochs + 1):
        steps_shown = _progress_line(epoch, config.epochs) if verbose == 1 else None
        started = time.perf_counter()
        logs = run_epoch(
            model,
            optimizer,
            x_train,
            y_train,
            generator,
            batch_size=config.batch_size,
            image_size=size,
            augment_images=config.augment,
            flip=FLIP_AUGMENTATION[config.dataset],
            progress=steps_shown,
        )
        record = {**logs, "epoch": epoch, "phase": "train"}
        record["seconds"] = time.perf_counter() - started
        monitor.sample()
        finite = math.isfinite(logs["loss"])
        if not finite:
            record["diverged"] = True
        history = [e for e in history if e["epoch"] != epoch] + [record]
        progress.write_history(history_path, history)
        if not finite:
            raise _diverged(out, config, epoch, logs["loss"])
        # After the history: a kill before the state is saved reruns the epoch and
        # rewrites its record; it never skips one.
        _save_state(out / STATE_FILE, epoch, model, optimizer, generator)
        if verbose:
            # On a terminal the line replaces the step counter drawn in its place.
            print(("\r" if verbose == 1 else "") + _epoch_line(epoch, config.epochs, record))
            sys.stdout.flush()

    atomic_save(lambda p: torch.save(model.state_dict(), p), out / MODEL_FILE)
    started = time.perf_counter()
    logits = predict_logits(model, data.x_test, image_size=size, batch_size=config.batch_size)
    seconds = time.perf_counter() - started
    metrics = metrics_from_logits(logits, data.y_test, data.class_names, seconds)
    metrics.update(
        backend="torch",
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        versions=_versions(config.variant),
        dataset=config.dataset,
        arch=config.arch,
        variant=config.model_variant,
        image_size=size,
        mode=config.mode,
        weights=config.weights,
        epochs=len(history),
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        learning_rate=config.peak_learning_rate,
        precision=config.precision,
        data_format="channels_first",
        implementation=IMPLEMENTATION,
        **progress.timing(history, len(x_train)),
        init=config.init,
        initial_weights_sha256=initial_checksum,
        devices=1,
        replicas_holding_weights=1,
        **speed,
        processes=1,
        **monitor.summary(),
    )
    from alexnet_k3 import report

    def predict(images):
        return predict_logits(model, images, image_size=size, batch_size=config.batch_size)

    report.write_run(out, metrics, history, predict, data)
    shutil.rmtree(out / STATE_FILE.parent, ignore_errors=True)
    return metrics


def _versions(variant: str) -> dict[str, str]:
    """Versions of Python, torch (torchvision for its variant) and numpy."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    if variant == "torchvision":
        import torchvision

        found["torchvision"] = torchvision.__version__
    found["numpy"] = np.__version__
    return found


def _save_state(path: Path, epoch: int, model, optimizer, generator) -> None:
    """What a resumed run continues from, after `epoch`, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        # Dropout draws from torch's global generators.
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
    atomic_save(lambda p: torch.save(state, p), path)


def _restore(path: Path, model, optimizer, generator, epochs: int) -> int:
    """Loads the saved state into the loop's parts; returns the epochs it had done (0: none).

    The file is untrusted: read with `weights_only=True` (tensors and plain values
    only, nothing imported or called) and checked before any of it is applied.
    """
    if not path.exists():
        return 0
    advice = (
        f"Delete {path} and resume again: the run then restarts from its first epoch, "
        "or start a new run in another folder."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise ValueError(
            f"{path} cannot be read as the saved state of a torch-reference run "
            f"({type(error).__name__}: {error}): it is damaged or truncated. {advice}"
        ) from None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    if not isinstance(state, dict) or set(state) != _STATE_KEYS:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{path} holds {found}, expected the entries {sorted(_STATE_KEYS)} of a "
            f"torch-reference run's saved state. {advice}"
        )
    if type(epoch) is not int or not 1 <= epoch <= epochs:
        raise ValueError(
            f"{path} holds epoch={epoch!r}, expected an integer from 1 to the run's "
            f"epochs={epochs}. {advice}"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
    except Exception as error:  # noqa: BLE001 - shapes, keys, types: the file is wrong
        raise ValueError(
            f"{path} does not fit this run's model and optimizer "
            f"({type(error).__name__}: {str(error).splitlines()[0]}). {advice}"
        ) from None
    return epoch


def _diverged(out: Path, config, epoch: int, loss: float) -> runs.TrainingDiverged:
    """Keeps the last finite epoch as `model.pt` and marks the run diverged (as Keras runs)."""
    path = out / STATE_FILE
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        atomic_save(lambda p: torch.save(state["model"], p), out / MODEL_FILE)
    return runs.mark_diverged(out, epoch, loss, config.peak_learning_rate)


def _progress_line(epoch: int, epochs: int):
    """A progress callback redrawing `Epoch E/N - step/steps` in place (a terminal)."""

    def show(step: int, steps: int) -> None:
        sys.stdout.write(f"\rEpoch {epoch}/{epochs} - {step}/{steps}")
        sys.stdout.flush()

    return show


def _epoch_line(epoch: int, epochs: int, record: dict) -> str:
    """`Epoch 3/8 - 1.2s - loss: 0.4321 - accuracy: 0.8765`, as Keras's `fit` logs an epoch."""
    keys = [k for k in ("loss", "accuracy", "top5_accuracy") if k in record]
    values = " - ".join(f"{key}: {record[key]:.4f}" for key in keys)
    return f"Epoch {epoch}/{epochs} - {record['seconds']:.1f}s - {values}"
