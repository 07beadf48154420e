"""study.md: the same tables as the page, as markdown."""

from __future__ import annotations

import json
import re

from alexnet_k3.report import _cell, _fmt
from alexnet_k3.studies.report.records import (
    NUMERIC_KEYS,
    SUMMARY_COLUMNS,
    contention_note,
    environment_items,
    per_class_rows,
    plan_name,
    plan_of,
    settings_text,
    summary_cells,
)
from alexnet_k3.studies.report.text import paragraph


def _fence(text: str) -> str:
    """A markdown code fence longer than any run of backticks in `text`."""
    longest = max(map(len, re.findall("`+", text)), default=0)
    return "`" * max(3, longest + 1)


def markdown(study: dict) -> str:
    """study.md: the summary table, the per-class table, the paragraph, environment, plan."""
    lines = [f"# Study: {plan_name(study)}", "", paragraph(study), "", "## Runs", ""]
    lines.append("| " + " | ".join(title for title, _, _ in SUMMARY_COLUMNS) + " |")
    lines.append(
        "|" + "".join(" ---: |" if k in NUMERIC_KEYS else " --- |" for _, k, _ in SUMMARY_COLUMNS)
    )
    for record in study["runs"]:
        lines.append("| " + " | ".join(map(_cell, summary_cells(record))) + " |")
    note = contention_note(study)
    if note:  # escaped: a line that starts with "* " is a list item
        lines += ["", "\\" + note]
    names, rows = per_class_rows(study)
    if rows:
        lines += ["", "## Per-class test accuracy (all test images)", ""]
        lines.append("| run | " + " | ".join(map(_cell, names)) + " |")
        lines.append("| --- |" + " ---: |" * len(names))
        for run, values in rows:
            lines.append("| " + " | ".join(map(_cell, [run, *(_fmt(v) for v in values)])) + " |")
    lines += ["", "## Environment", "", "| | |", "| --- | --- |"]
    lines += [f"| {_cell(key)} | {_cell(value)} |" for key, value in environment_items(study)]
    plan = plan_of(study)
    lines += ["", "## Plan", ""]
    if isinstance(plan.get("defaults"), dict):
        lines += [f"Defaults: {settings_text(plan['defaults'])}", ""]
    runs = plan.get("runs") if isinstance(plan.get("runs"), list) else []
    if runs:
        lines += ["| run | kind | backend | settings |", "| --- | --- | --- | --- |"]
        for run in runs:
            run = run if isinstance(run, dict) else {"name": run}
            cells = [run.get("name"), run.get("kind"), run.get("backend")]
            cells = [_fmt(c) for c in cells] + [settings_text(run.get("settings"))]
            lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    text = json.dumps(plan, indent=1, default=str)
    fence = _fence(text)
    lines += ["", fence + "json", text, fence]
    return "\n".join(lines) + "\n"
