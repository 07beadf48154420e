"""Test metrics from a model's logits: accuracy, loss, top-5, per class, confusion matrix.

Keras-free and framework-free (numpy, float64): `evaluation.evaluate_arrays`
(every Keras backend) and the plain PyTorch loop (`alexnet_k3.reference`) both
turn their logits into metrics here, so identical logits give identical figures.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix


def metrics_from_logits(logits, y, class_names, seconds: float) -> dict:
    """The metrics of logits `(N, classes)` against integer labels `y`.

    Args:
        logits: the model's outputs for every test image (before softmax).
        y: the true class of each image.
        class_names: one name per output, in order.
        seconds: how long predicting the logits took (for `eval_images_per_second`).

    Returns:
        A dict with `test_accuracy`, `test_loss` (cross-entropy, no label
        smoothing), `test_top5_accuracy` (more than 5 classes only),
        `per_class_accuracy` (class name -> accuracy over all its test images,
        None for a class without test images), `confusion_matrix` (rows = true
        class, columns = predicted), `class_names`, `test_images` and
        `eval_images_per_second`.

    Example:
        >>> metrics_from_logits([[2.0, 0.0], [0.0, 1.0]], [0, 0], ["a", "b"], 1.0)["test_accuracy"]
        0.5
    """
    logits = np.asarray(logits, dtype="float64")
    y = np.asarray(y, dtype="int64")
    num_classes = len(class_names)
    if logits.shape != (len(y), num_classes):
        raise ValueError(
            f"The model outputs shape {logits.shape[1:]} per image, but the dataset has "
            f"{num_classes} classes: evaluate a model trained on this dataset."
        )
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    predicted = logits.argmax(axis=1)
    confusion = confusion_matrix(y, predicted, labels=np.arange(num_classes))
    support = confusion.sum(axis=1)
    per_class = np.divide(
        np.diag(confusion), support, out=np.full(num_classes, np.nan), where=support > 0
    )
    metrics = {
        "test_accuracy": float((predicted == y).mean()),
        "test_loss": float(-log_probs[np.arange(len(y)), y].mean()),
        "per_class_accuracy": {
            name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, per_class)
        },
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        "test_images": int(len(y)),
        "eval_images_per_second": round(len(y) / seconds, 1) if seconds > 0 else None,
    }
    if num_classes > 5:
        top5 = np.argsort(-logits, axis=1)[:, :5]
        metrics["test_top5_accuracy"] = float((top5 == y[:, None]).any(axis=1).mean())
    return metrics
