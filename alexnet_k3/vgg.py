"""The VGG16 builder: torchvision's `vgg16`, layer for layer, as one functional Keras model.

The transfer baseline the course studies compared AlexNet with (Simonyan and
Zisserman 2014, configuration D): thirteen 3x3 convolutions in five blocks,
64-64 / 128-128 / 256x3 / 512x3 / 512x3, each block closed by 2x2 max pooling,
then torchvision's adaptive average pooling to 7x7 and a 4096-4096 classifier.
Like `model.py`, nothing here imports a backend or asks which one is active.
Layer names follow the original Caffe model (`conv1_1` .. `conv5_3`, `pool1` ..
`pool5`, `fc6`, `fc7`) with AlexNet's `predictions` head; the converter table is
`alexnet_k3.weights.vgg16.VGG16`.
"""

from __future__ import annotations

import keras

from alexnet_k3 import builders, layers
from alexnet_k3.layers import AdaptiveAveragePooling2D

# Filters of each convolution, block by block (torchvision's `cfgs["D"]`).
BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)
DENSE_UNITS = (4096, 4096)
POOLED_SIZE = (7, 7)
DEFAULT_SIZE = 224
# Five 2x2 poolings: 32 is the smallest side that leaves one pixel (torchvision's min_size).
MIN_SIZE = 2 ** len(BLOCKS)


def VGG16(
    num_classes: int = 1000,
    *,
    input_shape: tuple[int | None, int | None, int] | None = None,
    dropout: float = 0.5,
    weights: str | None = None,
    include_top: bool = True,
    freeze_features: bool = False,
    init: str = "torch",
    seed: int | None = None,
    name: str | None = None,
) -> keras.Model:
    """Builds torchvision's VGG16 as a functional `keras.Model` returning logits.

    Args:
        num_classes: size of the last dense layer (`predictions`).
        input_shape: `(H, W, 3)` under `channels_last`, `(3, H, W)` under
            `channels_first`; H and W of at least 32, or None (any size: the
            adaptive pooling makes the classifier's input 512x7x7 for every size).
            Defaults to 224x224.
        dropout: dropout rate after `fc6` and after `fc7` (torchvision's places), in [0, 1).
        weights: None (random initialization), `"imagenet"` (torchvision's
            `VGG16_Weights.IMAGENET1K_V1`, `alexnet_k3.weights.VGG16_IMAGENET1K_V1`),
            the path of a torchvision vgg16 `.pth` state_dict, or a `.weights.h5`
            file written by `alexnet-k3 convert --arch vgg16`. With
            `num_classes != 1000` every layer but `predictions` is loaded and
            `predictions` keeps its fresh initialization (transfer learning).
        include_top: False stops after the adaptive pooling, returning 512x7x7 maps.
        freeze_features: True makes the thirteen convolutions non-trainable.
        init: `"torch"` (the default), as `AlexNet(init="torch")`: torch's
            `nn.Conv2d`/`nn.Linear` defaults, kernels and biases
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)). This is not torchvision's own
            `vgg16()` start, which re-initializes convolutions kaiming-normal
            (fan_out) and dense layers N(0, 0.01) with zero biases. `"keras"`:
            Glorot-uniform kernels, zero biases. With `weights`, only a new
            `predictions` head keeps this initialization.
        seed: a non-negative integer: the same weights on every backend and data
            format (drawn with numpy, `alexnet_k3.layers.SeededUniform`). None:
            Keras's own draws under `"keras"`, a fresh seed under `"torch"`.
        name: model name; defaults to `vgg16`.

    Returns:
        A `keras.Model` mapping normalized float images to `num_classes` logits.

    Example:
        >>> import alexnet_k3 as ak
        >>> ak.VGG16(num_classes=10).count_params()
        134301514
    """
    builders.check_classifier(num_classes, dropout)
    if weights is not None:
        builders.check_weights_type(weights)
        builders.check_top(weights, include_top, num_classes)
    seed = layers.initializer_seed(init, seed)
    input_shape = builders.standardize_input_shape(
        input_shape, default_size=DEFAULT_SIZE, minimum=MIN_SIZE, who="VGG16", flattens=False
    )
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    # Layers that `weights` will overwrite skip the random draw (134M numbers).
    body = ("loaded", None) if weights is not None else (init, seed)
    convs = []
    for block, widths in enumerate(BLOCKS, start=1):
        for index, filters in enumerate(widths, start=1):
            convs.append(f"conv{block}_{index}")
            x = builders.conv(x, filters, 3, convs[-1], body, padding="same")
        x = keras.layers.MaxPooling2D(2, 2, name=f"pool{block}")(x)
    x = AdaptiveAveragePooling2D(POOLED_SIZE, name="avgpool")(x)
    if include_top:
        x = keras.layers.Flatten(name="flatten")(x)
        for index, units in enumerate(DENSE_UNITS, start=6):
            x = builders.dense(x, units, f"fc{index}", body, activation="relu")
            x = keras.layers.Dropout(dropout, name=f"drop{index}")(x)
        # Logits in float32 under any dtype policy, as AlexNet's.
        x = builders.dense(x, num_classes, "predictions", (init, seed), dtype="float32")
    model = keras.Model(inputs, x, name=name or "vgg16")
    if weights is not None:
        from alexnet_k3.weights import load_weights

        load_weights(model, weights)
    if freeze_features:
        for conv in convs:
            model.get_layer(conv).trainable = False
    return model
