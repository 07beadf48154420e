"""The backend package: its speed settings do what their docstrings say, per backend."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from alexnet_k3 import backend as kb
from alexnet_k3.backend import info, speed
from alexnet_k3.preprocessing import input_pipeline

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    # A fresh process: this one's heap already holds blocks freed by other tests.
    script = textwrap.dedent(
        """
        import os
        import numpy as np
        from alexnet_k3.backend import keep_freed_memory

        def resident():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        def drop_after_free(mib):
            block = np.ones(mib * 2**20 // 8)  # touches every page
            before = resident()
            del block
            return (before - resident()) / 2**20

        assert keep_freed_memory(False)
        print(drop_after_free(96))
        assert keep_freed_memory(True)
        print(drop_after_free(96))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    settled, kept = (float(line) for line in out.stdout.split()[-2:])
    assert settled > 80, f"glibc's own thresholds should unmap a freed 96 MiB block: {settled}"
    assert kept < 16, f"keep_freed_memory() should keep it for reuse: {kept} MiB released"


@pytest.mark.skipif(kb.name() != "torch", reason="torch's memory formats")
def test_channels_first_pipeline_gives_torch_channels_last_memory():
    # What recommended_image_data_format() relies on: the pipeline's Permute is
    # a view of NHWC memory, which torch's convolutions keep as channels_last.
    import torch

    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        images = np.zeros((2, 32, 32, 3), dtype="uint8")
        out = input_pipeline(64, augment=False)(images)
    finally:
        keras.config.set_image_data_format(previous)
    assert tuple(out.shape) == (2, 3, 64, 64)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert kb.recommended_image_data_format() == "channels_first"


def test_array_feed_gives_every_image_once_per_epoch_reshuffled():
    x = np.arange(10, dtype="float32").reshape(10, 1)
    y = np.arange(10, dtype="int64")
    feed = kb.array_feed(x, y, batch_size=4, shuffle=True)
    if kb.name() != "tensorflow":
        assert feed["x"] is x and feed["y"] is y and feed["batch_size"] == 4 and feed["shuffle"]
        return
    dataset = feed["x"]
    # Autotuning off: deleting an autotuned iterator waits for tf.data's optimizer thread.
    assert dataset.options().autotune.enabled is False
    epochs = []
    for _ in range(3):
        batches = [(bx.numpy()[:, 0], by.numpy()) for bx, by in dataset]
        assert [len(by) for _, by in batches] == [4, 4, 2]
        for bx, by in batches:
            np.testing.assert_array_equal(bx, by)  # images stay with their labels
        epochs.append(np.concatenate([by for _, by in batches]))
        assert sorted(epochs[-1]) == list(range(10))
    assert len({tuple(e) for e in epochs}) > 1  # a new order each epoch
    images_only = kb.array_feed(x, batch_size=4)["x"]
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in images_only]), x)


@pytest.mark.parametrize(
    "backend, compile_kwargs, data_format",
    [
        ("torch", {"jit_compile": False}, "channels_first"),
        ("jax", {"jit_compile": True}, "channels_last"),
        ("tensorflow", {"jit_compile": False}, "channels_last"),
    ],
)
def test_recommendations_per_backend_read_info(monkeypatch, backend, compile_kwargs, data_format):
    # Every module of the package asks `info.name()`: one patch there reaches them all.
    monkeypatch.setattr(info, "name", lambda: backend)
    monkeypatch.setattr(info, "accelerator", lambda: "cpu")
    assert kb.recommended_compile_kwargs() == compile_kwargs
    assert kb.recommended_image_data_format() == data_format
    if backend != "jax":  # jax asks jax whether it runs on a TPU
        assert kb.recommended_precision() == "float32"
    assert kb.tune_for_speed(keep_freed=False)["cudnn_benchmark"] is False
    kb.check_image_data_format("channels_last")
    if backend == "tensorflow":
        # Whether this CPU has TensorFlow's NCHW kernels is tried once; both answers:
        monkeypatch.setattr(speed, "_tensorflow_cpu_runs_nchw", lambda: False)
        with pytest.raises(ValueError, match="no channels_first convolutions on this CPU"):
            kb.check_image_data_format("channels_first")
        monkeypatch.setattr(speed, "_tensorflow_cpu_runs_nchw", lambda: True)
    kb.check_image_data_format("channels_first")


def test_free_memory_clears_keras_state_and_the_cuda_cache(monkeypatch):
    emptied = []
    if kb.name() == "torch":
        # What an out-of-memory error on a GPU leaves: the CUDA cache to give back.
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    keras.layers.Dense(1)
    kb.free_memory()
    assert keras.layers.Dense(1).name == "dense"  # Keras's global state was cleared
    assert emptied == ([True] if kb.name() == "torch" else [])


def test_backend_package_reexports_core():
    from alexnet_k3 import core

    assert kb.is_out_of_memory is core.is_out_of_memory
    assert not hasattr(kb, "BACKENDS")  # the vocabulary lives in core


AVX2_ONLY = frozenset({"sse2", "avx2", "fma"})  # this project's AMD EPYC
WITH_AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # the Xeon


def test_precision_warning_names_the_measured_slowdown_on_this_cpu(monkeypatch):
    flags = speed._cpu_flags()
    if kb.accelerator() == "cpu" and flags is not None and not flags & {"amx_bf16", "avx512_bf16"}:
        # This machine as it is (the AVX2-only EPYC): every backend emulates bfloat16.
        assert "slower than float32" in kb.precision_warning("mixed_bfloat16")
    monkeypatch.setattr(info, "accelerator", lambda: "cpu")
    monkeypatch.setattr(speed, "_cpu_flags", lambda: AVX2_ONLY)
    assert kb.precision_warning("float32") is None
    for precision in ("mixed_bfloat16", "mixed_float16"):
        message = kb.precision_warning(precision)
        slower, float32 = speed._EMULATED_ON_CPU[(kb.name(), precision)]
        assert slower < float32
        assert message.startswith(f"precision={precision!r} is slower than float32 on this CPU")
        assert (
            f"keras-{kb.name()} trained {slower} images/s vs {float32} in float32, measured"
            in message
        )
        assert "emulates it" in message and "Use precision='float32' here." in message
        assert "\n" not in message
    # With AMX only jax's bfloat16 was measured slower; float16 is emulated there too.
    monkeypatch.setattr(speed, "_cpu_flags", lambda: WITH_AMX)
    amx = kb.precision_warning("mixed_bfloat16")
    assert (amx is not None) is (kb.name() == "jax")
    assert kb.precision_warning("mixed_float16") is not None
    monkeypatch.setattr(speed, "_cpu_flags", lambda: AVX2_ONLY | {"avx512_bf16"})
    assert kb.precision_warning("mixed_bfloat16") is None  # native, and not measured
    # Nothing measured: a GPU, a CPU whose flags are unknown.
    monkeypatch.setattr(speed, "_cpu_flags", lambda: None)
    assert kb.precision_warning("mixed_bfloat16") is None
    monkeypatch.setattr(speed, "_cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(info, "accelerator", lambda: "gpu")
    assert kb.precision_warning("mixed_bfloat16") is None


def test_recommended_precision_never_picks_one_measured_slower(monkeypatch):
    monkeypatch.setattr(info, "accelerator", lambda: "cpu")
    monkeypatch.setattr(speed, "_device_precision", lambda: "mixed_bfloat16")
    monkeypatch.setattr(speed, "_cpu_flags", lambda: AVX2_ONLY)
    assert kb.recommended_precision() == "float32"
    monkeypatch.setattr(speed, "_cpu_flags", lambda: WITH_AMX)
    expected = "float32" if kb.name() == "jax" else "mixed_bfloat16"
    assert kb.recommended_precision() == expected


def test_training_warns_about_a_precision_measured_slower(tmp_path, monkeypatch, capsys):
    from alexnet_k3 import training

    monkeypatch.setattr(info, "accelerator", lambda: "cpu")
    monkeypatch.setattr(speed, "_cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(training, "_run", lambda *args: {})  # the warning comes first
    training.train(tmp_path / "bf16", dataset="digits", precision="mixed_bfloat16")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1  # float16's older rule does not repeat it
    assert f"warning: {kb.precision_warning('mixed_bfloat16')}\n" in err
    training.train(tmp_path / "fp16", dataset="digits", precision="mixed_float16")
    assert capsys.readouterr().err.count("warning: precision='mixed_float16' is slower") == 1
    training.train(tmp_path / "fp32", dataset="digits", precision="float32")
    assert "warning" not in capsys.readouterr().err


def _tiny_network():
    from alexnet_k3 import AlexNet

    shape = (3, 32, 32) if keras.config.image_data_format() == "channels_first" else (32, 32, 3)
    return AlexNet(10, variant="cifar", input_shape=shape, seed=0), shape


def test_device_predict_gives_predict_on_batch_outputs_call_after_call():
    # The benchmark's inference steps: the model's own compiled predict, no host copy.
    model, shape = _tiny_network()
    model.compile(**kb.recommended_compile_kwargs())
    x = keras.random.normal((2, *shape), seed=1)
    expected = model.predict_on_batch(x)
    run = kb.device_predict(model, x)
    for steps in (2, 1):  # a second call: the state jax donated was written back
        outputs = kb.synchronize(run(steps))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), expected, rtol=1e-5)
    np.testing.assert_allclose(model.predict_on_batch(x), expected, rtol=1e-5)


def test_repeated_batch_feed_trains_fit_for_the_steps_asked():
    model, shape = _tiny_network()
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=[])
    x = keras.random.normal((2, *shape), seed=1)
    y = keras.ops.one_hot(keras.ops.convert_to_tensor([1, 3]), 10)
    model.fit(**kb.repeated_batch_feed(x, y), steps_per_epoch=3, epochs=1, verbose=0)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3


def test_set_matmul_precision_says_what_runs():
    # TF32 exists on GPUs only: on a CPU the record says None, whatever was asked.
    for precision in ("default", "highest", "high"):
        applied = kb.set_matmul_precision(precision)
        if kb.accelerator() == "cpu":
            assert applied == {"tf32_matmul": None, "tf32_conv": None}
        elif precision != "default":
            assert applied == {"tf32_matmul": precision == "high", "tf32_conv": precision == "high"}
    kb.set_matmul_precision("highest")
    with pytest.raises(ValueError, match="received 'fast'"):
        kb.set_matmul_precision("fast")
