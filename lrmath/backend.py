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
    DeviceError,
    DTypeError,
    EmptyInputError,
    NonFiniteError,
    ShapeError,
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
    "available_backends",
]


# ----------------------------------------------------------------------------- kinds
def is_numpy(x: Any) -> bool:
    """True for a NumPy ndarray (including ``ml_dtypes`` dtypes)."""
    return isinstance(x, np.ndarray)


def is_torch(x: Any) -> bool:
    """True for a ``torch.Tensor`` (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_cupy(x: Any) -> bool:
    """True for a ``cupy.ndarray`` (without importing CuPy)."""
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def backend_name(x: Any) -> str:
    """Short name of the library that owns ``x``: numpy, torch, cupy or the module name."""
    if is_numpy(x):
        return "numpy"
    if is_torch(x):
        return "torch"
    if is_cupy(x):
        return "cupy"
    return type(x).__module__.split(".")[0]


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


def compute_dtype(xp, dtype):
    """dtype in which lrmath computes for input ``dtype``: float16/bfloat16 -> float32."""
    name = _dtype_name(dtype)
    if name in _LOW_PRECISION:
        return xp.float32
    return dtype


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
    raise ValueError(f"unknown array kind {kind!r}")


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
    if dtype == "real" and (name_dt.startswith("complex") or name_dt == "bool"):
        raise DTypeError(f"{name} must be real-valued, got {name_dt}")
    if nonempty and any(s == 0 for s in shp):
        raise EmptyInputError(f"{name} is empty (shape {shp})")
    if finite and _is_float_dtype(xp, dt):
        check_finite(x, name)
    return xp


def check_finite(x: Any, name: str = "x") -> None:
    """Raise :class:`NonFiniteError` if ``x`` holds NaN or Inf (reports how many)."""
    if is_numpy(x):
        a = x.astype(np.float32) if x.dtype.name == "bfloat16" else x
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    else:
        xp = array_namespace(x)
        bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
    if bad:
        raise NonFiniteError(f"{name} holds {bad} NaN/Inf value(s)")


def check_positive_int(value: Any, name: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    """Validate an integer parameter in ``[minimum, maximum]``; return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum or (maximum is not None and v > maximum):
        rng = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return v


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
