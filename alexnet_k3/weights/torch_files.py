"""Reading torch checkpoints safely, and telling the user why one cannot be read.

A `.pth` file is untrusted: it is read only with `torch.load(weights_only=True)`,
torch's restricted unpickler, which builds tensors and plain containers and
refuses everything else, so no code in the file ever runs.

When a load fails, the reason is worked out from the exception's type and from
the file itself, never from the wording of torch's messages, which changes
between releases. Before loading: a file that starts like neither of torch's
formats (a zip archive, `PK\x03\x04`; a pickle, `\x80`) is not a checkpoint, a
zip archive whose central directory `zipfile` cannot find is cut short, one
without `data.pkl` was not written by torch.save. After a failed load: an
`EOFError` is a pickle cut short; a `pickle.UnpicklingError` is a refusal when the
file names a class or function that torch does not allow (asked of torch's
public `get_unsafe_globals_in_checkpoint`, or decoded statically with
`pickletools`: nothing runs), otherwise a pickle torch cannot read; anything
else is a damaged zip member (`zipfile.testzip`) or a format torch does not read.

The pretrained weights are downloaded from their record's URL into torch hub's
cache folder by `alexnet_k3.downloads` (a timeout, a temporary name, the
record's SHA-256 prefix checked before the rename into the cache).
"""

from __future__ import annotations

import hashlib
import pathlib
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping

from alexnet_k3 import downloads
from alexnet_k3.core import from_command_line, option_name
from alexnet_k3.weights.errors import WeightsError
from alexnet_k3.weights.layouts import ArchitectureTable
from alexnet_k3.weights.records import PretrainedWeights
from alexnet_k3.weights.sources import Source, mapping_source

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_PROTO = b"\x80"  # the PROTO opcode that starts every pickle of protocol >= 2
# The modules whose names torch.save writes for a state_dict (tensor rebuilders,
# storages, dtypes, OrderedDict): a refused pickle names something else.
_STATE_DICT_MODULES = frozenset({"torch", "torch._utils", "torch._tensor", "collections"})
_SAVE_HINT = "Expected a state_dict saved with `torch.save(model.state_dict(), path)`."


def _import_torch():
    """torch, or None where it is not installed (jax-only or tensorflow-only setups)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def read_torch_file(path: pathlib.Path, table: ArchitectureTable, label: str | None = None):
    """The state_dict in the torch file `path` as a `Source`; raises `WeightsError`."""
    label = label or f"Checkpoint '{path}'"
    if path.stat().st_size == 0:
        raise WeightsError(f"{label} is empty (0 bytes). Download or copy it again.")
    with open(path, "rb") as file:
        head = file.read(len(_ZIP_MAGIC))
    is_zip = head == _ZIP_MAGIC
    if not is_zip and not head.startswith(_PICKLE_PROTO):
        raise WeightsError(
            f"{label} is not a readable torch checkpoint (it starts with {head!r}: neither "
            f"a zip archive, as torch.save writes, nor a pickle). {_SAVE_HINT}"
        )
    if is_zip:
        _check_archive(path, label)
    torch = _import_torch()
    if torch is None:
        raise WeightsError(
            f"{label} is a torch file and torch is not installed here. Install it "
            "(`pip install 'alexnet-k3[torch]'`), or convert the file once on a machine "
            f"with torch: `alexnet-k3 convert --arch {table.name} --weights {path} --out "
            f"{path.name.split('.')[0] or 'weights'}.weights.h5`, then pass the .weights.h5 file."
        )
    try:
        # mmap reads the tensors lazily, which halves the load time of a 233 MB
        # file; only zip archives have it.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as error:  # noqa: BLE001 - classified below, by type and by the file
        raise WeightsError(_load_failure(label, path, is_zip, error, torch)) from error
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{label} holds a {type(state).__name__}, not a state_dict. Save the weights "
            "with `torch.save(model.state_dict(), path)`."
        )
    return mapping_source(state, label, table, path)


def _check_archive(path: pathlib.Path, label: str) -> None:
    """Refuses a zip archive that is cut short or that torch.save did not write."""
    try:
        with zipfile.ZipFile(path) as archive:  # reads only the directory at the end
            names = archive.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise WeightsError(
            f"{label} is truncated or corrupt (a zip archive whose central directory, at "
            "its end, is missing). Download or copy it again."
        ) from error
    if not any(name.endswith("/data.pkl") for name in names):
        raise WeightsError(
            f"{label} is not a readable torch checkpoint (a zip archive without the data.pkl "
            f"that torch.save writes; it holds {', '.join(names[:3]) or 'nothing'}). {_SAVE_HINT}"
        )


def _load_failure(label: str, path: pathlib.Path, is_zip: bool, error: Exception, torch) -> str:
    """The message for a `torch.load` of `path` that raised `error`."""
    if isinstance(error, EOFError):
        return (
            f"{label} is truncated or corrupt (its pickle ends early). Download or copy it again."
        )
    if isinstance(error, pickle.UnpicklingError):
        refused = _refused_globals(torch, path, is_zip)
        if refused:
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            return (
                f"{label} was refused: it holds pickled objects other than tensors "
                f"({', '.join(refused[:3])}{more}), which could run code when loaded, so "
                "alexnet_k3 does not load it. A torchvision state_dict holds only tensors: if "
                "you trust the file, load it in torch yourself and re-save `model.state_dict()`."
            )
        return (
            f"{label} is not a readable torch checkpoint (a pickle that torch's weights-only "
            f"loader cannot read). {_SAVE_HINT}"
        )
    if is_zip:
        bad = _bad_zip_member(path)
        if bad:
            return f"{label} is truncated or corrupt ({bad}). Download or copy it again."
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return (
        f"{label} is not a readable torch checkpoint ({type(error).__name__}: {reason}). "
        f"{_SAVE_HINT}"
    )


def _refused_globals(torch, path: pathlib.Path, is_zip: bool) -> list[str]:
    """The classes and functions named in `path` that torch's weights-only loader
    refuses; only for the message (torch.load has refused the file already).

    An archive is asked with torch's public `get_unsafe_globals_in_checkpoint`
    (torch >= 2.5); otherwise the pickles are decoded statically with
    `pickletools.genops` (it executes nothing) and every name outside
    `_STATE_DICT_MODULES` counts.
    """
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if is_zip and find is not None:
        try:
            return [f"GLOBAL {name}" for name in sorted(find(path))]
        except Exception:  # noqa: BLE001 - fall back to decoding the pickle here
            pass
    names = []
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
                with archive.open(member) as stream:
                    names += _foreign_globals(stream)
        else:
            with open(path, "rb") as stream:
                # A legacy torch file is several pickles in a row, then raw storage bytes.
                while stream.peek(1)[:1] == _PICKLE_PROTO:
                    names += _foreign_globals(stream)
    except Exception:  # noqa: BLE001 - past the pickles: the names decoded so far count
        pass
    return names


def _foreign_globals(stream) -> list[str]:
    """The imports of the next pickle in `stream` that are not torch's or collections'."""
    names = []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            module = arg.split(" ")[0]
            if module not in _STATE_DICT_MODULES:
                names.append(f"{opcode.name} {arg.replace(' ', '.')}")
        elif opcode.name == "STACK_GLOBAL":  # its names were pushed before; torch.save never
            names.append("STACK_GLOBAL")  # writes one (pickle protocol 2)
    return names


def _bad_zip_member(path: pathlib.Path) -> str | None:
    """What is damaged in the zip archive `path`, or None when every CRC checks out."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"a damaged zip archive: {error}"
    return f"the zip member {bad!r} is damaged" if bad else None


def read_pretrained(name: str, table: ArchitectureTable) -> Source:
    """`table.pretrained[name]` (e.g. 'imagenet') from torch hub's cache, downloaded
    first when it is not there."""
    record = table.pretrained[name]
    torch = _import_torch()
    if torch is None:
        out = f"{table.name}_{name}.weights.h5"
        raise WeightsError(
            f"{option_name('weights', name)} downloads torchvision's {record.file_name}, "
            "which needs torch: `pip install 'alexnet-k3[torch]'`. Without torch, convert it "
            f"once on a machine with torch (`alexnet-k3 convert --arch {table.name} --weights "
            f"{name} --out {out}`) and pass {option_name('weights', out)}."
        )
    folder = pathlib.Path(torch.hub.get_dir()) / "checkpoints"
    cached = folder / record.file_name
    label = f"Checkpoint '{cached}' ({option_name('weights', name)})"
    downloads.remove_stale(folder, record.file_name, _legacy_partials(record.file_name))
    if not cached.is_file():
        _download(record, folder, cached, name)
    else:
        # A file copied into the cache by hand (as the offline message suggests) is
        # checked here; a download is checked before it enters the cache.
        wrong = _wrong_hash(cached, record)
        if wrong:
            raise WeightsError(
                f"{label} is not torchvision's file: {wrong}. Delete it (it is then "
                f"downloaded again) or replace it with the file from {record.url}."
            )
    try:
        return read_torch_file(cached, table, label)
    except WeightsError as error:
        # Its hash is torchvision's, so reading it failed here, not on the way: the
        # cache gives it up so that the advice to fetch it again can be followed.
        cached.unlink(missing_ok=True)
        what = str(error).replace(" Download or copy it again.", "")
        raise WeightsError(
            f"{what} It passed its SHA-256 check, so it was removed from torch hub's cache "
            f"and the next run downloads it again; if that ends in the same error, this "
            f"torch ({torch.__version__}) cannot read torchvision's file: upgrade torch, or "
            f"convert it where torch can (`alexnet-k3 convert --arch {table.name} --weights "
            f"{name} --out {table.name}_{name}.weights.h5`)."
        ) from error


def _legacy_partials(file_name: str) -> tuple[re.Pattern, ...]:
    """Temporary files of earlier downloads of `file_name`: torch hub's
    (`NAME.<uuid>.partial`) and this package's before `alexnet_k3.downloads`
    (`.NAME.<pid>.download`, with torch hub's `.partial` of it)."""
    name = re.escape(file_name)
    return (
        re.compile(rf"\.{name}\.(\d+)\.download(?:\.[0-9a-f]{{32}}\.partial)?"),
        re.compile(rf"{name}\.[0-9a-f]{{32}}\.partial"),
    )


def _download(record: PretrainedWeights, folder, cached, name: str) -> None:
    """Downloads `record` into `cached`, only if its SHA-256 matches the record's."""
    given = option_name("weights", name)
    try:
        downloads.download(record.url, cached, hash_name="sha256", expected=record.sha256_prefix)
    except downloads.WrongHashError as error:
        raise WeightsError(
            f"{given}: the download failed its SHA-256 check ({error}); the transfer ended "
            f"normally but the file is not torchvision's, and nothing was written to '{folder}'. "
            "Run again to retry; if it keeps failing, something on the way (a proxy?) alters "
            f"the download: {_copy_advice(folder)}"
        ) from None
    except downloads.DownloadError as error:
        raise WeightsError(
            f"{given}: could not download {record.file_name}, which is not in torch hub's "
            f"cache yet: {error}. {downloads.retry_advice(error)} Without internet, "
            f"{_copy_advice(folder)}"
        ) from error


def _copy_advice(folder) -> str:
    copy = "--weights PATH" if from_command_line() else "weights=PATH"
    return (
        f"download it another way and put it in '{folder}' (torch hub's cache, "
        f"$TORCH_HOME/hub/checkpoints), or pass the path of a copy as {copy}."
    )


def _wrong_hash(path: pathlib.Path, record: PretrainedWeights) -> str | None:
    """None when `path`'s SHA-256 starts with the record's prefix, else what differs."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    found = digest.hexdigest()
    if found.startswith(record.sha256_prefix):
        return None
    return f"its SHA-256 is {found[:16]}..., which should start with {record.sha256_prefix}"
