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
        # Screenshots and the like that tests keep for people to look at.
        env={
            **env,
            "KERAS_BACKEND": backend,
            "ALEXNET_K3_TEST_ARTIFACTS": f"test-artifacts/{backend}",
        },
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
    """The offline study (`alexnet-k3 study --plan demo`): the digits on every backend,
    the plain PyTorch reference, each Keras model tested under another backend.

    Fails when a run failed, when a row is missing, when the Keras runs did not start
    from the same weights, or when any test accuracy is below DEMO_MIN_ACCURACY.
    """
    env = _all_backends(session)
    out = session.posargs[0] if session.posargs else "runs/study"
    if (
        session.run(_program("alexnet-k3"), "study", "--plan", "demo", "--out", out, env=env)
        is None
    ):
        return  # --install-only: nothing ran, so there is nothing to check
    _check_demo(session, Path(out, "study.json"), DEMO_MIN_ACCURACY)


def _check_demo(session: nox.Session, study_json: Path, floor: float) -> None:
    """Fails the session unless the demo's study.json has every row it should, above `floor`."""
    runs = json.loads(study_json.read_text())["runs"]
    kinds = {(r["kind"], r["backend"]) for r in runs}
    missing = [
        f"{kind} on {backend}"
        for kind, backend in [*(("keras", b) for b in BACKENDS), ("torch-reference", "torch")]
        if (kind, backend) not in kinds
    ]
    evaluations = [r for r in runs if r["kind"] == "evaluate"]
    if missing or len(evaluations) != len(BACKENDS):
        session.error(f"the demo lacks rows: {missing or 'cross-backend evaluations'}")
    starts = {r["initial_weights_sha256"] for r in runs if r["kind"] == "keras"}
    if len(starts) != 1:
        session.error(f"the Keras runs started from different weights: {sorted(starts)}")
    low = []
    for run in runs:
        accuracy = run["test_accuracy"]
        session.log(f"{run['name']}: test accuracy {accuracy} (floor {floor})")
        if run["status"] != "ok" or accuracy < floor:
            low.append(f"{run['name']} {run['status']} {accuracy}")
    if low:
        session.error(f"runs failed or below {floor}: {', '.join(low)}")


@nox.session(venv_backend="none")
def study(session: nox.Session) -> None:
    """Any study: `nox -s study -- --plan course --out runs/course` (every backend installed)."""
    env = _all_backends(session)
    session.run(
        _program("alexnet-k3"),
        "study",
        *(session.posargs or ["--plan", "demo", "--dry-run"]),
        env=env,
    )


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
