"""lrmath_gpu.<method> mirrors against independent naive dense computations.

Each mirror runs on the Numba backend (CUDA simulator here) and on CuPy (skipped with a
reason without a GPU). Oracles are dense float64 formulas written in this file; where the
reference's own encoder makes data-dependent discrete choices (Kashin codes), the GPU result
is compared through reconstruction error, as decisions.md prescribes for discrete outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import lrmath_gpu
from lrmath import rng
from lrmath.errors import ShapeError
from lrmath.testing import assert_close, tolerance

from .test_gpu_kernels import BACKENDS, hadamard_matrix, need, topk_naive


@pytest.fixture(params=BACKENDS)
def be(request):
    name = need(request.param)
    with lrmath_gpu.use_backend(name):
        yield name


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (y = C x), written out."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    C = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    C[0] /= math.sqrt(2.0)
    return C


def host(a):
    if hasattr(a, "get"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


# ----------------------------------------------------------------------------- sparsegrad
def test_sampled_product_and_routes(be):
    from lrmath_gpu import sparsegrad as gs

    R = np.random.default_rng(0)
    A = R.standard_normal((9, 6)).astype(np.float32)
    B = R.standard_normal((9, 10)).astype(np.float32)
    idx = np.sort(R.choice(60, 13, replace=False))
    want = (A.astype(np.float64).T @ B.astype(np.float64)).reshape(-1)[idx]
    for method in ("sparse", "dense", "auto"):
        got = gs.sampled_product(A, B, idx, method=method)
        assert got.dtype == np.float32 and got.shape == (13,)
        assert_close(got.astype(np.float64), want, n=9, rtol=tolerance(np.float32, 9))
    assert gs.sampled_product(A, B, np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(ValueError, match="sorted"):
        gs.sampled_product(A, B, idx[::-1])


def test_sparse_gradient_matches_dense_transform(be):
    from lrmath_gpu import sparsegrad as gs

    R = np.random.default_rng(1)
    t, n, m = 7, 8, 6
    dY = R.standard_normal((t, n)).astype(np.float32)
    X = R.standard_normal((t + 2, m)).astype(np.float32)[::1][:t]
    idx = np.sort(R.choice(n * m, 10, replace=False))
    U = hadamard_matrix(n, 0)  # basis('hadamard', n) = orthogonal('hadamard', n, seed=0)
    V = dct_matrix(m)
    Gt = U.T @ (dY.astype(np.float64).T @ X.astype(np.float64)) @ V
    got = gs.sparse_gradient(dY, X, "hadamard", "dct", idx)
    assert_close(got.astype(np.float64), Gt.reshape(-1)[idx], n=t * n, depth=2, rtol=tolerance(np.float32, t * n, depth=2))
    full = gs.transform(dY.T @ X, "hadamard", "original")
    assert_close(full.astype(np.float64), U.T @ (dY.astype(np.float64).T @ X), n=n * t, depth=2,
                 rtol=tolerance(np.float32, n * t, depth=2))
    back = gs.inverse_transform(full, "hadamard", "original")
    assert_close(back.astype(np.float64), dY.astype(np.float64).T @ X, n=n * t, depth=3,
                 rtol=tolerance(np.float32, n * t, depth=3))


def test_topk_selection_mirrors(be):
    from lrmath_gpu import sparsegrad as gs

    R = np.random.default_rng(2)
    G = np.round(R.standard_normal((5, 9)) * 2).astype(np.float32) / 2  # many ties
    want_g = np.sort(topk_naive(G.reshape(1, -1), 11)[0])
    np.testing.assert_array_equal(host(gs.topk_global(G, 11)), want_g)
    want_r = np.sort(topk_naive(G, 3), axis=1) + (np.arange(5) * 9)[:, None]
    np.testing.assert_array_equal(host(gs.topk_per_row(G, 3)), want_r.reshape(-1))


def test_topk_product_blocks(be):
    from lrmath_gpu import sparsegrad as gs

    R = np.random.default_rng(14)
    A = np.round(R.standard_normal((4, 7)) * 2).astype(np.float32)  # integer-ish products: exact ties
    B = np.round(R.standard_normal((4, 5)) * 2).astype(np.float32)
    C = A.astype(np.float64).T @ B
    want = np.sort(topk_naive(C.reshape(1, -1), 9)[0])
    idx, vals = gs.topk_product(A, B, 9, block_rows=3)
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(vals, C.reshape(-1)[want], rtol=1e-6)


def test_mirror_returns_callers_kind_torch(be):
    torch = pytest.importorskip("torch")
    from lrmath_gpu import sparsegrad as gs

    G = torch.tensor(np.random.default_rng(3).standard_normal((4, 6)), dtype=torch.float32)
    out = gs.topk_global(G, 5)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    np.testing.assert_array_equal(out.numpy(), np.sort(topk_naive(G.numpy().reshape(1, -1), 5)[0]))


# ----------------------------------------------------------------------------- Kashin
def truncation_naive(x, Q, iters, clip=1.0):
    r, u, v = x.astype(np.float64), np.zeros(x.shape), np.zeros(x.shape)
    N = x.shape[-1]
    for _ in range(iters):
        lam = clip * np.linalg.norm(r, axis=1, keepdims=True) / math.sqrt(N)
        a = np.clip(r, -lam, lam)
        u += a
        w = (r - a) @ Q
        b = np.clip(w, -lam, lam)
        v += b
        r = (w - b) @ Q.T
    return u + r, v


@pytest.mark.parametrize("kind,N", [("hadamard", 16), ("hadamard", 24), ("dct", 12)])
def test_decompose_truncation(be, kind, N):
    from lrmath_gpu import kashin as gk

    R = np.random.default_rng(4)
    x = R.standard_normal((3, N)).astype(np.float32)
    x[1, 2] = 9.0  # an outlier to spread
    Q = hadamard_matrix(N, 7) if kind == "hadamard" else dct_matrix(N)
    dec = gk.decompose(x, kind, iters=2, tol=0.0, seed=7, clip=0.5)
    u, v = truncation_naive(x, Q, 2, clip=0.5)
    tol = tolerance(np.float32, N, depth=6)
    assert_close(dec.u.astype(np.float64), u, rtol=tol)
    assert_close(dec.v.astype(np.float64), v, rtol=tol)
    assert_close(dec.u.astype(np.float64) + dec.v.astype(np.float64) @ Q.T, x.astype(np.float64), rtol=tol)
    k = dec.report.iterations  # stops early once the residual is exactly zero
    assert 1 <= k <= 2 and dec.report.residual.shape == (k + 1,)
    assert dec.report.extra.get("fused", False) == (kind == "hadamard" and N == 16)


def test_decompose_greedy_and_flatness(be):
    from lrmath_gpu import kashin as gk

    R = np.random.default_rng(5)
    x = R.standard_normal((2, 16)).astype(np.float32)
    Q = hadamard_matrix(16, 1)
    dec = gk.decompose(x, "hadamard", method="greedy", iters=8, tol=0.0, seed=1)
    # naive greedy l1 pursuit (module docstring of lrmath.kashin.decompose)
    r, u, v = x.astype(np.float64), np.zeros(x.shape), np.zeros(x.shape)
    for _ in range(8):
        w = r @ Q
        l1r, l1w = np.abs(r).sum(1, keepdims=True), np.abs(w).sum(1, keepdims=True)
        take = l1r > l1w
        du = np.where(take, np.sign(r) * l1r / 16, 0)
        dv = np.where(take, 0, np.sign(w) * l1w / 16)
        u, v, r = u + du, v + dv, r - du - dv @ Q.T
    tol = tolerance(np.float32, 16, depth=10)
    assert_close(dec.u.astype(np.float64), u + r, rtol=tol)
    assert_close(dec.v.astype(np.float64), v, rtol=tol)
    d2 = gk.decompose(R.standard_normal((4, 16)).astype(np.float32), "hadamard", iters=20, seed=3)
    assert d2.report.K_max <= 2.0  # decisions.md: K <= 2 for the randomized Hadamard frame


def decode_naive(q):
    """W_hat from a KashinQuantized's tensors, following FORMAT.md step by step."""
    from lrmath.kashin.format import unpack_codes

    B, N = q.n_blocks, q.block
    cu = unpack_codes(q.codes_u, q.bits_u, B * N).reshape(B, N)
    cv = unpack_codes(q.codes_v, q.bits_v, B * N).reshape(B, N)
    uh = q.scale_u.astype(np.float32)[:, None].astype(np.float64) * q.table_u[cu]
    vh = q.scale_v.astype(np.float32)[:, None].astype(np.float64) * q.table_v[cv]
    Q = hadamard_matrix(N, q.basis["seed"])
    out, inn = q.shape
    return (uh + vh @ Q.T).reshape(-1)[: out * inn].reshape(out, inn)


def test_quantize_dequantize_linear(be):
    from lrmath import kashin as rk
    from lrmath_gpu import kashin as gk

    R = np.random.default_rng(6)
    W = R.standard_normal((2, 16)).astype(np.float32)
    W[0, 3] = 6.0
    q = gk.quantize(W, 2, block=8, iters=1, seed=2)
    assert (q.bits_u, q.bits_v, q.block) == (1, 1, 8)
    Wn = decode_naive(q)
    err = np.linalg.norm(Wn - W) / np.linalg.norm(W)
    ref_err = rk.quantize(W, 2, block=8, iters=1, seed=2).relative_error(W)
    assert err <= ref_err * (1 + 1e-3) + 1e-6, (err, ref_err)  # same recipe: same reconstruction error
    assert_close(host(gk.dequantize(q)).astype(np.float64), Wn, rtol=tolerance(np.float32, 8, depth=2))
    X = R.standard_normal((3, 16)).astype(np.float32)
    assert_close(host(gk.linear(q, X)).astype(np.float64), X.astype(np.float64) @ Wn.T, n=16, depth=2,
                 rtol=tolerance(np.float32, 16, depth=2))
    with pytest.raises(ShapeError, match="last dimension"):
        gk.linear(q, X[:, :8])
    with pytest.raises(ValueError, match="bits"):
        gk.quantize(W, 9, block=8)


def test_linear_not_row_aligned_falls_back(be):
    from lrmath import kashin as rk
    from lrmath_gpu import kashin as gk

    W = np.random.default_rng(7).standard_normal((3, 12)).astype(np.float32)  # 12 % 8 != 0
    q = rk.quantize(W, 2, block=8, iters=0, seed=1)
    Wn = decode_naive(q)
    X = np.random.default_rng(8).standard_normal((2, 12)).astype(np.float32)
    assert_close(host(gk.linear(q, X)).astype(np.float64), X.astype(np.float64) @ Wn.T, n=12, depth=2,
                 rtol=tolerance(np.float32, 12, depth=2))


# ----------------------------------------------------------------------------- randmm
@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "crs"])
def test_randmm_estimate_matches_dense_sketch(be, kind):
    from lrmath.randmm.estimators import STREAM_INDEX, STREAM_SKETCH
    from lrmath_gpu import randmm as gr

    R = np.random.default_rng(9)
    t, m, n, k, seed, stream = 20, 5, 4, 6, 3, 1
    X = R.standard_normal((t, m)).astype(np.float32)
    Y = R.standard_normal((t, n)).astype(np.float32)
    s = stream * 64 + STREAM_SKETCH
    if kind in ("gaussian", "rademacher"):
        S = (rng.normal if kind == "gaussian" else rng.signs)(seed, s, (t, k)) / math.sqrt(k)
        L = Rm = S.T
    elif kind == "srht":
        D = np.diag(rng.signs(seed, s, t))
        H = hadamard_matrix(t, 0)  # the fixed seed-0 operator of lrmath.randmm
        rows = rng.integers(seed, stream * 64 + STREAM_INDEX, k, t)
        L = Rm = (H @ D)[rows] * math.sqrt(t / k)
    else:  # crs with probabilities from ||x_i|| ||y_i||, inverse-CDF sampling
        w = np.sqrt((X.astype(np.float64) ** 2).sum(1) * (Y.astype(np.float64) ** 2).sum(1))
        p = w / w.sum()
        u = rng.uniform(seed, stream * 64 + STREAM_INDEX, k)
        cdf = np.cumsum(p)
        idx = np.array([int(np.nonzero(cdf > ui * cdf[-1])[0][0]) for ui in u])
        L = np.eye(t)[idx] / (k * p[idx])[:, None]
        Rm = np.eye(t)[idx]
    want = (L @ X.astype(np.float64)).T @ (Rm @ Y.astype(np.float64))
    got = gr.estimate(X, Y, k, kind, seed=seed, stream=stream)
    assert got.shape == (m, n) and got.dtype == np.float32
    scale = float(np.abs(want).max()) + float(np.abs(X).max() * np.abs(Y).max())
    assert_close(got.astype(np.float64), want, rtol=tolerance(np.float32, t, depth=2), atol=tolerance(np.float32, t, depth=2) * scale)


def test_randmm_apply_x_float16_strided(be):
    from lrmath.randmm import make_sketch
    from lrmath.randmm.estimators import STREAM_SKETCH
    from lrmath_gpu import randmm as gr

    X = np.random.default_rng(10).standard_normal((18, 6)).astype(np.float16)[:, ::2]  # (18, 3) strided
    sk = make_sketch("rademacher", 18, 5, seed=4)
    S = rng.signs(4, STREAM_SKETCH, (18, 5)) / math.sqrt(5)
    got = gr.apply_x(sk, X)
    assert got.dtype == np.float16 and got.shape == (5, 3)
    assert_close(got.astype(np.float64), S.T @ X.astype(np.float64), rtol=tolerance(np.float16, 18))


# ----------------------------------------------------------------------------- LoTR
def test_lotr_forward(be):
    from lrmath_gpu import lotr as gl

    R = np.random.default_rng(11)
    L, t, m, n, ra, rb = 3, 7, 10, 9, 4, 3
    X = R.standard_normal((L, t, m)).astype(np.float32)
    A = R.standard_normal((m, ra)).astype(np.float32)
    G = R.standard_normal((L, ra, rb)).astype(np.float32)
    B = R.standard_normal((n, rb)).astype(np.float32)
    W = R.standard_normal((L, m, n)).astype(np.float32)
    f = lambda a: a.astype(np.float64)  # noqa: E731
    want = np.einsum("ltm,lmn->ltn", f(X), f(W)) + 0.5 * np.einsum("ltm,ma,lab,nb->ltn", f(X), f(A), f(G), f(B))
    got = gl.forward(X, A, G, B, W=W, scale=0.5)
    assert_close(got.astype(np.float64), want, n=m, depth=3, rtol=tolerance(np.float32, m, depth=3))
    shared = gl.forward(X[0], A, G, B)
    assert_close(shared.astype(np.float64), np.einsum("tm,ma,lab,nb->ltn", f(X[0]), f(A), f(G), f(B)), n=m, depth=3,
                 rtol=tolerance(np.float32, m, depth=3))
    with pytest.raises(ShapeError, match="do not chain"):
        gl.forward(X, A[:5], G, B)
    # backward against the gradients written out by hand (per layer, then shared input)
    dY = R.standard_normal((L, t, n)).astype(np.float32)
    s = 0.5
    g = gl.backward(dY, X, A, G, B, W=W, scale=s)
    P = np.einsum("ltn,nb->ltb", f(dY), f(B))
    Z = np.einsum("ltm,ma->lta", f(X), f(A))
    tol = dict(n=t * n, depth=3, rtol=tolerance(np.float32, t * n, depth=3))
    assert_close(g.dX.astype(np.float64), s * np.einsum("ltb,lab,ma->ltm", P, f(G), f(A)) + np.einsum("ltn,lmn->ltm", f(dY), f(W)), **tol)
    assert_close(g.dA.astype(np.float64), s * np.einsum("ltm,ltb,lab->ma", f(X), P, f(G)), **tol)
    assert_close(g.dB.astype(np.float64), s * np.einsum("ltn,lta,lab->nb", f(dY), Z, f(G)), **tol)
    assert_close(g.dG.astype(np.float64), s * np.einsum("lta,ltb->lab", Z, P), **tol)
    gs_ = gl.backward(dY, X[0], A, G, B, scale=s)
    P0 = np.einsum("ltb,lab,ma->tm", P, f(G), f(A))
    assert_close(gs_.dX.astype(np.float64), s * P0, **tol)
    assert_close(gs_.dA.astype(np.float64), s * np.einsum("tm,ltb,lab->ma", f(X[0]), P, f(G)), **tol)


# ----------------------------------------------------------------------------- RunLoRA (cuBLAS via CuPy)
def test_runlora_pair_on_cupy_matches_closed_form():
    need("cupy")
    from lrmath.runlora import plan
    from lrmath_gpu import runlora as grl

    R = np.random.default_rng(12)
    t, m, n, r, s = 16, 12, 10, 3, 0.5
    inp = {"X": R.standard_normal((t, m)), "W": R.standard_normal((m, n)), "A": R.standard_normal((m, r)),
           "B": R.standard_normal((r, n)), "dY": R.standard_normal((t, n))}
    p = plan(m, n, r, tokens=t, dtype="float64")
    ch = p.segments[0].choice
    Y, grads, _ = grl.run_pair(ch.forward, ch.backward, inp, s)
    X, W, A, B, dY = (inp[k] for k in ("X", "W", "A", "B", "dY"))
    assert_close(Y, X @ W + s * (X @ A) @ B, n=m, depth=2)
    assert_close(grads["dA"], s * X.T @ (dY @ B.T), n=t, depth=2)
    assert_close(grads["dB"], s * (X @ A).T @ dY, n=t, depth=2)
    assert_close(grads["dX"], dY @ W.T + s * (dY @ B.T) @ A.T, n=n, depth=2)
    secs = grl.tune(plan(m, n, r, tokens=t), repeats=2)
    assert secs and all(v > 0 for v in secs.values())
