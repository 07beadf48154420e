"""A console without the frameworks' C++ logging, unless asked for (`--debug`)."""

import os
import re
import subprocess
import sys

import pytest

from alexnet_k3 import quiet

# An absl/glog line, or absl's preamble: what a quiet console never shows.
LOG_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING: All log messages before absl", re.M)

TF_IMPORT_OUTPUT = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796695678.400447   21252 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796695678.487634   21252 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.
W0000 00:00:1796695678.5   21252 some.cc:1] a warning
E0000 00:00:1796695682.963805   21252 cuda_platform.cc:52] failed call to cuInit: INTERNAL: (303)
E0000 00:00:1796695682.97   21252 other.cc:9] something real went wrong
/x/y.py:3: DeprecationWarning: a Python warning stays
"""


def test_kept_lines_drop_info_warnings_and_the_no_gpu_error():
    kept = "".join(quiet.kept_lines(TF_IMPORT_OUTPUT, gpu_driver=False))
    assert kept == (
        "E0000 00:00:1796695682.97   21252 other.cc:9] something real went wrong\n"
        "/x/y.py:3: DeprecationWarning: a Python warning stays\n"
    )
    # With an NVIDIA driver loaded, a failed cuInit is news: it stays.
    with_gpu = "".join(quiet.kept_lines(TF_IMPORT_OUTPUT, gpu_driver=True))
    assert "failed call to cuInit" in with_gpu and "port.cc" not in with_gpu


def test_the_users_own_settings_win(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    assert quiet.quiet_frameworks() is None
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setenv(quiet.VERBOSE_ENV_VAR, "1")
    assert quiet.quiet_frameworks() is None and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    monkeypatch.delenv(quiet.VERBOSE_ENV_VAR)
    assert quiet.quiet_frameworks(verbose=True) is None  # --debug
    finders = list(sys.meta_path)
    undo = quiet.quiet_frameworks()
    try:
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == quiet.QUIET_LOG_LEVEL
    finally:
        undo()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and sys.meta_path == finders
    # The level a parent command set (a study's runs inherit it) is not the user's.
    undo = quiet.quiet_frameworks()
    try:
        inherited = quiet.quiet_frameworks()
        assert inherited is not None
        inherited()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == quiet.QUIET_LOG_LEVEL
    finally:
        undo()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and sys.meta_path == finders


# train, then evaluate what it trained, in one process: the console of both. It is
# started as a study starts its runs: by a command that quieted the console first,
# whose settings it inherits.
TRAIN_AND_EVALUATE = """
import sys
from alexnet_k3.cli import main
out = sys.argv[1]
assert main(["train", "--epochs", "1", "--batch-size", "256", "--validation-split", "0",
             "--out", out, "--verbose", "2"]) == 0
assert main(["evaluate", out + "/model.keras", "--out", out + "/evaluated"]) == 0
"""
FROM_A_COMMAND = """
import subprocess, sys
from alexnet_k3 import quiet
quiet.quiet_frameworks()
sys.exit(subprocess.call([sys.executable, "-c", sys.argv[1], sys.argv[2]]))
"""


def _console(args, backend, env=None):
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environ.pop(quiet.VERBOSE_ENV_VAR, None)
    environ.pop(quiet._SET_BY_PACKAGE_ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, *args],
        env={**environ, **(env or {}), "KERAS_BACKEND": backend},
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-3000:]
    return console


@pytest.mark.slow
@pytest.mark.once
@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_train_and_evaluate_print_no_framework_log_line(tmp_path, backend):
    pytest.importorskip(backend)
    args = ["-c", FROM_A_COMMAND, TRAIN_AND_EVALUATE, str(tmp_path / "run")]
    console = _console(args, backend)
    assert "test accuracy" in console  # the package's own lines are all there
    assert not LOG_LINE.findall(console), console[-3000:]


@pytest.mark.slow
@pytest.mark.once
def test_debug_shows_tensorflows_log_lines():
    pytest.importorskip("tensorflow")
    console = _console(["-m", "alexnet_k3", "--debug", "info"], "tensorflow")
    # TensorFlow's start-up lines (port.cc, cudart_stub.cc), printed whatever the level.
    assert LOG_LINE.findall(console), console[-3000:]
