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
