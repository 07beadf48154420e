"""The `alexnet-k3` command line: backend choice, clear errors, compare tables."""

import json
import subprocess
import sys

import keras
import pytest

from alexnet_k3.cli import main
from alexnet_k3.report import compare_runs

BACKEND = keras.config.backend()


def test_importing_the_package_does_not_pick_a_backend():
    # The CLI must be able to set KERAS_BACKEND after `import alexnet_k3`.
    code = "import sys, alexnet_k3, alexnet_k3.cli; print('keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_backend_flag_overrides_the_environment(run_cli):
    other = {"torch": "jax", "jax": "tensorflow", "tensorflow": "torch"}[BACKEND]
    result = run_cli("info", "--backend", other)  # KERAS_BACKEND is this process's
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"backend: {other}" in result.stdout
    assert "keras: 3." in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "expected a positive integer, received '0'"),
        (["train", "--dataset", "mnist"], "invalid choice: 'mnist'"),
        (["train", "--label-smoothing", "1.5"], "expected a number in [0, 1), received '1.5'"),
        (["train", "--backend", "mxnet"], "invalid choice: 'mxnet'"),
        (["evaluate", "missing.keras"], "No model file at missing.keras"),
        (["compare", "no-such-run"], "no-such-run has no metrics.json"),
        (["convert", "--weights", "missing.pth", "--out", "x.weights.h5"], "missing.pth"),
    ],
)
def test_bad_arguments_end_in_one_clear_line(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_resume_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--out", str(tmp_path / "none")])
    assert "Cannot resume" in capsys.readouterr().err


def test_compare_writes_the_table_the_notebooks_made_by_hand(tmp_path, capsys):
    for name, accuracy in (("torch", 0.91), ("jax", 0.92)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(
            json.dumps(
                dict(
                    backend=name,
                    variant="cifar",
                    mode="scratch",
                    epochs=3,
                    test_accuracy=accuracy,
                    test_loss=0.3,
                    train_seconds=12.5,
                    images_per_second=321.0,
                )
            )
        )
    out = tmp_path / "compare.md"
    assert main(["compare", str(tmp_path / "torch"), str(tmp_path / "jax"), "--out", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    assert table.splitlines()[0].startswith("| run | backend |")
    # Runs recorded before `arch` existed are AlexNet's, and before `implementation`, Keras's.
    assert (
        "| jax | keras | - | alexnet | cifar | scratch | 3 | 0.9200 | 0.3000 | 12.5 | 321.0 |"
        in table
    )
    assert table == compare_runs([tmp_path / "torch", tmp_path / "jax"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real one-epoch digits run started with a non-default weight decay."""
    from alexnet_k3.training import train

    out = tmp_path_factory.mktemp("runs") / "wd"
    metrics = train(
        out,
        epochs=1,
        batch_size=256,
        weight_decay=0.001,
        augment=True,
        validation_split=0.0,
        keep_freed_memory=False,
        verbose=0,
    )
    assert metrics["keep_freed_memory"] is False  # turned off, and recorded so
    return out


def _snapshot(folder):
    return {
        p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    "option, given, saved",
    [
        # Equal to the parser's default, yet not what the run used: still refused.
        (["--weight-decay", "0.0005"], "weight_decay=0.0005", "weight_decay=0.001"),
        (["--epochs", "3"], "epochs=3", "epochs=1"),
        (["--no-augment"], "augment=False", "augment=True"),
    ],
    ids=["default-value", "other-value", "flag"],
)
def test_resume_refuses_an_explicit_option_that_contradicts_the_run(
    finished_run, capsys, option, given, saved
):
    before = _snapshot(finished_run)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", "--out", str(finished_run), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert given in err and saved in err, err
    assert "Traceback" not in err
    assert _snapshot(finished_run) == before


def test_resume_accepts_options_that_agree_with_the_run(finished_run, capsys):
    assert main(["train", "--resume", "--out", str(finished_run), "--weight-decay", "0.001"]) == 0
    assert "nothing to resume" in capsys.readouterr().out
