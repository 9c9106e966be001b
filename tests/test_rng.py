"""The counter-based generator: stream properties, backends, and an independent Numba kernel."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrmath import rng
from lrmath.testing import assert_z

from .conftest import IN_CI

try:  # module level: the simulator swaps the *global* name ``cuda`` inside kernels
    import numba
    from numba import cuda, uint64
except ImportError:  # pragma: no cover - numba ships with the test extra
    numba = cuda = uint64 = None

MASK = (1 << 64) - 1


def _py_bits(seed, stream, i):
    """Pure-Python big-int implementation of the documented formula (the oracle)."""

    def mix(z):
        z &= MASK
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & MASK
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    key = mix(seed * 0x9E3779B97F4A7C15 + mix(stream + 0xD1B54A32D192ED03))
    return mix(key + (i + 1) * 0x9E3779B97F4A7C15)


@given(st.integers(0, MASK), st.integers(0, 2**20), st.integers(0, 2**40))
def test_bits_match_python_oracle(seed, stream, offset):
    got = rng.random_bits(seed, stream, 3, offset=offset)
    want = [_py_bits(seed, stream, offset + k) for k in range(3)]
    assert got.dtype == np.uint64
    assert [int(g) for g in got] == want


def test_offset_and_shape_are_consistent():
    full = rng.random_bits(7, 3, 24)
    assert np.array_equal(rng.random_bits(7, 3, (4, 6)).ravel(), full)
    assert np.array_equal(rng.random_bits(7, 3, 10, offset=14), full[14:])


def test_streams_and_seeds_differ():
    a = rng.random_bits(1, 0, 1000)
    assert not np.array_equal(a, rng.random_bits(1, 1, 1000))
    assert not np.array_equal(a, rng.random_bits(2, 0, 1000))
    assert len(np.unique(a)) == 1000


def test_derived_draws_statistics():
    n = 200_000
    u = rng.uniform(11, 0, n)
    s = rng.signs(11, 1, n)
    k = rng.integers(11, 2, n, 10)
    z = rng.normal(11, 3, n)
    assert u.min() >= 0 and u.max() < 1 and set(np.unique(s)) == {-1.0, 1.0}
    assert k.min() == 0 and k.max() == 9
    fam = 6
    assert_z((u.mean() - 0.5) / np.sqrt(1 / 12 / n), family=fam, what="uniform mean")
    assert_z(s.mean() / np.sqrt(1 / n), family=fam, what="sign mean")
    assert_z((k.mean() - 4.5) / np.sqrt(99 / 12 / n), family=fam, what="integer mean")
    assert_z(z.mean() / np.sqrt(1 / n), family=fam, what="normal mean")
    assert_z((np.mean(z**2) - 1) / np.sqrt(2 / n), family=fam, what="normal variance")
    # lag-1 correlation of consecutive uniforms
    c = np.mean((u[1:] - 0.5) * (u[:-1] - 0.5)) * 12
    assert_z(c / np.sqrt(1 / n), family=fam, what="lag-1 correlation")


def test_bad_arguments():
    with pytest.raises(ValueError):
        rng.random_bits(-1, 0, 3)
    with pytest.raises(TypeError):
        rng.random_bits(1.5, 0, 3)
    with pytest.raises(ValueError):
        rng.integers(0, 0, 3, 0)
    with pytest.raises(ValueError):
        rng.integers(0, 0, 3, 2**33)


def test_backends_same_bits(xp):
    kw = {}
    if xp.__name__.startswith("cupy"):
        pass
    b = rng.random_bits(5, 9, (3, 5), xp=xp, **kw)
    from lrmath.backend import to_numpy

    ref = rng.random_bits(5, 9, (3, 5))
    assert np.array_equal(to_numpy(b).astype(np.uint64), ref)
    assert np.array_equal(to_numpy(rng.signs(5, 9, 17, xp=xp)), rng.signs(5, 9, 17))
    assert np.array_equal(to_numpy(rng.integers(5, 9, 17, 1000, xp=xp)), rng.integers(5, 9, 17, 1000))
    np.testing.assert_allclose(to_numpy(rng.normal(5, 9, 17, xp=xp)), rng.normal(5, 9, 17), rtol=1e-13, atol=1e-13)


def test_numba_kernel_regenerates_bits():
    """An independent Numba CUDA kernel written from the documented formula (run in the simulator
    without a GPU) produces the same bits, signs and integers as the NumPy reference."""
    if cuda is None:
        pytest.skip("numba / numba-cuda not installed")

    @cuda.jit(device=True)
    def mix(z):
        z ^= z >> uint64(30)
        z *= uint64(0xBF58476D1CE4E5B9)
        z ^= z >> uint64(27)
        z *= uint64(0x94D049BB133111EB)
        z ^= z >> uint64(31)
        return z

    @cuda.jit
    def kern(key, offset, out_bits, out_sign, out_int, high):
        i = cuda.grid(1)
        if i < out_bits.shape[0]:
            z = mix(uint64(key) + (uint64(offset) + uint64(i) + uint64(1)) * uint64(0x9E3779B97F4A7C15))
            out_bits[i] = z
            out_sign[i] = -1.0 if (z >> uint64(63)) else 1.0
            out_int[i] = ((z >> uint64(32)) * uint64(high)) >> uint64(32)

    n, seed, stream, offset, high = 70, 123456789, 4, 1000, 97  # ragged: 3 blocks of 32
    bits = np.zeros(n, np.uint64)
    sg = np.zeros(n, np.float32)
    it = np.zeros(n, np.uint64)
    kern[3, 32](np.uint64(rng.stream_key(seed, stream)), np.uint64(offset), bits, sg, it, np.uint64(high))
    assert np.array_equal(bits, rng.random_bits(seed, stream, n, offset=offset))
    assert np.array_equal(sg, rng.signs(seed, stream, n, offset=offset, dtype=np.float32))
    assert np.array_equal(it.astype(np.int64), rng.integers(seed, stream, n, high, offset=offset))
    assert numba.config.ENABLE_CUDASIM or cuda.is_available()


def test_cuda_source_compiles(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if IN_CI:
            pytest.fail("nvcc is required under CI=true")
        pytest.skip("nvcc not found")
    src = tmp_path / "rng.cu"
    src.write_text(rng.CUDA_SOURCE + """
extern "C" __global__ void k(unsigned long long key, double* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = lr_uniform(key, i) + lr_sign(key, i) + lr_normal(key, i) + (double)lr_integer(key, i, 10ULL);
}
""")
    r = subprocess.run([nvcc, "-arch=sm_90", "-cubin", "-o", str(tmp_path / "rng.cubin"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
