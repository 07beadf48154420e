"""Runs that cannot report false results: unrecognised folders refused, diverged runs fail."""

import json
import math

import keras
import numpy as np
import pytest

from alexnet_k3.callbacks import DivergenceGuard, EpochBackup, HistoryWriter
from alexnet_k3.runs import TrainingDiverged
from alexnet_k3.training import train


def test_a_folder_with_run_files_but_no_config_is_refused_and_left_alone(tmp_path):
    # A run whose config.json was deleted, or a folder copied by hand: its history,
    # best score and model must never become the new run's.
    out = tmp_path / "stale"
    out.mkdir()
    (out / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.99}]))
    (out / "model.keras").write_bytes(b"an old model")
    with pytest.raises(FileExistsError, match=r"history\.json, model\.keras but no config\.json"):
        train(out, dataset="digits", epochs=1, verbose=0)
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.keras"]
    assert (out / "model.keras").read_bytes() == b"an old model"


class _PoisonWeightsAt(keras.callbacks.Callback):
    """Sets every weight to NaN as epoch `epoch` (1-based) begins: that epoch diverges."""

    def __init__(self, epoch):
        super().__init__()
        self.at = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.at:
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])


def test_a_non_finite_epoch_stops_fit_and_is_never_backed_up(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    guard, backup = DivergenceGuard(), EpochBackup(tmp_path / "backup")
    history = HistoryWriter(tmp_path / "history.json")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    callbacks = [_PoisonWeightsAt(2), guard, history, backup]
    model.fit(x, np.ones((8, 1)), batch_size=4, epochs=4, callbacks=callbacks, verbose=0)
    assert guard.epoch == 2 and math.isnan(guard.loss)
    records = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]  # fit stopped after the diverged epoch
    assert "diverged" not in records[0] and records[1]["diverged"] is True
    # The backup still holds epoch 1, the last finite one.
    assert json.loads((tmp_path / "backup" / "latest.json").read_text())["epoch"] == 1


@pytest.mark.slow
def test_a_diverged_run_fails_is_marked_and_cannot_be_resumed(tmp_path, run_cli):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 1.*--lr"):
        train(out, dataset="digits", epochs=2, learning_rate=1e6, batch_size=256, verbose=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["diverged_epoch"] == 1
    assert "test_accuracy" not in metrics  # figures the run never produced
    assert metrics["model"] is None and not (out / "model.keras").exists()
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["diverged"] is True
    with pytest.raises(TrainingDiverged, match="Cannot resume"):
        train(out, resume=True, verbose=0)
    # From the command line: a non-zero exit and the reason in one line, no traceback.
    result = run_cli("train", "--out", out, "--resume")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Cannot resume" in result.stderr and "Traceback" not in result.stderr
