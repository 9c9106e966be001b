"""Stated contracts that no other test pinned down (issue 18, "tests that let bugs through").

Each test names the documented rule it guards; the oracles are brute-force computations
written here, so a one-line change of a default, a tie rule, a stop rule, a sign convention, a
reported field or an envelope breaks one of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrmath import kashin, lotr, ops
from lrmath.errors import RankError
from lrmath.runlora import graph_space, plan


# ----------------------------------------------------------------------------- documented defaults
def test_runlora_reference_tokens_default():
    """Plan.reference_tokens: the token count asked for, or 4096 when the plan covers every t."""
    assert plan(64, 32, 4).reference_tokens == 4096
    assert plan(64, 32, 4, tokens=100).reference_tokens == 100
    p = plan(64, 32, 4)
    assert p.choice == p.select(4096)


def test_kashin_default_sweep_count_is_10(monkeypatch):
    """quantize(iters=None) runs 10 alternating sweeps (docstring of quantize and check_options)."""
    import importlib

    qmod = importlib.import_module("lrmath.kashin.quantize")

    monkeypatch.setattr(qmod, "_TRACK", True)  # record the error after every sweep
    W = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    q = kashin.quantize(W, 4, block=64)
    assert len(q.info["sweep_error"]) == 1 + 10
    np.testing.assert_array_equal(q.dequantize(), kashin.quantize(W, 4, block=64, iters=10).dequantize())
    assert not np.array_equal(q.dequantize(), kashin.quantize(W, 4, block=64, iters=9).dequantize())


# ----------------------------------------------------------------------------- tie rules
def test_nearest_code_midpoint_goes_to_the_higher_index():
    """FORMAT.md: a value exactly halfway between two centroids gets the higher index."""
    from lrmath.kashin.quantize import nearest_code

    table = np.array([-1.0, 0.0, 2.0, 4.0])
    z = np.array([-0.5, 1.0, 3.0, -0.5000001, 0.9999999, -5.0, 9.0])
    np.testing.assert_array_equal(nearest_code(z, table), [1, 2, 3, 0, 1, 0, 3])
    # the 1-bit sign table: 0 encodes as +1 (index 1)
    np.testing.assert_array_equal(nearest_code(np.array([0.0, -0.0]), np.array([-1.0, 1.0])), [1, 1])


def _compatible(space):
    """For every backward graph, the forward graphs that compute what it needs."""
    fwd = list(space.forward)
    return [(b, [f for f in fwd if b.saved <= f.computes]) for b in space.backward]


def test_memory_objective_breaks_ties_by_flops():
    """objective='memory': fewest saved bytes, ties broken by FLOPs (brute force over all pairs)."""
    t, m, n, r = 300, 96, 64, 8
    space = graph_space()
    rows = []
    for b, fs in _compatible(space):
        if not fs:
            continue
        saved = space.saved_bytes(None, b, 4)(t, m, n, r)
        fl = min(f.flops(t, m, n, r) for f in fs) + b.flops(t, m, n, r)
        rows.append((saved, fl))
    best_saved = min(s for s, _ in rows)
    tied = sorted({f for s, f in rows if s == best_saved})
    assert len(tied) >= 2, "no tie in saved bytes: the tie-break is not exercised"
    c = plan(m, n, r, tokens=t, objective="memory").choice
    got = c.at(t, m, n, r)
    assert got["saved_bytes"] == best_saved
    assert got["flops"] == tied[0]


def test_flops_objective_envelope_with_non_default_flags():
    """The lower envelope over t equals the brute-force FLOP minimum at every probed t,
    with bias, dropout and a trained weight (the non-default graph space)."""
    m, n, r = 48, 80, 6
    flags = dict(x_grad=True, w_grad=True, bias=True, dropout=True)
    space = graph_space(**flags)
    comp = [(b, fs) for b, fs in _compatible(space) if fs]
    p = plan(m, n, r, **flags)
    ts = {1, 2, 3, 17, 1000, 10**6}
    for bp in p.breakpoints:
        ts |= {max(1, bp - 1), bp, bp + 1}
    for t in sorted(ts):
        brute = min(min(f.flops(t, m, n, r) for f in fs) + b.flops(t, m, n, r) for b, fs in comp)
        assert p.select(t).at(t, m, n, r)["flops"] == brute, t
    # the envelope's segments tile t >= 1 without gaps
    assert p.segments[0].t_from == 1 and p.segments[-1].t_to is None
    for a, b in zip(p.segments, p.segments[1:]):
        assert b.t_from == a.t_to + 1


# ----------------------------------------------------------------------------- stop rules
def test_decompose_residual_is_the_per_block_maximum():
    """DecompositionReport.residual[k] = max over blocks of ||r_k|| / ||x|| (not a mean)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 64))
    x[1] *= np.linspace(0, 5, 64) ** 3  # one hard block
    x[2] = 0.0
    x[2, 5] = 1.0                        # one block that converges at once
    joint = kashin.decompose(x, "hadamard", iters=6, tol=0.0).report.residual
    singles = []
    for i in range(4):
        res = kashin.decompose(x[i:i + 1], "hadamard", iters=6, tol=0.0).report.residual
        singles.append(np.concatenate([res, np.full(len(joint) - len(res), res[-1])]))
    np.testing.assert_allclose(joint, np.max(singles, axis=0), rtol=1e-12, atol=1e-15)
    assert not np.allclose(joint, np.mean(singles, axis=0))


def test_decompose_stops_when_every_block_is_below_tol():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 32))
    rep = kashin.decompose(x, "hadamard", iters=200, tol=1e-3).report
    assert rep.converged and rep.residual[-1] <= 1e-3
    assert np.all(rep.residual[:-1] > 1e-3)  # it stopped at the first sweep below tol, not later
    d = kashin.decompose(x, "hadamard", iters=200, tol=1e-3)
    np.testing.assert_allclose(d.u + d.Q.apply(d.v), x, atol=1e-12)  # exact: the rest goes to u


# ----------------------------------------------------------------------------- Tucker-2
def test_tucker2_sign_convention():
    """Each column of A and B has its largest-magnitude entry positive (deterministic factors)."""
    T = np.random.default_rng(2).standard_normal((3, 9, 7))
    for dec in (lotr.tucker2(T, (3, 2), max_iter=5), lotr.hosvd2(T, (3, 2))):
        for F in (np.asarray(dec.A), np.asarray(dec.B)):
            idx = np.argmax(np.abs(F), axis=0)
            assert np.all(F[idx, np.arange(F.shape[1])] > 0)
        np.testing.assert_allclose(np.asarray(dec.A).T @ np.asarray(dec.A), np.eye(3), atol=1e-12)


@pytest.mark.parametrize("ranks,ok", [
    ((4, 2), True),    # r_a = L * r_b with L = 2: allowed
    ((5, 2), False),   # r_a > L * r_b
    ((2, 5), False),   # r_b > L * r_a
    ((9, 7), False),   # r_a > m
    ((8, 8), False),   # r_b > n
    ((8, 7), True),
    ((0, 1), False),
])
def test_tucker2_rank_limits(ranks, ok):
    shape = (2, 8, 7)
    if ok:
        assert lotr.check_ranks(ranks, shape) == ranks
        lotr.hosvd2(np.random.default_rng(3).standard_normal(shape), ranks)
    else:
        with pytest.raises(RankError):
            lotr.check_ranks(ranks, shape)


# ----------------------------------------------------------------------------- reported fields
_FACTORS = {"X": ("t", "m"), "A": ("m", "ra"), "Aᵀ": ("ra", "m"), "G": ("ra", "rb"), "Gᵀ": ("rb", "ra"),
            "B": ("n", "rb"), "Bᵀ": ("rb", "n"), "dY": ("t", "n"), "dYᵀ": ("n", "t"), "Xᵀ": ("m", "t")}


@pytest.mark.parametrize("shared", [False, True])
def test_lotr_plan_saved_elements(shared):
    """LoTRPlan.saved_elements = total size of the saved products over all layers (shared ones once)."""
    t, m, n, r, L = 16, 8, 6, 2, 3
    p = lotr.plan(t, m, n, r, L, shared_input=shared)
    s = dict(p.sizes)
    total = 0
    for name in p.saved:
        fs = name.split("·")
        rows, cols = _FACTORS[fs[0]][0], _FACTORS[fs[-1]][1]
        per_layer = any(f.startswith("G") for f in fs) or (not shared and any(f.startswith(("X", "dY")) for f in fs))
        total += s[rows] * s[cols] * (L if per_layer else 1)
    assert p.saved and p.saved_elements == total


@pytest.mark.parametrize("kind,n,expect", [
    ("identity", 16, 0),
    ("hadamard", 16, 16 * 4 + 16),
    ("hadamard", 64, 64 * 6 + 64),
    ("butterfly", 16, 3 * 16 * 4 + 16),
    ("haar", 8, 2 * 8 * 8),
    ("dct", 12, int(5 * 12 * math.log2(12)) + 4 * 12),
])
def test_operator_flops_formula(kind, n, expect):
    """OrthogonalOperator.flops: the documented per-vector count, asserted exactly."""
    assert ops.orthogonal(kind, n).flops == expect


def test_kron_operator_flops_sum_over_factors():
    a, b = ops.orthogonal("hadamard", 8), ops.orthogonal("dct", 3)
    k = ops.kron(a, b)
    assert k.flops == a.flops * 3 + b.flops * 8


# ----------------------------------------------------------------------------- odd sizes, other backends
@pytest.mark.parametrize("kind,n", [("dct", 7), ("rdct", 13), ("haar", 12), ("hadamard", 24), ("butterfly", 12), ("identity", 5)])
def test_odd_sizes_on_torch_match_the_dense_matrix(kind, n):
    torch = pytest.importorskip("torch")
    op = ops.orthogonal(kind, n, seed=3)
    Q = np.asarray(op.matrix(), dtype=np.float64)
    x = np.random.default_rng(4).standard_normal((5, n))
    y = op.apply(torch.from_numpy(x), axis=-1)
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), x @ Q.T, rtol=1e-10, atol=1e-12)
    yt = op.apply_t(torch.from_numpy(x.T.copy()), axis=0)
    np.testing.assert_allclose(yt.numpy(), Q.T @ x.T, rtol=1e-10, atol=1e-12)


def test_odd_sizes_tucker2_on_torch():
    torch = pytest.importorskip("torch")
    T = np.random.default_rng(5).standard_normal((3, 7, 5))
    a = lotr.hosvd2(T, (3, 2))
    b = lotr.hosvd2(torch.from_numpy(T), (3, 2))
    np.testing.assert_allclose(np.asarray(b.reconstruct()), np.asarray(a.reconstruct()), atol=1e-10)


# ----------------------------------------------------------------------------- Kashin accounting and layout
@pytest.mark.parametrize("bits", range(2, 9))
def test_split_bits_gives_u_the_extra_bit(bits):
    assert kashin.split_bits(bits) == ((bits + 1) // 2, bits // 2)


@pytest.mark.parametrize("bad", [1, 9, 0, -2])
def test_split_bits_range(bad):
    with pytest.raises(ValueError):
        kashin.split_bits(bad)


def test_bits_per_weight_counts_every_stored_byte():
    """FORMAT.md: 8 * (codes + fp16 scales + fp32 tables) / (out * in); N = 256, 1 + 1 bits."""
    W = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    q = kashin.quantize(W, 2, block=256, iters=1)
    codes = 64 * 256 * 1 // 8 * 2
    scales = 2 * 64 * 2
    tables = 2 * (2 * 4)
    assert q.nbytes == codes + scales + tables
    assert q.bits_per_weight == 8 * (codes + scales + tables) / (64 * 256)


def test_pack_codes_bit_order():
    """Little-endian bit stream, least significant bit of each code first (FORMAT.md)."""
    from lrmath.kashin.format import pack_codes, unpack_codes

    assert pack_codes(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    # 3 bits: 5 = 101 and 3 = 011 -> stream 1,0,1, 1,1,0 -> byte 0b011101
    assert pack_codes(np.array([5, 3], np.uint8), 3).tolist() == [0b011101]
    c = np.random.default_rng(1).integers(0, 8, 37).astype(np.uint8)
    np.testing.assert_array_equal(unpack_codes(pack_codes(c, 3), 3, 37), c)


def test_num_orders_is_the_catalan_number_of_the_enumeration():
    from lrmath.runlora import num_orders, orders

    for k in range(1, 8):
        assert num_orders(k) == len(orders(list(range(2, k + 3))))
    assert num_orders(0) == 0
    assert num_orders(30) == 1002242216651368  # C(29), without enumerating
