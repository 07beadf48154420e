"""What a run leaves for people: metrics.json, history.csv, report.md, PNG plots, compare tables."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from alexnet_k3 import contention
from alexnet_k3.core import ARCH_TITLES, atomic_write_text, read_json

# (title, metrics key, decimals for floats)
COMPARE_COLUMNS = [
    ("backend", "backend", None),
    ("implementation", "implementation", None),
    ("trained on", "trained_on_backend", None),
    ("arch", "arch", None),
    ("variant", "variant", None),
    ("mode", "mode", None),
    ("epochs", "epochs", None),
    ("test accuracy", "test_accuracy", 4),
    ("test loss", "test_loss", 4),
    ("train time (s)", "train_seconds", 1),
    ("images/s", "images_per_second", 1),
]
# The figures that depend on how busy the machine was: marked when it was contended.
SPEED_KEYS = {
    "train_seconds",
    "images_per_second",
    "images_per_second_after_first_epoch",
    "eval_images_per_second",
}


def write_run(out: Path, metrics: dict, history: list[dict] | None, predict, data) -> None:
    """Writes metrics.json, history.csv, report.md and the plots of one train or evaluate run.

    Args:
        out: the run's folder.
        metrics: the run's metrics (`metrics.metrics_from_logits` and the run's settings).
        history: the epochs' records (`history.json`), or None for an evaluation.
        predict: class scores `(N, classes)` of uint8 `(N, H, W, 3)` test images, for
            the samples figure: a Keras model's `predict_on_batch`, or any callable
            (the plain PyTorch loop's model).
        data: the `Dataset` tested on.

    Example:
        >>> write_run(out, metrics, history, model.predict_on_batch, data)  # doctest: +SKIP
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    if history:
        atomic_write_text(out / "history.csv", _history_csv(history))
    plots = _plot_all(out, metrics, history, predict, data)
    atomic_write_text(out / "report.md", _report_markdown(metrics, history, plots))


def _history_csv(history: list[dict]) -> str:
    keys = ["epoch", "phase"] + sorted({k for e in history for k in e} - {"epoch", "phase"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _report_markdown(metrics: dict, history, plots: list[str]) -> str:
    arch = arch_of(metrics)
    what = metrics.get("variant") or arch or "model"
    title = f"# {ARCH_TITLES.get(arch, 'AlexNet')} on {metrics.get('dataset', '?')}: {what}"
    lines = [title, ""]
    lines += ["| setting | value |", "| --- | --- |"]
    for key in (
        "backend",
        "trained_on_backend",
        "device",
        "mode",
        "weights",
        "arch",
        "variant",
        "image_size",
        "epochs",
        "batch_size",
        "optimizer",
        "precision",
        "implementation",
        "model",
    ):
        if metrics.get(key) is not None:
            lines.append(f"| {key} | {_cell(metrics[key])} |")
    lines += ["", "## Overall", "", "| metric | value |", "| --- | --- |"]
    for key in (
        "test_accuracy",
        "test_top5_accuracy",
        "test_loss",
        "test_images",
        "train_seconds",
        "images_per_second",
        "images_per_second_after_first_epoch",
        "eval_images_per_second",
    ):
        if key in metrics:
            digits = 4 if key.startswith("test_") else 1
            value = _fmt(metrics[key], digits)
            if key in SPEED_KEYS:
                value = contention.marked(value, metrics)
            lines.append(f"| {key} | {value} |")
    lines += _conditions_rows(metrics)
    lines += contention.footnote(contention.contended(metrics))
    lines += ["", "## Per class (all test images)", ""]
    lines += ["| class | images | correct | accuracy |", "| --- | ---: | ---: | ---: |"]
    confusion = np.asarray(metrics["confusion_matrix"])
    for i, name in enumerate(metrics["class_names"]):
        accuracy = metrics["per_class_accuracy"][name]
        row = f"{confusion[i].sum()} | {confusion[i, i]} | {_fmt(accuracy)}"
        lines.append(f"| {_cell(name)} | {row} |")  # a folder's name may hold | or a newline
    if history:
        lines += ["", "## Training history", ""]
        keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in history[0]]
        lines += ["| epoch | phase | " + " | ".join(keys) + " | seconds |"]
        lines += ["| ---: | --- | " + " | ".join("---:" for _ in keys) + " | ---: |"]
        for e in history:
            values = " | ".join(_fmt(e.get(k)) for k in keys)
            lines.append(f"| {e['epoch']} | {e['phase']} | {values} | {_fmt(e['seconds'], 1)} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _conditions_rows(metrics: dict) -> list[str]:
    """The machine's state while the run trained (`contention.LoadMonitor.summary`)."""
    if "cpu_cores" not in metrics:
        return []
    load = metrics.get("load_average") or {}
    rows = [f"| cpu_cores | {metrics['cpu_cores']} |"]
    if isinstance(load, dict):
        rows.append(
            f"| load_average (1 min) | start {_fmt(load.get('start'), 2)}, "
            f"end {_fmt(load.get('end'), 2)} |"
        )
    rows.append(f"| other_cpu_cores | {_fmt(metrics.get('other_cpu_cores'), 2)} |")
    rows.append(f"| contended | {'yes' if contention.contended(metrics) else 'no'} |")
    return rows


def _plot_all(out: Path, metrics: dict, history, predict, data) -> list[str]:
    """Draws every figure of a run into `out`; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    figures = {}
    if history:
        figures["curves.png"] = _curves_figure(history)
    figures["confusion_matrix.png"] = _confusion_figure(metrics)
    figures["per_class_accuracy.png"] = _per_class_figure(metrics)
    figures["samples.png"] = _samples_figure(metrics["class_names"], predict, data)
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    return list(figures)


def _curves_figure(history: list[dict]):
    """Accuracy and loss per epoch, training and validation."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [e["epoch"] for e in history]
    for ax, key in zip(axes, ("accuracy", "loss")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + key in history[0]:
                ax.plot(epochs, [e[prefix + key] for e in history], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def _confusion_figure(metrics: dict):
    """The confusion matrix over every test image, counts written in the cells."""
    import matplotlib.pyplot as plt

    names = metrics["class_names"]
    confusion = np.asarray(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            color = "white" if confusion[i, j] > confusion.max() / 2 else "black"
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax)
    ax.set_title(f"Confusion matrix (accuracy {metrics['test_accuracy']:.4f})")
    return fig


def _per_class_figure(metrics: dict):
    """Accuracy of each class over all its test images, the overall accuracy as a line."""
    import matplotlib.pyplot as plt

    names = metrics["class_names"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    values = [metrics["per_class_accuracy"][n] or 0.0 for n in names]
    ax.bar(names, values, color="tab:blue")
    ax.axhline(metrics["test_accuracy"], color="tab:red", linestyle="--", label="overall")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class accuracy (all test images)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    return fig


def _samples_figure(names, predict, data, count: int = 25, columns: int = 5):
    """`count` test images, spread evenly over the test set (an image folder's is in
    class order), with predicted / true class, green when right; `predict` gives the
    images' class scores."""
    import matplotlib.pyplot as plt

    count = min(count, len(data.x_test))
    chosen = np.linspace(0, len(data.x_test) - 1, count).round().astype(int)
    images = np.asarray(data.x_test[chosen])
    predicted = np.asarray(predict(images)).argmax(axis=1)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.2 * rows))
    for ax, image, true, guess in zip(np.ravel(axes), images, data.y_test[chosen], predicted):
        ax.imshow(image)
        ok = guess == true
        # Folder class names can be long: cut so that titles never overlap.
        title = f"{names[guess][:14]} / {names[true][:14]}"
        ax.set_title(title, color="green" if ok else "red", fontsize=8)
        ax.axis("off")
    for ax in np.ravel(axes)[count:]:
        ax.axis("off")
    fig.suptitle("predicted / true")
    return fig


def compare_runs(run_dirs) -> str:
    """The markdown table of several runs' metrics.json (train or evaluate folders).

    Example:
        >>> print(compare_runs(["runs/torch", "runs/jax"]))  # doctest: +SKIP
    """
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_dir} has no metrics.json: give folders written by `alexnet-k3 train` "
                "or `alexnet-k3 evaluate --out`."
            )
        advice = (
            "Give folders written by `alexnet-k3 train` or `alexnet-k3 evaluate --out`, "
            "or leave this one out."
        )
        rows.append((str(run_dir), read_json(path, advice, dict)))
    header = "| run | " + " | ".join(title for title, _, _ in COMPARE_COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COMPARE_COLUMNS) + 1)]
    for run_dir, metrics in rows:
        # Every run but the plain PyTorch loop's is a Keras run, those from before
        # `implementation` was recorded included.
        implementation = metrics.get("implementation", "keras")
        metrics = {**metrics, "arch": arch_of(metrics), "implementation": implementation}
        cells = [_fmt(metrics.get(key), digits or 4) for _, key, digits in COMPARE_COLUMNS]
        cells = [
            contention.marked(c, metrics) if key in SPEED_KEYS else c
            for c, (_, key, _) in zip(cells, COMPARE_COLUMNS)
        ]
        lines.append("| " + " | ".join(map(_cell, [run_dir, *cells])) + " |")
    lines += contention.footnote(any(contention.contended(m) for _, m in rows))
    return "\n".join(lines) + "\n"


def arch_of(metrics: dict) -> str | None:
    """The run's architecture; runs recorded before `arch` existed were AlexNet's."""
    return metrics.get("arch") or ("alexnet" if metrics.get("variant") else None)


def _cell(text: str) -> str:
    """`text` as one markdown table cell: `|` escaped, line breaks as spaces."""
    return " ".join(str(text).splitlines()).replace("|", "\\|")
