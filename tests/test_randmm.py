"""Exact checks of lrmath.randmm: variance formulas by exhaustive enumeration of every
outcome of independent naive estimators, water-filling, WTA |D|, SGD variance, seeds,
backends and errors. (Monte-Carlo checks of the library's own samplers are in
test_randmm_mc.py, the torch layer in test_randmm_torch.py.)"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lrmath import randmm as R
from lrmath.errors import NonFiniteError, ShapeError
from lrmath.testing import assert_close


def _data(t, m=3, n=2, seed=0, heavy=True):
    rs = np.random.default_rng(seed)
    X = rs.standard_normal((t, m))
    Y = rs.standard_normal((t, n))
    if heavy:  # unequal row norms make the probabilities matter
        X *= np.exp(rs.standard_normal((t, 1)))
        Y *= np.exp(0.5 * rs.standard_normal((t, 1)))
    return X, Y


def _moments(outcomes):
    """Exact mean and E||C_hat - C||^2 from (probability, C_hat) pairs."""
    P = np.array([p for p, _ in outcomes])
    E = np.stack([c for _, c in outcomes])
    assert abs(P.sum() - 1) < 1e-12
    mean = np.tensordot(P, E, axes=1)
    return mean, E, P


def _check_exact(outcomes, C, formula):
    mean, E, P = _moments(outcomes)
    assert_close(mean, C, n=len(P), rtol=1e-10)
    var = float(np.dot(P, ((E - C) ** 2).sum(axis=(1, 2))))
    assert var == pytest.approx(formula, rel=1e-9, abs=1e-12)


def _dct_matrix(t):
    r = np.arange(t)[:, None]
    c = np.arange(t)[None, :]
    H = np.sqrt(2.0 / t) * np.cos(np.pi * (2 * c + 1) * r / (2 * t))
    H[0] /= np.sqrt(2.0)
    return H


def _hadamard_matrix(t):
    H = np.ones((1, 1))
    while H.shape[0] < t:
        H = np.block([[H, H], [H, -H]])
    return H / np.sqrt(t)


# ----------------------------------------------------------------------------- exact enumeration
@pytest.mark.parametrize("probs", ["uniform", "x", "xy", "given"])
def test_crs_with_replacement_exact(probs):
    t, k = 4, 2
    X, Y = _data(t, seed=1)
    C = X.T @ Y
    if probs == "given":
        p = np.array([0.1, 0.2, 0.3, 0.4])
    elif probs == "uniform":
        p = np.full(t, 1 / t)
    elif probs == "x":
        w = np.linalg.norm(X, axis=1)
        p = w / w.sum()
    else:
        w = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)
        p = w / w.sum()
    outs = []
    for idx in itertools.product(range(t), repeat=k):
        Ch = sum(np.outer(X[i], Y[i]) / p[i] for i in idx) / k
        outs.append((np.prod(p[list(idx)]), Ch))
    _check_exact(outs, C, R.variance(X, Y, k, "crs", probs=p if probs == "given" else probs))


def test_crs_optimal_probabilities_closed_form():
    X, Y = _data(7, seed=2)
    a = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)
    C2 = np.sum((X.T @ Y) ** 2)
    assert R.variance(X, Y, 3, "crs", probs="xy") == pytest.approx((a.sum() ** 2 - C2) / 3, rel=1e-12)
    # optimal beats the others
    for other in ("x", "uniform"):
        assert R.variance(X, Y, 3, "crs", probs="xy") <= R.variance(X, Y, 3, "crs", probs=other)


def test_crs_without_replacement_exact():
    t, k = 5, 3
    X, Y = _data(t, seed=3)
    C = X.T @ Y
    subsets = list(itertools.combinations(range(t), k))
    outs = [(1 / len(subsets), t / k * X[list(s)].T @ Y[list(s)]) for s in subsets]
    _check_exact(outs, C, R.variance(X, Y, k, "crs", probs="uniform", replace=False))


def test_rademacher_exact():
    t, k = 3, 2
    X, Y = _data(t, seed=4)
    C = X.T @ Y
    outs = []
    for bits in itertools.product((-1.0, 1.0), repeat=t * k):
        S = np.array(bits).reshape(t, k) / np.sqrt(k)
        outs.append((0.5 ** (t * k), (S.T @ X).T @ (S.T @ Y)))
    _check_exact(outs, C, R.variance(X, Y, k, "rademacher"))


@pytest.mark.parametrize("kind,t", [("srht", 4), ("srdct", 4), ("srdct", 5), ("srht", 6)])
@pytest.mark.parametrize("replace", [True, False])
def test_subsampled_transform_exact(kind, t, replace):
    k = 2
    X, Y = _data(t, seed=5)
    C = X.T @ Y
    if kind == "srdct":
        H = _dct_matrix(t)
    elif t & (t - 1) == 0:
        H = _hadamard_matrix(t)
    else:  # non-power-of-two rule of lrmath.ops: H_p kron R_q; the formula is what is tested
        from lrmath.ops import orthogonal

        H = orthogonal("hadamard", t, seed=0).matrix()
    assert np.allclose(H @ H.T, np.eye(t))
    rows = list(itertools.product(range(t), repeat=k)) if replace else list(itertools.combinations(range(t), k))
    outs = []
    for d in itertools.product((-1.0, 1.0), repeat=t):
        Xt, Yt = H @ (np.array(d)[:, None] * X), H @ (np.array(d)[:, None] * Y)
        for r in rows:
            r = list(r)
            outs.append((0.5**t / len(rows), t / k * Xt[r].T @ Yt[r]))
    _check_exact(outs, C, R.variance(X, Y, k, kind, replace=replace))


def test_srht_equals_rademacher_formula_for_powers_of_two():
    X, Y = _data(16, seed=6)
    st = R.stats(X, Y)
    from lrmath.ops import orthogonal

    H = orthogonal("hadamard", 16, seed=0).matrix()
    M = H * H
    G = (X @ X.T) * (Y @ Y.T)
    general = M.dot(st.u) @ M.dot(st.v) + 2 * np.sum(G * (M.T @ M)) - 2 * np.dot((M * M).sum(0), st.u * st.v)
    assert R.transform_row_moment("srht", st) == pytest.approx(general, rel=1e-10)
    assert R.variance(X, Y, 5, "srht") == pytest.approx(R.variance(X, Y, 5, "rademacher"), rel=1e-10)


@pytest.mark.parametrize("probs", ["xy", "uniform", "given"])
def test_bernoulli_exact(probs):
    t, k = 5, 2
    X, Y = _data(t, seed=7)
    C = X.T @ Y
    if probs == "xy":
        q = R.bernoulli_probabilities(np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1), k)
    elif probs == "uniform":
        q = np.full(t, k / t)
    else:
        q = np.array([0.9, 0.1, 0.5, 0.3, 0.2])
    outs = []
    for keep in itertools.product((0, 1), repeat=t):
        keep = np.array(keep, bool)
        pr = np.prod(np.where(keep, q, 1 - q))
        Ch = (X[keep] / q[keep][:, None]).T @ Y[keep] if keep.any() else np.zeros_like(C)
        outs.append((pr, Ch))
    _check_exact(outs, C, R.variance(X, Y, k, "bernoulli", probs=q if probs == "given" else probs))


def test_water_filling_is_optimal_and_closed_form():
    X, Y = _data(12, seed=8)
    X[0] *= 30  # forces saturation q = 1
    a = np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1)
    k = 4
    q = R.bernoulli_probabilities(a, k)
    assert q.sum() == pytest.approx(k)
    assert q.max() == pytest.approx(1.0) and np.all(q <= 1 + 1e-12)
    free = q < 1 - 1e-12
    c = q[free] / a[free]
    assert np.allclose(c, c[0])  # q = c a below the cap
    assert np.all(c[0] * a[~free] >= 1 - 1e-12)  # saturated rows would exceed 1
    st = R.stats(X, Y)
    vq = R.variance(X, Y, k, "bernoulli", probs="xy")
    assert vq == pytest.approx(R.optimal_bernoulli_variance(st, k), rel=1e-10)
    rs = np.random.default_rng(0)
    for _ in range(50):  # any other feasible q is worse
        z = rs.dirichlet(np.ones(12)) * k
        if z.max() > 1:
            continue
        uv = st.u * st.v
        assert vq <= np.sum((1 / z - 1) * uv) + 1e-9


def _wta_enumerate(X, Y, p, k, d):
    order = np.argsort(-p, kind="stable")
    D, rest = order[:d], order[d:]
    PD = p[D].sum()
    pr = p[rest] / (1 - PD)
    kp = k - d
    base = X[D].T @ Y[D]
    outs = []
    for idx in itertools.product(range(len(rest)), repeat=kp):
        rows = rest[list(idx)]
        Ch = base + (1 - PD) / kp * sum(np.outer(X[i], Y[i]) / p[i] for i in rows)
        outs.append((np.prod(pr[list(idx)]), Ch))
    return outs


def test_wta_exact_for_every_deterministic_size():
    t, k = 5, 3
    X, Y = _data(t, seed=9)
    C = X.T @ Y
    p = R.optimal_probabilities(X, Y)
    vs = R.wta_variances(p, k, X, Y)
    assert vs.shape == (k,)
    brute = []
    for d in range(k):
        outs = _wta_enumerate(X, Y, p, k, d)
        _check_exact(outs, C, vs[d])
        assert R.variance(X, Y, k, "wta", deterministic=d) == pytest.approx(vs[d])
        mean, E, P = _moments(outs)
        brute.append(float(np.dot(P, ((E - C) ** 2).sum(axis=(1, 2)))))
    assert int(np.argmin(brute)) == R.wta_deterministic_size(p, k, rule="optimal", X=X, Y=Y)
    # |D| = 0 is plain CRS with the same probabilities
    assert vs[0] == pytest.approx(R.variance(X, Y, k, "crs", probs="xy"))


def test_wta_rules_on_heavy_tails():
    rs = np.random.default_rng(10)
    t, k = 64, 16
    X = rs.standard_normal((t, 4)) * (rs.pareto(1.2, size=(t, 1)) + 0.05)
    Y = rs.standard_normal((t, 3))
    p = R.optimal_probabilities(X, Y)
    vs = R.wta_variances(p, k, X, Y)
    d_opt = R.wta_deterministic_size(p, k, rule="optimal", X=X, Y=Y)
    d_auth = R.wta_deterministic_size(p, k, rule="authors")
    assert vs[d_opt] == vs.min() and vs[d_opt] <= vs[d_auth] and vs[d_opt] <= vs[0]
    # the authors' rule: largest |D| with P_D > |D|/k
    ps = np.sort(p)[::-1]
    assert d_auth == 0 or ps[:d_auth].sum() > d_auth / k
    assert all(ps[:d].sum() <= d / k for d in range(d_auth + 1, k))


def test_gaussian_formula_equals_kurtosis_form():
    X, Y = _data(9, seed=11)
    st = R.stats(X, Y)
    # iid sketch with kurtosis mu4: (F + C2 + (mu4 - 3) S2)/k; Gaussian mu4 = 3, Rademacher mu4 = 1
    assert R.variance(X, Y, 4, "gaussian") == pytest.approx((st.F + st.C2) / 4)
    assert R.variance(X, Y, 4, "rademacher") == pytest.approx((st.F + st.C2 - 2 * st.S2) / 4)


# ----------------------------------------------------------------------------- SGD
def test_sgd_variance_exact_enumeration():
    rs = np.random.default_rng(12)
    N, B = 4, 2
    G = rs.standard_normal((N, 3, 2))
    gbar = G.mean(0)
    for replace in (True, False):
        draws = list(itertools.product(range(N), repeat=B)) if replace else list(itertools.permutations(range(N), B))
        v = np.mean([np.sum((G[list(d)].mean(0) - gbar) ** 2) for d in draws])
        assert R.sgd_variance(G, B, replace=replace) == pytest.approx(v, rel=1e-12)


def test_per_example_gradients_mean_is_batch_gradient():
    rs = np.random.default_rng(13)
    B, s, m, n = 3, 4, 5, 2
    X = rs.standard_normal((B * s, m))
    dY = rs.standard_normal((B * s, n)) / B  # gradient of the mean loss
    G = R.per_example_gradients(X, dY, B)
    assert G.shape == (B, n, m)
    assert_close(G.mean(0), dY.T @ X, n=B * s)
    for b in range(B):
        assert_close(G[b], B * sum(np.outer(dY[b * s + i], X[b * s + i]) for i in range(s)), n=s)
    with pytest.raises(ShapeError):
        R.per_example_gradients(X, dY, 5)


def test_max_compression_is_smallest_safe_k():
    X, dY = _data(40, m=4, n=3, seed=14)
    sgd = R.variance(X, dY, 10, "crs", probs="xy")  # a reference level
    res = R.max_compression(X, dY, sgd, target=1.0, kind="crs", probs="xy")
    a = np.linalg.norm(X, axis=1) * np.linalg.norm(dY, axis=1)
    C2 = np.sum((X.T @ dY) ** 2)
    naive = lambda k: (a.sum() ** 2 - C2) / k  # noqa: E731
    assert res.k == 10 and naive(res.k) <= sgd * (1 + 1e-12) and naive(res.k - 1) > sgd
    assert "k=10" in repr(res)
    cmp = R.compare(X, dY, sgd, ratios=(0.5, 0.25))
    assert len(cmp.rows) == 2 * 7 and "sketch/SGD" in repr(cmp)


# ----------------------------------------------------------------------------- sketches, seeds, backends
@pytest.mark.parametrize("kind", R.KINDS)
def test_seed_reproduces_and_differs(kind):
    X, Y = _data(16, seed=15)
    a = R.estimate(X, Y, 5, kind, seed=7)
    b = R.estimate(X, Y, 5, kind, seed=7)
    c = R.estimate(X, Y, 5, kind, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "srdct"])
def test_dense_sketch_matrices(kind):
    sk = R.make_sketch(kind, 8, 3, seed=2)
    L, Rm = sk.matrices()
    assert L.shape == (3, 8) and np.allclose(L, Rm)
    if kind == "rademacher":
        assert np.allclose(np.abs(L), 1 / np.sqrt(3))
    if kind == "srht":  # rows of sqrt(t/k) H D: entries +-sqrt(t/k)/sqrt(t)
        assert np.allclose(np.abs(L), 1 / np.sqrt(3))
    X, Y = _data(8, seed=3)
    assert_close(sk.estimate(X, Y), (L @ X).T @ (Rm @ Y), n=8)


def test_sampling_sketch_regenerates_y_side_from_indices():
    X, Y = _data(20, seed=16)
    sk = R.make_sketch("crs", 20, 6, seed=3, X=X, probs="x")
    assert sk.indices.shape == (6,) and sk.state_nbytes() == 6 * 16
    assert_close(sk.apply_y(Y), Y[sk.indices])
    p = R.sampling_probabilities(X, None, "x")
    assert_close(sk.apply_x(X), X[sk.indices] / (6 * p[sk.indices])[:, None])
    uni = R.make_sketch("crs", 20, 6, seed=3, probs="uniform")
    uni2 = R.make_sketch("crs", 20, 6, seed=3, probs="uniform")
    assert np.array_equal(uni.indices, uni2.indices)  # data-independent: from the seed alone
    assert "rows=6" in repr(sk)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher", "srht", "srdct", "crs", "wta"])
def test_backends_agree(xp, kind):
    from lrmath.backend import convert, to_numpy

    X, Y = _data(16, seed=17)
    target = next(k for k in ("array_api_strict", "torch", "cupy", "numpy") if k in xp.__name__)
    Xb, Yb = convert(X, target), convert(Y, target)
    opts = {"probs": "x"} if kind in ("crs", "wta") else {}
    if kind == "wta":
        opts["deterministic"] = "authors"
    ref = R.estimate(X, Y, 6, kind, seed=4, **opts)
    got = R.estimate(Xb, Yb, 6, kind, seed=4, **opts)
    assert_close(to_numpy(got), ref, n=16, depth=3)


def test_float32_and_bfloat16_inputs():
    import ml_dtypes

    X, Y = _data(16, seed=18)
    ref = R.estimate(X, Y, 6, "srht", seed=1)
    got = R.estimate(X.astype(np.float32), Y.astype(np.float32), 6, "srht", seed=1)
    assert got.dtype == np.float32
    assert_close(got.astype(np.float64), ref, rtol=1e-5)
    bf = R.estimate(X.astype(ml_dtypes.bfloat16), Y.astype(ml_dtypes.bfloat16), 6, "crs", seed=1, probs="x")
    assert bf.dtype == ml_dtypes.bfloat16


# ----------------------------------------------------------------------------- errors
def test_errors():
    X, Y = _data(8)
    with pytest.raises(ValueError, match="exceeds"):
        R.estimate(X, Y, 9, "gaussian")
    with pytest.raises(ValueError, match="at least 1"):
        R.estimate(X, Y, 0, "crs")
    with pytest.raises(TypeError):
        R.estimate(X, Y, 2.5, "crs")
    with pytest.raises(ShapeError, match="same number of rows"):
        R.estimate(X, Y[:7], 3, "gaussian")
    with pytest.raises(ShapeError):
        R.estimate(X[:, 0], Y, 3, "gaussian")
    with pytest.raises(ValueError, match="unknown estimator"):
        R.estimate(X, Y, 3, "nope")
    with pytest.raises(ValueError, match="needs Y"):
        R.make_sketch("crs", 8, 3, X=X, probs="xy")
    with pytest.raises(ValueError, match="only probs='uniform'"):
        R.estimate(X, Y, 3, "crs", probs="x", replace=False)
    with pytest.raises(ValueError, match="needs X and Y"):
        R.make_sketch("wta", 8, 3, X=X, probs="x")
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        R.estimate(Xn, Y, 3, "gaussian")
    sk = R.make_sketch("gaussian", 8, 3)
    with pytest.raises(ShapeError, match="t=8"):
        sk.apply_x(np.ones((7, 2)))
    with pytest.raises(ValueError):
        R.sampling_probabilities(X, Y, np.ones(8))  # does not sum to 1
    with pytest.raises(ValueError, match="exceeds"):
        R.variance(X, Y, 9, "crs")
    assert math.isfinite(R.variance(X, Y, 8, "crs", probs="uniform", replace=False))
    assert R.variance(X, Y, 8, "crs", probs="uniform", replace=False) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("t", [4, 8, 32, 128])
def test_kronecker_hadamard_fast_path_equals_ops_operator(t):
    """The SRHT fast path (two Sylvester factors as matmuls) equals lrmath.ops' Hadamard."""
    from lrmath.ops import orthogonal

    X, Y = _data(t, seed=19)
    sk = R.make_sketch("srht", t, max(1, t // 4), seed=3)
    D = sk._signs()
    Z = orthogonal("hadamard", t, seed=0).apply(X * D[:, None], axis=0)
    rows = sk._transform_rows()
    assert_close(sk.apply_x(X), np.sqrt(t / sk.k) * Z[rows], n=t)


# ----------------------------------------------------------------------------- properties
from hypothesis import given  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402

from tests.strategies import dims, seeds  # noqa: E402


@given(t=dims(1, 40), m=dims(1, 6), n=dims(1, 5), frac=hst.floats(0.01, 1.0), seed=seeds(),
       kind=hst.sampled_from(["gaussian", "rademacher", "srht", "srdct", "crs", "wta"]), dtype=hst.sampled_from(["float32", "float64"]))
def test_estimate_matches_naive_definition(t, m, n, frac, seed, kind, dtype):
    """C_hat from the library equals the estimator's definition evaluated naively here,
    from the documented random streams (stream*64+11 entries/signs, +12 indices)."""
    from lrmath import rng
    from lrmath.ops import orthogonal
    from lrmath.testing import tolerance

    g = np.random.default_rng(seed % 1000)
    X = (g.standard_normal((t, m)) * np.exp(g.standard_normal((t, 1)))).astype(dtype)
    Y = g.standard_normal((t, n)).astype(dtype)
    k = max(1, min(t, int(round(frac * t))))
    opts = {"probs": "x"} if kind in ("crs", "wta") else {}
    if kind == "wta":
        opts["deterministic"] = "authors"
    got = R.estimate(X, Y, k, kind, seed=seed, stream=2, **opts)
    Xd, Yd = X.astype(np.float64), Y.astype(np.float64)
    s_e, s_i = 2 * 64 + 11, 2 * 64 + 12
    if kind in ("gaussian", "rademacher"):
        S = (rng.normal(seed, s_e, (t, k)) if kind == "gaussian" else rng.signs(seed, s_e, (t, k))) / np.sqrt(k)
        ref = (S.T @ Xd).T @ (S.T @ Yd)
    elif kind in ("srht", "srdct"):
        H = orthogonal("hadamard" if kind == "srht" else "dct", t, seed=0).matrix()
        D = rng.signs(seed, s_e, t)
        P = rng.integers(seed, s_i, k, t)
        L = np.sqrt(t / k) * (H * D[None, :])[P]
        ref = (L @ Xd).T @ (L @ Yd)
    else:
        w = np.linalg.norm(Xd, axis=1)
        p = w / w.sum()
        sk = R.make_sketch(kind, t, k, seed=seed, stream=2, X=X, **opts)
        d = sk.n_deterministic
        order = np.argsort(-p, kind="stable")
        assert set(sk.indices[:d]) == set(order[:d])
        PD = p[order[:d]].sum()
        ref = Xd[sk.indices[:d]].T @ Yd[sk.indices[:d]]
        for i in sk.indices[d:]:
            ref = ref + (1 - PD) / (k - d) * np.outer(Xd[i], Yd[i]) / p[i]
    rtol = tolerance(dtype, t, depth=3)
    assert got.dtype == np.dtype(dtype)
    assert_close(got.astype(np.float64), ref, rtol=rtol, atol=rtol * (np.abs(Xd).sum(0)[:, None] * np.abs(Yd).sum(0)[None, :]).max() * max(1.0, t / k))
