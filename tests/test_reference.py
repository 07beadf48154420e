"""The recipe comparison's tools: the digits proxy (benchmarks/proxy_data.py) and the
plain PyTorch reference loop (benchmarks/torch_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from alexnet_k3.datasets import Dataset, load_cifar10
from benchmarks import proxy_data

torch = pytest.importorskip("torch")
torch_reference = pytest.importorskip("benchmarks.torch_reference")


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


def test_cifar_reference_matches_the_keras_variant():
    from alexnet_k3 import AlexNet

    model = torch_reference.build_model("cifar", 10)
    keras_count = AlexNet(variant="cifar", num_classes=10).count_params()
    assert torch_reference.keras_parameter_count(model) == keras_count == 3_723_946
    assert model.features(torch.zeros(1, 3, 32, 32)).shape == (1, 128, 4, 4)


def test_reference_pooling_takes_the_windows_of_keras_same_padding():
    import keras

    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(
        keras.layers.MaxPooling2D(3, 2, padding="same", data_format="channels_last")(x)
    )
    pool = torch_reference.CifarAlexNet().features[3:5]  # the pad and pool after conv1
    got = pool(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("extra", [{}, {"augment": True, "decoupled": True}])
def test_one_reference_epoch_returns_a_record(proxy, extra):
    tiny = Dataset(
        "tiny",
        proxy.x_train[:48],
        proxy.y_train[:48],
        proxy.x_test[:16],
        proxy.y_test[:16],
        proxy.class_names,
    )
    record = torch_reference.train_reference(
        tiny, epochs=1, batch_size=16, device="cpu", seed=0, **extra
    )
    assert record["impl"] == "torch-reference"
    assert record["train_images"] == 48 and record["parameters"] == 3_723_946
    (epoch,) = record["history"]
    assert sorted(epoch) == ["epoch", "seconds", "test_accuracy", "train_loss"]
    assert np.isfinite(epoch["train_loss"]) and 0 <= record["test_accuracy"] <= 1
    for field in ("variant", "dataset", "seed", "lr", "wall_seconds", "torch", "cpu"):
        assert field in record


def test_augmentation_keeps_shape_and_shifts_or_flips():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32) % 251
    images = images.to(torch.uint8)
    out = torch_reference._augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
