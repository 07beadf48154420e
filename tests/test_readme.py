"""Every command the README shows runs, here or in CI (.ci/run), and does what the README says.

CIFAR-10 and torchvision's weights cannot be downloaded here, so the CIFAR
commands run on a small CIFAR-10 written in the official layout, with fewer
epochs appended (a later `--epochs` overrides the README's), and
`--weights imagenet` is run twice: as written (offline: it must fail with the
file name and the cache folder) and with a random-weight torchvision checkpoint
in its place.

`nox -s ...` commands must be run by `.ci/run`, read as shell commands (a
session named only in a comment or an echo does not count). The Python blocks
run as written (`tests/readme_snippets.py`), `weights="imagenet"` downloaded over
HTTP from this machine; the inline `ak.train(...)`/`ak.evaluate(...)` calls run
with tiny settings in place of the `...`.
"""

import ast
import csv
import dataclasses
import hashlib
import http.server
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tomllib
from cifar_files import write_cifar10
from folder_files import CLASSES, write_photo_folder
from readme_snippets import python_blocks, run_block

from alexnet_k3 import launch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BACKEND = keras.config.backend()


def _commands():
    blocks = re.findall(r"```console\n(.*?)```", README, flags=re.S)
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines()]


COMMANDS = [argv for argv in _commands() if argv]


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script as argv lists: comments, `echo`s and
    leading `VAR=value` assignments left out, `a; b`, `a && b`, `{ a; }` split apart."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|(){}")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|(){}"):
                if current and current[0] != "echo":
                    commands.append(current)
                current = []
            elif current or not re.fullmatch(r"\w+=.*", token):
                current.append(token)
    return commands


def nox_sessions_run(script: str) -> set[str]:
    """The sessions the script's `nox ... -s A B ...` commands run."""
    sessions = set()
    for argv in shell_commands(script):
        if Path(argv[0]).name == "nox" and "-s" in argv:
            for arg in argv[argv.index("-s") + 1 :]:
                if arg.startswith("-"):
                    break
                sessions.add(arg)
    return sessions


def test_ci_script_is_read_as_commands():
    script = textwrap.dedent(
        """
        # nox -s demo is named in a comment only
        echo "next: nox -s bench_all"
        f() { rm -rf .nox; }
        nox -s lint tests -- -q; X=1 .venv/bin/nox -s "bench(backend='jax')" && f
        """
    )
    assert shell_commands(script) == [
        ["f"],
        ["rm", "-rf", ".nox"],
        ["nox", "-s", "lint", "tests", "--", "-q"],
        [".venv/bin/nox", "-s", "bench(backend='jax')"],
        ["f"],
    ]
    assert nox_sessions_run(script) == {"lint", "tests", "bench(backend='jax')"}


CI_SCRIPT = (ROOT / ".ci" / "run").read_text()


def test_readme_commands_are_all_accounted_for():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    ci_sessions = nox_sessions_run(CI_SCRIPT)
    for argv in COMMANDS:
        if argv[0] in ("alexnet-k3", "torchrun"):
            continue  # run by test_readme_cli_commands below
        if argv[:2] == ["nox", "-s"]:
            sessions = argv[2 : argv.index("--")] if "--" in argv else argv[2:]
            for session in sessions:
                assert session in ci_sessions, f"CI (.ci/run) does not run {argv}"
        elif argv[:2] == ["pip", "install"]:
            target = argv[2]
            if target == "nox":
                assert any(
                    "pip" in c and "install" in c and any(a.startswith("nox") for a in c)
                    for c in shell_commands(CI_SCRIPT)
                ), "CI does not install nox with pip"
            else:
                # A fresh venv installs the first extra alone, in CI, and runs the model
                # snippet there; the others are checked to exist.
                named = re.fullmatch(r"alexnet-k3\[(\w+)\]", target)
                assert named and named.group(1) in extras, target
                assert "install_check" in ci_sessions, "CI does not run nox -s install_check"
                assert f'".[{named.group(1)}]"' in _session_source("install_check"), target
        elif argv[0] == "export":
            continue  # test_readme_distribution_variables_reach_jax and the TF_CONFIG test
        elif argv[0] == "mlflow":
            continue  # tests/test_tracking.py starts it on the store the train line wrote
        else:
            pytest.fail(f"README command {argv} is neither run by a test nor by CI")


def _session_source(name: str) -> str:
    """The source of the noxfile's session function `name`."""
    noxfile = (ROOT / "noxfile.py").read_text()
    for node in ast.parse(noxfile).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(noxfile, node)
    pytest.fail(f"noxfile.py has no session {name}")


def _exported() -> dict[str, str]:
    """The README's `export NAME=VALUE` lines."""
    return dict(argv[1].split("=", 1) for argv in COMMANDS if argv[0] == "export")


def test_readme_tf_config_names_a_two_worker_job(monkeypatch):
    # The README's `export TF_CONFIG=...`: process 0 of 2 here, and on tensorflow the
    # cluster TensorFlow's own resolver (MultiWorkerMirroredStrategy's) reads from it.
    tf_config = _exported()["TF_CONFIG"]
    assert launch.job_process("tensorflow", {"TF_CONFIG": tf_config}) == (0, 2)
    if BACKEND != "tensorflow":
        return
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", tf_config)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert resolver.cluster_spec().as_dict() == {"worker": ["host0:12345", "host1:12345"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 0)


def test_readme_distribution_variables_reach_jax(monkeypatch):
    # The README's `export KERAS_DISTRIBUTION_*` lines: read as this process's place in
    # a job, and passed on to jax.distributed.initialize as keras.distribution's would.
    exported = {k: v for k, v in _exported().items() if k.startswith("KERAS_DISTRIBUTION_")}
    assert len(exported) == 3
    assert launch.job_process("jax", exported) == (
        int(exported["KERAS_DISTRIBUTION_PROCESS_ID"]),
        int(exported["KERAS_DISTRIBUTION_NUM_PROCESSES"]),
    )
    if BACKEND != "jax":
        return
    import jax

    from alexnet_k3.backend import jobs

    for name, value in exported.items():
        monkeypatch.setenv(name, value)
    received = {}
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: received.update(kwargs))
    job = object.__new__(jobs.Job)
    job.rank, job.processes, job.timeout = 0, 2, 20.0
    job._join_jax()
    assert received["coordinator_address"] == "host0:1234"  # the first address: process 0
    assert (received["num_processes"], received["process_id"]) == (2, 0)


# The commands as written: run once (torch session). Each backend's own train,
# transfer, evaluate and predict paths have their per-backend tests elsewhere.
@pytest.mark.once
@pytest.mark.slow
def test_readme_cli_commands(tmp_path, run_cli, monkeypatch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    data = write_cifar10(tmp_path / "cifar", n_train=40, n_test=20, as_tarball=True)
    write_photo_folder(tmp_path / "photos", per_class=5)  # --data-dir photos
    new_photos = write_photo_folder(tmp_path / "new", per_class=1)  # predict's new-photos
    (tmp_path / "new-photos").mkdir()
    for name in CLASSES:
        (new_photos / name / "00.jpg").rename(tmp_path / "new-photos" / f"{name}.jpg")
    checkpoint = tmp_path / "random-alexnet.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoint)

    def pretrained(argv):
        """The random checkpoint standing in for `--weights imagenet` in `argv`, and
        the file name the offline error must give (VGG16's made on first use)."""
        arch = _option(argv, "--arch") if "--arch" in argv else "alexnet"
        if arch == "alexnet":
            return checkpoint, "alexnet-owt-7be5be79.pth"
        path = tmp_path / f"random-{arch}.pth"
        if not path.exists():
            torch.save(getattr(torchvision.models, arch)().state_dict(), path)
        return path, "vgg16-397923af.pth"

    env = {
        "ALEXNET_K3_DATA": str(data),
        "TORCH_HOME": str(tmp_path / "torch-home"),  # empty cache: "imagenet" must fail cleanly
        "KERAS_HOME": str(tmp_path / "keras-home"),
        "JAX_NUM_CPU_DEVICES": "2",  # for the data-parallel command
    }
    quick = ["--epochs", "1", "--verbose", "0"]

    def run(argv, expect_ok=True):  # argv[0] is "alexnet-k3"
        return run_cli(*argv[1:], cwd=tmp_path, env=env, timeout=900, expect_ok=expect_ok)

    ran = 0
    for argv in COMMANDS:
        if argv[0] == "torchrun":  # 2 CPU processes here, for the README's GPUs
            (port,) = launch.free_ports(1)
            nproc = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
            argv = ["alexnet-k3", *nproc, f"--master-port={port}", *argv[3:]]
            result = _run_torchrun(argv[1:] + quick, cwd=tmp_path, env=env)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["processes"] == 2 and metrics["devices"] == 2
            ran += 1
            continue
        if argv[0] != "alexnet-k3" or "--mlflow" in argv:
            continue  # --mlflow: tests/test_tracking.py runs it, then the `mlflow ui` after it
        ran += 1
        command = argv[1]
        if command == "train" and "--resume" in argv:
            result = run(argv)
            assert "nothing to resume" in result.stdout
        elif command == "train" and "imagenet" in argv:
            offline = run(argv, expect_ok=False)
            weights, file_name = pretrained(argv)
            assert offline.returncode == 2
            assert file_name in offline.stderr
            assert str(tmp_path / "torch-home") in offline.stderr
            argv = [str(weights) if a == "imagenet" else a for a in argv]
            # VGG16 at its smallest input: 224x224 would take minutes on a CPU.
            small = ["--image-size", "32"] if "vgg16" in argv else []
            run(argv + ["--epochs", "2", "--freeze-epochs", "1", "--verbose", "0", *small])
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["mode"] == "transfer" and metrics["epochs"] == 2
        elif command == "train":
            run(argv + quick)
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            if "--data-parallel" in argv:  # jax: 2 CPU devices here; tensorflow sees one CPU
                assert metrics["devices"] == (2 if _option(argv, "--backend") == "jax" else 1)
        elif command == "convert":
            offline = run(argv, expect_ok=False)
            assert offline.returncode == 2 and "alexnet-owt-7be5be79.pth" in offline.stderr
            converted = [a if a != "imagenet" else str(checkpoint) for a in argv]
            run(converted)
            assert (tmp_path / _option(argv, "--out")).is_file()
        elif command == "predict" and "imagenet" in argv:
            offline = run(argv, expect_ok=False)
            assert offline.returncode == 2 and "alexnet-owt-7be5be79.pth" in offline.stderr
            argv = [str(checkpoint) if a == "imagenet" else a for a in argv]
            lines = run(argv).stdout.splitlines()
            assert lines[0] == "| image | rank | class | probability |"
            ranks = [line for line in lines if line.startswith(f"| {argv[-3]} |")]
            assert len(ranks) == int(_option(argv, "--top"))
        elif command == "predict":
            run(argv)
            with open(tmp_path / _option(argv, "--out")) as f:
                rows = list(csv.DictReader(f))
            assert [row["image"] for row in rows] == [f"new-photos/{c}.jpg" for c in CLASSES]
            assert all({row["class_1"], row["class_2"]} == set(CLASSES) for row in rows)
        elif command == "info":
            assert "backend: jax" in run(argv).stdout
        elif command == "evaluate":
            run(argv)
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["backend"] == "jax" and metrics["trained_on_backend"] == BACKEND
        elif command == "bench":
            # At tiny settings, on torch (every backend's job: test_distribution).
            assert "--data-parallel" in argv, argv
            tiny = ["--backends", "torch", "--variant", "cifar", "--image-size", "32"]
            tiny += ["--batch-size", "4", "--steps", "1", "--warmup", "1"]
            out = tmp_path / _option(argv, "--out")  # the README's path, under tmp_path
            # From the checkout, as the README runs it (the runner is not in the wheel).
            run_cli(*argv[1:], *tiny, "--out", out, cwd=ROOT, env=env, timeout=900, expect_ok=True)
            rows = json.loads(out.read_text())["records"]
            assert [(r["processes"], r["devices"]) for r in rows] == [(1, 1), (2, 2)]
        elif command == "study" and "--dry-run" in argv:
            table = run(argv).stdout
            assert table.startswith("name ") and "torch-reference" in table
        elif command == "study":
            # The whole demo is CI's `nox -s demo`, which runs this very command.
            assert argv[1:] == ["study", "--plan", "demo", "--out", "runs/study"], argv
            source = _session_source("demo")
            assert '"study", "--plan", "demo", "--out", out' in source
            assert '"runs/study"' in source and "demo" in nox_sessions_run(CI_SCRIPT)
        elif command == "compare":
            table = run(argv).stdout
            assert table == (tmp_path / _option(argv, "--out")).read_text()
            # Header, separator, one row per run (then a footnote if a run was contended).
            rows = [line for line in table.splitlines() if line.startswith("| ")]
            assert len(rows) == 2 + len(argv) - 4
        else:
            pytest.fail(f"no check for README command {argv}")
        if "folder" in argv and "--out" in argv:
            metrics = json.loads((tmp_path / _option(argv, "--out") / "metrics.json").read_text())
            assert metrics["class_names"] == list(CLASSES) and metrics["dataset"] == "folder"
    assert ran >= 8
    # The README's Python call beside `predict`, as written, on the model trained above.
    monkeypatch.chdir(tmp_path)
    rows = eval(_inline_call("predict"), {"ak": importlib.import_module("alexnet_k3")})
    assert [row["image"] for row in rows] == [f"new-photos/{c}.jpg" for c in CLASSES]
    assert all(len(row["top"]) == 2 and row["error"] is None for row in rows)


def _option(argv, name):
    return argv[argv.index(name) + 1]


def _run_torchrun(args, cwd, env):
    """`torchrun ARGS` (torch's own launcher, `python -m torch.distributed.run`)."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *args],
        env={**os.environ, **env, "KERAS_BACKEND": "torch"},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


PYTHON_BLOCKS = python_blocks(README)


def test_readme_python_blocks_are_all_run():
    # Each section's blocks run in a test below; a new one needs a test too.
    assert {h: len(b) for h, b in PYTHON_BLOCKS.items()} == {
        "The model": 1,
        "Transfer from torchvision": 1,
    }


@pytest.mark.slow
def test_readme_model_block_runs_as_written():
    printed, namespace = run_block(PYTHON_BLOCKS["The model"][0], "The model")
    assert printed == ["57044810"]
    assert isinstance(namespace["model"], keras.Model)


@pytest.fixture
def served_imagenet(tmp_path, monkeypatch):
    """`weights="imagenet"` downloaded over HTTP from this machine: a random-weight
    torchvision checkpoint under the record's file name, whose SHA-256 the record
    is given, and an empty torch hub cache. Yields the checkpoint and the requests."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from alexnet_k3.weights import IMAGENET1K_V1, loader

    served = tmp_path / "served"
    served.mkdir()
    checkpoint = served / IMAGENET1K_V1.file_name
    torch.manual_seed(1)
    torch.save(torchvision.models.alexnet().state_dict(), checkpoint)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, format, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{IMAGENET1K_V1.file_name}"
    record = dataclasses.replace(IMAGENET1K_V1, url=url, sha256_prefix=digest[:8])
    # AlexNet's table serves the record; the other architectures' tables stay as they are.
    tables = tuple(
        dataclasses.replace(t, pretrained={"imagenet": record}) if t.name == "alexnet" else t
        for t in loader.TABLES
    )
    monkeypatch.setattr(loader, "TABLES", tables)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    try:
        yield checkpoint, requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_readme_transfer_block_runs_as_written(tmp_path, monkeypatch, served_imagenet):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    checkpoint, requests = served_imagenet
    # The block's own example file: a 10-class fine-tuned torchvision AlexNet.
    torch.manual_seed(2)
    finetuned = torchvision.models.alexnet(num_classes=10).state_dict()
    torch.save(finetuned, tmp_path / "my_finetuned_alexnet.pth")
    monkeypatch.chdir(tmp_path)

    _, namespace = run_block(PYTHON_BLOCKS["Transfer from torchvision"][0], "Transfer")

    # "imagenet" came over HTTP, through the download and its hash check, into the cache.
    assert any(path.endswith(checkpoint.name) for path in requests), requests
    assert (tmp_path / "torch-home" / "hub" / "checkpoints" / checkpoint.name).is_file()
    model = namespace["model"]
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    assert trainable == {"fc6", "fc7", "predictions"}  # freeze_features=True
    # The last load replaced every weight, the head included (it had 10 classes too),
    # and the export gives torchvision's names and values back.
    exported = namespace["state_dict"]
    assert set(exported) == set(finetuned)
    for key, value in finetuned.items():
        np.testing.assert_allclose(np.asarray(exported[key]), value.numpy(), rtol=0, atol=1e-6)
    torchvision.models.alexnet(num_classes=10).load_state_dict(
        {k: torch.as_tensor(np.asarray(v)) for k, v in exported.items()}
    )


def _inline_call(function: str) -> str:
    """The README's inline `ak.<function>("...", ...)` example (in backquotes in the prose)."""
    (call,) = re.findall(rf'`(ak\.{function}\("[^`]*\))`', README.replace("\n", " "))
    return call


@pytest.mark.slow
def test_readme_python_train_and_evaluate_calls_run(tmp_path, monkeypatch):
    # As written, the train call's `...` standing for a tiny run's settings.
    train_call, evaluate_call = _inline_call("train"), _inline_call("evaluate")
    assert train_call.count("...") == 1
    tiny = train_call.replace("...", "epochs=1, batch_size=16, verbose=0")
    data = write_cifar10(tmp_path, n_train=40, n_test=20)
    monkeypatch.setenv("ALEXNET_K3_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(f"import alexnet_k3 as ak\ntrained = {tiny}\nevaluated = {evaluate_call}", namespace)
    trained, evaluated = namespace["trained"], namespace["evaluated"]
    assert trained["dataset"] == evaluated["dataset"] == "cifar10"
    assert evaluated["model"] == "runs/x/model.keras" and evaluated["backend"] == BACKEND
    assert evaluated["trained_on_backend"] == BACKEND and evaluated["test_images"] == 20
    # The same model on the same backend and images: the same predictions.
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert evaluated["test_accuracy"] == trained["test_accuracy"]
