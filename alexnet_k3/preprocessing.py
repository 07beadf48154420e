"""Image preprocessing that runs on the accelerator, with Keras layers and ops.

Two parts:
- `input_pipeline`: uint8 32x32 images in, model-ready floats out (scale, optional
  augmentation, resize, normalize, channel order). Its layers become part of the
  trained model, so every backend runs the same code on the device and a saved
  model takes raw uint8 images.
- `imagenet_preprocess`: torchvision's evaluation transform for the ImageNet
  weights (resize the shorter side to 256, centre crop 224, ImageNet mean/std).
"""

from __future__ import annotations

import keras
from keras import ops

from alexnet_k3 import backend

# torchvision's AlexNet_Weights.IMAGENET1K_V1 transforms: ImageClassification(crop_size=224,
# resize_size=256) with these statistics, on images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_RESIZE_SIZE = 256
IMAGENET_CROP_SIZE = 224


def input_pipeline(
    image_size: int,
    *,
    augment: bool = False,
    flip: bool = True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    padding: int = 4,
    name: str = "preprocessing",
) -> keras.Sequential:
    """Layers turning uint8 `(N, H, W, 3)` images into normalized model inputs.

    Args:
        image_size: side of the square output (images are resized bilinearly
            when it differs from the input's).
        augment: add random translation by up to `padding` pixels with zero fill
            (the same as padding then randomly cropping) and, with `flip`, random
            horizontal flips. They act only in training (`fit`); inference sees
            the image unchanged.
        flip: whether `augment` includes horizontal flips (not for digits, whose
            mirror images are other symbols).
        mean, std: per-channel statistics of images scaled to [0, 1].
        padding: the largest translation in pixels, at the input's resolution.
        name: name of the returned `keras.Sequential`.

    Returns:
        A `keras.Sequential` whose output follows `keras.config.image_data_format()`.
    """
    layers = [keras.layers.Rescaling(1.0 / 255.0, name="scale")]
    if augment:
        layers.append(RandomPadCrop(padding, name="pad_crop"))
        if flip:
            layers.append(RandomHorizontalFlip(name="flip"))
    layers.append(
        keras.layers.Resizing(
            image_size,
            image_size,
            interpolation="bilinear",
            data_format="channels_last",
            name="resize",
        )
    )
    layers.append(
        keras.layers.Normalization(
            axis=-1, mean=list(mean), variance=[s * s for s in std], name="normalize"
        )
    )
    if keras.config.image_data_format() == "channels_first":
        layers.append(keras.layers.Permute((3, 1, 2), name="to_channels_first"))
    return keras.Sequential(layers, name=name)


@keras.saving.register_keras_serializable(package="alexnet_k3")
class RandomPadCrop(keras.layers.Layer):
    """Pads by `padding` zero pixels and crops back at a random offset, per image.

    Training only; at inference it returns its input. Each image is shifted by
    whole pixels, `dy, dx` uniform in `[-padding, padding]`, with zero fill: the
    same as padding then cropping. The shift is two one-hot shift matrices
    contracted with the image (`einsum`), which is exact, runs as a matmul on
    every backend and, unlike `keras.layers.RandomTranslation`'s gather-based
    affine transform, does not hang jax's data-parallel CPU collectives.
    Input: `(N, H, W, C)` (channels last).
    """

    def __init__(self, padding=4, seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(padding) != padding or padding < 0:
            raise ValueError(
                f"`padding` must be a non-negative integer, received padding={padding!r}."
            )
        self.padding = int(padding)
        self.seed = seed
        # On torch a state on the CPU: drawing from it reads nothing back from the GPU.
        self.seed_generator = backend.seed_generator(seed)

    def call(self, inputs, training=None):
        if not training or self.padding == 0:
            return inputs
        batch, height, width = ops.shape(inputs)[0], inputs.shape[1], inputs.shape[2]
        shifts = keras.random.randint(
            (2, batch), -self.padding, self.padding + 1, seed=self.seed_generator
        )
        rows = _shift_matrices(shifts[0], height, inputs.dtype)
        cols = _shift_matrices(shifts[1], width, inputs.dtype)
        return ops.einsum("bij,bjkc,blk->bilc", rows, inputs, cols)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(padding=self.padding, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="alexnet_k3")
class RandomHorizontalFlip(keras.layers.Layer):
    """Mirrors each image left to right with probability 0.5, in training only.

    `keras.layers.RandomFlip("horizontal")`'s law, drawn from
    `backend.seed_generator`: Keras's layer makes its own `SeedGenerator`, whose
    state on torch lives on the GPU and is read back to the host every step.
    At inference it returns its input. Input: `(N, H, W, C)` (channels last).
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = backend.seed_generator(seed)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        draws = keras.random.uniform((ops.shape(inputs)[0],), seed=self.seed_generator)
        flips = ops.reshape(draws < 0.5, (-1, 1, 1, 1))
        return ops.where(flips, ops.flip(inputs, axis=2), inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


def _shift_matrices(shift, size, dtype):
    """(N, size, size) one-hot matrices: row i picks input index i - shift (zero outside)."""
    index = ops.arange(size)
    source = index[None, :, None] - ops.cast(shift, "int32")[:, None, None]
    return ops.cast(ops.equal(source, index[None, None, :]), dtype)


def imagenet_preprocess(
    images,
    *,
    resize_size: int = IMAGENET_RESIZE_SIZE,
    crop_size: int = IMAGENET_CROP_SIZE,
):
    """torchvision's ImageNet evaluation transform for a batch of uint8 images.

    Resizes the shorter side to `resize_size` (bilinear, antialiased), crops the
    centre `crop_size` square, scales to [0, 1] and normalizes with
    `IMAGENET_MEAN`/`IMAGENET_STD`: `AlexNet_Weights.IMAGENET1K_V1.transforms()`.
    uint8 images are rounded back to whole grey levels after resizing, as
    torchvision's resize does for PIL images and uint8 tensors (float inputs are
    not rounded, as in torchvision). The result agrees with torchvision's to
    float32 rounding, up to rare one-grey-level differences where a resized value
    lies within float error of a rounding boundary.

    Args:
        images: uint8 or float (0-255) array of shape `(N, H, W, 3)` (channels last).
        resize_size: target of the shorter side.
        crop_size: side of the centre crop.

    Returns:
        A float32 backend tensor `(N, crop, crop, 3)` or, under `channels_first`,
        `(N, 3, crop, crop)`.
    """
    images = ops.convert_to_tensor(images)
    rounds_to_uint8 = keras.backend.standardize_dtype(images.dtype) == "uint8"
    images = ops.cast(images, "float32")
    if len(images.shape) != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"imagenet_preprocess expects (N, H, W, 3) images, received shape {images.shape}."
        )
    height, width = int(images.shape[1]), int(images.shape[2])
    # torchvision's Resize(int) scales the shorter side and truncates the longer.
    if height <= width:
        new_h, new_w = resize_size, int(resize_size * width / height)
    else:
        new_h, new_w = int(resize_size * height / width), resize_size
    images = ops.image.resize(
        images,
        (new_h, new_w),
        interpolation="bilinear",
        antialias=True,
        data_format="channels_last",
    )
    if rounds_to_uint8:
        # torchvision resizes uint8 images to uint8: without this rounding the
        # result differs by up to half a grey level (0.0087 after normalizing).
        images = ops.clip(ops.round(images), 0.0, 255.0)
    # Centre crop with torchvision's rounding of the offsets.
    top = int(round((new_h - crop_size) / 2.0))
    left = int(round((new_w - crop_size) / 2.0))
    images = images[:, top : top + crop_size, left : left + crop_size, :]
    mean = ops.convert_to_tensor(IMAGENET_MEAN, dtype="float32") * 255.0
    std = ops.convert_to_tensor(IMAGENET_STD, dtype="float32") * 255.0
    images = (images - mean) / std
    if keras.config.image_data_format() == "channels_first":
        images = ops.transpose(images, (0, 3, 1, 2))
    return images
