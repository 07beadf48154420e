"""A restricted unpickler for data files: containers, scalars and numeric numpy arrays.

Dataset files such as CIFAR-10's batches are pickles, and a plain `pickle.load` of a
file from disk runs whatever code the file names. `load` rebuilds only dicts, lists,
tuples, bytes, str, numbers and numpy arrays of plain numbers; it never imports a
module, and never hands file data to numpy's own unpickling hooks.

How: rebuilding an array takes a handful of globals, and each one allowed is replaced
by a small function of ours that accepts only the arguments numpy itself writes, so a
file can neither import a module nor reach numpy's `__setstate__` with crafted state.
What numpy and Python write for an array, all of which `load` reads:

    Python 2 (e.g. the official CIFAR-10 files) and Python 3, protocols 2-4:
        numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b") + BUILD(state)
        numpy.dtype("u1", False, True) + BUILD(dtype state)
    numpy >= 2 writes numpy._core.multiarray instead of numpy.core.multiarray.
    Protocol 5: numpy._core.numeric._frombuffer(buffer, dtype, shape, order)
    Python 3 protocol 2 spells bytes as _codecs.encode(text, "latin1") and b"" as
    __builtin__.bytes().

Size: reading the stream allocates at most a few times the file's size (every
reference costs the stream a byte or more), but pickle shares containers, so a
small file can describe a huge tree: `[[inner] * 100_000] * 100` with a
1000-item `inner` is 203 KB on disk and 10**10 items once rebuilt. `load`
counts every item and byte it rebuilds, each use of a shared container counted
again, and refuses the file (`PickleTooLargeError`) as soon as a budget is
exceeded, before allocating past it. The defaults fit CIFAR-10's largest file
(a batch: 10,000 labels, 10,000 file names and 30.7 MB of pixels) with room.

Errors are `PickleLoadError`s that name the file and say what is wrong, without
knowing which dataset the file belongs to: the caller adds what to do about it.
"""

from __future__ import annotations

import io
import math
import pickle
import re

import numpy as np

__all__ = [
    "PickleLoadError",
    "PickleTooDeepError",
    "PickleTooLargeError",
    "RefusedGlobalError",
    "TruncatedPickleError",
    "load",
]


class PickleLoadError(ValueError):
    """A file is not a pickle `load` admits: corrupt, truncated, too deep or refused.

    Attributes:
        where: the file, as the caller named it.
        detail: the underlying error as `"Type: message"` (empty where there is none).
    """

    def __init__(self, where: str, message: str, detail: str = ""):
        super().__init__(f"{where}: {message}.")
        self.where, self.detail = where, detail


class TruncatedPickleError(PickleLoadError):
    """The file ends before its pickle does."""


class PickleTooDeepError(PickleLoadError):
    """The pickle nests containers deeper than Python's recursion limit."""


class PickleTooLargeError(PickleLoadError):
    """The pickle rebuilds to more items or bytes than the budget `load` was given."""


# `load`'s default budgets: CIFAR-10's largest file rebuilds to about 20,000 items
# and 31 MB (its pixels).
MAX_ITEMS = 1_000_000
MAX_BYTES = 128 * 2**20


class RefusedGlobalError(PickleLoadError):
    """The pickle names a global outside the allowed few: code, or a type it may not build.

    Attributes:
        name: the refused global, `"module.name"` (e.g. `"posix.system"`).
    """

    def __init__(self, where: str, name: str):
        super().__init__(
            where,
            f"refused to load the global {name} from this pickle; only dicts, lists, "
            f"bytes, str, numbers and numeric numpy arrays are admitted",
        )
        self.name = name


def load(
    file: io.BufferedIOBase, where: str, *, max_items: int = MAX_ITEMS, max_bytes: int = MAX_BYTES
) -> object:
    """Unpickles `file`, admitting only plain data (see the module docstring).

    Python 2 `str` (keys and pixel buffers of files written by Python 2) stays `bytes`
    rather than being decoded as text, since it is as often binary data as it is text.
    Numpy arrays are views of the bytes the file held, not copies.

    Args:
        file: a binary file object, positioned at the start of the pickle.
        where: how to name the file in errors, e.g. its path.
        max_items: the most list, tuple and dict items (a dict item counts twice:
            key and value) the rebuilt data may hold, a shared container counted
            at each use.
        max_bytes: the most bytes of bytes, str and array data it may hold, counted
            the same way.

    Raises:
        RefusedGlobalError: the pickle names a global that is not allowed.
        TruncatedPickleError: the file ends early.
        PickleTooDeepError: the nesting is too deep to rebuild.
        PickleTooLargeError: the data would exceed `max_items` or `max_bytes`.
        PickleLoadError: anything else; not a pickle, or one `load` does not admit.

    Example:
        >>> load(io.BytesIO(pickle.dumps({b"labels": [1, 2]})), "<memory>")
        {b'labels': [1, 2]}
    """
    budget = _Budget(max_items, max_bytes)
    try:
        return _resolve(_RestrictedUnpickler(file, encoding="bytes").load(), budget)
    except _TooLarge as e:
        raise PickleTooLargeError(where, str(e), str(e)) from None
    except _RefusedGlobal as e:
        raise RefusedGlobalError(where, str(e)) from None
    except RecursionError:
        raise PickleTooDeepError(where, "the pickle is nested too deeply") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, struct.error, ...
        detail = f"{type(e).__name__}: {e}"
        if isinstance(e, EOFError) or "truncated" in str(e) or "ran out" in str(e).lower():
            raise TruncatedPickleError(where, f"the file is truncated ({detail})", detail) from e
        raise PickleLoadError(
            where, f"the file is not an admitted pickle ({detail})", detail
        ) from e


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _TooLarge(pickle.UnpicklingError):
    pass


class _Budget:
    """What the rebuilt data may still hold; `take` refuses the first excess."""

    __slots__ = ("items", "bytes", "max_items", "max_bytes")

    def __init__(self, max_items: int, max_bytes: int):
        self.items = self.bytes = 0
        self.max_items, self.max_bytes = max_items, max_bytes

    def take(self, items: int = 0, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes
        if self.items > self.max_items:
            raise _TooLarge(
                f"the pickle rebuilds to more than {self.max_items:,} list, tuple and dict "
                "items (each use of a shared container counted), more than the data it "
                "may hold; refused before building it"
            )
        if self.bytes > self.max_bytes:
            raise _TooLarge(
                f"the pickle rebuilds to more than {self.max_bytes:,} bytes of data (each "
                "use of a shared object counted), more than the data it may hold; refused "
                "before building it"
            )


class _NdarrayType:
    """Stands for `numpy.ndarray` inside a pickle: usable only as `_reconstruct`'s subtype."""


_NDARRAY = _NdarrayType()
_DTYPE_SPEC = re.compile(r"[biuf][1248]")


class _PendingDtype:
    """`numpy.dtype(spec, align, copy)`; pickle's BUILD then supplies the byte order."""

    __slots__ = ("dtype",)

    def __init__(self, spec, align=False, copy=False):
        if isinstance(spec, bytes):
            spec = spec.decode("ascii", "replace")
        if not isinstance(spec, str) or not _DTYPE_SPEC.fullmatch(spec):
            raise pickle.UnpicklingError(f"dtype {spec!r} is not allowed (only plain numbers)")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # numpy's dtype state for a plain number: (3, byteorder, None, None, None, -1, -1, 0).
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[0] == 3
            and state[2:] == (None, None, None, -1, -1, 0)
        ):
            raise pickle.UnpicklingError(f"unexpected dtype state {state!r}")
        order = state[1].decode("ascii", "replace") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"unexpected dtype byte order {state[1]!r}")
        if order in "<>":
            self.dtype = self.dtype.newbyteorder(order)


class _PendingArray:
    """What `_reconstruct` returns; pickle's BUILD then hands it shape, dtype and bytes."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("unexpected numpy array state")
        if len(state) == 5:
            if state[0] != 1:
                raise pickle.UnpicklingError(f"unknown numpy array state version {state[0]!r}")
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran not in (0, 1):  # also admits False and True
            raise pickle.UnpicklingError("unexpected numpy array order flag")
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _check_shape(shape) -> tuple:
    if not (
        isinstance(shape, tuple)
        and len(shape) <= 8
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        raise pickle.UnpicklingError(f"unexpected array shape {shape!r}")
    return shape


def _array_from_bytes(raw, dtype, shape, order) -> np.ndarray:
    if not isinstance(dtype, _PendingDtype):
        raise pickle.UnpicklingError("numpy array without an allowed dtype")
    if isinstance(raw, pickle.PickleBuffer):
        raw = raw.raw()
    if not isinstance(raw, bytes | bytearray | memoryview):
        # A list here would be an object array: refused, its dtype could not exist anyway.
        raise pickle.UnpicklingError(f"numpy array data is {type(raw).__name__}, not bytes")
    shape = _check_shape(shape)
    dtype = dtype.dtype
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise pickle.UnpicklingError(
            f"numpy array of shape {shape} and dtype {dtype} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, the file holds {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)


def _reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY or shape != (0,) or dtype not in (b"b", "b"):
        raise pickle.UnpicklingError("unexpected arguments to numpy's _reconstruct")
    return _PendingArray()


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    if order not in ("C", "F", "K"):
        raise pickle.UnpicklingError(f"unexpected array order {order!r}")
    if order == "K" and axis_order is not None:
        shape = _check_shape(shape)
        if sorted(axis_order) != list(range(len(shape))):
            raise pickle.UnpicklingError(f"unexpected axis order {axis_order!r}")
        return _array_from_bytes(buf, dtype, shape, "C").transpose(axis_order)
    return _array_from_bytes(buf, dtype, shape, "C" if order == "K" else order)


def _latin1_encode(text, encoding):
    if type(text) is not str or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected arguments to _codecs.encode")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:
        raise pickle.UnpicklingError("unexpected arguments to bytes()")
    return b""


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PendingDtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


_NUMBERS = frozenset({int, float, bool, complex, type(None)})


def _resolve(obj, budget: _Budget):
    """Replaces the placeholders the unpickler built by the arrays and dtypes they stand for.

    Every container is rebuilt at each use, so `budget` is charged before each is.
    """
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array without its data")
        budget.take(nbytes=obj.array.nbytes)
        return obj.array
    if isinstance(obj, _PendingDtype):
        return obj.dtype
    if obj is _NDARRAY:
        raise pickle.UnpicklingError("stray numpy.ndarray reference")
    if isinstance(obj, dict):
        budget.take(items=2 * len(obj))
        return {_resolve(k, budget): _resolve(v, budget) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        budget.take(items=len(obj))
        # Numbers (most items of a data file) need no rebuilding: no call for them.
        items = [v if type(v) in _NUMBERS else _resolve(v, budget) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, bytes | bytearray | str):
        budget.take(nbytes=len(obj))
    return obj
