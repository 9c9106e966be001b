"""The kernel registry: every custom kernel with its CuPy (CUDA C++) and Numba implementation.

``KERNELS[name]`` is a :class:`Kernel` naming the ``.cu`` file and ``extern "C"`` entry
point CuPy loads, and the attribute of :mod:`lrmath_gpu._numba_kernels` holding the
``numba.cuda.jit`` version. ``HOT_PATHS`` maps each hot path named in the GPU issue to the
kernels that implement it; ``tests/test_gpu_registry.py`` fails if any lacks either
implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CUDA_DIR = Path(__file__).resolve().parent / "_cuda"


@dataclass(frozen=True)
class Kernel:
    name: str
    cuda_file: str  # file in lrmath_gpu/_cuda
    cuda_entry: str  # extern "C" symbol
    numba_name: str  # attribute of lrmath_gpu._numba_kernels
    what: str

    def cuda_path(self) -> Path:
        return CUDA_DIR / self.cuda_file


def _k(name, cu, what, entry=None, nb=None):
    return Kernel(name, cu, entry or f"lr_{name}", nb or name, what)


KERNELS: dict[str, Kernel] = {
    k.name: k
    for k in [
        _k("rng_fill", "rng.cu", "counter RNG bits / uniform / signs / integers / normal (lrmath.rng)"),
        _k("fwht_shared", "fwht.cu", "randomized Walsh-Hadamard butterflies in shared memory, signs from the seed"),
        _k("fwht_global_stage", "fwht.cu", "one global-memory butterfly stage (transform lengths > 4096)"),
        _k("pack_bits", "pack.cu", "pack b-bit codes, LSB-first stream (kashin/FORMAT.md)"),
        _k("unpack_bits", "pack.cu", "unpack b-bit codes"),
        _k("sddmm", "sddmm.cu", "sampled dense-dense product at a fixed index set"),
        _k("radix_hist", "topk.cu", "top-k: radix-select histogram pass"),
        _k("select_count", "topk.cu", "top-k: per-chunk counts above / at the threshold"),
        _k("select_write", "topk.cu", "top-k: deterministic compaction of the selected indices"),
        _k("sketch", "sketch.cu", "S^T X with Rademacher/Gaussian S generated in the kernel"),
        _k("gather_cols", "gather.cu", "CRS: scaled column gather"),
        _k("gather_rows", "gather.cu", "CRS: scaled row gather"),
        _k("sample_cdf", "gather.cu", "CRS: importance sampling by inverse CDF from the counter RNG"),
        _k("lotr_core", "lotr.cu", "LoTR: batched core contraction (X A) G_l"),
        _k("centroid_code", "kashin.cu", "Kashin: nearest-centroid coding (ties to the higher index)"),
        _k("decode_codes", "kashin.cu", "Kashin: decode scale * table[code] from a packed stream"),
        _k("kashin_matmul", "kashin.cu", "Kashin: dequantize-and-multiply without the dense weight"),
        _k("kashin_step", "kashin.cu", "Kashin: fused transform + clip + residual update iteration"),
    ]
}

#: hot paths of the GPU issue -> kernels implementing them ("cublas" = library GEMM via CuPy).
HOT_PATHS: dict[str, tuple[str, ...]] = {
    "kashin.transform": ("fwht_shared", "fwht_global_stage"),
    "kashin.iteration": ("kashin_step",),
    "kashin.centroid_coding": ("centroid_code",),
    "kashin.pack": ("pack_bits",),
    "kashin.unpack": ("unpack_bits", "decode_codes"),
    "kashin.dequant_matmul": ("kashin_matmul",),
    "sparsegrad.sddmm": ("sddmm",),
    "sparsegrad.topk": ("radix_hist", "select_count", "select_write"),
    "sparsegrad.basis_transform": ("fwht_shared", "fwht_global_stage"),
    "randmm.sketch": ("sketch",),
    "randmm.crs_gather": ("gather_cols", "gather_rows", "sample_cdf"),
    "lotr.core": ("lotr_core",),
    "rng": ("rng_fill",),
}

#: hot paths served by cuBLAS through CuPy rather than a custom kernel (issue: "plan execution on cuBLAS").
LIBRARY_PATHS: dict[str, str] = {
    "runlora.execute": "lrmath.runlora executor with xp=cupy (every matmul is a cuBLAS GEMM)",
    "runlora.autotune": "lrmath.runlora time-based planning measured on the GPU with CuPy arrays",
}
