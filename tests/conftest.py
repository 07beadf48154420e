"""Shared test setup. The backend comes from KERAS_BACKEND, one process per backend."""

import contextlib
import os
import subprocess
import sys

# torchvision imports torch._dynamo, which loads triton's native library; loaded
# after tensorflow's, that library segfaults the process. Importing torchvision
# before anything imports keras (and with it tensorflow) avoids it.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

import keras
import pytest


@pytest.fixture(params=["channels_last", "channels_first"])
def data_format(request):
    """Runs the test under each image data format, restoring the previous one after.

    channels_first is skipped where the backend cannot run it on this machine
    (TensorFlow on a CPU without oneDNN's NCHW kernels): `alexnet_k3.backend`
    refuses it there with a clear error, which tests/test_training.py checks.
    """
    from alexnet_k3 import backend

    if not backend.runs_image_data_format(request.param):
        pytest.skip(f"{backend.name()} cannot run {request.param} convolutions on this CPU")
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(previous)


BACKEND = keras.config.backend()
# Tests marked `once` run in the torch session only: those that do the same whatever
# this process runs on (they start their own processes, on every backend or on none),
# and the few whose repeat on every backend CI cannot afford (VGG16's training run,
# 3-5 minutes a backend). ALEXNET_K3_ONCE_EVERYWHERE=1 runs them in every session.
ONCE_BACKEND = "torch"


def pytest_collection_modifyitems(config, items):
    if BACKEND == ONCE_BACKEND or os.environ.get("ALEXNET_K3_ONCE_EVERYWHERE") == "1":
        return
    skip = pytest.mark.skip(reason=f"marked once: run in the {ONCE_BACKEND} session")
    for item in items:
        if "once" in item.keywords:
            item.add_marker(skip)


def _run_cli(*args, backend=BACKEND, env=None, cwd=None, timeout=600, expect_ok=False):
    """`python -m alexnet_k3 ARGS` in a new process on `backend`; the CompletedProcess.

    `env` entries are added to this process's environment. With `expect_ok`, a
    non-zero exit fails the test with the command's output.
    """
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_k3", *map(str, args)],
        env={**os.environ, **(env or {}), "KERAS_BACKEND": backend},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect_ok:
        assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def run_cli():
    """Runs the command line in a fresh process: `run_cli("train", "--epochs", 1, ...)`."""
    return _run_cli


@pytest.fixture(scope="session")
def digits_folder_run(tmp_path_factory):
    """scikit-learn's digits written as PNG class folders, and a run trained on them with
    the settings of tests/test_training.py's digits run (which reaches >= 0.90):
    (run folder, image folder, metrics). Trained once per test process."""
    from folder_files import write_digits_folder

    from alexnet_k3.datasets import cache as folder_cache
    from alexnet_k3.training import train

    tmp = tmp_path_factory.mktemp("digits-folder")
    previous = os.environ.get(folder_cache.CACHE_ENV_VAR)
    os.environ[folder_cache.CACHE_ENV_VAR] = str(tmp / "cache")
    try:
        root = write_digits_folder(tmp / "digits")
        metrics = train(
            tmp / "run",
            dataset="folder",
            data_dir=str(root),
            variant="cifar",
            epochs=6,
            batch_size=64,
            seed=0,
            verbose=0,
        )
    finally:
        if previous is None:
            del os.environ[folder_cache.CACHE_ENV_VAR]
        else:
            os.environ[folder_cache.CACHE_ENV_VAR] = previous
    return tmp / "run", root, metrics
