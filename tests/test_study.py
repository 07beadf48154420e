"""`alexnet-k3 study`: plans checked whole before anything runs, runs in their own
processes, resumed after a kill, failures and missing weights as rows, one report."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from cifar_files import write_cifar10

from alexnet_k3.config import TrainConfig
from alexnet_k3.studies import PlanError, load_plan, study
from alexnet_k3.studies.processes import find_imagenet_weights

ALL = ["torch", "tensorflow", "jax"]


def _plan_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.toml"
    path.write_text(text)
    return path


# --- Plans ---------------------------------------------------------------------------


def test_the_presets_have_every_run_kind_on_every_backend():
    demo = load_plan("demo", backends=ALL)
    kinds = [(r.kind, r.backend) for r in demo.runs]
    assert kinds.count(("keras", "torch")) == 1
    assert ("keras", "jax") in kinds and ("keras", "tensorflow") in kinds
    assert ("torch-reference", "torch") in kinds
    evaluations = [r for r in demo.runs if r.kind == "evaluate"]
    # Each Keras run's model is tested under another backend than it was trained on.
    assert len(evaluations) == 3
    assert all(demo.run(e.source).backend != e.backend for e in evaluations)
    course = load_plan("course", backends=ALL)
    configs = {r.name: r.config() for r in course.runs if r.trains}
    assert {c.mode for c in configs.values()} == {"scratch", "transfer"}
    assert {c.arch for c in configs.values()} == {"alexnet", "vgg16"}
    # The course studies' settings: 30 epochs from scratch, 10 for transfer, batch 64.
    assert {c.epochs for c in configs.values() if c.mode == "scratch"} == {30}
    assert {(c.epochs, c.freeze_epochs) for c in configs.values() if c.mode == "transfer"} == {
        (10, 2)
    }
    assert {c.batch_size for c in configs.values()} == {64}
    assert "0.001" in course.notes  # the report says where the recipe departs from theirs


def test_a_plan_file_overrides_a_preset_by_table_and_by_run_name(tmp_path):
    path = _plan_file(
        tmp_path,
        """
preset = "course"
cross_backend = false
[defaults]
batch_size = 8
[transfer]
epochs = 2
freeze_epochs = 1
[[runs]]
name = "transfer-vgg16"
image_size = 32
[[runs]]
name = "extra"
backend = "jax"
variant = "paper"
""",
    )
    plan = load_plan(path, backends=["torch", "jax"])
    assert not [r for r in plan.runs if r.kind == "evaluate"]
    vgg = plan.run("transfer-vgg16").config()
    assert (vgg.arch, vgg.image_size, vgg.epochs, vgg.freeze_epochs) == ("vgg16", 32, 2, 1)
    assert vgg.batch_size == 8
    assert plan.run("scratch-cifar-jax").config().epochs == 30  # the preset's scratch table
    assert plan.run("extra").config().variant == "paper"
    assert {r.backend for r in plan.runs if r.name.startswith("scratch-cifar-")} == {
        "torch",
        "jax",
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[runs]]\nepochz = 3\n", "run 1: unknown key 'epochz'"),
        ("colour = 1\n", "unknown key 'colour' at the top level"),
        ("[defaults]\nlr = 0.1\n[[runs]]\n", "[defaults]: unknown key 'lr'"),
        (
            '[[runs]]\nname = "v"\narch = "vgg16"\nvariant = "cifar"\n',
            "run 'v': variant = 'cifar' with arch = 'vgg16'",
        ),
        ('[[runs]]\nname = "j"\nbackend = "jax"\n', "run 'j': backend = 'jax' is not installed"),
        ('[[runs]]\nbackend = "mxnet"\n', "backend = 'mxnet'; expected one of"),
        (
            '[[runs]]\nimplementation = "torch-reference"\nbackend = "tensorflow"\n',
            "the reference is plain PyTorch",
        ),
        ("[[runs]]\nepochs = 0\n", "`epochs` must be a positive integer, received epochs=0"),
        (
            '[[runs]]\nname = "t"\nfreeze_epochs = 2\n',
            "run 't': `freeze_epochs` must be 0 without pretrained `weights`",
        ),
        ("[[runs]]\ndata_parallel = true\n", "'data_parallel' cannot be set in a study plan"),
        ('[[runs]]\nname = "../up"\n', "name '../up' cannot be a folder name"),
        ('[[runs]]\nname = "a"\n[[runs]]\nname = "a"\n', "two runs are named 'a'"),
        ('preset = "imagenet"\n', "preset = 'imagenet' is not a preset"),
        ("[[runs]]\nepochs = 2\n[[runs\n", "is not valid TOML"),
        ("cross_backend = false\n", "has no runs"),
    ],
)
def test_plan_errors_name_the_plan_the_run_and_the_key(tmp_path, text, message):
    path = _plan_file(tmp_path, text)
    with pytest.raises(PlanError) as error:
        load_plan(path, backends=["torch", "tensorflow"])
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_a_missing_plan_names_the_presets(tmp_path):
    with pytest.raises(PlanError, match="neither a preset \\(demo, course\\) nor a TOML file"):
        load_plan(tmp_path / "nope.toml")


def test_dry_run_prints_the_plan_and_runs_nothing(run_cli, tmp_path):
    result = run_cli("study", "--plan", "course", "--out", tmp_path / "s", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "backend"]
    assert any("torch-reference" in line for line in lines)
    assert any(line.startswith("transfer-vgg16") for line in lines)
    assert not (tmp_path / "s").exists()
    bad = run_cli("study", "--plan", "nope", "--out", tmp_path / "s")
    assert bad.returncode == 2
    assert bad.stderr.startswith("alexnet-k3 study: error: plan 'nope' is neither a preset")


def test_a_changed_plan_entry_is_refused_naming_the_difference(tmp_path):
    plan = {"runs": [{"name": "a", "backend": "torch", "epochs": 3}]}
    folder = tmp_path / "s" / "a"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(asdict(TrainConfig(epochs=2))))
    with pytest.raises(PlanError) as error:
        study(plan, tmp_path / "s")
    assert "run 'a': epochs is 2 in the run's config.json but 3 in the plan" in str(error.value)
    assert "--restart a" in str(error.value)
    assert (folder / "config.json").exists()  # refused: nothing touched
    with pytest.raises(PlanError, match="the plan has no run of that name"):
        study(plan, tmp_path / "s", restart=["b"])


def test_missing_imagenet_weights_say_where_to_put_a_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    # A closed local port as the proxy: the download fails at once, offline or not.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    path, note = find_imagenet_weights("alexnet", tmp_path / "mine")
    assert path is None
    assert note.startswith("skipped: weights unavailable: alexnet-owt-7be5be79.pth is not in")
    assert str(tmp_path / "mine") in note
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in note


# --- Whole studies, each run in its own process ----------------------------------------


def _study_command(plan, out, *extra):
    return [sys.executable, "-m", "alexnet_k3", "study", "--plan", str(plan), "--out", str(out)]


def _records(out: Path) -> dict:
    return {r["name"]: r for r in json.loads((out / "study.json").read_text())["runs"]}


@pytest.mark.once
@pytest.mark.slow
def test_a_killed_study_continues_and_a_diverged_run_is_a_failed_row(tmp_path):
    plan = _plan_file(
        tmp_path,
        """
[defaults]
dataset = "digits"
variant = "cifar"
batch_size = 128
[[runs]]
name = "first"
backend = "torch"
epochs = 1
[[runs]]
name = "second"
backend = "torch"
epochs = 3
[[runs]]
name = "diverges"
backend = "torch"
epochs = 1
learning_rate = 1e12
""",
    )
    out = tmp_path / "study"
    command = _study_command(plan, out)
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    # SIGKILL the study once the second run has finished an epoch.
    deadline = time.monotonic() + 400
    while not (out / "second" / "history.json").exists():
        assert first.poll() is None, "the study ended before the second run trained"
        assert time.monotonic() < deadline
        time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    first.stdout.close()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "first").iterdir()}
    time.sleep(1)  # the killed run's process follows its parent (PR_SET_PDEATHSIG)

    # Started again, and logging to MLflow (the local store in the study's folder).
    again = subprocess.run(
        [*command, "--mlflow"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 1, again.stderr[-3000:]  # a run failed
    assert "run 1 of 3: first (keras on torch): finished earlier, kept" in again.stdout
    assert "run 2 of 3: second (keras on torch): resuming" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "first").iterdir()} == kept
    records = _records(out)
    assert [r["status"] for r in records.values()] == ["ok", "ok", "failed"]
    assert records["second"]["epochs"] == 3
    assert len(json.loads((out / "second" / "history.json").read_text())) == 3
    assert "diverged" in records["diverges"]["message"]
    assert records["diverges"]["test_accuracy"] is None  # no figure it did not produce
    assert "1 failed" in again.stdout.splitlines()[-1]
    for name in ("study.md", "study.html"):
        assert (out / name).stat().st_size > 0
    assert not list(out.rglob(".lock")) and not list(out.rglob(".tmp-*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("study-study")
    logged = {r.data.tags["study_run"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(logged) == ["first", "second"]  # the failed run has nothing to log
    second = logged["second"]
    assert second.data.tags["backend"] == "torch" and second.data.tags["kind"] == "keras"
    assert second.data.metrics["test_accuracy"] == records["second"]["test_accuracy"]
    history = client.get_metric_history(second.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(second.info.run_id)}
    assert {"report.md", "model.keras", "metrics.json"} <= artifacts


@pytest.mark.once
@pytest.mark.slow
def test_the_course_plan_skips_transfer_without_weights_then_runs_every_kind(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    import torch

    tarball = write_cifar10(tmp_path, n_train=60, n_test=20, as_tarball=True)
    plan = _plan_file(
        tmp_path,
        f"""
preset = "course"
[defaults]
data_dir = "{tarball}"
batch_size = 10
[scratch]
epochs = 1
[transfer]
epochs = 2
freeze_epochs = 1
image_size = 64
""",
    )
    out = tmp_path / "study"
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch-home"),
        # A closed local port as the proxy: the weights' download fails at once.
        "https_proxy": "http://127.0.0.1:9",
        "ALEXNET_K3_DOWNLOAD_TIMEOUT": "10",
    }
    command = _study_command(plan, out)
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]  # skipped runs are not failures
    records = _records(out)
    transfer = [r for r in records.values() if r["mode"] == "transfer"]
    assert len(transfer) == 8  # AlexNet on 3 backends, VGG16, and their evaluations
    assert {r["status"] for r in transfer} == {"skipped"}
    trained = [r for r in transfer if r["kind"] == "keras"]
    assert all(r["message"].startswith("skipped: weights unavailable") for r in trained)
    assert all(str(hub) in r["message"] for r in trained)
    scratch = [r for r in records.values() if r["mode"] == "scratch"]
    assert {r["status"] for r in scratch} == {"ok"}
    keras_rows = [r for r in scratch if r["kind"] == "keras"]
    assert sorted(r["backend"] for r in keras_rows) == sorted(ALL)
    assert len({r["initial_weights_sha256"] for r in keras_rows}) == 1  # one start
    assert all(len(r["cross_backend"]) == 1 for r in keras_rows)
    assert [r["kind"] for r in scratch].count("torch-reference") == 1

    # The weights where the download puts them: torchvision checkpoints, random weights.
    hub.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), hub / "alexnet-owt-7be5be79.pth")
    torch.save(torchvision.models.vgg16().state_dict(), hub / "vgg16-397923af.pth")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "scratch-cifar-torch (keras on torch): finished earlier, kept" in again.stdout
    assert "is not torchvision's published alexnet-owt-7be5be79.pth" in again.stderr
    records = _records(out)
    assert {r["status"] for r in records.values()} == {"ok"}
    assert {r["kind"] for r in records.values()} == {"keras", "torch-reference", "evaluate"}
    vgg = records["transfer-vgg16"]
    assert (vgg["arch"], vgg["mode"], vgg["variant"]) == ("vgg16", "transfer", None)
    assert len(vgg["per_class_accuracy"]) == 10
    study_json = json.loads((out / "study.json").read_text())
    assert study_json["plan"]["name"].startswith("course")
    assert set(study_json["environment"]["devices"]) == set(ALL)
    html = (out / "study.html").read_text()
    assert "transfer-vgg16" in html and "scratch-cifar-torch-reference" in html


def test_the_readme_plan_file_is_a_plan(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", readme, flags=re.S)
    plan = load_plan(_plan_file(tmp_path, block), backends=ALL)
    assert plan.run("scratch-paper-jax").config().variant == "paper"
    assert plan.run("scratch-cifar-torch-reference-seed1").kind == "torch-reference"
