"""lrmath_gpu: CuPy and Numba kernels mirroring the hot paths of :mod:`lrmath`.

``lrmath`` is the readable reference and already runs on CuPy arrays through the array
API; this package adds custom kernels where generic code leaves speed on the table. Each
kernel exists twice, as CUDA C++ loaded by CuPy (``lrmath_gpu/_cuda/*.cu``, compiled by
NVRTC) and as a ``numba.cuda.jit`` kernel; :data:`KERNELS` lists both. The Numba kernels
also run in the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), which is how they are tested
on machines without a GPU.

Backends
--------
``set_backend("cupy" | "numba")`` (or the ``LRMATH_GPU_BACKEND`` environment variable)
picks the implementation; ``backend=`` on a function overrides it for one call. The
default ``"auto"`` is CuPy when CuPy can allocate on a GPU, else Numba.

Arrays
------
Functions take CuPy arrays, CUDA torch tensors (zero-copy through DLPack) or NumPy arrays
(copied to the device) and return the caller's kind. Under the simulator the "device" is
the host and the Numba kernels work on NumPy arrays.

Modules
-------
=========================  ============================================================
``lrmath_gpu.kernels``     the primitives: counter RNG, randomized Hadamard transform,
                           bit packing, SDDMM, top-k, in-kernel sketches, CRS gather,
                           LoTR core contraction, Kashin coding / dequantize-matmul
``lrmath_gpu.kashin``      mirrors of :mod:`lrmath.kashin` hot paths
``lrmath_gpu.sparsegrad``  mirrors of :mod:`lrmath.sparsegrad` hot paths
``lrmath_gpu.randmm``      mirrors of :mod:`lrmath.randmm` hot paths
``lrmath_gpu.lotr``        mirrors of :mod:`lrmath.lotr` hot paths
``lrmath_gpu.runlora``     RunLoRA plans executed by cuBLAS through CuPy
=========================  ============================================================

``import lrmath_gpu`` imports neither CuPy nor Numba.
"""

from __future__ import annotations

import contextlib
import importlib
import os

from ._registry import HOT_PATHS, KERNELS, Kernel

__all__ = [
    "set_backend",
    "get_backend",
    "use_backend",
    "available",
    "KERNELS",
    "HOT_PATHS",
    "Kernel",
    "kernels",
    "kashin",
    "sparsegrad",
    "randmm",
    "lotr",
    "runlora",
]

_LAZY = ("kernels", "kashin", "sparsegrad", "randmm", "lotr", "runlora")
BACKENDS = ("auto", "cupy", "numba")
_backend = os.environ.get("LRMATH_GPU_BACKEND", "auto")
if _backend not in BACKENDS:  # pragma: no cover - environment typo
    raise ValueError(f"LRMATH_GPU_BACKEND must be one of {BACKENDS}, got {_backend!r}")


def set_backend(name: str) -> None:
    """Select the kernel implementation: ``'cupy'``, ``'numba'`` or ``'auto'``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_backend(resolve: bool = True) -> str:
    """The selected backend; with ``resolve`` ``'auto'`` becomes ``'cupy'`` or ``'numba'``."""
    if not resolve or _backend != "auto":
        return _backend
    return "cupy" if available()["cupy"]["ok"] else "numba"


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager form of :func:`set_backend`."""
    old = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def available() -> dict:
    """What can run here: ``{'cupy': {ok, why}, 'numba': {ok, why, simulator}}``."""
    from ._device import backend_status

    return backend_status()


def __getattr__(name: str):
    if name in _LAZY:
        mod = importlib.import_module(f".{name}", __name__)
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'lrmath_gpu' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
