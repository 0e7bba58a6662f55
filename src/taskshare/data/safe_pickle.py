"""A restricted unpickler that admits plain data only.

Pickle files can run arbitrary code when loaded: every global a pickle names is looked up and may
be called.  :func:`safe_load` refuses every global except a short allow-list:

* plain containers and scalars (dict, list, tuple, set, frozenset, str, bytes, bytearray, int,
  float, bool, None) -- most of these need no global at all;
* numpy arrays and numpy scalars of plain numeric/bool dtypes.  The numpy globals a pickle names
  (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, ...) are mapped to
  stand-ins of our own: numpy code never runs on pickle input, the array is rebuilt from its raw
  bytes with ``np.frombuffer(...).reshape(...).copy()``.  Object, string, void, datetime and
  structured dtypes are refused.

Handles protocol 2 pickles written by Python 2 (e.g. CIFAR's files; load them with
``encoding="bytes"``, dict keys then are ``bytes``) and protocols 3 to 5 written by Python 3 with
numpy 1 or 2.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from typing import Any

import numpy as np

from taskshare.errors import DataError

__all__ = ["safe_load"]

_DTYPE_CODE = re.compile(r"^[<>|=]?[biufc][0-9]{1,2}$")
_ENDIANS = {"<", ">", "|", "="}


def _text(value: Any) -> Any:
    """Python 2 strings arrive as bytes under encoding='bytes'; numpy metadata is ASCII."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("ascii")
    return value


def _raw_bytes(value: Any) -> bytes | bytearray | memoryview:
    """Array payload: bytes (py3, or py2 under 'bytes'), str (py2 under 'latin1'), bytearray/PickleBuffer (protocol 5)."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, pickle.PickleBuffer):
        return value.raw()
    if isinstance(value, list):
        raise _Refused("an array of Python objects (object dtype)")
    raise _Refused(f"an array payload of type {type(value).__name__}")


class _Refused(Exception):
    """Internal: the pickle asks for something outside plain data; turned into a DataError."""


class _SafeDtype:
    """Stand-in for ``numpy.dtype``: admits plain numeric and bool codes only."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        code = _text(code)
        if not isinstance(code, str) or not _DTYPE_CODE.match(code):
            raise _Refused(f"numpy dtype {code!r}")
        try:
            dt = np.dtype(code)
        except TypeError as exc:
            raise _Refused(f"numpy dtype {code!r}") from exc
        if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
            raise _Refused(f"numpy dtype {code!r}")
        self.np_dtype = dt

    def __setstate__(self, state: Any) -> None:
        # numpy's dtype state: (version, endian, subdescr, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5:
            raise _Refused("a numpy dtype with an unknown state layout")
        endian = _text(state[1])
        if endian not in _ENDIANS:
            raise _Refused(f"numpy dtype byte order {endian!r}")
        if any(part is not None for part in state[2:5]):
            raise _Refused("a structured or sub-array numpy dtype")
        if len(state) > 8 and state[8] not in (None, {}):
            raise _Refused("a numpy dtype with metadata")
        if endian in "<>" and self.np_dtype.itemsize > 1:
            self.np_dtype = self.np_dtype.newbyteorder(endian)


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _SafeDtype):
        raise _Refused(f"an array with dtype given as {type(value).__name__}")
    return value.np_dtype


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise _Refused(f"an array with shape {shape!r}")
    return tuple(shape)


def _build_array(raw: Any, dtype: np.dtype, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
    data = _raw_bytes(raw)
    count = math.prod(shape)
    if len(memoryview(data).cast("B")) != count * dtype.itemsize:
        raise _Refused(f"an array whose payload does not match shape {shape} and dtype {dtype.str}")
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape, order=order).copy(order="K")


class _SafeNdarray:
    """Stand-in for the ``numpy.ndarray`` class argument of ``_reconstruct``; never instantiated."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - refused path
        raise _Refused("a direct numpy.ndarray call")


class _PendingArray:
    """What ``_reconstruct`` returns; BUILD hands it the array state and it builds the real array."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise _Refused("an array built twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("a numpy array with an unknown state layout")
        if len(state) == 5:
            state = state[1:]  # drop the version number
        shape, dtype, is_fortran, raw = state
        self.array = _build_array(raw, _as_dtype(dtype), _check_shape(shape), "F" if is_fortran else "C")


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _PendingArray:
    if subtype is not _SafeNdarray:
        raise _Refused(f"an array of subtype {getattr(subtype, '__name__', subtype)!r}")
    return _PendingArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
    """Stand-in for numpy's protocol-5 ``_frombuffer``."""
    order = _text(order)
    if order not in ("C", "F", "K", "A"):
        raise _Refused(f"an array with memory order {order!r}")
    shape = _check_shape(shape)
    if order == "K" and axis_order is not None:
        axes = list(axis_order) if isinstance(axis_order, (list, tuple)) else None
        if axes is None or sorted(axes) != list(range(len(shape))):
            raise _Refused(f"an array with axis order {axis_order!r}")
        return _build_array(buf, _as_dtype(dtype), shape, "C").transpose(axes).copy(order="K")
    return _build_array(buf, _as_dtype(dtype), shape, "F" if order == "F" else "C")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar`` (numpy scalars such as np.float64(1.0))."""
    dt = _as_dtype(dtype)
    raw = _raw_bytes(data)
    if len(raw) != dt.itemsize:
        raise _Refused(f"a numpy scalar whose payload does not match dtype {dt.str}")
    return np.frombuffer(raw, dtype=dt, count=1)[0]


def _codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Python 3 writes ``bytes`` as ``_codecs.encode(str, 'latin1')`` under protocol 2."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused("a _codecs.encode call that is not a plain latin-1 bytes literal")
    return obj.encode("latin-1")


def _bytes_ctor(*args: Any) -> bytes:
    """Python 3 writes an empty ``bytes`` as ``bytes()`` under protocol 2; ``bytes(n)`` is refused."""
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    raise _Refused("a bytes() call that is not a plain bytes literal")


def _bytearray_ctor(*args: Any) -> bytearray:
    """bytearray(), bytearray(bytes) or bytearray(str, 'latin-1') (protocol 2); ``bytearray(n)`` is refused."""
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0].encode("latin-1"))
    raise _Refused("a bytearray() call that is not a plain bytes literal")


_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _reconstruct
    _ALLOWED[(_mod, "scalar")] = _scalar
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = _SafeNdarray
_ALLOWED[("numpy", "dtype")] = _SafeDtype
for _mod in ("builtins", "__builtin__"):
    _ALLOWED[(_mod, "set")] = set
    _ALLOWED[(_mod, "frozenset")] = frozenset
    _ALLOWED[(_mod, "bytearray")] = _bytearray_ctor
    _ALLOWED[(_mod, "bytes")] = _bytes_ctor
_ALLOWED[("_codecs", "encode")] = _codecs_encode


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, *, encoding: str, source: str) -> None:
        super().__init__(file, encoding=encoding, errors="strict")
        self.source = source
        self.pending = False

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED.get((module, name))
        if target is None:
            raise DataError(
                f"refusing to unpickle global {module}.{name} from {self.source}: only plain data is admitted"
            )
        if target is _reconstruct:
            self.pending = True
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refusing to unpickle a persistent id from {self.source}: only plain data is admitted")


def _resolve(obj: Any, memo: dict[int, Any]) -> Any:
    """Replace every _PendingArray in the loaded structure by its finished numpy array."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, _PendingArray):
        if obj.array is None:
            raise _Refused("an array without state")
        memo[key] = obj.array
        return obj.array
    if isinstance(obj, list):
        memo[key] = obj
        for i, item in enumerate(obj):
            obj[i] = _resolve(item, memo)
        return obj
    if isinstance(obj, dict):
        memo[key] = obj
        items = [(_resolve(k, memo), _resolve(v, memo)) for k, v in obj.items()]
        obj.clear()
        obj.update(items)
        return obj
    if isinstance(obj, tuple):
        out = tuple(_resolve(item, memo) for item in obj)
        memo[key] = out
        return out
    if isinstance(obj, (set, frozenset)):
        return obj  # members are hashable, so never arrays
    return obj


def safe_load(fileobj_or_bytes: Any, *, encoding: str = "ASCII", name: str | None = None) -> Any:
    """Unpickle plain data (containers, scalars, numeric numpy arrays) and nothing else.

    ``fileobj_or_bytes`` is a binary file object or a bytes-like object.  ``encoding`` is passed to
    the unpickler for Python 2 ``str`` objects: use ``"bytes"`` for CIFAR's files, ``"latin1"`` for
    other numpy pickles written by Python 2.  ``name`` names the source in error messages (defaults
    to the file object's ``name``).  Raises :class:`DataError` for any global outside the allow-list
    and for malformed or truncated pickles; nothing named by a refused pickle is ever called.
    """
    if isinstance(fileobj_or_bytes, (bytes, bytearray, memoryview)):
        source = name or "<bytes>"
        fileobj = io.BytesIO(fileobj_or_bytes)
    else:
        source = name or str(getattr(fileobj_or_bytes, "name", "<file object>"))
        fileobj = fileobj_or_bytes
    unpickler = _RestrictedUnpickler(fileobj, encoding=encoding, source=source)
    try:
        obj = unpickler.load()
        if unpickler.pending:
            obj = _resolve(obj, {})
        return obj
    except DataError:
        raise
    except _Refused as exc:
        raise DataError(f"refusing to unpickle {exc} from {source}: only plain data is admitted") from None
    except Exception as exc:  # UnpicklingError, EOFError, TypeError, ValueError, ... on malformed input
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(
            f"cannot unpickle {source} ({detail}); the file is truncated or not a plain-data pickle, replace it"
        ) from None
