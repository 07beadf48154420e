"""study.html: one file, inline CSS, every figure a data: PNG; everything given is escaped."""

from __future__ import annotations

import base64
import html
import json

from alexnet_k3.report import _fmt
from alexnet_k3.studies.report.figures import (
    confusion_figure,
    curves_figure,
    heatmap_figure,
    matrix_runs,
    png,
    scatter_figure,
)
from alexnet_k3.studies.report.records import (
    NUMERIC_KEYS,
    SUMMARY_COLUMNS,
    TRAIN_KINDS,
    contention_note,
    environment_items,
    is_ok,
    num,
    per_class_rows,
    plan_name,
    plan_of,
    settings_text,
    summary_cells,
)
from alexnet_k3.studies.report.text import paragraph

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
        for (_, key, _), text in zip(SUMMARY_COLUMNS, summary_cells(record, "\n")):
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
    name = plan_name(study)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Study: {_e(name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Study: {_e(name)}</h1>",
    ]
    when = [f"{k} {study[k]}" for k in ("started", "finished") if study.get(k)]
    if num(study.get("wall_seconds")) is not None:
        when.append(f"wall time {study['wall_seconds']:.1f} s")
    if when:
        parts.append(f'<p class="meta">{_e(", ".join(when))}</p>')
    parts.append(f'<p class="summary">{_e(paragraph(study))}</p>')
    parts += ["<h2>Runs</h2>", _summary_html(study)]
    note = contention_note(study)
    if note:
        parts.append(f'<p class="meta">{_e(note)}</p>')

    runs = study["runs"]
    heatmap = heatmap_figure(study)
    if heatmap is not None:
        names, rows = per_class_rows(study)
        parts += ["<h2>Per-class accuracy</h2>"]
        parts.append(
            _figure(
                png(heatmap),
                f"Heat map of per-class test accuracy: {len(rows)} runs by {len(names)} classes, "
                "colour from 0 to 1.",
                "Test accuracy of each class over all its test images (grey: no value, a class "
                "without test images or not among that run's classes).",
            )
        )
        table = [[(run, "")] + [(_fmt(v), "num") for v in values] for run, values in rows]
        parts.append("<details><summary>The numbers</summary>")
        parts += [_html_table(["run", *names], table), "</details>"]
    curves = curves_figure(study, histories)
    without = [
        r["name"]
        for r in runs
        if is_ok(r) and r.get("kind") in TRAIN_KINDS and r["name"] not in histories
    ]
    if curves is not None or without:
        parts.append("<h2>Training curves</h2>")
    if curves is not None:
        shown = sum(1 for r in runs if r["name"] in histories)
        parts.append(
            _figure(
                png(curves),
                f"Training accuracy and loss per epoch of {shown} train runs, overlaid.",
                "Training accuracy (left) and loss (right) per epoch, one line per train run.",
            )
        )
    if without:
        parts.append(f"<p>No readable history.json for: {_e(', '.join(without))}.</p>")
    scatter = scatter_figure(study)
    if scatter is not None:
        parts.append("<h2>Accuracy against training time</h2>")
        parts.append(
            _figure(
                png(scatter),
                "Scatter plot of test accuracy against training time, one labelled point per "
                "train run.",
                "What each approach buys: test accuracy against training time (seconds).",
            )
        )
    confusion = confusion_figure(study)
    if confusion is not None:
        count = len(matrix_runs(study))
        parts.append("<h2>Confusion matrices</h2>")
        parts.append(
            _figure(
                png(confusion),
                f"{count} confusion matrices, one per run, rows normalized, shared 0 to 1 scale.",
                "Rows: true class; columns: predicted class; each row divided by its "
                "number of test images.",
            )
        )
    parts.append("<h2>Environment</h2>")
    parts.append(_html_table([], [[(k, "key"), (v, "")] for k, v in environment_items(study)]))
    parts += ["<h2>Plan</h2>", _plan_html(plan_of(study)), "</body></html>"]
    return "\n".join(parts) + "\n"


def _plan_html(plan: dict) -> str:
    parts = []
    if isinstance(plan.get("defaults"), dict):
        parts.append(f"<p>Defaults: <code>{_e(settings_text(plan['defaults']))}</code></p>")
    runs = plan.get("runs") if isinstance(plan.get("runs"), list) else []
    if runs:
        rows = []
        for run in runs:
            run = run if isinstance(run, dict) else {"name": run}
            rows.append(
                [(_fmt(run.get(k)), "") for k in ("name", "kind", "backend")]
                + [(settings_text(run.get("settings")), "mono")]
            )
        parts.append(_html_table(["run", "kind", "backend", "settings"], rows))
    text = json.dumps(plan, indent=1, default=str)
    parts.append(f"<details><summary>The plan as JSON</summary><pre>{_e(text)}</pre></details>")
    return "\n".join(parts)
