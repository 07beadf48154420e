"""CIFAR-10: find a copy (data_dir, `ALEXNET_K3_DATA`, the Keras cache), else download it,
then read its folder or tarball without trusting either.

The search order and the errors are described in the package docstring
(`alexnet_k3.datasets`). What the files must hold is checked in `cifar10_batches`, and
the pickles are read by `unpickler`; both name the file and the problem, and this
module adds the CIFAR-10 advice (where to download the official copy).

The download (`alexnet_k3.downloads`) streams into `cifar-10-python.tar.gz.part-<pid>`
in the cache and renames it only once its md5 is the official one, so the cache never
holds a partial tarball under the real name; a `.part-` file left by a killed run is
removed at the next start. `ALEXNET_K3_CIFAR10_URL` (or `--cifar10-url`) names a
mirror; the md5 checked stays the official file's.

Tests point the download at a local tarball by patching `CIFAR10_URL` and
`CIFAR10_MD5` here, where they are read at call time; the copies re-exported by
`alexnet_k3.datasets` are for reading only.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path

from alexnet_k3.core import from_command_line, option_name
from alexnet_k3.datasets import unpickler
from alexnet_k3.datasets.base import Dataset, DatasetError, DatasetNotFoundError
from alexnet_k3.datasets.cifar10_batches import ALL_FILES, BatchFormatError, to_dataset
from alexnet_k3.downloads import (
    DownloadError,
    WrongHashError,
    download,
    remove_stale,
    retry_advice,
)

# Module constants rather than arguments so that tests can point the download at a
# local file:// tarball and exercise the real download + md5 path without a network.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
DATA_ENV_VAR = "ALEXNET_K3_DATA"
URL_ENV_VAR = "ALEXNET_K3_CIFAR10_URL"

# Official batches are ~30 MB. The cap stops a hostile tar header or file from making
# us read gigabytes; it still admits batches ten times larger than any real one.
_MAX_FILE_BYTES = 1 << 30

# Where other tools leave CIFAR-10 inside the Keras cache, newest Keras first.
# Keras 3 (3.15 checked) `cifar10.load_data()` extracts to `cifar-10-batches-py-target/...`
# and keeps the tarball as `..._archive`; older Keras used `cifar-10-batches-py{,.tar.gz}`.
_CACHE_FOLDERS = (f"{CIFAR10_FOLDER}-target/{CIFAR10_FOLDER}", CIFAR10_FOLDER)
_CACHE_TARBALLS = (CIFAR10_TARBALL, f"{CIFAR10_FOLDER}-target_archive", f"{CIFAR10_FOLDER}.tar.gz")


def load_cifar10(data_dir=None) -> Dataset:
    """Loads CIFAR-10: 5 training batches, the test batch and the class names.

    Args:
        data_dir: the extracted `cifar-10-batches-py` folder, the official
            `cifar-10-python.tar.gz`, or a folder holding either. Defaults to the
            `ALEXNET_K3_DATA` environment variable, then the Keras cache, then a
            download (see the `alexnet_k3.datasets` docstring).

    Returns:
        A `Dataset` with uint8 `(N, 32, 32, 3)` images (50000 train and 10000 test for
        the official files) and the class names from `batches.meta`.

    Raises:
        DatasetError: a file is not valid CIFAR-10.
        DatasetNotFoundError: nothing found locally and the download failed.

    Example:
        >>> data = load_cifar10("~/data/cifar-10-batches-py")
        >>> data.x_train.shape, data.class_names[0]
        ((50000, 32, 32, 3), 'airplane')
    """
    source = _locate_cifar10(data_dir)
    if source.is_dir():
        files = _read_folder(source)
    else:
        files = _read_tarball(source)
    try:
        return to_dataset(files)
    except BatchFormatError as e:
        raise _bad(e.where, e.problem) from None


# --------------------------------------------------------------------------- finding


def cifar10_on_disk(data_dir=None) -> bool:
    """Whether `load_cifar10(data_dir)` would find a copy without downloading one.

    Example:
        >>> cifar10_on_disk()  # before the first download
        False
    """
    try:
        return _locate_cifar10(data_dir, download=False) is not None
    except (DatasetError, DatasetNotFoundError):
        return False


def _locate_cifar10(data_dir, *, download: bool = True) -> Path | None:
    if data_dir is not None:
        return _user_source(data_dir, option_name("data_dir", str(data_dir)))
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return _user_source(env, f"{DATA_ENV_VAR}={env!r}")
    datasets_dir = _keras_datasets_dir()
    remove_stale(datasets_dir, CIFAR10_TARBALL)
    for rel in _CACHE_FOLDERS:
        if (datasets_dir / rel).is_dir():
            return datasets_dir / rel
    for rel in _CACHE_TARBALLS:
        if (datasets_dir / rel).is_file():
            _check_md5(datasets_dir / rel)
            return datasets_dir / rel
    return _download(datasets_dir) if download else None


def _user_source(value, origin: str) -> Path:
    # A path the user gave is used as is, or is an error: never a reason to look
    # elsewhere, since a silent fallback would train on data they did not choose.
    path = Path(os.fspath(value)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if path.name == CIFAR10_FOLDER or any((path / name).exists() for name in ALL_FILES):
            return path
        if (path / CIFAR10_FOLDER).is_dir():
            return path / CIFAR10_FOLDER
        if (path / CIFAR10_TARBALL).is_file():
            return path / CIFAR10_TARBALL
        raise DatasetNotFoundError(
            f"{origin}: {path} holds no CIFAR-10 (expected the extracted {CIFAR10_FOLDER}/ "
            f"folder with {', '.join(ALL_FILES)}, or {CIFAR10_TARBALL}, or a folder holding "
            f"either). Download the tarball from {CIFAR10_URL}."
        )
    raise DatasetNotFoundError(
        f"{origin}: {path} does not exist. Point it at the extracted {CIFAR10_FOLDER}/ folder "
        f"or at {CIFAR10_TARBALL} (download it from {CIFAR10_URL}), or leave it unset to use "
        f"the Keras cache and download."
    )


def _keras_home() -> Path:
    # Read at call time (Keras reads KERAS_HOME once, at import), so the cache follows
    # the environment of this call; the same rule as keras.src.backend.config.
    home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(home).expanduser()


def _keras_datasets_dir() -> Path:
    home = _keras_home()
    # keras.utils.get_file falls back to /tmp/.keras when the home is not writable.
    if home.exists() and not os.access(home, os.W_OK):
        home = Path("/tmp/.keras")
    return home / "datasets"


# ------------------------------------------------------------------------ downloading


def cifar10_url() -> str:
    """The URL CIFAR-10 is downloaded from: `ALEXNET_K3_CIFAR10_URL`, else the official one."""
    return os.environ.get(URL_ENV_VAR) or CIFAR10_URL


def _download(datasets_dir: Path) -> Path:
    url = cifar10_url()
    dest = datasets_dir / CIFAR10_TARBALL
    try:
        download(url, dest, hash_name="md5", expected=CIFAR10_MD5)
    except WrongHashError as e:
        if url != CIFAR10_URL:
            then = f"The mirror serves another file: point it at a copy of {CIFAR10_URL}, or"
        else:
            then = (
                "Run again to retry; if it fails again, something on the way alters the "
                "download (a proxy or a captive portal): fetch the file another way and"
            )
        raise DatasetError(
            f"{e} (the official CIFAR-10's); it was not kept. {then} {_own_copy(dest)}"
        ) from None
    except DownloadError as e:
        retry = retry_advice(e)
        mirror = "pass --cifar10-url URL or " if from_command_line() else ""
        raise DatasetNotFoundError(
            f"CIFAR-10 was not found locally and could not be downloaded: {e}.\n{retry} "
            f"To use a mirror, {mirror}set {URL_ENV_VAR}. To use a copy made elsewhere, "
            f"{_own_copy(dest)} For a dataset that needs no download, use 'digits'."
        ) from e
    return dest


def _own_copy(dest: Path) -> str:
    return (
        f"put {CIFAR10_TARBALL} (md5 {CIFAR10_MD5}) at {dest}, or pass "
        f"{option_name('data_dir')} (or set {DATA_ENV_VAR} to) that tarball or its "
        f"extracted {CIFAR10_FOLDER}/ folder."
    )


def _check_md5(path: Path) -> None:
    """Refuses a tarball found in the cache that is not the official file.

    This package never leaves one there (its downloads are renamed into place only
    after this same check), so the file was put there by hand or by another tool:
    it is not deleted here, and the message says how to replace it.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() == CIFAR10_MD5:
        return
    raise DatasetError(
        f"{path}: md5 is {digest.hexdigest()}, expected {CIFAR10_MD5}; the file is "
        f"incomplete or not the official CIFAR-10 (alexnet_k3 did not write it there). "
        f"Delete it and run again to download it from {cifar10_url()}, or pass "
        f"{option_name('data_dir')} a copy of your own."
    )


# ---------------------------------------------------------------------------- reading


def _read_folder(folder: Path) -> dict:
    missing = [name for name in ALL_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"{folder}: missing {', '.join(missing)}; a CIFAR-10 folder holds "
            f"{', '.join(ALL_FILES)}. Extract the full tarball from {CIFAR10_URL}."
        )
    files = {}
    for name in ALL_FILES:
        path = folder / name
        where = str(path)
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise DatasetError(f"{where}: {size} bytes is too large for a CIFAR-10 batch.")
        with open(path, "rb") as f:
            files[name] = (where, _unpickle(f, where))
    return files


def _read_tarball(tar_path: Path) -> dict:
    wanted = {f"{CIFAR10_FOLDER}/{name}": name for name in ALL_FILES}
    files = {}
    try:
        # Members are read straight from the stream, in archive order: nothing is
        # extracted to disk and no member path is ever trusted as a destination.
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                key = re.sub(r"^(\./)+", "", member.name)
                if key not in wanted:
                    continue
                name = wanted[key]
                where = f"{tar_path} (member {member.name})"
                if name in files:
                    raise DatasetError(f"{where}: appears twice in the tarball.")
                if not member.isfile():
                    kind = "a link" if member.issym() or member.islnk() else "not a file"
                    raise DatasetError(
                        f"{where}: is not a regular file ({kind}); links in the archive are "
                        f"refused, since they can point outside it. Download the official "
                        f"tarball from {CIFAR10_URL} (md5 {CIFAR10_MD5}) and use that one."
                    )
                if member.size > _MAX_FILE_BYTES:
                    raise DatasetError(f"{where}: {member.size} bytes is too large.")
                files[name] = (where, _unpickle(tar.extractfile(member), where))
    except DatasetError:
        raise
    except Exception as e:  # tarfile.ReadError, EOFError, zlib.error, OSError ...
        raise DatasetError(
            f"{tar_path}: cannot be read as a tar.gz archive ({type(e).__name__}: {e}); it is "
            f"truncated or corrupt. Download it again from {CIFAR10_URL}."
        ) from e
    missing = [f"{CIFAR10_FOLDER}/{name}" for name in ALL_FILES if name not in files]
    if missing:
        raise DatasetError(
            f"{tar_path}: the archive lacks {', '.join(missing)}. Download the full "
            f"tarball from {CIFAR10_URL}."
        )
    return files


def _unpickle(f, where: str):
    try:
        return unpickler.load(f, where)
    except unpickler.RefusedGlobalError as e:
        raise DatasetError(
            f"{where}: refused to load the global {e.name} from this pickle. CIFAR-10 batches "
            f"hold only dicts, lists, bytes, str, ints and numpy arrays; this file holds "
            f"something else and may be malicious. Delete it and download the official "
            f"tarball from {CIFAR10_URL}."
        ) from None
    except unpickler.PickleTooDeepError:
        raise _bad(where, "the pickle is nested too deeply") from None
    except unpickler.TruncatedPickleError as e:
        raise _bad(where, f"the file is truncated ({e.detail})") from e
    except unpickler.PickleLoadError as e:
        raise _bad(where, f"the file is not a CIFAR-10 pickle or is corrupt ({e.detail})") from e


def _bad(where: str, problem: str) -> DatasetError:
    return DatasetError(
        f"{where}: {problem}. This is not a valid CIFAR-10 file; download the official "
        f"tarball again from {CIFAR10_URL} (md5 {CIFAR10_MD5})."
    )
