"""A real MLflow tracking server for tests: started on 127.0.0.1, always stopped."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from alexnet_k3 import launch

# No tracking configured by whoever runs the tests, in the server's environment either.
NO_TRACKING = {"MLFLOW_TRACKING_URI": "", "MLFLOW_EXPERIMENT_NAME": ""}


@contextlib.contextmanager
def mlflow_server(argv: list[str], cwd: Path, artifacts: Path):
    """`argv` (an `mlflow server`/`mlflow ui` command) on a free 127.0.0.1 port, artifacts
    proxied into `artifacts`; yields its URL, stopped (its whole process group) after.

    Example:
        with mlflow_server(["mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"],
                           cwd=tmp_path, artifacts=tmp_path / "artifacts") as url:
            MlflowClient(tracking_uri=url).search_experiments()
    """
    (port,) = launch.free_ports(1)
    command = [sys.executable, "-m", "mlflow", *argv[1:]]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--artifacts-destination", str(artifacts)]
    # The job runner serves MLflow's GenAI jobs: not needed, and one process fewer.
    env = {**os.environ, **NO_TRACKING, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_path = cwd / "mlflow-server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # a cold start on a busy 2-core machine: ~45 s
        while True:
            if server.poll() is not None:
                pytest.fail(f"{command} exited {server.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not answer in 240 s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # children that outlived their parent
            os.killpg(server.pid, signal.SIGKILL)
