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
        self.data_format = _standardize_data_format(data_format)

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


def _standardize_data_format(data_format):
    if data_format is None:
        return keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first', "
            f"received data_format={data_format!r}."
        )
    return data_format


def _slice_along(x, axis, start, length):
    begin = [0] * len(x.shape)
    sizes = list(ops.shape(x))
    axis = axis % len(x.shape)
    begin[axis] = start
    sizes[axis] = length
    return ops.slice(x, begin, sizes)


@keras.saving.register_keras_serializable(package="alexnet_k3")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average pooling to a fixed output grid, with torch's `adaptive_avg_pool2d` bins.

    Output cell `i` averages input rows `floor(i * H / out)` to
    `ceil((i + 1) * H / out) - 1` (likewise for columns), so bins overlap when `H`
    is not a multiple of `out`, and inputs smaller than the grid are repeated.
    Written as two small pooling matrices contracted with the input, which is
    exact for every size, including graph-traced unknown sizes. (Keras's own
    layer of this name fails under tensorflow's graph mode when the input is
    smaller than the output grid.)

    Args:
        output_size: `(rows, cols)` of the output grid, or one int for both.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
    """

    def __init__(self, output_size, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(s) for s in output_size)
        if len(self.output_size) != 2 or min(self.output_size) < 1:
            raise ValueError(
                f"`output_size` must be two positive integers, received {output_size!r}."
            )
        self.data_format = _standardize_data_format(data_format)

    def call(self, inputs):
        h_axis, w_axis = (2, 3) if self.data_format == "channels_first" else (1, 2)
        shape = ops.shape(inputs)
        if (shape[h_axis], shape[w_axis]) == self.output_size:
            return inputs  # torchvision's 224x224 case: every bin is one pixel.
        rows = _pooling_matrix(shape[h_axis], self.output_size[0], inputs.dtype)
        cols = _pooling_matrix(shape[w_axis], self.output_size[1], inputs.dtype)
        if self.data_format == "channels_first":
            return ops.einsum("oh,bchw,pw->bcop", rows, inputs, cols)
        return ops.einsum("oh,bhwc,pw->bopc", rows, inputs, cols)

    def compute_output_shape(self, input_shape):
        if self.data_format == "channels_first":
            return (input_shape[0], input_shape[1], *self.output_size)
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(output_size=self.output_size, data_format=self.data_format)
        return config


def _pooling_matrix(in_size, out_size, dtype):
    """(out_size, in_size) matrix whose row i averages torch's i-th adaptive bin."""
    out_index = ops.arange(out_size)
    start = ops.floor_divide(out_index * in_size, out_size)
    end = ops.floor_divide((out_index + 1) * in_size + out_size - 1, out_size)
    in_index = ops.arange(in_size)
    inside = ops.logical_and(
        ops.greater_equal(in_index[None, :], start[:, None]),
        ops.less(in_index[None, :], end[:, None]),
    )
    inside = ops.cast(inside, "float32")
    return ops.cast(inside / ops.sum(inside, axis=1, keepdims=True), dtype)
