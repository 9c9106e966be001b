"""Parity of every lrmath_gpu kernel with an independent naive NumPy computation.

Each test runs on both backends: ``numba`` (the CUDA simulator here, a GPU where there is
one) and ``cupy`` (skipped with a reason without a GPU). Simulator grids are tiny: the
launch helpers use 32-thread blocks and at most 4 blocks under the simulator, and the
sizes below make every kernel run on at least 2 blocks with ragged, non-power-of-two
extents. Discrete outputs (bits, codes, indices) are compared exactly; float outputs with
``lrmath.testing.tolerance``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrmath_gpu
from lrmath import rng
from lrmath.errors import NonFiniteError, ShapeError
from lrmath.testing import assert_close, tolerance
from lrmath_gpu import kernels as K

SLOW = settings(max_examples=5, deadline=None)  # simulator launches cost ~0.1-1 s each


BACKENDS = ["numba", "cupy"]


def need(name: str) -> str:
    st_ = lrmath_gpu.available()[name]
    if not st_["ok"]:
        pytest.skip(f"{name} backend unavailable: {st_['why']}")
    return name


@pytest.fixture(params=BACKENDS)
def backend(request):
    return need(request.param)


each_backend = pytest.mark.parametrize("be", BACKENDS)


# ----------------------------------------------------------------------------- oracles
def sylvester(p: int) -> np.ndarray:
    H = np.ones((1, 1))
    while H.shape[0] < p:
        H = np.block([[H, H], [H, -H]])
    return H


def haar_factor(q: int, seed: int) -> np.ndarray:
    # lrmath.ops docstring: QR of a seeded Gaussian (stream 4) with the sign fix of Mezzadri (2007)
    g = rng.normal(seed, 4, (q, q))
    Qm, Rm = np.linalg.qr(g)
    d = np.sign(np.diag(Rm))
    d[d == 0] = 1
    return Qm * d


def hadamard_matrix(n: int, seed: int) -> np.ndarray:
    """Dense Q = (H_p / sqrt(p) kron R_q) D of lrmath.ops' 'hadamard' kind, built naively."""
    p = n & -n
    q = n // p
    Hp = sylvester(p) / math.sqrt(p)
    R = haar_factor(q, seed) if q > 1 else np.ones((1, 1))
    D = np.diag(rng.signs(seed, 1, n))
    return np.kron(Hp, R) @ D


def pack_naive(codes, bits):
    out = np.zeros(-(-len(codes) * bits // 8), np.uint8)
    for k, c in enumerate(codes):
        for j in range(bits):
            s = k * bits + j
            out[s // 8] |= ((int(c) >> j) & 1) << (s % 8)
    return out


# ----------------------------------------------------------------------------- RNG
@pytest.mark.parametrize("shape,offset", [((5, 13), 0), ((1,), 7), ((0,), 0), ((130,), 2**40)])
def test_rng_bits_identical(backend, shape, offset):
    got = K.random_bits(11, 3, shape, offset=offset, backend=backend)
    want = rng.random_bits(11, 3, shape, offset=offset)
    assert got.dtype == np.uint64 and tuple(got.shape) == shape
    np.testing.assert_array_equal(np.asarray(got.get() if hasattr(got, "get") else got), want)


def test_rng_derived_draws_identical(backend):
    g = lambda a: np.asarray(a.get() if hasattr(a, "get") else a)  # noqa: E731
    np.testing.assert_array_equal(g(K.uniform(2, 9, 77, offset=5, backend=backend)), rng.uniform(2, 9, 77, offset=5))
    np.testing.assert_array_equal(g(K.signs(2, 9, 77, backend=backend)), rng.signs(2, 9, 77))
    for high in (1, 3, 1000, 2**32):
        np.testing.assert_array_equal(g(K.integers(2, 9, 77, high, backend=backend)), rng.integers(2, 9, 77, high))
    # Box-Muller: CUDA/libm log and cos may differ in the last ulp
    np.testing.assert_allclose(g(K.normal(2, 9, (7, 9), offset=3, backend=backend)), rng.normal(2, 9, (7, 9), offset=3),
                               rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="high"):
        K.integers(0, 0, 3, 0, backend=backend)


# ----------------------------------------------------------------------------- Hadamard
@each_backend
@SLOW
@given(n=st.sampled_from([1, 2, 6, 8, 12, 20, 24]), b=st.integers(1, 2), seed=st.integers(0, 2**40),
       transpose=st.booleans())
def test_hadamard_matches_dense_operator(be, n, b, seed, transpose):
    _check_hadamard(need(be), n, b, seed, transpose, np.float32)


def _check_hadamard(backend, n, b, seed, transpose, dtype, chunk=4096):
    x = np.random.default_rng(seed % 1000).standard_normal((b, n)).astype(dtype)
    Q = hadamard_matrix(n, seed)
    want = x.astype(np.float64) @ (Q if transpose else Q.T)  # rows: y = Q x  (or Q^T x)
    got = K.hadamard(x, seed, transpose=transpose, backend=backend, _chunk=chunk)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got.astype(np.float64), want, n=n, depth=2, rtol=tolerance(dtype, n, depth=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_hadamard_dtypes_noncontiguous_axis(backend, dtype):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = ml_dtypes.bfloat16
    base = np.random.default_rng(1).standard_normal((12, 3, 4)).astype(np.float32)
    x = base[::2].astype(dtype)[:, :, ::-1]  # (6, 3, 4) with negative strides; transform along axis 0 (n = 6)
    Q = hadamard_matrix(6, 5)
    want = np.einsum("ij,jkl->ikl", Q, x.astype(np.float64))
    got = K.hadamard(x, 5, axis=0, backend=backend)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got.astype(np.float64), want, rtol=tolerance(dtype, 6, depth=2))


def test_hadamard_global_stages_and_large_q(backend):
    # _chunk=2 forces p = 8 through the shared kernel in chunks of 2 plus 2 global butterfly stages
    for transpose in (False, True):
        _check_hadamard(backend, 24, 1, 3, transpose, np.float32, chunk=2)


def test_hadamard_matches_lrmath_ops(backend):
    from lrmath.ops import orthogonal

    x = np.random.default_rng(2).standard_normal((3, 40)).astype(np.float32)
    op = orthogonal("hadamard", 40, 9)
    assert_close(K.hadamard(x, 9, backend=backend), op.apply(x), rtol=tolerance(np.float32, 40, depth=2))
    assert_close(K.hadamard(x, 9, transpose=True, backend=backend), op.apply_t(x), rtol=tolerance(np.float32, 40, depth=2))


def test_hadamard_empty_batch(backend):
    x = np.zeros((0, 8), np.float32)
    assert K.hadamard(x, 1, backend=backend).shape == (0, 8)


# ----------------------------------------------------------------------------- bit packing
@each_backend
@SLOW
@given(bits=st.integers(1, 8), n=st.integers(0, 70), seed=st.integers(0, 1000))
def test_pack_unpack_roundtrip_and_layout(be, bits, n, seed):
    be = need(be)
    codes = np.random.default_rng(seed).integers(0, 2**bits, n).astype(np.uint8)
    packed = K.pack_bits(codes, bits, backend=be)
    np.testing.assert_array_equal(packed, pack_naive(codes, bits))
    np.testing.assert_array_equal(K.unpack_bits(packed, bits, n, backend=be), codes)


def test_pack_matches_kashin_format(backend):
    from lrmath.kashin import format as fmt

    codes = np.random.default_rng(3).integers(0, 8, (5, 8)).astype(np.uint8)
    for bits in (1, 2, 3):
        c = codes % (1 << bits)
        np.testing.assert_array_equal(np.asarray(K.pack_bits(c, bits, backend=backend)), fmt.pack_codes(c.reshape(-1), bits))
    two = np.array([0, 1, 2, 3], np.uint8)  # FORMAT.md example: byte = c0 | c1<<2 | c2<<4 | c3<<6
    assert int(np.asarray(K.pack_bits(two, 2, backend=backend))[0]) == 0 | 1 << 2 | 2 << 4 | 3 << 6


def test_pack_rejects_bad_codes(backend):
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        K.pack_bits(np.array([0, 4], np.uint8), 2, backend=backend)
    with pytest.raises(ValueError, match="bits"):
        K.pack_bits(np.array([0], np.uint8), 9, backend=backend)
    with pytest.raises(TypeError, match="integer"):
        K.pack_bits(np.array([0.5]), 2, backend=backend)
    with pytest.raises(ShapeError, match="bytes"):
        K.unpack_bits(np.zeros(1, np.uint8), 3, 5, backend=backend)


# ----------------------------------------------------------------------------- SDDMM
@each_backend
@SLOW
@given(m=st.integers(1, 9), k=st.integers(0, 21), n=st.integers(1, 8), nnz=st.integers(0, 12), seed=st.integers(0, 99))
def test_sddmm_matches_dense(be, m, k, n, nnz, seed):
    be = need(be)
    R = np.random.default_rng(seed)
    A = R.standard_normal((m, k)).astype(np.float32)
    B = R.standard_normal((k, n)).astype(np.float32)
    rows, cols = R.integers(0, m, nnz), R.integers(0, n, nnz)
    want = (A.astype(np.float64) @ B.astype(np.float64))[rows, cols]
    got = K.sddmm(A, B, rows, cols, backend=be)
    assert got.shape == (nnz,) and got.dtype == np.float32
    assert_close(got.astype(np.float64), want, n=max(k, 1), rtol=tolerance(np.float32, max(k, 1)),
                 atol=tolerance(np.float32, max(k, 1)) * max(1.0, float(np.abs(A).max(initial=0) * np.abs(B).max(initial=0) * k)))


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_sddmm_low_precision_and_strided(backend, dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    R = np.random.default_rng(4)
    A = R.standard_normal((14, 30)).astype(dtype)[::2]  # (7, 30), strided rows
    B = R.standard_normal((9, 30)).astype(dtype).T  # (30, 9), F-ordered
    rows, cols = R.integers(0, 7, 10), R.integers(0, 9, 10)
    want = (A.astype(np.float64) @ B.astype(np.float64))[rows, cols]
    got = K.sddmm(A, B, rows, cols, backend=backend)
    assert got.dtype == A.dtype
    assert_close(got.astype(np.float64), want, rtol=tolerance(dtype, 30))


def test_sddmm_inner_slabs(backend):
    R = np.random.default_rng(13)
    A = R.standard_normal((5, 37)).astype(np.float32)
    B = R.standard_normal((37, 6)).astype(np.float32)
    rows, cols = R.integers(0, 5, 9), R.integers(0, 6, 9)
    want = (A.astype(np.float64) @ B.astype(np.float64))[rows, cols]
    got = K.sddmm(A, B, rows, cols, backend=backend, slab=10)  # 4 launches: 10 + 10 + 10 + 7
    assert_close(got.astype(np.float64), want, rtol=tolerance(np.float32, 37))


def test_sddmm_bad_input(backend):
    A = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match="rows out of range"):
        K.sddmm(A, np.ones((4, 2), np.float32), [3], [0], backend=backend)
    with pytest.raises(ShapeError, match="do not chain"):
        K.sddmm(A, np.ones((5, 2), np.float32), [0], [0], backend=backend)


# ----------------------------------------------------------------------------- top-k
def topk_naive(x2, k):
    """Per row: sort by (-|x|, index) with a lexsort; independent of the radix select."""
    out = []
    for row in x2:
        order = np.lexsort((np.arange(row.size), -np.abs(row.astype(np.float64))))
        out.append(order[:k])
    return np.array(out, dtype=np.int64).reshape(len(x2), k)


@each_backend
@SLOW
@given(rows=st.integers(1, 3), n=st.integers(1, 60), kfrac=st.floats(0, 1), seed=st.integers(0, 999),
       ties=st.booleans())
def test_topk_rows_matches_lexsort(be, rows, n, kfrac, seed, ties):
    be = need(be)
    R = np.random.default_rng(seed)
    x = R.standard_normal((rows, n)).astype(np.float32)
    if ties:  # many exact ties, both signs, and zeros
        x = np.round(x * 2) / 2
    k = int(round(kfrac * n))
    idx, vals = K.topk(x, k, axis=-1, backend=be)
    want = topk_naive(x, k)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(vals, np.take_along_axis(x, want, axis=1))


def test_topk_global_ties_and_negative_zero(backend):
    x = np.array([[0.0, -2.0, 2.0, 1.0], [-0.0, 2.0, -1.0, 0.5], [3.0, -3.0, 0.25, 2.0]], np.float32)
    idx, vals = K.topk(x, 6, backend=backend)
    want = topk_naive(x.reshape(1, -1), 6)[0]
    np.testing.assert_array_equal(np.asarray(idx), want)
    assert list(np.asarray(idx)) == [8, 9, 1, 2, 5, 11]
    idx1, _ = K.topk(np.array([7.0], np.float32), 1, backend=backend)
    assert list(np.asarray(idx1)) == [0]
    idx0, vals0 = K.topk(np.zeros((2, 0), np.float32), 0, axis=-1, backend=backend)
    assert idx0.shape == (2, 0)


def test_topk_float16_and_bad_input(backend):
    x = np.random.default_rng(5).standard_normal((2, 37)).astype(np.float16)
    idx, vals = K.topk(x, 5, axis=-1, backend=backend)
    np.testing.assert_array_equal(idx, topk_naive(x, 5))
    assert vals.dtype == np.float16
    with pytest.raises(ValueError, match="exceeds"):
        K.topk(x, 38, axis=-1, backend=backend)
    with pytest.raises(NonFiniteError):
        K.topk(np.array([1.0, np.nan], np.float32), 1, backend=backend)


# ----------------------------------------------------------------------------- sketches
@pytest.mark.parametrize("kind,side", [("rademacher", "left"), ("gaussian", "right"), ("rademacher", "right")])
def test_sketch_matches_dense_S(backend, kind, side):
    R = np.random.default_rng(6)
    n, c, s = 19, 21, 5  # 2 column tiles of 16, ragged
    S = rng.signs(8, 3, (n, s)) if kind == "rademacher" else rng.normal(8, 3, (n, s))
    if side == "left":
        X = R.standard_normal((n + 3, c)).astype(np.float32)[:n]
        want = S.T @ X.astype(np.float64) / math.sqrt(s)
    else:
        X = np.asfortranarray(R.standard_normal((c, n)).astype(np.float32))
        want = X.astype(np.float64) @ S / math.sqrt(s)
    got = K.sketch(X, s, 8, 3, kind=kind, side=side, backend=backend)
    assert got.shape == want.shape and got.dtype == np.float32
    assert_close(got.astype(np.float64), want, n=n, rtol=tolerance(np.float32, n))


def test_sketch_strided_and_empty(backend):
    X = np.random.default_rng(7).standard_normal((10, 12)).astype(np.float32)[::2, 1::3]  # general strides
    S = rng.signs(1, 0, (5, 3))
    assert_close(K.sketch(X, 3, 1, backend=backend).astype(np.float64), S.T @ X / math.sqrt(3), rtol=tolerance(np.float32, 5))
    assert K.sketch(np.zeros((0, 4), np.float32), 3, 1, backend=backend).shape == (3, 4)


# ----------------------------------------------------------------------------- CRS gather / sampling
def test_crs_gather_and_estimate(backend):
    R = np.random.default_rng(8)
    A = R.standard_normal((7, 13)).astype(np.float32)
    B = R.standard_normal((13, 5)).astype(np.float32)
    idx = np.array([12, 0, 3, 3, 7])
    w = R.random(5).astype(np.float32) + 0.5
    As, Bs = K.crs_gather(A, B, idx, w, backend=backend)
    np.testing.assert_array_equal(As, A[:, idx] * w)
    np.testing.assert_array_equal(Bs, w[:, None] * B[idx])
    with pytest.raises(ShapeError, match="idx out of range"):
        K.crs_gather(A, B, [13], [1.0], backend=backend)


def test_sample_indices_inverse_cdf(backend):
    p = np.random.default_rng(9).random(23)
    p[4] = 0.0
    got = np.asarray(K.sample_indices(p, 50, 3, 2, backend=backend))
    u = rng.uniform(3, 2, 50)
    cdf = np.cumsum(p)
    want = np.array([int(np.nonzero(cdf > ui * cdf[-1])[0][0]) for ui in u])
    np.testing.assert_array_equal(got, want)
    assert 4 not in got
    with pytest.raises(ValueError, match="non-negative"):
        K.sample_indices(-p, 3, 0, backend=backend)


# ----------------------------------------------------------------------------- LoTR core
def test_lotr_core(backend):
    R = np.random.default_rng(10)
    Z = R.standard_normal((3, 11, 6)).astype(np.float32)
    G = R.standard_normal((3, 6, 4)).astype(np.float32)
    want = np.einsum("ltr,lrs->lts", Z.astype(np.float64), G.astype(np.float64))
    assert_close(K.lotr_core(Z, G, backend=backend).astype(np.float64), want, n=6, rtol=tolerance(np.float32, 6))
    shared = np.einsum("tr,lrs->lts", Z[0].astype(np.float64), G.astype(np.float64))
    assert_close(K.lotr_core(Z[0], G, backend=backend).astype(np.float64), shared, n=6, rtol=tolerance(np.float32, 6))
    with pytest.raises(ShapeError, match="does not match"):
        K.lotr_core(Z, G[:, :5], backend=backend)


# ----------------------------------------------------------------------------- Kashin kernels
def test_centroid_code_ties_to_higher(backend):
    table = np.array([-1.5, -0.5, 0.5, 1.5], np.float32)
    x = np.array([0.0, 1.0, -1.0, 2.0, -7.0, 0.2, 9.0, 0.49, 0, 1, -1, 0.3, -2, 5, 0, 0], np.float32)
    scale = np.array([1.0, 0.0], np.float32)
    got = np.asarray(K.centroid_code(x, scale, table, 8, backend=backend))
    # naive: argmin distance, ties to the higher index
    v = x / np.where(np.repeat(scale, 8) == 0, 1.0, np.repeat(scale, 8))
    d = np.abs(v[:, None] - table[None, :])
    want = np.array([max(np.flatnonzero(row == row.min())) for row in d])
    np.testing.assert_array_equal(got, want)
    assert list(got[:3]) == [2, 3, 1]  # 0 -> +0.5 (higher of -0.5/+0.5), 1 -> 1.5, -1 -> -0.5


def test_decode_and_dequant_matmul(backend):
    """x W^T from packed codes equals x @ (decoded dense W)^T built naively from FORMAT.md."""
    R = np.random.default_rng(11)
    out, N, nb, t, bu, bv, seed = 3, 8, 2, 5, 2, 1, 4
    Bn = out * nb
    cu = R.integers(0, 2**bu, Bn * N).astype(np.uint8)
    cv = R.integers(0, 2**bv, Bn * N).astype(np.uint8)
    su, sv = R.random(Bn).astype(np.float32), R.random(Bn).astype(np.float32)
    tu = np.sort(R.standard_normal(2**bu)).astype(np.float32)
    tv = np.array([-1.0, 1.0], np.float32)
    Q = hadamard_matrix(N, seed)
    uh = (su[:, None] * tu[cu.reshape(Bn, N)]).astype(np.float64)
    vh = (sv[:, None] * tv[cv.reshape(Bn, N)]).astype(np.float64)
    W = (uh + vh @ Q.T).reshape(out, nb * N)
    x = R.standard_normal((t, nb * N)).astype(np.float32)
    xt = (x.reshape(t, nb, N).astype(np.float64) @ Q).reshape(t, nb * N).astype(np.float32)  # Q^T per block
    pu, pv = pack_naive(cu, bu), pack_naive(cv, bv)
    dec = K.decode_codes(pu, su, tu, bu, Bn * N, N, backend=backend)
    assert_close(np.asarray(dec).astype(np.float64), uh.reshape(-1), rtol=tolerance(np.float32))
    y = K.kashin_matmul(x, xt, pu, pv, su, sv, tu, tv, bu, bv, N, out, backend=backend)
    assert_close(np.asarray(y).astype(np.float64), x.astype(np.float64) @ W.T, n=nb * N, depth=2,
                 rtol=tolerance(np.float32, nb * N, depth=2))


def test_kashin_step_matches_truncation_algebra(backend):
    """Two fused iterations equal the truncation split written out densely (module docstring)."""
    R = np.random.default_rng(12)
    N, B, seed = 16, 3, 2
    x = R.standard_normal((B, N)).astype(np.float32)
    x[0, 3] = 8.0
    Q = hadamard_matrix(N, seed)
    r, u, v = x.astype(np.float64), np.zeros((B, N)), np.zeros((B, N))
    for _ in range(2):
        lam = np.linalg.norm(r, axis=1, keepdims=True) / math.sqrt(N)
        a = np.clip(r, -lam, lam)
        u += a
        w = (r - a) @ Q  # rows: Q^T (r - a)
        b = np.clip(w, -lam, lam)
        v += b
        r = (w - b) @ Q.T
    xp = np if backend == "numba" and lrmath_gpu.available()["numba"]["simulator"] else __import__("cupy")
    rr = xp.asarray(x.copy())
    uu, vv = xp.zeros_like(rr), xp.zeros_like(rr)
    rn2 = xp.asarray((x.astype(np.float32) ** 2).sum(1))
    for _ in range(2):
        K.kashin_step(rr, uu, vv, rn2, seed, 1.0, backend=backend)
    g = lambda a: np.asarray(a.get() if hasattr(a, "get") else a, np.float64)  # noqa: E731
    tol = tolerance(np.float32, N, depth=4)
    assert_close(g(uu), u, rtol=tol)
    assert_close(g(vv), v, rtol=tol)
    assert_close(g(rr), r, rtol=tol)
    assert_close(g(rn2), (r ** 2).sum(1), rtol=tol)
