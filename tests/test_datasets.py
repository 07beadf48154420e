"""alexnet_k3.datasets: CIFAR-10 from folder, tarball, env var, Keras cache and download;
bad files reported with the CIFAR-10 advice; the digits dataset; no backend imported.

The restricted unpickler itself is tested in test_unpickler.py; here, only how its
errors surface through `load_cifar10`.

No test touches the network: an autouse fixture points the Keras cache at a temporary
folder and the download URL at a file:// path that does not exist, and the download
tests serve a local tarball through a file:// URL. The URL and md5 are patched in
`alexnet_k3.datasets.cifar10`, the module that reads them; the copies re-exported by
`alexnet_k3.datasets` are never patched.
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cifar_files import (
    CLASS_NAMES,
    batch_dict,
    dump_pickle,
    fake_arrays,
    md5_of,
    meta_dict,
    pack_tarball,
    python2_pickle,
    write_cifar10,
)

from alexnet_k3 import core, datasets
from alexnet_k3.datasets import Dataset, DatasetError, DatasetNotFoundError, cifar10

N_TRAIN, N_TEST = 12, 6
OFFICIAL_URL = cifar10.CIFAR10_URL  # read before the autouse fixture replaces it


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty Keras cache, no ALEXNET_K3_DATA, and a download URL that cannot work."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv(datasets.DATA_ENV_VAR, raising=False)
    monkeypatch.delenv(cifar10.URL_ENV_VAR, raising=False)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", (tmp_path / "no-server" / "c.tar.gz").as_uri())
    return home / "datasets"


def assert_matches_fake(data: Dataset, seed: int = 0, n_train=N_TRAIN, n_test=N_TEST):
    expected = fake_arrays(n_train, n_test, seed)
    assert data.name == "cifar10"
    assert data.class_names == CLASS_NAMES
    for split in ("train", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.dtype == np.uint8 and x.flags.c_contiguous and x.flags.writeable
        assert y.dtype == np.int64
        np.testing.assert_array_equal(x, expected[f"x_{split}"])
        np.testing.assert_array_equal(y, expected[f"y_{split}"])


def rewrite(folder: Path, name: str, obj, protocol=4):
    dump_pickle(obj, folder / name, protocol=protocol, python2_style=False)


def small_batch(**overrides):
    a = fake_arrays(5, 1)
    batch = batch_dict(a["x_train"], a["y_train"])
    batch.update({k.encode(): v for k, v in overrides.items()})
    return batch


# ------------------------------------------------------------------ valid sources


def test_official_constants():
    assert OFFICIAL_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar10.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    # The public names are the cifar10 module's values (the fixture patches only there).
    assert datasets.CIFAR10_URL == OFFICIAL_URL and datasets.CIFAR10_MD5 == cifar10.CIFAR10_MD5
    assert datasets.DATA_ENV_VAR == "ALEXNET_K3_DATA"
    # Typed once, in the Keras-free core module.
    assert datasets.DATASETS is core.DATASETS
    assert sorted(datasets.__all__) == sorted(
        ["CIFAR10_MD5", "CIFAR10_URL", "DATASETS", "DATA_ENV_VAR", "Dataset", "DatasetError"]
        + ["DatasetNotFoundError", "load_cifar10", "load_dataset", "load_digits", "load_folder"]
    )


def test_python2_style_folder(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    data = datasets.load_cifar10(folder)
    assert_matches_fake(data)
    assert data.x_train.shape == (N_TRAIN, 32, 32, 3) and data.x_test.shape == (N_TEST, 32, 32, 3)
    # Rows are R, G, B planes of 32x32, row-major: check the layout against the raw file.
    with open(folder / "data_batch_1", "rb") as f:
        rows = pickle.load(f, encoding="bytes")[b"data"]
    for r, c, ch in [(0, 0, 0), (0, 31, 1), (31, 0, 2), (5, 17, 1)]:
        assert data.x_train[1, r, c, ch] == rows[1, ch * 1024 + r * 32 + c]
    assert "Dataset(name='cifar10', train=12, test=6" in repr(data)


def test_python2_style_stream_is_what_python2_wrote():
    """The helper's Python 2 files use py2 opcodes and globals, and stdlib pickle agrees."""
    import pickletools

    a = fake_arrays(5, 1)
    stream = python2_pickle(batch_dict(a["x_train"], a["y_train"]))
    assert stream.startswith(b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct")
    ops = {op.name for op, _, _ in pickletools.genops(stream)}
    assert {"SHORT_BINSTRING", "BINSTRING", "GLOBAL"} <= ops
    assert not ops & {"BINUNICODE", "SHORT_BINBYTES", "BINBYTES", "STACK_GLOBAL", "FRAME"}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_protocols(tmp_path, protocol):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST, protocol=protocol, python2_style=False)
    assert_matches_fake(datasets.load_cifar10(folder))


def test_tarball(tmp_path):
    tarball = write_cifar10(tmp_path, N_TRAIN, N_TEST, as_tarball=True)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    assert_matches_fake(datasets.load_cifar10(tarball))
    # A folder that holds the tarball works too, as does a str path.
    assert_matches_fake(datasets.load_cifar10(str(tmp_path)))


def test_folder_holding_the_extracted_folder(tmp_path):
    write_cifar10(tmp_path, N_TRAIN, N_TEST)
    assert_matches_fake(datasets.load_cifar10(tmp_path))


def test_env_var(tmp_path, monkeypatch, offline):
    env_folder = write_cifar10(tmp_path / "env", N_TRAIN, N_TEST, seed=1)
    write_cifar10(offline, N_TRAIN, N_TEST, seed=2)  # in the Keras cache: ranks below
    monkeypatch.setenv("ALEXNET_K3_DATA", str(env_folder))
    assert_matches_fake(datasets.load_cifar10(), seed=1)
    # data_dir ranks above the variable.
    arg_folder = write_cifar10(tmp_path / "arg", N_TRAIN, N_TEST, seed=3)
    assert_matches_fake(datasets.load_cifar10(arg_folder), seed=3)


def test_env_var_pointing_nowhere(tmp_path, monkeypatch, offline):
    write_cifar10(offline, N_TRAIN, N_TEST)  # a cached copy is not a silent fallback
    monkeypatch.setenv("ALEXNET_K3_DATA", str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match="ALEXNET_K3_DATA") as err:
        datasets.load_cifar10()
    assert str(tmp_path / "missing") in str(err.value)


@pytest.mark.parametrize("empty", [False, True])
def test_data_dir_without_cifar(tmp_path, empty):
    path = tmp_path / "nothing"
    if empty:
        path.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        datasets.load_cifar10(path)
    assert str(path) in str(err.value) and cifar10.CIFAR10_URL in str(err.value)


@pytest.mark.parametrize(
    "layout", ["cifar-10-batches-py", "cifar-10-batches-py-target/cifar-10-batches-py"]
)
def test_keras_cache_folder(offline, layout):
    # keras.datasets.cifar10 leaves an extracted folder in the cache: older Keras at
    # datasets/cifar-10-batches-py, Keras 3 under cifar-10-batches-py-target/.
    folder = write_cifar10(offline, N_TRAIN, N_TEST, seed=4)
    target = offline / layout
    if target != folder:
        target.parent.mkdir(parents=True)
        folder.rename(target)
    assert_matches_fake(datasets.load_cifar10(), seed=4)


def test_keras_cache_tarball_md5(tmp_path, monkeypatch, offline):
    tarball = write_cifar10(tmp_path, N_TRAIN, N_TEST, as_tarball=True)
    cached = offline / "cifar-10-python.tar.gz"
    offline.mkdir()
    shutil.copy(tarball, cached)
    # Not the official file: refused, and the user is told what to delete.
    with pytest.raises(DatasetError, match="md5") as err:
        datasets.load_cifar10()
    assert str(cached) in str(err.value) and cached.exists()
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5_of(tarball))
    assert_matches_fake(datasets.load_cifar10())


def test_download_through_file_url(tmp_path, monkeypatch, offline):
    tarball = write_cifar10(tmp_path / "server", N_TRAIN, N_TEST, as_tarball=True)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", tarball.as_uri())
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5_of(tarball))
    assert_matches_fake(datasets.load_cifar10())
    assert md5_of(offline / "cifar-10-python.tar.gz") == md5_of(tarball)
    # Offline again: the cached download is used.
    monkeypatch.setattr(cifar10, "CIFAR10_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert_matches_fake(datasets.load_cifar10())


def test_download_with_wrong_md5_is_deleted(tmp_path, monkeypatch, offline):
    tarball = write_cifar10(tmp_path / "server", N_TRAIN, N_TEST, as_tarball=True)
    monkeypatch.setattr(cifar10, "CIFAR10_URL", tarball.as_uri())
    with pytest.raises(DatasetError, match="c58f30108f718f92721af3b95e74349a") as err:
        datasets.load_cifar10()
    assert md5_of(tarball) in str(err.value)
    assert not (offline / "cifar-10-python.tar.gz").exists()


def test_offline_with_nothing_cached(tmp_path, offline):
    with pytest.raises(DatasetNotFoundError) as err:
        datasets.load_cifar10()
    message = str(err.value)
    assert isinstance(err.value, OSError)
    # The fixture's file:// URL was the one tried: no test reaches for the network.
    assert f"could not be downloaded: {(tmp_path / 'no-server').as_uri()}/" in message
    assert str(offline / "cifar-10-python.tar.gz") in message
    assert "ALEXNET_K3_DATA" in message


# ------------------------------------------------------------------- bad files


def advice() -> str:
    """What every DatasetError about a bad batch file ends with."""
    return (
        f"This is not a valid CIFAR-10 file; download the official tarball again from "
        f"{cifar10.CIFAR10_URL} (md5 {cifar10.CIFAR10_MD5})."
    )


class Payload:
    """Pickles as a call of `func(*args)`: what a malicious batch file would carry."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("as_tarball", [False, True])
def test_code_payload_is_refused_and_not_run(tmp_path, as_tarball):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    marker = tmp_path / "pwned"
    rewrite(folder, "data_batch_2", small_batch(filenames=[Payload(os.system, f"touch {marker}")]))
    where = folder / "data_batch_2"
    if as_tarball:
        tarball = pack_tarball(folder, tmp_path / "cifar-10-python.tar.gz")
        shutil.rmtree(folder)
        where = f"{tarball} (member cifar-10-batches-py/data_batch_2)"
    with pytest.raises(DatasetError, match="refused") as err:
        datasets.load_cifar10(tarball if as_tarball else folder)
    assert not marker.exists()
    assert str(err.value) == (
        f"{where}: refused to load the global {os.system.__module__}.system from this "
        f"pickle. CIFAR-10 batches hold only dicts, lists, bytes, str, ints and numpy arrays; "
        f"this file holds something else and may be malicious. Delete it and download the "
        f"official tarball from {cifar10.CIFAR10_URL}."
    )


def test_object_array_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    rewrite(folder, "data_batch_1", small_batch(labels=np.array([1, "x"], dtype=object)))
    with pytest.raises(DatasetError, match="dtype") as err:
        datasets.load_cifar10(folder)
    assert str(err.value).startswith(
        f"{folder / 'data_batch_1'}: the file is not a CIFAR-10 pickle or is corrupt "
        f"(UnpicklingError: dtype 'O8' is not allowed (only plain numbers)). "
    )
    assert str(err.value).endswith(advice())


def test_truncated_file(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    path = folder / "data_batch_4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        datasets.load_cifar10(folder)
    assert str(err.value).startswith(f"{path}: the file is truncated (")
    assert str(err.value).endswith(advice())


def test_nested_too_deep(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    path = folder / "test_batch"
    path.write_bytes(b"\x80\x02" + b"]" * 50_000 + b"a" * 49_999 + b".")
    with pytest.raises(DatasetError) as err:
        datasets.load_cifar10(folder)
    assert str(err.value) == f"{path}: the pickle is nested too deeply. {advice()}"


def test_truncated_tarball(tmp_path):
    tarball = write_cifar10(tmp_path, N_TRAIN, N_TEST, as_tarball=True)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(DatasetError) as err:
        datasets.load_cifar10(tarball)
    assert str(tarball) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all\n", b"\x1f\x8b\x08garbage"])
def test_not_a_pickle(tmp_path, content):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    (folder / "batches.meta").write_bytes(content)
    with pytest.raises(DatasetError) as err:
        datasets.load_cifar10(folder)
    assert str(folder / "batches.meta") in str(err.value)
    assert str(err.value).endswith(advice())


def test_not_a_tarball(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DatasetError, match="tar") as err:
        datasets.load_cifar10(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "data, match",
    [
        (np.zeros((5, 3073), np.uint8), "shape"),
        (np.zeros((5, 32, 32, 3), np.uint8), "shape"),
        (np.zeros((0, 3072), np.uint8), "shape"),
        (np.zeros((5, 3072), np.float32), "dtype"),
        (np.zeros((5, 3072), np.int64), "dtype"),
        ([0] * 3072, "numpy array"),
    ],
)
def test_wrong_data_array(tmp_path, data, match):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    rewrite(folder, "data_batch_5", small_batch(data=data))
    with pytest.raises(DatasetError, match=match) as err:
        datasets.load_cifar10(folder)
    assert str(err.value).startswith(f"{folder / 'data_batch_5'}: 'data' must ")
    assert str(err.value).endswith(f". {advice()}")


def test_wrong_shape_in_python2_style_file(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    (folder / "test_batch").write_bytes(python2_pickle(small_batch(data=np.zeros((5, 1024), "u1"))))
    with pytest.raises(DatasetError, match=r"\(5, 1024\)"):
        datasets.load_cifar10(folder)


@pytest.mark.parametrize(
    "labels, match",
    [
        ([0, 1, 2, 3, 10], "0..9"),
        ([0, 1, 2, 3, -1], "0..9"),
        ([0, 1, 2, 3], "5"),
        ([0, 1, 2, 3, 4.0], "ints"),
        ([0, 1, 2, 3, True], "ints"),
        (np.array([0, 1, 2, 3, 40]), "0..9"),
    ],
)
def test_bad_labels(tmp_path, labels, match):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    rewrite(folder, "data_batch_3", small_batch(labels=labels))
    with pytest.raises(DatasetError, match=match) as err:
        datasets.load_cifar10(folder)
    assert str(folder / "data_batch_3") in str(err.value)


def test_bad_meta(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    rewrite(folder, "batches.meta", meta_dict(CLASS_NAMES[:9]))
    with pytest.raises(DatasetError, match="10 class names"):
        datasets.load_cifar10(folder)
    rewrite(folder, "batches.meta", [b"label_names"])
    with pytest.raises(DatasetError, match="dict"):
        datasets.load_cifar10(folder)


def test_missing_batch_file(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3") as err:
        datasets.load_cifar10(folder)
    assert str(folder) in str(err.value)


def test_missing_member_in_tarball(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    (folder / "test_batch").unlink()
    tarball = pack_tarball(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match="cifar-10-batches-py/test_batch") as err:
        datasets.load_cifar10(tarball)
    assert str(tarball) in str(err.value)


def test_tarball_member_that_is_a_link(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    tarball = tmp_path / "links.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            if path.name != "batches.meta":
                tar.add(path, arcname=f"cifar-10-batches-py/{path.name}")
        link = tarfile.TarInfo("cifar-10-batches-py/batches.meta")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(DatasetError, match="not a regular file"):
        datasets.load_cifar10(tarball)


# ------------------------------------------------------------------------ digits


def test_digits():
    data = datasets.load_digits()
    assert data.name == "digits" and data.class_names == tuple("0123456789")
    assert data.x_train.shape == (1437, 32, 32, 3) and data.x_test.shape == (360, 32, 32, 3)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    x = np.concatenate([data.x_train, data.x_test])
    assert x.min() == 0 and x.max() == 255
    # grey, and 4x4 blocks of one value
    assert (x == x[..., :1]).all()
    np.testing.assert_array_equal(x, x[:, ::4, ::4].repeat(4, axis=1).repeat(4, axis=2))
    # stratified: every class in both splits, in proportion
    test_counts = np.bincount(data.y_test, minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    again = datasets.load_digits()
    np.testing.assert_array_equal(again.y_test, data.y_test)
    other = datasets.load_digits(test_fraction=0.5, seed=1)
    assert len(other.x_test) == 899 and not np.array_equal(other.y_train[:50], data.y_train[:50])


def test_digits_without_scikit_learn(monkeypatch):
    # None in sys.modules makes the import fail, as it does when the package is missing.
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn") as err:
        datasets.load_digits()
    # scikit-learn is a core dependency: no extra provides it (pyproject.toml).
    assert "[" not in str(err.value) and "reinstall alexnet-k3" in str(err.value)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.2"])
def test_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_digits(test_fraction=fraction)


def test_load_dataset(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    assert_matches_fake(datasets.load_dataset("cifar10", folder))
    assert datasets.load_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match=f"expected one of {', '.join(core.DATASETS)}"):
        datasets.load_dataset("mnist")
    with pytest.raises(ValueError, match="data_dir"):
        datasets.load_dataset("digits", data_dir=folder)


def test_dataset_validates_its_arrays():
    x, y = np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64)
    Dataset("t", x, y, x, y, ("a",))
    with pytest.raises(ValueError, match="y_train"):
        Dataset("t", x, y[:1], x, y, ("a",))
    with pytest.raises(ValueError, match="x_test"):
        Dataset("t", x, y, x.astype(np.float32), y, ("a",))


PACKAGE = Path(datasets.__file__).parent
BACKENDS = {"torch", "tensorflow", "jax"}


def imported_modules(path: Path) -> tuple[set[str], set[str]]:
    """Absolute names a module imports: (at its top level, anywhere in it)."""
    tree = ast.parse(path.read_text())
    top_level, anywhere = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names = {node.module}
        else:
            continue
        anywhere |= names
        if node in tree.body:
            top_level |= names
    return top_level, anywhere


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_no_backend(module):
    """The datasets package is backend-agnostic: no torch/tensorflow/jax, no Keras at the
    top level, scikit-learn only inside load_digits; and data flows one way, so of this
    project it imports only the Keras-free core and downloads and its own modules."""
    top_level, anywhere = imported_modules(PACKAGE / module)
    roots = {name.split(".")[0] for name in anywhere}
    assert not roots & BACKENDS
    assert not {name.split(".")[0] for name in top_level} & {"keras", "sklearn"}
    ours = {name for name in anywhere if name.split(".")[0] == "alexnet_k3"}
    keras_free = ("alexnet_k3.core", "alexnet_k3.downloads")
    assert all(name in keras_free or name.startswith("alexnet_k3.datasets") for name in ours)


def test_every_module_is_checked():
    expected = {"__init__", "base", "cifar10", "cifar10_batches", "digits", "unpickler"}
    assert expected <= {Path(m).stem for m in MODULES}


def test_import_loads_no_backend():
    """What the AST walk cannot see: nothing the package imports pulls a backend in."""
    code = (
        "import sys, alexnet_k3.datasets\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'keras', 'sklearn', 'torch', 'tensorflow', 'jax'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
