"""Counter-based randomness that regenerates bit-for-bit in NumPy, CuPy and Numba kernels.

A quantized file or a sketch stores only ``(seed, stream)``; any backend recomputes
the same random signs, uniforms, integers and Gaussians from the element index.
NumPy's ``Generator`` streams are not used because their algorithms may change
between NumPy versions and no GPU kernel can reproduce them.

The generator
-------------
All arithmetic is on unsigned 64-bit integers modulo 2**64 (wrap-around)::

    mix(z)        = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9
                    z ^= z >> 27; z *= 0x94D049BB133111EB
                    z ^= z >> 31                               # SplitMix64 finaliser
    key(seed, s)  = mix(seed * 0x9E3779B97F4A7C15 + mix(s + 0xD1B54A32D192ED03))
    bits(seed, s, i) = mix(key(seed, s) + (i + 1) * 0x9E3779B97F4A7C15)

``bits`` is a bijection of ``i`` for a fixed key (SplitMix64's output function), and
the key derivation separates streams. Derived draws use only integer operations or
one correctly-rounded float operation, so they are identical on every backend:

* :func:`uniform`  -- ``(bits >> 11) * 2**-53`` in [0, 1) (float64, exact).
* :func:`signs`    -- ``+1`` if the top bit is 0, else ``-1``.
* :func:`integers` -- ``((bits >> 32) * high) >> 32`` for ``high <= 2**32`` (Lemire's
  multiply-shift; bias below ``high / 2**32``).
* :func:`normal`   -- Box-Muller on two uniforms from counters ``2i`` and ``2i+1``.
  ``log``/``cos`` may differ in the last ulp between libm and CUDA, so Gaussians
  agree across backends to ~1e-15 relative, not bit-for-bit (documented, tested).

Kernels reproduce the same formulas: see :data:`CUDA_SOURCE` (CUDA C for CuPy)
and ``lrmath_gpu`` for the Numba device functions.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from .errors import OptionError, ArgumentTypeError
from .backend import public

__all__ = [
    "MIX_M1",
    "MIX_M2",
    "GOLDEN",
    "STREAM_C",
    "stream_key",
    "random_bits",
    "uniform",
    "signs",
    "integers",
    "normal",
    "CUDA_SOURCE",
]

MIX_M1 = 0xBF58476D1CE4E5B9
MIX_M2 = 0x94D049BB133111EB
GOLDEN = 0x9E3779B97F4A7C15
STREAM_C = 0xD1B54A32D192ED03
_MASK = (1 << 64) - 1


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (used for the scalar key)."""
    z &= _MASK
    z ^= z >> 30
    z = (z * MIX_M1) & _MASK
    z ^= z >> 27
    z = (z * MIX_M2) & _MASK
    z ^= z >> 31
    return z


@public
def stream_key(seed: int, stream: int = 0) -> int:
    """64-bit key of ``(seed, stream)``; both must be non-negative integers below 2**64."""
    for name, v in (("seed", seed), ("stream", stream)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ArgumentTypeError(f"{name} must be an integer, got {v!r}")
        if not 0 <= int(v) <= _MASK:
            raise OptionError(f"{name} must be in [0, 2**64), got {v}")
    return _mix_int((int(seed) * GOLDEN + _mix_int(int(stream) + STREAM_C)) & _MASK)


def _mix_array(xp, z):
    z = z ^ (z >> 30)
    z = z * xp.asarray(MIX_M1, dtype=xp.uint64)
    z = z ^ (z >> 27)
    z = z * xp.asarray(MIX_M2, dtype=xp.uint64)
    return z ^ (z >> 31)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)


def _is_torch_ns(xp) -> bool:
    return "torch" in getattr(xp, "__name__", "")


def _via_host(fn, xp, device, *args, **kw):
    """torch lacks uint64 arithmetic: draw with NumPy (same bits), then move to torch."""
    from .backend import convert

    return convert(np.ascontiguousarray(fn(*args, xp=np, **kw)), "torch", device)


@public
def random_bits(seed: int, stream: int, shape: int | Sequence[int], *, offset: int = 0, xp=np, device=None):
    """uint64 bits for counters ``offset, offset+1, ...`` laid out in C order over ``shape``.

    Parameters
    ----------
    seed, stream : int
        The generator's key; different streams are independent.
    shape : int or tuple of int
        Output shape; element ``k`` (C order) uses counter ``offset + k``.
    offset : int
        First counter, so a long stream can be generated in pieces.
    xp : namespace
        Array namespace of the result (``numpy`` by default; CuPy, torch, ... work).
    """
    if _is_torch_ns(xp):
        return _via_host(random_bits, xp, device, seed, stream, shape, offset=offset)
    shp = _shape(shape)
    n = int(np.prod(shp, dtype=np.int64)) if shp else 1
    key = stream_key(seed, stream)
    kw = {} if device is None else {"device": device}
    with np.errstate(over="ignore"):
        idx = xp.arange(n, dtype=xp.uint64, **kw) + xp.asarray(offset + 1, dtype=xp.uint64, **kw)
        z = xp.asarray(key, dtype=xp.uint64, **kw) + idx * xp.asarray(GOLDEN, dtype=xp.uint64, **kw)
        z = _mix_array(xp, z)
    return xp.reshape(z, shp)


@public
def uniform(seed: int, stream: int, shape, *, offset: int = 0, xp=np, dtype=None, device=None):
    """Uniforms in [0, 1): ``(bits >> 11) * 2**-53`` (float64, exact on every backend)."""
    if _is_torch_ns(xp):
        r = _via_host(uniform, xp, device, seed, stream, shape, offset=offset)
        return r if dtype is None else xp.astype(r, dtype)
    b = random_bits(seed, stream, shape, offset=offset, xp=xp, device=device)
    u = xp.astype(b >> 11, xp.float64) * (2.0**-53)
    return u if dtype is None else xp.astype(u, dtype)


@public
def signs(seed: int, stream: int, shape, *, offset: int = 0, xp=np, dtype=None, device=None):
    """Random ``+1/-1`` from the top bit (``+1`` when it is 0)."""
    if _is_torch_ns(xp):
        r = _via_host(signs, xp, device, seed, stream, shape, offset=offset)
        return r if dtype is None else xp.astype(r, dtype)
    b = random_bits(seed, stream, shape, offset=offset, xp=xp, device=device)
    s = 1.0 - 2.0 * xp.astype(b >> 63, xp.float64)
    return xp.astype(s, dtype if dtype is not None else xp.float64)


@public
def integers(seed: int, stream: int, shape, high: int, *, offset: int = 0, xp=np, device=None):
    """Integers in ``[0, high)`` by multiply-shift, ``((bits >> 32) * high) >> 32`` (int64).

    ``high`` must be in ``[1, 2**32]``; the bias is below ``high / 2**32``.
    """
    if _is_torch_ns(xp):
        return _via_host(integers, xp, device, seed, stream, shape, high, offset=offset)
    if isinstance(high, bool) or not isinstance(high, (int, np.integer)) or not 1 <= int(high) <= 2**32:
        raise OptionError(f"high must be an integer in [1, 2**32], got {high!r}")
    b = random_bits(seed, stream, shape, offset=offset, xp=xp, device=device)
    v = ((b >> 32) * xp.asarray(int(high), dtype=xp.uint64)) >> 32
    return xp.astype(v, xp.int64)


@public
def normal(seed: int, stream: int, shape, *, offset: int = 0, xp=np, dtype=None, device=None):
    """Standard normals by Box-Muller: element ``i`` uses counters ``2(offset+i)`` and ``2(offset+i)+1``.

    ``u1`` is mapped to ``(0, 1]`` so the logarithm is finite. Across backends the
    result agrees to a few ulp (libm versus CUDA ``log``/``cos``), not bit-for-bit.
    """
    if _is_torch_ns(xp):
        r = _via_host(normal, xp, device, seed, stream, shape, offset=offset)
        return r if dtype is None else xp.astype(r, dtype)
    shp = _shape(shape)
    n = int(np.prod(shp, dtype=np.int64)) if shp else 1
    u = uniform(seed, stream, (n, 2), offset=2 * offset, xp=xp, device=device)
    u1 = 1.0 - u[:, 0]
    u2 = u[:, 1]
    z = xp.sqrt(-2.0 * xp.log(u1)) * xp.cos((2.0 * np.pi) * u2)
    z = xp.reshape(z, shp)
    return z if dtype is None else xp.astype(z, dtype)


#: CUDA C device functions computing the same bits (included by lrmath_gpu kernels).
CUDA_SOURCE = r"""
#ifndef LRMATH_RNG_CUH
#define LRMATH_RNG_CUH
typedef unsigned long long lr_u64;
__device__ __forceinline__ lr_u64 lr_mix64(lr_u64 z) {
    z ^= z >> 30; z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27; z *= 0x94D049BB133111EBULL;
    z ^= z >> 31; return z;
}
__device__ __forceinline__ lr_u64 lr_bits(lr_u64 key, lr_u64 counter) {
    return lr_mix64(key + (counter + 1ULL) * 0x9E3779B97F4A7C15ULL);
}
__device__ __forceinline__ double lr_uniform(lr_u64 key, lr_u64 counter) {
    return (double)(lr_bits(key, counter) >> 11) * 1.1102230246251565e-16;
}
__device__ __forceinline__ float lr_sign(lr_u64 key, lr_u64 counter) {
    return (lr_bits(key, counter) >> 63) ? -1.0f : 1.0f;
}
__device__ __forceinline__ long long lr_integer(lr_u64 key, lr_u64 counter, lr_u64 high) {
    return (long long)(((lr_bits(key, counter) >> 32) * high) >> 32);
}
__device__ __forceinline__ double lr_normal(lr_u64 key, lr_u64 i) {
    double u1 = 1.0 - lr_uniform(key, 2ULL * i);
    double u2 = lr_uniform(key, 2ULL * i + 1ULL);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif
"""
