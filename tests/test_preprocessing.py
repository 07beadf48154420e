"""On-device preprocessing: the augmentation is exactly pad-and-crop, and inference is untouched."""

import keras
import numpy as np
import pytest

from alexnet_k3.preprocessing import IMAGENET_MEAN, IMAGENET_STD, RandomPadCrop, input_pipeline


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
