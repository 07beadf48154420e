"""alexnet_k3.datasets.unpickler: plain data rebuilt from every pickle numpy and Python
write; code, misused globals and malformed streams refused without running anything.

How these files surface through `load_cifar10` (the CIFAR-10 advice added to each
error) is tested in test_datasets.py.
"""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from cifar_files import python2_pickle

from alexnet_k3.datasets import unpickler
from alexnet_k3.datasets.unpickler import (
    PickleLoadError,
    PickleTooDeepError,
    RefusedGlobalError,
    TruncatedPickleError,
)

WHERE = "/data/some_file"


def load(stream: bytes):
    return unpickler.load(io.BytesIO(stream), WHERE)


def refused(stream: bytes, error=PickleLoadError) -> PickleLoadError:
    """Loads `stream`, expecting `error`; returns it after checking that it names the file."""
    with pytest.raises(error) as err:
        load(stream)
    assert str(err.value).startswith(f"{WHERE}: ")
    return err.value


def mutated(stream: bytes, old: bytes, new: bytes) -> bytes:
    """`stream` with its one occurrence of `old` replaced (keep the length in protocol 4+
    streams, whose frames count their bytes)."""
    assert stream.count(old) == 1, (old, stream)
    return stream.replace(old, new)


# ------------------------------------------------------------------ what is admitted

ARRAYS = {
    "u1": np.arange(6, dtype=np.uint8).reshape(2, 3),
    "i8": np.array([-(2**40), 0, 7], dtype=np.int64),
    "f4 big-endian": np.array([1.5, -2.0], dtype=">f4"),
    "bool": np.array([True, False]),
    "0-d": np.array(3, dtype=np.int16),
    "empty": np.zeros((0, 4), dtype=np.uint8),
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    "permuted axes": np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(1, 0, 2),
    "strided": np.arange(10, dtype=np.uint8)[::3],
}


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_python3_pickles_round_trip(protocol):
    obj = {
        "arrays": dict(ARRAYS),
        "labels": [0, 1, 2**70, -3],
        "text": ("é", b"\x00\xff", 1.25, None, True),
        "dtype": np.dtype("<u2"),
    }
    back = load(pickle.dumps(obj, protocol=protocol))
    assert back["labels"] == obj["labels"] and back["text"] == obj["text"]
    assert back["dtype"] == np.dtype("<u2") and type(back["dtype"]) is type(obj["dtype"])
    for name, array in ARRAYS.items():
        got = back["arrays"][name]
        assert type(got) is np.ndarray, name
        assert got.dtype == array.dtype and got.shape == array.shape, name
        np.testing.assert_array_equal(got, array, err_msg=name)


def test_python2_pickle_keeps_str_as_bytes():
    obj = {b"data": ARRAYS["u1"], b"labels": [1, 2], b"batch_label": b"training batch 1 of 5"}
    back = load(python2_pickle(obj))
    assert set(back) == {b"data", b"labels", b"batch_label"}
    assert back[b"batch_label"] == b"training batch 1 of 5"
    np.testing.assert_array_equal(back[b"data"], ARRAYS["u1"])


# -------------------------------------------------------------------- code payloads


class Payload:
    """Pickles as a call of `func(*args)`: what a malicious data file would carry."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [0, 2, 5])
@pytest.mark.parametrize("kind", ["os.system", "exec", "eval", "getattr"])
def test_code_payload_is_refused_and_not_run(tmp_path, protocol, kind):
    marker = tmp_path / "pwned"
    write = f"open({str(marker)!r}, 'w').write('x')"
    payload = {
        "os.system": Payload(os.system, f"touch {marker}"),
        "exec": Payload(exec, write),
        "eval": Payload(eval, write),
        # getattr(__import__("os"), "system") would hand back the function itself.
        "getattr": Payload(getattr, Payload(__import__, "os"), "system"),
    }[kind]
    stream = pickle.dumps({"labels": [1], "filenames": [payload]}, protocol=protocol)
    err = refused(stream, RefusedGlobalError)
    assert not marker.exists()
    # Protocols 0-2 spell builtins as Python 2's __builtin__.
    modules = {os.system.__module__} if kind == "os.system" else {"builtins", "__builtin__"}
    module, name = err.name.rsplit(".", 1)
    assert module in modules and name == kind.split(".")[-1]
    assert f"refused to load the global {err.name}" in str(err)


@pytest.mark.parametrize(
    "obj, name",
    [
        # numpy's own hooks: scalar() and object arrays run file data through numpy.
        (np.int64(3), "numpy._core.multiarray.scalar"),
        (np.ma.masked_array([1, 2]), "numpy.ma.core._mareconstruct"),
        (np.array([1, 2]).view(np.recarray), "numpy.rec.recarray"),
    ],
)
def test_numpy_globals_beyond_plain_arrays_are_refused(obj, name):
    err = refused(pickle.dumps(obj, protocol=2), RefusedGlobalError)
    assert err.name == name


def test_allowed_globals_are_all_stand_ins():
    """find_class never returns a real numpy or builtin object, only our checked stand-ins."""
    for key, value in unpickler._ALLOWED_GLOBALS.items():
        defined_in = getattr(value, "__module__", None) or type(value).__module__
        assert defined_in == unpickler.__name__, key
        assert not isinstance(value, type) or not issubclass(value, np.generic), key


# ---------------------------------------------------------- allowed globals misused

# A valid Python 2 style array stream (numpy.core.multiarray._reconstruct + BUILD), and
# a protocol 5 one (numpy._core.numeric._frombuffer), each mutated one way per case.
PY2_ARRAY = python2_pickle(np.arange(6, dtype=np.uint8).reshape(2, 3))
P5_ARRAY = pickle.dumps(np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(1, 0, 2), 5)
PY2_STATE = PY2_ARRAY.index(b"(K\x01K\x02")  # BUILD state (1, shape, dtype, fortran, raw)


@pytest.mark.parametrize(
    "stream, match",
    [
        (mutated(PY2_ARRAY, b"U\x02u1", b"U\x02O8"), "dtype 'O8' is not allowed"),
        (mutated(PY2_ARRAY, b"U\x02u1", b"U\x02V8"), "dtype 'V8' is not allowed"),
        (mutated(PY2_ARRAY, b"cnumpy\nndarray\n", b"cnumpy\ndtype\n"), "_reconstruct"),
        (mutated(PY2_ARRAY, b"K\x00\x85U\x01b", b"K\x01\x85U\x01b"), "_reconstruct"),
        (mutated(PY2_ARRAY, b"U\x01b\x87", b"U\x01B\x87"), "_reconstruct"),
        # a shape whose bytes the file does not hold: refused before any allocation
        (mutated(PY2_ARRAY, b"(K\x01K\x02K\x03", b"(K\x01K\x02K\x04"), "needs 8 bytes"),
        (mutated(PY2_ARRAY, b"(K\x01K\x02K\x03", b"(K\x01K\x02J\xff\xff\xff\xff"), "shape"),
        (mutated(PY2_ARRAY, b"(K\x01K\x02", b"(K\x02K\x02"), "state version"),
        (mutated(PY2_ARRAY, b"\x89U\x06", b"K\x02U\x06"), "order flag"),
        (mutated(PY2_ARRAY, b"(K\x03U\x01|", b"(K\x04U\x01|"), "dtype state"),
        (mutated(PY2_ARRAY, b"(K\x03U\x01|", b"(K\x03U\x01!"), "byte order"),
        # the data given as a list: what an object array would need
        (mutated(PY2_ARRAY, b"U\x06" + bytes(range(6)), b"(" + b"K\x00" * 6 + b"l"), "not bytes"),
        # an array whose BUILD never comes, or comes twice
        (PY2_ARRAY[:PY2_STATE] + b".", "without its data"),
        (PY2_ARRAY[:-1] + PY2_ARRAY[PY2_STATE:], "unexpected numpy array state"),
        (mutated(P5_ARRAY, b"\x8c\x01K\x94", b"\x8c\x01X\x94"), "array order"),
        (mutated(P5_ARRAY, b"K\x01K\x00K\x02\x87", b"K\x01K\x01K\x02\x87"), "axis order"),
        # numpy.ndarray called directly (an allocation of attacker-chosen size)
        (b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x7f\x85R.", "not callable"),
        (b"\x80\x02cnumpy\nndarray\n.", "stray numpy.ndarray"),
        # _codecs.encode with a codec other than the latin1 Python writes
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.", "encode"),
        # bytes(n) instead of bytes()
        (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x7f\x85R.", "bytes()"),
        # a non-numeric dtype
        (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8K\x00K\x01\x87R.", "not allowed"),
        # an extension-registry code, which would go through find_class
        (b"\x80\x02\x82\x01.", ""),
        # a persistent id
        (b"\x80\x02X\x01\x00\x00\x00aQ.", "persistent"),
        # out-of-band buffers (protocol 5) are not supplied
        (b"\x80\x05\x97.", "out-of-band"),
    ],
)
def test_allowed_globals_cannot_be_misused(stream, match):
    err = refused(stream)
    assert not isinstance(err, RefusedGlobalError | TruncatedPickleError)
    assert match in str(err)


def test_mutation_sources_are_valid():
    """The unmutated streams load: each case above fails by its mutation alone."""
    np.testing.assert_array_equal(load(PY2_ARRAY), np.arange(6).reshape(2, 3))
    assert load(P5_ARRAY).shape == (3, 2, 4)


def test_object_array_is_refused():
    err = refused(pickle.dumps({"labels": np.array([1, "x"], dtype=object)}, protocol=4))
    assert "dtype 'O8' is not allowed" in str(err)


# ------------------------------------------------------------------ malformed files


def test_every_truncation_is_reported_as_truncated():
    stream = python2_pickle({b"data": np.arange(8, dtype=np.uint8), b"labels": [1, 2]})
    for cut in range(len(stream)):
        err = refused(stream[:cut], TruncatedPickleError)
        assert "the file is truncated" in str(err) and err.detail


@pytest.mark.parametrize(
    "content", [b"not a pickle at all\n", b"\x1f\x8b\x08garbage", b"\x80\x09."]
)
def test_not_a_pickle(content):
    err = refused(content)
    assert type(err) is PickleLoadError
    assert "not an admitted pickle" in str(err) and err.detail in str(err)


def test_nested_too_deep():
    depth = 50_000
    err = refused(b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".", PickleTooDeepError)
    assert "nested too deeply" in str(err)


# ------------------------------------------------------------------ size budgets


def test_a_small_file_of_shared_lists_is_refused_fast_with_bounded_memory():
    # Issue 15, bug 3: 203 KB on disk, 10**10 list items (~80 GB) once rebuilt.
    import time
    import tracemalloc

    inner = list(range(1000))
    stream = pickle.dumps([[inner] * 100_000] * 100, protocol=2)
    assert len(stream) < 250_000
    tracemalloc.start()
    started = time.perf_counter()
    err = refused(stream, unpickler.PickleTooLargeError)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "more than 1,000,000 list, tuple and dict items" in str(err)
    assert seconds < 5 and peak < 200 * 2**20, (seconds, peak)


def test_shared_bytes_are_counted_at_each_use():
    stream = pickle.dumps([b"x" * 1000] * 1000, protocol=2)
    err = unpickler_error(stream, max_bytes=500_000)
    assert "more than 500,000 bytes" in str(err)
    assert len(unpickler.load(io.BytesIO(stream), WHERE, max_bytes=1_000_000)) == 1000


def test_array_bytes_count_against_the_budget():
    stream = pickle.dumps({b"data": np.zeros((100, 100), np.uint8)}, protocol=2)
    assert "bytes of data" in str(unpickler_error(stream, max_bytes=9_999))
    assert load(stream)[b"data"].shape == (100, 100)


def test_a_cifar_sized_batch_fits_the_default_budget():
    batch = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [i % 10 for i in range(10_000)],
        b"data": np.zeros((10_000, 3072), np.uint8),
        b"filenames": [b"some_image_name_%05d.png" % i for i in range(10_000)],
    }
    assert len(load(python2_pickle(batch))[b"labels"]) == 10_000


def unpickler_error(stream: bytes, **budget) -> PickleLoadError:
    with pytest.raises(unpickler.PickleTooLargeError) as err:
        unpickler.load(io.BytesIO(stream), WHERE, **budget)
    assert str(err.value).startswith(f"{WHERE}: ")
    return err.value
