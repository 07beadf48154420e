"""Evaluation's metrics, checked against scikit-learn's on the same predictions."""

import keras
import numpy as np
import pytest
from sklearn import metrics as sk

from alexnet_k3.evaluation import evaluate_arrays

CLASSES = ("a", "b", "c", "d", "e", "f", "g")  # "g" has no test image


def _logits_model(num_classes):
    """A model whose outputs are its inputs: the test chooses the logits."""
    return keras.Sequential([keras.Input((num_classes,)), keras.layers.Identity()])


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASSES) - 1, 200)
    # Logits that are right about half the time, with no ties.
    logits = rng.standard_normal((200, len(CLASSES))).astype("float32")
    logits[np.arange(200), y] += rng.choice([0.0, 3.0], 200)
    metrics = evaluate_arrays(_logits_model(len(CLASSES)), logits, y, CLASSES, batch_size=64)

    predicted = logits.argmax(axis=1)
    labels = np.arange(len(CLASSES))
    assert 0.3 < sk.accuracy_score(y, predicted) < 0.9  # neither trivial nor perfect
    assert metrics["test_accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    expected = sk.confusion_matrix(y, predicted, labels=labels)
    np.testing.assert_array_equal(metrics["confusion_matrix"], expected)
    recall = sk.recall_score(y, predicted, labels=labels, average=None, zero_division=np.nan)
    for name, value in zip(CLASSES, recall):
        got = metrics["per_class_accuracy"][name]
        agree = got is None if np.isnan(value) else got == pytest.approx(value)
        assert agree, f"class {name}: accuracy {got}, scikit-learn's recall {value}"
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits.astype("float64")))
    assert metrics["test_loss"] == pytest.approx(
        sk.log_loss(y, probabilities, labels=labels), rel=1e-6
    )
    assert metrics["test_top5_accuracy"] == pytest.approx(
        sk.top_k_accuracy_score(y, logits, k=5, labels=labels)
    )
    assert metrics["test_images"] == 200


def test_report_tables_escape_class_names_as_predict_does():
    import re

    from alexnet_k3.report import _report_markdown

    names = ("new\nline", "a|b", "plain")  # folder names may hold either
    y = np.array([0, 1, 2, 2])
    logits = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    metrics = evaluate_arrays(_logits_model(3), logits, y, names)
    metrics.update(dataset="folder", model="runs/a|b/model.keras")
    text = _report_markdown(metrics, None, [])
    table = text.split("## Per class (all test images)\n\n")[1].strip().splitlines()
    assert len(table) == 2 + len(names)  # header, rule, one line per class
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in table[2:]]
    assert [c[0].strip() for c in cells] == ["new line", "a\\|b", "plain"]
    assert all(len(c) == 4 for c in cells)
    assert "| model | runs/a\\|b/model.keras |" in text
