"""Training end to end on this process's backend: learning, outputs, resume, bad settings."""

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from cifar_files import write_cifar10

from alexnet_k3 import backend
from alexnet_k3.core import atomic_save
from alexnet_k3.training import train

BACKEND = keras.config.backend()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One real training run on the digits, shared by the tests that read its outputs.

    Cosine decay, not the default constant rate: a constant-rate run's last epoch
    moves by up to 10 points with float rounding alone (seed 0 on torch: 97.2% or
    86.7% with the per-variable or the multi-tensor SGD update, whose steps agree
    within 1.5e-8), while the decayed runs of seeds 0-3 all reached 98-100%.
    """
    out = tmp_path_factory.mktemp("digits") / "run"
    metrics = train(
        out,
        dataset="digits",
        variant="cifar",
        epochs=6,
        batch_size=64,
        schedule="cosine",
        seed=0,
        verbose=0,
    )
    return out, metrics


@pytest.mark.slow
def test_training_on_the_digits_learns(digits_run):
    _, metrics = digits_run
    assert metrics["test_accuracy"] >= 0.90, metrics["test_accuracy"]
    assert metrics["backend"] == BACKEND
    assert metrics["mode"] == "scratch" and metrics["epochs"] == 6


@pytest.mark.slow
def test_run_folder_holds_every_output(digits_run):
    out, metrics = digits_run
    for name in (
        "model.keras",
        "history.json",
        "history.csv",
        "metrics.json",
        "report.md",
        "curves.png",
        "confusion_matrix.png",
        "per_class_accuracy.png",
        "samples.png",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "backend",
        "dataset",
        "variant",
        "mode",
        "epochs",
        "test_accuracy",
        "test_loss",
        "per_class_accuracy",
        "confusion_matrix",
        "train_seconds",
        "images_per_second",
    ):
        assert key in saved, key
    assert len((out / "history.csv").read_text().strip().splitlines()) == 1 + 6
    report = (out / "report.md").read_text()
    assert "## Per class (all test images)" in report
    assert all(f"\n| {name} | " in report for name in metrics["class_names"])
    assert not (out / "state").exists()  # backups are removed once the run is complete
    # The process-wide malloc setting is a default of train(), applied on a CPU with
    # glibc, on every backend (so a comparison's processes all run under it).
    glibc_cpu = platform.libc_ver()[0] == "glibc" and backend.accelerator() == "cpu"
    assert saved["keep_freed_memory"] is (sys.platform == "linux" and glibc_cpu)


@pytest.mark.slow
def test_per_class_accuracy_agrees_with_the_confusion_matrix(digits_run):
    _, metrics = digits_run
    confusion = np.asarray(metrics["confusion_matrix"])
    assert confusion.sum() == metrics["test_images"] == 360  # every test image, not a sample
    for i, name in enumerate(metrics["class_names"]):
        assert metrics["per_class_accuracy"][name] == pytest.approx(
            confusion[i, i] / confusion[i].sum()
        )
    assert np.trace(confusion) / confusion.sum() == pytest.approx(metrics["test_accuracy"])


@pytest.mark.slow
def test_saved_model_evaluates_identically_in_a_new_process(digits_run, tmp_path, run_cli):
    out, metrics = digits_run
    other = {"torch": "jax", "jax": "tensorflow", "tensorflow": "torch"}[BACKEND]
    result = run_cli(
        "evaluate", out / "model.keras", "--dataset", "digits", "--out", tmp_path, backend=other
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert evaluated["backend"] == other
    assert evaluated["trained_on_backend"] == BACKEND
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1 / 360)
    # Float rounding differs between backends; at most a near-tie may flip.
    flips = np.abs(np.subtract(evaluated["confusion_matrix"], metrics["confusion_matrix"])).sum()
    assert flips <= 2


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_number_of_epochs(tmp_path):
    data = write_cifar10(tmp_path / "data", n_train=400, n_test=50)
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "alexnet_k3",
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--verbose",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "KERAS_BACKEND": BACKEND}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pointer = out / "state" / "backup-train" / "latest.json"
    deadline = time.time() + 300
    while not pointer.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert pointer.exists(), process.communicate()[0].decode()[-3000:]
    process.send_signal(signal.SIGKILL)  # no chance to clean up, as with a power cut
    process.wait()
    assert not (out / "metrics.json").exists()
    completed = json.loads(pointer.read_text())["epoch"]
    assert 1 <= completed < 3

    resumed = subprocess.run(
        [*command[:4], "--out", str(out), "--resume", "--verbose", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # Keras announces the first epoch it runs: the resumed run starts after the backup.
    assert f"Epoch {completed + 1}/3" in resumed.stdout
    assert "Epoch 1/3" not in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.weights.h5"
    target.write_bytes(b"complete old checkpoint")

    def crash_mid_write(path):
        Path(path).write_bytes(b"half a checkp")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(crash_mid_write, target)
    assert target.read_bytes() == b"complete old checkpoint"


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(epochs=0), "epochs=0"),
        (dict(dataset="mnist"), "dataset='mnist'"),
        (dict(variant="vgg"), "variant='vgg'"),
        (dict(optimizer="rmsprop"), "optimizer='rmsprop'"),
        (dict(precision="float8"), "precision='float8'"),
        (dict(validation_split=1.0), "validation_split=1.0"),
        (dict(label_smoothing=-0.1), "label_smoothing=-0.1"),
        (dict(freeze_epochs=2), "freeze_epochs=2"),
        (dict(batch_size=0), "batch_size=0"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(tmp_path / "run", **settings)
    assert not (tmp_path / "run").exists()


def test_resume_needs_a_run_and_a_new_run_needs_a_free_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        train(tmp_path / "nothing", resume=True)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text(json.dumps({"dataset": "digits"}))
    with pytest.raises(FileExistsError, match="resume"):
        train(tmp_path / "taken", dataset="digits")
    with pytest.raises(ValueError, match="dataset='cifar10' was asked for, the run has dataset="):
        train(tmp_path / "taken", resume=True, dataset="cifar10")


@pytest.mark.skipif(
    backend.runs_image_data_format("channels_first"),
    reason="this backend runs channels_first convolutions here",
)
def test_channels_first_where_it_cannot_run_is_refused_before_the_run(tmp_path):
    with pytest.raises(ValueError, match="no channels_first convolutions on this CPU"):
        train(tmp_path / "run", data_format="channels_first")
    assert not (tmp_path / "run").exists()
    # A model saved channels_first (torch's default layout) is refused when loaded, not
    # at its first prediction deep inside TensorFlow.
    from alexnet_k3.evaluation import load_model
    from alexnet_k3.model import build_classifier

    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        build_classifier(10).save(tmp_path / "torch-layout.keras")
    finally:
        keras.config.set_image_data_format(previous)
    with pytest.raises(ValueError, match="--backend torch or --backend jax"):
        load_model(tmp_path / "torch-layout.keras")


@pytest.mark.slow
def test_metrics_agree_with_scikit_learn_on_the_models_predictions(digits_run):
    from sklearn import metrics as sk

    from alexnet_k3 import datasets
    from alexnet_k3.evaluation import load_model

    out, metrics = digits_run
    data = datasets.load_dataset("digits")
    model = load_model(out / "model.keras")
    feed = backend.array_feed(data.x_test, batch_size=64)
    predicted = np.asarray(model.predict(**feed, verbose=0)).argmax(axis=1)
    labels = np.arange(len(data.class_names))
    np.testing.assert_array_equal(
        metrics["confusion_matrix"], sk.confusion_matrix(data.y_test, predicted, labels=labels)
    )
    recall = sk.recall_score(data.y_test, predicted, labels=labels, average=None)
    assert [metrics["per_class_accuracy"][n] for n in data.class_names] == pytest.approx(recall)
    assert metrics["test_accuracy"] == pytest.approx(sk.accuracy_score(data.y_test, predicted))


@pytest.fixture
def few_digits(monkeypatch):
    """The digits cut to 32 training and 16 test images: two steps of 16 an epoch."""
    from alexnet_k3 import datasets
    from alexnet_k3.datasets.base import Dataset

    full = datasets.load_dataset("digits")
    small = Dataset(
        "digits",
        full.x_train[:32],
        full.y_train[:32],
        full.x_test[:16],
        full.y_test[:16],
        full.class_names,
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, data_dir=None: small)


def _other_data_format():
    """The image data format that is not this backend's default, where it runs here."""
    recommended = backend.recommended_image_data_format()
    other = {"channels_first": "channels_last", "channels_last": "channels_first"}[recommended]
    return other if backend.runs_image_data_format(other) else recommended


# Every training option the README lists, in two tiny runs per backend. The jit is off
# in one and on in the other, but for what takes minutes on a CPU: jax without XLA
# (op by op: 60 s for two steps) and torch with it (torch.compile); "auto" there.
OPTION_RUNS = {
    "adam": dict(
        optimizer="adam",
        warmup_epochs=0,
        precision="mixed_bfloat16",
        jit_compile="auto" if BACKEND == "jax" else False,
        augment=False,
        label_smoothing=0.1,
        validation_split=0.0,  # no validation step to compile
    ),
    "adamw": dict(
        optimizer="adamw",
        warmup_epochs=1,
        precision="mixed_float16",
        jit_compile="auto" if BACKEND == "torch" else True,
        weight_decay=1e-3,
        augment=True,
        data_format="recommended",
        validation_split=0.0,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTION_RUNS)
def test_training_options_take_effect(tmp_path, monkeypatch, few_digits, name):
    from alexnet_k3 import training
    from alexnet_k3.config import TrainConfig
    from alexnet_k3.core import default_learning_rate
    from alexnet_k3.evaluation import load_model

    settings = dict(OPTION_RUNS[name])
    if name == "adam":
        settings["data_format"] = _other_data_format()
        if "schedule" in TrainConfig.__dataclass_fields__:
            settings["schedule"] = "cosine"
    # The model as `fit` trained it: compiled by training's own compile_model.
    compiled = []

    def compile_model(model, *args, **kwargs):
        real_compile_model(model, *args, **kwargs)
        compiled.append(model)

    real_compile_model = training.compile_model
    monkeypatch.setattr(training, "compile_model", compile_model)
    out = tmp_path / name
    metrics = train(out, dataset="digits", epochs=1, batch_size=16, verbose=0, **settings)

    saved = json.loads((out / "config.json").read_text())
    assert {k: saved[k] for k in settings} == settings
    data_format = settings["data_format"]
    if data_format == "recommended":
        data_format = backend.recommended_image_data_format()
    assert metrics["optimizer"] == settings["optimizer"]
    assert metrics["precision"] == settings["precision"]
    assert metrics["data_format"] == data_format

    (model,) = compiled
    if settings["jit_compile"] != "auto":
        assert model.jit_compile is settings["jit_compile"]
    optimizer = model.optimizer
    if settings["precision"] == "mixed_float16":  # Keras scales the loss for float16
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer), optimizer
        optimizer = optimizer.inner_optimizer
    expected_class = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[name]
    assert type(optimizer).__name__ == expected_class.__name__
    assert optimizer.weight_decay == pytest.approx(saved["weight_decay"])
    assert model.loss.get_config()["label_smoothing"] == saved["label_smoothing"]
    # The schedule it ran: one epoch of `steps` steps, by the optimizer's own count.
    steps = -(-metrics["train_images"] // 16)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == steps
    schedule = optimizer._learning_rate  # the schedule object itself, not its current value
    rate = [float(keras.ops.convert_to_numpy(schedule(s))) for s in (0, 1, steps)]
    peak = default_learning_rate(settings["optimizer"], saved["variant"])
    if settings["warmup_epochs"]:  # linear warm-up from 0 over the epoch
        assert rate == pytest.approx([0.0, peak / steps, peak], rel=1e-5)
    else:  # cosine decay from the peak to 0 over the epoch
        second = peak * (1 + np.cos(np.pi / steps)) / 2
        assert rate == pytest.approx([peak, second, 0.0], rel=1e-5, abs=1e-9)

    # What the saved model was built with: layout, dtype policy, augmentation layers.
    saved_model = load_model(out / "model.keras")
    conv1 = saved_model.get_layer("alexnet").get_layer("conv1")
    assert conv1.data_format == data_format
    assert conv1.dtype_policy.name == settings["precision"]
    assert conv1.compute_dtype == settings["precision"].removeprefix("mixed_")
    preprocessing = [layer.name for layer in saved_model.get_layer("preprocessing").layers]
    assert ("pad_crop" in preprocessing) is settings["augment"]


BATCH_HOOKS = ("on_batch_end", "on_train_batch_begin", "on_train_batch_end", "on_test_batch_end")


@pytest.mark.parametrize("phase", ["train", "head", "finetune"])
@pytest.mark.parametrize("validation", [False, True])
def test_fit_callbacks_leave_every_step_asynchronous(tmp_path, phase, validation):
    # A batch hook makes Keras wait for each step's logs on the host: none here.
    from keras.src.backend import IS_THREAD_SAFE
    from keras.src.utils.python_utils import is_default

    from alexnet_k3.training import fit_callbacks

    callbacks = fit_callbacks(tmp_path, phase, validation=validation, best=0.5)
    assert len(callbacks) == 3 + validation  # guard, history, [best model], backup
    for callback in callbacks:
        for hook in BATCH_HOOKS:
            assert is_default(getattr(callback, hook)), f"{type(callback).__name__}.{hook}"
    # tensorflow's backend is not thread safe: Keras never dispatches logs asynchronously there.
    assert keras.callbacks.CallbackList(callbacks)._async_train is IS_THREAD_SAFE
    assert keras.callbacks.CallbackList(callbacks)._async_test is IS_THREAD_SAFE


def test_a_logged_run_prints_a_line_an_epoch_and_leaves_tensorflow_unimported(tmp_path):
    """Into a pipe (a CI log), no progress-bar redraws; on torch and jax no TensorFlow."""
    script = f"""
import sys
from alexnet_k3.cli import main
code = main(["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "256",
             "--out", {str(tmp_path / "run")!r}])
print("tensorflow imported:", "tensorflow" in sys.modules)
raise SystemExit(code)
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Epoch 1/2" in result.stdout and "Epoch 2/2" in result.stdout
    # A progress bar rewrites its line with backspaces and carriage returns.
    assert "\r" not in result.stdout and "\b" not in result.stdout, result.stdout[-500:]
    if BACKEND != "tensorflow":
        assert "tensorflow imported: False" in result.stdout
        assert "oneDNN" not in result.stderr, result.stderr[-2000:]
