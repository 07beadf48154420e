"""The custom layers agree with torch's definitions on this process's backend."""

import keras
import numpy as np
import pytest

from alexnet_k3.layers import AdaptiveAveragePooling2D, LocalResponseNormalization

torch = pytest.importorskip("torch")


def _to_torch_layout(x, data_format):
    return torch.from_numpy(x if data_format == "channels_first" else np.moveaxis(x, -1, 1).copy())


def _from_torch_layout(t, data_format):
    x = t.detach().numpy()
    return x if data_format == "channels_first" else np.moveaxis(x, 1, -1)


def _random(shape_nchw, data_format, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape_nchw).astype("float32")
    return x if data_format == "channels_first" else np.moveaxis(x, 1, -1).copy()


def test_lrn_matches_torch_local_response_norm(data_format):
    x = _random((2, 9, 5, 5), data_format) * 3
    got = keras.ops.convert_to_numpy(LocalResponseNormalization(5, 5e-4, 0.75, 2.0)(x))
    expected = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(
        _to_torch_layout(x, data_format)
    )
    np.testing.assert_allclose(got, _from_torch_layout(expected, data_format), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial", [(6, 6), (7, 7), (1, 1), (3, 5), (13, 9)])
def test_adaptive_pooling_matches_torch_bins(data_format, spatial):
    x = _random((2, 4, *spatial), data_format, seed=1)
    layer = AdaptiveAveragePooling2D((6, 6))
    expected = _from_torch_layout(
        torch.nn.functional.adaptive_avg_pool2d(_to_torch_layout(x, data_format), (6, 6)),
        data_format,
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-6, atol=1e-6)
    # The same inside a compiled function (tensorflow's graph mode, jax's jit).
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)


def test_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="size=0"):
        LocalResponseNormalization(size=0)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAveragePooling2D((0, 6))
    with pytest.raises(ValueError, match="data_format='nhwc'"):
        AdaptiveAveragePooling2D(6, data_format="nhwc")
