"""The restricted unpickler admits plain data and numeric numpy arrays, and nothing that runs code."""

from __future__ import annotations

import gzip
import io
import os
import pickle

import numpy as np
import pytest

from taskshare.data.safe_pickle import safe_load
from taskshare.errors import DataError


def _sample() -> dict:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "f4": arr,
        "again": arr,  # the same object twice: memo references must resolve to one array
        "i8_big_endian": np.arange(5, dtype=">i8"),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "strided": np.arange(20).reshape(4, 5)[:, ::2],
        "bool": np.array([True, False, True]),
        "complex": np.array([1 + 2j, -3j]),
        "empty": np.zeros((0, 3), dtype=np.uint8),
        "scalar": np.float64(2.5),
        "list": [1, 2.5, None, "x", b"raw", bytearray(b"ba"), True],
        "nested": {"t": (np.ones(2, dtype=np.int16), "s"), "set": {1, 2}, "frozen": frozenset({3})},
        7: "int key",
    }


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
        assert b.flags.writeable  # a private copy, not a view into the pickle bytes
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and a == b


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_round_trip_plain_data_and_arrays(protocol, tmp_path):
    data = _sample()
    path = tmp_path / "d.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    with open(path, "rb") as f:
        loaded = safe_load(f)
    _assert_same(data, loaded)
    assert loaded["again"] is loaded["f4"]
    assert loaded["nested"]["t"][0].dtype == np.int16
    assert loaded["fortran"].flags["F_CONTIGUOUS"]
    # bytes input and gzipped files work too
    _assert_same(data, safe_load(pickle.dumps(data, protocol=protocol)))
    _assert_same(data, safe_load(gzip.open(io.BytesIO(gzip.compress(pickle.dumps(data, protocol=protocol))))))


# A protocol-2 pickle as Python 2 cPickle + numpy 1 write it (CIFAR's format): str objects are
# SHORT_BINSTRING, the array is _reconstruct + BUILD with a py2 str payload, dtype('u1', 0, 1).
PY2_PICKLE = (
    b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
    b"K\x00\x85U\x01b\x87Rq\x05(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07"
    b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06\x00\x01\x02\x03\xfe\xfftb"
    b"U\x0bfine_labelsq\x08]q\t(K\x01K\x02eu."
)


def test_python2_protocol2_pickle_with_bytes_encoding():
    loaded = safe_load(PY2_PICKLE, encoding="bytes")
    assert set(loaded) == {b"data", b"fine_labels"}
    np.testing.assert_array_equal(loaded[b"data"], np.array([[0, 1, 2], [3, 254, 255]], dtype=np.uint8))
    assert loaded[b"fine_labels"] == [1, 2]
    latin = safe_load(PY2_PICKLE, encoding="latin1")
    assert set(latin) == {"data", "fine_labels"}
    np.testing.assert_array_equal(latin["data"], loaded[b"data"])


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class _PlainObject:
    def __init__(self):
        self.value = 1


class _HugeBytes:
    def __reduce__(self):
        return (bytes, (10**12,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_has_no_effect(protocol, tmp_path):
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps({"x": [1, _RunsCommand(marker)]}, protocol=protocol)
    with pytest.raises(DataError, match=r"refusing to unpickle global (posix|nt|os)\.system from evil\.pkl") as info:
        safe_load(payload, name="evil.pkl")
    assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "obj",
    [
        _PlainObject(),  # copyreg._reconstructor / __main__ class
        np.array(["a", None], dtype=object),  # object array
        np.array(["text"]),  # unicode array
        np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),  # structured dtype
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        _HugeBytes(),  # bytes(10**12) would allocate a terabyte
    ],
    ids=["object", "object-array", "str-array", "structured", "datetime", "bytes-n"],
)
def test_non_plain_objects_are_refused(obj):
    for protocol in (2, 4, 5):
        with pytest.raises(DataError, match="only plain data is admitted"):
            safe_load(pickle.dumps(obj, protocol=protocol))


class _BadArray:
    """Pickles as numpy's array reconstruction with a payload that does not fit its shape."""

    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), (1, (5,), np.dtype("u1"), False, b"abc"))


def test_array_payload_mismatch_and_truncation_are_data_errors():
    with pytest.raises(DataError, match="payload does not match"):
        safe_load(pickle.dumps(_BadArray(), protocol=2))
    good = pickle.dumps({"a": np.arange(100)}, protocol=4)
    with pytest.raises(DataError, match="cannot unpickle .*truncated") as info:
        safe_load(good[:-20], name="cut.pkl")
    assert "\n" not in str(info.value) and "cut.pkl" in str(info.value)
    with pytest.raises(DataError, match="cannot unpickle"):
        safe_load(b"not a pickle at all")
