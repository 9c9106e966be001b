"""RunLoRA math core: chain model, generated graph space, exact costs, planner.

Oracles are written here: naive dense LoRA formulas, a brute-force chain-cost recursion,
products read off the paper's variant list by hand, brute-force minima over all pairs.
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrmath.errors import DTypeError, RankError, ShapeError
from lrmath.runlora import (PAPER_BACKWARD, PAPER_FORWARD, CountingOps, best_order, graph_space, matmul_flops,
                            orders, paper_graphs, peft_pair, plan, run_backward, run_forward, run_pair)
from lrmath.runlora.costs import M, N, R, T
from lrmath.runlora.execute import ArrayOps
from lrmath.testing import assert_close, tolerance

FLAGS = [dict(), dict(x_grad=False), dict(bias=True, dropout=True, w_grad=True), dict(x_grad=False, dropout=True)]


# ----------------------------------------------------------------------------- oracles
def reference(X, W, A, B, dY, s, b=None, K=None):
    """Naive dense LoRA forward and gradients (issue's notation)."""
    Xd = X * K if K is not None else X
    Y = X @ W + s * ((Xd @ A) @ B)
    if b is not None:
        Y = Y + b
    g = {
        "dA": s * (Xd.T @ dY @ B.T),
        "dB": s * (A.T @ Xd.T @ dY),
        "dX": dY @ W.T + (K if K is not None else 1.0) * (s * (dY @ B.T @ A.T)),
        "dW": X.T @ dY,
        "db": dY.sum(axis=0),
    }
    return Y, g


def make_inputs(t, m, n, r, seed=0, dtype=np.float64):
    g = np.random.default_rng(seed)
    d = {k: g.standard_normal(s).astype(dtype) for k, s in
         dict(X=(t, m), W=(m, n), A=(m, r), B=(r, n), dY=(t, n), b=(n,)).items()}
    d["K"] = g.random((t, m)) > 0.3
    return d


def expected_outputs(flags):
    out = {"dA", "dB"}
    if flags.get("x_grad", True):
        out.add("dX")
    if flags.get("w_grad"):
        out.add("dW")
    if flags.get("bias"):
        out.add("db")
    return out


def first_forward(space, bwd):
    return next(f for f in space.forward if bwd.saved <= f.computes)


# ----------------------------------------------------------------------------- chain
def _brute_cost(dims, i, j):
    if i == j:
        return [0]
    out = []
    for k in range(i, j):
        for a in _brute_cost(dims, i, k):
            for c in _brute_cost(dims, k + 1, j):
                out.append(a + c + 2 * dims[i] * dims[k + 1] * dims[j + 1])
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_chain_counts_are_catalan(k):
    dims = list(range(2, k + 3))
    assert len(orders(dims)) == math.comb(2 * (k - 1), k - 1) // k


@given(st.lists(st.integers(1, 30), min_size=2, max_size=6))
def test_chain_costs_match_brute_force(dims):
    got = sorted(o.flops for o in orders(dims))
    assert got == sorted(_brute_cost(dims, 0, len(dims) - 2))
    assert best_order(dims).flops == min(got)


def test_chain_order_fields_by_executing():
    dims = [3, 5, 2, 7]
    mats = [np.random.default_rng(i).standard_normal((dims[i], dims[i + 1])) for i in range(3)]
    for o in orders(dims, names=["P", "Q", "S"]):
        counted, shapes = [0], []

        def ev(tree):
            if isinstance(tree, int):
                return mats[tree]
            a, b = ev(tree[0]), ev(tree[1])
            counted[0] += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            shapes.append((a.shape[0], b.shape[1]))
            return a @ b

        res = ev(o.tree)
        assert np.allclose(res, mats[0] @ mats[1] @ mats[2])
        assert o.flops == counted[0]
        assert list(o.intermediates) == shapes[:-1]
        assert o.expr.count("(") == 2 and set(o.expr.replace("(", " ").replace(")", " ").split()) == {"P", "Q", "S"}
    assert matmul_flops(2, 3, 4) == 48
    with pytest.raises(ShapeError):
        orders([4])
    with pytest.raises(ShapeError):
        orders([4, 0, 3])


# ----------------------------------------------------------------------------- space
def test_space_sizes_and_dedup():
    # the number of distinct graphs the generator produces (regression anchor; see graphs.py)
    expected = {(): (41, 6480), ("x_grad",): (41, 180)}
    sp = graph_space()
    assert (len(sp.forward), len(sp.backward)) == expected[()]
    sp0 = graph_space(x_grad=False)
    assert (len(sp0.forward), len(sp0.backward)) == expected[("x_grad",)]
    for space in (sp, sp0):
        for pool in (space.forward, space.backward):
            sigs = [g.signature for g in pool]
            assert len(set(sigs)) == len(sigs)
    # dropout removes the merged forms (W + sAB cannot see a dropped input)
    spd = graph_space(dropout=True)
    assert len(spd.forward) == 34 and all(g.choices["form"] == "split" for g in spd.forward)
    # orders generated per chain: 2 for every three-factor chain
    assert {g.choices["order"] for g in sp.forward if g.choices["form"] == "split"} == {"((X A) B)", "(X (A B))"}
    assert {g.choices["dA"]["order"] for g in sp.backward} == {"((Xᵀ dY) Bᵀ)", "(Xᵀ (dY Bᵀ))"}


def _products(g):
    return Counter((frozenset(st.shape), st.inner_dim) for st in g.steps if st.op in ("mm", "addmm"))


def _p(rows, inner, cols):
    return (frozenset((rows, cols)), inner)


# products of the paper's variants, read off its list (U = A, V = B); Z are intermediates
PAPER_PRODUCTS = {
    "backward1": [_p("t", "n", "r"), _p("m", "t", "r"), _p("t", "m", "r"), _p("r", "t", "n"), _p("t", "n", "m"),
                  _p("t", "r", "m")],
    "backward2": [_p("t", "n", "r"), _p("m", "t", "r"), _p("m", "t", "n"), _p("r", "m", "n"), _p("t", "n", "m"),
                  _p("t", "r", "m")],
    "backward3": [_p("t", "n", "r"), _p("m", "t", "n"), _p("m", "n", "r"), _p("r", "m", "n"), _p("t", "n", "m"),
                  _p("t", "r", "m")],
    "backward4": [_p("m", "r", "n"), _p("m", "t", "n"), _p("m", "n", "r"), _p("r", "m", "n"), _p("t", "n", "m")],
    "backward5": [_p("t", "n", "r"), _p("t", "m", "r"), _p("m", "r", "n"), _p("m", "t", "r"), _p("r", "t", "n"),
                  _p("t", "n", "m")],
    "backward6": [_p("m", "t", "n"), _p("r", "m", "t"), _p("t", "n", "r"), _p("m", "n", "r"), _p("r", "t", "n"),
                  _p("t", "n", "m"), _p("t", "r", "m")],
    "backward7": [_p("m", "t", "n"), _p("r", "m", "t"), _p("n", "r", "m"), _p("m", "n", "r"), _p("r", "t", "n"),
                  _p("t", "n", "m")],
    "backward8": [_p("t", "n", "r"), _p("m", "t", "n"), _p("n", "r", "m"), _p("m", "t", "r"), _p("r", "m", "n"),
                  _p("t", "n", "m")],
}
FORWARD_PRODUCTS = {
    "forward1": [_p("t", "m", "n"), _p("t", "m", "r"), _p("t", "r", "n")],
    "forward2": [_p("m", "r", "n"), _p("t", "m", "n")],
    "forward3": [_p("t", "m", "n"), _p("t", "m", "r"), _p("t", "r", "n")],
    "forward4": [_p("m", "r", "n"), _p("t", "m", "n")],
}


def test_paper_names_map_into_the_space():
    sp = graph_space()
    fwd = {name: paper_graphs(sp, name, "backward1")[0] for name in PAPER_FORWARD}
    bwd = {name: paper_graphs(sp, "forward1", name)[1] for name in PAPER_BACKWARD}
    # 4 forward names are 3 graphs (forward4 = forward2 with another kernel call), 8 backward are 8
    assert len({g.name for g in fwd.values()}) == 3 and fwd["forward2"] is fwd["forward4"]
    assert len({g.name for g in bwd.values()}) == 8
    for name, g in fwd.items():
        assert _products(g) == Counter(FORWARD_PRODUCTS[name]), name
    assert fwd["forward1"].steps[-1].op == "addmm" and fwd["forward1"].steps[-1].args[0][0] == "%0"  # XW first
    for name, g in bwd.items():
        assert _products(g) == Counter(PAPER_PRODUCTS[name]), name
        assert not g.saved and "X" in g.inputs
    # "fused" = forward1 + backward1 with XA saved instead of recomputed
    f, b = paper_graphs(sp, "forward1", "backward1+saved")
    assert b.saved and _products(b) == Counter(PAPER_PRODUCTS["backward1"]) - Counter([_p("t", "m", "r")])


def test_peft_pair_costs_by_hand():
    sp = graph_space()
    f, b = peft_pair(sp)
    # PEFT: XW, XA, (XA)B, scale, add;  backward: s·dY, Z = (s dY)Bᵀ, XᵀZ, (XA)ᵀ(s dY), dY Wᵀ, Z Aᵀ, add
    assert f.flops == 2 * T * M * N + 2 * T * M * R + 2 * T * R * N + T * N + T * N
    assert b.flops == T * N + 2 * T * N * R + 2 * M * T * R + 2 * R * T * N + 2 * T * N * M + 2 * T * R * M + T * M
    assert sp.saved_bytes(f, b, 4) == 4 * (T * M + T * R)  # X and XA
    spd = graph_space(dropout=True)
    f, b = peft_pair(spd)
    assert spd.saved_bytes(f, b, 2) == 2 * (T * M + T * R) + T * M  # X_d, X_d A (bf16) and the bool mask


# ----------------------------------------------------------------------------- execution and counts
@pytest.mark.parametrize("flags", FLAGS, ids=str)
def test_every_graph_matches_reference_and_counts(flags):
    """Every generated graph (forward and backward) against the dense oracle, with exact counts."""
    sp = graph_space(**flags)
    t, m, n, r = 5, 4, 6, 2
    d = make_inputs(t, m, n, r, seed=1)
    s = 0.7
    Y0, G0 = reference(d["X"], d["W"], d["A"], d["B"], d["dY"], s, d["b"] if flags.get("bias") else None,
                       d["K"] if flags.get("dropout") else None)
    want = expected_outputs(flags)
    # all graphs for the default flags and the small spaces; every 10th backward otherwise
    stride = 1 if len(sp.backward) < 1000 or not flags else 10
    keeps = {}
    for f in sp.forward:
        ops = CountingOps(ArrayOps(np, s))
        Y, saved = run_forward(f, d, s, keep=f.computes, ops=ops)
        assert_close(Y, Y0, n=m, depth=3, err_msg=f.name)
        assert ops.flops == f.flops(t, m, n, r), f.name
        assert ops.bytes == f.bytes_moved(8)(t, m, n, r), f.name
        keeps[f.name] = saved
    rtol = tolerance("float64", max(t, n), depth=3)
    for b in sp.backward[::stride]:
        f = first_forward(sp, b)
        ops = CountingOps(ArrayOps(np, s))
        g = run_backward(b, d, keeps[f.name], s, ops=ops)
        assert set(g) == want, b.name
        for k in g:  # assert_close's rule, inlined for speed over thousands of graphs
            ref = G0[k]
            assert g[k].shape == ref.shape and g[k].dtype == ref.dtype, (b.name, k)
            assert np.all(np.abs(g[k] - ref) <= rtol * np.max(np.abs(ref)) + rtol * np.abs(ref)), (b.name, k)
        assert ops.flops == b.flops(t, m, n, r), b.name
        assert ops.bytes == b.bytes_moved(8)(t, m, n, r), b.name


@settings(max_examples=20)
@given(t=st.integers(1, 9), m=st.integers(1, 9), n=st.integers(1, 9), r=st.integers(1, 9),
       flags=st.sampled_from(FLAGS), pick=st.integers(0, 10**6), seed=st.integers(0, 2**31))
def test_random_shapes_and_graphs(t, m, n, r, flags, pick, seed):
    """Random shapes (t = 1 and r = 1 included), random graph pairs: values and counts."""
    r = min(r, m, n)
    sp = graph_space(**flags)
    b = sp.backward[pick % len(sp.backward)]
    fs = [f for f in sp.forward if b.saved <= f.computes]
    f = fs[pick % len(fs)]
    d = make_inputs(t, m, n, r, seed=seed)
    s = 1.0 / r
    Y, g, (fo, bo) = run_pair(f, b, d, s, count=True)
    Y0, G0 = reference(d["X"], d["W"], d["A"], d["B"], d["dY"], s, d["b"] if flags.get("bias") else None,
                       d["K"] if flags.get("dropout") else None)
    assert_close(Y, Y0, n=max(m, r), depth=3)
    for k in g:
        assert_close(g[k], G0[k], n=max(t, n, r), depth=3, err_msg=k)
    assert fo.flops == f.flops(t, m, n, r) and bo.flops == b.flops(t, m, n, r)
    assert fo.bytes + bo.bytes == (f.bytes_moved(8) + b.bytes_moved(8))(t, m, n, r)


def test_costs_are_affine_in_t():
    sp = graph_space(bias=True, dropout=True, w_grad=True)
    for g in sp.forward + sp.backward[::397]:
        for poly in (g.flops, g.bytes_moved(2)):
            assert poly.degree_in("t") <= 1
            # exact line through counted values at three token counts
            vals = [poly(t, 7, 5, 3) for t in (1, 4, 11)]
            assert Fraction(vals[1] - vals[0], 3) == Fraction(vals[2] - vals[1], 7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_executor_on_other_backends(xp, dtype):
    """The same graphs through the array API (array-api-strict, torch, CuPy when present)."""
    sp = graph_space()
    d = make_inputs(6, 5, 4, 3, seed=2, dtype=np.dtype(dtype))
    Y0, G0 = reference(d["X"], d["W"], d["A"], d["B"], d["dY"], 0.5)
    dx = {k: xp.asarray(v) for k, v in d.items()}
    for names in [("forward1", "backward1+saved"), ("forward2", "backward4"), ("forward3", "backward8")]:
        f, b = paper_graphs(sp, *names)
        Y, g, _ = run_pair(f, b, dx, 0.5)
        assert_close(np.asarray(Y), Y0.astype(dtype), n=5, depth=3, check_namespace=False)
        for k in g:
            assert_close(np.asarray(g[k]), G0[k].astype(dtype), n=6, depth=3, check_namespace=False)


# ----------------------------------------------------------------------------- planner
class _Brute:
    """Brute-force minima over every compatible (forward, backward) pair at a token count.

    Within a group of backward graphs that take the same activations from the forward, any
    compatible forward can be combined with any backward, so the minimum of a sum over the
    product set is the sum of the two minima (exact, integer arithmetic).
    """

    def __init__(self, sp, m, n, r, item=4):
        self.F = [(f.flops.affine(m, n, r), f.computes) for f in sp.forward]
        self.groups = {}
        for b in sp.backward:
            sv = sp.saved_bytes(sp.forward[0], b, item).affine(m, n, r)
            self.groups.setdefault(b.saved, []).append((b.flops.affine(m, n, r), sv))

    def min_flops(self, t, budget=None):
        best = None
        for saved, bs in self.groups.items():
            fs = [a + b * t for (a, b), comp in self.F if saved <= comp]
            bb = [a + b * t for (a, b), (sa, sb) in bs if budget is None or sa + sb * t <= budget]
            if fs and bb:
                v = min(fs) + min(bb)
                best = v if best is None else min(best, v)
        return best

    def min_saved(self, t):
        return min(sa + sb * t for saved, bs in self.groups.items() for _, (sa, sb) in bs
                   if any(saved <= comp for _, comp in self.F))


@pytest.mark.parametrize("mnr", [(64, 48, 8), (40, 40, 40), (16, 96, 3)])
def test_plan_envelope_is_the_brute_force_minimum(mnr):
    m, n, r = mnr
    p = plan(m, n, r)
    brute = _Brute(graph_space(), m, n, r)
    ts = {1, 2, 3, 1000, 10**6}
    for seg in p.segments:
        ts.update({seg.t_from, seg.t_from + 1} | ({seg.t_to, max(seg.t_to - 1, 1)} if seg.t_to else set()))
    for t in sorted(ts):
        best = brute.min_flops(t)
        assert p.select(t).poly.flops(t, m, n, r) == best, t
    t = sorted(ts)[len(ts) // 2]
    assert plan(m, n, r, tokens=t).choice.poly.flops(t, m, n, r) == brute.min_flops(t)
    # breakpoints are where the choice changes, and exact: the lines cross in (t_from - 1, t_from]
    for prev, seg in zip(p.segments, p.segments[1:]):
        assert prev.t_to + 1 == seg.t_from
        if seg.crossing is not None:
            # (a crossing at an integer is a tie there; the secondary key decides that t)
            assert seg.t_from - 1 <= seg.crossing <= seg.t_from
    assert "Pareto front" in repr(p) and "PEFT" in repr(p)


def test_plan_memory_objective_and_budget():
    m, n, r, t = 96, 64, 8, 50
    brute = _Brute(graph_space(), m, n, r)
    pm = plan(m, n, r, tokens=t, objective="memory")
    min_saved = brute.min_saved(t)
    assert pm.choice.poly.saved_bytes(t, m, n, r) == min_saved
    budget = min_saved + 10
    pb = plan(m, n, r, tokens=t, memory_budget=budget)
    assert pb.choice.poly.saved_bytes(t, m, n, r) <= budget
    assert pb.choice.poly.flops(t, m, n, r) == brute.min_flops(t, budget)
    with pytest.raises(ValueError, match="saves at most"):
        plan(m, n, r, tokens=t, memory_budget=100)
    # budget over all t: feasible only up to some t, choices respect it
    pall = plan(m, n, r, memory_budget=budget)
    for seg in pall.segments:
        tt = seg.t_to or seg.t_from
        assert seg.choice.saved_bytes(tt, m, n, r) <= budget


def test_plan_gain_over_peft_and_paper():
    p = plan(4096, 4096, 8, tokens=4096)
    g = p.gain_over_peft()
    assert g["flops"] >= 1 and g["saved_bytes"] >= 1 and g["bytes_moved"] > 1
    assert p.choice.poly.flops(4096, 4096, 4096, 8) <= p.paper_best.flops(4096, 4096, 4096, 8)
    d = p.to_dict()
    assert d["chosen"] == p.choice.name and d["front"]


def test_plan_bad_input():
    with pytest.raises(RankError, match="min"):
        plan(8, 4, 5)
    with pytest.raises(RankError):
        plan(8, 4, 0)
    with pytest.raises(ValueError):
        plan(0, 4, 1)
    with pytest.raises(ValueError):
        plan(8, 4, 2, tokens=0)
    with pytest.raises(ValueError, match="objective"):
        plan(8, 4, 2, objective="speed")
    with pytest.raises(DTypeError):
        plan(8, 4, 2, dtype="int8")


def test_time_objective_caches_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("LRMATH_CACHE_DIR", str(tmp_path))
    p = plan(24, 16, 4, tokens=32, objective="time", backend="numpy")
    assert p.measured and p.choice.name in p.measured
    assert (tmp_path / "runlora" / "autotune.json").exists()
    import lrmath.runlora.autotune as at

    def boom(*a, **k):
        raise AssertionError("should have been cached")

    monkeypatch.setattr(at, "measure_pair", boom)
    q = plan(24, 16, 4, tokens=32, objective="time", backend="numpy")
    assert q.choice.name == p.choice.name


def test_cli_plan(capsys):
    import json

    from lrmath.cli import main

    assert main(["plan", "64", "48", "4", "--tokens", "100", "--show-graphs"]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "forward F" in out and "backward B" in out
    assert main(["--json", "plan", "64", "48", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["segments"] and data["m"] == 64
    # r > min(m, n) is a clear error, not a plan
    assert main(["plan", "8", "4", "5"]) != 0
    assert "min(m, n)" in capsys.readouterr().err


def test_select_reports_numbers_at_t_counted_from_execution():
    """``plan.select(t)`` carries the pair's FLOPs, saved and moved bytes as numbers at t (like
    opt_einsum's PathInfo); the FLOPs equal those counted while executing the pair."""
    m, n, r, t = 24, 40, 4, 33
    p = plan(m, n, r)
    c = p.select(t)
    assert all(isinstance(v, int) for v in (c.flops, c.saved_bytes, c.bytes_moved))
    assert (c.flops, c.saved_bytes, c.bytes_moved) == tuple(
        int(c.poly.at(t, m, n, r)[k]) for k in ("flops", "saved_bytes", "bytes_moved"))
    d = make_inputs(t, m, n, r, seed=0)
    _, _, (fo, bo) = run_pair(c.forward, c.backward, d, 0.25, count=True)
    assert fo.flops + bo.flops == c.flops
    assert f"flops={c.flops:,}" in repr(c) and c.name == f"{c.forward.name}/{c.backward.name}"
    assert str(c.poly.flops).count("t") >= 1  # the closed form is still there
