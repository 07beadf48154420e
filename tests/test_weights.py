"""torchvision <-> Keras weights: agreement with torchvision, conversion, bad input.

Run once per backend: `KERAS_BACKEND=torch|jax|tensorflow pytest tests/test_weights.py`.
The checkpoints are full size (61M parameters, 233 MB) with random weights, since
torchvision's pretrained file cannot be downloaded in CI; the torchvision model is
built once per module and every forward pass uses a batch of 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import urllib.error

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import alexnet_k3 as ak  # noqa: E402
from alexnet_k3 import downloads  # noqa: E402
from alexnet_k3 import weights as W  # noqa: E402
from alexnet_k3.convert import convert_checkpoint  # noqa: E402
from alexnet_k3.model import min_input_size  # noqa: E402
from alexnet_k3.preprocessing import (  # noqa: E402
    IMAGENET_CROP_SIZE,
    IMAGENET_MEAN,
    IMAGENET_RESIZE_SIZE,
    IMAGENET_STD,
    imagenet_preprocess,
)
from alexnet_k3.weights import loader, torch_files  # noqa: E402
from alexnet_k3.weights.alexnet import ALEXNET  # noqa: E402
from alexnet_k3.weights.keras_h5 import keras_h5_variables  # noqa: E402

# Issue 3: max|keras - torchvision| / max|torchvision| in float32.
RELATIVE_TOLERANCE = 1e-5
SIDES = (224, 256)  # 256: the adaptive pooling averages a 7x7 grid down to 6x6


def relative_error(output, reference) -> float:
    return float(np.abs(output - reference).max() / np.abs(reference).max())


def to_data_format(images_nchw, data_format=None):
    data_format = data_format or keras.config.image_data_format()
    return images_nchw if data_format == "channels_first" else images_nchw.transpose(0, 2, 3, 1)


def keras_forward(model, images_nchw):
    return keras.ops.convert_to_numpy(model(to_data_format(images_nchw), training=False))


def torch_forward(module, images_nchw):
    with torch.no_grad():
        return module(torch.from_numpy(images_nchw)).numpy()


def any_size_shape():
    return (
        (3, None, None) if keras.config.image_data_format() == "channels_first" else (None, None, 3)
    )


def assert_same_weights(model, expected, message="weights changed"):
    actual = model.get_weights()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and np.array_equal(a, e), message


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    return torchvision.models.alexnet(num_classes=1000).eval()


@pytest.fixture(scope="module")
def checkpoint(tv_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("checkpoint") / "alexnet_random.pth"
    torch.save(tv_model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return {side: rng.standard_normal((2, 3, side, side)).astype("float32") for side in SIDES}


@pytest.fixture(scope="module")
def reference(tv_model, images):
    return {side: torch_forward(tv_model, x) for side, x in images.items()}


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """A channels_last AlexNet loaded from `checkpoint`, and its weights as loaded.

    Failed loads target this model: afterwards its weights must still equal the copy.
    """
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_last")
    try:
        model = ak.AlexNet(weights=checkpoint)
    finally:
        keras.config.set_image_data_format(previous)
    return model, model.get_weights()


@pytest.fixture(scope="module")
def scratch():
    """A model that tests may overwrite."""
    return ak.AlexNet()


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    return convert_checkpoint(checkpoint, tmp_path_factory.mktemp("h5") / "alexnet.weights.h5")


def zeros_state(tv_model, **replace):
    """A full-size AlexNet state_dict of zeros that takes a few bytes on disk.

    `expand` gives every tensor its full shape over a single stored value. Keys in
    `replace` get the given tensor instead, or are dropped when given None.
    """
    state = {}
    for key, value in tv_model.state_dict().items():
        state[key] = torch.zeros(1).expand(value.shape)
    for key, value in replace.items():
        key = key.replace("__", ".")
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return state


# --- Numerical agreement ----------------------------------------------------------


def test_matches_torchvision(data_format, checkpoint, images, reference):
    model = ak.AlexNet(input_shape=any_size_shape(), weights=checkpoint)
    for side in SIDES:
        error = relative_error(keras_forward(model, images[side]), reference[side])
        print(f"{keras.backend.backend()} {data_format} {side}x{side}: {error:.2e}")
        assert error <= RELATIVE_TOLERANCE, (data_format, side, error)


def test_features_only_model_matches_torchvision_features(data_format, checkpoint, tv_model):
    model = ak.AlexNet(include_top=False, input_shape=any_size_shape(), weights=checkpoint)
    assert not any(layer.name.startswith(("fc", "pred")) for layer in model.layers)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype("float32")
    expected = torch_forward(torch.nn.Sequential(tv_model.features, tv_model.avgpool), x)
    output = keras_forward(model, x)
    if data_format == "channels_last":
        output = output.transpose(0, 3, 1, 2)
    assert relative_error(output, expected) <= RELATIVE_TOLERANCE


def test_export_round_trip(data_format, images):
    """A Keras model with its own random weights computes what its export computes."""
    keras.utils.set_random_seed(2)
    model = ak.AlexNet(num_classes=10, input_shape=any_size_shape())
    rng = np.random.default_rng(2)
    for variable in model.weights:
        if variable.path.endswith("bias"):  # Keras starts biases at zero
            variable.assign(rng.uniform(-0.05, 0.05, variable.shape).astype("float32"))
    state = W.to_torchvision_state_dict(model)
    net = torchvision.models.alexnet(num_classes=10).eval()
    assert list(state) == list(net.state_dict())
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    for side in SIDES:
        error = relative_error(keras_forward(model, images[side]), torch_forward(net, images[side]))
        print(f"{keras.backend.backend()} export {data_format} {side}x{side}: {error:.2e}")
        assert error <= RELATIVE_TOLERANCE, (data_format, side, error)


def test_export_reproduces_the_loaded_checkpoint_exactly(loaded, tv_model):
    model, _ = loaded
    state = ak.to_torchvision_state_dict(model)
    for key, value in tv_model.state_dict().items():
        assert np.array_equal(state[key], value.numpy()), key


def test_export_needs_the_classifier():
    with pytest.raises(W.WeightsError, match="include_top=False"):
        W.to_torchvision_state_dict(ak.AlexNet(include_top=False))


# --- Sources: mappings, .weights.h5, "imagenet" -----------------------------------


def test_mapping_sources(scratch, loaded, tv_model):
    _, expected = loaded
    numpy_zeros = {k: np.zeros(v.shape, "float32") for k, v in tv_model.state_dict().items()}
    assert W.load_torchvision_weights(scratch, numpy_zeros) is scratch
    assert all(not w.any() for w in scratch.get_weights())
    ak.load_torchvision_weights(scratch, tv_model.state_dict())  # torch tensors
    assert_same_weights(scratch, expected, "a state_dict of tensors loads like its .pth")


def test_convert_writes_a_keras_weights_file(converted, loaded, images, reference):
    model, expected = loaded
    assert converted.is_file()
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no partial file
    from_h5 = ak.AlexNet(weights=converted)
    assert_same_weights(from_h5, expected)
    assert relative_error(keras_forward(from_h5, images[224]), reference[224]) <= RELATIVE_TOLERANCE
    # It is the file Keras itself reads.
    from_h5.set_weights([np.zeros_like(w) for w in expected])
    from_h5.load_weights(converted)
    assert_same_weights(from_h5, expected)


def test_convert_checks_its_arguments(checkpoint, tmp_path):
    with pytest.raises(W.WeightsError, match=r"must end in '\.weights\.h5'"):
        convert_checkpoint(checkpoint, tmp_path / "alexnet.h5")
    with pytest.raises(W.WeightsError, match="classifies 1000 classes.*num_classes=10"):
        convert_checkpoint(checkpoint, tmp_path / "alexnet.weights.h5", num_classes=10)
    with pytest.raises(W.WeightsError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "alexnet.weights.h5")
    assert list(tmp_path.iterdir()) == []


def test_transfer_head_and_frozen_features(checkpoint, converted, loaded, tmp_path):
    _, expected = loaded
    model = ak.AlexNet(num_classes=10, weights=checkpoint, freeze_features=True)
    weights = model.get_weights()
    # Every layer but the last comes from the checkpoint.
    for got, want in zip(weights[:-2], expected[:-2], strict=True):
        assert np.array_equal(got, want)
    kernel, bias = weights[-2:]
    assert kernel.shape == (4096, 10) and bias.shape == (10,)
    limit = 1 / np.sqrt(4096)  # torch's nn.Linear(4096, 10): a fresh layer, the default init
    assert np.abs(kernel).max() <= limit and kernel.std() > limit / 3
    assert bias.all() and np.abs(bias).max() <= limit
    # freeze_features: the convolutions are fixed, the classifier learns.
    for index in range(1, 6):
        assert not model.get_layer(f"conv{index}").trainable
    assert {v.path for v in model.trainable_weights} == {
        f"{layer}/{p}" for layer in ("fc6", "fc7", "predictions") for p in ("kernel", "bias")
    }
    # The same from a converted file, which needs no torch.
    from_h5 = ak.AlexNet(num_classes=10, weights=converted)
    for got, want in zip(from_h5.get_weights()[:-2], expected[:-2], strict=True):
        assert np.array_equal(got, want)

    # The public loader is strict about the head unless told otherwise.
    with pytest.raises(W.WeightsError) as info:
        ak.load_torchvision_weights(model, checkpoint)
    message = str(info.value)
    for fragment in (
        str(checkpoint),
        "classifier.6.weight",
        "(1000, 4096)",
        "(10, 4096)",
        "skip_mismatched_head=True",
    ):
        assert fragment in message, message
    assert_same_weights(model, weights)
    model.get_layer("fc7").set_weights([np.zeros((4096, 4096)), np.zeros(4096)])
    ak.load_torchvision_weights(model, checkpoint, skip_mismatched_head=True)
    assert_same_weights(model, weights)

    # A 10-class .weights.h5 does not fit a 1000-class model's head either.
    ten = tmp_path / "ten.weights.h5"
    model.save_weights(ten)
    thousand, thousand_weights = loaded
    with pytest.raises(W.WeightsError) as info:
        ak.load_torchvision_weights(thousand, ten)
    message = str(info.value)
    for fragment in (str(ten), "predictions/kernel", "(4096, 10)", "(4096, 1000)"):
        assert fragment in message, message
    assert_same_weights(thousand, thousand_weights)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub cache; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(folder.parent)
    return folder


def test_imagenet_offline_and_not_cached(torch_home, loaded, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(downloads, "urlopen", offline)
    model, expected = loaded
    with pytest.raises(W.WeightsError) as info:
        ak.load_torchvision_weights(model, "imagenet")
    message = str(info.value)
    for fragment in ("alexnet-owt-7be5be79.pth", str(torch_home), W.IMAGENET1K_V1.url, "offline"):
        assert fragment in message, message
    assert_same_weights(model, expected)
    assert list(torch_home.iterdir()) == []


class _FakeResponse:
    """What alexnet_k3.downloads reads from urlopen: a few bytes that are not AlexNet."""

    def __init__(self, data):
        self._chunks = [data, b""]
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size=-1):
        return self._chunks.pop(0)


def test_imagenet_download_is_hash_checked(torch_home, loaded, monkeypatch):
    monkeypatch.setattr(downloads, "urlopen", lambda *a, **k: _FakeResponse(b"not alexnet"))
    model, expected = loaded
    with pytest.raises(W.WeightsError) as info:
        ak.load_torchvision_weights(model, "imagenet")
    message = str(info.value)
    assert "SHA-256" in message and "7be5be79" in message, message
    assert_same_weights(model, expected)
    assert list(torch_home.iterdir()) == []  # the bad download was not kept


def test_imagenet_reads_torch_hub_cache(torch_home, checkpoint, scratch, loaded, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("cached weights must not be downloaded again")

    monkeypatch.setattr(downloads, "urlopen", no_download)
    torch_home.mkdir(parents=True)
    cached = torch_home / W.IMAGENET1K_V1.file_name
    cached.symlink_to(checkpoint)
    # A file put into the cache by hand is hash-checked: this random one is refused...
    scratch.set_weights([np.zeros_like(w) for w in scratch.get_weights()])
    zeros = scratch.get_weights()
    _refuse(scratch, zeros, "imagenet", str(cached), "SHA-256", "7be5be79")
    # ...and read when the record's hash is its own.
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # The loader reads the record from its table registry at call time.
    record = dataclasses.replace(W.IMAGENET1K_V1, sha256_prefix=digest[:8])
    table = dataclasses.replace(ALEXNET, pretrained={"imagenet": record})
    monkeypatch.setattr(loader, "TABLES", (table,))
    ak.load_torchvision_weights(scratch, "imagenet")
    assert_same_weights(scratch, loaded[1])


def test_without_torch(monkeypatch, checkpoint, converted, scratch, loaded):
    # torch_files looks torch up through this function on every read.
    monkeypatch.setattr(torch_files, "_import_torch", lambda: None)
    for source, fragments in (
        ("imagenet", ("alexnet-k3 convert", "pip install")),
        (checkpoint, (str(checkpoint), "torch is not installed", "alexnet-k3 convert")),
    ):
        with pytest.raises(W.WeightsError) as info:
            ak.load_torchvision_weights(scratch, source)
        for fragment in fragments:
            assert fragment in str(info.value), str(info.value)
    scratch.set_weights([np.zeros_like(w) for w in scratch.get_weights()])
    ak.load_torchvision_weights(scratch, converted)  # .weights.h5 needs only h5py
    assert_same_weights(scratch, loaded[1])


# --- Bad input: refused, named, nothing changed ------------------------------------


class _Payload:
    """Unpickling this calls open(marker, "w"): a file appears if code runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _refuse(model, expected, source, *fragments, error=W.WeightsError):
    with pytest.raises(error) as info:
        ak.load_torchvision_weights(model, source)
    message = str(info.value)
    print(f"\n{type(info.value).__name__}: {message}")
    for fragment in fragments:
        assert fragment in message, message
    assert_same_weights(model, expected, f"weights changed by a failed load: {message}")
    return message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_run(tmp_path, loaded, monkeypatch):
    model, expected = loaded
    marker = tmp_path / "code_ran"
    archive = tmp_path / "torch_archive.pth"
    torch.save({"features.0.weight": _Payload(marker)}, archive)
    _refuse(model, expected, archive, str(archive), "refused", "GLOBAL io.open", "run code")
    # torch < 2.5 has no get_unsafe_globals_in_checkpoint: the pickle is decoded here.
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    _refuse(model, expected, archive, str(archive), "refused", "GLOBAL io.open", "run code")
    assert not marker.exists()
    # Plain pickles: protocol 2 (torch's own) reaches the forbidden global, newer
    # protocols stop earlier at an opcode torch's reader does not take; both name
    # a global, so both are refused.
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        plain = tmp_path / f"plain_pickle_{protocol}.pth"
        with open(plain, "wb") as f:
            pickle.dump({"features.0.weight": _Payload(marker)}, f, protocol=protocol)
        message = _refuse(model, expected, plain, str(plain), "refused", "run code")
        assert protocol != 2 or "GLOBAL io.open" in message, message
        assert not marker.exists()


def _prefix(path, size=1 << 20) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _write(path, data):
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _torch_file(path, obj, **kwargs):
    torch.save(obj, path, **kwargs)
    return path


def _pickle_file(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def _legacy_truncated(path):
    # torch.save's pre-zip format: pickles in a row, then raw storage bytes; the cut
    # goes through the last pickle (the storage keys).
    _torch_file(path, {"features.0.weight": torch.zeros(3)}, _use_new_zipfile_serialization=False)
    return _write(path, path.read_bytes()[:-30])


def _damaged_zip(path):
    _torch_file(path, {"features.0.weight": torch.zeros(3)})
    data = bytearray(path.read_bytes())
    second = data.find(b"PK\x03\x04", 4)  # the local header of the archive's second member
    data[second : second + 4] = b"XXXX"
    return _write(path, bytes(data))


def _zip_file(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    return path


def _h5_file(path, fill):
    import h5py

    with h5py.File(path, "w") as f:
        fill(f)
    return path


def _external_link(path):
    import h5py

    other = _h5_file(path.with_name("other_file.h5"), lambda f: f.create_dataset("x", (3,)))
    group = h5py.File(path, "w")
    with group:
        group.create_group("layers/dense/vars").attrs["name"] = "predictions"
        group["layers/dense/vars/0"] = h5py.ExternalLink(str(other), "x")
    return path


# (case id, build(tmp_path, files) -> source, message fragments, error class)
BAD_FILES = [
    ("missing", lambda t, f: t / "missing.pth", ("does not exist",), FileNotFoundError),
    ("directory", lambda t, f: t, ("not a file",), W.WeightsError),
    (
        "truncated",
        lambda t, f: _write(t / "truncated.pth", _prefix(f["checkpoint"])),
        ("truncated", "central directory"),
        W.WeightsError,
    ),
    ("empty", lambda t, f: _write(t / "empty.pth", b""), ("empty",), W.WeightsError),
    (
        "text",
        lambda t, f: _write(t / "notes.pth", "not a checkpoint\n"),
        ("not a readable torch checkpoint", "b'not '"),
        W.WeightsError,
    ),
    (
        "tensor",
        lambda t, f: _torch_file(t / "tensor.pth", torch.zeros(3)),
        ("holds a Tensor, not a state_dict",),
        W.WeightsError,
    ),
    (
        "nested",
        lambda t, f: _torch_file(
            t / "training_checkpoint.pth", {"state_dict": zeros_state(f["tv_model"]), "epoch": 3}
        ),
        ("under 'state_dict'",),
        W.WeightsError,
    ),
    (
        "keras-file",
        lambda t, f: _write(t / "model.keras", b""),
        ("keras.saving.load_model",),
        W.WeightsError,
    ),
    (
        "h5-text",
        lambda t, f: _write(t / "text.weights.h5", "not hdf5\n"),
        ("not a readable HDF5 file",),
        W.WeightsError,
    ),
    (
        "h5-truncated",
        lambda t, f: _write(t / "truncated.weights.h5", _prefix(f["converted"])),
        ("truncated",),
        W.WeightsError,
    ),
    (
        "h5-other",
        lambda t, f: _h5_file(t / "other.weights.h5", lambda h5: h5.create_dataset("data", (3,))),
        ("no 'layers' group",),
        W.WeightsError,
    ),
    ("not-a-path", lambda t, f: 42, ("type int",), W.WeightsError),
    # How a failed torch.load is told apart, by exception type and by the file.
    (
        "legacy-truncated",
        lambda t, f: _legacy_truncated(t / "legacy.pth"),
        ("truncated",),
        W.WeightsError,
    ),
    (
        "plain-pickle",
        lambda t, f: _pickle_file(t / "data.pth", {"features.0.weight": [1.0]}, protocol=5),
        ("not a readable torch checkpoint", "weights-only loader"),
        W.WeightsError,
    ),
    (
        "zip-other",
        lambda t, f: _zip_file(t / "archive.pth"),
        ("not a readable torch checkpoint", "without the data.pkl", "notes.txt"),
        W.WeightsError,
    ),
    (
        "zip-damaged",
        lambda t, f: _damaged_zip(t / "damaged.pth"),
        ("truncated or corrupt", "is damaged"),
        W.WeightsError,
    ),
    (
        "whole-module",
        lambda t, f: _torch_file(t / "module.pth", torch.nn.Linear(2, 2)),
        ("refused", "GLOBAL torch.nn.modules.linear.Linear"),
        W.WeightsError,
    ),
    (
        "h5-link",
        lambda t, f: _external_link(t / "link.weights.h5"),
        ("refers to data outside itself", "/layers/dense/vars/0"),
        W.WeightsError,
    ),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize(
    "build, fragments, error",
    [pytest.param(*case[1:], id=case[0]) for case in BAD_FILES],
)
def test_bad_files(build, fragments, error, tmp_path, checkpoint, converted, loaded, tv_model):
    model, expected = loaded
    files = {"checkpoint": checkpoint, "converted": converted, "tv_model": tv_model}
    source = build(tmp_path, files)
    named = (str(source),) if not isinstance(source, int) else ()
    _refuse(model, expected, source, *named, *fragments, error=error)


def test_weights_h5_layout(tmp_path):
    """`keras_h5_variables`, the one reader of Keras' private `.weights.h5` layout,
    finds exactly what the installed Keras writes: every layer with variables, by
    name, its variables in `layer.weights` order."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv_a")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(5, 3, name="conv_b")(x)  # the second Conv2D: conv2d_1
    x = keras.layers.BatchNormalization(name="norm")(x)  # trainable and non-trainable
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(6, name="predictions")(x)
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(4)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") for w in model.weights])
    path = tmp_path / "layout.weights.h5"
    model.save_weights(path)

    import h5py

    with h5py.File(path, "r") as file:
        variables = keras_h5_variables(file)
        found = {name: [d[()] for d in datasets] for name, datasets in variables.items()}
    expected = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
    assumption = (
        f"Keras {keras.__version__} no longer writes .weights.h5 as keras_h5_variables assumes "
        "(layers/<class>_<i>/vars/<n>, the layer's name in the 'name' attribute of vars, "
        "variables numbered in layer.weights order)"
    )
    assert sorted(found) == sorted(expected), (
        f"{assumption}: layers {sorted(found)}, expected {sorted(expected)}"
    )
    for name, arrays in expected.items():
        shapes = [a.shape for a in found[name]]
        assert shapes == [a.shape for a in arrays], f"{assumption}: {name} holds {shapes}"
        for got, want in zip(found[name], arrays, strict=True):
            assert np.array_equal(got, want), f"{assumption}: {name}'s values are in another order"


def test_another_architecture(tmp_path, loaded):
    model, expected = loaded
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    _refuse(
        model,
        expected,
        path,
        str(path),
        "missing keys: features.0.weight",
        "unexpected keys: conv1.weight",
        "another architecture",
    )


@pytest.mark.parametrize(
    "replace, fragments",
    [
        # The first bad key is named with both shapes, the rest counted.
        (
            {
                "features__3__weight": torch.zeros(192, 64, 3, 3),
                "classifier__4__weight": torch.zeros(4096, 4095),
            },
            ("features.3.weight", "(192, 64, 5, 5)", "(192, 64, 3, 3)", "1 more"),
        ),
        # Only the last layers are bad: the valid convolutions before them must not
        # be assigned either.
        ({"classifier__4__bias": torch.zeros(4095)}, ("classifier.4.bias", "(4096,)", "(4095,)")),
        ({"classifier__4__bias": None}, ("missing keys: classifier.4.bias",)),
        ({"features__13__weight": torch.zeros(3)}, ("unexpected keys: features.13.weight",)),
        ({"features__0__bias": torch.zeros(64, dtype=torch.int64)}, ("features.0.bias", "int64")),
    ],
    ids=["wrong-shapes", "wrong-last-shape", "missing-key", "extra-key", "int-dtype"],
)
def test_mismatched_state_dicts(tmp_path, loaded, tv_model, replace, fragments):
    model, expected = loaded
    state = zeros_state(tv_model, **replace)
    path = tmp_path / "mismatched.pth"
    torch.save(state, path)
    _refuse(model, expected, path, str(path), *fragments)
    _refuse(model, expected, state, "The given state_dict", *fragments)


def test_mapping_of_non_tensors(loaded):
    model, expected = loaded
    _refuse(model, expected, {"features.0.weight": [1.0, 2.0]}, "not a state_dict of tensors")


def test_model_of_another_variant(checkpoint):
    model = ak.AlexNet(variant="paper")
    before = model.get_weights()
    with pytest.raises(W.WeightsError, match=r"'conv1'.*variant='torchvision'"):
        ak.load_torchvision_weights(model, checkpoint)
    assert_same_weights(model, before)


def test_alexnet_weights_argument_reports_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet1k.pth"):
        ak.AlexNet(weights=str(tmp_path / "imagenet1k.pth"))


# --- The ImageNet record and its preprocessing -------------------------------------


def test_imagenet_record_matches_torchvision(loaded):
    ours = W.IMAGENET1K_V1
    theirs = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    assert ours.url == theirs.url
    assert ours.file_name == "alexnet-owt-7be5be79.pth"
    assert ours.file_name.split("-")[-1].startswith(ours.sha256_prefix)
    assert ours.num_params == theirs.meta["num_params"] == loaded[0].count_params()
    assert ours.min_size == theirs.meta["min_size"] == (min_input_size(),) * 2
    assert ours.num_classes == len(theirs.meta["categories"])
    assert ours.metrics["ImageNet-1K"] == theirs.meta["_metrics"]["ImageNet-1K"]
    transforms = theirs.transforms()
    assert [ours.crop_size] == list(transforms.crop_size) == [IMAGENET_CROP_SIZE]
    assert [ours.resize_size] == list(transforms.resize_size) == [IMAGENET_RESIZE_SIZE]
    assert ours.mean == tuple(transforms.mean) == IMAGENET_MEAN
    assert ours.std == tuple(transforms.std) == IMAGENET_STD
    assert ours.transforms["function"].endswith("imagenet_preprocess")


@pytest.mark.parametrize("shape", [(2, 300, 400), (1, 333, 250), (1, 200, 230)])
def test_imagenet_preprocess_matches_torchvision(data_format, shape):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    transform = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.transforms()

    def torchvision_batch(batch):
        out = np.stack([transform(torch.from_numpy(i).permute(2, 0, 1)).numpy() for i in batch])
        return to_data_format(out, data_format)

    # uint8, as decoded images arrive: torchvision rounds the resized image to
    # uint8, so rare values within float error of .5 may round the other way.
    output = keras.ops.convert_to_numpy(imagenet_preprocess(images))
    expected = torchvision_batch(images)
    assert output.shape == expected.shape
    difference = np.abs(output - expected)
    one_level = 1.0 / 255.0 / min(IMAGENET_STD)
    assert difference.max() <= one_level + 1e-5
    assert (difference > 1e-4).mean() <= 1e-3
    # float: no rounding anywhere (torchvision takes floats in [0, 1]).
    floats = images.astype("float32")
    output = keras.ops.convert_to_numpy(imagenet_preprocess(floats))
    expected = torchvision_batch(floats / 255.0)
    assert np.abs(output - expected).max() <= 1e-4
