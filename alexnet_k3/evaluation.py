"""Evaluation over every test image: accuracy, loss, top-5, per-class accuracy, confusion matrix.

Metrics are computed in numpy (float64) from the model's logits, so every
backend reports them identically for identical logits.
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import keras

from alexnet_k3 import backend, datasets, runs
from alexnet_k3.core import ARCHS, DATASETS, option_name
from alexnet_k3.metrics import metrics_from_logits


def load_model(path) -> keras.Model:
    """Loads a `.keras` model written by this package, on the active backend.

    Registers the package's custom layers first (LRN, adaptive pooling,
    pad-crop augmentation) and its optimizer (`TorchSGD`), so a model trained on
    one backend loads on another.
    """
    import alexnet_k3.layers  # noqa: F401  (registers the custom layers)
    import alexnet_k3.optimizers  # noqa: F401  (and the optimizer saved with a trained model)
    import alexnet_k3.preprocessing  # noqa: F401

    backend.keep_tensorflow_unimported()  # Keras's loading would import it on torch/jax
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No model file at {path}. Expected a .keras file written by `alexnet-k3 train` "
            "(RUN_DIR/model.keras)."
        )
    if path.suffix != ".keras":
        raise ValueError(
            f"{path} is not a .keras model file (suffix {path.suffix!r}). Give the model.keras "
            "that `alexnet-k3 train` wrote."
        )
    if not zipfile.is_zipfile(path):
        # Keras reports such a file as "File not found" although it exists.
        size = path.stat().st_size
        raise ValueError(
            f"{path} is not a complete .keras model: it is {size} bytes"
            + (" (empty)" if size == 0 else "")
            + " and not a zip archive, which .keras files are. It was probably cut short "
            "(an interrupted copy or download): copy it again, or train again."
        )
    try:
        model = keras.saving.load_model(path)
    except MemoryError:
        raise
    except Exception as error:  # KeyError, ValueError, OSError...: the archive is wrong
        raise ValueError(
            f"{path} could not be read as a Keras model ({type(error).__name__}: {error}). "
            "Expected a model.keras written by `alexnet-k3 train` (or keras.Model.save); "
            "this zip is damaged or holds something else: copy it again, or train again."
        ) from error
    _check_runs_here(model, path)
    # The saved compile config holds the jit setting the training backend resolved
    # ("auto" is True on jax): on torch that would mean a torch.compile of the whole
    # model, minutes on a CPU before the first prediction. None lets Keras resolve
    # "auto" again for the backend running now.
    model.jit_compile = None
    return model


def _check_runs_here(model, path) -> None:
    """A clear error for a model whose layout the active backend cannot run on this device."""
    layers, formats = list(model.layers), set()
    while layers:
        layer = layers.pop()
        layers.extend(getattr(layer, "layers", []))  # nested models: the network itself
        if isinstance(layer, keras.layers.Conv2D):
            formats.add(layer.data_format)
    for data_format in sorted(formats):
        try:
            backend.check_image_data_format(data_format)
        except ValueError:
            raise ValueError(
                f"{path} was built with {data_format} convolutions (the torch backend's "
                f"default layout), which the {backend.name()} backend cannot run on this "
                "device. Use it with --backend torch or --backend jax, or on a GPU."
            ) from None


def evaluate_arrays(model, x, y, class_names, batch_size=256) -> dict:
    """Evaluates `model` on images `x` (uint8 as the model takes them) and integer labels `y`.

    Returns:
        `metrics.metrics_from_logits` of the model's logits: a dict with
        `test_accuracy`, `test_loss` (cross-entropy, no label smoothing),
        `test_top5_accuracy` (more than 5 classes only), `per_class_accuracy`
        (class name -> accuracy over all its test images), `confusion_matrix`
        (rows = true class, columns = predicted), `test_images` and
        `eval_images_per_second`.
    """
    start = time.perf_counter()
    feed = backend.array_feed(x, batch_size=batch_size)
    logits = model.predict(**feed, verbose=0)
    return metrics_from_logits(logits, y, class_names, time.perf_counter() - start)


def evaluate(
    model,
    dataset=None,
    *,
    data_dir=None,
    batch_size=256,
    out=None,
    test_split=None,
    strict=False,
    arch=None,
) -> dict:
    """Evaluates a trained model on a dataset's whole test split, on the active backend.

    Args:
        model: a `keras.Model` or the path of a `.keras` file from `alexnet-k3 train`
            (trained on any backend).
        dataset: "digits", "cifar10" or "folder"; None: the dataset of the run the
            model file comes from (its `config.json`, with its `data_dir`; said on
            stderr), else "digits".
        data_dir: where CIFAR-10 lies (see `alexnet_k3.datasets.load_cifar10`), or the
            image folder (see `alexnet_k3.datasets.load_folder`; its images are cached
            at the model's input size; default: the training run's folder).
        batch_size: images per prediction batch.
        out: folder for `metrics.json`, `report.md` and the plots; None writes nothing.
        test_split: folder without train/test subfolders: the share held out for
            testing (default: the training run's, saved beside the model, else 0.2;
            the run's seed is used too, so the test images are the run's).
        strict: folder: stop at a file that is not a readable image.
        arch: None, or the network the model must hold ("alexnet", "vgg16"):
            a model of another one is refused before any data is read.

    Returns:
        The metrics dict (see `evaluate_arrays`), with `backend`, `dataset`, `model`
        and `arch` (the network the model holds).

    Example:
        >>> metrics = evaluate("runs/digits/model.keras")  # on the run's own dataset
        >>> sorted(metrics["per_class_accuracy"])[:3]
        ['0', '1', '2']
    """
    folder = {"test_split": test_split, "strict": strict, "arch": arch}
    if out is None:
        return _evaluate(model, dataset, data_dir, batch_size, None, folder)
    # One writer per folder; and never over another run's results.
    runs.claim_for_evaluation(Path(out))
    with runs.lock(Path(out), "evaluate"):
        runs.claim_for_evaluation(Path(out))
        return _evaluate(model, dataset, data_dir, batch_size, Path(out), folder)


def _evaluate(model, dataset, data_dir, batch_size, out, folder) -> dict:
    path = None if isinstance(model, keras.Model) else str(model)
    source = path or model.name
    if path is not None:
        model = load_model(path)
    held = _arch_of(model, source, folder["arch"])
    dataset, data_dir = _dataset_of(path, dataset, data_dir)
    data = _load_data(model, path, dataset, data_dir, folder)
    metrics = evaluate_arrays(model, data.x_test, data.y_test, data.class_names, batch_size)
    metrics.update(
        backend=backend.name(),
        device=backend.device_name(),
        versions=backend.versions(),
        dataset=dataset,
        model=source,
    )
    metrics["arch"] = held
    trained = _json_beside(path, "metrics.json")
    for key in ("variant", "mode", "epochs", "image_size", "weights", "precision"):
        if key in trained:
            metrics[key] = trained[key]
    if trained:
        metrics["trained_on_backend"] = trained.get("backend")
    if out is not None:
        from alexnet_k3 import report

        report.write_run(out, metrics, None, model.predict_on_batch, data)
    return metrics


def _arch_of(model, source: str, expected: str | None) -> str | None:
    """The architecture `model` holds (its network is the layer named after it, as
    `model.build_classifier` names it); refuses one other than `expected`."""
    names = {layer.name for layer in model.layers}
    held = next((arch for arch in ARCHS if arch in names), None)
    if expected is not None and held != expected:
        raise ValueError(
            f"{option_name('arch', expected)} was asked for, but {source} holds "
            f"{'a ' + held if held else 'no known'} network. Leave out "
            f"{option_name('arch')} or give a {expected} model."
        )
    return held


def _load_data(model, path: str | None, dataset: str, data_dir, folder: dict):
    """The test data; a folder cached at the model's input side, split as its run was
    (the run's config.json beside the model file at `path`, if any)."""
    if dataset == "folder":
        saved = _json_beside(path, "config.json")
        if saved.get("dataset") != "folder":
            saved = {}
        test_split = folder["test_split"] or saved.get("test_split", 0.2)
        seed = saved.get("seed", 0)
        if type(seed) is not int or seed < 0:  # config.json is a file: checked before use
            raise ValueError(
                f"{Path(path).with_name('config.json')} holds seed={seed!r}, expected an "
                "integer >= 0: it is damaged. Restore it, or train again."
            )
        data = datasets.load_dataset(
            "folder",
            data_dir=data_dir or saved.get("data_dir"),
            image_size=int(model.inputs[0].shape[1]),
            test_split=test_split,
            seed=seed,
            strict=folder["strict"],
        )
    else:
        data = datasets.load_dataset(dataset, data_dir=data_dir)
    names = runs.saved_class_names(path) if path is not None else None
    if names is not None and list(data.class_names) != names:
        raise datasets.DatasetError(
            f"The model {path} was trained on the classes {names}, but the test data has "
            f"{list(data.class_names)}. Evaluate it on data with the same class folders "
            f"(or the dataset it was trained on).{_run_dataset_hint(path, dataset)}"
        )
    outputs = model.outputs[0].shape[-1]
    if outputs != len(data.class_names):
        raise datasets.DatasetError(
            f"The model {path or model.name} outputs {outputs} classes, but the {dataset} "
            f"test data has {len(data.class_names)}: evaluate a model trained on this "
            f"dataset.{_run_dataset_hint(path, dataset)}"
        )
    return data


def _dataset_of(path: str | None, dataset, data_dir):
    """`(dataset, data_dir)` to test on: as given, else the model's run's (said on stderr),
    else the digits."""
    if dataset is not None:
        return dataset, data_dir
    saved = _json_beside(path, "config.json")
    name, saved_dir = saved.get("dataset"), saved.get("data_dir")
    if name not in DATASETS:  # no run beside the model (or not one of ours): the default
        return "digits", data_dir
    data_dir = data_dir or (saved_dir if isinstance(saved_dir, str) else None)
    where = f", {option_name('data_dir', data_dir)}" if data_dir else ""
    print(
        f"evaluating on {option_name('dataset', name)}{where}: the dataset of the model's "
        f"run ({Path(path).with_name('config.json')}); give {option_name('dataset')} to "
        "choose another",
        file=sys.stderr,
    )
    return name, data_dir


def _run_dataset_hint(path: str | None, dataset: str) -> str:
    """A sentence naming the options that test on the model's run's dataset, where it
    is not `dataset` ("" where unknown)."""
    saved = _json_beside(path, "config.json")
    name, saved_dir = saved.get("dataset"), saved.get("data_dir")
    if name not in DATASETS or name == dataset:
        return ""
    options = option_name("dataset", name)
    if isinstance(saved_dir, str):
        options += f" {option_name('data_dir', saved_dir)}"
    return f" Its run trained on {name}: give {options}."


def _json_beside(model_path: str | None, name: str) -> dict:
    """The JSON object in file `name` beside a model file ({} where there is none)."""
    if model_path is None:
        return {}
    try:
        value = json.loads(Path(model_path).with_name(name).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
