"""The plain PyTorch reference run (alexnet_k3.reference, `--implementation torch-reference`)
and the recipe comparison's digits proxy (benchmarks/proxy_data.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np
import pytest
from cifar_files import write_cifar10

from alexnet_k3 import runs
from alexnet_k3.cli import main
from alexnet_k3.config import TrainConfig, implementation_of
from alexnet_k3.datasets import load_cifar10
from alexnet_k3.report import compare_runs
from benchmarks import proxy_data

torch = pytest.importorskip("torch")
torch_loop = pytest.importorskip("alexnet_k3.torch_loop")
reference = pytest.importorskip("alexnet_k3.reference")

SMALL = {"dataset": "cifar10", "epochs": 2, "batch_size": 50, "seed": 0}


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    """A CIFAR-10-layout folder of 200 training and 50 test images."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"), n_train=200, n_test=50)


@pytest.fixture(scope="module")
def reference_run(small_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    metrics = reference.train(out, data_dir=str(small_cifar), verbose=0, **SMALL)
    return out, metrics


@pytest.fixture(scope="module")
def keras_run(small_cifar, tmp_path_factory):
    from alexnet_k3.training import train

    out = tmp_path_factory.mktemp("keras") / "run"
    settings = {**SMALL, "epochs": 1}
    return out, train(out, data_dir=str(small_cifar), verbose=0, **settings)


# ------------------------------------------------------------------ the model and its inputs


def test_cifar_reference_matches_the_keras_variant():
    from alexnet_k3 import AlexNet

    model = torch_loop.build_model("cifar", 10)
    keras_count = AlexNet(variant="cifar", num_classes=10).count_params()
    assert torch_loop.keras_parameter_count(model) == keras_count == 3_723_946
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 4, 4)


@pytest.mark.parametrize("side", [8, 7])
def test_reference_pooling_takes_the_windows_of_keras_same_padding(side):
    import keras

    x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(
        keras.layers.MaxPooling2D(3, 2, padding="same", data_format="channels_last")(x)
    )
    pool = torch_loop.SamePadMaxPool2d(3, 2)
    got = pool(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


def test_defaults_restated_for_torch_are_the_keras_models():
    from alexnet_k3 import preprocessing
    from alexnet_k3.model import default_input_size

    for variant, size in torch_loop.DEFAULT_SIZES.items():
        assert default_input_size("alexnet", variant) == size, variant
    assert torch_loop.IMAGENET_MEAN == preprocessing.IMAGENET_MEAN
    assert torch_loop.IMAGENET_STD == preprocessing.IMAGENET_STD


@pytest.mark.parametrize("size", [32, 64])
def test_reference_inputs_are_what_the_keras_pipeline_feeds_its_network(size):
    import keras

    from alexnet_k3.preprocessing import input_pipeline

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype="uint8")
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")
    try:
        expected = keras.ops.convert_to_numpy(input_pipeline(size)(images, training=False))
    finally:
        keras.config.set_image_data_format(previous)
    got = torch_loop.to_inputs(torch.from_numpy(images).permute(0, 3, 1, 2), size)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("flip", [True, False])
def test_augmentation_keeps_shape_and_shifts_and_flips_only_if_asked(flip):
    images = torch.arange(64 * 3 * 32 * 32, dtype=torch.int32).reshape(64, 3, 32, 32) % 251
    images = images.to(torch.uint8)
    out = torch_loop.augment(images, torch.Generator().manual_seed(0), flip=flip)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    # A shifted, unflipped image holds a window of the original's rows in order.
    ramp = torch.arange(32, dtype=torch.uint8).expand(64, 3, 32, 32).contiguous() + 1
    shifted = torch_loop.augment(ramp, torch.Generator().manual_seed(0), flip=flip)
    rows = shifted[:, 0, 16]  # the middle row: never all zero fill
    increasing = [bool((r[r > 0].int().diff() > 0).all()) for r in rows]
    assert all(increasing) if not flip else 10 < sum(increasing) < 54


# ------------------------------------------------------------------ the run folder


@pytest.mark.once
def test_reference_run_folder_matches_a_keras_runs(reference_run, keras_run, small_cifar):
    out, metrics = reference_run
    keras_out, keras_metrics = keras_run
    files = {p.name for p in out.iterdir()}
    keras_files = {p.name for p in keras_out.iterdir()}
    # The one difference: torch's state_dict instead of a Keras model.
    assert files - keras_files == {"model.pt"} and keras_files - files == {"model.keras"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == set(json.loads((keras_out / "metrics.json").read_text()))
    assert keras_metrics["implementation"] == "keras"
    history = json.loads((out / "history.json").read_text())
    keras_history = json.loads((keras_out / "history.json").read_text())
    assert [set(e) for e in history] == [set(keras_history[0])] * 2
    assert [e["epoch"] for e in history] == [1, 2] and history[0]["phase"] == "train"
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 2
    assert "| implementation | torch-reference |" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["implementation"] == "torch-reference"
    assert not (out / "state").exists()  # removed once the run is complete

    expected = {
        "implementation": "torch-reference",
        "backend": "torch",
        "data_format": "channels_first",
        "init": "torch",
        "mode": "scratch",
        "weights": None,
        "processes": 1,
        "epochs": 2,
        "train_images": 200,
        "test_images": 50,
        "image_size": 32,
        "learning_rate": 0.02,
    }
    assert {key: saved[key] for key in expected} == expected
    assert np.asarray(saved["confusion_matrix"]).sum() == 50
    torch.manual_seed(0)  # the run's seed: its initial weights again
    model = torch_loop.build_model("cifar", 10)
    assert saved["initial_weights_sha256"] == torch_loop.state_sha256(model)
    # model.pt is the model that was tested.
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    data = load_cifar10(small_cifar)
    logits = torch_loop.predict_logits(model, data.x_test, image_size=32)
    assert (logits.argmax(1) == data.y_test).mean() == saved["test_accuracy"]


@pytest.mark.once
def test_compare_accepts_the_reference_folder(reference_run, keras_run):
    table = compare_runs([reference_run[0], keras_run[0]])
    # After the rows, a footnote when a run was measured under contention.
    reference_row, keras_row = table.splitlines()[2:4]
    assert "| torch | torch-reference | - | alexnet | cifar | scratch | 2 |" in reference_row
    assert "| keras |" in keras_row


@pytest.mark.once
def test_a_resumed_finished_run_is_kept_and_contradicting_settings_are_refused(reference_run):
    out, metrics = reference_run
    before = (out / "metrics.json").stat().st_mtime_ns
    assert reference.train(out, resume=True, verbose=0) == json.loads(json.dumps(metrics))
    import alexnet_k3 as ak  # its train() resumes the run with the run's own trainer

    assert ak.train(out, resume=True)["implementation"] == "torch-reference"
    with pytest.raises(ValueError, match=r"Cannot resume .*epochs=5 was asked for"):
        reference.train(out, resume=True, epochs=5)
    with pytest.raises(ValueError, match="implementation='keras' was asked for"):
        from alexnet_k3.training import train

        train(out, resume=True, implementation="keras")
    assert (out / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.once
def test_a_diverging_reference_run_is_marked_and_exits_1(small_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--implementation", "torch-reference", "--dataset", "cifar10"]
    argv += ["--data-dir", str(small_cifar), "--lr", "1e12", "--epochs", "2"]
    assert main([*argv, "--out", str(out), "--verbose", "0"]) == 1
    assert "Training diverged in epoch" in capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["status"] == "diverged"
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["diverged"] is True and history[-1]["epoch"] == saved["diverged_epoch"]
    with pytest.raises(runs.TrainingDiverged, match="Cannot resume"):
        reference.train(out, resume=True)


# ------------------------------------------------------------------ refusals and dispatch


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"arch": "vgg16"}, "arch"),
        ({"variant": "paper"}, "variant"),
        ({"weights": "imagenet"}, "weights"),
        ({"optimizer": "adamw"}, "optimizer"),
        ({"schedule": "cosine"}, "schedule"),
        ({"warmup_epochs": 1}, "warmup_epochs"),
        ({"label_smoothing": 0.1}, "label_smoothing"),
        ({"validation_split": 0.1}, "validation_split"),
        ({"precision": "mixed_bfloat16"}, "precision"),
        ({"data_parallel": True}, "data_parallel"),
        ({"init": "keras"}, "init"),
    ],
)
def test_settings_the_reference_does_not_honour_are_refused(settings, name):
    TrainConfig(**settings).validate()  # a Keras run takes them
    config = TrainConfig(implementation="torch-reference", **settings)
    with pytest.raises(ValueError) as error:
        config.validate()
    message = str(error.value)
    assert message.startswith(f"`{name}` must be ") and "\n" not in message
    assert "with implementation='torch-reference'" in message
    assert f"received {name}={settings[name]!r}" in message


def test_the_command_line_refuses_them_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--implementation", "torch-reference", "--out", str(out)]
    with pytest.raises(SystemExit) as exit:
        main([*argv, "--weights", "imagenet"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alexnet-k3 train: error: `weights` must be None")
    assert "received weights='imagenet'" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.once
def test_a_keras_backend_is_refused_with_the_reference(tmp_path):
    # In a fresh process: this one already runs Keras, and --backend would stop there.
    argv = ["train", "--implementation", "torch-reference", "--backend", "jax"]
    code = f"import sys\nfrom alexnet_k3.cli import main\nsys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "alexnet-k3 train: error: --backend jax was given with --implementation torch-reference"
    )


def test_runs_from_before_the_implementation_setting_are_keras_runs(tmp_path):
    saved = asdict(TrainConfig())
    del saved["implementation"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert implementation_of({}, tmp_path, True) == "keras"
    assert runs.saved_config(tmp_path, {}).implementation == "keras"
    saved["implementation"] = "torch-reference"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert implementation_of({}, tmp_path, True) == "torch-reference"
    assert implementation_of({}, tmp_path, False) == "keras"  # a new run: the default
    assert implementation_of({"implementation": "keras"}, tmp_path, True) == "keras"


@pytest.mark.once
def test_without_torch_the_reference_says_so_in_one_line(tmp_path):
    argv = ["train", "--implementation", "torch-reference", "--out", str(tmp_path / "r")]
    code = (
        "import sys\n"
        "class NoTorch:  # as if torch were not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"from alexnet_k3.cli import main\nsys.exit(main({argv!r}))"
    )
    # No Keras backend is chosen: the reference needs none (KERAS_BACKEND=torch would
    # be refused before, the torch backend not being installed).
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "--implementation torch-reference trains in plain PyTorch, but torch cannot be" in err
    assert "pip install alexnet-k3[torch]" in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ end to end, own processes


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "alexnet_k3", "train", *map(str, args)]


@pytest.mark.slow
@pytest.mark.once
def test_the_command_line_trains_the_digits_without_importing_keras(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--implementation", "torch-reference", "--dataset", "digits"]
    argv += ["--epochs", "2", "--out", str(out)]
    code = (
        "import sys\nfrom alexnet_k3.cli import main\n"
        f"status = main({argv!r})\nprint('keras imported:', 'keras' in sys.modules)\n"
        "sys.exit(status)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    # Not a terminal: one line per epoch, as Keras's fit(verbose=2) prints.
    assert lines[0].startswith("Epoch 1/2 - ") and " - loss: " in lines[0], lines
    assert lines[1].startswith("Epoch 2/2 - ") and " - accuracy: " in lines[1], lines
    assert lines[-1] == "keras imported: False"
    assert "torch-reference: test accuracy" in lines[-2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.5, metrics["test_accuracy"]
    assert metrics["test_images"] == 360 and metrics["train_images"] == 1437
    assert "## Per class (all test images)" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.once
def test_a_reference_run_killed_mid_epoch_resumes_to_the_same_epochs(
    small_cifar, reference_run, tmp_path
):
    out = tmp_path / "run"
    command = _cli("--implementation", "torch-reference", "--dataset", "cifar10")
    command += ["--data-dir", str(small_cifar), "--epochs", "3", "--batch-size", "50"]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--verbose", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    state = out / reference.STATE_FILE
    deadline = time.time() + 300
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert state.exists(), process.communicate()[0].decode()[-3000:]
    process.send_signal(signal.SIGKILL)  # in epoch 2: no chance to clean up
    process.wait()
    assert not (out / "metrics.json").exists()
    completed = torch.load(state, weights_only=True)["epoch"]
    assert 1 <= completed < 3

    # No --implementation: a resumed run is the saved config's.
    resumed = subprocess.run(
        _cli("--out", out, "--resume", "--verbose", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Epoch {completed + 1}/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
    assert not (out / "state").exists()
    # The same settings (a constant rate) uninterrupted: the resumed epochs shuffled,
    # augmented and dropped out as they would have, from the same weights and momentum.
    uninterrupted = json.loads((reference_run[0] / "history.json").read_text())
    for ours, theirs in zip(history, uninterrupted):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5), ours["epoch"]


# ------------------------------------------------------------------ the digits proxy


@pytest.fixture(scope="module")
def proxy_folder(tmp_path_factory):
    return proxy_data.write_proxy(tmp_path_factory.mktemp("proxy"), seed=0)


@pytest.fixture(scope="module")
def proxy(proxy_folder):
    return load_cifar10(proxy_folder)


def test_proxy_loads_as_cifar10_with_the_digit_classes(proxy):
    assert proxy.x_train.shape == (1500, 32, 32, 3)
    assert proxy.x_test.shape == (297, 32, 32, 3)
    assert proxy.x_train.dtype == np.uint8
    assert proxy.class_names == tuple("0123456789")
    # Stratified: every class has its share of the test set.
    assert np.bincount(proxy.y_test, minlength=10).min() >= 29
    assert len(np.unique(proxy.x_train.reshape(1500, -1), axis=0)) == 1500


def test_proxy_is_deterministic_for_a_seed(proxy_folder, tmp_path):
    again = proxy_data.write_proxy(tmp_path, seed=0)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        assert (again / name).read_bytes() == (proxy_folder / name).read_bytes()
    glyphs = np.random.default_rng(0).uniform(0, 16, size=(4, 8, 8))
    assert not np.array_equal(proxy_data.render(glyphs, 0)[0], proxy_data.render(glyphs, 1)[0])


def test_about_half_the_glyphs_are_drawn_mirrored():
    # A "Γ" glyph (top row + left column): mirrored, its full column is on the right.
    glyph = np.zeros((8, 8))
    glyph[0, :] = glyph[:, 0] = 16
    images, mirrored = proxy_data.render(np.repeat(glyph[None], 40, axis=0), seed=0)
    seen = []
    for image in images:
        bright = image.mean(axis=-1) > 120
        cols = np.flatnonzero(bright.any(axis=0))
        seen.append(bright[:, cols[-1]].sum() > bright[:, cols[0]].sum())
    assert seen == mirrored.tolist()
    assert 10 <= mirrored.sum() <= 30
