"""The recipe comparison's table: per-seed pairing with the plain loop, and merged files."""

import json

from benchmarks import recipes


def _run(recipe, seed, accuracy, backend="torch"):
    return {
        "recipe": recipe,
        "backend": backend,
        "seed": seed,
        "args": "",
        "seconds": 1.0,
        "test_accuracy": accuracy,
    }


RUNS = [
    _run(recipes.REFERENCE, 0, 0.60),
    _run(recipes.REFERENCE, 1, 0.40),
    _run("default", 0, 0.58),
    _run("default", 1, 0.44),
    _run("default", 1, 0.50, backend="jax"),
    {**_run("default", 0, None, backend="jax"), "error": "exit 1: boom"},
]


def test_the_difference_to_the_reference_is_paired_by_seed():
    rows = {
        (r["recipe"], r["backend"]): r
        for r in recipes.summarize([{k: v for k, v in r.items() if v is not None} for r in RUNS])
    }
    assert rows[("default", "torch")]["vs_reference"] == 0.01  # (-0.02 + 0.04) / 2
    assert rows[("default", "jax")]["vs_reference"] == 0.10  # seed 1 only: seed 0 failed
    assert rows[("default", "jax")]["failed"] == 1
    assert rows[(recipes.REFERENCE, "torch")]["vs_reference"] is None


def test_merge_joins_the_runs_of_several_files(tmp_path):
    clean = [{k: v for k, v in r.items() if v is not None} for r in RUNS]
    settings = {
        "name": "a",
        "data_dir": "d",
        "epochs": 8,
        "seeds": [0],
        "cpu": "c",
        "cpus": 2,
        "python": "3.11",
    }
    for name, part in (("a", clean[:3]), ("b", clean[3:])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"settings": settings, "runs": part}))
    merged = recipes.main(
        [
            "--merge",
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "--name",
            "both",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert len(merged["runs"]) == len(RUNS)
    table = (tmp_path / "both.md").read_text()
    assert "| default | torch |  | 0 1 | 51.0% |" in table and "+1.0" in table
