"""The suite runs on the backend its session asked for, not on Keras's default.

Every other test reads the backend from `keras.config.backend()` of its own process,
so a session that silently ran on another backend would pass them all; this one
compares it with what the session set: `KERAS_BACKEND` as the process was started
with it (before anything in the process could change it), and under nox the
backend named in the session, `tests(backend='jax')`.
"""

import os
import re
import sys
from pathlib import Path

import keras
import pytest

from alexnet_k3 import backend


def _environment_at_start() -> dict[str, str]:
    """The environment this process was started with (Linux), else the current one."""
    environ = Path("/proc/self/environ")
    if not sys.platform.startswith("linux") or not environ.exists():
        return dict(os.environ)
    pairs = (entry.split(b"=", 1) for entry in environ.read_bytes().split(b"\0") if b"=" in entry)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def test_keras_runs_the_backend_the_session_set():
    started_with = _environment_at_start()
    session = started_with.get("NOX_CURRENT_SESSION", "")
    named = re.search(r"backend='(\w+)'", session)
    if "KERAS_BACKEND" not in started_with and not named:
        pytest.skip("KERAS_BACKEND is not set: this run uses Keras's default backend")
    wanted = started_with.get("KERAS_BACKEND")
    assert wanted is not None, f"nox session {session} did not set KERAS_BACKEND"
    assert keras.config.backend() == wanted, (
        f"the process was started with KERAS_BACKEND={wanted}, "
        f"but Keras runs {keras.config.backend()}"
    )
    assert os.environ.get("KERAS_BACKEND") == wanted, "KERAS_BACKEND was changed in the process"
    assert backend.name() == wanted
    if named:
        assert wanted == named.group(1), f"nox session {session} set KERAS_BACKEND={wanted}"
