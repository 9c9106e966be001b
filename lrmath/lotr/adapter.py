"""LoTR adapter math: forward, gradients, and the association order chosen by FLOPs.

Layout (NumPy reference; the torch layer uses nn.Linear's (out, in), see ``lrmath.torch.lotr``)::

    Y_l = X_l W_l + s X_l A G_l B^T          (LoTR, arXiv 2402.01376, eq. 4)

    X_l (t, m) input of layer l      W_l (m, n) frozen weight     dY_l (t, n)
    A (m, r_a), B (n, r_b) shared    G_l (r_a, r_b) core of layer l

Gradients (A and B accumulate over the L layers that share them)::

    dX_l = dY_l W_l^T + s dY_l B G_l^T A^T
    dG_l = s A^T X_l^T dY_l B
    dA   = s sum_l X_l^T dY_l B G_l^T
    dB   = s sum_l dY_l^T X_l A G_l

Each right-hand side is a chain of four factors; which parenthesisation is cheapest depends
on ``t, m, n, r_a, r_b``, and products repeat across chains (``X_l A`` from the forward is
reused by ``dG_l`` and ``dB``; ``dY_l B`` serves ``dX_l``, ``dA`` and ``dG_l``). The cost of
one order of one chain comes from the RunLoRA chain cost model
(:mod:`lrmath.runlora.chain`: ``orders(dims)`` enumerates the orders, ``matmul_flops`` prices
one product); this module composes it across the five chains of a training step:

* a product is identified by the factors it multiplies (a transposed product is the same
  product), so an intermediate computed once is paid once across chains;
* products of factors shared by all layers (``A``, ``B`` and, with ``shared_input=True`` as for
  the query/key/value projections of one block, ``X``) are paid once per step, the rest
  ``L`` times;
* with a shared input, ``dA = X^T (sum_l dY_l B G_l^T)`` multiplies by ``X^T`` once after the
  sum over layers (when the order ends with that product).

:func:`plan` searches every combination of orders of the five chains (``5^5`` for
four-factor chains) for the fewest FLOPs (ties: less saved memory) and returns a
:class:`LoTRPlan`; :func:`forward` and :func:`backward` execute any plan (intermediates of
the forward that the backward reuses are passed on in ``saved``). Element-wise work
(scaling by ``s``, additions of the sums) is O(t n) and not counted, as in RunLoRA.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from ..backend import array_namespace, check_array, check_positive_int, public
from ..errors import BackendUnavailableError, OptionError, RankError, ShapeError

__all__ = ["CHAINS", "AUTOGRAD_ORDERS", "LoTRPlan", "ChainChoice", "plan", "forward", "backward", "LoTRGrads", "chain_orders"]

# factor symbols with a transpose flag; shapes: X (t, m), A (m, ra), G (ra, rb), B (n, rb), dY (t, n)
_SHAPES = {"X": ("t", "m"), "A": ("m", "ra"), "G": ("ra", "rb"), "B": ("n", "rb"), "dY": ("t", "n")}

#: the five per-layer chains of one LoTR training step, as (symbol, transposed) factors
CHAINS: dict[str, tuple[tuple[str, bool], ...]] = {
    "fwd": (("X", False), ("A", False), ("G", False), ("B", True)),   # X A G B^T        -> (t, n)
    "dX": (("dY", False), ("B", False), ("G", True), ("A", True)),    # dY B G^T A^T     -> (t, m)
    "dA": (("X", True), ("dY", False), ("B", False), ("G", True)),    # X^T dY B G^T     -> (m, ra)
    "dB": (("dY", True), ("X", False), ("A", False), ("G", False)),   # dY^T X A G       -> (n, rb)
    "dG": (("A", True), ("X", True), ("dY", False), ("B", False)),    # A^T X^T dY B     -> (ra, rb)
}
_BACKWARD = ("dX", "dA", "dB", "dG")

#: the orders plain autograd runs for ``((X A) G) B^T``: its backward forms ``dY B``, then
#: ``(dY B) G^T`` (reused by dX and dA), ``dY^T (X A G)`` and ``(X A)^T (dY B)``
AUTOGRAD_ORDERS = {
    "fwd": (((0, 1), 2), 3),
    "dX": (((0, 1), 2), 3),
    "dA": (0, ((1, 2), 3)),
    "dB": (0, ((1, 2), 3)),
    "dG": ((0, 1), (2, 3)),
}


def _chain_module():
    try:
        from ..runlora import chain
    except ImportError as exc:  # pragma: no cover - RunLoRA ships with lrmath
        raise BackendUnavailableError(f"lrmath.lotr needs the RunLoRA chain cost model (lrmath.runlora.chain): {exc}") from exc
    return chain


def _dims_of(factors, size) -> list[int]:
    """Chain dims ``[d0, d1, ..., dk]``: factor i is (d_i, d_{i+1})."""
    out = []
    for i, (sym, tr) in enumerate(factors):
        r, c = _SHAPES[sym]
        if tr:
            r, c = c, r
        if i == 0:
            out.append(size[r])
        out.append(size[c])
    return out


def _key(factors) -> tuple:
    """Canonical identity of the product of ``factors``: it or its transpose, whichever sorts first."""
    k = tuple(factors)
    kt = tuple((s, not t) for s, t in reversed(k))
    return min(k, kt)


def _is_transposed(factors) -> bool:
    k = tuple(factors)
    return _key(k) != k


def _leaves(tree) -> list[int]:
    if isinstance(tree, int):
        return [tree]
    if len(tree) == 1:
        return _leaves(tree[0])
    return _leaves(tree[0]) + _leaves(tree[1])


def _norm_tree(tree):
    """Normalise chain.py's nested tuples to ints and binary pairs."""
    if isinstance(tree, int):
        return tree
    if len(tree) == 1:
        return _norm_tree(tree[0])
    if len(tree) != 2:
        raise OptionError(f"expected a binary tree of factor indices, got {tree!r}")
    return (_norm_tree(tree[0]), _norm_tree(tree[1]))


def _expr(tree, factors) -> str:
    def name(i):
        s, t = factors[i]
        return s + ("ᵀ" if t else "")

    def walk(t, top=True):
        if isinstance(t, int):
            return name(t)
        s = f"{walk(t[0], False)}·{walk(t[1], False)}"
        return s if top else f"({s})"

    return walk(tree)


@public
@functools.lru_cache(maxsize=256)
def chain_orders(dims: tuple[int, ...]) -> tuple:
    """Every association order of a chain with ``dims`` (from ``lrmath.runlora.chain.orders``).

    Returns a tuple of ``(tree, flops)`` with trees normalised to binary tuples of ints.
    """
    chain = _chain_module()
    return tuple((_norm_tree(o.tree), int(o.flops)) for o in chain.orders(list(dims)))


# ----------------------------------------------------------------------------- plan
@public(methods=False)
@dataclass(frozen=True)
class ChainChoice:
    """The order chosen for one chain: tree of factor indices, readable expression, own FLOPs."""

    chain: str
    tree: Any
    expr: str
    flops_alone: int  # per layer, if computed with no reuse


@public(methods=False)
@dataclass
class LoTRPlan:
    """Association orders for the forward (and backward) of ``L`` LoTR layers; ``repr`` is a table.

    Attributes
    ----------
    choices : dict[str, ChainChoice]
        Order per chain (``fwd``; plus ``dX``, ``dA``, ``dB``, ``dG`` when ``backward``).
    flops : int
        FLOPs of the adapter branch for one step over all ``L`` layers, with every shared or
        repeated product paid once (what :func:`forward` + :func:`backward` execute).
    flops_no_reuse : int
        The same chains each in their own cheapest order, nothing reused (the naive bound).
    base_flops : int
        The frozen ``X W`` (and ``dY W^T``) products, for scale.
    saved : tuple of str
        Forward intermediates that the backward reuses (kept for backward).
    saved_elements : int
        Their total size in elements over all layers.
    candidates : int
        Combinations searched.
    """

    sizes: dict
    L: int
    shared_input: bool
    backward: bool
    choices: dict
    flops: int
    flops_no_reuse: int
    base_flops: int
    saved: tuple = ()
    saved_elements: int = 0
    candidates: int = 0
    ops: tuple = field(default=(), repr=False)

    def to_dict(self) -> dict:
        return {
            "sizes": dict(self.sizes), "L": self.L, "shared_input": self.shared_input, "backward": self.backward,
            "orders": {k: c.expr for k, c in self.choices.items()}, "flops": self.flops,
            "flops_no_reuse": self.flops_no_reuse, "base_flops": self.base_flops, "saved": list(self.saved),
            "saved_elements": self.saved_elements, "candidates": self.candidates,
        }

    def __repr__(self) -> str:
        s = self.sizes
        lines = [
            f"LoTRPlan(t={s['t']}, m={s['m']}, n={s['n']}, r=({s['ra']}, {s['rb']}), L={self.L}, "
            f"shared_input={self.shared_input}, backward={self.backward})",
            f"  {'chain':5} | {'order':28} | flops/layer alone",
        ]
        for name, c in self.choices.items():
            lines.append(f"  {name:5} | {c.expr:28} | {c.flops_alone:,}")
        lines += [
            f"  adapter flops/step : {self.flops:,} (each chain alone, no reuse: {self.flops_no_reuse:,})",
            f"  frozen base flops  : {self.base_flops:,} (adapter = {self.flops / max(self.base_flops, 1):.1%} of it)",
            f"  kept for backward  : {', '.join(self.saved) or '-'} ({self.saved_elements:,} elements)",
            f"  combinations searched: {self.candidates:,}",
        ]
        return "\n".join(lines)


def _op_name(key) -> str:
    """Readable name of a product, in the orientation with fewer transposed factors."""
    if key and key[0] == "dA-root":
        return "Xᵀ·(Σ dY·B·Gᵀ)"
    kt = tuple((s, not t) for s, t in reversed(key))
    k = key if sum(t for _, t in key) <= sum(t for _, t in kt) else kt
    return "·".join(s + ("ᵀ" if t else "") for s, t in k)


def _shared_syms(shared_input: bool) -> frozenset:
    return frozenset({"A", "B", "X"} if shared_input else {"A", "B"})


@functools.lru_cache(maxsize=4096)
def _tree_nodes(factors: tuple, tree) -> tuple:
    """Internal nodes of ``tree`` in pre-order: ``(key, lo, mid, hi, size)``; ``size`` counts the
    internal nodes of the node's subtree (to skip it when its product is already known)."""
    out = []

    def walk(t):
        if isinstance(t, int):
            return 0
        pos = len(out)
        lv = _leaves(t)
        lo, hi, mid = lv[0], lv[-1] + 1, _leaves(t[1])[0]
        out.append(None)
        size = 1 + walk(t[0]) + walk(t[1])
        out[pos] = (_key(factors[lo:hi]), lo, mid, hi, size)
        return size

    walk(tree)
    return tuple(out)


def _simulate(trees: dict, size: dict, shared: frozenset, pull_out: bool, matmul_flops) -> tuple[dict, set]:
    """Replay what :func:`forward` + :func:`backward` execute for one layer.

    Chains are evaluated in the executor's order (fwd, dX, dA, dB, dG); a product whose key is
    already known (from this layer, or from the shared memo) is not recomputed and its subtree
    is skipped. Returns ``{key: (flops, once)}`` of the products computed and the set of
    forward keys the backward reuses.
    """
    done: dict = {}
    fwd_keys: set = set()
    reused: set = set()
    for nm, tree in trees.items():
        fac = CHAINS[nm]
        dims = _dims_of(fac, size)
        if nm == "dA" and pull_out:
            fac, dims, tree = fac[1:], dims[1:], _shift(tree[1], -1)
            done[("dA-root",)] = (matmul_flops(size["m"], size["t"], size["ra"]), True)
        nodes = _tree_nodes(fac, tree)
        i = 0
        while i < len(nodes):
            k, lo, mid, hi, sz = nodes[i]
            if k in done:
                if nm != "fwd" and k in fwd_keys:
                    reused.add(k)
                i += sz
                continue
            done[k] = (matmul_flops(dims[lo], dims[mid], dims[hi]), {s for s, _ in k} <= shared)
            if nm == "fwd":
                fwd_keys.add(k)
            i += 1
    return done, reused


@public
def plan(t: int, m: int, n: int, r: int, L: int = 1, *, r_b: int | None = None,
         shared_input: bool = False, backward: bool = True, orders: dict | None = None) -> LoTRPlan:
    """Cheapest association orders (by FLOPs) for a LoTR step over ``L`` layers.

    Parameters
    ----------
    t : int
        Tokens per layer (rows of ``X_l``).
    m, n : int
        Layer shape: ``W_l`` is (m, n) (torch's (out, in) = (n, m)).
    r : int
        Rank ``r_a`` of ``A`` (and ``r_b`` unless given).
    L : int
        Layers sharing ``A`` and ``B``.
    shared_input : bool
        All layers read the same ``X`` (e.g. q/k/v of one block): ``X A`` is computed once.
    backward : bool
        Plan the four gradient chains too (training) or only the forward (inference).
    orders : dict, optional
        Fix the order of some chains instead of searching: ``{chain: tree}`` with a tree of
        factor indices (e.g. ``((0, 1), (2, 3))``) or an index into :func:`chain_orders`.

    Returns
    -------
    LoTRPlan
        The cheapest combination (ties: less memory kept for backward, then the first found).
    """
    t, m, n, L = (check_positive_int(v, k) for v, k in ((t, "t"), (m, "m"), (n, "n"), (L, "L")))
    ra = check_positive_int(r, "r")
    rb = ra if r_b is None else check_positive_int(r_b, "r_b")
    if ra > m or rb > n:
        raise RankError(f"ranks (r_a, r_b) = ({ra}, {rb}) exceed the layer shape (m, n) = ({m}, {n})")
    fixed = ()
    if orders:
        names = ("fwd", *_BACKWARD) if backward else ("fwd",)
        size = {"t": t, "m": m, "n": n, "ra": ra, "rb": rb}
        items = []
        for nm, tr in orders.items():
            if nm not in names:
                raise OptionError(f"unknown chain {nm!r}; chains of this plan: {names}")
            opts = chain_orders(tuple(_dims_of(CHAINS[nm], size)))
            if isinstance(tr, int):
                if not 0 <= tr < len(opts):
                    raise OptionError(f"order index {tr} out of range for chain {nm!r} ({len(opts)} orders)")
                tr = opts[tr][0]
            tr = _norm_tree(tr)
            if tr not in [o[0] for o in opts]:
                raise OptionError(f"{tr!r} is not an order of the {len(CHAINS[nm])}-factor chain {nm!r}")
            items.append((nm, tr))
        fixed = tuple(sorted(items, key=lambda kv: kv[0]))
    return _plan_cached(t, m, n, ra, rb, L, bool(shared_input), bool(backward), fixed)


def _combo_cost(trees, size, shared, shared_input, backward, L, matmul_flops):
    pull = shared_input and backward and isinstance(trees["dA"], tuple) and trees["dA"][0] == 0
    done, reused = _simulate(trees, size, shared, pull, matmul_flops)
    total = sum(f * (1 if once else L) for f, once in done.values())
    saved_el = sum(_numel(k, size) * (1 if {s for s, _ in k} <= shared else L) for k in reused)
    return total, saved_el, done, reused


@functools.lru_cache(maxsize=256)
def _combo_table(m, n, ra, rb, L, shared_input, backward, fixed):
    """Costs of every combination of chain orders as affine functions of t.

    Every product in the five chains has t in at most one of its three dimensions, so the
    FLOPs and the saved elements of a combination are ``a t + b``; evaluating at t = 1 and 2
    gives the lines, and any t is then planned by a vectorised argmin (RunLoRA decision:
    the optimum over t is a lower envelope of lines).
    """
    import numpy as np

    chain = _chain_module()
    names = ("fwd", *_BACKWARD) if backward else ("fwd",)
    shared = _shared_syms(shared_input)
    fixed = dict(fixed)
    per_chain = []
    for nm in names:
        opts = chain_orders(tuple(_dims_of(CHAINS[nm], {"t": 1, "m": m, "n": n, "ra": ra, "rb": rb})))
        idx = [i for i, o in enumerate(opts) if nm not in fixed or o[0] == fixed[nm]]
        per_chain.append([opts[i][0] for i in idx])
    combos = list(itertools.product(*[range(len(o)) for o in per_chain]))
    vals = np.zeros((len(combos), 2, 2), dtype=np.float64)
    for ci, combo in enumerate(combos):
        trees = {nm: per_chain[i][combo[i]] for i, nm in enumerate(names)}
        for j, t in enumerate((1, 2)):
            size = {"t": t, "m": m, "n": n, "ra": ra, "rb": rb}
            tot, sav, _, _ = _combo_cost(trees, size, shared, shared_input, backward, L, chain.matmul_flops)
            vals[ci, j] = (tot, sav)
    slope = vals[:, 1, :] - vals[:, 0, :]
    icpt = vals[:, 0, :] - slope
    return names, per_chain, combos, slope, icpt


@functools.lru_cache(maxsize=1024)
def _plan_cached(t, m, n, ra, rb, L, shared_input, backward, fixed=()) -> LoTRPlan:
    import numpy as np

    chain = _chain_module()
    size = {"t": t, "m": m, "n": n, "ra": ra, "rb": rb}
    shared = _shared_syms(shared_input)
    names, per_chain, combos, slope, icpt = _combo_table(m, n, ra, rb, L, shared_input, backward, fixed)
    cost = slope * t + icpt  # (combos, 2): flops, saved elements (exact integers in float64 here)
    order = np.lexsort((np.arange(len(combos)), np.round(cost[:, 1]), np.round(cost[:, 0])))
    combo = combos[int(order[0])]
    trees = {nm: per_chain[i][combo[i]] for i, nm in enumerate(names)}
    total, saved_el, done, reused = _combo_cost(trees, size, shared, shared_input, backward, L, chain.matmul_flops)
    choices = {}
    no_reuse = 0
    for nm in names:
        opts = chain_orders(tuple(_dims_of(CHAINS[nm], size)))
        fl = next(f for tr, f in opts if tr == trees[nm])
        choices[nm] = ChainChoice(nm, trees[nm], _expr(trees[nm], CHAINS[nm]), fl)
        no_reuse += min(o[1] for o in opts) * L
    base = chain.matmul_flops(t, m, n) * L * (2 if backward else 1)
    ops = tuple((_op_name(k), f, "once" if once else f"x{L}") for k, (f, once) in done.items())
    return LoTRPlan(sizes=size, L=L, shared_input=shared_input, backward=backward, choices=choices, flops=int(total),
                    flops_no_reuse=int(no_reuse), base_flops=int(base), saved=tuple(sorted(_op_name(k) for k in reused)),
                    saved_elements=int(saved_el), candidates=len(combos), ops=ops)


def _numel(key, size) -> int:
    first, last = key[0], key[-1]
    r = _SHAPES[first[0]][1 if first[1] else 0]
    c = _SHAPES[last[0]][0 if last[1] else 1]
    return size[r] * size[c]


# ----------------------------------------------------------------------------- execution
@public
@dataclass
class LoTRGrads:
    """Gradients of one LoTR step: ``dX`` (L, t, m) or (t, m) for a shared input, ``dA`` (m, r_a),
    ``dB`` (n, r_b), ``dG`` (L, r_a, r_b)."""

    dX: Any
    dA: Any
    dB: Any
    dG: Any


def _check_inputs(X, A, G, B, W=None, dY=None, validate=True):
    if not validate:  # trusted caller (the torch layer): shapes only
        xp = array_namespace(A)
        L, ra, rb = (int(s) for s in G.shape)
        return xp, L, int(X.shape[-2]), int(A.shape[0]), int(B.shape[0]), ra, rb, X.ndim == 2
    xp = check_array(A, "A", ndim=2)
    check_array(B, "B", ndim=2)
    check_array(G, "G", ndim=3)
    check_array(X, "X", ndim=(2, 3))
    array_namespace(X, A, G, B, W, dY)
    L, ra, rb = (int(s) for s in G.shape)
    m, n = int(A.shape[0]), int(B.shape[0])
    if int(A.shape[1]) != ra or int(B.shape[1]) != rb:
        raise ShapeError(f"A {tuple(A.shape)}, G {tuple(G.shape)}, B {tuple(B.shape)} do not chain: "
                         f"need A (m, r_a), G (L, r_a, r_b), B (n, r_b)")
    shared = X.ndim == 2
    if shared:
        t = int(X.shape[0])
        if int(X.shape[1]) != m:
            raise ShapeError(f"X {tuple(X.shape)} must be (t, m) with m = {m} (A is {tuple(A.shape)})")
    else:
        if int(X.shape[0]) != L or int(X.shape[2]) != m:
            raise ShapeError(f"X {tuple(X.shape)} must be (L, t, m) = ({L}, t, {m}) or (t, {m}) for a shared input")
        t = int(X.shape[1])
    if W is not None:
        check_array(W, "W", shape=(L, m, n))
    if dY is not None:
        check_array(dY, "dY", shape=(L, t, n))
    return xp, L, t, m, n, ra, rb, shared


class _Evaluator:
    """Evaluate chain trees with memoised products (a product and its transpose are one entry).

    Memo entries are ``key -> (array, canonical)``: ``canonical`` tells whether the array holds
    the product in the key's orientation or its transpose.
    """

    def __init__(self, xp, matmul, shared_syms):
        self.xp = xp
        self.mm = matmul
        self.shared_syms = shared_syms
        self.shared_memo: dict = {}

    def leaf(self, arrs, sym, tr):
        a = arrs[sym]
        return self.xp.matrix_transpose(a) if tr else a

    def eval(self, tree, factors, arrs, memo):
        xp = self.xp
        shared_syms = self.shared_syms

        def walk(node):
            if node[0] == "leaf":
                _, s, f = node
                a = arrs[s]
                return xp.matrix_transpose(a) if f else a
            _, k, syms, transposed, left, right = node
            book = self.shared_memo if syms <= shared_syms else memo
            if k not in book:
                # a product already known (this chain, another chain, or the forward) is reused;
                # a new one is computed in the orientation this chain needs (so chain results
                # such as Y and dX come out contiguous) and stored with that orientation
                book[k] = (self.mm(walk(left), walk(right)), not transposed)
            v, canonical = book[k]
            return v if canonical != transposed else xp.matrix_transpose(v)

        return walk(_compiled(factors, tree))


@functools.lru_cache(maxsize=4096)
def _compiled(factors: tuple, tree):
    """``tree`` with each node's product key, symbols and orientation precomputed."""
    if isinstance(tree, int):
        s, f = factors[tree]
        return ("leaf", s, f)
    lv = _leaves(tree)
    fac = factors[lv[0]: lv[-1] + 1]
    k = _key(fac)
    return ("node", k, frozenset(s for s, _ in k), _is_transposed(fac),
            _compiled(factors, tree[0]), _compiled(factors, tree[1]))


def _stack(xp, arrs):
    # one layer (the torch layer's case): a view instead of a copy
    return xp.expand_dims(arrs[0], axis=0) if len(arrs) == 1 else xp.stack(arrs, axis=0)


def _resolve_plan(p, xp, X, A, G, B, backward):
    L, ra, rb = (int(s) for s in G.shape)
    t = int(X.shape[-2])
    m, n = int(A.shape[0]), int(B.shape[0])
    if p is None:
        return plan(t, m, n, ra, L, r_b=rb, shared_input=X.ndim == 2, backward=backward)
    want = {"t": t, "m": m, "n": n, "ra": ra, "rb": rb}
    if p.sizes != want or p.L != L or p.shared_input != (X.ndim == 2) or (backward and not p.backward):
        raise ShapeError(f"plan is for sizes {p.sizes}, L={p.L}, shared_input={p.shared_input}, "
                         f"backward={p.backward}; the inputs have {want}, L={L}, shared_input={X.ndim == 2}")
    return p


def _layer_arrays(X, A, G, B, dY, l, shared, scale=1.0):
    # s is folded into the (r_a, r_b) core: every chain but dG carries G once, so no pass
    # over a (t, n) or (t, m) array is spent on scaling; dG is scaled at the end (r_a x r_b)
    Gl = G[l, ...]
    d = {"A": A, "B": B, "G": Gl if scale == 1.0 else Gl * scale, "X": X if shared else X[l, ...]}
    if dY is not None:
        d["dY"] = dY[l, ...]
    return d


@public
def forward(X, A, G, B, *, W=None, scale: float = 1.0, plan: LoTRPlan | None = None,
            matmul: Callable | None = None, return_saved: bool = False, validate: bool = True):
    """``Y_l = X_l W_l + s X_l A G_l B^T`` for every layer, in the plan's order.

    Parameters
    ----------
    X : array (L, t, m), or (t, m) when all layers read the same input
    A : array (m, r_a);  G : array (L, r_a, r_b);  B : array (n, r_b)
    W : array (L, m, n), optional
        Frozen weights; without them only the adapter branch is returned.
    scale : float
        ``s`` (the public LoTR code uses ``1 / r``).
    plan : LoTRPlan, optional
        Defaults to :func:`plan` for these sizes (the training plan when ``return_saved``, so
        the products the backward reuses are kept; the inference plan otherwise).
    matmul : callable, optional
        Replacement for ``xp.matmul`` (e.g. an instrumented one counting FLOPs).
    return_saved : bool
        Also return the intermediates the backward of this plan reuses.
    validate : bool
        Check shapes, dtypes and finiteness (default); ``False`` for trusted hot loops.

    Returns
    -------
    Y : array (L, t, n)
    saved : list of dict (only with ``return_saved``)
    """
    xp, L, t, m, n, ra, rb, shared = _check_inputs(X, A, G, B, W, validate=validate)
    p = _resolve_plan(plan, xp, X, A, G, B, backward=return_saved)
    mm = matmul or xp.matmul
    ev = _Evaluator(xp, mm, _shared_syms(shared))
    keep = set(p.saved)
    outs, saved = [], []
    for l in range(L):
        memo: dict = {}
        arrs = _layer_arrays(X, A, G, B, None, l, shared, scale)
        y = ev.eval(p.choices["fwd"].tree, CHAINS["fwd"], arrs, memo)
        if W is not None:
            y = mm(arrs["X"], W[l, ...]) + y
        outs.append(y)
        saved.append({k: v for k, v in memo.items() if _op_name(k) in keep})
    shared_saved = {k: v for k, v in ev.shared_memo.items() if _op_name(k) in keep}
    Y = _stack(xp, outs)
    if return_saved:
        return Y, {"layers": saved, "shared": shared_saved}
    return Y


@public
def backward(dY, X, A, G, B, *, W=None, scale: float = 1.0, plan: LoTRPlan | None = None,
             saved: dict | None = None, matmul: Callable | None = None, validate: bool = True) -> LoTRGrads:
    """Gradients of ``sum_l <dY_l, Y_l>`` for ``Y_l = X_l W_l + s X_l A G_l B^T``.

    Parameters
    ----------
    dY : array (L, t, n)
    X, A, G, B, W, scale, plan, matmul
        As in :func:`forward`.
    saved : dict, optional
        ``forward(..., return_saved=True)[1]`` from the same inputs and ``scale``: forward
        products reused instead of recomputed (keys name products, so any plan may use them).

    Returns
    -------
    LoTRGrads
        ``dX`` (L, t, m) -- summed over layers to (t, m) for a shared input -- ``dA`` (m, r_a),
        ``dB`` (n, r_b), ``dG`` (L, r_a, r_b).
    """
    xp, L, t, m, n, ra, rb, shared = _check_inputs(X, A, G, B, W, dY, validate=validate)
    p = _resolve_plan(plan, xp, X, A, G, B, backward=True)
    mm = matmul or xp.matmul
    ev = _Evaluator(xp, mm, _shared_syms(shared))
    if saved is not None:
        ev.shared_memo.update(saved.get("shared", {}))
    dX, dG = [], []
    dA = dB = None
    dA_tree = p.choices["dA"].tree
    pull_out = shared and isinstance(dA_tree, tuple) and dA_tree[0] == 0
    dA_inner = None
    for l in range(L):
        memo: dict = dict(saved["layers"][l]) if saved is not None else {}
        arrs = _layer_arrays(X, A, G, B, dY, l, shared, scale)
        gx = ev.eval(p.choices["dX"].tree, CHAINS["dX"], arrs, memo)
        if W is not None:
            gx = mm(arrs["dY"], xp.matrix_transpose(W[l, ...])) + gx
        dX.append(gx)
        if pull_out:
            # X^T (sum_l dY_l B G_l^T): evaluate the inner sub-chain per layer, multiply once
            inner = ev.eval(_shift(dA_tree[1], -1), CHAINS["dA"][1:], arrs, memo)
            dA_inner = inner if dA_inner is None else dA_inner + inner
        else:
            ga = ev.eval(dA_tree, CHAINS["dA"], arrs, memo)
            dA = ga if dA is None else dA + ga
        gb = ev.eval(p.choices["dB"].tree, CHAINS["dB"], arrs, memo)
        dB = gb if dB is None else dB + gb
        gg = ev.eval(p.choices["dG"].tree, CHAINS["dG"], arrs, memo)
        dG.append(gg * scale if scale != 1.0 else gg)
    if pull_out:
        dA = mm(xp.matrix_transpose(X), dA_inner)
    dXs = _stack(xp, dX)
    if shared:
        dXs = xp.sum(dXs, axis=0)
    return LoTRGrads(dX=dXs, dA=dA, dB=dB, dG=_stack(xp, dG))


def _shift(tree, d):
    if isinstance(tree, int):
        return tree + d
    return (_shift(tree[0], d), _shift(tree[1], d))
