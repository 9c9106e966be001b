"""Loading the CUDA C++ sources into CuPy (NVRTC).

:func:`source` returns exactly the text CuPy compiles for a ``.cu`` file: the counter-RNG
device functions of :data:`lrmath.rng.CUDA_SOURCE`, then ``_cuda/common.cuh``, then the file. The test suite
compiles every such text with ``nvcc -arch=sm_90 -cubin``.
"""

from __future__ import annotations

from functools import lru_cache

from lrmath.rng import CUDA_SOURCE

from ._registry import CUDA_DIR, KERNELS


def cuda_files() -> list[str]:
    return sorted({k.cuda_file for k in KERNELS.values()})


def source(cuda_file: str) -> str:
    """Full CUDA C++ source CuPy's ``RawModule`` gets for ``cuda_file``."""
    return CUDA_SOURCE + "\n" + (CUDA_DIR / "common.cuh").read_text() + "\n" + (CUDA_DIR / cuda_file).read_text()


@lru_cache(maxsize=None)
def module(cuda_file: str):
    import cupy as cp

    return cp.RawModule(code=source(cuda_file), options=("-std=c++17",))


def function(name: str):
    k = KERNELS[name]
    return module(k.cuda_file).get_function(k.cuda_entry)
