"""`train`'s SGD is torch.optim.SGD: weight decay coupled into the gradient (issue 11).

Keras's `SGD(weight_decay=)` decays outside the momentum, ten times weaker at
momentum 0.9 than the plain PyTorch loop the package is measured against; these
tests compare a few steps of `training.compile_model`'s optimizer with torch's,
from the same weights, on every backend.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402

from alexnet_k3.config import TrainConfig  # noqa: E402
from alexnet_k3.optimizers import TorchSGD  # noqa: E402
from alexnet_k3.training import compile_model  # noqa: E402

# Large enough that a decay outside the momentum moves the weights by about 1e-3
# in three steps, a hundred times the tolerance.
LR, WEIGHT_DECAY, STEPS = 0.1, 0.1, 3


def _tiny_model():
    rng = np.random.default_rng(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, activation="relu", name="fc1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc2")(hidden))
    for layer in model.layers[1:]:
        layer.set_weights(
            [rng.uniform(-0.8, 0.8, w.shape).astype("float32") for w in layer.weights]
        )
    return model


def _torch_twin(model):
    """The same two layers in torch, and torch's SGD decaying weights, not biases."""
    layers = []
    for name in ("fc1", "fc2"):
        kernel, bias = model.get_layer(name).get_weights()
        linear = torch.nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T))
            linear.bias.copy_(torch.from_numpy(bias))
        layers.append(linear)
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    groups = [
        {"params": [p for p in net.parameters() if p.ndim > 1], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in net.parameters() if p.ndim == 1], "weight_decay": 0.0},
    ]
    return net, torch.optim.SGD(groups, lr=LR, momentum=0.9)


def _step_both(model, net, optimizer, rng):
    """One step of the Keras model and of its torch twin on the same random batch."""
    x = rng.normal(size=(8, 5)).astype("float32")
    labels = rng.integers(0, 3, size=8)
    model.train_on_batch(x, np.eye(3, dtype="float32")[labels])
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(labels))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _assert_same_weights(model, net):
    for index, name in enumerate(("fc1", "fc2")):
        kernel, bias = model.get_layer(name).get_weights()
        linear = net[2 * index]
        np.testing.assert_allclose(kernel, linear.weight.detach().numpy().T, atol=1e-5)
        np.testing.assert_allclose(bias, linear.bias.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, "auto"])
@pytest.mark.parametrize("warmup_epochs", [0, 1])
def test_sgd_steps_match_torch_sgd_with_weight_decay(warmup_epochs, jit_compile):
    """Coupled decay, and with a warm-up torch's buffer of gradients (not of steps)."""
    model = _tiny_model()
    net, optimizer = _torch_twin(model)
    config = TrainConfig(
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_epochs=warmup_epochs,
        jit_compile=jit_compile,
    )
    epochs = 1 + warmup_epochs
    compile_model(model, config, num_classes=3, steps_per_epoch=STEPS, epochs=epochs, metrics=False)
    rng = np.random.default_rng(1)
    for step in range(STEPS * epochs):
        # Keras's linear warm-up from 0: step i of n runs at LR * i / n.
        warm = warmup_epochs and step < STEPS
        for group in optimizer.param_groups:
            group["lr"] = LR * step / STEPS if warm else LR
        _step_both(model, net, optimizer, rng)
    _assert_same_weights(model, net)


def test_torch_sgd_round_trips_through_a_saved_model(tmp_path):
    model = _tiny_model()
    config = TrainConfig(weight_decay=3e-4, jit_compile=False)
    compile_model(model, config, num_classes=3, steps_per_epoch=2, epochs=1, metrics=False)
    assert isinstance(model.optimizer, TorchSGD)
    path = tmp_path / "model.keras"
    model.save(path)
    # alexnet_k3.optimizers, imported here as by `evaluation.load_model`, registers TorchSGD.
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, TorchSGD)
    assert loaded.optimizer.coupled_weight_decay == pytest.approx(3e-4)
    assert loaded.optimizer.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("value", [-1.0, float("inf"), True, "5e-4"])
def test_torch_sgd_refuses_a_bad_decay(value):
    with pytest.raises(ValueError, match="coupled_weight_decay"):
        TorchSGD(0.01, coupled_weight_decay=value)


def test_torch_sgd_refuses_keras_decoupled_decay():
    with pytest.raises(ValueError, match="weight_decay=0.001"):
        TorchSGD(0.01, weight_decay=1e-3)


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.9, True), (0.0, False)])
def test_sgd_options_match_torch_sgd(momentum, nesterov):
    """Nesterov and plain SGD, with weight decay on every variable, as torch.optim.SGD."""
    model = _tiny_model()
    net, _ = _torch_twin(model)
    reference = torch.optim.SGD(
        net.parameters(), lr=LR, momentum=momentum, nesterov=nesterov, weight_decay=WEIGHT_DECAY
    )
    # Nothing excluded from the decay: biases decay too, as in `reference`.
    optimizer = TorchSGD(
        LR, momentum=momentum, nesterov=nesterov, coupled_weight_decay=WEIGHT_DECAY
    )
    model.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    for _ in range(STEPS):
        _step_both(model, net, reference, rng)
    _assert_same_weights(model, net)


def _conv_bn_model():
    """A conv + batch norm + dense net, the layer kinds of the `cifar` variant."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(3, name="predictions")(x))


# The backend hook each fused update goes through: once a step on torch, once a
# variable on tensorflow (in `update_step`).
FUSED = {"torch": "torch_sgd_update", "tensorflow": "tf_momentum_update"}


@pytest.mark.skipif(keras.backend.backend() not in FUSED, reason="no fused update on jax")
def test_fused_update_trains_as_the_per_variable_one(monkeypatch):
    """On torch and tensorflow, `TorchSGD` takes the engine's fused update.

    Over many steps of the run's own compile (schedule, decay with exclusions, batch
    norm), its weights stay within float32 rounding of the per-variable `keras.ops`
    update (`fused_updates = False`).
    """
    from alexnet_k3.backend import updates

    hook = FUSED[keras.backend.backend()]
    taken, original = [], getattr(updates, hook)

    def counted(*args):
        taken.append(original(*args))
        return taken[-1]

    monkeypatch.setattr(updates, hook, counted)
    models = [_conv_bn_model(), _conv_bn_model()]
    config = TrainConfig(schedule="cosine", warmup_epochs=1, jit_compile=False)
    for model in models:
        compile_model(model, config, num_classes=3, steps_per_epoch=10, epochs=4, metrics=False)
    models[1].optimizer.fused_updates = False
    per_variable = keras.backend.backend() == "tensorflow"
    calls_per_step = len(models[0].trainable_variables) if per_variable else 1
    start = models[0].get_layer("conv").get_weights()[0]
    rng = np.random.default_rng(4)
    for _ in range(40):
        x = rng.normal(size=(16, 8, 8, 3)).astype("float32")
        y = np.eye(3, dtype="float32")[rng.integers(0, 3, size=16)]
        for model in models:
            model.train_on_batch(x, y)
    # Called each step on torch; on tensorflow, once per variable each time tf.function traces.
    assert taken and all(taken) and len(taken) % calls_per_step == 0, taken
    for fast, reference in zip(models[0].weights, models[1].weights, strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(fast), keras.ops.convert_to_numpy(reference), atol=1e-6
        )
    # Not a vacuous match: training moved the weights far beyond the tolerance.
    moved = np.abs(models[0].get_layer("conv").get_weights()[0] - start).max()
    assert moved > 1e-2, moved
