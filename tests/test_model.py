"""The AlexNet builder, on whichever backend this process runs (KERAS_BACKEND)."""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import alexnet_k3 as ak
from alexnet_k3.model import VARIANTS, min_input_size

BACKEND = keras.config.backend()


def _shape(side, data_format, channels=3):
    return (channels, side, side) if data_format == "channels_first" else (side, side, channels)


def _images(batch, side, data_format, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *_shape(side, data_format))).astype("float32")


@pytest.mark.parametrize(
    "variant, num_classes, expected",
    [
        ("torchvision", 1000, 61_100_840),
        ("torchvision", 10, 57_044_810),
        ("paper", 1000, 62_378_344),
        ("cifar", 10, 3_723_946),
    ],
)
def test_parameter_count(variant, num_classes, expected):
    assert ak.AlexNet(num_classes, variant=variant).count_params() == expected


def test_layer_names_are_stable():
    names = [layer.name for layer in ak.AlexNet(10).layers]
    for expected in ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "predictions"]:
        assert expected in names
    assert ak.AlexNet(10).name == "alexnet_torchvision"


@pytest.mark.parametrize(
    "variant, side, feature_shape",
    [("torchvision", 64, (6, 6, 256)), ("paper", 67, (6, 6, 256)), ("cifar", 32, (4, 4, 128))],
)
def test_output_shapes(data_format, variant, side, feature_shape):
    # Smallest inputs each variant accepts, to keep the forward passes cheap.
    model = ak.AlexNet(7, variant=variant, input_shape=_shape(side, data_format))
    assert tuple(model(_images(2, side, data_format)).shape) == (2, 7)

    features = ak.AlexNet(variant=variant, include_top=False, input_shape=_shape(side, data_format))
    channels, grid = feature_shape[2], feature_shape[:2]
    expected = (2, channels, *grid) if data_format == "channels_first" else (2, *grid, channels)
    assert tuple(features(_images(2, side, data_format)).shape) == expected


def test_default_input_shape_follows_data_format(data_format):
    for variant, config in VARIANTS.items():
        model = ak.AlexNet(variant=variant)
        assert model.input_shape[1:] == _shape(config.default_size, data_format)


def test_any_size_from_the_minimum_works_through_adaptive_pooling():
    assert min_input_size("torchvision") == 63
    size_agnostic = ak.AlexNet(3, input_shape=(None, None, 3))
    for side in (63, 80):
        assert tuple(size_agnostic(_images(1, side, "channels_last")).shape) == (1, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0), "num_classes=0"),
        (dict(num_classes=2.5), "num_classes=2.5"),
        (dict(variant="vgg"), "variant='vgg'"),
        (dict(input_shape=(62, 62, 3)), "at least 63x63"),
        (dict(input_shape=(224, 224)), "input_shape=(224, 224)"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(dropout=-0.1), "dropout=-0.1"),
        (dict(normalization="groupnorm"), "normalization='groupnorm'"),
        (dict(weights="imagenet", variant="cifar"), "variant='cifar'"),
        (dict(weights="imagenet", include_top=False, num_classes=10), "include_top=False"),
        (dict(weights=3), "weights of type int"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ak.AlexNet(**kwargs)


@pytest.mark.parametrize("variant, side", [("torchvision", 64), ("paper", 67), ("cifar", 32)])
def test_one_training_step_changes_every_trainable_weight(variant, side):
    keras.utils.set_random_seed(0)
    model = ak.AlexNet(4, variant=variant, input_shape=(side, side, 3))
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]
    x = _images(4, side, "channels_last")
    model.train_on_batch(x, np.arange(4) % 4)
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    unchanged = [
        w.path for w, b, a in zip(model.trainable_weights, before, after) if np.array_equal(b, a)
    ]
    assert not unchanged


def test_freeze_features_leaves_only_the_classifier_trainable():
    model = ak.AlexNet(10, freeze_features=True)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"fc6", "fc7", "predictions"}


@pytest.mark.parametrize("variant, side", [("paper", 67), ("cifar", 32)])
def test_keras_file_round_trip(tmp_path, data_format, variant, side):
    model = ak.AlexNet(5, variant=variant, input_shape=_shape(side, data_format))
    x = _images(2, side, data_format)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(restored(x))
    )
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]


# Each backend's session loads its model file on the next backend: every backend both
# writes a file another reads and reads one another wrote, each pair once per CI run.
NEXT_BACKEND = {"torch": "jax", "jax": "tensorflow", "tensorflow": "torch"}[BACKEND]


def _installed(backend):
    import importlib.util

    return importlib.util.find_spec(backend) is not None


@pytest.mark.slow
def test_model_saved_on_this_backend_loads_on_another(tmp_path):
    other = NEXT_BACKEND
    if not _installed(other):
        pytest.skip(f"{other} is not installed in this environment")
    model = ak.AlexNet(5, variant="paper", input_shape=(67, 67, 3))
    x = _images(2, 67, "channels_last")
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", keras.ops.convert_to_numpy(model(x)))
    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import alexnet_k3
        assert keras.config.backend() == {other!r}
        model = alexnet_k3.load_model({str(tmp_path / "model.keras")!r})
        got = keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "x.npy")!r})))
        np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}),
                                   rtol=1e-5, atol=1e-5)
        print("same outputs")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": other}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same outputs" in result.stdout


BACKEND_PACKAGES = {"torch", "tensorflow", "jax", "jaxlib"}


def backend_mentions(source: str) -> list[str]:
    """Where `source` imports a backend framework or asks which backend runs.

    Walks the syntax tree: `import torch`, `from jax import numpy`, `import
    tensorflow as tf`, `importlib.import_module("jax.numpy")`, `__import__("torch")`,
    and calls of keras's `backend()` however it is reached: `keras.backend.backend()`,
    `keras.config.backend()`, `K.backend()` after `from keras import backend as K`,
    `which()` after `from keras.config import backend as which`.
    """
    tree = ast.parse(source)
    found = []
    modules, functions = {"backend", "config"}, set()  # names bound to keras's
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_backend(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
                elif alias.name.endswith((".backend", ".config")) and alias.asname:
                    modules.add(alias.asname)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if _is_backend(module):
                found.append(f"line {node.lineno}: from {module} import ...")
            for alias in node.names:
                if alias.name in ("backend", "config"):
                    target = functions if module.endswith((".backend", ".config")) else modules
                    target.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function, call = node.func, f"line {node.lineno}: {ast.unparse(node)}"
        if isinstance(function, ast.Attribute) and function.attr == "backend":
            if ast.unparse(function.value).split(".")[-1] in modules:
                found.append(call)
        elif isinstance(function, ast.Name) and function.id in functions:
            found.append(call)
        if ast.unparse(function) in ("importlib.import_module", "import_module", "__import__"):
            target = node.args[0] if node.args else None
            if not isinstance(target, ast.Constant) or _is_backend(str(target.value)):
                found.append(call)
    return found


def _is_backend(module: str) -> bool:
    return module.split(".")[0] in BACKEND_PACKAGES


@pytest.mark.parametrize(
    "line",
    [
        "import torch",
        "import jax.numpy as jnp",
        "from jax import numpy",
        "from tensorflow.python import ops",
        "import importlib; importlib.import_module('torch')",
        "__import__('tensorflow')",
        "import keras; keras.backend.backend()",
        "import keras as k; k.config.backend()",
        "from keras import config; config.backend()",
        "from keras.config import backend; backend()",
        "from keras.backend import backend as which; which()",
        "from keras import backend as K; K.backend()",
        "import keras.src.backend as K; K.backend()",
    ],
)
def test_backend_mentions_are_found(line):
    assert backend_mentions(f"def f():\n    {line}\n"), line


def test_model_and_layer_modules_never_mention_a_backend():
    import alexnet_k3.layers
    import alexnet_k3.model

    for module in (alexnet_k3.model, alexnet_k3.layers):
        found = backend_mentions(Path(module.__file__).read_text())
        assert not found, f"{module.__name__} mentions a backend: {found}"
    # What the checker must leave alone: keras.ops, image_data_format, layers.
    assert not backend_mentions("import keras\nkeras.config.image_data_format()\nkeras.ops.sum(1)")
