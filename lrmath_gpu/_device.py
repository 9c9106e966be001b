"""Device arrays, backend resolution and kernel launch for lrmath_gpu.

The *work namespace* ``xp`` is CuPy when a GPU is usable and NumPy under the Numba CUDA
simulator (where the "device" is the host). Inputs of any kind are brought into it with
:func:`to_work` and results go back to the caller's kind with :func:`to_caller`.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from lrmath.backend import backend_name, convert, to_numpy
from lrmath.errors import BackendUnavailableError


def simulator() -> bool:
    """True when Numba kernels run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@lru_cache(maxsize=1)
def _cupy_status() -> tuple[bool, str]:
    try:
        import cupy as cp
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy not importable: {type(exc).__name__}: {exc}"
    try:
        if not cp.is_available():
            return False, "CuPy imports but finds no CUDA device"
        cp.zeros(1)
        return True, ""
    except Exception as exc:  # noqa: BLE001 - CuPy raises many kinds without a driver
        return False, f"CuPy cannot allocate: {type(exc).__name__}: {exc}"


@lru_cache(maxsize=1)
def _numba_status() -> tuple[bool, str]:
    try:
        import numpy as _np

        if not hasattr(_np, "row_stack"):  # NumPy >= 2.5 removed it; numba-cuda 0.30 still calls it
            _np.row_stack = _np.vstack
        from numba import cuda
    except Exception as exc:  # noqa: BLE001
        return False, f"numba.cuda not importable: {type(exc).__name__}: {exc}"
    if simulator():
        return True, "CUDA simulator"
    try:
        if not cuda.is_available():
            return False, "numba.cuda finds no GPU (set NUMBA_ENABLE_CUDASIM=1 for the simulator)"
    except Exception as exc:  # noqa: BLE001
        return False, f"numba.cuda unusable: {exc}"
    ok, why = _cupy_status()
    if not ok:
        return False, "the Numba GPU path keeps its arrays in CuPy, which is unusable: " + why
    return True, ""


def backend_status() -> dict:
    c_ok, c_why = _cupy_status()
    n_ok, n_why = _numba_status()
    return {
        "cupy": {"ok": c_ok, "why": c_why},
        "numba": {"ok": n_ok, "why": n_why, "simulator": simulator()},
    }


def resolve(backend: str | None) -> str:
    """The backend to use for one call (``None`` -> the package setting)."""
    import lrmath_gpu

    name = backend or lrmath_gpu.get_backend(resolve=False)
    if name == "auto":
        name = "cupy" if _cupy_status()[0] else "numba"
    if name not in ("cupy", "numba"):
        raise ValueError(f"backend must be 'cupy' or 'numba', got {name!r}")
    ok, why = (_cupy_status() if name == "cupy" else _numba_status())
    if not ok:
        raise BackendUnavailableError(f"lrmath_gpu backend {name!r} is unavailable: {why}")
    return name


def work_xp(backend: str):
    """Array module holding device data for ``backend``: CuPy, or NumPy under the simulator."""
    if backend == "numba" and simulator():
        return np
    import cupy

    return cupy


def to_work(x, xp, dtype=None, contiguous: bool = True):
    """``x`` (any array kind) as an array of the work namespace, optionally cast and made contiguous."""
    if xp is np:
        a = to_numpy(x)
        if a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
    else:
        if backend_name(x) == "torch" and str(getattr(x, "dtype", "")) == "torch.bfloat16":
            x = x.float()
        a = convert(x, "cupy")
    if dtype is not None and a.dtype != dtype:
        a = a.astype(dtype)
    if contiguous:
        a = xp.ascontiguousarray(a)
    return a


def to_caller(y, ref):
    """Work-namespace result ``y`` as the kind of array ``ref`` is (NumPy, CuPy or torch)."""
    kind = backend_name(ref)
    if kind == backend_name(y):
        return y
    if kind == "numpy":
        return to_numpy(y)
    if kind == "torch":
        import torch

        if backend_name(y) == "numpy" or ref.device.type == "cpu":
            return torch.from_numpy(np.ascontiguousarray(to_numpy(y))).to(ref.device)
        return torch.from_dlpack(y)  # CuPy -> CUDA tensor, zero-copy
    return convert(y, kind)


def threads(default: int = 256) -> int:
    """Threads per block: small under the simulator (it runs each thread as a Python thread)."""
    return 32 if simulator() else default


def grid_for(n: int, tpb: int, cap: int = 65535) -> int:
    """Blocks for a grid-stride loop over ``n`` items (at least 1; capped, the kernels stride)."""
    cap = 4 if simulator() else cap
    return max(1, min(cap, -(-int(n) // tpb)))


def launch(backend: str, name: str, grid, block, args, shared_mem: int = 0) -> None:
    """Run kernel ``name`` (a key of :data:`lrmath_gpu.KERNELS`) on ``backend`` with ``args``.

    ``args`` are work arrays and NumPy scalars in the order of the CUDA signature; both
    implementations take the same argument list.
    """
    grid = grid if isinstance(grid, tuple) else (int(grid),)
    block = block if isinstance(block, tuple) else (int(block),)
    if backend == "cupy":
        from ._cupy import function

        function(name)(tuple(int(g) for g in grid), tuple(int(b) for b in block), tuple(args), shared_mem=shared_mem)
    else:
        from . import _numba_kernels as nk

        kern = nk.get(name)
        kern[tuple(int(g) for g in grid), tuple(int(b) for b in block)](*args)
