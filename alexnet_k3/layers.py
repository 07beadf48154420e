"""The one layer AlexNet needs that Keras lacks: local response normalization.

Written with `keras.ops` only, so it runs unchanged on every backend.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="alexnet_k3")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels (Krizhevsky et al., 2012, sec. 3.3).

    Follows `torch.nn.LocalResponseNorm`: for channel `c`,
    `b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta`,
    where the window holds `size` neighbouring channels centred on `c` (zero padded
    at the edges). The paper writes `alpha` without the division by `size`; its
    constants (size=5, alpha=1e-4, beta=0.75, k=2) therefore correspond to
    `alpha=5e-4` here.

    Args:
        size: number of neighbouring channels summed over (odd or even, >= 1).
        alpha: scale of the sum of squares (divided by `size`, as in torch).
        beta: exponent.
        k: additive constant.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.

    Example:
        >>> lrn = LocalResponseNormalization(size=5, alpha=5e-4, beta=0.75, k=2.0)
        >>> lrn(keras.ops.ones((1, 4, 4, 8))).shape
        (1, 4, 4, 8)
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"`size` must be a positive integer, received size={size!r}.")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        if data_format is None:
            data_format = keras.config.image_data_format()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(
                "`data_format` must be 'channels_last' or 'channels_first', "
                f"received data_format={data_format!r}."
            )
        self.data_format = data_format

    def call(self, inputs):
        axis = 1 if self.data_format == "channels_first" else -1
        squares = ops.square(inputs)
        channels = ops.shape(inputs)[axis]
        # Same window placement as torch: size // 2 channels before, (size - 1) // 2 after.
        pad = [[0, 0]] * len(inputs.shape)
        pad[axis] = [self.size // 2, (self.size - 1) // 2]
        padded = ops.pad(squares, pad)
        window_sum = 0.0
        for offset in range(self.size):
            window_sum = window_sum + _slice_along(padded, axis, offset, channels)
        return inputs / ops.power(self.k + (self.alpha / self.size) * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            size=self.size, alpha=self.alpha, beta=self.beta, k=self.k, data_format=self.data_format
        )
        return config


def _slice_along(x, axis, start, length):
    begin = [0] * len(x.shape)
    sizes = list(ops.shape(x))
    axis = axis % len(x.shape)
    begin[axis] = start
    sizes[axis] = length
    return ops.slice(x, begin, sizes)
