"""Initialization: torch's defaults under init="torch", and one seed, one start on every backend."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import alexnet_k3 as ak
from alexnet_k3.config import TrainConfig
from alexnet_k3.layers import SeededUniform
from alexnet_k3.model import INITS, build_classifier, weights_checksum

BACKENDS = ("torch", "tensorflow", "jax")


def _numpy(variable):
    return keras.ops.convert_to_numpy(variable)


def _fan_in(kernel):
    # Keras kernels are (kh, kw, in, out) or (in, out) under either data format.
    return math.prod(kernel.shape[:-1])


def _weights(model):
    return {w.path: _numpy(w) for w in model.weights}


@pytest.fixture(scope="module")
def cifar_torch_init():
    return ak.AlexNet(10, variant="cifar", init="torch", seed=7)


def test_torch_init_draws_kernels_and_biases_from_torchs_bounds(cifar_torch_init):
    checked = 0
    for layer in cifar_torch_init.layers:
        if not isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            continue
        kernel, bias = _numpy(layer.kernel), _numpy(layer.bias)
        limit = 1 / math.sqrt(_fan_in(kernel))
        assert np.abs(kernel).max() <= limit, layer.name
        assert np.abs(kernel).max() > 0.9 * limit, layer.name  # every layer has >= 864 values
        assert abs(kernel.mean()) < 0.05 * limit, layer.name
        assert np.all(bias != 0) and np.abs(bias).max() <= limit, layer.name
        checked += 1
    assert checked == 8
    for index in range(1, 6):  # BatchNorm2d's defaults
        norm = cifar_torch_init.get_layer(f"norm{index}")
        np.testing.assert_array_equal(_numpy(norm.gamma), 1)
        np.testing.assert_array_equal(_numpy(norm.beta), 0)


def test_torch_init_matches_torchs_own_layers_statistically(cifar_torch_init):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    theirs = torch.nn.Conv2d(3, 32, 3)
    ours = cifar_torch_init.get_layer("conv1")
    limit = 1 / math.sqrt(27)
    for t, k in ((theirs.weight, ours.kernel), (theirs.bias, ours.bias)):
        t, k = t.detach().numpy(), _numpy(k)
        assert t.size == k.size
        assert t.__abs__().max() <= limit and np.abs(k).max() <= limit
    t, k = theirs.weight.detach().numpy(), _numpy(ours.kernel)
    # U(-b, b) has standard deviation b / sqrt(3); 864 draws pin it to a few percent.
    assert abs(t.std() - k.std()) < 0.1 * limit / math.sqrt(3)
    assert abs(k.std() - limit / math.sqrt(3)) < 0.1 * limit / math.sqrt(3)

    linear = torch.nn.Linear(1024, 10)
    head = cifar_torch_init.get_layer("predictions")
    np.testing.assert_allclose(
        np.abs(_numpy(head.kernel)).max(), linear.weight.detach().abs().max().item(), rtol=0.02
    )


@pytest.mark.parametrize("seed", [None, 3])
def test_keras_init_keeps_glorot_kernels_and_zero_biases(seed):
    model = ak.AlexNet(10, variant="cifar", init="keras", seed=seed)
    for name in ("conv2", "fc6"):
        layer = model.get_layer(name)
        kernel = _numpy(layer.kernel)
        fan_in, fan_out = _fan_in(kernel), _fan_in(kernel) // kernel.shape[-2] * kernel.shape[-1]
        limit = math.sqrt(6 / (fan_in + fan_out))
        assert 0.9 * limit < np.abs(kernel).max() <= limit
        np.testing.assert_array_equal(_numpy(layer.bias), 0)


def test_the_default_init_is_torchs_and_keras_init_keeps_keras_own_initializers():
    layer = ak.AlexNet(10, variant="cifar").get_layer("conv1")
    assert isinstance(layer.kernel_initializer, SeededUniform)
    assert isinstance(layer.bias_initializer, SeededUniform)
    layer = ak.AlexNet(10, variant="cifar", init="keras").get_layer("conv1")
    assert type(layer.kernel_initializer).__name__ == "GlorotUniform"
    assert type(layer.bias_initializer).__name__ == "Zeros"


@pytest.mark.parametrize("init", INITS)
def test_the_same_seed_gives_the_same_weights_and_another_seed_others(init):
    first = weights_checksum(ak.AlexNet(10, variant="cifar", init=init, seed=11))
    again = weights_checksum(ak.AlexNet(10, variant="cifar", init=init, seed=11))
    other = weights_checksum(ak.AlexNet(10, variant="cifar", init=init, seed=12))
    assert first == again != other


def test_without_a_seed_torch_init_picks_a_fresh_one_and_records_it():
    a, b = (ak.AlexNet(10, variant="cifar", init="torch") for _ in range(2))
    seed = a.get_layer("conv1").kernel_initializer.seed
    assert isinstance(seed, int) and seed != b.get_layer("conv1").kernel_initializer.seed
    assert weights_checksum(a) == weights_checksum(
        ak.AlexNet(10, variant="cifar", init="torch", seed=seed)
    )


def test_variables_of_one_shape_get_different_numbers():
    # Each variable draws from its own stream (crc32 of its name): scaled to
    # U(-1, 1), conv4's and conv5's 128 biases, or conv1's bias and a row of its
    # kernel, would be the same numbers if the streams were shared.
    model = ak.AlexNet(10, variant="cifar", init="torch", seed=0)

    def unit(variable, layer):
        return _numpy(variable) * math.sqrt(_fan_in(_numpy(model.get_layer(layer).kernel)))

    conv1 = model.get_layer("conv1")
    b4, b5 = (
        unit(model.get_layer("conv4").bias, "conv4"),
        unit(model.get_layer("conv5").bias, "conv5"),
    )
    assert b4.shape == b5.shape and not np.allclose(b4, b5)
    k1 = unit(conv1.kernel, "conv1").reshape(-1)[:32]
    assert not np.allclose(unit(conv1.bias, "conv1"), k1)


def test_the_checksum_does_not_depend_on_the_data_format(data_format, cifar_torch_init):
    model = ak.AlexNet(10, variant="cifar", init="torch", seed=7)
    assert model.input_shape[1:] == (
        (3, 32, 32) if data_format == "channels_first" else (32, 32, 3)
    )
    assert weights_checksum(model) == weights_checksum(cifar_torch_init)


def test_the_checksum_sees_every_weight(cifar_torch_init):
    model = ak.AlexNet(10, variant="cifar", init="torch", seed=7)
    assert weights_checksum(model) == weights_checksum(cifar_torch_init)
    weight = model.get_layer("norm5").moving_variance
    weight.assign(_numpy(weight) + 1e-3)
    assert weights_checksum(model) != weights_checksum(cifar_torch_init)


def test_build_classifier_passes_init_and_seed():
    a = build_classifier(10, init="torch", seed=5, augment=False)
    b = build_classifier(10, init="torch", seed=5)
    assert weights_checksum(a) == weights_checksum(b)
    net = ak.AlexNet(10, variant="cifar", init="torch", seed=5)
    assert weights_checksum(a) == weights_checksum(net)


@pytest.mark.slow
@pytest.mark.once
def test_one_seed_gives_the_same_start_on_every_backend():
    script = (
        "import keras, alexnet_k3 as ak\n"
        "from alexnet_k3.model import weights_checksum\n"
        "print(keras.config.backend(), weights_checksum("
        "ak.AlexNet(variant='cifar', num_classes=10, init='torch', seed=7)))\n"
    )
    sums = {}
    for backend in BACKENDS:
        result = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "KERAS_BACKEND": backend},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        name, checksum = result.stdout.split()[-2:]
        assert name == backend
        sums[backend] = checksum
    assert len(set(sums.values())) == 1, sums


def test_a_torch_init_model_survives_the_keras_file(tmp_path, cifar_torch_init):
    path = tmp_path / "model.keras"
    cifar_torch_init.save(path)
    restored = ak.load_model(path)
    assert weights_checksum(restored) == weights_checksum(cifar_torch_init)
    initializer = restored.get_layer("fc6").kernel_initializer
    assert isinstance(initializer, SeededUniform) and initializer.seed == 7
    assert initializer.key == "fc6/kernel"


def test_the_transfer_head_gets_torchs_linear_init_under_torch(tmp_path):
    source = ak.AlexNet(1000, input_shape=(64, 64, 3), init="torch", seed=1)
    weights = tmp_path / "imagenet.weights.h5"
    source.save_weights(weights)
    model = ak.AlexNet(10, input_shape=(64, 64, 3), weights=str(weights), init="torch", seed=2)
    np.testing.assert_array_equal(
        _numpy(model.get_layer("fc7").kernel), _numpy(source.get_layer("fc7").kernel)
    )
    # The loaded layers never drew random numbers; the new head did, with its seed.
    assert type(model.get_layer("fc7").kernel_initializer).__name__ == "Zeros"
    head = model.get_layer("predictions")
    assert head.kernel_initializer.seed == 2
    limit = 1 / math.sqrt(4096)
    assert 0.9 * limit < np.abs(_numpy(head.kernel)).max() <= limit
    assert np.all(_numpy(head.bias) != 0) and np.abs(_numpy(head.bias)).max() <= limit


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(init="xavier"), "init='xavier'"),
        (dict(init="torch", seed=-1), "seed=-1"),
        (dict(seed=1.5), "seed=1.5"),
        (dict(seed=True), "seed=True"),
    ],
)
def test_bad_init_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        ak.AlexNet(10, variant="cifar", **kwargs)


def test_seeded_uniform_round_trips_its_config():
    init = SeededUniform(0.25, seed=9, key="conv3/kernel")
    copy = SeededUniform.from_config(init.get_config())
    np.testing.assert_array_equal(_numpy(init((3, 4))), _numpy(copy((3, 4))))
    assert _numpy(init((2, 2), dtype="float16")).dtype == np.float16


def test_the_train_option_offers_the_models_inits():
    from dataclasses import fields

    field = next(f for f in fields(TrainConfig) if f.name == "init")
    assert tuple(field.metadata["choices"]) == INITS
    assert TrainConfig().init == "torch"
