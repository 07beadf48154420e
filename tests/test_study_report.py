"""The study report: study.md, one self-contained study.html, and the paragraph's numbers."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from headless_chromium import Chromium, find_chromium
from PIL import Image

from alexnet_k3 import contention
from alexnet_k3.studies.report import paragraph, records, write_report

SHA = "3f2a9c1e7b44d0e5a6c8b9f0112233445566778899aabbccddeeff0011223344"
TRANSFER_SHA = "aa11bb22cc33dd44ee55ff6600778899aabbccddeeff00112233445566778899"
# A class name with what breaks tables and pages: a `|`, a line break, markup, `$` (mathtext).
ODD_CLASS = "truck|lorry\n<b>big</b> & $5"
CLASSES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", ODD_CLASS]
SKIP_MESSAGE = (
    "skipped: weights unavailable: put a copy of alexnet-owt-7be5be79.pth in "
    "/root/.cache/torch/hub/checkpoints (or give --weights-dir)"
)
FAIL_MESSAGE = "RuntimeError: training diverged at epoch 2: loss is nan <lr 50.0>"


def _confusion(accuracies, per_class=100):
    """A confusion matrix whose row i has accuracy accuracies[i]; the misses go to i+1."""
    size = len(accuracies)
    matrix = [[0] * size for _ in range(size)]
    for i, accuracy in enumerate(accuracies):
        right = round(accuracy * per_class)
        matrix[i][i] = right
        matrix[i][(i + 1) % size] = per_class - right
    return matrix


def _record(name, kind, backend, accuracy, *, mode="scratch", variant="cifar", **extra):
    per_class = [min(1.0, max(0.0, accuracy + 0.04 * ((i % 5) - 2))) for i in range(10)]
    confusion = _confusion(per_class)
    per_class = [row[i] / 100 for i, row in enumerate(confusion)]
    record = {
        "name": name,
        "kind": kind,
        "backend": backend,
        "arch": "alexnet",
        "variant": variant,
        "mode": mode,
        "dataset": "cifar10",
        "epochs": 3,
        "status": "ok",
        "message": None,
        "folder": name,
        "test_accuracy": sum(per_class) / len(per_class),
        "test_top5_accuracy": 0.98,
        "test_loss": 1.0 - accuracy,
        "class_names": CLASSES,
        "per_class_accuracy": dict(zip(CLASSES, per_class)),
        "confusion_matrix": confusion,
        "train_seconds": 100.0,
        "images_per_second": 1500.0,
        "initial_weights_sha256": SHA,
        "source": None,
        "cross_backend": {},
    }
    record.update(extra)
    return record


def _not_ok(name, status, message, mode="scratch"):
    record = _record(name, "keras", "torch", 0.0, mode=mode)
    record.update(
        status=status,
        message=message,
        test_accuracy=None,
        test_top5_accuracy=None,
        test_loss=None,
        class_names=None,
        per_class_accuracy=None,
        confusion_matrix=None,
        train_seconds=None,
        images_per_second=None,
    )
    return record


def _study(runs):
    plan_runs = [
        {"name": r["name"], "kind": r["kind"], "backend": r["backend"], "settings": {"epochs": 3}}
        for r in runs
    ]
    return {
        "format": 1,
        "plan": {"name": "course <test>", "defaults": {"seed": 7, "lr": 0.01}, "runs": plan_runs},
        "environment": {
            "python": "3.11.7",
            "platform": "Linux-6.1-x86_64",
            "cpu": "AMD EPYC 7B13",
            "cores": 2,
            "packages": {"alexnet-k3": "0.1.0", "keras": "3.15.1", "torch": "2.14.1"},
            "devices": {"torch": "cpu", "jax": "cpu", "tensorflow": "cpu"},
        },
        "started": "2026-12-08T02:10:00+00:00",
        "finished": "2026-12-08T02:15:12+00:00",
        "wall_seconds": 312.4,
        "overhead_seconds": 40.1,
        "runs": runs,
    }


def realistic_study():
    """3 Keras rows from one start, the torch reference, 3 evaluations, a transfer run,
    a failed run and a skipped one: every kind of row a course study has."""
    runs = [
        _record(
            "scratch-torch",
            "keras",
            "torch",
            0.80,
            cross_backend={"jax": 0.78},
            train_seconds=121.0,
        ),
        _record(
            "scratch-jax",
            "keras",
            "jax",
            0.78,
            cross_backend={"tensorflow": 0.78},
            train_seconds=97.5,
        ),
        _record("scratch-tensorflow", "keras", "tensorflow", 0.79, cross_backend={"torch": 0.79}),
        _record(
            "torch-reference",
            "torch-reference",
            "torch",
            0.77,
            initial_weights_sha256=None,
            train_seconds=88.0,
        ),
    ]
    runs += [
        _record(
            f"{source}-on-{backend}",
            "evaluate",
            backend,
            accuracy,
            source=source,
            train_seconds=None,
            images_per_second=None,
        )
        for source, backend, accuracy in [
            ("scratch-torch", "jax", 0.78),
            ("scratch-jax", "tensorflow", 0.78),
            ("scratch-tensorflow", "torch", 0.79),
        ]
    ]
    runs.append(
        _record(
            "transfer-torch",
            "keras",
            "torch",
            0.90,
            mode="transfer",
            variant="torchvision",
            train_seconds=262.0,
            initial_weights_sha256=TRANSFER_SHA,
        )
    )
    runs.append(_not_ok("diverge-torch", "failed", FAIL_MESSAGE))
    runs.append(_not_ok("transfer-jax", "skipped", SKIP_MESSAGE, mode="transfer"))
    return _study(runs)


def _write_histories(out: Path, study: dict, corrupt=("scratch-tensorflow",)):
    for record in study["runs"]:
        if record["status"] != "ok" or record["kind"] == "evaluate":
            continue
        folder = out / record["folder"]
        folder.mkdir(parents=True)
        if record["name"] in corrupt:
            (folder / "history.json").write_text('[{"epoch": 1, "accur')
            continue
        phases = ["head", "finetune", "finetune"] if record["mode"] == "transfer" else ["train"] * 3
        history = [
            {
                "epoch": epoch,
                "phase": phase,
                "accuracy": record["test_accuracy"] * epoch / 3,
                "loss": (1.2 - record["test_accuracy"]) * 3 / epoch,
                "seconds": 3.0,
            }
            for epoch, phase in enumerate(phases, start=1)
        ]
        (folder / "history.json").write_text(json.dumps(history))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The realistic study's report, written once: (folder, study, md text, html text)."""
    out = tmp_path_factory.mktemp("study")
    study = realistic_study()
    _write_histories(out, study)
    paths = write_report(out, study)
    assert paths == [out / "study.md", out / "study.html"]
    return out, study, paths[0].read_text(), paths[1].read_text()


def _table_rows(md: str, heading: str) -> list[str]:
    section = md.split(heading, 1)[1]
    lines = section.split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| ---")]


def test_markdown_has_one_summary_row_per_record_with_messages(report):
    _, study, md, _ = report
    rows = _table_rows(md, "## Runs")
    assert len(rows) == 1 + len(study["runs"])  # the header, then one row per record
    for record, row in zip(study["runs"], rows[1:]):
        assert row.startswith(f"| {record['name']} |"), row
    failed = next(r for r in rows if r.startswith("| diverge-torch |"))
    assert "failed: RuntimeError: training diverged at epoch 2" in failed
    skipped = next(r for r in rows if r.startswith("| transfer-jax |"))
    assert SKIP_MESSAGE in skipped and "skipped: skipped" not in skipped
    torch_row = next(r for r in rows if r.startswith("| scratch-torch |"))
    cells = [c.strip() for c in torch_row.strip("|").split(" | ")]
    assert cells[8] == f"{study['runs'][0]['test_accuracy']:.4f}"
    assert SHA[:12] in cells and SHA[:13] not in torch_row
    assert "jax 0.7800" in torch_row
    evaluate = next(r for r in rows if r.startswith("| scratch-jax-on-tensorflow |"))
    assert "evaluate of scratch-jax" in evaluate


def test_markdown_per_class_table_escapes_cells(report):
    _, study, md, _ = report
    rows = _table_rows(md, "## Per-class test accuracy")
    header = rows[0]
    # The `|` is escaped and the line break a space: the header keeps 1 + 10 cells.
    assert "truck\\|lorry <b>big</b> & $5" in header
    assert len(re.split(r"(?<!\\)\|", header.strip("|"))) == 11
    ok_with_classes = [r for r in study["runs"] if r["status"] == "ok"]
    assert len(rows) == 1 + len(ok_with_classes)
    jax = next(r for r in rows if r.startswith("| scratch-jax |"))
    expected = study["runs"][1]["per_class_accuracy"][ODD_CLASS]
    assert jax.rstrip(" |").endswith(f"{expected:.4f}")


def test_markdown_has_paragraph_environment_and_plan(report):
    _, study, md, _ = report
    assert paragraph(study) in md
    assert "| devices | torch: cpu, jax: cpu, tensorflow: cpu |" in md
    assert "| seed | 7 |" in md
    assert '"name": "course <test>"' in md  # the plan, as JSON


def _images(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*>", page)


def test_html_is_self_contained(report):
    _, _, _, page = report
    references = re.findall(r"""\b(?:src|href|action|poster|data)\s*=\s*["']?([^"'\s>]*)""", page)
    assert references, "expected the images' src attributes"
    remote = [r for r in references if not r.startswith("data:")]
    assert not remote, f"references outside the file: {remote}"
    for forbidden in ("http://", "https://", "url(", "@import", "<script", "<link", "<iframe"):
        assert forbidden not in page.lower(), forbidden
    assert not re.search(r"""(?:src|href)\s*=\s*["']?//""", page)


def test_html_images_are_png_data_that_decode(report):
    _, _, _, page = report
    images = _images(page)
    # The heat map, the curves, the scatter plot, the confusion matrices.
    assert len(images) == 4, images
    for tag in images:
        alt = re.search(r'alt="([^"]+)"', tag)
        assert alt and len(alt.group(1)) > 20, tag[:200]
        data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert data, tag[:200]
        with Image.open(io.BytesIO(base64.b64decode(data.group(1), validate=True))) as image:
            assert image.format == "PNG"
            image.load()
            assert image.width > 300 and image.height > 150


def test_html_escapes_what_users_give(report):
    _, _, _, page = report
    assert "<b>big</b>" not in page and "&lt;b&gt;big&lt;/b&gt; &amp; $5" in page
    assert "<lr 50.0>" not in page and "&lt;lr 50.0&gt;" in page
    assert "course <test>" not in page and "Study: course &lt;test&gt;" in page
    assert re.search(r"<td[^>]*>failed: RuntimeError: training diverged", page)


def test_html_sections_and_damaged_history(report):
    _, study, _, page = report
    for heading in (
        "Runs",
        "Per-class accuracy",
        "Training curves",
        "Accuracy against training time",
        "Confusion matrices",
        "Environment",
        "Plan",
    ):
        assert f"<h2>{heading}</h2>" in page
    # scratch-tensorflow's history.json is damaged: only its curve is missing, and said so.
    assert "No readable history.json for: scratch-tensorflow." in page
    assert "of 4 train runs, overlaid" in page  # the other train runs' curves
    assert "8 confusion matrices" in page  # every ok run, evaluations included
    assert "AMD EPYC 7B13" in page and "keras 3.15.1" in page


def test_report_without_histories_or_matrices(tmp_path):
    # A study whose runs all failed still gets both files, with no empty figure.
    study = _study([_not_ok("a", "failed", "boom"), _not_ok("b", "skipped", "skipped: no")])
    md_path, html_path = write_report(tmp_path, study)
    page = html_path.read_text()
    assert "<img" not in page
    assert "Of 2 runs, 1 failed (a) and 1 was skipped (b)." in md_path.read_text()


def test_history_folder_outside_the_study_is_not_read(tmp_path):
    study = realistic_study()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "history.json").write_text(json.dumps([{"epoch": 1, "accuracy": 0.5}]))
    out = tmp_path / "study"
    out.mkdir()
    study["runs"][0]["folder"] = "../elsewhere"
    histories = records.read_histories(out, study["runs"][:1])
    assert histories == {"scratch-torch": None}
    study["runs"][0]["folder"] = str(outside)  # absolute
    assert records.read_histories(out, study["runs"][:1]) == {"scratch-torch": None}


def test_write_report_refuses_what_is_not_a_study(tmp_path):
    with pytest.raises(ValueError, match=r"expected study.json's object with a `runs` list"):
        write_report(tmp_path, {"format": 1, "records": []})
    with pytest.raises(ValueError, match="format 2; this version reads format 1"):
        write_report(tmp_path, {"format": 2, "runs": []})
    with pytest.raises(ValueError, match=r"runs\[0\].*string `name`"):
        write_report(tmp_path, {"format": 1, "runs": [{"kind": "keras"}]})


# ---------------------------------------------------------------- the paragraph


def _simple(name, accuracy, *, kind="keras", backend="torch", sha=SHA, **extra):
    record = {
        "name": name,
        "kind": kind,
        "backend": backend,
        "arch": "alexnet",
        "variant": "cifar",
        "mode": "scratch",
        "dataset": "cifar10",
        "status": "ok",
        "test_accuracy": accuracy,
        "train_seconds": 200.0,
        "initial_weights_sha256": sha,
        "cross_backend": {},
    }
    record.update(extra)
    return record


def test_paragraph_best_run_margin_and_spread():
    runs = [
        _simple("k-torch", 0.95, cross_backend={"jax": 0.9496}),
        _simple("k-jax", 0.97, backend="jax"),
        _simple("k-tf", 0.962, backend="tensorflow"),
        _simple("ref", 0.955, kind="torch-reference", sha=None),
        # An evaluation never counts as the best run, however high.
        _simple("k-jax-on-torch", 0.99, kind="evaluate", source="k-jax"),
    ]
    text = paragraph({"runs": runs})
    assert text.startswith(
        "Of 4 train runs, k-jax reached the highest test accuracy, 97.00%, "
        "0.80 points above the next, k-tf (96.20%)."
    )
    assert (
        f"From the same initial weights (sha256 {SHA[:12]}), the Keras runs on torch, jax "
        "and tensorflow ended 2.00 points apart (95.00% to 97.00%)."
    ) in text
    assert (
        "The Keras runs' saved models, evaluated under another backend (1 evaluation), "
        "differed from their own test accuracy by at most 0.04 points."
    ) in text
    assert (
        "The plain PyTorch reference (ref) reached 95.50%, 0.57 points below the mean of the 3 "
        "Keras runs of the same model (96.07%); they range from 95.00% to 97.00%."
    ) in text
    assert "transfer" not in text  # no transfer run: no sentence about it
    assert text.endswith("All 5 runs finished.")


def test_paragraph_needs_one_start_for_the_spread():
    runs = [
        _simple("k-torch", 0.95),
        _simple("k-jax", 0.97, backend="jax", sha="0" * 64),
    ]
    text = paragraph({"runs": runs})
    assert "initial weights" not in text
    assert "0.95" not in text.split("k-jax", 1)[0]  # the best is named first
    assert "PyTorch reference" not in text


def test_paragraph_transfer_share_and_unfinished_runs():
    runs = [
        _simple("scratch-a", 0.80, train_seconds=400.0),
        _simple("scratch-b", 0.70, backend="jax", train_seconds=100.0),
        _simple("transfer-a", 0.72, mode="transfer", train_seconds=100.0, sha=None),
        _simple("transfer-b", 0.60, mode="transfer", train_seconds=10.0, sha=None),
        {"name": "broken", "status": "failed", "message": "nan"},
        {"name": "no-weights", "status": "skipped", "message": "skipped: weights unavailable"},
        {"name": "no-weights-2", "status": "skipped", "message": "skipped: weights unavailable"},
    ]
    text = paragraph({"runs": runs})
    assert text.startswith("Of 4 train runs, scratch-a reached the highest test accuracy, 80.00%")
    assert (
        "The best transfer run, transfer-a, reached 72.00%, 90% of the best from-scratch "
        "accuracy (scratch-a, 80.00%), in 25% of its training time (100.0 s against 400.0 s)."
    ) in text
    assert text.endswith(
        "Of 7 runs, 1 failed (broken) and 2 were skipped (no-weights and no-weights-2)."
    )


def test_paragraph_with_one_run_and_with_none():
    assert paragraph({"runs": []}) == "The study has no runs."
    text = paragraph({"runs": [_simple("only", 0.5)]})
    assert text == (
        "only reached 50.00% test accuracy, the only train run with a result. The run finished."
    )


# ---------------------------------------------------------------- process and browser


@pytest.mark.once
def test_study_report_imports_no_framework_and_no_matplotlib():
    # The report reruns on a machine with the study folder only; matplotlib loads on first plot.
    code = (
        "import sys, alexnet_k3.studies.report\n"
        "print(sorted(m for m in ('keras', 'torch', 'tensorflow', 'jax', 'matplotlib')"
        " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


LOADED_IMAGES = """
Promise.all(Array.from(document.images, i => i.decode().then(() => true, () => false)))
  .then(() => ({
    title: document.title,
    headings: Array.from(document.querySelectorAll('h2'), h => h.textContent),
    tables: document.querySelectorAll('table').length,
    width: document.documentElement.scrollWidth,
    images: Array.from(document.images, i => ({
      src: i.src.slice(0, 22), alt: i.alt, complete: i.complete,
      width: i.naturalWidth, shown: i.getBoundingClientRect().width,
    })),
  }))
"""


@pytest.mark.once
def test_html_in_headless_chromium(report, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "chromium is not installed (Debian: `apt-get install chromium`): "
            "the browser check of study.html needs it"
        )
    out, _, _, _ = report
    control = tmp_path / "control.html"
    control.write_text('<img src="http://127.0.0.1:9/remote.png" alt="remote">')
    with Chromium(chromium, tmp_path / "profile") as browser:
        # The check itself first: a page that asks for a remote image is seen doing so.
        browser.open(control.as_uri())
        assert "http://127.0.0.1:9/remote.png" in browser.requested_urls()

        browser.open((out / "study.html").as_uri())
        page = browser.evaluate(LOADED_IMAGES)
        requested = browser.requested_urls()
        screenshot = browser.screenshot()
    shot = tmp_path / "study_html.png"
    shot.write_bytes(screenshot)
    if os.environ.get("ALEXNET_K3_TEST_ARTIFACTS"):
        artifacts = Path(os.environ["ALEXNET_K3_TEST_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, artifacts / shot.name)

    assert requested[0] == (out / "study.html").as_uri()
    outside = [u for u in requested if not u.startswith(("data:", "file:"))]
    assert not outside, f"study.html made network requests: {outside}"
    assert page["title"] == "Study: course <test>"
    assert "Confusion matrices" in page["headings"] and page["tables"] >= 4
    assert len(page["images"]) == 4
    for image in page["images"]:
        assert image["src"] == "data:image/png;base64,", image
        assert image["complete"] and image["width"] > 0 and image["shown"] > 0, image
    # Nothing wider than the window: wide tables scroll inside their own box.
    assert page["width"] <= 1280, page["width"]
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 2000
        # A rendered page, not a blank one: many distinct colours (plots, tables, text).
        assert len(image.convert("RGB").getcolors(1 << 24)) > 1000


def test_speed_measured_under_contention_is_marked_everywhere(tmp_path):
    busy = _record("busy", "keras", "torch", 0.8, contended=True, train_seconds=338.4)
    calm = _record("calm", "keras", "jax", 0.7, contended=False, images_per_second=335.6)
    transfer = _record("transfer", "keras", "jax", 0.75, mode="transfer", train_seconds=30.0)
    study = _study([busy, calm, transfer])
    md_path, html_path = write_report(tmp_path, study)
    md, page = md_path.read_text(), html_path.read_text()
    rows = _table_rows(md, "## Runs")
    busy_row = next(r for r in rows if r.startswith("| busy |"))
    calm_row = next(r for r in rows if r.startswith("| calm |"))
    assert "| 338.4* | 1500.0* |" in busy_row and "*" not in calm_row
    assert contention.NOTE in md and contention.NOTE in page and "338.4*" in page
    text = paragraph(study)
    assert "The train time and images/s of busy (*) were measured while other processes" in text
    # A time measured under contention is not set against another one.
    assert "of its training time" not in text
    assert records.contention_note(_study([calm])) is None
