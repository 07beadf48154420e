"""Data-parallel training on two virtual CPU devices, with the engines Keras already has."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from alexnet_k3.training import train

BACKEND = keras.config.backend()


def test_torch_backend_says_what_to_use_instead(tmp_path):
    if BACKEND != "torch":
        pytest.skip("the torch backend's refusal")
    with pytest.raises(ValueError, match="--backend jax"):
        train(tmp_path / "run", data_parallel=True)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_more_devices_than_exist_is_a_clear_error(tmp_path):
    if BACKEND == "torch":
        pytest.skip("no data parallelism on torch")
    with pytest.raises(ValueError, match="devices=64 asked for"):
        train(tmp_path / "run", data_parallel=True, devices=64)
    with pytest.raises(ValueError, match="`devices` must be None unless data_parallel=True"):
        train(tmp_path / "run2", devices=2)


# Each backend gets two CPU devices its own way, before it initializes.
TWO_DEVICES = {
    "jax": ({"JAX_NUM_CPU_DEVICES": "2"}, ""),
    "tensorflow": (
        {},
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        """,
    ),
}


@pytest.mark.slow
def test_training_on_two_devices_learns_and_uses_both(tmp_path):
    if BACKEND not in TWO_DEVICES:
        pytest.skip("no data parallelism on torch")
    env_vars, setup = TWO_DEVICES[BACKEND]
    script = textwrap.dedent(setup) + textwrap.dedent(
        f"""
        from alexnet_k3.cli import main
        raise SystemExit(main(["train", "--dataset", "digits", "--epochs", "6",
                               "--batch-size", "64", "--data-parallel", "--devices", "2",
                               "--verbose", "0", "--out", {str(tmp_path / "run")!r}]))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": BACKEND, **env_vars}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["devices"] == 2
    # Measured on the trained model: its weights lived on both devices.
    assert metrics["replicas_holding_weights"] == 2
    assert metrics["test_accuracy"] >= 0.90
