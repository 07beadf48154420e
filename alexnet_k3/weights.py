"""torchvision <-> Keras weights for `AlexNet(variant="torchvision")`.

Conversion is a table of names (`_TABLE`: Keras layer <-> torchvision key prefix)
plus one layout hook per tensor kind:

- convolutions: torch `(out, in, kh, kw)` <-> Keras `(kh, kw, in, out)`;
- dense layers: torch `(out, in)` <-> Keras `(in, out)`;
- `fc6`, the first dense layer after the flatten: torch flattens the `(256, 6, 6)`
  feature map in C, H, W order, Keras' `Flatten` in H, W, C order under either
  image data format (it transposes channels-first maps first), so the input
  axis of the matrix is permuted as well.

Every checkpoint is untrusted. torch files are read with
`torch.load(weights_only=True)` (only tensors and plain containers, never code),
`.weights.h5` files with h5py; every key, shape and dtype is checked against the
model before the first weight is assigned, so a failed load leaves the model as
it was.

`IMAGENET1K_V1` records torchvision's ImageNet weights: where they come from,
their hash, size and accuracy, and the preprocessing they expect
(`alexnet_k3.preprocessing.imagenet_preprocess`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alexnet_k3 import preprocessing
from alexnet_k3.core import atomic_save


class WeightsError(ValueError):
    """A checkpoint or weights file that cannot be loaded into the model.

    The message names the file (or says it was a mapping), the problem and what
    to do about it.
    """


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """The weights path does not exist (also a `FileNotFoundError`)."""


# --- The ImageNet weights ---------------------------------------------------------


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of published weights with what is needed to use them correctly.

    Mirrors torchvision's `AlexNet_Weights` entry: the file, its hash, the model it
    fits, the preprocessing it was trained with and its reference accuracy.
    """

    name: str
    url: str
    # torch hub verifies the download against this prefix of its SHA-256 (the part
    # of the file name after the last dash).
    sha256_prefix: str
    num_params: int
    num_classes: int
    min_size: tuple[int, int]
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    metrics: dict = field(default_factory=dict)
    file_size_mb: float = 0.0
    gflops: float = 0.0
    recipe: str = ""

    @property
    def file_name(self) -> str:
        """Name of the checkpoint in the download URL and in torch hub's cache."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def transforms(self) -> dict:
        """The evaluation preprocessing: `imagenet_preprocess(images, **kwargs)` plus
        the constants it uses."""
        return {
            "function": "alexnet_k3.preprocessing.imagenet_preprocess",
            "resize_size": self.resize_size,
            "crop_size": self.crop_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
        }


IMAGENET1K_V1 = PretrainedWeights(
    name="IMAGENET1K_V1",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    sha256_prefix="7be5be79",
    num_params=61100840,
    num_classes=1000,
    min_size=(63, 63),
    # Preprocess with `alexnet_k3.preprocessing.imagenet_preprocess`: resize the
    # shorter side to 256 (bilinear, antialiased), centre crop 224, scale to [0, 1],
    # normalize with the ImageNet mean/std below. This is torchvision's
    # `AlexNet_Weights.IMAGENET1K_V1.transforms()`.
    resize_size=preprocessing.IMAGENET_RESIZE_SIZE,
    crop_size=preprocessing.IMAGENET_CROP_SIZE,
    mean=preprocessing.IMAGENET_MEAN,
    std=preprocessing.IMAGENET_STD,
    interpolation="bilinear",
    metrics={"ImageNet-1K": {"acc@1": 56.522, "acc@5": 79.066}},
    file_size_mb=233.087,
    gflops=0.714,
    recipe="https://github.com/pytorch/vision/tree/main/references/classification#alexnet-and-vgg",
)

PRETRAINED = {"imagenet": IMAGENET1K_V1}


# --- The name and layout table ------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    layer: str  # Keras layer name
    prefix: str  # torchvision state_dict key prefix
    kind: str  # "conv", "dense" or "flatten_dense"
    torch_shape: tuple[int, ...]  # torchvision's weight shape; 0 stands for num_classes

    @property
    def is_head(self) -> bool:
        return self.layer == "predictions"


# torch flattens avgpool's (256, 6, 6) output as C, H, W.
_FLATTEN_CHW = (256, 6, 6)

_TABLE = (
    _Entry("conv1", "features.0", "conv", (64, 3, 11, 11)),
    _Entry("conv2", "features.3", "conv", (192, 64, 5, 5)),
    _Entry("conv3", "features.6", "conv", (384, 192, 3, 3)),
    _Entry("conv4", "features.8", "conv", (256, 384, 3, 3)),
    _Entry("conv5", "features.10", "conv", (256, 256, 3, 3)),
    _Entry("fc6", "classifier.1", "flatten_dense", (4096, 256 * 6 * 6)),
    _Entry("fc7", "classifier.4", "dense", (4096, 4096)),
    _Entry("predictions", "classifier.6", "dense", (0, 4096)),
)
_FEATURES = tuple(e for e in _TABLE if e.kind == "conv")
_CLASSIFIER = tuple(e for e in _TABLE if e.kind != "conv")
_LAYER_NAMES = frozenset(e.layer for e in _TABLE)
_PARAMS = ("weight", "bias")  # torch names; Keras calls them kernel and bias


def _torch_shape(entry: _Entry, param: str, num_classes: int) -> tuple[int, ...]:
    shape = tuple(num_classes if d == 0 else d for d in entry.torch_shape)
    return shape if param == "weight" else shape[:1]


def _keras_shape(entry: _Entry, param: str, num_classes: int) -> tuple[int, ...]:
    shape = _torch_shape(entry, param, num_classes)
    if param == "bias":
        return shape
    if entry.kind == "conv":
        out, inp, kh, kw = shape
        return (kh, kw, inp, out)
    return shape[::-1]


def _torch_to_keras(entry: _Entry, param: str, array: np.ndarray) -> np.ndarray:
    if param == "bias":
        return array
    if entry.kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if entry.kind == "flatten_dense":
        channels, height, width = _FLATTEN_CHW
        out = array.shape[0]
        # (out, C, H*W) -> (out, H*W, C) -> transposed: (H*W*C, out)
        array = array.reshape(out, channels, height * width).transpose(0, 2, 1)
        return _transpose_2d(array.reshape(out, height * width * channels))
    return _transpose_2d(array)


def _keras_to_torch(entry: _Entry, param: str, array: np.ndarray) -> np.ndarray:
    if param == "bias":
        return array
    if entry.kind == "conv":
        return array.transpose(3, 2, 0, 1)
    if entry.kind == "flatten_dense":
        channels, height, width = _FLATTEN_CHW
        out = array.shape[1]
        # (H*W*C, out) -> transposed: (out, H*W, C) -> (out, C, H*W)
        array = _transpose_2d(array).reshape(out, height * width, channels)
        return array.transpose(0, 2, 1).reshape(out, channels * height * width)
    return _transpose_2d(array)


def _transpose_2d(array: np.ndarray, rows: int = 64, cols: int = 512) -> np.ndarray:
    """`array.T` as a new C-contiguous array, copied tile by tile.

    numpy's own transposing copy walks one side with a large stride and misses the
    cache on every element: tiles make it three times faster on fc6's 38M values.
    """
    out = np.empty(array.shape[::-1], dtype=array.dtype)
    for i in range(0, array.shape[0], rows):
        for j in range(0, array.shape[1], cols):
            out[j : j + cols, i : i + rows] = array[i : i + rows, j : j + cols].T
    return out


# --- The model side ----------------------------------------------------------------


@dataclass
class _ModelLayout:
    layers: dict[str, Any]  # table layer name -> keras layer, for the layers present
    has_top: bool
    num_classes: int | None
    name: str

    @property
    def entries(self) -> tuple[_Entry, ...]:
        return _TABLE if self.has_top else _FEATURES


def _describe_model(model) -> _ModelLayout:
    """Checks that `model` has torchvision AlexNet's layers and shapes."""
    present = {}
    for entry in _TABLE:
        try:
            present[entry.layer] = model.get_layer(entry.layer)
        except (ValueError, KeyError):
            continue
    hint = (
        "torchvision weights fit only `alexnet_k3.AlexNet(variant='torchvision')` models "
        f"(received model {getattr(model, 'name', type(model).__name__)!r})."
    )
    missing_features = [e.layer for e in _FEATURES if e.layer not in present]
    if missing_features:
        raise WeightsError(f"The model has no layer named {missing_features[0]!r}. {hint}")
    top = [e.layer for e in _CLASSIFIER if e.layer in present]
    if top and len(top) != len(_CLASSIFIER):
        missing = [e.layer for e in _CLASSIFIER if e.layer not in present]
        raise WeightsError(f"The model has the classifier layers {top} but not {missing}. {hint}")
    has_top = bool(top)
    num_classes = None
    if has_top:
        kernel_shape = _variable_shapes(present["predictions"])
        num_classes = kernel_shape[0][-1] if kernel_shape else None
    for entry in _TABLE if has_top else _FEATURES:
        layer = present[entry.layer]
        received = _variable_shapes(layer)
        expected = [_keras_shape(entry, p, num_classes or 0) for p in _PARAMS]
        if received != expected:
            raise WeightsError(
                f"The model's layer {entry.layer!r} has weights of shapes {received}, "
                f"torchvision's AlexNet needs {expected} there. {hint}"
            )
    return _ModelLayout(present, has_top, num_classes, getattr(model, "name", "model"))


def _variable_shapes(layer) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in w.shape) for w in layer.weights]


# --- Reading checkpoints -----------------------------------------------------------


@dataclass
class _Source:
    """An opened checkpoint: tensors keyed in `layout` ("torch" or "keras")."""

    label: str  # how messages name it
    layout: str
    tensors: Mapping[str, Any]
    path: pathlib.Path | None = None

    def key(self, entry: _Entry, param: str) -> str:
        if self.layout == "torch":
            return f"{entry.prefix}.{param}"
        return f"{entry.layer}/{'kernel' if param == 'weight' else 'bias'}"

    def expected_shape(self, entry: _Entry, param: str, num_classes: int) -> tuple[int, ...]:
        if self.layout == "torch":
            return _torch_shape(entry, param, num_classes)
        return _keras_shape(entry, param, num_classes)

    def head_classes(self) -> int | None:
        """The number of classes of the checkpoint's classifier, if it has one."""
        value = self.tensors.get(self.key(_TABLE[-1], "weight"))
        shape = _shape_of(value) if value is not None else None
        if shape is None or len(shape) != 2:
            return None
        return shape[0] if self.layout == "torch" else shape[1]

    def to_keras(self, entry: _Entry, param: str) -> np.ndarray:
        array = _to_numpy(self.tensors[self.key(entry, param)])
        if self.layout == "torch":
            array = _torch_to_keras(entry, param, array)
        return np.ascontiguousarray(array, dtype=np.float32)


def _shape_of(value) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def _dtype_name(value) -> str:
    dtype = getattr(value, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else type(value).__name__


def _is_float(value) -> bool:
    if hasattr(value, "is_floating_point"):  # torch.Tensor
        return bool(value.is_floating_point())
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    try:
        return np.dtype(dtype).kind == "f" or str(dtype) == "bfloat16"
    except TypeError:
        return str(dtype) in ("bfloat16", "float16", "float32", "float64")


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor: numpy has no bfloat16
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":  # e.g. ml_dtypes' bfloat16
        array = array.astype(np.float32)
    return array


def _import_torch():
    """torch, or None where it is not installed (jax-only or tensorflow-only setups)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def _open_source(source) -> Iterator[_Source]:
    """Opens `source` ("imagenet", a path or a mapping) without assigning anything."""
    if isinstance(source, Mapping):
        yield _mapping_source(source, "The given state_dict")
        return
    if isinstance(source, str) and source == "imagenet":
        yield _imagenet_source()
        return
    if not isinstance(source, (str, os.PathLike)):
        raise WeightsError(
            "Weights must be 'imagenet', the path of a torchvision .pth state_dict or of a "
            ".weights.h5 file, or a mapping of torchvision names to tensors; received an "
            f"object of type {type(source).__name__}."
        )
    path = pathlib.Path(source).expanduser()
    if not path.exists():
        raise WeightsFileNotFoundError(
            f"Weights file '{path}' does not exist. Expected 'imagenet', the path of a "
            "torchvision .pth state_dict, or a .weights.h5 file written by "
            "`alexnet-k3 convert`."
        )
    if not path.is_file():
        raise WeightsError(
            f"Weights path '{path}' is not a file. Give the checkpoint file itself "
            "(a torchvision .pth state_dict or a .weights.h5 file)."
        )
    if path.name.endswith(".keras"):
        raise WeightsError(
            f"'{path}' is a whole saved Keras model, not a weights file. Load it with "
            "`keras.saving.load_model`, or save its weights with `model.save_weights(...)`."
        )
    if path.name.endswith(".h5"):
        with _h5_source(path) as opened:
            yield opened
        return
    yield _torch_file_source(path)


def _mapping_source(mapping: Mapping, label: str, path=None) -> _Source:
    bad_keys = [k for k in mapping if not isinstance(k, str)]
    if bad_keys:
        raise WeightsError(
            f"{label} has a key {bad_keys[0]!r} of type {type(bad_keys[0]).__name__}; a "
            "state_dict maps torchvision parameter names (str) to tensors."
        )
    for key, value in mapping.items():
        if _shape_of(value) is None:
            hint = ""
            if isinstance(value, Mapping):
                hint = (
                    f" It looks like a training checkpoint with the weights under {key!r}: "
                    f"pass that entry, or re-save it with `torch.save(model.state_dict(), path)`."
                )
            hint = hint or (
                " Expected torch tensors or numpy arrays keyed by torchvision's names "
                "(features.0.weight, ...)."
            )
            raise WeightsError(
                f"{label} is not a state_dict of tensors: the value of {key!r} is a "
                f"{type(value).__name__}.{hint}"
            )
    return _Source(label, "torch", mapping, path)


def _torch_file_source(path: pathlib.Path, label: str | None = None) -> _Source:
    label = label or f"Checkpoint '{path}'"
    if path.stat().st_size == 0:
        raise WeightsError(f"{label} is empty (0 bytes). Download or copy it again.")
    torch = _import_torch()
    if torch is None:
        raise WeightsError(
            f"{label} is a torch file and torch is not installed here. Install it "
            "(`pip install 'alexnet-k3[torch]'`), or convert the file once on a machine "
            f"with torch: `alexnet-k3 convert --weights {path} --out "
            f"{_stem(path)}.weights.h5`, then pass the .weights.h5 file."
        )
    try:
        # weights_only: torch's restricted unpickler, which builds tensors and plain
        # containers and refuses everything else (no code runs). mmap reads lazily,
        # which halves the load time of the 233 MB file; only zip archives have it.
        state = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception as error:  # noqa: BLE001 - any failure means "not a readable checkpoint"
        raise WeightsError(_torch_load_message(label, error)) from error
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{label} holds a {type(state).__name__}, not a state_dict. Save the weights "
            "with `torch.save(model.state_dict(), path)`."
        )
    return _mapping_source(state, label, path)


def _torch_load_message(label: str, error: Exception) -> str:
    text = str(error)
    reason = text.strip().splitlines()[0] if text.strip() else "unexpected end of file"
    reason = reason.split(". ")[0].rstrip(".")
    if "Weights only load failed" in text:
        unsupported = [line.strip() for line in text.splitlines() if "Unsupported" in line]
        detail = unsupported[0].split("WeightsUnpickler error:")[-1] if unsupported else ""
        detail = detail.split(" was not an allowed")[0].strip()
        if detail.startswith("Unsupported operand"):
            # Not a pickle torch can read at all (e.g. text), rather than a refused object.
            return (
                f"{label} is not a readable torch checkpoint ({detail}). Expected a "
                "state_dict saved with `torch.save(model.state_dict(), path)`."
            )
        detail = f" ({detail})" if detail else ""
        return (
            f"{label} was refused: it holds pickled objects other than tensors{detail}, "
            "which could run code when loaded, so alexnet_k3 does not load it. A torchvision "
            "state_dict holds only tensors: if you trust the file, load it in torch "
            "yourself and re-save `model.state_dict()`."
        )
    if "central directory" in text or isinstance(error, EOFError):
        return (
            f"{label} is truncated or corrupt ({type(error).__name__}: {reason}). Download "
            "or copy it again."
        )
    return (
        f"{label} is not a readable torch checkpoint ({type(error).__name__}: {reason}). "
        "Expected a state_dict saved with `torch.save(model.state_dict(), path)`."
    )


@contextlib.contextmanager
def _h5_source(path: pathlib.Path) -> Iterator[_Source]:
    import h5py

    label = f"Weights file '{path}'"
    try:
        file = h5py.File(path, "r")
    except Exception as error:  # noqa: BLE001 - h5py raises OSError subclasses and more
        raise WeightsError(
            f"{label} is not a readable HDF5 file ({type(error).__name__}: {error}). "
            "Expected a .weights.h5 file written by `alexnet-k3 convert` or "
            "`model.save_weights`; if it is truncated, write it again."
        ) from error
    with file:
        try:
            tensors = _h5_tensors(file)
        except WeightsError as error:
            raise WeightsError(f"{label} {error}") from None
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
            raise WeightsError(
                f"{label} is damaged ({type(error).__name__}: {error}). Write it again with "
                "`alexnet-k3 convert`."
            ) from error
        yield _Source(label, "keras", tensors, path)


def _h5_tensors(file) -> dict[str, Any]:
    """Datasets of a `model.save_weights()` file, keyed `layer/kernel`, `layer/bias`.

    Keras stores layer `i` of a class under `layers/<class>_<i>/vars/<n>` and the
    layer's name in the `name` attribute of `vars`. Datasets are returned unread.
    """
    import h5py

    layers = file.get("layers")
    if not isinstance(layers, h5py.Group):
        raise WeightsError(
            "is not a Keras .weights.h5 file (it has no 'layers' group). Expected a file "
            "written by `alexnet-k3 convert` or `model.save_weights`."
        )
    tensors = {}
    for group_name, group in layers.items():
        variables = group.get("vars") if isinstance(group, h5py.Group) else None
        if not isinstance(variables, h5py.Group) or len(variables) == 0:
            continue
        name = variables.attrs.get("name", group_name)
        name = name.decode() if isinstance(name, bytes) else str(name)
        known = name in _LAYER_NAMES
        for index in sorted(variables, key=lambda k: (len(k), k)):
            param = {"0": "kernel", "1": "bias"}.get(index) if known else None
            tensors[f"{name}/{param}" if param else f"{name}/vars/{index}"] = variables[index]
    return tensors


def _imagenet_source() -> _Source:
    torch = _import_torch()
    record = IMAGENET1K_V1
    if torch is None:
        raise WeightsError(
            f"weights='imagenet' downloads torchvision's {record.file_name}, which needs "
            "torch: `pip install 'alexnet-k3[torch]'`. Without torch, convert it once on a "
            "machine with torch (`alexnet-k3 convert --weights imagenet --out "
            "alexnet_imagenet.weights.h5`) and pass weights='alexnet_imagenet.weights.h5'."
        )
    folder = pathlib.Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / record.file_name
    label = f"Checkpoint '{cached}' (weights='imagenet')"
    if cached.is_file():
        # torch hub checks the hash only when it downloads; a file copied into the
        # cache by hand (as the offline message below suggests) is checked here.
        digest = _sha256(cached)
        if not digest.startswith(record.sha256_prefix):
            raise WeightsError(
                f"{label} is not torchvision's file: its SHA-256 is {digest[:16]}..., "
                f"expected {record.sha256_prefix}... Delete it (it is then downloaded "
                f"again) or replace it with the file from {record.url}."
            )
        try:
            return _torch_file_source(cached, label)
        except WeightsError as error:
            raise WeightsError(f"{error} Or delete it to download it again.") from error
    try:
        # torch hub's download: to a temporary file, SHA-256 prefix checked, then moved
        # into the cache; the load is torch.load(weights_only=True).
        state = torch.hub.load_state_dict_from_url(
            record.url,
            model_dir=str(folder),
            map_location="cpu",
            progress=True,
            check_hash=True,
            file_name=record.file_name,
            weights_only=True,
        )
    except OSError as error:  # urllib's URLError and socket errors are OSErrors
        raise WeightsError(
            f"weights='imagenet': could not download {record.file_name} from {record.url} "
            f"({type(error).__name__}: {error}) and it is not in torch hub's cache. Without "
            f"internet, copy the file into '{folder}' (the cache folder: $TORCH_HOME/hub/"
            f"checkpoints), or pass the path of a copy as weights=..."
        ) from error
    except Exception as error:  # noqa: BLE001
        if "invalid hash value" in str(error):
            raise WeightsError(
                f"weights='imagenet': the download of {record.url} failed its SHA-256 check "
                f"({error}); nothing was written to '{folder}'. Try again; if it keeps "
                "failing, the download is being altered on the way."
            ) from error
        raise WeightsError(_torch_load_message(label, error)) from error
    return _mapping_source(state, label, cached)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stem(path: pathlib.Path) -> str:
    return path.name.split(".")[0] or "weights"


# --- Validation and assignment -------------------------------------------------------


def _plan(model_layout: _ModelLayout, source: _Source, skip_mismatched_head: bool):
    """Validates everything; returns [(layer, [kernel, bias])] in Keras layout."""
    entries = model_layout.entries
    expected_keys = [source.key(e, p) for e in entries for p in _PARAMS]
    # A model without a top takes the convolutions of a full checkpoint.
    ignored = (
        set() if model_layout.has_top else {source.key(e, p) for e in _CLASSIFIER for p in _PARAMS}
    )
    missing = [k for k in expected_keys if k not in source.tensors]
    expected_set = set(expected_keys)
    unexpected = [k for k in source.tensors if k not in expected_set and k not in ignored]
    if missing or unexpected:
        raise WeightsError(_key_message(source, missing, unexpected, model_layout))

    num_classes = model_layout.num_classes or 0
    skip_head = False
    problems = []
    for entry in entries:
        received = {p: _shape_of(source.tensors[source.key(entry, p)]) for p in _PARAMS}
        expected = {p: source.expected_shape(entry, p, num_classes) for p in _PARAMS}
        if entry.is_head and received != expected:
            classes = source.head_classes()
            other = {p: source.expected_shape(entry, p, classes or 0) for p in _PARAMS}
            if classes and received == other:
                if skip_mismatched_head:
                    skip_head = True
                    continue
                problems.append(_head_message(source, received, expected, classes, num_classes))
                continue
        for param in _PARAMS:
            key = source.key(entry, param)
            value = source.tensors[key]
            if received[param] != expected[param]:
                problems.append(
                    f"{key} has shape {received[param]}, expected {expected[param]} "
                    f"(layer {entry.layer!r})"
                )
            elif not _is_float(value):
                problems.append(
                    f"{key} has dtype {_dtype_name(value)}, expected a floating point tensor"
                )
    if problems:
        more = f" ({len(problems) - 1} more mismatch(es) after it)" if len(problems) > 1 else ""
        raise WeightsError(
            f"{source.label} does not fit the model: {problems[0]}{more}. {_shape_hint(source)}"
        )
    plan = []
    for entry in entries:
        if entry.is_head and skip_head:
            continue
        arrays = [source.to_keras(entry, p) for p in _PARAMS]
        plan.append((model_layout.layers[entry.layer], arrays))
    return plan


def _key_message(source: _Source, missing, unexpected, model_layout) -> str:
    def listing(keys):
        shown = ", ".join(keys[:4])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

    what = (
        "a torchvision AlexNet state_dict"
        if source.layout == "torch"
        else ("AlexNet(variant='torchvision') weights")
    )
    parts = []
    if missing:
        parts.append(f"missing keys: {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {listing(unexpected)}")
    wanted = [source.key(e, p) for e in model_layout.entries for p in _PARAMS]
    if (
        source.layout == "torch"
        and source.tensors
        and all(k.startswith("module.") for k in source.tensors)
    ):
        hint = (
            "Every key starts with 'module.' (saved from DataParallel): strip that prefix "
            "and pass the mapping."
        )
    elif len(missing) == len(wanted):
        hint = (
            "It looks like the weights of another architecture; only checkpoints of "
            "torchvision's AlexNet (`torchvision.models.alexnet`) fit."
        )
    elif source.layout == "torch":
        hint = "Expected the keys of `torchvision.models.alexnet().state_dict()`."
    else:
        hint = "Expected a file written by `alexnet-k3 convert`."
    return f"{source.label} is not {what}: {'; '.join(parts)}. {hint}"


def _head_message(source, received, expected, classes, num_classes) -> str:
    key = source.key(_TABLE[-1], "weight")
    return (
        f"{key} has shape {received['weight']}, expected {expected['weight']}: the "
        f"checkpoint classifies {classes} classes and the model num_classes={num_classes}. "
        f"Build the model with num_classes={classes} to keep that classifier, or pass "
        "skip_mismatched_head=True (as `AlexNet(weights=..., num_classes=N)` does) to load "
        "every other layer and keep the model's new `predictions` layer"
    )


def _shape_hint(source: _Source) -> str:
    if source.layout == "torch":
        return "Expected the float tensors of `torchvision.models.alexnet().state_dict()`."
    return "Expected a file written by `alexnet-k3 convert` for AlexNet(variant='torchvision')."


def _assign(plan) -> None:
    for layer, arrays in plan:
        layer.set_weights(arrays)


def _load(model, source, *, skip_mismatched_head: bool):
    layout = _describe_model(model)
    with _open_source(source) as opened:
        plan = _plan(layout, opened, skip_mismatched_head)
    _assign(plan)
    return model


# --- Public API ---------------------------------------------------------------------


def load_torchvision_weights(model, source, *, skip_mismatched_head: bool = False):
    """Loads torchvision AlexNet weights into a Keras `AlexNet(variant="torchvision")`.

    Nothing is assigned until the whole checkpoint has been checked against the
    model: after any error the model's weights are unchanged.

    Args:
        model: a model built by `alexnet_k3.AlexNet(variant="torchvision")` (any
            `num_classes`, `include_top`, input size or image data format).
        source: one of
            - `"imagenet"`: torchvision's `AlexNet_Weights.IMAGENET1K_V1`
              (`IMAGENET1K_V1`), downloaded by torch hub with its SHA-256 check into
              `torch.hub.get_dir()/checkpoints/`, or read from there when cached;
            - the path of a torchvision checkpoint (`.pth`/`.pt`), a state_dict saved
              with `torch.save(model.state_dict(), path)`; read with
              `torch.load(weights_only=True)`, which refuses any pickled code;
            - the path of a `.weights.h5` file written by `convert_checkpoint`
              (`alexnet-k3 convert`), which needs no torch;
            - a mapping of torchvision names (`features.0.weight`, ...) to torch
              tensors or arrays.
        skip_mismatched_head: the checkpoint's classifier (`classifier.6`) has to
            match the model's `predictions` layer unless this is True; then a
            classifier for another number of classes is skipped and `predictions`
            keeps its current (fresh) weights: transfer learning, as
            `AlexNet(weights=..., num_classes=N)` does. A model built with
            `include_top=False` takes only the convolutions in either case.

    Returns:
        `model`, with its weights replaced.

    Raises:
        WeightsError (a ValueError): a file that is missing (also a
        `FileNotFoundError`), unreadable, truncated, carrying pickled objects other
        than tensors, of another architecture, with a missing, unexpected or
        wrongly shaped tensor, or a model that is not torchvision's AlexNet. The
        message names the file and the first bad key with the expected and
        received shapes.

    Example:
        >>> import torchvision
        >>> model = alexnet_k3.AlexNet()
        >>> state = torchvision.models.alexnet().state_dict()
        >>> alexnet_k3.load_torchvision_weights(model, state)  # or a .pth path
    """
    return _load(model, source, skip_mismatched_head=skip_mismatched_head)


def load_weights(model, weights) -> None:
    """`AlexNet(weights=...)`'s loader: `"imagenet"`, a `.pth`/`.pt` or a `.weights.h5` path.

    A `predictions` layer whose number of classes differs from the checkpoint's is
    left freshly initialized (every other layer is loaded); a model without a top
    takes only the convolutions. Any other mismatch raises `WeightsError` with the
    model unchanged. See `load_torchvision_weights`.
    """
    _load(model, weights, skip_mismatched_head=True)


def to_torchvision_state_dict(model) -> dict[str, np.ndarray]:
    """The weights of a Keras torchvision-variant AlexNet as a torchvision state_dict.

    Args:
        model: an `AlexNet(variant="torchvision", num_classes=N)` with its top.

    Returns:
        A dict of float32 numpy arrays, in torchvision's key order and layouts.
        `torch.nn.Module.load_state_dict` takes tensors, not arrays, so wrap them
        with `torch.from_numpy`; the torchvision model then computes what the Keras
        model computes.

    Example:
        >>> state = alexnet_k3.to_torchvision_state_dict(model)
        >>> net = torchvision.models.alexnet(num_classes=model.output_shape[-1])
        >>> net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    """
    layout = _describe_model(model)
    if not layout.has_top:
        raise WeightsError(
            "The model was built with include_top=False, but torchvision's AlexNet always "
            "has its classifier (classifier.1/4/6): export a model built with include_top=True."
        )
    state = {}
    for entry in _TABLE:
        arrays = layout.layers[entry.layer].get_weights()
        for param, array in zip(_PARAMS, arrays, strict=True):
            array = _keras_to_torch(entry, param, np.asarray(array, dtype=np.float32))
            state[f"{entry.prefix}.{param}"] = np.ascontiguousarray(array)
    return state


def convert_checkpoint(source, out, *, num_classes: int | None = None) -> pathlib.Path:
    """Converts a torchvision AlexNet checkpoint into a Keras `.weights.h5` file.

    The file is what `AlexNet(num_classes=N).save_weights(out)` writes, so it loads
    without torch, on any backend: `AlexNet(weights=out)` or `model.load_weights(out)`.
    It is written to a temporary name first and renamed, so a failed conversion
    leaves no partial file.

    Args:
        source: `"imagenet"`, a `.pth` path or a mapping, as for
            `load_torchvision_weights`.
        out: path of the file to write; must end in `.weights.h5`.
        num_classes: the checkpoint's number of classes; None reads it from
            `classifier.6`. A different value is an error (a converted file never
            carries a random classifier).

    Returns:
        The path written.

    Example:
        >>> convert_checkpoint("imagenet", "alexnet_imagenet.weights.h5")
        >>> model = alexnet_k3.AlexNet(weights="alexnet_imagenet.weights.h5")
    """
    from alexnet_k3.model import AlexNet

    out = pathlib.Path(out).expanduser()
    if not out.name.endswith(".weights.h5"):
        raise WeightsError(
            f"The output file '{out}' must end in '.weights.h5' (Keras' weights format), "
            f"e.g. '{out.with_name(_stem(out) + '.weights.h5')}'."
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise WeightsError(f"num_classes must be a positive integer, received {num_classes!r}.")
    with _open_source(source) as opened:
        found = opened.head_classes()
        if num_classes is not None and found is not None and found != num_classes:
            raise WeightsError(
                f"{opened.label} classifies {found} classes, but num_classes={num_classes} "
                f"was requested. Pass num_classes={found} (or leave it unset)."
            )
        model = AlexNet(num_classes=num_classes or found or 1000)
        plan = _plan(_describe_model(model), opened, skip_mismatched_head=False)
    _assign(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(model.save_weights, out)
    return out
