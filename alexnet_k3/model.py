"""The AlexNet builder: one functional Keras model for every variant and backend.

Nothing here imports a backend or asks which one is active: the same code runs on
torch, tensorflow and jax. Variants differ only in the small `VariantConfig`
records below. `build_classifier` puts any architecture of `ARCHITECTURES`
(AlexNet, `vgg.VGG16`) behind the on-device input pipeline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import keras
import numpy as np

from alexnet_k3 import builders, layers, vgg
from alexnet_k3.core import ARCHS, ARCHS_WITH_VARIANTS
from alexnet_k3.layers import AdaptiveAveragePooling2D, LocalResponseNormalization
from alexnet_k3.preprocessing import input_pipeline


@dataclass(frozen=True)
class ConvSpec:
    """One convolution: `padding` is torch's symmetric zero padding in pixels."""

    filters: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool_after: bool = False


@dataclass(frozen=True)
class VariantConfig:
    """Everything that distinguishes one AlexNet variant from another."""

    convs: tuple[ConvSpec, ...]
    dense_units: tuple[int, ...]
    default_size: int
    pool_size: int = 3
    pool_stride: int = 2
    pool_padding: str = "valid"
    # Adaptive average pooling to this grid before the classifier (torchvision's
    # `avgpool`); None flattens whatever the last pooling leaves.
    pooled_size: tuple[int, int] | None = (6, 6)
    # "lrn", "batchnorm" or None, applied after the activation of `norm_after` convs.
    normalization: str | None = None
    norm_after: tuple[int, ...] = ()
    description: str = ""


VARIANTS: dict[str, VariantConfig] = {
    # torchvision.models.alexnet, layer for layer (the one-GPU version of the paper
    # from "One weird trick...", Krizhevsky 2014): its pretrained weights load as is.
    "torchvision": VariantConfig(
        convs=(
            ConvSpec(64, 11, stride=4, padding=2, pool_after=True),
            ConvSpec(192, 5, padding=2, pool_after=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1),
            ConvSpec(256, 3, padding=1, pool_after=True),
        ),
        dense_units=(4096, 4096),
        default_size=224,
        description="torchvision's AlexNet (64-192-384-256-256), 224x224, ImageNet weights",
    ),
    # Krizhevsky et al. 2012 without the two-GPU split: 96-256-384-384-256 filters,
    # LRN after conv1 and conv2, 227x227 input. The adaptive pooling is the identity
    # at 227x227 and lets other sizes work too.
    "paper": VariantConfig(
        convs=(
            ConvSpec(96, 11, stride=4, padding=0, pool_after=True),
            ConvSpec(256, 5, padding=2, pool_after=True),
            ConvSpec(384, 3, padding=1),
            ConvSpec(384, 3, padding=1),
            ConvSpec(256, 3, padding=1, pool_after=True),
        ),
        dense_units=(4096, 4096),
        default_size=227,
        normalization="lrn",
        norm_after=(1, 2),
        description="Krizhevsky et al. 2012 (96-256-384-384-256, LRN), 227x227",
    ),
    # A native 32x32 AlexNet for CIFAR-10: the same five convolutions and three
    # dense layers, at half torchvision's widths, with 3x3 kernels and stride 1
    # (an 11x11/4 stem would throw away most of a 32x32 image), overlapping 3/2
    # max pooling padded to halve the grid (32 -> 16 -> 8 -> 4), batch
    # normalization after every convolution (trains in a few epochs without LRN's
    # tuning) and 1024-unit dense layers. About 0.1 GFLOP per image: seconds per
    # epoch of the digits on a 2-core CPU.
    "cifar": VariantConfig(
        convs=(
            ConvSpec(32, 3, padding=1, pool_after=True),
            ConvSpec(96, 3, padding=1, pool_after=True),
            ConvSpec(192, 3, padding=1),
            ConvSpec(128, 3, padding=1),
            ConvSpec(128, 3, padding=1, pool_after=True),
        ),
        dense_units=(1024, 1024),
        default_size=32,
        pool_padding="same",
        pooled_size=None,
        normalization="batchnorm",
        norm_after=(1, 2, 3, 4, 5),
        description="native 32x32 AlexNet for CIFAR-10 (32-96-192-128-128, batch norm)",
    ),
}

NORMALIZATIONS = ("lrn", "batchnorm", "none")
# Initializations of the conv and dense layers: "torch" or "keras" (`AlexNet(init=...)`).
INITS = layers.INITS

# The paper's LRN constants, in torch's convention (alpha divided by size).
LRN_ARGS = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)


def min_input_size(variant: str = "torchvision") -> int:
    """Smallest square input side that leaves at least one pixel after the last pooling."""
    config = _get_variant(variant)
    size = 1
    while _final_grid(config, size) < 1:
        size += 1
    return size


def AlexNet(
    num_classes: int = 1000,
    *,
    variant: str = "torchvision",
    input_shape: tuple[int | None, int | None, int] | None = None,
    dropout: float = 0.5,
    weights: str | None = None,
    include_top: bool = True,
    normalization: str | None = None,
    freeze_features: bool = False,
    init: str = "torch",
    seed: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds AlexNet as a functional `keras.Model` returning logits.

    Args:
        num_classes: size of the last dense layer (`predictions`).
        variant: `"torchvision"` (torchvision's layers, the default), `"paper"`
            (Krizhevsky et al. 2012 with LRN) or `"cifar"` (native 32x32).
            `alexnet_k3.model.VARIANTS` describes each.
        input_shape: `(H, W, 3)` under `channels_last`, `(3, H, W)` under
            `channels_first` (`keras.config.image_data_format()`). H and W may be
            None for a size-agnostic model. Defaults to the variant's native size.
        dropout: dropout rate before `fc6` and `fc7`, in [0, 1).
        weights: None (random initialization), `"imagenet"` (torchvision's
            `AlexNet_Weights.IMAGENET1K_V1`), the path of a torchvision `.pth`
            state_dict, or a `.weights.h5` file written by `alexnet-k3 convert`.
            Only the `"torchvision"` variant has pretrained weights. With
            `num_classes != 1000` every layer but `predictions` is loaded and
            `predictions` keeps its fresh initialization (transfer learning).
        include_top: False stops after the (adaptive) pooling of the last
            convolution, returning feature maps.
        normalization: `"lrn"`, `"batchnorm"` or `"none"`; None keeps the variant's
            own choice (LRN for `"paper"`, batch norm for `"cifar"`, nothing for
            `"torchvision"`).
        freeze_features: True makes the five convolutions non-trainable (feature
            extraction: only the classifier learns).
        init: `"torch"` (the default: torch's `nn.Conv2d`/`nn.Linear` defaults,
            kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which learns
            faster from scratch, see the README's training section) or `"keras"`
            (Glorot-uniform kernels, zero biases). Batch norm starts at gamma 1,
            beta 0 under both, as in torch. With `weights`, only a new
            `predictions` head keeps this initialization; every other layer
            starts at zeros (no wasted draw) and is then loaded.
        seed: a non-negative integer: the same weights on every backend and data
            format (drawn with numpy, see `alexnet_k3.layers.SeededUniform`).
            None: Keras's own random draws under `"keras"`; a fresh seed, stored
            in the model's config, under `"torch"`.
        name: model name; defaults to `alexnet_<variant>`.

    Returns:
        A `keras.Model` mapping normalized float images to `num_classes` logits.

    Example:
        >>> import alexnet_k3 as ak
        >>> model = ak.AlexNet(num_classes=10)
        >>> model.count_params()
        57044810
    """
    config = _get_variant(variant)
    _check_arguments(num_classes, dropout, normalization, weights, include_top, variant)
    seed = layers.initializer_seed(init, seed)
    norm = config.normalization if normalization is None else normalization
    norm = None if norm == "none" else norm
    input_shape = builders.standardize_input_shape(
        input_shape,
        default_size=config.default_size,
        minimum=min_input_size(variant),
        who=f"variant={variant!r}",
        flattens=config.pooled_size is None,
    )

    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    # Layers that `weights` will overwrite skip the random draw (57M numbers).
    body = ("loaded", None) if weights is not None else (init, seed)
    for index, spec in enumerate(config.convs, start=1):
        block_norm = norm if index in config.norm_after else None
        x = _conv_block(x, spec, index, block_norm, config, body)
    if config.pooled_size is not None:
        x = AdaptiveAveragePooling2D(config.pooled_size, name="avgpool")(x)
    if include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        for index, units in enumerate(config.dense_units, start=6):
            x = keras.layers.Dropout(dropout, name=f"drop{index}")(x)
            x = builders.dense(x, units, f"fc{index}", body, activation="relu")
        # Logits in float32 even under a mixed precision policy, so the loss and
        # softmax never see bfloat16/float16 values.
        x = builders.dense(x, num_classes, "predictions", (init, seed), dtype="float32")
    model = keras.Model(inputs, x, name=name or f"alexnet_{variant}")

    if weights is not None:
        from alexnet_k3.weights import load_weights

        load_weights(model, weights)
    if freeze_features:
        for index in range(1, len(config.convs) + 1):
            model.get_layer(f"conv{index}").trainable = False
    return model


# The network builders by `--arch` name (`alexnet_k3.core.ARCHS`); each takes
# `num_classes`, `input_shape`, `weights`, `init`, `seed` and `name`.
ARCHITECTURES = {"alexnet": AlexNet, "vgg16": vgg.VGG16}
# The default input side of the architectures without variants (AlexNet's is its variant's).
DEFAULT_SIZES = {"vgg16": vgg.DEFAULT_SIZE}


def default_input_size(arch: str = "alexnet", variant: str = "cifar") -> int:
    """The input side a network of `arch` (and AlexNet `variant`) is built at by default."""
    if arch in ARCHS_WITH_VARIANTS:
        return _get_variant(variant).default_size
    return DEFAULT_SIZES[arch]


def build_network(arch: str, num_classes: int, *, variant: str = "torchvision", **kwargs):
    """The network of `arch` (`ARCHITECTURES`); `variant` counts for AlexNet only.

    Example:
        >>> build_network("vgg16", 10, input_shape=(32, 32, 3)).count_params()
        134301514
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch={arch!r}. Expected one of {list(ARCHS)}.")
    options = {"variant": variant} if arch in ARCHS_WITH_VARIANTS else {}
    return ARCHITECTURES[arch](num_classes, **options, **kwargs)


def build_classifier(
    num_classes: int,
    *,
    arch: str = "alexnet",
    variant: str = "cifar",
    image_size: int | None = None,
    weights: str | None = None,
    augment: bool = True,
    flip: bool = True,
    raw_shape=(32, 32, 3),
    init: str = "torch",
    seed: int | None = None,
) -> keras.Model:
    """A network of `arch` behind the on-device input pipeline: takes raw uint8 images.

    The saved model therefore needs no preprocessing code outside it, on any backend.
    The network is the layer named `arch` ("alexnet", "vgg16"); `variant` is
    AlexNet's only. `init` and `seed` are the builders'.
    """
    size = image_size or default_input_size(arch, variant)
    channels_first = keras.config.image_data_format() == "channels_first"
    net = build_network(
        arch,
        num_classes,
        variant=variant,
        weights=weights,
        input_shape=(3, size, size) if channels_first else (size, size, 3),
        init=init,
        seed=seed,
        name=arch,
    )
    inputs = keras.Input(raw_shape, dtype="uint8", name="images")
    x = input_pipeline(size, augment=augment, flip=flip)(inputs)
    suffix = variant if arch in ARCHS_WITH_VARIANTS else arch
    return keras.Model(inputs, net(x), name=f"alexnet_k3_{suffix}")


def weights_checksum(model: keras.Model) -> str:
    """SHA-256 (hex) of the float32 bytes of every weight, in `model.weights` order.

    Equal on two backends exactly when they hold the same numbers: with a `seed`,
    `AlexNet` starts from the same checksum on torch, jax and tensorflow.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        values = np.ascontiguousarray(keras.ops.convert_to_numpy(weight), dtype="float32")
        digest.update(values.tobytes())
    return digest.hexdigest()


def _conv_block(x, spec: ConvSpec, index: int, norm: str | None, config: VariantConfig, init_seed):
    same = spec.stride == 1 and spec.kernel % 2 == 1 and spec.padding == spec.kernel // 2
    if spec.padding and not same:
        x = keras.layers.ZeroPadding2D(spec.padding, name=f"conv{index}_pad")(x)
    x = builders.conv(
        x,
        spec.filters,
        spec.kernel,
        f"conv{index}",
        init_seed,
        strides=spec.stride,
        padding="same" if same else "valid",
    )
    if norm == "lrn":
        x = LocalResponseNormalization(**LRN_ARGS, name=f"norm{index}")(x)
    elif norm == "batchnorm":
        # torch's BatchNorm2d defaults: moving statistics settle within the few
        # hundred steps of a small dataset (Keras's 0.99 needs thousands).
        x = keras.layers.BatchNormalization(
            axis=builders.channels_axis(), momentum=0.9, epsilon=1e-5, name=f"norm{index}"
        )(x)
    if spec.pool_after:
        x = keras.layers.MaxPooling2D(
            config.pool_size, config.pool_stride, padding=config.pool_padding, name=f"pool{index}"
        )(x)
    return x


def _final_grid(config: VariantConfig, size: int) -> int:
    """Spatial side after the last pooling for a square input of side `size`."""
    for spec in config.convs:
        size = (size + 2 * spec.padding - spec.kernel) // spec.stride + 1
        if size < 1:
            return 0
        if spec.pool_after:
            if config.pool_padding == "same":
                size = -(-size // config.pool_stride)
            else:
                size = (size - config.pool_size) // config.pool_stride + 1
            if size < 1:
                return 0
    return size


def _get_variant(variant) -> VariantConfig:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant={variant!r}. Expected one of {sorted(VARIANTS)}.")
    return VARIANTS[variant]


def _check_arguments(num_classes, dropout, normalization, weights, include_top, variant):
    builders.check_classifier(num_classes, dropout)
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS} or None, "
            f"received normalization={normalization!r}."
        )
    if weights is None:
        return
    builders.check_weights_type(weights)
    if variant != "torchvision":
        raise ValueError(
            f"Pretrained `weights`={str(weights)!r} exist only for variant='torchvision', "
            f"received variant={variant!r}. Use weights=None to train this variant from scratch."
        )
    if normalization not in (None, "none"):
        raise ValueError(
            f"Pretrained `weights` have no {normalization!r} layers, received "
            f"normalization={normalization!r}. Leave `normalization` unset to load weights."
        )
    builders.check_top(weights, include_top, num_classes)
