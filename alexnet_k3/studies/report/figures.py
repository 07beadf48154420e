"""The study's figures, each drawn with matplotlib (Agg, imported on first use) into PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np

from alexnet_k3.studies.report.records import is_ok, num, pct, per_class_rows, train_runs


def _label(text, width: int | None = None) -> str:
    """`text` safe as a matplotlib label: one line, no mathtext, cut to `width` characters."""
    text = " ".join(str(text).splitlines())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def heatmap_figure(study: dict):
    """Runs x classes, per-class test accuracy on one 0-1 scale, values written in."""
    names, rows = per_class_rows(study)
    if not rows or not names:
        return None
    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for _, row in rows])
    # Cells shrink past 20 inches a side: a folder of many classes stays one readable image.
    width = min(20.0, max(5.0, 2.5 + 0.65 * len(names)))
    fig, ax = plt.subplots(figsize=(width, min(20.0, max(2.0, 1.4 + 0.38 * len(rows)))))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    if len(names) <= 60:
        ax.set_xticks(range(len(names)), [_label(n, 16) for n in names], rotation=40, ha="right")
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names)} classes")
    ax.set_yticks(range(len(rows)), [_label(run, 28) for run, _ in rows])
    if len(names) <= 30 and len(rows) <= 40:
        for i in range(len(rows)):
            for j in range(len(names)):
                v = values[i, j]
                text = "-" if np.isnan(v) else f"{v:.2f}"
                color = "black" if np.isnan(v) or v > 0.6 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy")
    ax.set_title("Per-class test accuracy")
    return fig


def curves_figure(study: dict, histories: dict[str, list[dict]]):
    """Training accuracy and loss per epoch, one line per train run."""
    runs = [r["name"] for r in study["runs"] if r["name"] in histories]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    frozen = False
    for index, name in enumerate(runs):
        color = colors(index % colors.N)
        for ax, key in zip(axes, ("accuracy", "loss")):
            points = [e for e in histories[name] if e[key] is not None]
            if not points:
                continue
            ax.plot(
                [e["epoch"] for e in points],
                [e[key] for e in points],
                color=color,
                marker="o",
                markersize=3,
                label=_label(name, 30) if key == "accuracy" else None,
            )
            heads = [e for e in points if e["phase"] == "head"]
            if heads:  # transfer learning's frozen-features epochs
                frozen = True
                ax.plot(
                    [e["epoch"] for e in heads],
                    [e[key] for e in heads],
                    linestyle="none",
                    marker="o",
                    markersize=7,
                    markerfacecolor="white",
                    color=color,
                )
    for ax, key in zip(axes, ("accuracy", "loss")):
        ax.set_xlabel("epoch")
        ax.set_title(f"training {key}")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylim(top=1.0)
    title = "Training curves" + (" (open circles: frozen-features epochs)" if frozen else "")
    fig.suptitle(title)
    fig.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def matrix_runs(study: dict) -> list[tuple[dict, np.ndarray]]:
    runs = []
    for record in study["runs"]:
        matrix = record.get("confusion_matrix")
        if not is_ok(record) or not isinstance(matrix, list) or not matrix:
            continue
        try:
            counts = np.asarray(matrix, dtype=float)
        except (TypeError, ValueError):
            continue
        if counts.ndim == 2 and counts.shape[0] == counts.shape[1]:
            runs.append((record, counts))
    return runs


def confusion_figure(study: dict):
    """One row-normalized confusion matrix per run, on one shared 0-1 colour scale."""
    runs = matrix_runs(study)
    if not runs:
        return None
    plt = _pyplot()
    columns = min(4, len(runs))
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.4 * columns + 0.8, 3.5 * rows), squeeze=False
    )
    image = None
    for ax, (record, counts) in zip(axes.ravel(), runs):
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        names = record.get("class_names")
        size = counts.shape[0]
        if isinstance(names, list) and len(names) == size and size <= 20:
            ticks = [_label(n, 10) for n in names]
            ax.set_xticks(range(size), ticks, rotation=90, fontsize=6)
            ax.set_yticks(range(size), ticks, fontsize=6)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        accuracy = num(record.get("test_accuracy"))
        title = _label(record["name"], 30)
        if accuracy is not None:
            title += f"\n{pct(accuracy)}"
        ax.set_title(title, fontsize=8)
    for ax in axes.ravel()[len(runs) :]:
        ax.axis("off")
    fig.supxlabel("predicted", fontsize=9)
    fig.supylabel("true", fontsize=9)
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="share of row")
    return fig


def scatter_figure(study: dict):
    """Test accuracy against training time, one labelled point per train run."""
    points = [
        (r, num(r.get("train_seconds")), num(r["test_accuracy"]))
        for r in train_runs(study)
        if num(r.get("train_seconds")) is not None
    ]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"scratch": "o", "transfer": "^"}
    kinds = list(dict.fromkeys(r.get("kind") for r, _, _ in points))
    colors = {kind: f"C{i}" for i, kind in enumerate(kinds)}
    seen = set()
    for record, seconds, accuracy in points:
        key = (record.get("kind"), record.get("mode"))
        ax.scatter(
            seconds,
            accuracy,
            s=45,
            color=colors[record.get("kind")],
            marker=styles.get(record.get("mode"), "s"),
            label=None if key in seen else _label(f"{key[0]}, {key[1]}"),
            zorder=3,
        )
        seen.add(key)
    times = [s for _, s, _ in points]
    if min(times) > 0 and max(times) / min(times) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy against training time")
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.2)
    ax.autoscale_view()
    _label_points(fig, ax, [(_label(r["name"], 30), s, a) for r, s, a in points])
    ax.legend(fontsize=8)
    return fig


def _label_points(fig, ax, labels) -> None:
    """Writes each (text, x, y) beside its point, moving a label down, with a line to its
    point, while it would cover one already written (runs of one start land close)."""
    to_points = 72 / fig.dpi
    placed = []  # (left, bottom, right, top) in points
    for text, x, y in sorted(labels, key=lambda item: (item[1], -item[2])):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 4.9 * len(text) + 4, 11
        dy = 4.0
        while any(
            px + 5 < right and left < px + 5 + width and py + dy < top and bottom < py + dy + height
            for left, bottom, right, top in placed
        ):
            dy -= height
        placed.append((px + 5, py + dy, px + 5 + width, py + dy + height))
        ax.annotate(
            text,
            (x, y),
            xytext=(5, dy),
            textcoords="offset points",
            fontsize=8,
            arrowprops=None if dy == 4.0 else {"arrowstyle": "-", "color": "0.6", "lw": 0.6},
        )
