"""VGG16 beside AlexNet: the builder, torchvision parity, conversion, refusals, `--arch`.

Run once per backend: `KERAS_BACKEND=torch|jax|tensorflow pytest tests/test_vgg.py`.
A VGG16 holds 138M parameters (a 553 MB checkpoint), so the torchvision model and
its checkpoint are made once per module, the inputs are small (64x64 and 96x96,
where the adaptive pooling repeats and averages a 2x2 or 3x3 map into 7x7) and
every forward pass uses a batch of 2.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import alexnet_k3 as ak  # noqa: E402
from alexnet_k3 import weights as W  # noqa: E402
from alexnet_k3.config import TrainConfig  # noqa: E402
from alexnet_k3.convert import convert_checkpoint  # noqa: E402
from alexnet_k3.weights import loader  # noqa: E402
from alexnet_k3.weights.sources import Source  # noqa: E402

RELATIVE_TOLERANCE = 1e-5
SIDES = (64, 96)
TITLES = ("torchvision's AlexNet", "torchvision's VGG16")


def relative_error(output, reference) -> float:
    return float(np.abs(output - reference).max() / np.abs(reference).max())


def any_size_shape():
    channels_first = keras.config.image_data_format() == "channels_first"
    return (3, None, None) if channels_first else (None, None, 3)


def keras_forward(model, images_nchw):
    if keras.config.image_data_format() == "channels_last":
        images_nchw = images_nchw.transpose(0, 2, 3, 1)
    return keras.ops.convert_to_numpy(model(images_nchw, training=False))


def torch_forward(module, images_nchw):
    with torch.no_grad():
        return module(torch.from_numpy(images_nchw)).numpy()


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    return torchvision.models.vgg16().eval()  # weights=None: random, 1000 classes


@pytest.fixture(scope="module")
def checkpoint(tv_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg16") / "vgg16_random.pth"
    torch.save(tv_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {side: rng.standard_normal((2, 3, side, side)).astype("float32") for side in SIDES}


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """A size-agnostic VGG16 loaded from `checkpoint` under the current data format,
    and its weights as loaded (failed loads target it and must leave them)."""
    model = ak.VGG16(input_shape=any_size_shape(), weights=checkpoint)
    return model, model.get_weights()


def assert_same_weights(model, expected, message="weights changed"):
    actual = model.get_weights()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and np.array_equal(a, e), message


# --- The builder -------------------------------------------------------------------


def test_parameter_counts_and_layers():
    model = ak.VGG16(num_classes=10, input_shape=any_size_shape(), seed=0)
    assert model.count_params() == 134_301_514
    convs = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [
        f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)
    ]
    assert [model.get_layer(c).filters for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [
        512
    ] * 6
    assert model.get_layer("avgpool").output_size == (7, 7)
    small = (3, 31, None) if keras.config.image_data_format() == "channels_first" else (31, None, 3)
    with pytest.raises(ValueError, match="VGG16 needs inputs of at least 32x32"):
        ak.VGG16(input_shape=small)


# --- Numerical agreement with torchvision -------------------------------------------


def test_matches_torchvision(data_format, tv_model, checkpoint, images):
    model = ak.VGG16(input_shape=any_size_shape(), weights=checkpoint)
    for side in SIDES:
        error = relative_error(
            keras_forward(model, images[side]), torch_forward(tv_model, images[side])
        )
        print(f"{keras.backend.backend()} {data_format} vgg16 {side}x{side}: {error:.2e}")
        assert error <= RELATIVE_TOLERANCE, (data_format, side, error)


def test_export_round_trip(loaded, tv_model):
    model, _ = loaded
    assert model.count_params() == 138_357_544 == W.VGG16_IMAGENET1K_V1.num_params
    state = ak.to_torchvision_state_dict(model)
    assert list(state) == list(tv_model.state_dict())
    for key, value in tv_model.state_dict().items():
        assert np.array_equal(state[key], value.numpy()), key
    # Exactly the checkpoint back, so `to_torch` inverts `to_keras`, which the parity
    # test above checks against torchvision itself.


def test_transfer_keeps_every_tensor_but_the_head(checkpoint, loaded):
    _, expected = loaded
    model = ak.VGG16(num_classes=10, weights=checkpoint, freeze_features=True, seed=1)
    weights = model.get_weights()
    for got, want in zip(weights[:-2], expected[:-2], strict=True):
        assert np.array_equal(got, want)
    kernel, bias = weights[-2:]
    assert kernel.shape == (4096, 10) and bias.shape == (10,)
    assert 0 < np.abs(kernel).max() <= 1 / np.sqrt(4096)  # a fresh nn.Linear(4096, 10)
    frozen = [layer.name for layer in model.layers if layer.weights and not layer.trainable]
    assert frozen == [
        f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)
    ]


@pytest.mark.once
def test_converted_weights_file_and_record(checkpoint, tv_model, tmp_path):
    out = convert_checkpoint(checkpoint, tmp_path / "vgg16.weights.h5", arch="vgg16")
    model = ak.VGG16(weights=out, include_top=False, input_shape=any_size_shape())
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no partial file
    state = tv_model.state_dict()
    kernel = model.get_layer("conv1_1").get_weights()[0]
    assert np.array_equal(kernel, state["features.0.weight"].numpy().transpose(2, 3, 1, 0))
    ours, theirs = W.VGG16_IMAGENET1K_V1, torchvision.models.VGG16_Weights.IMAGENET1K_V1
    assert ours.url == theirs.url and ours.file_name == "vgg16-397923af.pth"
    assert ours.num_params == theirs.meta["num_params"]
    assert ours.min_size == theirs.meta["min_size"] == (32, 32)
    assert ours.metrics["ImageNet-1K"] == theirs.meta["_metrics"]["ImageNet-1K"]
    assert ours.gflops == theirs.meta["_ops"] and ours.file_size_mb == theirs.meta["_file_size"]
    transforms = theirs.transforms()
    assert [ours.resize_size, ours.crop_size] == [*transforms.resize_size, *transforms.crop_size]


# --- Refusals ----------------------------------------------------------------------


def _one_line_refusal(model, source, first, second):
    before = model.get_weights()
    with pytest.raises(W.WeightsError) as info:
        ak.load_torchvision_weights(model, source)
    message = str(info.value)
    print(f"\n{message}")
    assert "\n" not in message
    assert message.index(first) < message.index(second), message
    assert_same_weights(model, before, f"weights changed by a failed load: {message}")
    return message


@pytest.mark.once
def test_checkpoint_of_the_other_architecture(loaded, checkpoint, tmp_path):
    model, _ = loaded
    alexnet_state = torchvision.models.alexnet().state_dict()
    message = _one_line_refusal(model, alexnet_state, *TITLES)
    assert "--arch alexnet" in message
    alexnet = ak.AlexNet(input_shape=(64, 64, 3), seed=0)
    message = _one_line_refusal(alexnet, checkpoint, TITLES[1], TITLES[0])
    assert str(checkpoint) in message and "--arch vgg16" in message
    # And through `convert --arch`, before anything is written.
    with pytest.raises(W.WeightsError, match="torchvision's AlexNet.*torchvision's VGG16"):
        convert_checkpoint(alexnet_state, tmp_path / "x.weights.h5", arch="vgg16")
    assert list(tmp_path.iterdir()) == []
    # A converted .weights.h5 is keyed by Keras layer names: read the same way.
    h5_like = Source(
        "Weights file 'alexnet.weights.h5'", "keras", {"conv1/kernel": 0, "fc6/bias": 0}
    )
    for name in ("conv2", "conv3", "conv4", "conv5"):
        h5_like.tensors[f"{name}/vars/0"] = 0
    with pytest.raises(
        W.WeightsError, match="alexnet.weights.h5' holds the weights of torchvision's AlexNet"
    ):
        loader.check_architecture(loader.table_named("vgg16"), h5_like)
    # The table registry: each model finds its own table.
    assert loader.table_for(model).name == "vgg16" and loader.table_for(alexnet).name == "alexnet"


@pytest.mark.once
def test_arch_settings(tmp_path):
    assert TrainConfig(arch="vgg16").peak_learning_rate == 0.01  # no batch norm
    assert TrainConfig(arch="vgg16").model_variant is None
    with pytest.raises(ValueError, match="variant.*arch='vgg16'"):
        TrainConfig(arch="vgg16", variant="torchvision").validate()
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="resnet").validate()
    with pytest.raises(ValueError, match="variant.*left unset.*received variant='cifar'"):
        ak.train(tmp_path / "run", arch="vgg16", variant="cifar")  # the default, given
    assert list(tmp_path.iterdir()) == []
    from alexnet_k3.cli import build_parser

    parser = build_parser()
    for command in (
        ["train"],
        ["evaluate", "m.keras"],
        ["predict", "--weights", "x.pth", "a.png"],
        ["convert", "--weights", "x", "--out", "y"],
    ):
        assert parser.parse_args([*command, "--arch", "vgg16"]).arch == "vgg16"


# --- The commands ------------------------------------------------------------------


# 3-5 minutes a backend on the 2-core CI machine: in the torch session only
# (`ALEXNET_K3_ONCE_EVERYWHERE=1` runs it on the others; it passed on all three).
@pytest.mark.once
@pytest.mark.slow
def test_train_evaluate_and_compare(run_cli, checkpoint, tmp_path):
    vgg_run = tmp_path / "vgg16"
    run_cli(
        "train",
        "--arch", "vgg16", "--weights", checkpoint, "--dataset", "digits",
        "--image-size", 32, "--freeze-epochs", 1, "--epochs", 1, "--batch-size", 128,
        "--verbose", 0, "--out", vgg_run,
        expect_ok=True,
    )  # fmt: skip
    metrics = json.loads((vgg_run / "metrics.json").read_text())
    assert (metrics["arch"], metrics["variant"], metrics["mode"]) == ("vgg16", None, "transfer")
    assert metrics["image_size"] == 32 and metrics["learning_rate"] == 0.01
    assert json.loads((vgg_run / "config.json").read_text())["arch"] == "vgg16"
    assert (vgg_run / "report.md").read_text().startswith("# VGG16 on digits")

    alexnet_run = tmp_path / "alexnet"
    ak.train(alexnet_run, dataset="digits", epochs=1, batch_size=128, verbose=0)
    assert ak.evaluate(alexnet_run / "model.keras", "digits", arch="alexnet")["arch"] == "alexnet"
    with pytest.raises(ValueError, match="arch=.*alexnet.*holds a vgg16 network"):
        ak.evaluate(vgg_run / "model.keras", "digits", arch="alexnet")

    table = run_cli("compare", alexnet_run, vgg_run, expect_ok=True).stdout
    header, _, *rows = table.splitlines()
    arch = header.split(" | ").index("arch")
    assert [row.split(" | ")[arch] for row in rows] == ["alexnet", "vgg16"], table


@pytest.mark.once
def test_predict_with_vgg16_weights(checkpoint, tv_model):
    image = np.random.default_rng(4).integers(0, 256, (240, 260, 3), dtype=np.uint8)
    rows = ak.predict(checkpoint, image, top=3, arch="vgg16")
    assert rows[0]["error"] is None and len(rows[0]["top"]) == 3
    from alexnet_k3.preprocessing import imagenet_preprocess

    x = keras.ops.convert_to_numpy(imagenet_preprocess(image[None]))
    if keras.config.image_data_format() == "channels_last":
        x = x.transpose(0, 3, 1, 2)
    logits = torch_forward(tv_model, np.ascontiguousarray(x, dtype="float32"))[0]
    assert [t["index"] for t in rows[0]["top"]] == list(np.argsort(-logits)[:3])
