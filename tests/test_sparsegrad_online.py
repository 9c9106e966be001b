"""OnlineBasis: a streaming learned basis and index set that follow a drifting gradient subspace."""

from __future__ import annotations

import numpy as np
import pytest

from lrmath.sparsegrad import GramAccumulator, IndexSelector, transform
from lrmath.sparsegrad.online import OnlineBasis


def _orth(r, n, k):
    return np.linalg.qr(r.standard_normal((n, k)))[0]


def _grad(r, P, Q):
    return P @ np.diag(r.uniform(1, 3, P.shape[1])) @ r.standard_normal((P.shape[1], Q.shape[1])) @ Q.T


def _share(G, U, V, idx):
    e = transform(G, U, V).ravel() ** 2
    return e[idx].sum() / e.sum()


def test_gram_estimate_is_the_decayed_normalised_sum():
    r = np.random.default_rng(0)
    gs = [r.standard_normal((7, 5)) for _ in range(6)]
    ob = OnlineBasis(7, 5, 0.2, refresh_every=4, decay=0.8, window=2)
    for g in gs:
        ob.update(g)
    A = sum(0.8 ** (5 - s) * g @ g.T / np.sum(g * g) for s, g in enumerate(gs))
    B = sum(0.8 ** (5 - s) * g.T @ g / np.sum(g * g) for s, g in enumerate(gs))
    np.testing.assert_allclose(ob.A, A, rtol=1e-12)
    np.testing.assert_allclose(ob.B, B, rtol=1e-12)
    assert ob.indices.size == round(0.2 * 35)


def test_refresh_schedule_and_held_out_set():
    r = np.random.default_rng(1)
    ob = OnlineBasis(6, 4, 0.25, refresh_every=3, decay=0.9, window=2)
    flags = [ob.update(r.standard_normal((6, 4))) for _ in range(7)]
    assert flags == [True, False, True, False, False, True, False]  # first update, then every 3rd
    before = ob.indices.copy()
    ob.update(r.standard_normal((6, 4)), refresh=False)  # a new step never changes the set in force
    np.testing.assert_array_equal(ob.indices, before)
    with pytest.raises(ValueError):
        OnlineBasis(6, 4, 0.25, decay=0.0)


def test_tracks_a_drifting_subspace_where_a_one_off_fit_does_not():
    r = np.random.default_rng(2)
    n, m, k = 40, 30, 3
    P1, Q1, P2, Q2 = _orth(r, n, k), _orth(r, m, k), _orth(r, n, k), _orth(r, m, k)
    first = [_grad(r, P1, Q1) for _ in range(10)]
    later = [_grad(r, P2, Q2) for _ in range(8)]
    density = 12 / (n * m)  # a 3x3 core plus room
    acc = GramAccumulator(n, m, normalize=False, decay=1.0)  # the paper's one-off fit
    sel = IndexSelector((n, m), density=density, pool=None, decay=1.0)
    for g in first:
        acc.update(g)
    U0, V0 = acc.bases(dtype=np.float64)
    for g in first:
        sel.update(transform(g, U0, V0))
    idx0 = sel.select()
    ob = OnlineBasis(n, m, density, refresh_every=1, decay=0.5, window=2, dtype=np.float64)
    for g in first:
        ob.update(g)
    assert _share(first[-1], ob.U, ob.V, ob.indices) > 0.999  # a fixed rank-3 subspace is found
    for g in later[:4]:
        ob.update(g)
    online = [_share(g, ob.U, ob.V, ob.indices) for g in later[4:]]
    one_off = [_share(g, U0, V0, idx0) for g in later[4:]]
    assert min(online) > 0.95 and max(one_off) < 0.2


def test_layer_refresh_rotates_adam_state_into_the_new_basis():
    torch = pytest.importorskip("torch")
    from lrmath.sparsegrad import LearnedBasis
    from lrmath.torch import SparseGradLinear

    r = np.random.default_rng(3)
    n, m = 9, 7
    Uo, Vo, Un, Vn = _orth(r, n, n), _orth(r, m, m), _orth(r, n, n), _orth(r, m, m)
    old = np.sort(r.choice(n * m, 15, replace=False))
    new = np.sort(r.choice(n * m, 12, replace=False))
    lay = SparseGradLinear(torch.randn(n, m, dtype=torch.float64), None, LearnedBasis(Uo), LearnedBasis(Vo), old)
    opt = torch.optim.AdamW([lay.delta], lr=1e-2)
    x = torch.randn(5, m, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        lay(x).pow(2).sum().backward()
        opt.step()
    y_before = lay(x).detach()
    st = opt.state[lay.delta]
    m1, m2 = np.zeros(n * m), np.zeros(n * m)
    m1[old], m2[old] = st["exp_avg"].numpy(), st["exp_avg_sq"].numpy()
    m1, m2 = m1.reshape(n, m), m2.reshape(n, m)
    lay.refresh(new, optimizer=opt, U=LearnedBasis(Un), V=LearnedBasis(Vn), rotate_state=True)
    # naive oracle with the full orthogonal matrices
    want1 = (Un.T @ Uo @ m1 @ Vo.T @ Vn).ravel()[new]
    want2 = ((Un.T @ Uo) ** 2 @ m2 @ (Vo.T @ Vn) ** 2).ravel()[new]
    np.testing.assert_allclose(st["exp_avg"].numpy(), want1, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(st["exp_avg_sq"].numpy(), want2, rtol=1e-10, atol=1e-18)
    assert np.all(st["exp_avg_sq"].numpy() >= 0)
    torch.testing.assert_close(lay(x).detach(), y_before)  # delta folded into W_0: same function
