"""The Keras worker: `alexnet_k3.AlexNet` on the process's Keras backend.

Runs in a process whose `KERAS_BACKEND` the parent set. Synthetic steps time
`model.train_on_batch` / `model.predict_on_batch` on a batch made on the device
with `keras.random` (both return host values, so each step has finished when
they return; `alexnet_k3.backend.synchronize` is called as well). The
end-to-end figure times a real `model.fit` epoch on the digits (or CIFAR-10):
the classifier training builds (`alexnet_k3.model.build_classifier`, uint8
images through the on-device input pipeline, augmentation as training's
default) in front of the same network.

Training steps are compiled by `alexnet_k3.training.compile_model`, as
`alexnet-k3 train` compiles them, with `bench_train_config`: SGD with momentum
0.9 at a learning rate of 0.01, no weight decay, warm-up or label smoothing, the
loss on one-hot labels. The synthetic steps compile the loss alone
(`metrics=False`), like the baseline's loss-only step; the end-to-end epoch
keeps training's metrics.

keras, the backend framework and alexnet_k3 are imported inside `run`, so a
missing one becomes a reported error, not a crash of the parent.
"""

from __future__ import annotations

import time

from alexnet_k3.core import JIT_SETTINGS
from benchmarks import common


def run(impl: str, config: dict) -> list[dict]:
    """Measures `impl` ("keras-<backend>") for every mode and batch size in `config`."""
    import keras

    from alexnet_k3 import backend as kb

    wanted = impl.removeprefix("keras-")
    if kb.name() != wanted:
        return common.error_records(
            impl, config, f"worker runs Keras backend {kb.name()!r}, expected {wanted!r}"
        )
    if config["device"] == "gpu" and kb.accelerator() != "gpu":
        return common.error_records(impl, config, f"no GPU visible to {wanted}")

    speed_settings = kb.tune_for_speed()
    data_format = config.get("data_format", "recommended")
    if data_format == "recommended":
        data_format = kb.recommended_image_data_format()
    keras.config.set_image_data_format(data_format)
    compile_kwargs = dict(kb.recommended_compile_kwargs())
    if config["jit"] != "recommended":
        compile_kwargs["jit_compile"] = JIT_SETTINGS[config["jit"]]
    shared = dict(
        device=kb.device_name(), versions=kb.versions(), data_format=data_format, **speed_settings
    )

    records = []
    modes = list(config["modes"])
    if config.get("end_to_end"):
        modes.append(common.E2E_MODE)
    for mode in modes:
        for batch in config["batch_sizes"]:
            record = common.new_record(impl, mode, batch, config, **shared)
            try:
                if mode == common.E2E_MODE:
                    result = _measure_end_to_end(batch, config, compile_kwargs)
                else:
                    result = _measure(mode, batch, config, compile_kwargs)
                record.update(result)
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on (timm does this)
                record["error"] = "oom" if kb.is_out_of_memory(exc) else common.short_error(exc)
                record["error_detail"] = common.short_error(exc, limit=2000)
            finally:
                kb.free_memory()
            records.append(record)
            common.progress(record)
    return records


def _set_policy(config) -> None:
    import keras

    # Set per model: keras.utils.clear_session() (in `free_memory`) resets the global policy.
    keras.mixed_precision.set_global_policy(config["precision"])


def _build(config):
    """The bare network for the synthetic steps, and its input shape."""
    import keras

    import alexnet_k3

    _set_policy(config)
    size = config["image_size"]
    channels_first = keras.config.image_data_format() == "channels_first"
    input_shape = (3, size, size) if channels_first else (size, size, 3)
    model = alexnet_k3.AlexNet(
        num_classes=config["num_classes"], variant=config["variant"], input_shape=input_shape
    )
    return model, input_shape


def bench_train_config(config: dict, jit_compile):
    """The `TrainConfig` the benchmark trains with: constant SGD, nothing else on top.

    SGD with momentum 0.9 at learning rate 0.01 (the baseline's optimizer), no
    weight decay, warm-up or label smoothing; `jit_compile` as the bench asks.
    """
    from alexnet_k3.config import TrainConfig

    train_config = TrainConfig(
        optimizer="sgd",
        learning_rate=0.01,
        weight_decay=0.0,
        warmup_epochs=0,
        label_smoothing=0.0,
        precision=config.get("precision", "float32"),
        jit_compile=jit_compile,
    )
    train_config.validate()
    return train_config


def compile_for_training(model, config: dict, jit_compile, *, steps: int, metrics: bool = False):
    """Compiles `model` as training does (`alexnet_k3.training.compile_model`).

    `steps`: the training steps training's cosine schedule spans, from 0.01
    down (the rate's value changes no step's work).
    """
    from alexnet_k3.training import compile_model

    compile_model(
        model,
        bench_train_config(config, jit_compile),
        num_classes=config["num_classes"],
        steps_per_epoch=steps,
        epochs=1,
        metrics=metrics,
    )


def synthetic_labels(batch: int, num_classes: int):
    """One-hot labels made on the device, as `compile_model`'s loss takes them."""
    import keras

    labels = keras.random.randint((batch,), 0, num_classes, seed=1)
    return keras.ops.one_hot(labels, num_classes)


def synthetic_images(batch: int, input_shape):
    """A float batch made on the device, laid out as the input pipeline delivers it.

    Under channels_first the pipeline ends in a `Permute` of NHWC images, so the
    network sees a transposed NHWC batch (on torch, a view in channels_last
    memory format, which the convolutions keep); the synthetic batch is made
    the same way.
    """
    import keras

    if keras.config.image_data_format() == "channels_first":
        channels, height, width = input_shape
        nhwc = keras.random.normal((batch, height, width, channels), seed=0)
        return keras.ops.transpose(nhwc, (0, 3, 1, 2))
    return keras.random.normal((batch, *input_shape), seed=0)


def train_step_fn(model, x, y):
    """One synthetic training step (forward, loss, backward, SGD-momentum update)."""
    return lambda: model.train_on_batch(x, y)


def infer_step_fn(model, x):
    """One synthetic inference step."""
    return lambda: model.predict_on_batch(x)


def _measure(mode, batch, config, compile_kwargs) -> dict:
    from alexnet_k3 import backend as kb

    kb.reset_peak_memory()
    model, input_shape = _build(config)
    x = synthetic_images(batch, input_shape)
    if mode == "train":
        steps = config["warmup"] + config["steps"]
        compile_for_training(model, config, compile_kwargs["jit_compile"], steps=steps)
        step = train_step_fn(model, x, synthetic_labels(batch, config["num_classes"]))
    else:
        model.compile(**compile_kwargs)
        step = infer_step_fn(model, x)
    timing = common.time_steps(step, kb.synchronize, warmup=config["warmup"], steps=config["steps"])
    result = common.summarize(timing, batch)
    result["jit"] = bool(model.jit_compile)
    result["peak_memory_bytes"] = kb.peak_memory_bytes()
    return result


def _measure_end_to_end(batch, config, compile_kwargs) -> dict:
    """Images/s of one real `fit` epoch, the input pipeline included, vs synthetic steps.

    The synthetic reference is measured right before and right after the epoch
    (same network, same weights, device-resident float batch, as many images as
    the epoch), so a shared machine's changing load shifts both figures alike.
    """
    import numpy as np

    from alexnet_k3 import backend as kb
    from alexnet_k3.config import TrainConfig
    from alexnet_k3.model import build_classifier
    from alexnet_k3.training import FLIP_AUGMENTATION

    x, labels, dataset = load_dataset(config.get("dataset", "digits"))
    num_classes = config["num_classes"]
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"--num-classes {num_classes} is too few for the {dataset} labels "
            f"(0 to {int(labels.max())}); give at least {int(labels.max()) + 1}."
        )
    y = np.eye(num_classes, dtype="float32")[labels]
    kb.reset_peak_memory()
    _set_policy(config)
    augment = TrainConfig().augment
    model = build_classifier(
        num_classes,
        variant=config["variant"],
        image_size=config["image_size"],
        augment=augment,
        flip=FLIP_AUGMENTATION.get(dataset, False),
        raw_shape=x.shape[1:],
    )
    network = model.get_layer("alexnet")
    num_steps = -(-len(x) // batch)
    # The epoch and its synthetic reference compile alike (training's metrics
    # included), so the ratio isolates the input pipeline and the feed.
    jit = compile_kwargs["jit_compile"]
    compile_for_training(model, config, jit, steps=num_steps, metrics=True)
    compile_for_training(network, config, jit, steps=num_steps, metrics=True)
    synthetic_step = train_step_fn(
        network,
        synthetic_images(batch, network.input_shape[1:]),
        synthetic_labels(batch, num_classes),
    )

    # The synthetic step first: a batch that does not fit fails before any fit compiles.
    synthetic_step()
    # Warm-up on full batches plus one batch of the epoch's remainder size, so
    # that every shape the epoch uses is compiled before the clock starts.
    # The data is fed as training feeds it (`alexnet_k3.backend.array_feed`).
    remainder = len(x) % batch
    warm = config["warmup"] * batch + remainder
    start = time.perf_counter()
    model.fit(**kb.array_feed(x[:warm], y[:warm], batch_size=batch, shuffle=True), verbose=0)
    compile_seconds = time.perf_counter() - start

    # As many synthetic images as the epoch has, half before and half after it,
    # so that the reference spans as much wall time as the epoch.
    steps, warmup = max(config["steps"], -(-num_steps // 2)), config["warmup"]
    before = common.time_steps(synthetic_step, kb.synchronize, warmup=warmup, steps=steps)
    start = time.perf_counter()
    history = model.fit(**kb.array_feed(x, y, batch_size=batch, shuffle=True), verbose=0)
    kb.synchronize(history.history)
    seconds = time.perf_counter() - start
    after = common.time_steps(synthetic_step, kb.synchronize, warmup=1, steps=steps)

    images_per_sec = len(x) / seconds
    synthetic = 2 * steps * batch / (sum(before.step_seconds) + sum(after.step_seconds))
    return {
        "images_per_sec": images_per_sec,
        "epoch_seconds": seconds,
        "epoch_images": int(len(x)),
        "dataset": dataset,
        "augment": augment,
        "synthetic_images_per_sec": synthetic,
        "synthetic_before_images_per_sec": common.summarize(before, batch)["images_per_sec"],
        "synthetic_after_images_per_sec": common.summarize(after, batch)["images_per_sec"],
        "synthetic_steps": 2 * steps,
        "e2e_ratio": images_per_sec / synthetic,
        "step_ms_mean": 1e3 * seconds / num_steps,
        "compile_seconds": compile_seconds,
        "steps": num_steps,
        "jit": bool(model.jit_compile),
        "peak_memory_bytes": kb.peak_memory_bytes(),
    }


def load_dataset(name: str):
    """`(x_train uint8 (N, 32, 32, 3), y_train int64, name)` of "digits" or "cifar10"."""
    from alexnet_k3 import datasets

    data = datasets.load_dataset(name)
    return data.x_train, data.y_train, data.name
