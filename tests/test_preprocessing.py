"""On-device preprocessing: augmentation is exact pad-and-crop and flips; inference untouched."""

import keras
import numpy as np
import pytest

from alexnet_k3 import backend
from alexnet_k3.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomHorizontalFlip,
    RandomPadCrop,
    input_pipeline,
)


def _shift_of(original, shifted, padding):
    """The (dy, dx) for which `shifted` is `original` padded and cropped, else None."""
    padded = np.pad(original, padding)
    size = original.shape[0]
    for dy in range(-padding, padding + 1):
        for dx in range(-padding, padding + 1):
            crop = padded[padding - dy : padding - dy + size, padding - dx : padding - dx + size]
            if np.array_equal(crop, shifted):
                return dy, dx
    return None


def test_random_pad_crop_is_an_exact_whole_pixel_shift_per_image():
    images = np.arange(16 * 8 * 8, dtype="float32").reshape(16, 8, 8, 1) + 1
    layer = RandomPadCrop(3, seed=0)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    shifts = [_shift_of(images[i, :, :, 0], out[i, :, :, 0], 3) for i in range(16)]
    assert None not in shifts
    assert len(set(shifts)) > 1  # each image draws its own offset
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)


def test_pipeline_scales_resizes_and_normalizes():
    images = np.full((2, 32, 32, 3), 255, dtype="uint8")
    out = keras.ops.convert_to_numpy(input_pipeline(64)(images))
    expected_shape = (
        (2, 3, 64, 64) if keras.config.image_data_format() == "channels_first" else (2, 64, 64, 3)
    )
    assert out.shape == expected_shape
    channel_axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    white = np.moveaxis(out, channel_axis, -1)[0, 0, 0]
    np.testing.assert_allclose(
        white, (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5
    )


@pytest.mark.parametrize("size", [64, 45, 20])  # twice, a non-integer factor, smaller
def test_pipeline_resizes_as_torch_does(data_format, size):
    # torchvision's resize of a tensor without antialiasing is this interpolate call.
    torch = pytest.importorskip("torch")
    images = np.random.default_rng(size).integers(0, 256, (2, 32, 32, 3), dtype="uint8")
    out = keras.ops.convert_to_numpy(input_pipeline(size)(images))
    if data_format == "channels_first":
        out = np.moveaxis(out, 1, -1)
    scaled = torch.from_numpy(images.astype("float32") / 255).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(
        scaled, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )
    expected = (resized.permute(0, 2, 3, 1).numpy() - IMAGENET_MEAN) / IMAGENET_STD
    # Float rounding only: 1e-5 of a standard deviation is ~2e-6 of the 0..1 range
    # (measured at most 4e-6 on the three backends); one grey level is 1/255 = 4e-3.
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_bad_padding_is_refused():
    with pytest.raises(ValueError, match="padding=-1"):
        RandomPadCrop(-1)


def _seed_states(layer):
    return [v for v in layer.variables if "seed_generator_state" in v.path]


def test_random_flip_mirrors_about_half_the_images_left_to_right():
    # Each image asymmetric, so it equals its mirror image only if flipped.
    images = np.random.default_rng(0).random((2000, 4, 5, 2)).astype("float32")
    layer = RandomHorizontalFlip(seed=1)
    out = keras.ops.convert_to_numpy(layer(images, training=True))
    flipped = np.all(out == images[:, :, ::-1, :], axis=(1, 2, 3))
    kept = np.all(out == images, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)  # every image whole, either as it was or mirrored
    # Binomial(2000, 0.5): the share flipped has a standard deviation of 0.011.
    assert 0.45 < flipped.mean() < 0.55
    again = keras.ops.convert_to_numpy(layer(images, training=True))
    assert not np.array_equal(again, out)  # a new draw each batch
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(images)), images)


def test_augmentation_layers_survive_saving_with_their_own_seed_generators(tmp_path):
    pipeline = input_pipeline(16, augment=True)
    model = keras.Sequential([keras.Input((16, 16, 3), dtype="uint8"), pipeline])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras").get_layer("preprocessing")
    assert isinstance(loaded.get_layer("pad_crop"), RandomPadCrop)
    assert isinstance(loaded.get_layer("flip"), RandomHorizontalFlip)
    for name in ("pad_crop", "flip"):
        kind = type(backend.seed_generator())
        assert type(loaded.get_layer(name).seed_generator) is kind


def test_augmentation_seeds_are_drawn_without_reading_the_device_back():
    from keras.src.random.seed_generator import draw_seed

    if backend.name() != "torch":
        # jax and tensorflow take the seed as a tensor inside the compiled step.
        for layer in (RandomPadCrop(2), RandomHorizontalFlip()):
            assert type(layer.seed_generator) is keras.random.SeedGenerator
        return
    # "meta" stands in for a GPU as the default device: what lives there cannot
    # be read back at all, as what lives on a GPU cannot without a wait.
    with keras.device("meta"):
        pipeline = input_pipeline(16, augment=True)
    generators = [layer.seed_generator for layer in pipeline.layers if _seed_states(layer)]
    assert len(generators) == 2  # pad-crop and flip
    for generator in generators:
        assert generator.state.value.device.type == "cpu"
        before = keras.ops.convert_to_numpy(generator.state)
        with keras.device("meta"):
            # What Keras's torch backend does with every draw (torch_seed_generator).
            first, second = draw_seed(generator)
            int(first + second)
        assert generator.state.value.device.type == "cpu"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(generator.state), before + [0, 1])


def test_augmentation_continues_where_a_restored_random_state_left_it():
    # What a resumed run relies on: both layers' draws are part of the saved state.
    images = np.random.default_rng(0).random((64, 8, 8, 3)).astype("float32") * 255
    pipeline = input_pipeline(8, augment=True)
    pipeline(images, training=True)
    state = backend.random_state(pipeline)
    first = keras.ops.convert_to_numpy(pipeline(images, training=True))
    pipeline(images, training=True)
    backend.set_random_state(pipeline, state)
    again = keras.ops.convert_to_numpy(pipeline(images, training=True))
    np.testing.assert_array_equal(again, first)
