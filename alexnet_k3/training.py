"""Training: build the classifier, compile, `fit` with resumable callbacks, evaluate, report.

One function, `train`, runs the whole study for one backend: the same code on
torch, tensorflow and jax. Everything it writes goes to `out`:
`config.json`, `history.json`/`history.csv`, `model.keras` (the last epoch, or
with a validation hold-out the best by validation accuracy), `metrics.json`,
`report.md` and the PNG plots.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import keras

from alexnet_k3 import backend, progress, runs
from alexnet_k3.callbacks import LoadSampler, fit_callbacks, stop_diverged
from alexnet_k3.config import TrainConfig, implementation_of
from alexnet_k3.contention import LoadMonitor
from alexnet_k3.core import FLIP_AUGMENTATION
from alexnet_k3.model import build_classifier, default_input_size, weights_checksum
from alexnet_k3.optimizers import TorchSGD


def train(out="runs/latest", *, resume=False, verbose="auto", mlflow=None, **settings) -> dict:
    """Trains AlexNet (or VGG16), keeps the last (or best) epoch, tests it and writes a report.

    Args:
        out: folder for everything the run writes (created if needed).
        resume: continue the run in `out` with its saved `config.json`; epochs
            already completed are not run again (a run killed at any moment,
            even mid-epoch, completes the same total number of epochs).
        verbose: Keras's `fit` verbosity: 0, 1 (a progress bar), 2 (one line per
            epoch) or "auto": 1 on a terminal, 2 into a file or a CI log.
        **settings: any field of `TrainConfig`: `dataset` ("digits" or "cifar10"),
            `data_dir`, `arch` ("alexnet" or "vgg16"), `variant` (AlexNet's),
            `image_size` (the model's input side; images are resized on the device),
            `weights` ("imagenet" or a checkpoint path: transfer learning),
            `freeze_epochs` (epochs training only the classifier before
            fine-tuning everything), `epochs`, `batch_size`,
            `optimizer` ("sgd" with momentum 0.9, "adam", "adamw"),
            `learning_rate` (the peak, reached after `warmup_epochs` of linear
            warm-up), `schedule` (then cosine decay to 0, or constant),
            `weight_decay` (not on biases and normalization; with "sgd" coupled
            into the gradient as `torch.optim.SGD` does, see `optimizers.TorchSGD`;
            with "adam"/"adamw" Keras's decoupled form),
            `label_smoothing`, `precision`, `validation_split`,
            `augment` (random pad-crop and horizontal flip), `seed`, `jit_compile`,
            `data_format` (the Keras image data format of the network during the
            run: "recommended", the default, is
            `backend.recommended_image_data_format()`, channels_first on torch),
            `data_parallel` (split each batch across `devices` local devices, all
            by default, on jax and tensorflow; or join the multi-process job
            that torchrun, KERAS_DISTRIBUTION_* or TF_CONFIG describe:
            `batch_size` stays the global batch, process 0 alone writes `out`,
            every process prints its final weights' checksum, and processes
            other than 0 return only that; see `backend.data_parallel`),
            `keep_freed_memory` (on a CPU: `backend.keep_freed_memory()`, a
            process-wide glibc setting, on by default; recorded in `metrics.json`),
            `implementation` ("keras", or "torch-reference": the plain PyTorch
            loop trains the run instead, see `alexnet_k3.reference.train`; a
            resumed run keeps its own).

    Returns:
        The metrics dict also written to `out/metrics.json`; in a job's process
        other than 0, `{"rank": R}` (and `final_weights_sha256` after training).

    Example:
        >>> metrics = train("runs/digits", dataset="digits", variant="cifar", epochs=8)
        >>> metrics["test_accuracy"] > 0.9
        True
    """
    out = Path(out)
    if implementation_of(settings, out, resume) == "torch-reference":
        from alexnet_k3 import reference

        metrics = reference.train(out, resume=resume, verbose=verbose, **settings)
    else:
        metrics = _train_keras(out, resume, verbose, settings)
    if "rank" not in metrics:  # process 0: logged from the finished folder, after the fact
        from alexnet_k3 import tracking

        tracking.log_if_enabled(out, mlflow)
    return metrics


def _train_keras(out: Path, resume: bool, verbose, settings: dict) -> dict:
    job = backend.job_in_environment()
    # One writer per folder; a failed start leaves no folder, no lock, no temp files.
    # A job's processes other than 0 only read it (process 0 holds the lock).
    with runs.lock(out) if job is None or job[0] == 0 else contextlib.nullcontext():
        # In a job, process 0 alone prints progress.
        verbose = 0 if job is not None and job[0] > 0 else progress.verbosity(verbose)
        return _train(out, resume, verbose, settings)


def _train(out: Path, resume: bool, verbose, settings: dict) -> dict:
    config, parallel = _prepare_run(out, resume, settings)
    slower = backend.precision_warning(config.precision)  # measured on this device
    if slower:
        runs.warn(slower)
    else:  # the rule for float16 on CPUs where nothing was measured
        runs.check_speed(config, backend.accelerator())
    done = runs.finished(out) if resume else None
    if done is not None:
        print(f"{out} already holds a finished run; nothing to resume.")
        return done if parallel.writes else {"rank": parallel.rank}

    previous_policy = keras.mixed_precision.dtype_policy()
    previous_format = keras.config.image_data_format()
    keras.mixed_precision.set_dtype_policy(config.precision)
    keras.config.set_image_data_format(_data_format(config))
    try:
        return _run(out, config, verbose, parallel)
    except BaseException:
        # Failed before finishing one epoch (weights missing, no data, ...): nothing to
        # resume, so free the folder for a corrected start with the same `out`.
        if parallel.writes and not resume and not (out / "history.json").exists():
            runs.abandon(out)
        raise
    finally:
        keras.mixed_precision.set_dtype_policy(previous_policy)
        keras.config.set_image_data_format(previous_format)


def _data_format(config: TrainConfig) -> str:
    if config.data_format == "recommended":
        return backend.recommended_image_data_format()
    return config.data_format


def _prepare_run(out: Path, resume: bool, settings: dict):
    """The run's config and the engine it trains with (`_data_parallel`)."""
    if resume:
        config = runs.saved_config(out, settings)
        return config, _data_parallel(config)  # a job joins before jax computes anything
    config = TrainConfig.from_settings(settings)
    # Refuse an impossible setup before writing anything. The engine first: a
    # tensorflow job's strategy must exist before TensorFlow's runtime starts.
    parallel = _data_parallel(config)
    backend.check_image_data_format(_data_format(config))
    if config.weights is not None:  # a bad checkpoint is refused before any data is read
        from alexnet_k3.weights.loader import check_checkpoint

        check_checkpoint(config.weights, config.arch)
    if parallel.writes:
        runs.start(out, config)
    return config, parallel


def _data_parallel(config: TrainConfig):
    """The engine this run asks for, checked: `backend.data_parallel`'s, or `OneDevice`."""
    if not config.data_parallel:
        backend.refuse_job_without_data_parallel()
        return backend.OneDevice()
    parallel = backend.data_parallel(config.devices)
    if config.batch_size % parallel.num_replicas:
        raise ValueError(
            f"batch_size={config.batch_size} does not split evenly over "
            f"{parallel.num_replicas} devices: use a multiple of {parallel.num_replicas}."
        )
    return parallel


def _run(out: Path, config: TrainConfig, verbose, parallel) -> dict:
    backend.keep_tensorflow_unimported()  # before seeding: Keras's seeding would import it
    keras.utils.set_random_seed(config.seed)
    speed_settings = backend.tune_for_speed(keep_freed=config.keep_freed_memory)
    # and its class names saved beside the model
    size = default_input_size(config.arch, config.variant)
    data = runs.load_data(out, config, size, save=parallel.writes)
    replicas = parallel.num_replicas
    # A job pads each epoch to split evenly (`backend.shard_feed`); one process trims.
    trim = 1 if parallel.processes > 1 else replicas
    (x_train, y_train), validation = runs.split(data.x_train, data.y_train, config, trim)
    n_val = 0 if validation is None else len(validation[0])
    runs.check_split(len(x_train), n_val, len(data.x_train), y_train.shape[1], config)

    history_path = out / "history.json"
    best_path = out / "model.keras"
    with parallel.scope():
        model = build_classifier(
            len(data.class_names),
            arch=config.arch,
            variant=config.variant,
            image_size=config.image_size,
            weights=config.weights,
            augment=config.augment,
            flip=FLIP_AUGMENTATION[config.dataset],
            raw_shape=data.x_train.shape[1:],
            init=config.init,
            seed=config.seed,
        )
        initial_checksum = weights_checksum(model)
        # The conditions the speed figures are measured under: cores, load, contention.
        monitor = LoadMonitor()
        try:
            _fit_phases(
                model, config, out, (x_train, y_train), validation, verbose, parallel, monitor
            )
        except Exception as error:
            lost = parallel.lost(error)
            if lost is None:
                raise
            raise lost from None  # one line: which process, and to --resume
        conditions = monitor.summary()
        holding = backend.replicas_holding(model)
        if validation is None and parallel.writes:
            backend.save_alone(model, lambda p: model.save(p), best_path)
        if parallel.processes > 1:
            final = weights_checksum(model)  # equal on every process, or DDP failed
            print(f"process {parallel.rank} of {parallel.processes}: final weights {final}")
            parallel.finish()
            if not parallel.writes:  # process 0 tests the model and reports
                return {"rank": parallel.rank, "final_weights_sha256": final}

    # The best epoch, reloaded outside any distribution: evaluation runs on one device.
    from alexnet_k3.evaluation import evaluate_arrays, load_model

    best = load_model(best_path)
    metrics = evaluate_arrays(best, data.x_test, data.y_test, data.class_names, config.batch_size)
    history = progress.load_history(history_path)
    metrics.update(_run_summary(config, data, len(x_train), history))
    metrics.update(init=config.init, initial_weights_sha256=initial_checksum)
    metrics.update(devices=replicas, replicas_holding_weights=holding, **speed_settings)
    metrics.update(processes=parallel.processes, **conditions)
    from alexnet_k3 import report

    report.write_run(out, metrics, history, best.predict_on_batch, data)
    shutil.rmtree(out / "state", ignore_errors=True)
    return metrics


def _fit_phases(
    model, config, out: Path, train_data, validation, verbose, parallel, monitor
) -> None:
    """Runs `fit` once, or twice with transfer learning's frozen-features phase first.

    Each phase finished leaves its weights in `state/`, so a resumed run skips it.
    `parallel` (`_data_parallel`'s) feeds the data and says whether to write;
    `monitor` (a `contention.LoadMonitor`) samples the machine's load each epoch.
    """
    train_feed = parallel.train_feed(*train_data, config.batch_size, config.seed)
    phases = [("train", config.epochs)]
    if config.freeze_epochs:
        phases = [("head", config.freeze_epochs), ("finetune", config.epochs)]
    history_path = out / "history.json"
    best_so_far = None
    if (out / "model.keras").exists():  # resuming: beat the best model already saved
        best_so_far = max(
            (e["val_accuracy"] for e in progress.load_history(history_path) if "val_accuracy" in e),
            default=None,
        )
    state_dir = out / "state"
    start_epoch = 0
    for phase, end_epoch in phases:
        done_marker = state_dir / f"{phase}.weights.h5"
        if done_marker.exists():
            model.load_weights(done_marker)
            start_epoch = end_epoch
            continue
        _set_features_trainable(model.get_layer(config.arch), phase != "head")
        compile_model(
            model,
            config,
            num_classes=train_data[1].shape[1],
            steps_per_epoch=parallel.steps_per_epoch(len(train_data[0]), config.batch_size),
            epochs=end_epoch - start_epoch,
        )
        parallel.prepare(model)
        callbacks = fit_callbacks(
            out, phase, validation=validation is not None, best=best_so_far, write=parallel.writes
        )
        guard, backup = callbacks[0], callbacks[-1]
        model.fit(
            **train_feed,
            epochs=end_epoch,
            initial_epoch=backup.restore(model, default=start_epoch),
            validation_data=validation and parallel.validation_feed(*validation, config.batch_size),
            callbacks=parallel.callbacks(train_feed) + [LoadSampler(monitor)] + callbacks,
            verbose=verbose,
        )
        if guard.epoch is not None:
            keep_last = validation is None and parallel.writes
            stop_diverged(model, config, out, guard, backup, keep_last, parallel.writes)
        if validation is not None:
            best_so_far = callbacks[2].best
        if parallel.writes:
            state_dir.mkdir(exist_ok=True)
            backend.save_alone(model, lambda p: model.save_weights(p), done_marker)
            # Only now: a kill before the marker is written resumes from the backup.
            shutil.rmtree(backup.backup_dir, ignore_errors=True)
        start_epoch = end_epoch


def _set_features_trainable(net: keras.Model, trainable: bool) -> None:
    for layer in net.layers:
        if layer.name.startswith("conv") and layer.weights:
            layer.trainable = trainable


def compile_model(
    model,
    config: TrainConfig,
    *,
    num_classes: int,
    steps_per_epoch: int,
    epochs: int,
    metrics: bool = True,
) -> None:
    """Compiles `model` as training does: optimizer, schedule, weight decay, loss, metrics.

    The loss takes one-hot labels and the model's logits. Benchmarks call this
    too, so that what they time is what `train` runs.

    Args:
        model: the classifier (logits out).
        config: the run's settings; `optimizer`, `learning_rate`,
            `warmup_epochs`, `schedule`, `weight_decay`, `label_smoothing` and `jit_compile`
            are used.
        num_classes: the number of classes (top-5 accuracy is added above 5).
        steps_per_epoch: training steps in one epoch, for the schedule.
        epochs: epochs this compile trains for (the schedule spans them).
        metrics: False compiles the loss alone (no accuracy bookkeeping per step).

    Example:
        >>> compile_model(model, TrainConfig(), num_classes=10, steps_per_epoch=12, epochs=8)
    """
    peak = config.peak_learning_rate
    warmup_steps = min(config.warmup_epochs, epochs) * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(epochs * steps_per_epoch - warmup_steps, 1),
        warmup_target=peak if warmup_steps else None,
        warmup_steps=warmup_steps,
        # alpha is the floor as a share of the peak: 1.0 holds the peak after the warm-up.
        alpha=1.0 if config.schedule == "constant" else 0.0,
    )
    if config.optimizer == "sgd":
        # torch's SGD form, as the plain PyTorch loop trains: Keras's decoupled decay
        # is ten times weaker at momentum 0.9 (issue 11, benchmarks/results/).
        optimizer = TorchSGD(schedule, momentum=0.9, coupled_weight_decay=config.weight_decay)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(schedule, weight_decay=config.weight_decay or None)
    else:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    # Decay the weights of convolutions and dense layers only, as torchvision's recipes do.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    tracked = []
    if metrics:
        tracked.append(keras.metrics.CategoricalAccuracy(name="accuracy"))
        if num_classes > 5:
            tracked.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=tracked,
        jit_compile=config.jit_compile,
    )


def _run_summary(config: TrainConfig, data, n_train: int, history: list[dict]) -> dict:
    return {
        "backend": backend.name(),
        "device": backend.device_name(),
        "versions": backend.versions(),
        "dataset": config.dataset,
        "arch": config.arch,
        "variant": config.model_variant,
        "image_size": config.image_size or default_input_size(config.arch, config.variant),
        "mode": config.mode,
        "weights": config.weights,
        "epochs": len(history),
        "batch_size": config.batch_size,
        "optimizer": config.optimizer,
        "learning_rate": config.peak_learning_rate,
        "precision": config.precision,
        "data_format": _data_format(config),
        "implementation": config.implementation,
        **progress.timing(history, n_train),
    }
