"""nox sessions: tests, lint, train, demo and benchmarks, per Keras backend.

`nox -s tests` runs the test suite once per backend, each in its own process
with KERAS_BACKEND set, as Keras's own CI does.
"""

from __future__ import annotations

import json
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
# virtualenv + pip: pip picks up locally cached torch wheels; uv would download
# several GB of CUDA torch instead.
nox.options.default_venv_backend = "virtualenv"
nox.options.sessions = ["lint", "tests"]

BACKENDS = ["torch", "jax", "tensorflow"]
# A quick look that fits a 2-core CPU (a GPU has its own session, bench_gpu).
BENCH_QUICK = ["--batch-size", "16", "--image-size", "224", "--steps", "5", "--warmup", "2"]
# bench_gpu: each precision's results go to benchmarks/results/<device>-<tag>.*
GPU_PRECISIONS = {"mixed_bfloat16": "bf16", "float32": "fp32"}
BASELINES = "torchvision-eager,torchvision-compile"
# The demo reaches 96.9-99.7% on the digits (benchmarks/results/digits-cifar-variant-cpu-2core.md);
# below this, training or evaluation broke.
DEMO_MIN_ACCURACY = 0.90


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one Keras backend (all three are installed for cross-backend tests)."""
    session.install(".[all,test]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"KERAS_BACKEND": backend})


@nox.session
def lint(session: nox.Session) -> None:
    """Check style, formatting and common bugs with ruff."""
    session.install("ruff")
    paths = ["alexnet_k3", "tests", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
@nox.parametrize("backend", BACKENDS)
def train(session: nox.Session, backend: str) -> None:
    """Train + evaluate with `alexnet-k3 train` on one backend; arguments after -- go to it."""
    session.install(f".[{backend}]")
    args = session.posargs or ["--dataset", "digits", "--variant", "cifar", "--epochs", "5"]
    session.run("alexnet-k3", "train", *args, env={"KERAS_BACKEND": backend})


@nox.session
def demo(session: nox.Session) -> None:
    """Offline main job: digits on every backend, cross-backend evaluation, compare table.

    Fails when any run's test accuracy is below DEMO_MIN_ACCURACY.
    """
    session.install(".[all]")
    out = session.posargs[0] if session.posargs else "runs/demo"
    runs, runs_elsewhere = [], []
    for backend in BACKENDS:
        run_dir = f"{out}/{backend}"
        session.run(
            "alexnet-k3",
            "train",
            "--backend",
            backend,
            "--dataset",
            "digits",
            "--variant",
            "cifar",
            "--epochs",
            "8",
            "--batch-size",
            "64",
            "--seed",
            "0",
            "--out",
            run_dir,
        )
        runs.append(run_dir)
    # Portability: each backend's saved model, evaluated under the next backend.
    for index, backend in enumerate(BACKENDS):
        other = BACKENDS[(index + 1) % len(BACKENDS)]
        runs_elsewhere.append(f"{out}/{backend}-evaluated-on-{other}")
        session.run(
            "alexnet-k3",
            "evaluate",
            f"{out}/{backend}/model.keras",
            "--backend",
            other,
            "--dataset",
            "digits",
            "--out",
            runs_elsewhere[-1],
        )
    if session.run("alexnet-k3", "compare", *runs, "--out", f"{out}/compare.md") is None:
        return  # --install-only: nothing ran, so there is nothing to check
    _check_accuracy(session, runs + runs_elsewhere, DEMO_MIN_ACCURACY)


def _check_accuracy(session: nox.Session, run_dirs: list[str], floor: float) -> None:
    """Fails the session when a run's metrics.json has a test accuracy below `floor`."""
    low = []
    for run_dir in run_dirs:
        accuracy = json.loads(Path(run_dir, "metrics.json").read_text())["test_accuracy"]
        session.log(f"{run_dir}: test accuracy {accuracy:.4f} (floor {floor})")
        if accuracy < floor:
            low.append(f"{run_dir} {accuracy:.4f}")
    if low:
        session.error(f"test accuracy below {floor}: {', '.join(low)}")


@nox.session
def install_check(session: nox.Session) -> None:
    """A fresh torch-only install (`pip install ".[torch]"`) runs the README's model snippet."""
    session.install(".[torch]")
    session.run(
        "python",
        "tests/readme_snippets.py",
        "The model",
        "--only-backend",
        "torch",
        env={"KERAS_BACKEND": "torch"},
    )


@nox.session
@nox.parametrize("backend", BACKENDS)
def bench(session: nox.Session, backend: str) -> None:
    """Throughput of one Keras backend vs torchvision's AlexNet; -- args replace the quick look."""
    session.install(f".[{backend},torch]")
    session.run(
        "alexnet-k3",
        "bench",
        "--backends",
        backend,
        "--baselines",
        BASELINES,
        "--out",
        f"benchmarks/results/bench-{backend}.json",
        *(session.posargs or BENCH_QUICK),
        env={"KERAS_BACKEND": backend},
    )


@nox.session
def bench_all(session: nox.Session) -> None:
    """Every Keras backend and both baselines, end to end included: table, JSON and PNG."""
    session.install(".[all]")
    session.run(
        "alexnet-k3",
        "bench",
        "--backends",
        ",".join(BACKENDS),
        "--baselines",
        BASELINES,
        "--end-to-end",
        "--out",
        "benchmarks/results/bench-all.json",
        *(session.posargs or BENCH_QUICK),
    )


@nox.session
def bench_gpu(session: nox.Session) -> None:
    """On a CUDA machine: every backend and both baselines, bf16 and float32, batch 128-512.

    Both timing modes and the end-to-end epochs; results to
    benchmarks/results/<device>-bf16.* and -fp32.*, and the README's GPU table
    refreshed from them. Arguments after -- are added to every run.
    """
    session.install(".[all]")
    for precision, tag in GPU_PRECISIONS.items():
        session.run(
            "alexnet-k3",
            "bench",
            "--device",
            "gpu",
            "--precision",
            precision,
            "--batch-size",
            "128",
            "256",
            "512",
            "--end-to-end",
            "--out",
            f"benchmarks/results/{{device}}-{tag}.json",
            "--readme",
            "README.md",
            *session.posargs,
        )
