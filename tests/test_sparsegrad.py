"""SparseGrad core: bases, learned basis, selection, sampled products, analysis.

Oracles are naive dense computations written here (explicit matrices, loops, SVD of the
stacked unfoldings), never the library's own code through another path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lrmath.sparsegrad as sg
from lrmath.errors import DeviceError, DTypeError, EmptyInputError, NonFiniteError, ShapeError
from lrmath.testing import assert_close, tolerance

FIXED = ("original", "dct", "hadamard", "random")


def _lowrank_grads(n, m, steps, rank, seed):
    """Gradients sharing a slowly drifting low-rank subspace (like real MLP gradients)."""
    r = np.random.default_rng(seed)
    P = np.linalg.qr(r.standard_normal((n, rank)))[0]
    Q = np.linalg.qr(r.standard_normal((m, rank)))[0]
    return [P @ np.diag(r.uniform(1, 3, rank)) @ r.standard_normal((rank, rank)) @ Q.T + 1e-3 * r.standard_normal((n, m)) for _ in range(steps)]


# ----------------------------------------------------------------------------- bases
@given(kind=st.sampled_from(FIXED), n=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_fixed_bases_orthogonal_and_invertible(kind, n, seed):
    Q = sg.basis(kind, n, seed)
    M = Q.matrix()
    assert_close(M.T @ M, np.eye(n), n=n, depth=2)
    x = np.random.default_rng(seed).standard_normal((3, n))
    assert_close(Q.apply_t(Q.apply(x)), x, n=n, depth=4)
    # apply is the matrix product with the columns of M
    assert_close(Q.apply(x), x @ M.T, n=n, depth=2)


@given(n=st.integers(2, 24), m=st.integers(2, 24), steps=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_learned_basis_orthogonal_and_matches_hosvd_of_stack(n, m, steps, seed):
    r = np.random.default_rng(seed)
    grads = [r.standard_normal((n, m)) for _ in range(steps)]
    acc = sg.GramAccumulator(n, m, normalize=False, decay=1.0)
    for g in grads:
        acc.update(g)
    U, V = acc.bases(dtype=np.float64)
    for B, k in ((U, n), (V, m)):
        M = B.matrix()
        assert_close(M.T @ M, np.eye(k), n=k, depth=3)
        x = r.standard_normal((2, k))
        assert_close(B.apply_t(B.apply(x)), x, n=k, depth=3)
    # oracle: SVD of the mode-1 unfolding [G_1 ... G_S] (n, S m); singular values^2 are
    # the eigenvalues, and the leading singular vector spans the same line as U[:, 0]
    unf1 = np.concatenate(grads, axis=1)
    u, s, _ = np.linalg.svd(unf1, full_matrices=False)
    assert_close(U.eigenvalues[: s.size], s**2, n=steps * m, depth=3, atol=1e-9 * s[0] ** 2)
    if s.size > 1 and s[0] - s[1] > 1e-3 * s[0]:
        assert abs(abs(u[:, 0] @ U.matrix()[:, 0]) - 1) < 1e-6
    unf2 = np.concatenate([g.T for g in grads], axis=1)
    s2 = np.linalg.svd(unf2, compute_uv=False)
    assert_close(V.eigenvalues[: s2.size], s2**2, n=steps * n, depth=3, atol=1e-9 * s2[0] ** 2)


@given(t=st.integers(1, 12), n=st.integers(2, 20), m=st.integers(2, 20), seed=st.integers(0, 2**31 - 1))
def test_gram_from_factors_equals_gram_of_gradient(t, n, m, seed):
    r = np.random.default_rng(seed)
    a1, a2 = sg.GramAccumulator(n, m, decay=0.5), sg.GramAccumulator(n, m, decay=0.5)
    for _ in range(2):
        dY, X = r.standard_normal((t, n)), r.standard_normal((t, m))
        a1.update_factors(dY, X)
        a2.update(dY.T @ X)
    assert_close(a1.A, a2.A, n=t * m, depth=3)
    assert_close(a1.B, a2.B, n=t * n, depth=3)


def test_gram_weights_are_normalised_and_decayed():
    r = np.random.default_rng(3)
    g1, g2 = r.standard_normal((5, 4)), r.standard_normal((5, 4))
    acc = sg.GramAccumulator(5, 4, normalize=True, decay=0.5)
    acc.update(g1).update(g2)
    want = 0.5 * g1 @ g1.T / np.sum(g1**2) + g2 @ g2.T / np.sum(g2**2)
    assert_close(acc.A, want, n=20, depth=2)


def test_learned_basis_concentrates_energy_of_lowrank_gradients():
    grads = _lowrank_grads(64, 48, 12, 4, seed=1)
    U, V = sg.learned_bases(grads[:10])
    rep = sg.compare_bases(grads[10:], {"learned": (U, V), "dct": "dct", "original": "original"}, density=0.01)
    # a rank-4 gradient in its own singular bases lives in a 4x4 block = 16 of 3072 entries
    assert rep.mean("learned") > 0.99
    assert rep.mean("dct") < 0.5
    assert "learned" in repr(rep)


def test_transform_matches_dense_matrices():
    r = np.random.default_rng(0)
    G = r.standard_normal((12, 20))
    for kind in FIXED:
        U, V = sg.basis(kind, 12, 5), sg.basis(kind, 20, 5)
        want = U.matrix().T @ G @ V.matrix()
        assert_close(sg.transform(G, U, V), want, n=32, depth=2)
        assert_close(sg.inverse_transform(want, U, V), G, n=32, depth=3)


# ----------------------------------------------------------------------------- selection
def _naive_topk(a, k):
    flat = np.abs(np.asarray(a, dtype=np.float64)).ravel()
    order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
    return np.array(sorted(order[:k]), dtype=np.int64)


@given(n=st.integers(1, 12), m=st.integers(1, 12), k=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
def test_topk_global_tie_rule(n, m, k, seed):
    a = np.random.default_rng(seed).integers(-3, 4, (n, m)).astype(np.float64)  # many ties
    want = _naive_topk(a, k)
    np.testing.assert_array_equal(sg.topk_global(a, k), want)


def test_topk_global_array_api(xp):
    a = np.random.default_rng(1).integers(-3, 4, (7, 9)).astype(np.float64)
    got = sg.topk_global(xp.asarray(a), 20)
    np.testing.assert_array_equal(np.asarray(got), _naive_topk(a, 20))


@given(n=st.integers(1, 10), m=st.integers(1, 10), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_topk_per_row_and_threshold(n, m, seed, data):
    a = np.random.default_rng(seed).integers(-3, 4, (n, m)).astype(np.float64)
    k = data.draw(st.integers(1, m))
    want = np.concatenate([_naive_topk(a[i : i + 1], k) + i * m for i in range(n)])
    np.testing.assert_array_equal(sg.topk_per_row(a, k), want)
    tau = data.draw(st.sampled_from([0.0, 1.0, 2.5, 3.0, 9.0]))
    np.testing.assert_array_equal(sg.threshold_select(a, tau), np.array([i for i, v in enumerate(a.ravel()) if abs(v) >= tau], dtype=np.int64))


def test_index_selector_exact_statistics_and_refresh_schedule():
    r = np.random.default_rng(7)
    shape = (6, 5)
    sel = sg.IndexSelector(shape, k=4, refresh_every=3, decay=0.5, pool=None)
    score = np.zeros(shape)
    for s in range(6):
        g = r.integers(-4, 5, shape).astype(np.float64)
        sel.update(g)
        score = 0.5 * score + g * g
        assert sel.due() == ((s + 1) % 3 == 0)
    np.testing.assert_array_equal(sel.select(), _naive_topk(np.sqrt(score), 4))


def test_index_selector_pool_bounds_memory_and_finds_heavy_entries():
    shape = (40, 30)
    sel = sg.IndexSelector(shape, k=10, pool=2)
    heavy = np.arange(0, 1200, 120)[:10]
    r = np.random.default_rng(0)
    for _ in range(8):
        g = 0.1 * r.standard_normal(shape)
        g.ravel()[heavy] += 5.0
        sel.update(g)
        assert sel.cand.size <= 20
    np.testing.assert_array_equal(sel.select(), np.sort(heavy))


def test_carry_over_keeps_kept_and_zeros_new():
    old = np.array([1, 4, 7, 9])
    new = np.array([0, 4, 9, 12])
    vals = np.array([[10.0, 40.0, 70.0, 90.0], [1.0, 4.0, 7.0, 9.0]])
    np.testing.assert_array_equal(sg.carry_over(vals, old, new), [[0, 40, 90, 0], [0, 4, 9, 0]])


# ----------------------------------------------------------------------------- sampled product
@given(t=st.integers(1, 9), n=st.integers(1, 15), m=st.integers(1, 15), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(["auto", "sparse", "dense"]), data=st.data())
def test_sampled_product_equals_dense_product_at_indices(t, n, m, seed, method, data):
    r = np.random.default_rng(seed)
    A, B = r.standard_normal((t, n)), r.standard_normal((t, m))
    nnz = data.draw(st.integers(0, n * m))
    idx = np.sort(r.choice(n * m, nnz, replace=False)).astype(np.int64)
    want = np.array([sum(A[s, i // m] * B[s, i % m] for s in range(t)) for i in idx])
    got = sg.sampled_product(A, B, idx, method=method, chunk_elems=7)
    assert got.shape == (nnz,)
    assert_close(got, want, n=t)


def test_sampled_product_backends(xp):
    r = np.random.default_rng(2)
    A, B = r.standard_normal((6, 9)).astype(np.float32), r.standard_normal((6, 11)).astype(np.float32)
    idx = np.sort(r.choice(99, 30, replace=False))
    want = (A.astype(np.float64).T @ B.astype(np.float64)).ravel()[idx]
    for method in ("sparse", "dense"):
        got = sg.sampled_product(xp.asarray(A), xp.asarray(B), idx, method=method)
        assert_close(np.asarray(got), want.astype(np.float32), n=6, check_namespace=False)


@given(kind=st.sampled_from(FIXED + ("learned",)), t=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_sparse_gradient_equals_dense_transformed_gradient(kind, t, seed, data):
    n, m = 12, 10
    r = np.random.default_rng(seed)
    dY, X = r.standard_normal((t, n)), r.standard_normal((t, m))
    if kind == "learned":
        U, V = sg.learned_bases([r.standard_normal((n, m)) for _ in range(3)], dtype=np.float64)
    else:
        U, V = sg.basis(kind, n, seed), sg.basis(kind, m, seed)
    nnz = data.draw(st.integers(1, n * m))
    idx = np.sort(r.choice(n * m, nnz, replace=False))
    Um, Vm = U.matrix(), V.matrix()
    dense = Um.T @ (dY.T @ X) @ Vm
    # rounding error of a product chain is bounded relative to |U|^T |dY|^T |X| |V| (Higham 3.5),
    # not to the result, which can cancel to ~0 when only a few entries are sampled
    scale = (np.abs(Um).T @ (np.abs(dY).T @ np.abs(X)) @ np.abs(Vm)).ravel()[idx].max()
    rtol = tolerance(np.float64, t * max(n, m), depth=3)
    assert_close(sg.sparse_gradient(dY, X, U, V, idx), dense.ravel()[idx], rtol=rtol, atol=rtol * scale)


@given(t=st.integers(1, 6), n=st.integers(1, 12), m=st.integers(1, 12), block=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_topk_product_blockwise_equals_dense_topk(t, n, m, block, seed, data):
    r = np.random.default_rng(seed)
    A = r.integers(-2, 3, (t, n)).astype(np.float64)  # integer entries: exact products, real ties
    B = r.integers(-2, 3, (t, m)).astype(np.float64)
    k = data.draw(st.integers(1, n * m))
    C = A.T @ B
    idx, val = sg.topk_product(A, B, k, block_rows=block)
    np.testing.assert_array_equal(idx, _naive_topk(C, k))
    np.testing.assert_array_equal(val, C.ravel()[idx])


def test_route_cost_prefers_dense_for_a_filled_block():
    m = 100
    block = np.array([i * m + j for i in range(5) for j in range(5)])
    assert sg.route_cost(64, block, (50, m), gemm_speedup=4.0)["route"] == "dense"
    diag = np.arange(50) * m + np.arange(50)
    assert sg.route_cost(64, diag, (50, m), gemm_speedup=4.0)["route"] == "sparse"  # 2500-entry block for 50 entries


def test_to_sparse_formats():
    r = np.random.default_rng(0)
    idx = np.sort(r.choice(60, 9, replace=False))
    vals = r.standard_normal(9)
    dense = np.zeros(60)
    dense[idx] = vals
    for fmt in ("coo", "csr"):
        np.testing.assert_array_equal(sg.to_sparse(vals, idx, (6, 10), fmt).toarray(), dense.reshape(6, 10))
    torch = pytest.importorskip("torch")
    for fmt in ("coo", "csr"):
        np.testing.assert_array_equal(sg.to_sparse(torch.from_numpy(vals), idx, (6, 10), fmt).to_dense().numpy(), dense.reshape(6, 10))


# ----------------------------------------------------------------------------- analysis
def test_energy_functions_match_naive():
    r = np.random.default_rng(4)
    G = r.standard_normal((20, 30)) ** 3
    e = np.sort(G.ravel() ** 2)[::-1]
    assert abs(sg.energy_at_density(G, 0.01) - e[:6].sum() / e.sum()) < tolerance(np.float64, 600)
    need = sg.density_for_energy(G, 0.5)
    k = int(round(need * 600))
    assert e[:k].sum() / e.sum() >= 0.5 > e[: k - 1].sum() / e.sum()
    c = sg.energy_curve(G)
    assert c.shape == (600,) and abs(c[-1] - 1) < 1e-12 and np.all(np.diff(c) >= 0)
    q = sg.magnitude_quantiles(G, (0.5, 1.0))
    rms = np.sqrt(np.mean(G**2))
    assert abs(q[1.0] - np.abs(G).max() / rms) < 1e-12


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_rejected_clearly():
    G = np.ones((4, 5))
    with pytest.raises(NonFiniteError):
        sg.topk_global(np.array([[np.nan, 1.0]]), 1)
    with pytest.raises(ShapeError):
        sg.transform(np.ones(5), "dct", "dct")
    with pytest.raises(ValueError, match="unknown basis"):
        sg.basis("wavelet", 4)
    with pytest.raises(ValueError, match="learned"):
        sg.basis("learned", 4)
    with pytest.raises(ValueError, match="density"):
        sg.k_for_density((4, 5), 0.0)
    with pytest.raises(ValueError, match="sorted"):
        sg.sampled_product(np.ones((2, 4)), np.ones((2, 5)), np.array([3, 1]))
    with pytest.raises(IndexError):
        sg.sampled_product(np.ones((2, 4)), np.ones((2, 5)), np.array([1, 20]))
    with pytest.raises(ShapeError, match="rows"):
        sg.sampled_product(np.ones((2, 4)), np.ones((3, 5)), np.array([1]))
    with pytest.raises(DTypeError):
        sg.sampled_product(np.ones((2, 4), np.float32), np.ones((2, 5)), np.array([1]))
    with pytest.raises(DTypeError):
        sg.sampled_product(np.ones((2, 4), np.int64), np.ones((2, 5), np.int64), np.array([1]))
    with pytest.raises(ShapeError):
        sg.GramAccumulator(4, 5).update(np.ones((5, 4)))
    with pytest.raises(EmptyInputError):
        sg.GramAccumulator(4, 5).bases()
    with pytest.raises(ValueError, match="decay"):
        sg.GramAccumulator(4, 5, decay=1.5)
    with pytest.raises(ValueError, match="not orthogonal"):
        sg.LearnedBasis(G[:4, :4])
    with pytest.raises(ValueError, match="exactly one"):
        sg.IndexSelector((4, 5))
    with pytest.raises(ShapeError):
        sg.basis("dct", 4).apply(np.ones((3, 5)))
    torch = pytest.importorskip("torch")
    with pytest.raises(DeviceError):
        sg.sampled_product(np.ones((2, 4)), torch.ones(2, 5, dtype=torch.float64), np.array([1]))


# ----------------------------------------------------------------------------- study and CLI
def test_energy_study_on_synthetic_lowrank_gradients():
    from lrmath.sparsegrad._study import energy_study, summarise

    grads = {"a": _lowrank_grads(32, 24, 5, 3, seed=2), "b": _lowrank_grads(24, 32, 5, 3, seed=3)}
    rows = energy_study(grads, density=0.02, bases=("original", "dct", "learned"))
    assert len(rows) == 6 and all(0 <= r["top"] <= 1 and 0 <= r["fixed"] <= 1 for r in rows)
    s = {r["basis"]: r for r in summarise(rows)}
    assert s["learned"]["top mean"] > 0.9 > s["dct"]["top mean"]
    with pytest.raises(ValueError, match="held-out"):
        energy_study({"a": grads["a"][:1]})


def test_cli_command_and_tour_section_registered():
    from lrmath import registry

    assert "sparsegrad" in registry.commands()
    sec = {s.name: s for s in registry.tour_sections()}["sparsegrad"]
    assert sec.order == 30
