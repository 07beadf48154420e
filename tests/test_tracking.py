"""MLflow tracking (alexnet_k3.tracking): a finished run folder logged after the fact.

Real MLflow throughout: a SQLite store beside the run folder, and a real
`mlflow server` (the README's `mlflow ui` line) started on 127.0.0.1 by the test,
checked with MLflow's own client. Tracking does the same whatever the backend,
so the module runs in the torch session only.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest
from mlflow_server import mlflow_server

from alexnet_k3 import launch, tracking
from alexnet_k3.cli import main

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.validation import _validate_metric_name  # noqa: E402

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# No tracking configured by whoever runs the tests: each test says where runs go.
NO_TRACKING = {tracking.TRACKING_URI_ENV_VAR: "", tracking.EXPERIMENT_ENV_VAR: ""}
# What a run folder may hold: tracking must add nothing there.
RUN_FOLDER_FILES = {
    "config.json",
    "class_names.json",
    "history.json",
    "history.csv",
    "metrics.json",
    "model.keras",
    "report.md",
    "curves.png",
    "confusion_matrix.png",
    "per_class_accuracy.png",
    "samples.png",
}


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    for name, value in NO_TRACKING.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny digits run trained here with `train(..., mlflow=True)` and no tracking URI:
    (run folder, what train printed). Logged to the local store beside the folder."""
    from alexnet_k3.training import train

    base = tmp_path_factory.mktemp("tracked")
    printed = io.StringIO()
    with _environ(**NO_TRACKING), contextlib.redirect_stdout(printed):
        train(base / "run", dataset="digits", epochs=2, batch_size=64, verbose=0, mlflow=True)
    return base / "run", printed.getvalue()


@contextlib.contextmanager
def _environ(**values):
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _logged_run_id(stdout: str) -> str:
    found = re.search(r"^mlflow: logged .* as run (\w+) of experiment", stdout, flags=re.M)
    assert found, stdout
    return found.group(1)


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "mlflow" in line.lower()]


def test_train_with_mlflow_logs_the_finished_folder_to_the_store_beside_it(trained):
    run_dir, printed = trained
    run_id = _logged_run_id(printed)
    store = run_dir.parent / tracking.STORE_FILE
    assert store.is_file()
    assert set(p.name for p in run_dir.iterdir()) <= RUN_FOLDER_FILES
    client = MlflowClient(tracking_uri=tracking.default_store(run_dir.parent))
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "alexnet-k3"
    assert run.info.status == "FINISHED" and run.info.run_name == "run"

    config = json.loads((run_dir / "config.json").read_text())
    assert set(run.data.params) == set(config)
    assert run.data.params["epochs"] == "2" and run.data.params["dataset"] == "digits"
    assert run.data.params["batch_size"] == "64" and run.data.params["weights"] == "null"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [1, 2]
    assert [m.value for m in losses] == pytest.approx([e["loss"] for e in history])
    logged = run.data.metrics
    assert logged["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert logged["train_seconds"] == pytest.approx(metrics["train_seconds"])
    per_class = {k: v for k, v in logged.items() if k.startswith("class_accuracy/")}
    assert per_class == pytest.approx(
        {f"class_accuracy/{k}": v for k, v in metrics["per_class_accuracy"].items()}
    )
    tags = run.data.tags
    assert {k: tags[k] for k in ("backend", "arch", "variant", "mode", "dataset", "kind")} == {
        "backend": metrics["backend"],
        "arch": "alexnet",
        "variant": "cifar",
        "mode": "scratch",
        "dataset": "digits",
        "kind": "train",
    }
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == set(p.name for p in run_dir.iterdir()) - {"history.json"}
    # The artifacts lie beside the store, not under MLflow's ./mlruns in the working directory.
    assert run.info.artifact_uri.startswith((run_dir.parent / tracking.ARTIFACTS_FOLDER).as_uri())
    local_model = Path(client.download_artifacts(run_id, "model.keras"))
    assert local_model.read_bytes() == (run_dir / "model.keras").read_bytes()


def test_logging_the_same_folder_again_is_a_no_op(trained, capsys):
    run_dir, printed = trained
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    again = tracking.log_run(run_dir, experiment="alexnet-k3")
    assert again == _logged_run_id(printed)
    client = MlflowClient(tracking_uri=tracking.default_store(run_dir.parent))
    experiment = client.get_experiment_by_name("alexnet-k3")
    assert len(client.search_runs([experiment.experiment_id])) == 1
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    assert capsys.readouterr().err == ""


def test_an_evaluation_folder_is_logged_with_what_it_evaluated(trained, tmp_path, capsys):
    from alexnet_k3.evaluation import evaluate

    run_dir, _ = trained
    out = tmp_path / "evaluation"
    metrics = evaluate(run_dir / "model.keras", "digits", out=out)
    uri = tracking.default_store(tmp_path / "store")
    run_id = tracking.log_run(out, experiment="evaluations", tracking_uri=uri, tags={"who": "me"})
    assert run_id is not None, capsys.readouterr().err
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.params["model"] == str(run_dir / "model.keras")
    assert run.data.params["dataset"] == "digits"
    assert run.data.params["backend"] == metrics["backend"]
    assert run.data.tags["kind"] == "evaluation" and run.data.tags["who"] == "me"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert "train_seconds" not in run.data.metrics
    assert not (tmp_path / "mlruns.db").exists()  # the argument's store, not the default


def test_an_unreachable_server_costs_seconds_and_one_warning(trained, capsys):
    run_dir, _ = trained
    (port,) = launch.free_ports(1)  # nothing listens there
    start = time.monotonic()
    uri = f"http://127.0.0.1:{port}"
    assert tracking.log_run(run_dir, experiment="x", tracking_uri=uri) is None
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("warning: MLflow logging failed") and "did not answer" in err
    assert f"127.0.0.1:{port}" in err and "The run itself is fine" in err
    assert seconds < 20
    # The retry settings applied during the call only.
    assert not set(tracking.HTTP_SETTINGS) & set(os.environ)


@pytest.mark.parametrize("case", ["no mlflow", "bad uri", "upload refused", "unfinished"])
def test_every_failure_is_one_warning_never_an_exception(case, trained, tmp_path, monkeypatch):
    run_dir, _ = trained
    uri = tracking.default_store(tmp_path)
    expected = {
        "no mlflow": "pip install 'alexnet-k3[mlflow]'",
        "bad uri": "bogus://",
        "upload refused": "while uploading report.md",
        "unfinished": "metrics.json does not exist",
    }[case]
    if case == "no mlflow":
        for name in [n for n in sys.modules if n.split(".")[0] == "mlflow"]:
            monkeypatch.setitem(sys.modules, name, None)  # what an absent package does
    elif case == "bad uri":
        uri = "bogus://nowhere"
    elif case == "upload refused":
        (tmp_path / tracking.ARTIFACTS_FOLDER).write_text("a file where the folder goes")
    elif case == "unfinished":
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "config.json").write_text("{}")
        run_dir = tmp_path / "half"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert tracking.log_run(run_dir, experiment="x", tracking_uri=uri) is None
    assert len(err.getvalue().splitlines()) == 1, err.getvalue()
    assert expected in err.getvalue()
    if case == "upload refused":  # the half-logged run is marked failed, not left running
        client = MlflowClient(tracking_uri=uri)
        (run,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
        assert run.info.status == "FAILED"


def test_metric_keys_are_names_mlflow_accepts():
    names = ["cat", "chat/chien", "été: ok?", "", ".", "..", "a b-c.d_e"]
    for name in names:
        key = tracking.metric_key(f"class_accuracy/{tracking.metric_key(name, '/')}")
        _validate_metric_name(key)  # MLflow's own check: raises for a name it refuses
    assert tracking.metric_key("chat/chien", "/") == "chat_chien"
    assert tracking.metric_key("a b-c.d_e") == "a b-c.d_e"


def test_evaluate_mlflow_needs_an_out_folder(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "runs/x/model.keras", "--mlflow"])
    assert exit_info.value.code == 2
    assert "--mlflow logs the evaluation's folder" in capsys.readouterr().err


def _readme_tracking_commands():
    """The README's console lines of its tracking section: train --mlflow, then mlflow ui."""
    section = README.split("### Experiment tracking (optional)", 1)[1].split("\n#", 1)[0]
    blocks = re.findall(r"```console\n(.*?)```", section, flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if line]


@pytest.mark.slow
def test_readme_tracking_commands_then_a_served_store(tmp_path, run_cli):
    commands = _readme_tracking_commands()
    assert [argv[:2] for argv in commands] == [["alexnet-k3", "train"], ["mlflow", "ui"]]
    train_argv, ui_argv = commands
    assert "--mlflow" in train_argv
    run_dir = tmp_path / train_argv[train_argv.index("--out") + 1]
    (tmp_path / "cwd").mkdir()

    # The README's train line as written (fewer epochs), no tracking URI: the local store.
    result = run_cli(
        *train_argv[1:], "--epochs", "2", "--verbose", "0", cwd=tmp_path, env=NO_TRACKING
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _warnings(result.stderr) == []
    local_id = _logged_run_id(result.stdout)
    assert set(p.name for p in run_dir.iterdir()) <= RUN_FOLDER_FILES
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cwd") == [
        "runs"  # nothing from MLflow in the working directory (./mlruns, ./mlflow.db)
    ]
    assert tracking.default_store(run_dir.parent) == f"sqlite:///{tmp_path / 'runs/mlruns.db'}"

    with mlflow_server(ui_argv, cwd=tmp_path, artifacts=tmp_path / "served") as url:
        client = MlflowClient(tracking_uri=url)
        # The README's `mlflow ui` shows the README's run, metrics and artifacts.
        run = client.get_run(local_id)
        assert client.get_experiment(run.info.experiment_id).name == "alexnet-k3"
        assert [m.step for m in client.get_metric_history(local_id, "accuracy")] == [1, 2]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
        assert {"report.md", "model.keras"} <= {a.path for a in client.list_artifacts(local_id)}

        # Logged over HTTP, the artifacts uploaded through the server.
        served_id = tracking.log_run(
            run_dir, experiment="served", tracking_uri=url, tags={"study": "s1"}
        )
        assert served_id is not None
        run = client.get_run(served_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert run.data.tags["study"] == "s1" and run.data.tags["backend"] == metrics["backend"]
        assert run.data.params["epochs"] == "2"
        assert [m.step for m in client.get_metric_history(served_id, "loss")] == [1, 2]
        assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
        artifacts = {a.path for a in client.list_artifacts(served_id)}
        assert {"report.md", "model.keras", "curves.png", "metrics.json"} <= artifacts
        fetched = client.download_artifacts(served_id, "model.keras", str(tmp_path / "cwd"))
        assert _sha256(fetched) == _sha256(run_dir / "model.keras")
        assert any((tmp_path / "served").rglob("model.keras"))

        # `evaluate --out` with only MLFLOW_TRACKING_URI set: logged too.
        served = {tracking.TRACKING_URI_ENV_VAR: url, tracking.EXPERIMENT_ENV_VAR: "served"}
        evaluation = tmp_path / "runs" / "evaluated"
        result = run_cli(
            "evaluate", run_dir / "model.keras", "--out", evaluation, cwd=tmp_path, env=served
        )
        assert result.returncode == 0 and _warnings(result.stderr) == [], result.stderr[-3000:]
        run = client.get_run(_logged_run_id(result.stdout))
        assert run.data.tags["kind"] == "evaluation"
        assert run.data.params["model"] == str(run_dir / "model.keras")
        assert client.get_experiment(run.info.experiment_id).name == "served"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"report.md", "metrics.json"} <= artifacts


@pytest.mark.slow
def test_train_with_an_unreachable_server_warns_once_and_succeeds(tmp_path, run_cli):
    (port,) = launch.free_ports(1)  # nothing listens there
    result = run_cli(
        "train", "--dataset", "digits", "--epochs", "1", "--verbose", "0", "--mlflow",
        "--out", tmp_path / "run",
        env={tracking.TRACKING_URI_ENV_VAR: f"http://127.0.0.1:{port}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = _warnings(result.stderr)
    assert warning.startswith("warning: MLflow logging failed") and "did not answer" in warning
    assert "test accuracy" in result.stdout and (tmp_path / "run" / "metrics.json").is_file()


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
