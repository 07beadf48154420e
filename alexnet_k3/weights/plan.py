"""Checking a checkpoint against a model, all of it, before anything is assigned.

A load is all-or-nothing: `describe_model` checks that the model has the table's
layers and shapes, `make_plan` checks every key, shape and dtype of the source
and converts the arrays, and only then does `assign` touch a variable. A failed
load therefore leaves the model as it was, and the message names the first bad
key with the expected and received shapes (and counts the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alexnet_k3.weights.errors import WeightsError
from alexnet_k3.weights.layouts import PARAMS, ArchitectureTable, Entry
from alexnet_k3.weights.sources import Source, dtype_name, is_float, shape_of


@dataclass
class ModelLayout:
    """A model as the table sees it."""

    table: ArchitectureTable
    layers: dict[str, Any]  # table layer name -> keras layer, for the layers present
    has_top: bool
    num_classes: int | None
    name: str

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.table.entries if self.has_top else self.table.features


def describe_model(model, table: ArchitectureTable) -> ModelLayout:
    """Checks that `model` has the layers and shapes of `table`'s architecture."""
    present = {}
    for entry in table.entries:
        try:
            present[entry.layer] = model.get_layer(entry.layer)
        except (ValueError, KeyError):
            continue
    hint = (
        f"torchvision weights fit only `alexnet_k3.{table.keras_model}` models "
        f"(received model {getattr(model, 'name', type(model).__name__)!r})."
    )
    missing_features = [e.layer for e in table.features if e.layer not in present]
    if missing_features:
        raise WeightsError(f"The model has no layer named {missing_features[0]!r}. {hint}")
    top = [e.layer for e in table.top if e.layer in present]
    if top and len(top) != len(table.top):
        missing = [e.layer for e in table.top if e.layer not in present]
        raise WeightsError(f"The model has the classifier layers {top} but not {missing}. {hint}")
    has_top = bool(top)
    num_classes = None
    if has_top:
        kernel_shape = variable_shapes(present[table.head])
        num_classes = kernel_shape[0][-1] if kernel_shape else None
    layout = ModelLayout(table, present, has_top, num_classes, getattr(model, "name", "model"))
    for entry in layout.entries:
        received = variable_shapes(present[entry.layer])
        expected = [entry.keras_shape_of(p, num_classes or 0) for p in PARAMS]
        if received != expected:
            raise WeightsError(
                f"The model's layer {entry.layer!r} has weights of shapes {received}, "
                f"{table.title} needs {expected} there. {hint}"
            )
    return layout


def variable_shapes(layer) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in w.shape) for w in layer.weights]


def make_plan(layout: ModelLayout, source: Source, skip_mismatched_head: bool):
    """Validates everything; returns [(layer, [kernel, bias])] in Keras layout."""
    entries = layout.entries
    skip_head = check_source(
        layout.table, layout.has_top, layout.num_classes, source, skip_mismatched_head
    )
    return [
        (layout.layers[e.layer], [source.to_keras(layout.table, e, p) for p in PARAMS])
        for e in entries
        if not (skip_head and e.layer == layout.table.head)
    ]


def check_source(
    table: ArchitectureTable,
    has_top: bool,
    num_classes: int | None,
    source: Source,
    skip_mismatched_head: bool,
) -> bool:
    """Checks every key, shape and dtype of `source` against a model of `table` (with or
    without its top, of `num_classes`); returns whether its classifier is to be skipped
    (another number of classes, with `skip_mismatched_head`)."""
    entries = table.entries if has_top else table.features
    expected_keys = [source.key(e, p) for e in entries for p in PARAMS]
    # A model without a top takes the convolutions of a full checkpoint.
    ignored = set() if has_top else {source.key(e, p) for e in table.top for p in PARAMS}
    missing = [k for k in expected_keys if k not in source.tensors]
    expected_set = set(expected_keys)
    unexpected = [k for k in source.tensors if k not in expected_set and k not in ignored]
    if missing or unexpected:
        raise WeightsError(_key_message(table, source, missing, unexpected, expected_keys))

    num_classes = num_classes or 0
    skip_head = False
    problems = []
    for entry in entries:
        received = {p: shape_of(source.tensors[source.key(entry, p)]) for p in PARAMS}
        expected = {p: source.expected_shape(entry, p, num_classes) for p in PARAMS}
        if entry.layer == table.head and received != expected:
            classes = source.head_classes(table)
            other = {p: source.expected_shape(entry, p, classes or 0) for p in PARAMS}
            if classes and received == other:
                if skip_mismatched_head:
                    skip_head = True
                    continue
                problems.append(
                    _head_message(table, source, received, expected, classes, num_classes)
                )
                continue
        for param in PARAMS:
            key = source.key(entry, param)
            value = source.tensors[key]
            if received[param] != expected[param]:
                problems.append(
                    f"{key} has shape {received[param]}, expected {expected[param]} "
                    f"(layer {entry.layer!r})"
                )
            elif not is_float(value):
                problems.append(
                    f"{key} has dtype {dtype_name(value)}, expected a floating point tensor"
                )
    if problems:
        more = f" ({len(problems) - 1} more mismatch(es) after it)" if len(problems) > 1 else ""
        raise WeightsError(
            f"{source.label} does not fit the model: {problems[0]}{more}. "
            f"{_shape_hint(table, source)}"
        )
    return skip_head


def assign(plan) -> None:
    for layer, arrays in plan:
        layer.set_weights(arrays)


def _key_message(table, source: Source, missing, unexpected, wanted) -> str:
    def listing(keys):
        shown = ", ".join(keys[:4])
        return shown + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")

    torch_layout = source.layout == "torch"
    what = f"a state_dict of {table.title}" if torch_layout else f"{table.keras_model} weights"
    parts = []
    if missing:
        parts.append(f"missing keys: {listing(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {listing(unexpected)}")
    if torch_layout and source.tensors and all(k.startswith("module.") for k in source.tensors):
        hint = (
            "Every key starts with 'module.' (saved from DataParallel): strip that prefix "
            "and pass the mapping."
        )
    elif len(missing) == len(wanted):
        hint = (
            "It looks like the weights of another architecture; only checkpoints of "
            f"{table.title} (`{table.torch_builder}`) fit."
        )
    elif torch_layout:
        hint = f"Expected the keys of `{table.torch_builder}().state_dict()`."
    else:
        hint = "Expected a file written by `alexnet-k3 convert`."
    return f"{source.label} is not {what}: {'; '.join(parts)}. {hint}"


def _head_message(table, source: Source, received, expected, classes, num_classes) -> str:
    key = source.key(table.head_entry, "weight")
    return (
        f"{key} has shape {received['weight']}, expected {expected['weight']}: the "
        f"checkpoint classifies {classes} classes and the model num_classes={num_classes}. "
        f"Build the model with num_classes={classes} to keep that classifier, or pass "
        f"skip_mismatched_head=True (as `{table.keras_builder}(weights=..., num_classes=N)` "
        "does) to load "
        f"every other layer and keep the model's new `{table.head}` layer"
    )


def _shape_hint(table, source: Source) -> str:
    if source.layout == "torch":
        return f"Expected the float tensors of `{table.torch_builder}().state_dict()`."
    return f"Expected a file written by `alexnet-k3 convert` for {table.keras_model}."
