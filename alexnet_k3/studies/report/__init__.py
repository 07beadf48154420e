"""A study's report: DIR/study.md and one self-contained DIR/study.html, from study.json's dict.

Keras-free: it reads numbers that the runs left behind (study.json's records and
each run's history.json) and draws with matplotlib, so it can be rerun on any
machine that holds the study folder.
"""

from __future__ import annotations

from pathlib import Path

from alexnet_k3.core import atomic_write_text
from alexnet_k3.studies.report.md import markdown
from alexnet_k3.studies.report.page import html_page
from alexnet_k3.studies.report.records import read_histories
from alexnet_k3.studies.report.text import paragraph

__all__ = ["html_page", "markdown", "paragraph", "write_report"]


def write_report(out: Path, study: dict) -> list[Path]:
    """Writes `out/study.md` and `out/study.html` from `study` (study.json's content).

    Each ok train run's `out/<folder>/history.json` gives its training curve; a
    missing or damaged one only leaves that curve out.

    Args:
        out: the study folder (DIR), which holds the run folders.
        study: the dict that `alexnet_k3.studies` writes to DIR/study.json.

    Returns:
        The paths written: study.md, then study.html.

    Example:
        >>> study = json.loads(Path("runs/study/study.json").read_text())  # doctest: +SKIP
        >>> write_report(Path("runs/study"), study)  # doctest: +SKIP
    """
    out = Path(out)
    _check_study(study)
    histories = {name: h for name, h in read_histories(out, study["runs"]).items() if h}
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
