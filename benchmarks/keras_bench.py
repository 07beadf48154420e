"""The Keras worker: `alexnet_k3.AlexNet` on the process's Keras backend.

Runs in a process whose `KERAS_BACKEND` the parent set. The synthetic steps run
on a batch made on the device with `keras.random`, in both timing modes
(`benchmarks/common.py`):

- training, `pipelined`: `model.fit` over that batch repeated
  (`alexnet_k3.backend.repeated_batch_feed`, `steps_per_epoch=n`), then one
  synchronization on the updated weights, the way a training epoch runs;
  `per-step`: `model.train_on_batch` (it returns host values) plus a
  synchronization, every step.
- inference: the model's compiled `predict_function`, outputs kept on the
  device (`alexnet_k3.backend.device_predict`): n calls then one
  synchronization (`pipelined`), or a synchronization after each (`per-step`).

The end-to-end figure times real `model.fit` epochs of uint8 images through the
classifier training builds (`alexnet_k3.model.build_classifier`: the on-device
input pipeline with augmentation on, in front of the same network): a synthetic
set shaped like CIFAR-10 (`--dataset synthetic`, what `auto` picks when CIFAR-10
is not on the machine), CIFAR-10 or the digits. The first epoch (start-up:
compilation, the feed's first fill) is reported apart from the steady ones,
which are compared with the pipelined synthetic training steps of the same
network timed right before and after.

Training steps are compiled by `alexnet_k3.training.compile_model`, as
`alexnet-k3 train` compiles them, with `bench_train_config`: SGD with momentum
0.9 at a learning rate of 0.01, no weight decay, warm-up or label smoothing, the
loss on one-hot labels. The synthetic steps compile the loss alone
(`metrics=False`), like the baseline's loss-only step; the end-to-end epochs
and their synthetic twin keep training's metrics.

keras, the backend framework and alexnet_k3 are imported inside `run`, so a
missing one becomes a reported error, not a crash of the parent.
"""

from __future__ import annotations

import sys
import time

from alexnet_k3.contention import LoadMonitor
from alexnet_k3.core import JIT_SETTINGS, freed_memory_kept
from benchmarks import common


def run(impl: str, config: dict) -> list[dict]:
    """Measures `impl` ("keras-<backend>") for every mode, timing and batch size in `config`."""
    import keras

    from alexnet_k3 import backend as kb

    wanted = impl.removeprefix("keras-")
    if kb.name() != wanted:
        return common.error_records(
            impl, config, f"worker runs Keras backend {kb.name()!r}, expected {wanted!r}"
        )
    if config["device"] == "gpu" and kb.accelerator() != "gpu":
        return common.error_records(impl, config, f"no GPU visible to {wanted}")

    # The package's measured rule for this backend and device (mixed precision on a
    # CPU without AMX); the parent relays `[bench]` lines.
    slower = kb.precision_warning(config["precision"])
    if slower:
        print(f"[bench] {impl}: warning: {slower}", file=sys.stderr, flush=True)
    shared = process_settings(config)
    data_format = config.get("data_format", "recommended")
    if data_format == "recommended":
        data_format = kb.recommended_image_data_format()
    keras.config.set_image_data_format(data_format)
    compile_kwargs = dict(kb.recommended_compile_kwargs())
    if config["jit"] != "recommended":
        compile_kwargs["jit_compile"] = JIT_SETTINGS[config["jit"]]
    shared.update(device=kb.device_name(), versions=versions(), data_format=data_format)

    records = []
    timings = config.get("timings", common.TIMINGS)
    for mode in config["modes"]:
        for batch in config["batch_sizes"]:
            records += _measure_all(impl, mode, batch, timings, config, compile_kwargs, shared)
    if config.get("end_to_end"):
        for batch in config["batch_sizes"]:
            records += _measure_all(
                impl, common.E2E_MODE, batch, ["pipelined"], config, compile_kwargs, shared
            )
    return records


def process_settings(config: dict) -> dict:
    """Applies the run's process-wide settings and returns them as the records state them.

    `tune` (the default; `--no-tune` turns it off): the package's own
    `tune_for_speed()` (glibc keeping freed memory on a CPU, cuDNN autotuning
    on torch with CUDA), the call `alexnet-k3 train` makes. The baseline worker
    applies the same settings (`torchvision_baseline.process_settings`).
    `matmul_precision`: TF32 or full float32 (`set_matmul_precision`).
    """
    from alexnet_k3 import backend as kb

    applied = {"cudnn_benchmark": False, "keep_freed_memory": False}
    if config.get("tune", True):
        applied = kb.tune_for_speed()
    applied.update(kb.set_matmul_precision(config.get("matmul_precision", "default")))
    applied["freed_memory_kept"] = freed_memory_kept()
    return applied


def versions() -> dict:
    """Python, Keras, the backend and numpy, plus the CUDA/cuDNN the backend reports."""
    from alexnet_k3 import backend as kb

    return {**kb.versions(), **kb.gpu_versions()}


def _measure_all(impl, mode, batch, timings, config, compile_kwargs, shared) -> list[dict]:
    """Records of one (mode, batch): the model is built once and timed in each timing mode."""
    from alexnet_k3 import backend as kb

    records = [common.new_record(impl, mode, timing, batch, config, **shared) for timing in timings]
    try:
        kb.reset_peak_memory()
        if mode == common.E2E_MODE:
            records[0].update(_measure_end_to_end(batch, config, compile_kwargs))
        else:
            measure = _prepare(mode, batch, config, compile_kwargs)
            for record in records:
                try:
                    record.update(measure(record["timing"]))
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    common.record_error(record, exc)
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on (timm does this)
        for record in records:
            if record.get("images_per_sec") is None:
                common.record_error(record, exc)
    finally:
        kb.free_memory()
    for record in records:
        common.progress(record)
    return records


def _set_policy(config) -> None:
    import keras

    # Set per model: keras.utils.clear_session() (in `free_memory`) resets the global policy.
    keras.mixed_precision.set_global_policy(config["precision"])


def build_bench_network(config):
    """The bare network for the synthetic steps, and its input shape (also `data_parallel`'s)."""
    import keras

    from alexnet_k3.model import build_network

    _set_policy(config)
    size = config["image_size"]
    channels_first = keras.config.image_data_format() == "channels_first"
    input_shape = (3, size, size) if channels_first else (size, size, 3)
    model = build_network(
        config.get("arch", "alexnet"),
        config["num_classes"],
        variant=config["variant"],
        input_shape=input_shape,
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
        schedule="constant",
        label_smoothing=0.0,
        precision=config.get("precision", "float32"),
        jit_compile=jit_compile,
    )
    train_config.validate()
    return train_config


def compile_for_training(model, config: dict, jit_compile, *, steps: int, metrics: bool = False):
    """Compiles `model` as training does (`alexnet_k3.training.compile_model`).

    `steps`: the steps of the (constant) schedule, as training passes them.
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


def train_steps_fn(model, x, y):
    """`run(n)`: n synthetic training steps in one `fit`; returns a weight to sync on."""
    from alexnet_k3 import backend as kb

    feed = kb.repeated_batch_feed(x, y)
    last = model.trainable_weights[-1]

    def run(steps: int):
        model.fit(**feed, steps_per_epoch=steps, epochs=1, verbose=0)
        return last.value

    return run


def infer_steps_fn(model, x):
    """`run(n)`: n inference steps, outputs on the device; returns the last outputs."""
    from alexnet_k3 import backend as kb

    return kb.device_predict(model, x)


def _prepare(mode, batch, config, compile_kwargs):
    """Builds and compiles one model; returns `measure(timing) -> result` for it."""
    from alexnet_k3 import backend as kb

    model, input_shape = build_bench_network(config)
    x = synthetic_images(batch, input_shape)
    if mode == "train":
        steps = config["warmup"] + config["steps"]
        compile_for_training(model, config, compile_kwargs["jit_compile"], steps=steps)
        y = synthetic_labels(batch, config["num_classes"])
        step, run_steps = train_step_fn(model, x, y), train_steps_fn(model, x, y)
    else:
        model.compile(**compile_kwargs)
        run_steps = infer_steps_fn(model, x)
        step = lambda: run_steps(1)  # noqa: E731 - the same call, one step at a time
    counts = dict(warmup=config["warmup"], steps=config["steps"])
    counts["min_seconds"] = config.get("min_seconds", 0.0)

    def measure(timing: str) -> dict:
        if timing == "pipelined":
            measured = common.time_pipelined(run_steps, kb.synchronize, **counts)
        else:
            measured = common.time_steps(step, kb.synchronize, **counts)
        result = common.summarize(measured, batch)
        result["jit"] = bool(model.jit_compile)
        result["head_dtype"] = head_dtype(model)
        result["peak_memory_bytes"] = kb.peak_memory_bytes()
        return result

    return measure


def head_dtype(model) -> str:
    """The dtype the network's last layer computes in (the package keeps logits float32)."""
    return str(model.layers[-1].compute_dtype)


def epoch_clock():
    """A Keras callback noting when training starts and each epoch ends.

    Epoch-level hooks only, so Keras keeps dispatching steps asynchronously.
    Keras turns an epoch's logs into host numbers before `on_epoch_end`: the
    device has finished the epoch's steps when the clock is read.
    """
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.ends = time.perf_counter(), []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    return EpochClock()


def _measure_end_to_end(batch, config, compile_kwargs) -> dict:
    """Images/s of real `fit` epochs, the input pipeline included, vs synthetic steps.

    The first epoch (compilation, first fill of the feed) is reported apart;
    the steady epochs after it give the throughput. The synthetic reference is
    the same network's pipelined training on a device-resident batch, measured
    right before and right after the epochs (as many steps as one epoch, half
    each side), so a shared machine's changing load shifts both figures alike.
    """
    import numpy as np

    from alexnet_k3 import backend as kb
    from alexnet_k3.model import build_classifier

    x, labels, dataset = e2e_dataset(config)
    num_classes = config["num_classes"]
    if int(labels.max()) >= num_classes:
        raise ValueError(
            f"--num-classes {num_classes} is too few for the {dataset} labels "
            f"(0 to {int(labels.max())}); give at least {int(labels.max()) + 1}."
        )
    y = np.eye(num_classes, dtype="float32")[labels]
    _set_policy(config)
    arch = config.get("arch", "alexnet")
    model = build_classifier(
        num_classes,
        arch=arch,
        variant=config["variant"],
        image_size=config["image_size"],
        augment=True,
        flip=dataset != "digits",
        raw_shape=x.shape[1:],
    )
    network = model.get_layer(arch)
    num_steps = -(-len(x) // batch)
    epochs = max(2, int(config.get("e2e_epochs") or 2))
    # The epochs and their synthetic twin compile alike (training's metrics
    # included), so the ratio isolates the input pipeline and the feed.
    jit = compile_kwargs["jit_compile"]
    compile_for_training(model, config, jit, steps=num_steps, metrics=True)
    compile_for_training(network, config, jit, steps=num_steps, metrics=True)
    twin = train_steps_fn(
        network,
        synthetic_images(batch, network.input_shape[1:]),
        synthetic_labels(batch, num_classes),
    )
    half = max(1, -(-num_steps // 2))
    # The twin first: a batch that does not fit fails before any epoch compiles.
    before = common.time_pipelined(twin, kb.synchronize, warmup=config["warmup"], steps=half)

    clock = epoch_clock()
    feed = kb.array_feed(x, y, batch_size=batch, shuffle=True)
    monitor = LoadMonitor()
    history = model.fit(**feed, epochs=epochs, callbacks=[clock], verbose=0)
    kb.synchronize(history.history)
    monitor.sample()
    after = common.time_pipelined(twin, kb.synchronize, warmup=1, steps=half)

    first = clock.ends[0] - clock.start
    steady = (clock.ends[-1] - clock.ends[0]) / (epochs - 1)
    images_per_sec = len(x) / steady
    synthetic = (
        batch * (before.steps + after.steps) / (before.step_seconds[0] + after.step_seconds[0])
    )
    return {
        "images_per_sec": images_per_sec,
        "epoch_seconds": steady,
        "first_epoch_seconds": first,
        "epochs": epochs,
        "epoch_images": int(len(x)),
        "dataset": dataset,
        "augment": True,
        "synthetic_images_per_sec": synthetic,
        "synthetic_before_images_per_sec": common.summarize(before, batch)["images_per_sec"],
        "synthetic_after_images_per_sec": common.summarize(after, batch)["images_per_sec"],
        "synthetic_steps": before.steps + after.steps,
        "e2e_ratio": images_per_sec / synthetic,
        "step_ms_mean": 1e3 * steady / num_steps,
        "compile_seconds": max(0.0, first - steady),
        "steps": num_steps * (epochs - 1),
        "measured_seconds": steady * (epochs - 1),
        "jit": bool(model.jit_compile),
        "head_dtype": head_dtype(network),
        "peak_memory_bytes": kb.peak_memory_bytes(),
        **monitor.summary(),
    }


def e2e_dataset(config: dict):
    """`(x uint8 (N, H, W, 3), labels int64, name)` of the end-to-end epochs.

    "synthetic": `e2e_images` uniform random uint8 images shaped like CIFAR-10
    (32 x 32 x 3) with random labels of 10 classes, from a fixed seed (0): the
    input pipeline's work per image is CIFAR-10's, and no download is needed.
    "cifar10" and "digits": the training split, its first `e2e_images` images
    when that is set.
    """
    import numpy as np

    name, count = config.get("dataset", "synthetic"), config.get("e2e_images")
    if name == "synthetic":
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        return x, rng.integers(0, 10, count).astype(np.int64), "synthetic"
    x, labels, name = load_dataset(name)
    return (x[:count], labels[:count], name) if count else (x, labels, name)


def load_dataset(name: str):
    """`(x_train uint8 (N, 32, 32, 3), y_train int64, name)` of "digits" or "cifar10"."""
    from alexnet_k3 import datasets

    data = datasets.load_dataset(name)
    return data.x_train, data.y_train, data.name
