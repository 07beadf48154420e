"""alexnet_k3.datasets: CIFAR-10 from folder, tarball, env var, Keras cache and download;
the restricted unpickler against every kind of bad file; the digits dataset.

No test touches the network: an autouse fixture points the Keras cache at a temporary
folder and the download URL at a file:// path that does not exist, and the download
tests serve a local tarball through a file:// URL.
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
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

from alexnet_k3 import datasets
from alexnet_k3.datasets import Dataset, DatasetError, DatasetNotFoundError

N_TRAIN, N_TEST = 12, 6
OFFICIAL_URL = datasets.CIFAR10_URL  # read before the autouse fixture replaces it


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty Keras cache, no ALEXNET_K3_DATA, and a download URL that cannot work."""
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv(datasets.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "CIFAR10_URL", (tmp_path / "no-server" / "c.tar.gz").as_uri())
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
    assert datasets.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"
    assert datasets.DATASETS == ("cifar10", "digits")


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
    assert str(path) in str(err.value) and datasets.CIFAR10_URL in str(err.value)


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
    monkeypatch.setattr(datasets, "CIFAR10_MD5", md5_of(tarball))
    assert_matches_fake(datasets.load_cifar10())


def test_download_through_file_url(tmp_path, monkeypatch, offline):
    tarball = write_cifar10(tmp_path / "server", N_TRAIN, N_TEST, as_tarball=True)
    monkeypatch.setattr(datasets, "CIFAR10_URL", tarball.as_uri())
    monkeypatch.setattr(datasets, "CIFAR10_MD5", md5_of(tarball))
    assert_matches_fake(datasets.load_cifar10())
    assert md5_of(offline / "cifar-10-python.tar.gz") == md5_of(tarball)
    # Offline again: the cached download is used.
    monkeypatch.setattr(datasets, "CIFAR10_URL", (tmp_path / "gone.tar.gz").as_uri())
    assert_matches_fake(datasets.load_cifar10())


def test_download_with_wrong_md5_is_deleted(tmp_path, monkeypatch, offline):
    tarball = write_cifar10(tmp_path / "server", N_TRAIN, N_TEST, as_tarball=True)
    monkeypatch.setattr(datasets, "CIFAR10_URL", tarball.as_uri())
    with pytest.raises(DatasetError, match="c58f30108f718f92721af3b95e74349a") as err:
        datasets.load_cifar10()
    assert md5_of(tarball) in str(err.value)
    assert not (offline / "cifar-10-python.tar.gz").exists()


def test_offline_with_nothing_cached(offline):
    with pytest.raises(DatasetNotFoundError) as err:
        datasets.load_cifar10()
    message = str(err.value)
    assert isinstance(err.value, OSError)
    assert datasets.CIFAR10_URL in message
    assert str(offline / "cifar-10-python.tar.gz") in message
    assert "ALEXNET_K3_DATA" in message


# ------------------------------------------------------------------- bad files


class Payload:
    """Pickles as a call of `func(*args)`: what a malicious batch file would carry."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("kind", ["os.system", "exec"])
def test_code_payload_is_refused_and_not_run(tmp_path, protocol, kind):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = Payload(os.system, f"touch {marker}")
    else:
        payload = Payload(exec, f"open({str(marker)!r}, 'w').write('x')")
    rewrite(folder, "data_batch_2", small_batch(filenames=[payload]), protocol)
    with pytest.raises(DatasetError, match="refused") as err:
        datasets.load_cifar10(folder)
    assert not marker.exists()
    assert str(folder / "data_batch_2") in str(err.value)
    assert ("system" if kind == "os.system" else "exec") in str(err.value)


@pytest.mark.parametrize(
    "stream",
    [
        # numpy.ndarray called directly (an allocation of attacker-chosen size)
        b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85R.",
        # _codecs.encode with a codec other than the latin1 Python writes
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        # bytes(n) instead of bytes()
        b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.",
        # a non-numeric dtype
        b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8K\x00K\x01\x87R.",
        # an extension-registry code, which would go through find_class
        b"\x80\x02\x82\x01.",
        # a persistent id
        b"\x80\x02X\x01\x00\x00\x00aQ.",
    ],
)
def test_allowed_globals_cannot_be_misused(tmp_path, stream):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    (folder / "test_batch").write_bytes(stream)
    with pytest.raises(DatasetError) as err:
        datasets.load_cifar10(folder)
    assert str(folder / "test_batch") in str(err.value)


def test_object_array_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    rewrite(folder, "data_batch_1", small_batch(labels=np.array([1, "x"], dtype=object)))
    with pytest.raises(DatasetError, match="dtype") as err:
        datasets.load_cifar10(folder)
    assert str(folder / "data_batch_1") in str(err.value)


def test_truncated_file(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    path = folder / "data_batch_4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        datasets.load_cifar10(folder)
    assert str(path) in str(err.value)


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
    assert str(folder / "data_batch_5") in str(err.value)


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


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, True, "0.2"])
def test_digits_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        datasets.load_digits(test_fraction=fraction)


def test_load_dataset(tmp_path):
    folder = write_cifar10(tmp_path, N_TRAIN, N_TEST)
    assert_matches_fake(datasets.load_dataset("cifar10", folder))
    assert datasets.load_dataset("digits").name == "digits"
    with pytest.raises(ValueError, match="cifar10, digits"):
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


def test_module_imports_no_backend():
    """datasets.py is backend-agnostic: no torch/tensorflow/jax, Keras only inside the
    download function, scikit-learn only inside load_digits."""
    tree = ast.parse(Path(datasets.__file__).read_text())
    top_level, anywhere = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            roots = {n.split(".")[0] for n in names}
            anywhere |= roots
            if node in tree.body:
                top_level |= roots
    assert not anywhere & {"torch", "tensorflow", "jax"}
    assert not top_level & {"keras", "sklearn"}
