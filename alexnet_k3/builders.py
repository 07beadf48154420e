"""What the network builders share (`model.AlexNet`, `vgg.VGG16`), backend-free.

Argument checks whose messages name the received value, the conv and dense
layers with the package's initializations (`layers.initializer_arguments`:
torch's `nn.Conv2d`/`nn.Linear` defaults or Keras's, seeded identically on
every backend), and the check of an `input_shape` against the data format.
Like the builders, nothing here imports a backend or asks which one runs.
"""

from __future__ import annotations

import keras

from alexnet_k3 import layers


def check_classifier(num_classes, dropout) -> None:
    """Refuses a `num_classes` that is not a positive integer or a `dropout` outside [0, 1)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(
            f"`num_classes` must be a positive integer, received num_classes={num_classes!r}."
        )
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must be in [0, 1), received dropout={dropout!r}.")


def check_weights_type(weights) -> None:
    """Refuses `weights` that is neither a string nor a path."""
    if not isinstance(weights, str) and not hasattr(weights, "__fspath__"):
        raise ValueError(
            "`weights` must be None, 'imagenet' or the path of a .pth or .weights.h5 file, "
            f"received weights of type {type(weights).__name__}."
        )


def check_top(weights, include_top: bool, num_classes: int) -> None:
    """Refuses a `num_classes` that a model without its classifier cannot use."""
    if not include_top and num_classes != 1000:
        raise ValueError(
            f"`num_classes`={num_classes} has no effect with include_top=False and weights="
            f"{str(weights)!r}: there is no classifier to size. Leave num_classes at 1000 or "
            "set include_top=True."
        )


def channels_axis() -> int:
    """The channels axis of a batch under `keras.config.image_data_format()`."""
    return 1 if keras.config.image_data_format() == "channels_first" else -1


def dense(x, units: int, name: str, init_seed, **kwargs):
    """A `Dense` layer named `name` on `x`; `init_seed` is `(init, seed)`."""
    fans = layers.initializer_arguments(*init_seed, name, fan_in=x.shape[-1], fan_out=units)
    return keras.layers.Dense(units, name=name, **fans, **kwargs)(x)


def conv(x, filters: int, kernel: int, name: str, init_seed, **kwargs):
    """A ReLU `Conv2D` layer named `name` on `x`; `init_seed` is `(init, seed)`."""
    area = kernel * kernel
    fans = layers.initializer_arguments(
        *init_seed, name, fan_in=x.shape[channels_axis()] * area, fan_out=filters * area
    )
    return keras.layers.Conv2D(filters, kernel, activation="relu", name=name, **fans, **kwargs)(x)


def standardize_input_shape(input_shape, *, default_size: int, minimum: int, who: str, flattens):
    """`input_shape` checked against the data format and `minimum`; None: the default size.

    `who` names the model in messages ("variant='cifar'", "VGG16"); `flattens`:
    the model flattens its last feature map, so H and W must be known.
    """
    data_format = keras.config.image_data_format()
    if input_shape is None:
        side = default_size
        return (3, side, side) if data_format == "channels_first" else (side, side, 3)
    input_shape = tuple(input_shape)
    axis = 0 if data_format == "channels_first" else 2
    expected = "(3, H, W)" if data_format == "channels_first" else "(H, W, 3)"
    if len(input_shape) != 3 or input_shape[axis] != 3:
        raise ValueError(
            f"`input_shape` must be {expected} under image_data_format={data_format!r}, "
            f"received input_shape={input_shape!r}."
        )
    spatial = [d for i, d in enumerate(input_shape) if i != axis]
    for side in spatial:
        if side is not None and (not isinstance(side, int) or side < minimum):
            raise ValueError(
                f"{who} needs inputs of at least {minimum}x{minimum}, "
                f"received input_shape={input_shape!r}."
            )
    if flattens and None in spatial:
        raise ValueError(
            f"{who} flattens its last feature map, so its size must be known: "
            f"received input_shape={input_shape!r}. Give H and W."
        )
    return input_shape
