"""Array interop: one code path for NumPy, CuPy, PyTorch and any array-API library.

Every algorithm in lrmath is written once against ``xp = array_namespace(x)``.
This module is the only place that knows how the libraries differ:

* :func:`array_namespace` -- the array-API namespace of the inputs (via
  ``array_api_compat``); mixing libraries or devices raises :class:`DeviceError`.
* :func:`as_compute` / :func:`restore` -- the low-precision policy: ``bfloat16`` and
  ``float16`` are *storage* types; lrmath computes in ``float32`` and casts the
  result back to the caller's dtype.
* :func:`to_numpy`, :func:`convert`, :func:`like` -- move data between libraries,
  zero-copy where the memory allows (NumPy <-> torch CPU and CuPy <-> torch CUDA go
  through DLPack) and with a copy where it must (negative strides, read-only NumPy
  memory exported to torch, bfloat16 into NumPy).
* :func:`check_array` -- validation that raises the specific errors of
  :mod:`lrmath.errors` (shape, dtype, NaN/Inf, empty input).

Nothing here imports torch or CuPy unless the caller already passed one of their
arrays (checked through ``sys.modules``), so ``import lrmath`` stays light.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from .errors import (
    ArgumentTypeError,
    BackendUnavailableError,
    DeviceError,
    DTypeError,
    EmptyInputError,
    IndexRangeError,
    NonFiniteError,
    LrmathError,
    OptionError,
    PathError,
    PathIsDirectoryError,
    PathNotFoundError,
    ShapeError,
    SizeLimitError,
)

__all__ = [
    "array_namespace",
    "is_numpy",
    "is_torch",
    "is_cupy",
    "backend_name",
    "device_of",
    "to_numpy",
    "convert",
    "like",
    "as_compute",
    "restore",
    "compute_dtype",
    "check_array",
    "check_finite",
    "check_positive_int",
    "check_int",
    "check_float",
    "check_bool",
    "check_choice",
    "check_axis",
    "check_size",
    "check_path",
    "require_module",
    "finite_or_raise",
    "check_squarable",
    "public",
    "as_lrmath_error",
    "available_backends",
]


def _validator(fn):
    """Mark a function of this module as an entry point; :func:`public` is applied at the end of
    the module (it is defined below). Validators pass NaN through (checking it is their job)."""
    _VALIDATORS.append(fn.__name__)
    return fn


_VALIDATORS: list[str] = []


# ----------------------------------------------------------------------------- kinds
@_validator
def is_numpy(x: Any) -> bool:
    """True for a NumPy ndarray (including ``ml_dtypes`` dtypes)."""
    return isinstance(x, np.ndarray)


@_validator
def is_torch(x: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@_validator
def is_cupy(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


@_validator
def backend_name(x: Any) -> str:
    """Short name of the library that owns ``x``: numpy, torch, cupy or the module name."""
    if is_numpy(x):
        return "numpy"
    if is_torch(x):
        return "torch"
    if is_cupy(x):
        return "cupy"
    return type(x).__module__.split(".")[0]


@_validator
def array_namespace(*arrays: Any):
    """Array-API namespace shared by ``arrays`` (``None`` entries and Python scalars are ignored).

    Raises
    ------
    DeviceError
        If the arrays come from different libraries or live on different devices.
    DTypeError
        If an argument is not an array at all.
    """
    import array_api_compat

    arrs = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool, complex))]
    if not arrs:
        return array_api_compat.array_namespace(np.empty(0))
    kinds = {backend_name(a) for a in arrs}
    if len(kinds) > 1:
        raise DeviceError(
            f"inputs mix array libraries ({', '.join(sorted(kinds))}); convert them to one kind first"
        )
    devices = {str(device_of(a)) for a in arrs}
    if len(devices) > 1:
        raise DeviceError(f"inputs live on different devices: {sorted(devices)}")
    try:
        return array_api_compat.array_namespace(*arrs)
    except TypeError as exc:
        raise DTypeError(f"expected arrays, got {[type(a).__name__ for a in arrs]}: {exc}") from None


@_validator
def device_of(x: Any):
    """The device of an array (``'cpu'`` for NumPy)."""
    import array_api_compat

    if is_numpy(x):
        return "cpu"
    return array_api_compat.device(x)


# ----------------------------------------------------------------------------- dtypes
_LOW_PRECISION = {"float16", "bfloat16"}


def _dtype_name(dtype: Any) -> str:
    s = str(dtype)
    return s.rsplit(".", 1)[-1]


@_validator
def compute_dtype(xp, dtype):
    """dtype in which lrmath computes for input ``dtype``: float16/bfloat16 -> float32."""
    name = _dtype_name(dtype)
    if name in _LOW_PRECISION:
        return xp.float32
    return dtype


@_validator
def as_compute(x, xp=None):
    """Return ``(xp, x_compute, original_dtype)``; low-precision floats are cast to float32.

    bfloat16/float16 are storage types: every computation runs in float32 and
    :func:`restore` casts results back, so the answer matches the reference to
    float32 accuracy before the final rounding.
    """
    if xp is None:
        xp = array_namespace(x)
    if is_numpy(x) and x.dtype.name == "bfloat16":  # ml_dtypes
        return xp, x.astype(np.float32), x.dtype
    dt = x.dtype
    cd = compute_dtype(xp, dt)
    if cd is not dt and _dtype_name(cd) != _dtype_name(dt):
        return xp, xp.astype(x, cd), dt
    return xp, x, dt


@_validator
def restore(xp, y, dtype):
    """Cast ``y`` back to the caller's storage dtype (no-op if it already matches)."""
    if is_numpy(y) and _dtype_name(dtype) == "bfloat16":
        return y.astype(dtype)
    if _dtype_name(y.dtype) == _dtype_name(dtype):
        return y
    return xp.astype(y, dtype)


# ----------------------------------------------------------------------------- conversion
def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError as exc:  # pragma: no cover - ml_dtypes ships with the test extra
            raise DTypeError("bfloat16 tensors need ml_dtypes to become NumPy arrays") from exc
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


@_validator
def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """Any array (NumPy, CuPy, torch, array-API) as a NumPy array on the host.

    Zero-copy for CPU torch tensors and NumPy (unless ``copy``); a device transfer
    for GPU arrays. bfloat16 comes back as an ``ml_dtypes.bfloat16`` array.
    """
    if is_numpy(x):
        return x.copy() if copy else x
    if is_torch(x):
        out = _torch_to_numpy(x)
    elif is_cupy(x):
        out = x.get()
    elif isinstance(x, (list, tuple, int, float)) or np.isscalar(x):
        return np.asarray(x)
    else:
        try:
            out = np.from_dlpack(x, device="cpu")
        except Exception:
            out = np.asarray(x)
    return out.copy() if copy else out


def _numpy_to_torch(a: np.ndarray, device=None):
    import torch

    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    else:
        # torch.from_dlpack aborts the process on negative strides, and would hand
        # back a *writable* alias of read-only memory: copy in both cases.
        if any(s < 0 for s in a.strides) or not a.flags.writeable:
            a = np.ascontiguousarray(a).copy()
        t = torch.from_numpy(a)
    if device is not None and str(device) != "cpu":
        t = t.to(device)
    return t


@_validator
def convert(x: Any, kind: str, device: Any = None):
    """Convert ``x`` to array library ``kind`` ('numpy', 'torch', 'cupy') on ``device``."""
    if kind == "numpy":
        return to_numpy(x)
    if kind == "torch":
        import torch

        if is_torch(x):
            return x if device is None else x.to(device)
        if is_cupy(x):
            x = x if all(s >= 0 for s in x.strides) else x.copy()
            return torch.from_dlpack(x)
        return _numpy_to_torch(to_numpy(x), device)
    if kind == "cupy":
        import cupy as cp

        if is_cupy(x):
            return x
        if is_torch(x) and x.device.type == "cuda":
            t = x.detach().resolve_conj()
            if any(s < 0 for s in t.stride()):
                t = t.contiguous()
            return cp.from_dlpack(t)
        return cp.asarray(to_numpy(x))
    if kind == "array_api_strict":
        import array_api_strict as xps

        if type(x).__module__.startswith("array_api_strict"):
            return x
        return xps.asarray(to_numpy(x))
    raise OptionError(f"unknown array kind {kind!r}; choose one of ['numpy', 'torch', 'cupy', 'array_api_strict']")


@_validator
def like(x: Any, ref: Any):
    """``x`` as the same kind of array as ``ref``, on ``ref``'s device."""
    kind = backend_name(ref)
    if backend_name(x) == kind and str(device_of(x)) == str(device_of(ref)):
        return x
    dev = device_of(ref) if kind == "torch" else None
    return convert(x, kind, dev)


# ----------------------------------------------------------------------------- validation
def _is_float_dtype(xp, dt) -> bool:
    name = _dtype_name(dt)
    return name in {"float16", "bfloat16", "float32", "float64"}


@_validator
def check_array(
    x: Any,
    name: str = "x",
    *,
    ndim: int | Sequence[int] | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: str = "float",
    finite: bool = True,
    nonempty: bool = True,
):
    """Validate an input array; return its namespace.

    Parameters
    ----------
    x : array
        The input.
    name : str
        Its name in error messages.
    ndim : int or sequence of int, optional
        Allowed numbers of dimensions.
    shape : sequence of (int or None), optional
        Required shape; ``None`` entries are free.
    dtype : {'float', 'real', 'any'}
        ``'float'`` accepts only real floating dtypes (integer, bool and complex are
        refused with :class:`DTypeError`); ``'real'`` also accepts integers.
    finite : bool
        Refuse NaN/Inf with :class:`NonFiniteError`.
    nonempty : bool
        Refuse zero-size arrays with :class:`EmptyInputError`.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise DTypeError(f"{name} must be an array, got {type(x).__name__}")
    xp = array_namespace(x)
    shp = tuple(int(s) for s in x.shape)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shp) not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ShapeError(f"{name} must be {want}, got shape {shp} ({len(shp)}-D)")
    if shape is not None:
        if len(shape) != len(shp) or any(s is not None and s != g for s, g in zip(shape, shp)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ShapeError(f"{name} must have shape {want}, got {shp}")
    dt = x.dtype
    name_dt = _dtype_name(dt)
    if dtype == "float" and not _is_float_dtype(xp, dt):
        raise DTypeError(f"{name} must have a real floating dtype, got {name_dt}")
    if dtype == "real" and not (_is_float_dtype(xp, dt) or name_dt.startswith(("int", "uint"))):
        raise DTypeError(f"{name} must be real-valued (integer or floating), got {name_dt}")
    if dtype not in ("float", "real", "any"):
        raise OptionError(f"dtype must be one of ['float', 'real', 'any'], got {dtype!r}")
    if nonempty and any(s == 0 for s in shp):
        raise EmptyInputError(f"{name} is empty (shape {shp})")
    if finite and _is_float_dtype(xp, dt):
        check_finite(x, name)
    return xp


@_validator
def check_finite(x: Any, name: str = "x") -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf (reports how many)."""
    if is_numpy(x):
        a = x.astype(np.float32) if x.dtype.name == "bfloat16" else x
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    elif is_torch(x):  # detached: a check must not record autograd history (nor save activations)
        bad = int((~x.detach().isfinite()).sum())
    else:
        xp = array_namespace(x)
        bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
    if bad:
        raise NonFiniteError(f"{name} holds {bad} NaN/Inf value(s)")


@_validator
def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type = OptionError,
) -> int:
    """Validate a strict integer parameter in ``[minimum, maximum]``; return it as ``int``.

    ``bool``, ``float`` (even ``2.0``), strings and arrays are refused with
    :class:`ArgumentTypeError`; Python ints and NumPy integer scalars are accepted.
    Out of range raises ``error`` (an :class:`OptionError` by default; pass
    :class:`RankError` for ranks), naming the allowed range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        if minimum is not None and maximum is not None:
            rng = f"in [{minimum}, {maximum}]"
        elif minimum is not None:
            rng = f">= {minimum}"
        else:
            rng = f"<= {maximum}"
        raise error(f"{name} must be {rng}, got {v}")
    return v


@_validator
def check_positive_int(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None, error: type = OptionError) -> int:
    """Validate an integer parameter in ``[minimum, maximum]``; return it as ``int``.

    A wrong type raises :class:`ArgumentTypeError` (a ``TypeError``), a value out of
    range ``error`` (an :class:`OptionError`, a ``ValueError``, by default).
    """
    return check_int(value, name, minimum=minimum, maximum=maximum, error=error)


@_validator
def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    finite: bool = True,
) -> float:
    """Validate a real scalar (int, float or NumPy real scalar; not bool/complex/str).

    ``min_open``/``max_open`` make the bounds strict. Returns it as ``float``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if np.isnan(v) or (finite and not np.isfinite(v)):
        raise NonFiniteError(f"{name} must be a finite number, got {v}")
    lo_bad = minimum is not None and (v <= minimum if min_open else v < minimum)
    hi_bad = maximum is not None and (v >= maximum if max_open else v > maximum)
    if lo_bad or hi_bad:
        lo = "-inf" if minimum is None else repr(minimum)
        hi = "inf" if maximum is None else repr(maximum)
        rng = ("(" if min_open or minimum is None else "[") + f"{lo}, {hi}" + (")" if max_open or maximum is None else "]")
        raise OptionError(f"{name} must be in {rng}, got {v}")
    return v


@_validator
def check_bool(value: Any, name: str) -> bool:
    """Validate a flag: ``True``/``False`` (or a NumPy bool) only."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


@_validator
def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Validate that ``value`` is one of ``choices`` (compared by equality, types must match).

    An unknown value raises :class:`OptionError` listing the allowed ones; a value of
    an unhashable or foreign type (a list where a name is expected) raises the same.
    """
    allowed = list(choices)
    for c in allowed:
        if type(value) is type(c) and value == c:
            return value
    raise OptionError(f"{name} must be one of {allowed}, got {value!r}")


@_validator
def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Validate an axis of an ``ndim``-D array; negative axes count from the end.

    Axes outside ``[-ndim, ndim)`` raise :class:`IndexRangeError` (no modulo wrap).
    Returns the non-negative axis.
    """
    a = check_int(axis, name)
    if not -ndim <= a < ndim:
        raise IndexRangeError(f"{name}={a} is out of range for a {ndim}-D array (valid: {-ndim}..{ndim - 1})")
    return a % ndim if ndim else a


def _memory_limit() -> int:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**40


@_validator
def check_size(shape: Any, name: str = "result", *, itemsize: int = 8, limit: int | None = None) -> int:
    """Refuse an allocation larger than ``limit`` bytes (default: this machine's physical memory).

    ``shape`` is an element count or a shape; returns the element count. Raises
    :class:`SizeLimitError` stating the limit, instead of a ``MemoryError`` deep inside.
    """
    if isinstance(shape, (int, np.integer)):
        count = int(shape)
    else:
        count = 1
        for d in shape:
            count *= int(d)
    lim = _memory_limit() if limit is None else int(limit)
    if count * int(itemsize) > lim:
        raise SizeLimitError(
            f"{name} would need {count:,} elements ({count * int(itemsize) / 2**30:.3g} GiB), "
            f"over the limit of {lim / 2**30:.3g} GiB"
        )
    return count


@_validator
def check_path(path: Any, name: str = "path", *, must_exist: bool = True, kind: str = "file"):
    """Validate a filesystem path argument; return it as ``pathlib.Path``.

    Raises :class:`ArgumentTypeError` for a non-path, ``FileNotFoundError`` for a
    missing file (``must_exist``), ``IsADirectoryError``/``NotADirectoryError`` for the
    wrong kind (:class:`PathNotFoundError`, :class:`PathIsDirectoryError`, :class:`PathError`:
    ``LrmathError`` and the matching ``OSError``).
    """
    import os
    from pathlib import Path

    if not isinstance(path, (str, os.PathLike)) or (isinstance(path, str) and not path):
        raise ArgumentTypeError(f"{name} must be a non-empty path (str or os.PathLike), got {path!r}")
    p = Path(path)
    if must_exist:
        if not p.exists():
            raise PathNotFoundError(f"{name}: no such file or folder: {str(p)!r}")
        if kind == "file" and p.is_dir():
            raise PathIsDirectoryError(f"{name}: is a directory, not a file: {str(p)!r}")
        if kind == "dir" and not p.is_dir():
            raise PathError(f"{name}: not a directory: {str(p)!r}")
    return p


@_validator
def require_module(module: str, feature: str = "", extra: str | None = None):
    """Import an optional dependency or raise :class:`BackendUnavailableError` naming it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = f" for {feature}" if feature else ""
        hint = f" (pip install 'lrmath[{extra}]')" if extra else ""
        raise BackendUnavailableError(f"{module} is needed{what} but is not available{hint}: {exc}") from exc


@_validator
def check_squarable(x: Any, name: str = "x", *, terms: int | None = None) -> None:
    """Refuse values whose squares (summed over ``terms`` entries) overflow float64.

    Gram matrices, variances and energies square their inputs: entries near 1e300 are
    finite but their squares are not. Raises :class:`NonFiniteError` naming the limit,
    before any state is changed.
    """
    a = to_numpy(x)
    if a.size == 0 or a.dtype.kind not in "fiu":
        return
    big = float(np.max(np.abs(a.astype(np.float64, copy=False))))
    n = int(a.size if terms is None else terms)
    limit = float(np.sqrt(np.finfo(np.float64).max / max(n, 1)))
    if big > limit:
        raise NonFiniteError(f"{name} has an entry of magnitude {big:.3g}; sums of {n} squares overflow float64 "
                             f"above {limit:.3g} (rescale it first)")


@_validator
def finite_or_raise(x: Any, name: str = "result", hint: str = "") -> Any:
    """Return ``x`` (array or scalar) if it is finite; otherwise raise :class:`NonFiniteError`.

    Used on results computed from finite inputs, so an overflow (e.g. a Gram matrix of
    entries near 1e300) is refused with a clear message instead of returned.
    """
    if isinstance(x, (int, np.integer)):
        return x
    if isinstance(x, (float, np.floating)):
        ok = bool(np.isfinite(x))
    elif hasattr(x, "dtype") and hasattr(x, "shape"):
        if not _is_float_dtype(None, x.dtype):
            return x
        try:
            check_finite(x, name)
            return x
        except NonFiniteError:
            ok = False
    else:
        return x
    if not ok:
        raise NonFiniteError(f"{name} overflowed to NaN/Inf" + (f"; {hint}" if hint else "; the inputs are too large in magnitude (rescale them)"))
    return x


# ----------------------------------------------------------------------------- the public boundary
def as_lrmath_error(exc: BaseException, where: str = "") -> BaseException | None:
    """The :class:`LrmathError` subclass matching an incidental exception, or ``None``.

    ``TypeError``/``AttributeError`` -> :class:`ArgumentTypeError`; ``IndexError`` ->
    :class:`IndexRangeError`; ``ValueError``/``KeyError``/``ZeroDivisionError`` ->
    :class:`OptionError` (``LinAlgError`` -> :class:`NonFiniteError`: an SVD or solve that
    fails on finite input has met values too large for its arithmetic); ``MemoryError``/
    ``OverflowError``/``RecursionError`` -> :class:`SizeLimitError`; ``ImportError`` ->
    :class:`BackendUnavailableError`; ``OSError`` -> :class:`PathError` (and its
    not-found/directory subclasses); ``RuntimeError`` (torch's report of bad sizes or dtypes)
    -> :class:`OptionError`. Anything else (``LrmathError`` itself, ``AssertionError``,
    ``KeyboardInterrupt``, ``NotImplementedError`` ...) gives ``None``.
    """
    if isinstance(exc, LrmathError):
        return None
    pre = f"{where}: " if where else ""
    msg = f"{pre}{type(exc).__name__}: {exc}" if str(exc) else f"{pre}{type(exc).__name__}"
    if isinstance(exc, np.linalg.LinAlgError):
        return NonFiniteError(msg + " (values too large or degenerate for the factorisation; rescale the input)")
    if isinstance(exc, (MemoryError, OverflowError, RecursionError)):
        return SizeLimitError(msg + " (the sizes requested exceed what this machine or its integer types can hold)")
    if isinstance(exc, ImportError):
        return BackendUnavailableError(msg)
    if isinstance(exc, FileNotFoundError):
        return PathNotFoundError(msg)
    if isinstance(exc, IsADirectoryError):
        return PathIsDirectoryError(msg)
    if isinstance(exc, OSError):
        return PathError(msg)
    if isinstance(exc, IndexError):
        return IndexRangeError(msg)
    if isinstance(exc, (TypeError, AttributeError)):
        return ArgumentTypeError(msg)
    if isinstance(exc, (ValueError, KeyError, ZeroDivisionError, ArithmeticError)):
        return OptionError(msg)
    if isinstance(exc, RuntimeError) and not isinstance(exc, NotImplementedError):
        return OptionError(msg)  # torch reports bad sizes/dtypes given to constructors as RuntimeError
    return None


def _is_float_array(a) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype.kind == "f" or a.dtype.name == "bfloat16"
    return is_torch(a) and a.is_floating_point()


def _scan_argument(name: str, a: Any, depth: int = 0) -> None:
    """Refuse complex/object arrays and NaN/Inf values in one argument (lists scanned one level)."""
    if isinstance(a, np.ndarray) or (is_torch(a) and a.device.type == "cpu"):
        # host data only: scanning a GPU array would force a device sync on every call
        kind = a.dtype.kind if isinstance(a, np.ndarray) else ("c" if a.is_complex() else "")
        if kind == "c":
            raise DTypeError(f"{name} is complex ({a.dtype}); lrmath works on real numbers (pass .real explicitly if that is meant)")
        if kind == "O":
            raise DTypeError(f"{name} has dtype object; pass a numeric array")
        size = a.size if isinstance(a, np.ndarray) else a.numel()
        if size and _is_float_array(a):
            check_finite(a, name)
    elif isinstance(a, (float, np.floating)) and not isinstance(a, bool):
        if not np.isfinite(a):
            raise NonFiniteError(f"{name} must be finite, got {a}")
    elif isinstance(a, (complex, np.complexfloating)):
        raise ArgumentTypeError(f"{name} must be real, got {a!r}")
    elif depth == 0 and isinstance(a, (list, tuple)) and len(a) <= 4096:
        for i, v in enumerate(a):
            _scan_argument(f"{name}[{i}]", v, depth + 1)
    elif depth == 0 and isinstance(a, dict) and len(a) <= 4096:
        for k, v in a.items():
            _scan_argument(f"{name}[{k!r}]", v, depth + 1)


# type hints the boundary enforces strictly (no truncation of 2.5 to 2, no truthy strings as flags)
_ANNOTATION_KINDS = {
    "int": "int", "int|None": "int?", "Optional[int]": "int?",
    "bool": "bool",
    "float": "float", "float|None": "float?", "Optional[float]": "float?",
    "str": "str", "str|None": "str?", "Optional[str]": "str?",
}


def _check_annotated(qual: str, name: str, v: Any, kind: str) -> None:
    if kind.endswith("?"):
        if v is None:
            return
        kind = kind[:-1]
    if kind == "int":
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        want = "an integer"
    elif kind == "bool":
        ok = isinstance(v, (bool, np.bool_))
        want = "True or False"
    elif kind == "float":
        ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        want = "a real number"
    else:
        ok = isinstance(v, str)
        want = "a string"
    if not ok:
        raise ArgumentTypeError(f"{qual}: {name} must be {want}, got {v!r} ({type(v).__name__})")


def _nonfinite_result(out: Any, depth: int = 0) -> bool:
    import dataclasses

    if isinstance(out, (float, np.floating)):
        return not np.isfinite(out)
    if isinstance(out, np.ndarray):
        if out.dtype.kind == "f" or out.dtype.name == "bfloat16":
            a = out.astype(np.float32) if out.dtype.name == "bfloat16" else out
            return a.size > 0 and not bool(np.isfinite(a).all())
        return False
    if is_torch(out):
        if str(out.layout) != "torch.strided" or out.device.type != "cpu":
            return False  # sparse layouts have no isfinite; a GPU check would force a sync
        return bool(out.is_floating_point() and out.numel() and not bool(out.detach().isfinite().all()))
    if depth < 4 and isinstance(out, (list, tuple)):
        return any(_nonfinite_result(v, depth + 1) for v in out[:256])
    if depth < 4 and isinstance(out, dict):
        return any(_nonfinite_result(v, depth + 1) for v in list(out.values())[:256])
    if depth == 0 and type(out).__module__.startswith("lrmath.") and hasattr(out, "__dict__") \
            and not dataclasses.is_dataclass(out) and not any(c.__module__.startswith("torch") for c in type(out).__mro__):
        return any(_nonfinite_result(v, 2) for k, v in list(vars(out).items())[:64] if not k.startswith("__"))
    if depth < 2 and dataclasses.is_dataclass(out) and not isinstance(out, type):
        return any(_nonfinite_result(getattr(out, f.name, None), depth + 1) for f in dataclasses.fields(out))
    return False


import threading

_BOUNDARY = threading.local()  # depth > 0 while a public entry point runs (nested calls skip the checks)


def public(fn=None, *, finite: bool | Sequence[str] = True, result: bool = True, methods: bool = True):
    """Decorator for every public entry point: the error promise, by construction.

    * parameters annotated ``int``, ``bool``, ``float`` or ``str`` (optionally ``| None``) get
      exactly that type (:class:`ArgumentTypeError`): ``2.5`` is no ``int``, ``"no"`` no ``bool``;
    * array arguments that are complex or object are refused (:class:`DTypeError`), float
      arguments holding NaN/Inf (:class:`NonFiniteError`), unless ``finite=False`` (or
      the argument is not named in ``finite`` when it is a list of names);
    * incidental exceptions raised inside are re-raised as the matching
      :class:`LrmathError` subclass (:func:`as_lrmath_error`), chained to the original;
    * a non-finite float result from finite arguments (an overflow) is refused with
      :class:`NonFiniteError` (``result=False`` turns that off).

    On a class it wraps ``__init__`` and the public methods (torch ``nn.Module`` classes:
    ``__init__`` only, so ``forward`` stays traceable by ``torch.compile``; ``methods=False``:
    ``__init__`` only, for value types used in inner loops such as ``runlora.Poly``).
    Dataclass result records keep their generated ``__init__``.
    """
    import functools
    import inspect

    def wrap_function(f, qual):
        try:
            sig = inspect.signature(f)
        except (TypeError, ValueError):  # pragma: no cover - builtins
            sig = None
        names = set(finite) if isinstance(finite, (list, tuple, set, frozenset)) else None
        typed = {}
        if sig is not None:
            for pname, par in sig.parameters.items():
                ann = par.annotation if isinstance(par.annotation, str) else getattr(par.annotation, "__name__", "")
                kind = _ANNOTATION_KINDS.get(str(ann).replace(" ", "").strip("'\""))
                if kind:
                    typed[pname] = kind

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            state = _BOUNDARY
            if getattr(state, "depth", 0):  # a nested call: the outer entry point checks and translates
                return f(*args, **kwargs)
            if finite and sig is not None:
                try:
                    bound = sig.bind(*args, **kwargs)
                except TypeError as exc:
                    raise ArgumentTypeError(f"{qual}: {exc}") from None
                for k, v in bound.arguments.items():
                    if k in ("self", "cls") or (names is not None and k not in names):
                        continue
                    kind = sig.parameters[k].kind
                    if kind == inspect.Parameter.VAR_POSITIONAL:
                        for i, vv in enumerate(v):
                            _scan_argument(f"{k}[{i}]", vv)
                    elif kind == inspect.Parameter.VAR_KEYWORD:
                        for kk, vv in v.items():
                            _scan_argument(kk, vv)
                    else:
                        if k in typed:
                            _check_annotated(qual, k, v, typed[k])
                        _scan_argument(k, v)
            state.depth = 1
            try:
                out = f(*args, **kwargs)
            except LrmathError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated, chained, never swallowed
                new = as_lrmath_error(exc, qual)
                if new is None:
                    raise
                raise new from exc
            finally:
                state.depth = 0
            if result and _nonfinite_result(out):
                raise NonFiniteError(
                    f"{qual}: the result overflowed to NaN/Inf from finite inputs; their magnitude is too large "
                    "for the arithmetic (rescale them)"
                )
            return out

        wrapper.__lrmath_public__ = True
        return wrapper

    def deco(obj):
        import dataclasses

        if inspect.isclass(obj):
            torch = sys.modules.get("torch")
            is_module = any(c.__module__.startswith("torch.nn") for c in obj.__mro__[1:])
            for name, attr in list(vars(obj).items()):
                if name.startswith("_") and name not in ("__init__", "__call__", "__matmul__", "__rmatmul__"):
                    continue
                if (is_module or dataclasses.is_dataclass(obj)) and name == "__init__" and is_module is False:
                    continue  # result records: built by the library, not an entry point for user data
                if (is_module or not methods) and name != "__init__":
                    continue
                qual = f"{obj.__name__}.{name}" if name != "__init__" else obj.__name__
                if isinstance(attr, classmethod):
                    setattr(obj, name, classmethod(wrap_function(attr.__func__, qual)))
                elif isinstance(attr, staticmethod):
                    setattr(obj, name, staticmethod(wrap_function(attr.__func__, qual)))
                elif inspect.isfunction(attr):
                    setattr(obj, name, wrap_function(attr, qual))
            obj.__lrmath_public__ = True
            del torch
            return obj
        return wrap_function(obj, obj.__name__)

    return deco if fn is None else deco(fn)


# ----------------------------------------------------------------------------- discovery
def available_backends() -> dict[str, dict[str, Any]]:
    """What this machine offers: each backend with ``available``, ``version`` and notes."""
    import importlib
    import os

    out: dict[str, dict[str, Any]] = {}
    for mod in ("numpy", "scipy", "array_api_compat", "array_api_strict", "torch", "numba", "cupy"):
        info: dict[str, Any] = {"available": False}
        try:
            m = importlib.import_module(mod)
            info = {"available": True, "version": getattr(m, "__version__", "?")}
        except Exception as exc:  # noqa: BLE001 - any import failure means unavailable
            info["reason"] = f"{type(exc).__name__}: {exc}"[:200]
        out[mod] = info
    if out["torch"]["available"]:
        import torch

        out["torch"]["cuda"] = bool(torch.cuda.is_available())
        if out["torch"]["cuda"]:
            out["torch"]["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if out["cupy"]["available"]:
        out["cupy"]["gpu"] = gpu_available()
    if out["numba"]["available"]:
        out["numba"]["cudasim"] = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
        try:
            import numba_cuda  # noqa: F401

            out["numba"]["numba_cuda"] = getattr(sys.modules["numba_cuda"], "__version__", "?")
        except Exception:
            out["numba"]["numba_cuda"] = None
    return out


_GPU: bool | None = None


def gpu_available() -> bool:
    """True when CuPy imports *and* a CUDA device can allocate (cached)."""
    global _GPU
    if _GPU is None:
        try:
            import cupy as cp

            _GPU = bool(cp.is_available())
            if _GPU:
                cp.zeros(1)
        except Exception:  # noqa: BLE001 - CuPy raises many kinds without a driver
            _GPU = False
    return _GPU


# every validator and conversion above is itself an entry point: translate incidental errors
for _name in _VALIDATORS:
    globals()[_name] = public(globals()[_name], finite=False, result=False)
del _name
