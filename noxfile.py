"""nox sessions: tests, lint, train, demo and benchmarks, per Keras backend.

`nox -s tests` runs the test suite once per backend, each in its own process
with KERAS_BACKEND set, as Keras's own CI does.

The sessions that need every backend (tests, demo, bench_all, bench_gpu) share
one virtualenv, `.nox/all-backends`: torch, tensorflow and jax together are
about 8 GB and three minutes of pip per copy, and one copy serves them all.
The package is reinstalled into it once per nox invocation, so every session
tests the checkout as it is now.
"""

from __future__ import annotations

import json
import os
import sys
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
ALL_BACKENDS_VENV = Path(".nox", "all-backends")
_all_backends_ready = False  # set once this nox invocation has installed the checkout


def _all_backends(session: nox.Session) -> dict[str, str]:
    """The shared all-backend venv, made and updated once per nox invocation.

    Returns the environment that runs its commands (PATH and VIRTUAL_ENV); the
    sessions using it set `venv_backend="none"` and call its programs by path.
    """
    global _all_backends_ready
    venv = ALL_BACKENDS_VENV.resolve()
    if not _all_backends_ready:
        if not (venv / "bin" / "python").exists():
            session.run_install(sys.executable, "-m", "virtualenv", "--quiet", str(venv))
        session.run_install(
            str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", ".[all,test]"
        )
        _all_backends_ready = True
    return {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}


def _program(name: str) -> str:
    return str(ALL_BACKENDS_VENV.resolve() / "bin" / name)


@nox.session(venv_backend="none")
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one Keras backend (all three are installed for cross-backend tests)."""
    env = _all_backends(session)
    session.run(
        _program("pytest"),
        *(session.posargs or ["-q", "--durations=25"]),
        env={**env, "KERAS_BACKEND": backend},
    )


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


@nox.session(venv_backend="none")
def dist(session: nox.Session) -> None:
    """An N-process data-parallel job on this machine: `nox -s dist -- BACKEND N [train args]`."""
    env = _all_backends(session)
    backend, processes, *args = session.posargs or ["torch", "2"]
    if not processes.isdigit():
        session.error(f"usage: nox -s dist -- BACKEND PROCESSES [train args]; got {processes!r}")
    args = args or ["--dataset", "digits", "--epochs", "3", "--batch-size", "64"]
    session.run(
        _program("python"),
        "-m",
        "alexnet_k3.launch",
        backend,
        processes,
        "train",
        "--data-parallel",
        *args,
        *([] if "--out" in args else ["--out", f"runs/dist-{backend}-{processes}"]),
        env=env,
    )


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """Offline main job: digits on every backend, cross-backend evaluation, compare table.

    Fails when any run's test accuracy is below DEMO_MIN_ACCURACY.
    """
    env = _all_backends(session)
    out = session.posargs[0] if session.posargs else "runs/demo"
    runs, runs_elsewhere = [], []
    for backend in BACKENDS:
        run_dir = f"{out}/{backend}"
        session.run(
            _program("alexnet-k3"),
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
            env=env,
        )
        runs.append(run_dir)
    # Portability: each backend's saved model, evaluated under the next backend.
    for index, backend in enumerate(BACKENDS):
        other = BACKENDS[(index + 1) % len(BACKENDS)]
        runs_elsewhere.append(f"{out}/{backend}-evaluated-on-{other}")
        session.run(
            _program("alexnet-k3"),
            "evaluate",
            f"{out}/{backend}/model.keras",
            "--backend",
            other,
            "--dataset",
            "digits",
            "--out",
            runs_elsewhere[-1],
            env=env,
        )
    if (
        session.run(_program("alexnet-k3"), "compare", *runs, "--out", f"{out}/compare.md", env=env)
        is None
    ):
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


@nox.session(venv_backend="none")
def bench_all(session: nox.Session) -> None:
    """Every Keras backend and both baselines, end to end included: table, JSON and PNG."""
    env = _all_backends(session)
    session.run(
        _program("alexnet-k3"),
        "bench",
        "--backends",
        ",".join(BACKENDS),
        "--baselines",
        BASELINES,
        "--end-to-end",
        "--out",
        "benchmarks/results/bench-all.json",
        *(session.posargs or BENCH_QUICK),
        env=env,
    )


@nox.session(venv_backend="none")
def bench_gpu(session: nox.Session) -> None:
    """On a CUDA machine: every backend and both baselines, bf16 and float32, batch 128-512.

    Both timing modes and the end-to-end epochs; results to
    benchmarks/results/<device>-bf16.* and -fp32.*, and the README's GPU table
    refreshed from them. Arguments after -- are added to every run.
    """
    env = _all_backends(session)
    for precision, tag in GPU_PRECISIONS.items():
        session.run(
            _program("alexnet-k3"),
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
            env=env,
        )
