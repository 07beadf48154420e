"""A study's report: DIR/study.md and one self-contained DIR/study.html, from study.json's dict.

Keras-free: it reads numbers that the runs left behind (study.json's records and
each run's history.json) and draws with matplotlib, so it can be rerun on any
machine that holds the study folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path, PurePosixPath

import numpy as np

from alexnet_k3.core import atomic_write_text, read_json
from alexnet_k3.report import _cell, _fmt

TRAIN_KINDS = ("keras", "torch-reference")

# (title, record key, decimals): the summary table's plain columns, in order.
SUMMARY_COLUMNS = [
    ("name", "name", None),
    ("kind", "kind", None),
    ("backend", "backend", None),
    ("arch", "arch", None),
    ("variant", "variant", None),
    ("mode", "mode", None),
    ("epochs", "epochs", None),
    ("status", "status", None),
    ("test accuracy", "test_accuracy", 4),
    ("top-5", "test_top5_accuracy", 4),
    ("test loss", "test_loss", 4),
    ("train time (s)", "train_seconds", 1),
    ("images/s", "images_per_second", 1),
    ("initial weights (sha256)", "initial_weights_sha256", None),
    ("cross-backend accuracy", "cross_backend", None),
]
NUMERIC_KEYS = {key for _, key, digits in SUMMARY_COLUMNS if digits is not None} | {"epochs"}


def write_report(out: Path, study: dict) -> list[Path]:
    """Writes `out/study.md` and `out/study.html` from `study` (study.json's content).

    Each ok train run's `out/<folder>/history.json` gives its training curve; a
    missing or damaged one only leaves that curve out.

    Args:
        out: the study folder (DIR), which holds the run folders.
        study: the dict that `alexnet_k3.study` writes to DIR/study.json.

    Returns:
        The paths written: study.md, then study.html.

    Example:
        >>> write_report(Path("runs/study"), json.load(open("runs/study/study.json")))
        ...  # doctest: +SKIP
    """
    out = Path(out)
    _check_study(study)
    histories = {name: h for name, h in _histories(out, study["runs"]).items() if h}
    paths = [out / "study.md", out / "study.html"]
    atomic_write_text(paths[0], markdown(study))
    atomic_write_text(paths[1], html_page(study, histories))
    return paths


def _check_study(study) -> None:
    if not isinstance(study, dict) or not isinstance(study.get("runs"), list):
        got = type(study).__name__ if not isinstance(study, dict) else f"keys {sorted(study)}"
        raise ValueError(
            f"Received a study with {got}; expected study.json's object with a `runs` list. "
            "Give the dict that `alexnet-k3 study` wrote to DIR/study.json."
        )
    if study.get("format") != 1:
        raise ValueError(
            f"study.json has format {study.get('format')!r}; this version reads format 1. "
            "Run the study again with this version of alexnet_k3."
        )
    for i, record in enumerate(study["runs"]):
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            raise ValueError(
                f"study.json's runs[{i}] is {str(record)[:80]!r}; expected an object with a "
                "string `name`. Run the study again to rewrite study.json."
            )


# ---------------------------------------------------------------- reading numbers


def _num(value) -> float | None:
    """`value` as a finite float, or None (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ok(record: dict) -> bool:
    return record.get("status") == "ok"


def _train_runs(study: dict) -> list[dict]:
    """The ok train runs (not evaluations) that have a test accuracy."""
    return [
        r
        for r in study["runs"]
        if _ok(r) and r.get("kind") in TRAIN_KINDS and _num(r.get("test_accuracy")) is not None
    ]


def _histories(out: Path, records: list[dict]) -> dict[str, list[dict] | None]:
    """Each ok train run's epochs (epoch, phase, accuracy, loss), or None where unreadable."""
    histories = {}
    for record in records:
        if _ok(record) and record.get("kind") in TRAIN_KINDS:
            histories[record["name"]] = _read_history(out, record.get("folder") or record["name"])
    return histories


def _read_history(out: Path, folder) -> list[dict] | None:
    # study.json names the folder; one that leaves the study folder is not followed.
    relative = PurePosixPath(str(folder))
    if relative.is_absolute() or ".." in relative.parts:
        return None
    path = out / relative / "history.json"
    if not path.is_file():
        return None
    try:
        epochs = read_json(path, "The study report leaves this run's curve out.", list)
    except (ValueError, OSError):
        return None
    points = []
    for entry in epochs:
        if not isinstance(entry, dict) or _num(entry.get("epoch")) is None:
            return None
        points.append(
            {
                "epoch": int(entry["epoch"]),
                "phase": str(entry.get("phase", "train")),
                "accuracy": _num(entry.get("accuracy")),
                "loss": _num(entry.get("loss")),
            }
        )
    return sorted(points, key=lambda e: e["epoch"]) or None


# ---------------------------------------------------------------- the paragraph


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _points(difference: float) -> str:
    return f"{100 * abs(difference):.2f} points"


def _names(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def paragraph(study: dict) -> str:
    """A few sentences that state what the study's numbers say, and nothing else.

    Which train run was best and by how much over the next; how far apart the Keras
    runs from the same initial weights ended; the plain PyTorch reference against the
    Keras runs of its variant; how much of the best from-scratch accuracy the best
    transfer run reached, in what share of its training time; how many runs failed or
    were skipped. A comparison without data is left out.

    Example:
        >>> paragraph({"runs": []})
        'The study has no runs.'
    """
    records = study.get("runs") or []
    if not records:
        return "The study has no runs."
    sentences = []
    trained = _train_runs(study)  # plan order, which the sentences keep
    ranked = sorted(trained, key=lambda r: -_num(r["test_accuracy"]))
    if ranked:
        best = ranked[0]
        best_acc = _num(best["test_accuracy"])
        if len(trained) == 1:
            sentences.append(
                f"{best['name']} reached {_pct(best_acc)} test accuracy, "
                "the only train run with a result."
            )
        else:
            runner = ranked[1]
            margin = best_acc - _num(runner["test_accuracy"])
            sentences.append(
                f"Of {len(trained)} train runs, {best['name']} reached the highest test accuracy, "
                f"{_pct(best_acc)}, {_points(margin)} above the next, {runner['name']} "
                f"({_pct(_num(runner['test_accuracy']))})."
            )
    sentences += _same_start_sentences(trained)
    sentences += _cross_backend_sentences(trained)
    sentences += _reference_sentences(trained)
    sentences += _transfer_sentences(trained)
    sentences.append(_unfinished_sentence(records))
    return " ".join(sentences)


def _same_start_sentences(trained: list[dict]) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for record in trained:
        sha = record.get("initial_weights_sha256")
        if record.get("kind") == "keras" and isinstance(sha, str) and sha:
            groups.setdefault(sha, []).append(record)
    sentences = []
    for sha, group in groups.items():
        if len({r.get("backend") for r in group}) < 2:
            continue
        accuracies = [_num(r["test_accuracy"]) for r in group]
        low, high = min(accuracies), max(accuracies)
        backends = _names([str(r.get("backend")) for r in group])
        sentences.append(
            f"From the same initial weights (sha256 {sha[:12]}), the Keras runs on {backends} "
            f"ended {_points(high - low)} apart ({_pct(low)} to {_pct(high)})."
        )
    return sentences


def _cross_backend_sentences(trained: list[dict]) -> list[str]:
    changes = []
    for record in trained:
        cross = record.get("cross_backend")
        if record.get("kind") != "keras" or not isinstance(cross, dict):
            continue
        own = _num(record["test_accuracy"])
        changes += [abs(a - own) for a in map(_num, cross.values()) if a is not None]
    if not changes:
        return []
    evaluations = "evaluation" if len(changes) == 1 else "evaluations"
    return [
        f"The Keras runs' saved models, evaluated under another backend ({len(changes)} "
        f"{evaluations}), differed from their own test accuracy by at most "
        f"{_points(max(changes))}."
    ]


def _reference_sentences(trained: list[dict]) -> list[str]:
    sentences = []
    for reference in (r for r in trained if r.get("kind") == "torch-reference"):
        same = ("arch", "variant", "mode", "dataset")
        keras_runs = [
            r
            for r in trained
            if r.get("kind") == "keras" and all(r.get(k) == reference.get(k) for k in same)
        ]
        if not keras_runs:
            continue
        accuracy = _num(reference["test_accuracy"])
        mean = sum(_num(r["test_accuracy"]) for r in keras_runs) / len(keras_runs)
        low = min(_num(r["test_accuracy"]) for r in keras_runs)
        high = max(_num(r["test_accuracy"]) for r in keras_runs)
        side = "above" if accuracy > mean else "below" if accuracy < mean else "equal to"
        difference = "" if side == "equal to" else f"{_points(accuracy - mean)} "
        spread = f"; they range from {_pct(low)} to {_pct(high)}" if len(keras_runs) > 1 else ""
        what = f"the mean of the {len(keras_runs)} Keras runs" if len(keras_runs) > 1 else ""
        what = what or f"the Keras run {keras_runs[0]['name']}"
        sentences.append(
            f"The plain PyTorch reference ({reference['name']}) reached {_pct(accuracy)}, "
            f"{difference}{side} {what} of the same model ({_pct(mean)}){spread}."
        )
    return sentences


def _transfer_sentences(trained: list[dict]) -> list[str]:
    sentences = []
    for dataset in dict.fromkeys(r.get("dataset") for r in trained):
        runs = [r for r in trained if r.get("dataset") == dataset]
        transfer = [r for r in runs if r.get("mode") == "transfer"]
        scratch = [r for r in runs if r.get("mode") == "scratch"]
        if not transfer or not scratch:
            continue
        best_t = max(transfer, key=lambda r: _num(r["test_accuracy"]))
        best_s = max(scratch, key=lambda r: _num(r["test_accuracy"]))
        acc_t, acc_s = _num(best_t["test_accuracy"]), _num(best_s["test_accuracy"])
        share = f"{100 * acc_t / acc_s:.0f}%" if acc_s > 0 else None
        sentence = (
            f"The best transfer run, {best_t['name']}, reached {_pct(acc_t)}"
            + (f", {share} of" if share else " against")
            + f" the best from-scratch accuracy ({best_s['name']}, {_pct(acc_s)})"
        )
        time_t, time_s = _num(best_t.get("train_seconds")), _num(best_s.get("train_seconds"))
        if time_t is not None and time_s:
            sentence += (
                f", in {100 * time_t / time_s:.0f}% of its training time "
                f"({time_t:.1f} s against {time_s:.1f} s)"
            )
        sentences.append(sentence + ".")
    return sentences


def _unfinished_sentence(records: list[dict]) -> str:
    failed = [r["name"] for r in records if r.get("status") == "failed"]
    skipped = [r["name"] for r in records if r.get("status") == "skipped"]
    if not failed and not skipped:
        return f"All {len(records)} runs finished."
    parts = []
    if failed:
        parts.append(f"{len(failed)} failed ({_names(failed)})")
    if skipped:
        parts.append(
            f"{len(skipped)} {'was' if len(skipped) == 1 else 'were'} skipped ({_names(skipped)})"
        )
    return f"Of {len(records)} runs, " + " and ".join(parts) + "."


# ---------------------------------------------------------------- tables (text)


def _status(record: dict) -> str:
    status = str(record.get("status", "?"))
    message = record.get("message")
    if not message or status == "ok":
        return status
    message = str(message)
    return message if message.startswith(status) else f"{status}: {message}"


def _kind(record: dict, separator: str = " ") -> str:
    kind = str(record.get("kind", "?"))
    return f"{kind}{separator}of {record['source']}" if record.get("source") else kind


def _cross(record: dict, separator: str = ", ") -> str:
    cross = record.get("cross_backend")
    if not isinstance(cross, dict) or not cross:
        return "-"
    return separator.join(f"{backend} {_fmt(_num(a))}" for backend, a in cross.items())


def _summary_cells(record: dict, separator: str = ", ") -> list[str]:
    """The summary row of `record`, one plain-text string per column; `separator` joins
    the parts of a cell that has several (cross-backend accuracies, an evaluation's source)."""
    cells = []
    for _, key, digits in SUMMARY_COLUMNS:
        if key == "status":
            cells.append(_status(record))
        elif key == "kind":
            cells.append(_kind(record, " " if separator == ", " else separator))
        elif key == "cross_backend":
            cells.append(_cross(record, separator))
        elif key == "initial_weights_sha256":
            sha = record.get(key)
            cells.append(str(sha)[:12] if sha else "-")
        elif key in NUMERIC_KEYS and key != "epochs":
            cells.append(_fmt(_num(record.get(key)), digits))
        else:
            cells.append(_fmt(record.get(key)))
    return cells


def _class_names(study: dict) -> list[str]:
    """Every class named by a run, in the order the runs first name them."""
    names: dict[str, None] = {}
    for record in _class_runs(study):
        names.update(
            dict.fromkeys(map(str, record.get("class_names") or record["per_class_accuracy"]))
        )
    return list(names)


def _class_runs(study: dict) -> list[dict]:
    return [r for r in study["runs"] if _ok(r) and isinstance(r.get("per_class_accuracy"), dict)]


def _per_class_rows(study: dict) -> tuple[list[str], list[tuple[str, list[float | None]]]]:
    names = _class_names(study)
    rows = []
    for record in _class_runs(study):
        values = record["per_class_accuracy"]
        rows.append((record["name"], [_num(values.get(name)) for name in names]))
    return names, rows


def _settings_text(settings) -> str:
    if not isinstance(settings, dict):
        return _fmt(settings)
    return ", ".join(f"{k}={_plain(v)}" for k, v in settings.items()) or "-"


def _plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _environment_items(study: dict) -> list[tuple[str, str]]:
    env = study.get("environment") if isinstance(study.get("environment"), dict) else {}
    items = []
    devices = env.get("devices")
    if isinstance(devices, dict) and devices:
        items.append(("devices", ", ".join(f"{b}: {d}" for b, d in devices.items())))
    for key in ("cpu", "cores", "platform", "python"):
        if env.get(key) is not None:
            items.append((key, str(env[key])))
    packages = env.get("packages")
    if isinstance(packages, dict) and packages:
        items.append(("packages", ", ".join(f"{p} {v}" for p, v in packages.items())))
    plan = study.get("plan") if isinstance(study.get("plan"), dict) else {}
    defaults = plan.get("defaults") if isinstance(plan.get("defaults"), dict) else {}
    if defaults.get("seed") is not None:
        items.append(("seed", str(defaults["seed"])))
    for key in ("started", "finished"):
        if study.get(key):
            items.append((key, str(study[key])))
    for key in ("wall_seconds", "overhead_seconds"):
        if _num(study.get(key)) is not None:
            items.append((key.replace("_", " ").replace("seconds", "(s)"), f"{study[key]:.1f}"))
    return items


def _plan(study: dict) -> dict:
    return study.get("plan") if isinstance(study.get("plan"), dict) else {}


def _plan_name(study: dict) -> str:
    return str(_plan(study).get("name") or "study")


def _fence(text: str) -> str:
    """A markdown code fence longer than any run of backticks in `text`."""
    longest = max(map(len, re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)


def markdown(study: dict) -> str:
    """study.md: the summary table, the per-class table, the paragraph, environment, plan."""
    lines = [f"# Study: {_plan_name(study)}", "", paragraph(study), "", "## Runs", ""]
    lines.append("| " + " | ".join(title for title, _, _ in SUMMARY_COLUMNS) + " |")
    lines.append(
        "|" + "".join(" ---: |" if k in NUMERIC_KEYS else " --- |" for _, k, _ in SUMMARY_COLUMNS)
    )
    for record in study["runs"]:
        lines.append("| " + " | ".join(map(_cell, _summary_cells(record))) + " |")
    names, rows = _per_class_rows(study)
    if rows:
        lines += ["", "## Per-class test accuracy (all test images)", ""]
        lines.append("| run | " + " | ".join(map(_cell, names)) + " |")
        lines.append("| --- |" + " ---: |" * len(names))
        for run, values in rows:
            lines.append("| " + " | ".join(map(_cell, [run, *(_fmt(v) for v in values)])) + " |")
    lines += ["", "## Environment", "", "| | |", "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in _environment_items(study)]
    plan = _plan(study)
    lines += ["", "## Plan", ""]
    if isinstance(plan.get("defaults"), dict):
        lines += [f"Defaults: {_settings_text(plan['defaults'])}", ""]
    runs = plan.get("runs") if isinstance(plan.get("runs"), list) else []
    if runs:
        lines += ["| run | kind | backend | settings |", "| --- | --- | --- | --- |"]
        for run in runs:
            run = run if isinstance(run, dict) else {"name": run}
            cells = [run.get("name"), run.get("kind"), run.get("backend")]
            cells = [_fmt(c) for c in cells] + [_settings_text(run.get("settings"))]
            lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    text = json.dumps(plan, indent=1, default=str)
    fence = _fence(text)
    lines += ["", fence + "json", text, fence]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def _label(text, width: int | None = None) -> str:
    """`text` safe as a matplotlib label: one line, no mathtext, cut to `width` characters."""
    text = " ".join(str(text).splitlines())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")


def _png(fig) -> bytes:
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


def _heatmap_figure(study: dict):
    """Runs x classes, per-class test accuracy on one 0-1 scale, values written in."""
    names, rows = _per_class_rows(study)
    if not rows or not names:
        return None
    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for _, row in rows])
    fig, ax = plt.subplots(
        figsize=(max(5.0, 2.5 + 0.65 * len(names)), max(2.0, 1.4 + 0.38 * len(rows)))
    )
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(names)), [_label(n, 16) for n in names], rotation=40, ha="right")
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


def _curves_figure(study: dict, histories: dict[str, list[dict]]):
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


def _matrix_runs(study: dict) -> list[tuple[dict, np.ndarray]]:
    runs = []
    for record in study["runs"]:
        matrix = record.get("confusion_matrix")
        if not _ok(record) or not isinstance(matrix, list) or not matrix:
            continue
        try:
            counts = np.asarray(matrix, dtype=float)
        except (TypeError, ValueError):
            continue
        if counts.ndim == 2 and counts.shape[0] == counts.shape[1]:
            runs.append((record, counts))
    return runs


def _confusion_figure(study: dict):
    """One row-normalized confusion matrix per run, on one shared 0-1 colour scale."""
    runs = _matrix_runs(study)
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
        accuracy = _num(record.get("test_accuracy"))
        title = _label(record["name"], 30)
        if accuracy is not None:
            title += f"\n{_pct(accuracy)}"
        ax.set_title(title, fontsize=8)
    for ax in axes.ravel()[len(runs) :]:
        ax.axis("off")
    fig.supxlabel("predicted", fontsize=9)
    fig.supylabel("true", fontsize=9)
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="share of row")
    return fig


def _scatter_figure(study: dict):
    """Test accuracy against training time, one labelled point per train run."""
    points = [
        (r, _num(r.get("train_seconds")), _num(r["test_accuracy"]))
        for r in _train_runs(study)
        if _num(r.get("train_seconds")) is not None
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


# ---------------------------------------------------------------- the HTML page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1em 1.5em; color: #1d2129; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #dde; }
.meta { color: #555; margin-top: 0; }
.summary { background: #f3f6fa; border-left: 4px solid #3b6db3; padding: 0.8em 1em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.78em; margin: 0.5em 0; }
th, td { border: 1px solid #d5d9e0; padding: 0.2em 0.35em; text-align: left; vertical-align: top; }
td.lines { white-space: pre; }
td.failed, td.skipped { min-width: 10em; max-width: 14em; overflow-wrap: anywhere; }
th { background: #eef1f5; } tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.failed { color: #a61b1b; font-weight: 600; } td.skipped { color: #7a6100; }
td.key { font-weight: 600; background: #eef1f5; }
td.mono, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
details summary { cursor: pointer; color: #3b6db3; }
"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _html_table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """`rows` of (text, css class) cells; every text is escaped here."""
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{c}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>" for t, c in row)
        + "</tr>"
        for row in rows
    )
    table = f"<table>{head if header else ''}<tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def _summary_html(study: dict) -> str:
    rows = []
    for record in study["runs"]:
        row = []
        for (_, key, _), text in zip(SUMMARY_COLUMNS, _summary_cells(record, "\n")):
            css = "num" if key in NUMERIC_KEYS else ""
            css = "lines" if "\n" in text or key == "cross_backend" else css
            if key == "status" and record.get("status") in ("failed", "skipped"):
                css = str(record["status"])
            elif key == "initial_weights_sha256":
                css = "mono"
            row.append((text, css))
        rows.append(row)
    return _html_table([title for title, _, _ in SUMMARY_COLUMNS], rows)


def html_page(study: dict, histories: dict[str, list[dict]]) -> str:
    """study.html: one file, every plot a data: PNG, no request for anything outside it."""
    name = _plan_name(study)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Study: {_e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Study: {_e(name)}</h1>",
    ]
    when = [f"{k} {study[k]}" for k in ("started", "finished") if study.get(k)]
    if _num(study.get("wall_seconds")) is not None:
        when.append(f"wall time {study['wall_seconds']:.1f} s")
    if when:
        parts.append(f'<p class="meta">{_e(", ".join(when))}</p>')
    parts.append(f'<p class="summary">{_e(paragraph(study))}</p>')
    parts += ["<h2>Runs</h2>", _summary_html(study)]

    runs = study["runs"]
    heatmap = _heatmap_figure(study)
    if heatmap is not None:
        names, rows = _per_class_rows(study)
        parts += ["<h2>Per-class accuracy</h2>"]
        parts.append(
            _figure(
                _png(heatmap),
                f"Heat map of per-class test accuracy: {len(rows)} runs by {len(names)} classes, "
                "colour from 0 to 1.",
                "Test accuracy of each class over all its test images (grey: no test image).",
            )
        )
        table = [[(run, "")] + [(_fmt(v), "num") for v in values] for run, values in rows]
        parts.append("<details><summary>The numbers</summary>")
        parts += [_html_table(["run", *names], table), "</details>"]
    curves = _curves_figure(study, histories)
    without = [
        r["name"]
        for r in runs
        if _ok(r) and r.get("kind") in TRAIN_KINDS and r["name"] not in histories
    ]
    if curves is not None or without:
        parts.append("<h2>Training curves</h2>")
    if curves is not None:
        shown = sum(1 for r in runs if r["name"] in histories)
        parts.append(
            _figure(
                _png(curves),
                f"Training accuracy and loss per epoch of {shown} train runs, overlaid.",
                "Training accuracy (left) and loss (right) per epoch, one line per train run.",
            )
        )
    if without:
        parts.append(f"<p>No readable history.json for: {_e(', '.join(without))}.</p>")
    scatter = _scatter_figure(study)
    if scatter is not None:
        parts.append("<h2>Accuracy against training time</h2>")
        parts.append(
            _figure(
                _png(scatter),
                "Scatter plot of test accuracy against training time, one labelled point per "
                "train run.",
                "What each approach buys: test accuracy against training time (seconds).",
            )
        )
    confusion = _confusion_figure(study)
    if confusion is not None:
        count = len(_matrix_runs(study))
        parts.append("<h2>Confusion matrices</h2>")
        parts.append(
            _figure(
                _png(confusion),
                f"{count} confusion matrices, one per run, rows normalized, shared 0 to 1 scale.",
                "Rows: true class; columns: predicted class; each row divided by its "
                "number of test images.",
            )
        )
    parts.append("<h2>Environment</h2>")
    parts.append(_html_table([], [[(k, "key"), (v, "")] for k, v in _environment_items(study)]))
    parts += ["<h2>Plan</h2>", _plan_html(_plan(study)), "</body></html>"]
    return "\n".join(parts) + "\n"


def _plan_html(plan: dict) -> str:
    parts = []
    if isinstance(plan.get("defaults"), dict):
        parts.append(f"<p>Defaults: <code>{_e(_settings_text(plan['defaults']))}</code></p>")
    runs = plan.get("runs") if isinstance(plan.get("runs"), list) else []
    if runs:
        rows = []
        for run in runs:
            run = run if isinstance(run, dict) else {"name": run}
            rows.append(
                [(_fmt(run.get(k)), "") for k in ("name", "kind", "backend")]
                + [(_settings_text(run.get("settings")), "mono")]
            )
        parts.append(_html_table(["run", "kind", "backend", "settings"], rows))
    text = json.dumps(plan, indent=1, default=str)
    parts.append(f"<details><summary>The plan as JSON</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)
