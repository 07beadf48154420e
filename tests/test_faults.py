"""What happens when things go wrong (issue 15, bugs 3-7): one writer per run folder,
evaluations never overwrite training results, damaged files named with what to do,
no tracebacks, nothing left behind by a failed start or a killed save.

The restricted unpickler's size budget (bug 3) is tested in test_unpickler.py.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

from alexnet_k3 import cli, core, runs
from alexnet_k3.callbacks import EpochBackup, load_history
from alexnet_k3.config import TrainConfig
from alexnet_k3.evaluation import evaluate, load_model
from alexnet_k3.report import compare_runs
from alexnet_k3.training import train


def _python(code: str, *args) -> subprocess.Popen:
    """A Keras-free helper process running `code` (stdout piped)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )


HOLD_LOCK = """
    import sys, time
    from pathlib import Path
    from alexnet_k3 import runs
    with runs.lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
"""


# ------------------------------------------------------------------ bug 4: one writer


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _python(HOLD_LOCK, out, 60)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(runs.RunFolderBusy, match=rf"process {holder.pid} is writing it"):
            with runs.lock(out):
                pass
        # train() itself: refused before reading or writing anything in the folder.
        with pytest.raises(runs.RunFolderBusy, match=rf"kill {holder.pid}") as err:
            train(out, dataset="digits", epochs=1, verbose=0)
        assert err.value.pid == holder.pid
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
        # And evaluate --out.
        with pytest.raises(runs.RunFolderBusy):
            evaluate(tmp_path / "no-such-model.keras", out=out)
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    killed = _python(
        """
        import os, signal, sys
        from pathlib import Path
        from alexnet_k3 import runs
        with runs.lock(Path(sys.argv[1])):
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        out,
    )
    assert killed.wait() == -signal.SIGKILL
    assert (out / ".lock").read_text() == f"{killed.pid}\n"  # left behind, unlocked
    with runs.lock(out):
        assert (out / ".lock").read_text() == f"{os.getpid()}\n"
    assert f"took over the stale lock {out / '.lock'} of process {killed.pid}" in (
        capsys.readouterr().err
    )
    assert not (out / ".lock").exists()


def test_the_lock_is_released_and_a_folder_it_created_removed_when_left_empty(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with runs.lock(out):
            raise RuntimeError("failed start")
    assert not out.exists()
    with runs.lock(out):
        (out / "config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    with runs.lock(out), pytest.raises(runs.RunFolderBusy):  # same process, second writer
        with runs.lock(out):
            pass


# ------------------------------------------------------------------ bug 5: evaluate --out


def _training_folder(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    metrics = {"test_accuracy": 0.9, "train_seconds": 12.5, "images_per_second": 100.0}
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "report.md").write_text("# the training report")
    return {p.name: p.read_bytes() for p in path.iterdir()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved .keras model that evaluates on the digits (10 classes, raw 32x32x3 images)."""
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.save(path)
    return path


def test_evaluate_out_refuses_a_training_folder_and_leaves_it_alone(tmp_path, tiny_model):
    out = tmp_path / "run"
    before = _training_folder(out)
    with pytest.raises(FileExistsError, match=r"holds a training run's results.*--out|out="):
        evaluate(tiny_model, "digits", out=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_evaluate_out_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds other files \(notes\.txt\)"):
        runs.claim_for_evaluation(tmp_path)
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "diverged", "model": None}))
    with pytest.raises(FileExistsError, match=r"metrics\.json"):
        runs.claim_for_evaluation(tmp_path)


@pytest.mark.slow
def test_evaluate_out_writes_a_new_folder_and_rewrites_a_previous_evaluation(tmp_path, tiny_model):
    out = tmp_path / "eval"
    first = evaluate(tiny_model, "digits", out=out)
    assert json.loads((out / "metrics.json").read_text())["model"] == str(tiny_model)
    second = evaluate(tiny_model, "digits", out=out)  # a previous evaluation: replaced
    assert second["test_accuracy"] == first["test_accuracy"]
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------ bug 6: clear errors


def test_a_zip_that_is_not_a_keras_model_is_named(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not a model")
    with pytest.raises(ValueError, match=r"could not be read as a Keras model \(KeyError"):
        load_model(path)


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_an_empty_or_truncated_model_says_so_not_file_not_found(tmp_path, tiny_model, cut):
    path = tmp_path / "model.keras"
    data = tiny_model.read_bytes()
    path.write_bytes(b"" if cut == "empty" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is not a complete \.keras model: it is \d+ bytes") as e:
        load_model(path)
    assert ("(empty)" in str(e.value)) == (cut == "empty")
    assert "not found" not in str(e.value)


def test_compare_refuses_metrics_that_are_not_an_object(tmp_path):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(
        ValueError, match=r"metrics\.json holds a JSON array, expected a JSON object"
    ):
        compare_runs([tmp_path])


def test_errors_are_one_line_unless_debug(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", str(tmp_path)])
    assert exit_.value.code == 2
    assert "holds a JSON array" in capsys.readouterr().err
    for argv in (["--debug", "compare", str(tmp_path)], ["compare", str(tmp_path), "--debug"]):
        with pytest.raises(ValueError, match="holds a JSON array"):
            cli.main(argv)


def test_a_backend_that_cannot_train_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "numpy")
    with pytest.raises(ValueError, match=r"KERAS_BACKEND=numpy .*expected one of torch"):
        cli._check_backend_installed("train")
    cli._check_backend_installed("compare")  # reads JSON only


def test_an_image_size_too_large_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"`image_size` must be at most 1024.*image_size=10000"):
        train(out, dataset="digits", image_size=10000, verbose=0)
    assert not out.exists()


def test_a_split_leaving_no_training_images_is_refused_and_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"validation_split=0\.9997 leaves no training images"):
        train(out, dataset="digits", validation_split=0.9997, epochs=1, verbose=0)
    assert not out.exists()  # bug 7: a failed start leaves nothing behind


def test_a_negative_seed_names_the_option_and_the_value(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--seed", "-1"])
    assert "--seed: expected an integer >= 0, received '-1'" in capsys.readouterr().err


# ------------------------------------------------------------------ bug 7: litter, messages


def test_a_save_killed_midway_leaves_a_temp_file_the_next_start_removes(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    killed = _python(
        """
        import os, signal, sys
        from pathlib import Path
        from alexnet_k3 import core

        def save(tmp):
            Path(tmp).write_bytes(b"half a model")
            os.kill(os.getpid(), signal.SIGKILL)

        core.atomic_save(save, Path(sys.argv[1]) / "model.keras")
        """,
        out,
    )
    assert killed.wait() == -signal.SIGKILL
    litter = out / f".tmp-{killed.pid}-model.keras"
    assert litter.exists() and not (out / "model.keras").exists()
    mine = out / "state" / f".tmp-{os.getpid()}-history.json"  # a live writer's: kept
    mine.parent.mkdir()
    mine.write_text("[]")
    with runs.lock(out):
        assert not litter.exists() and mine.exists()


def _config_folder(tmp_path, **changes):
    saved = {**json.loads(json.dumps(TrainConfig().__dict__)), **changes}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    return tmp_path


def test_a_truncated_config_is_named_with_what_to_do(tmp_path):
    (tmp_path / "config.json").write_text('{"dataset": "dig')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON \(16 bytes.*new run"):
        runs.saved_config(tmp_path, {})


def test_a_saved_config_with_an_unknown_key_or_a_wrong_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json holds unknown settings \['colour'\]"):
        runs.saved_config(_config_folder(tmp_path, colour="red"), {})
    with pytest.raises(ValueError, match=r"config\.json holds an invalid setting: `epochs`"):
        runs.saved_config(_config_folder(tmp_path, epochs="ten"), {})
    assert runs.saved_config(_config_folder(tmp_path), {}) == TrainConfig()


def test_a_truncated_history_is_named_with_what_to_do(tmp_path):
    path = tmp_path / "history.json"
    path.write_text('[{"epoch": 1, "loss": 0.')
    with pytest.raises(ValueError, match=r"history\.json is not valid JSON.*new run"):
        load_history(path)


def test_a_truncated_backup_is_named_with_what_to_do(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    backup = EpochBackup(tmp_path / "backup-train")
    model.fit(np.zeros((4, 4)), np.zeros((4, 1)), epochs=1, callbacks=[backup], verbose=0)
    weights = next(backup.backup_dir.glob("epoch-*.weights.h5"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot be restored.*Delete the folder .*backup-train"):
        backup.restore(model)
    (backup.backup_dir / "latest.json").write_text('{"epoch": ')
    with pytest.raises(ValueError, match=r"latest\.json is not valid JSON.*Delete the folder"):
        backup.restore(model)


def test_few_training_images_and_float16_on_a_cpu_are_warned_about(capsys):
    runs.check_split(14, 1423, 1437, 10, TrainConfig(validation_split=0.99))
    err = capsys.readouterr().err
    assert "warning: validation_split=0.99 leaves 14 of the 1437 training images" in err
    runs.check_split(1000, 437, 1437, 10, TrainConfig(validation_split=0.3))
    runs.check_speed(TrainConfig(precision="mixed_float16"), "gpu")
    assert capsys.readouterr().err == ""
    runs.check_speed(TrainConfig(precision="mixed_float16"), "cpu")
    assert "precision='mixed_float16' on a CPU" in capsys.readouterr().err


def test_compare_keeps_one_row_per_run_whatever_the_values_hold(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"backend": "a|b\nc", "epochs": 2}))
    lines = compare_runs([tmp_path]).splitlines()
    assert len(lines) == 3
    assert lines[2].replace("\\|", "").count("|") == lines[0].count("|")
    assert "a\\|b c" in lines[2]


def test_read_json_names_the_file_the_size_and_the_advice(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("")
    with pytest.raises(ValueError, match=r"x\.json is not valid JSON \(0 bytes.*Do this\."):
        core.read_json(path, "Do this.")


# ------------------------------------------------------------------ random state on resume


class _InterruptAfterFirstBackup(EpochBackup):
    """An EpochBackup that stops the run once epoch 1 is backed up, as a kill would."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        raise KeyboardInterrupt


@pytest.mark.slow
def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    # Dropout and pad-crop draw from SeedGenerators, the shuffle from the global
    # generators: a resume restores them all (tensorflow: see the README).
    from alexnet_k3 import backend, callbacks

    settings = dict(dataset="digits", epochs=2, batch_size=256, augment=True, verbose=0)
    whole = train(tmp_path / "whole", **settings)
    # training.fit_callbacks builds it (alexnet_k3.callbacks).
    monkeypatch.setattr(callbacks, "EpochBackup", _InterruptAfterFirstBackup)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", **settings)
    monkeypatch.undo()
    resumed = train(tmp_path / "cut", resume=True, verbose=0)
    losses = [
        [e["loss"] for e in json.loads((tmp_path / run / "history.json").read_text())]
        for run in ("whole", "cut")
    ]
    if backend.name() == "tensorflow":  # the tf.data shuffle restarts: same epoch 1 only
        assert losses[0][0] == losses[1][0]
        return
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)
    assert resumed["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-5, abs=1e-6)


def test_a_truncated_metrics_json_is_named_on_resume(tmp_path):
    (tmp_path / "metrics.json").write_text('{"test_accuracy": 0.9')
    with pytest.raises(ValueError, match=r"metrics\.json is not valid JSON.*evaluate"):
        runs.finished(tmp_path)


@pytest.mark.slow
def test_the_command_line_refuses_a_locked_folder_in_one_line(tmp_path, run_cli):
    out = tmp_path / "run"
    holder = _python(HOLD_LOCK, out, 120)
    try:
        assert holder.stdout.readline() == "locked\n"
        result = run_cli("train", "--out", out, "--resume")
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"process {holder.pid} is writing it" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        holder.kill()
        holder.wait()
