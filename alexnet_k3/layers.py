"""What AlexNet needs that Keras lacks: local response normalization, torch-exact
adaptive pooling, and an initializer that draws the same numbers on every backend.

Written with `keras.ops` (and numpy) only, so it runs unchanged on every backend.
`alexnet_k3.evaluation.load_model` imports this module, which registers all three
for loading `.keras` files.
"""

from __future__ import annotations

import math
import zlib

import keras
import numpy as np
from keras import ops

from alexnet_k3.core import INITS


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


@keras.saving.register_keras_serializable(package="alexnet_k3")
class SeededUniform(keras.initializers.Initializer):
    """U(-limit, limit) drawn with numpy, so one seed gives the same weights on every backend.

    Keras's random initializers draw with the active backend's generator: the
    same seed gives different numbers on torch, jax and tensorflow. This one
    draws `np.random.default_rng([seed, crc32(key)]).uniform(-limit, limit, shape)`
    in float64, rounds it to float32, then casts to the variable's dtype. `key`
    names the variable (`"conv1/kernel"`), so every variable has its own stream
    and two of the same shape never share numbers; crc32, unlike Python's
    `hash()`, is the same in every process.

    Args:
        limit: half-width of the interval, > 0.
        seed: a non-negative integer.
        key: a non-empty string naming the variable.

    Example:
        >>> init = SeededUniform(0.5, seed=7, key="fc6/kernel")
        >>> keras.ops.convert_to_numpy(init((2, 3))).shape
        (2, 3)
    """

    def __init__(self, limit, seed, key):
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            raise ValueError(f"`limit` must be a positive number, received limit={limit!r}.")
        _check_seed(seed)
        if not isinstance(key, str) or not key:
            raise ValueError(f"`key` must be a non-empty string, received key={key!r}.")
        self.limit = float(limit)
        self.seed = seed
        self.key = key

    def __call__(self, shape, dtype=None):
        stream = zlib.crc32(self.key.encode("utf-8"))
        values = np.random.default_rng([self.seed, stream]).uniform(
            -self.limit, self.limit, tuple(shape)
        )
        return ops.convert_to_tensor(values.astype("float32"), dtype=dtype or keras.config.floatx())

    def get_config(self):
        return {"limit": self.limit, "seed": self.seed, "key": self.key}


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, received seed={seed!r}.")


# Initializations of AlexNet's conv and dense layers (`initializer_arguments`).


def initializer_seed(init: str, seed: int | None) -> int | None:
    """Checks `init` and `seed`; None under `"torch"` becomes a seed from numpy's generator.

    The fresh seed is stored in each initializer's config, so a saved model
    records where it started.
    """
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}, received init={init!r}.")
    if seed is not None:
        _check_seed(seed)
    elif init == "torch":
        # numpy's global generator: `keras.utils.set_random_seed` seeds it, so a
        # seeded script still builds the same model.
        seed = int(np.random.randint(0, 2**31 - 1))
    return seed


def initializer_arguments(init: str, seed: int | None, name: str, fan_in: int, fan_out: int):
    """`kernel_initializer`/`bias_initializer` arguments for the conv or dense layer `name`.

    `fan_in`/`fan_out` count the inputs/outputs of one unit (`in_channels * kh * kw`
    for a convolution). `"torch"` is torch's `nn.Conv2d`/`nn.Linear` default
    (`kaiming_uniform_(a=sqrt(5))`): kernel and bias both U(-1/sqrt(fan_in),
    1/sqrt(fan_in)). `"keras"` is Keras's default (Glorot-uniform kernel, zero
    bias): without a seed Keras's own initializer, with one the same law drawn
    by `SeededUniform`, so it too is identical on every backend. `"loaded"`
    (zeros) is for layers whose weights are loaded right after the build.
    """
    if init == "loaded":
        return {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
    if init == "keras" and seed is None:
        return {}
    if init == "keras":
        glorot = math.sqrt(6.0 / (fan_in + fan_out))
        return {"kernel_initializer": SeededUniform(glorot, seed, f"{name}/kernel")}
    bound = 1.0 / math.sqrt(fan_in)
    return {
        "kernel_initializer": SeededUniform(bound, seed, f"{name}/kernel"),
        "bias_initializer": SeededUniform(bound, seed, f"{name}/bias"),
    }
