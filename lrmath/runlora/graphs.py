"""The space of LoRA forward and backward computation graphs, generated from the algebra.

Notation (the issue's, math layout): ``X`` (t, m) input rows, frozen ``W`` (m, n), adapters
``A`` (m, r) and ``B`` (r, n), scale ``s = alpha / r`` (times ``1/(1-p)`` under dropout, see
below), optional bias ``b`` (n,), optional LoRA-dropout mask ``K`` (t, m) of 0/1:

    Y  = X W + s (X_d A) B + b,        X_d = X * K  (or X without dropout)
    dA = s X_dᵀ dY Bᵀ,   dB = s Aᵀ X_dᵀ dY,   dX = dY Wᵀ + K * (s dY Bᵀ Aᵀ),
    dW = Xᵀ dY (only when W trains),   db = Σ_rows dY.

(PyTorch/PEFT stores ``W`` as (n, m), ``lora_A`` as (r, m) and ``lora_B`` as (n, r); the torch
layer transposes views, nothing here depends on it.)  Dropout's ``1/(1-p)`` is folded into
``s`` so the mask stays boolean.

How the space is generated
--------------------------
Each output is written as a sum of *product chains*; the generator takes the cartesian
product of these independent choices and builds one program per combination:

* **association order** of every chain, from :func:`lrmath.runlora.chain.orders`
  (e.g. ``dA = (Xᵀ dY) Bᵀ`` or ``Xᵀ (dY Bᵀ)``; forward ``(X A) B`` or ``X (A B)``);
* **factoring** the shared left factor out of a sum: ``Y = X (W + s A B)``,
  ``dX = dY (W + s A B)ᵀ`` (not with dropout, where the two terms see different inputs);
* **where the scale is applied**: on any factor of the chain (``s A``, ``s dY``, ...), as the
  ``alpha`` of any GEMM inside it, or as a separate scaling of the product (PEFT's way);
* **fused accumulation**: a sum ``P + Q`` with ``Q`` a product runs as one
  ``addmm(P, ., ., beta=1)``; either term may go first; or the terms are added unfused;
* **reuse of shared intermediates**: every program is built with common-subexpression
  elimination on a canonical form that identifies ``(X A)ᵀ`` with ``Aᵀ Xᵀ``, so ``dY Bᵀ``,
  ``Xᵀ dY``, ``X A``, ``s dY`` ... are computed once wherever two chains meet;
* **saved versus recomputed activations**: every activation subexpression the backward needs
  that does not depend on ``dY`` (``X A``, ``X_d``, scaled variants) is either taken from the
  forward (if that forward computes the same expression) or recomputed; ``X`` and the mask
  are saved only when a remaining step reads them;
* the flags ``x_grad``, ``w_grad``, ``bias``, ``dropout`` add or remove outputs and terms.

Programs that come out identical are merged (deduplicated on their step list).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from .chain import orders
from .costs import M, N, Poly, R, T
from ..errors import OptionError
from ..backend import public

__all__ = [
    "Step",
    "Graph",
    "GraphSpace",
    "graph_space",
    "PAPER_FORWARD",
    "PAPER_BACKWARD",
    "PEFT",
]

# ----------------------------------------------------------------------------- expressions
# Nodes are hashable tuples:
#   ("L", name, transposed)           an input (X, W, A, B, dY, K mask, b bias)
#   ("S", child)                      s * child as its own elementwise step
#   ("P", left, right, alpha)         left @ right, times s inside the GEMM when alpha
#   ("A", first, second, fused)       first + second; fused: addmm(first, second.left, second.right)
#   ("E", x, mask)                    x * mask (LoRA dropout)
#   ("C", x)                          column sum of x (bias gradient)
_SHAPES = {"X": ("t", "m"), "W": ("m", "n"), "A": ("m", "r"), "B": ("r", "n"), "dY": ("t", "n"),
           "K": ("t", "m"), "b": ("n",)}
_SYM = {"t": T, "m": M, "n": N, "r": R}


def leaf(name: str, transposed: bool = False):
    return ("L", name, transposed)


@lru_cache(maxsize=None)
def shape(node) -> tuple:
    k = node[0]
    if k == "L":
        s = _SHAPES[node[1]]
        return s[::-1] if node[2] else s
    if k in ("S", "E"):
        return shape(node[1])
    if k == "P":
        return (shape(node[1])[0], shape(node[2])[-1])
    if k == "A":
        s1, s2 = shape(node[1]), shape(node[2])
        return s1 if len(s1) >= len(s2) else s2
    if k == "C":
        return (shape(node[1])[1],)
    raise OptionError(node)


def numel(node) -> Poly:
    out = Poly.const(1)
    for d in shape(node):
        out = out * _SYM[d]
    return out


@lru_cache(maxsize=None)
def transpose(node):
    k = node[0]
    if k == "L":
        return node if node[1] == "b" else ("L", node[1], not node[2])
    if k in ("S", "C"):
        return (k, transpose(node[1]))
    if k == "P":
        return ("P", transpose(node[2]), transpose(node[1]), node[3])
    if k == "A":
        return ("A", transpose(node[1]), transpose(node[2]), node[3])
    if k == "E":
        return ("E", transpose(node[1]), transpose(node[2]))
    raise OptionError(node)


@lru_cache(maxsize=None)
def text(node) -> str:
    """Readable, unambiguous text of a node (ᵀ transposes; ``s·`` a separate scale; ``s[..]`` alpha)."""
    k = node[0]
    if k == "L":
        return node[1] + ("ᵀ" if node[2] else "")
    if k == "S":
        return "s·" + text(node[1])
    if k == "P":
        inner = f"{text(node[1])} {text(node[2])}"
        return f"s[{inner}]" if node[3] else f"({inner})"
    if k == "A":
        return f"({text(node[1])} {'+=' if node[3] else '+'} {text(node[2])})"
    if k == "E":
        return f"({text(node[1])}∘{text(node[2])})"
    if k == "C":
        return f"colsum({text(node[1])})"
    raise OptionError(node)


@lru_cache(maxsize=None)
def _has(node, name: str) -> bool:
    if node[0] == "L":
        return node[1] == name
    return any(_has(c, name) for c in node[1:] if isinstance(c, tuple))


@lru_cache(maxsize=None)
def _transposable(node) -> bool:
    return not (_has(node, "b") or node[0] == "C" or len(shape(node)) != 2)


@lru_cache(maxsize=None)
def canonical(node) -> tuple[str, bool]:
    """``(key, flipped)``: the key of ``node`` or of its transpose, whichever sorts first."""
    a = text(node)
    if not _transposable(node):
        return a, False
    b = text(transpose(node))
    return (b, True) if b < a else (a, False)


# ----------------------------------------------------------------------------- programs
@public(methods=False)
@dataclass(frozen=True)
class Step:
    """One executed operation.

    ``op`` is ``mm`` (``out = a @ b``, times ``s`` if ``alpha``), ``addmm``
    (``out = c + a @ b``, times ``s`` on the product if ``alpha``), ``scale`` (``s * x``),
    ``add`` (``x + y``, y may be the broadcast bias), ``mask`` (``x * K``) or ``colsum``.
    ``args`` are ``(tensor, transposed)`` pairs; tensors are input names (``X``, ``W``, ``A``,
    ``B``, ``b``, ``K``, ``dY``), ``saved:<key>`` for activations handed over by the forward,
    or ``%i`` for the result of step ``i``.
    """

    op: str
    out: str
    args: tuple
    alpha: bool
    key: str
    shape: tuple

    inner_dim: str = ""

    def flops(self) -> Poly:
        """Exact FLOPs of this step (see :mod:`lrmath.runlora.costs` for the conventions)."""
        return _step_flops(self.op, self.shape, self.inner_dim, self.alpha)


@lru_cache(maxsize=None)
def _step_flops(op, shp, inner_dim, alpha) -> Poly:
    size = _numel_shape(shp)
    if op in ("mm", "addmm"):
        f = 2 * size * _SYM[inner_dim]
        if op == "addmm":
            f = f + size
        if alpha:
            f = f + size
        return f
    return size if op != "colsum" else size * T


@public(methods=False)
@dataclass
class Graph:
    """A forward or backward program with its exact costs (see :mod:`lrmath.runlora.costs`).

    Attributes
    ----------
    kind : "forward" or "backward"
    name : str
        ``F<i>`` / ``B<i>``, numbered in generation order within its space.
    choices : dict
        The generator's choices that produced it (order, scale placement, ...).
    steps : list of Step
    outputs : dict name -> (tensor, transposed)
        ``Y`` for a forward; ``dA``, ``dB`` and, as flagged, ``dX``, ``dW``, ``db``.
    inputs : frozenset of str
        Input names the program reads.
    saved : frozenset of str
        (backward) keys of activations it takes from the forward instead of recomputing.
    computes : frozenset of str
        (forward) keys of everything it computes, which a backward may take as saved.
    nodes : dict key -> node
        Expression of every key in ``saved``/``computes`` (for sizes).
    """

    kind: str
    name: str
    choices: dict
    steps: list
    outputs: dict
    inputs: frozenset
    saved: frozenset = frozenset()
    computes: frozenset = frozenset()
    nodes: dict = field(default_factory=dict)
    signature: Any = None
    made: dict = field(default_factory=dict)  # key -> (tensor, computed transposed w.r.t. the key)

    @cached_property
    def flops(self) -> Poly:
        """Exact FLOPs as a polynomial in (t, m, n, r)."""
        return Poly.sum(s.flops() for s in self.steps)

    @cached_property
    def _moved(self) -> tuple[Poly, Poly]:
        return self._moved_elements()

    def moved_elements(self) -> tuple[Poly, Poly]:
        """(float elements, mask elements) read plus written by all steps."""
        return self._moved

    def _moved_elements(self) -> tuple[Poly, Poly]:
        sizes = {s.out: _numel_shape(s.shape) for s in self.steps}
        fl, bo = [], []
        for s in self.steps:
            for a, _ in s.args:
                (bo if a == "K" else fl).append(_arg_numel(a, sizes, self.nodes))
            fl.append(sizes[s.out])
        return Poly.sum(fl), Poly.sum(bo)

    def bytes_moved(self, itemsize: int) -> Poly:
        """Bytes read and written by all steps (floats of ``itemsize`` bytes, 1-byte mask)."""
        cache = self.__dict__.setdefault("_bytes_cache", {})
        if itemsize not in cache:
            fl, bo = self.moved_elements()
            cache[itemsize] = Poly.sum([fl.scaled(itemsize), bo])
        return cache[itemsize]

    def affine(self, what: str, m: int, n: int, r: int, itemsize: int = 4) -> tuple[int, int]:
        """``(a, b)`` with cost = a + b t at these sizes; ``what`` is "flops" or "bytes_moved"."""
        cache = self.__dict__.setdefault("_affine_cache", {})
        k = (what, m, n, r, itemsize)
        if k not in cache:
            poly = self.flops if what == "flops" else self.bytes_moved(itemsize)
            cache[k] = poly.affine(m, n, r)
        return cache[k]

    def describe(self) -> str:
        lines = []
        for s in self.steps:
            lines.append(f"{s.out} = {_step_text(s)}")
        for k, (ref, t) in self.outputs.items():
            lines.append(f"{k} = {ref}{'ᵀ' if t else ''}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{self.kind} graph {self.name}: {len(self.steps)} steps, flops {self.flops}>"


@lru_cache(maxsize=None)
def _numel_shape(shp) -> Poly:
    out = Poly.const(1)
    for d in shp:
        out = out * _SYM[d]
    return out


def _arg_numel(a: str, sizes: dict, nodes: dict) -> Poly:
    if a in _SHAPES:
        return _numel_shape(_SHAPES[a])
    if a.startswith("saved:"):
        return numel(nodes[a[6:]])
    return sizes[a]


def _step_text(s: Step) -> str:
    def arg(i):
        a, t = s.args[i]
        return a + ("ᵀ" if t else "")

    if s.op == "mm":
        return f"s·({arg(0)} @ {arg(1)})   (alpha)" if s.alpha else f"{arg(0)} @ {arg(1)}"
    if s.op == "addmm":
        prod = f"s·({arg(1)} @ {arg(2)})" if s.alpha else f"{arg(1)} @ {arg(2)}"
        return f"{arg(0)} + {prod}   (addmm{', alpha' if s.alpha else ''})"
    if s.op == "scale":
        return f"s·{arg(0)}"
    if s.op == "add":
        return f"{arg(0)} + {arg(1)}"
    if s.op == "mask":
        return f"{arg(0)} ∘ {arg(1)}"
    if s.op == "colsum":
        return f"colsum({arg(0)})"
    raise OptionError(s.op)


class _Builder:
    """Emits steps for expression nodes with common-subexpression elimination."""

    def __init__(self, provided=frozenset()):
        self.steps: list[Step] = []
        self.cache: dict[str, str] = {}
        self.node_of: dict[str, Any] = {}
        self.arg_keys: dict[str, tuple] = {}
        self.provided = provided
        self.inputs: set[str] = set()
        self.used_saved: set[str] = set()

    def emit(self, node) -> tuple[str, bool]:
        if node[0] == "L":
            self.inputs.add(node[1])
            return node[1], bool(node[2])
        key, flip = canonical(node)
        if key in self.provided:
            # a saved activation is held in its canonical orientation
            self.used_saved.add(key)
            self.node_of[key] = transpose(node) if flip else node
            return "saved:" + key, flip
        if key in self.cache:
            out, made_flipped = self.cache[key]
            return out, flip != made_flipped
        # compute in the orientation first asked for (the natural one for the kernels);
        # the canonical key only serves to find it again, e.g. (X A) as Aᵀ Xᵀ
        cnode = node
        k = cnode[0]
        inner = ""
        if k == "S":
            args = (self.emit(cnode[1]),)
            op, alpha = "scale", False
        elif k == "P":
            args = (self.emit(cnode[1]), self.emit(cnode[2]))
            op, alpha = "mm", cnode[3]
            inner = shape(cnode[1])[1]
        elif k == "A":
            first, second, fused = cnode[1], cnode[2], cnode[3]
            if fused:
                if second[0] != "P":
                    raise OptionError("fused accumulation needs a product")
                args = (self.emit(first), self.emit(second[1]), self.emit(second[2]))
                op, alpha = "addmm", second[3]
                inner = shape(second[1])[1]
            else:
                args = (self.emit(first), self.emit(second))
                op, alpha = "add", False
        elif k == "E":
            args = (self.emit(cnode[1]), self.emit(cnode[2]))
            op, alpha = "mask", False
        elif k == "C":
            args = (self.emit(cnode[1]),)
            op, alpha = "colsum", False
        else:
            raise OptionError(cnode)
        out = f"%{len(self.steps)}"
        self.steps.append(Step(op, out, args, alpha, key, shape(cnode), inner))
        self.cache[key] = (out, flip)
        self.node_of[key] = cnode
        self.arg_keys[key] = tuple(a for a, _ in args)
        return out, False


def _copy_builder(b: "_Builder") -> "_Builder":
    c = _Builder(b.provided)
    c.steps = list(b.steps)
    c.cache = dict(b.cache)
    c.node_of = dict(b.node_of)
    c.arg_keys = dict(b.arg_keys)
    c.inputs = set(b.inputs)
    c.used_saved = set(b.used_saved)
    return c


def _with_saved(b: "_Builder", outs: dict, subset) -> tuple | None:
    """The program of ``b`` with the activations in ``subset`` handed over by the forward.

    References to those steps become ``saved:<key>`` (held in canonical orientation), the
    steps that only fed them are dropped, and the rest is renumbered.  Returns None if a
    saved activation ends up unused (another saved one covers it).
    """
    repl = {}
    for key in subset:
        out, flipped = b.cache[key]
        repl[out] = ("saved:" + key, flipped)

    def fix(ref):
        a, tr = ref
        if a in repl:
            name, f = repl[a]
            return name, tr != f
        return ref

    steps = [st for st in b.steps if st.out not in repl]
    steps = [Step(st.op, st.out, tuple(fix(a) for a in st.args), st.alpha, st.key, st.shape, st.inner_dim)
             for st in steps]
    new_outs = {k: fix(v) for k, v in outs.items()}
    need = {v[0] for v in new_outs.values()}
    live = []
    for st in reversed(steps):
        if st.out in need:
            live.append(st)
            need.update(a for a, _ in st.args)
    live.reverse()
    if any("saved:" + k not in need for k in subset):
        return None
    rename = {st.out: f"%{i}" for i, st in enumerate(live)}

    def ren(ref):
        return (rename.get(ref[0], ref[0]), ref[1])

    live = [Step(st.op, rename[st.out], tuple(ren(a) for a in st.args), st.alpha, st.key, st.shape, st.inner_dim)
            for st in live]
    new_outs = {k: ren(v) for k, v in new_outs.items()}
    inputs = frozenset(a for st in live for a, _ in st.args if a in _SHAPES)
    return live, new_outs, inputs


def _build(targets: dict, provided=frozenset()):
    b = _Builder(provided)
    outs = {name: b.emit(node) for name, node in targets.items()}
    return b, outs


# ----------------------------------------------------------------------------- choices
def _positions(tree) -> list:
    """Scale positions of a chain order: each leaf index, each product subtree, 'after'."""
    out: list = []

    def walk(t):
        if isinstance(t, int):
            out.append(t)
            return
        walk(t[0])
        walk(t[1])
        out.append(t)

    walk(tree)
    out.append("after")
    return out


def _chain_node(factors, tree, at):
    def build(t):
        if isinstance(t, int):
            f = factors[t]
            return ("S", f) if at == t else f
        return ("P", build(t[0]), build(t[1]), at == t)

    node = build(tree)
    return ("S", node) if at == "after" else node


def _pos_label(pos, order, names) -> str:
    if pos == "after":
        return "after"
    if isinstance(pos, int):
        return "on " + names[pos]
    if pos == order.tree:
        return "alpha"
    from .chain import _render

    return "alpha of " + _render(pos, names)


def _chain_options(factors, dims, names, after=True):
    """[(label dict, node)] for every order and scale position of ``s * prod(factors)``.

    ``after=False`` leaves out the separate scaling of the finished product, which is never
    better than the same product's GEMM alpha (same FLOPs, one more pass over the result);
    it is kept in the forward only because it is how PEFT computes.
    """
    out = []
    for o in orders([_SYM[d] for d in dims], names):
        for pos in _positions(o.tree):
            if pos == "after" and not after:
                continue
            out.append(({"order": o.expr, "scale": _pos_label(pos, o, names)}, _chain_node(factors, o.tree, pos)))
    return out


def _merge_options(transposed: bool, after: bool = True):
    """[(label, node)] for M = W + s A B (or its transpose): scale position x fused."""
    A_, B_, W_ = leaf("A"), leaf("B"), leaf("W")
    out = []
    for lab, ab in _chain_options([A_, B_], ("m", "r", "n"), ["A", "B"], after):
        for fused in (True, False):
            if fused and ab[0] != "P":
                continue
            node = ("A", W_, ab, fused)
            out.append(({"merge_scale": lab["scale"], "merge_fused": fused}, transpose(node) if transposed else node))
    return out


def _sum_options(first, second, names=("base", "lora")):
    """Fused accumulation either way round, or a plain add."""
    out = []
    if second[0] == "P":
        out.append((f"{names[0]}-first", ("A", first, second, True)))
    if first[0] == "P":
        out.append((f"{names[1]}-first", ("A", second, first, True)))
    out.append(("add", ("A", first, second, False)))
    return out


def _forward_targets(bias: bool, dropout: bool):
    X, W, A, B, K, b = (leaf(n) for n in ("X", "W", "A", "B", "K", "b"))
    Xl = ("E", X, K) if dropout else X
    base = ("P", X, W, False)
    for lab, lora in _chain_options([Xl, A, B], ("t", "m", "r", "n"), ["X", "A", "B"]):
        for acc, y in _sum_options(base, lora):
            if bias:
                y = _add_bias(y, b)
            yield {"form": "split", **lab, "accumulate": acc}, {"Y": y}
    if not dropout:
        for lab, Mn in _merge_options(False):
            y = ("P", X, Mn, False)
            if bias:
                y = ("A", b, y, True)
            yield {"form": "merge", **lab, "accumulate": "bias-fused" if bias else "-"}, {"Y": y}


def _add_bias(y, b):
    """Put the bias into the first product of a sum when that sum is fused, else add it last."""
    if y[0] == "A" and y[3] and y[1][0] == "P":
        return ("A", ("A", b, y[1], True), y[2], True)
    if y[0] == "A" and y[3]:  # first term is a separately scaled product: add bias to it
        return ("A", ("A", y[1], b, False), y[2], True)
    return ("A", y, b, False)


def _backward_targets(x_grad: bool, w_grad: bool, bias: bool, dropout: bool):
    X, W, A, B, K, dY = (leaf(n) for n in ("X", "W", "A", "B", "K", "dY"))
    Xl = ("E", X, K) if dropout else X
    XlT = transpose(Xl)
    dA_opts = _chain_options([XlT, dY, transpose(B)], ("m", "t", "n", "r"), ["Xᵀ", "dY", "Bᵀ"], False)
    dB_opts = _chain_options([transpose(A), XlT, dY], ("r", "m", "t", "n"), ["Aᵀ", "Xᵀ", "dY"], False)
    dX_opts: list = [({}, None)]
    if x_grad:
        dX_opts = []
        base = ("P", dY, transpose(W), False)
        for lab, lora in _chain_options([dY, transpose(B), transpose(A)], ("t", "n", "r", "m"), ["dY", "Bᵀ", "Aᵀ"], False):
            if dropout:
                lora = ("E", lora, K)
            for acc, node in _sum_options(base, lora):
                dX_opts.append(({"form": "split", **lab, "accumulate": acc}, node))
        if not dropout:
            for lab, Mt in _merge_options(True, after=False):
                dX_opts.append(({"form": "merge", **lab}, ("P", dY, Mt, False)))
    # builds share their common prefix (dA, then dB) instead of re-emitting it
    for la, na in dA_opts:
        b1 = _Builder()
        oa = b1.emit(na)
        for lb, nb in dB_opts:
            b2 = _copy_builder(b1)
            ob = b2.emit(nb)
            for lx, nx in dX_opts:
                b3 = _copy_builder(b2)
                outs = {"dA": oa, "dB": ob}
                if x_grad:
                    outs["dX"] = b3.emit(nx)
                if w_grad:
                    outs["dW"] = b3.emit(("P", transpose(X), dY, False))
                if bias:
                    outs["db"] = b3.emit(("C", dY))
                yield {"dA": la, "dB": lb, "dX": lx}, b3, outs


def _activation_candidates(b: _Builder) -> list[str]:
    """Keys of maximal dY-free subexpressions that read X (saveable activations)."""
    cands = []
    for key, node in b.node_of.items():
        if _has(node, "dY") or not _has(node, "X"):
            continue
        # maximal: some consumer depends on dY
        for k2, args in b.arg_keys.items():
            if b.cache.get(key, (None,))[0] in args and _has(b.node_of[k2], "dY"):
                cands.append(key)
                break
    return sorted(cands)


def _signature(steps, outputs, saved):
    return (tuple((s.op, s.args, s.alpha, s.key) for s in steps), tuple(sorted(outputs.items())), tuple(sorted(saved)))


@public(methods=False)
@dataclass
class GraphSpace:
    """All distinct forward and backward graphs for one set of flags."""

    x_grad: bool
    w_grad: bool
    bias: bool
    dropout: bool
    forward: list
    backward: list

    def compatible(self, fwd: Graph, bwd: Graph) -> bool:
        """A backward can run after a forward if the forward computes what it takes as saved."""
        return bwd.saved <= fwd.computes

    def saved_elements(self, fwd: Graph, bwd: Graph) -> tuple[Poly, Poly]:
        """(float elements, mask elements) held from forward to backward (activations only)."""
        fl, bo = Poly(), Poly()
        if "X" in bwd.inputs:
            fl = fl + T * M
        if "K" in bwd.inputs:
            bo = bo + T * M
        for key in bwd.saved:
            fl = fl + numel(bwd.nodes[key])
        return fl, bo

    def saved_bytes(self, fwd: Graph, bwd: Graph, itemsize: int) -> Poly:
        fl, bo = self.saved_elements(fwd, bwd)
        return fl * itemsize + bo

    def find(self, kind: str, **choices) -> list[Graph]:
        """Graphs whose choices include all of ``choices`` (nested dicts matched by subset)."""
        key = (kind, repr(sorted(choices.items())))
        cache = self.__dict__.setdefault("_find_cache", {})
        if key not in cache:
            cache[key] = self._find(kind, choices)
        return list(cache[key])

    def _find(self, kind, choices):
        pool = self.forward if kind == "forward" else self.backward

        def match(have, want):
            if isinstance(want, dict):
                return isinstance(have, dict) and all(k in have and match(have[k], v) for k, v in want.items())
            return have == want

        return [g for g in pool if match(g.choices, choices)]

    def by_name(self, name: str) -> Graph:
        pool = self.forward if name.startswith("F") else self.backward
        return pool[int(name[1:]) - 1]

    def __repr__(self) -> str:
        return (f"GraphSpace(x_grad={self.x_grad}, w_grad={self.w_grad}, bias={self.bias}, dropout={self.dropout}: "
                f"{len(self.forward)} forward, {len(self.backward)} backward graphs)")


@public
def graph_space(x_grad: bool = True, w_grad: bool = False, bias: bool = False, dropout: bool = False) -> GraphSpace:
    """Every distinct forward and backward graph for these flags (generated once, then cached).

    Examples
    --------
    >>> sp = graph_space()
    >>> len(sp.forward), len(sp.backward)
    (41, 6480)
    """
    return _cached_space(bool(x_grad), bool(w_grad), bool(bias), bool(dropout))


def _source_hash() -> str:
    import hashlib
    import os

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("chain.py", "costs.py", "graphs.py"):
        with open(os.path.join(here, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _cached_space(x_grad: bool, w_grad: bool, bias: bool, dropout: bool) -> GraphSpace:
    """Generate once per process; also kept on disk (keyed by this code's hash) across processes."""
    import os
    import pickle
    import tempfile

    from .._progress import cache_dir

    try:
        path = os.path.join(cache_dir("runlora"), f"space-{_source_hash()}-{int(x_grad)}{int(w_grad)}{int(bias)}{int(dropout)}.pkl")
    except OSError:
        path = None
    if path and os.path.exists(path):
        try:
            with open(path, "rb") as fh:
                sp = pickle.load(fh)
            if isinstance(sp, GraphSpace):
                return sp
        except Exception:  # noqa: BLE001 - a corrupt cache file is regenerated
            pass
    sp = _graph_space(x_grad, w_grad, bias, dropout)
    if path:
        try:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(sp, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError:
            pass
    return sp


def _graph_space(x_grad: bool, w_grad: bool, bias: bool, dropout: bool) -> GraphSpace:
    fwd: list[Graph] = []
    seen: set = set()
    for choices, targets in _forward_targets(bias, dropout):
        b, outs = _build(targets)
        sig = _signature(b.steps, outs, ())
        if sig in seen:
            continue
        seen.add(sig)
        acts = frozenset(k for k, n in b.node_of.items() if _has(n, "X") and not _has(n, "dY"))
        fwd.append(Graph("forward", f"F{len(fwd) + 1}", choices, b.steps, outs, frozenset(b.inputs),
                         computes=acts, nodes=dict(b.node_of), signature=sig, made=dict(b.cache)))
    bwd: list[Graph] = []
    seen = set()
    all_fwd_keys = frozenset().union(*(g.computes for g in fwd))
    for choices, b0, outs0 in _backward_targets(x_grad, w_grad, bias, dropout):
        cands = [c for c in _activation_candidates(b0) if c in all_fwd_keys]
        for k in range(len(cands) + 1):
            for subset in itertools.combinations(cands, k):
                if k and not any(set(subset) <= f.computes for f in fwd):
                    continue  # no forward computes all of them
                if k:
                    res = _with_saved(b0, outs0, subset)
                    if res is None:  # a saved activation made another one dead
                        continue
                    steps, outs, inputs = res
                else:
                    steps, outs, inputs = b0.steps, outs0, frozenset(b0.inputs)
                sig = _signature(steps, outs, subset)
                if sig in seen:
                    continue
                seen.add(sig)
                ch = dict(choices)
                ch["saved"] = tuple(subset)
                nodes = {k2: b0.node_of[k2] for k2 in subset}
                bwd.append(Graph("backward", f"B{len(bwd) + 1}", ch, steps, outs, inputs,
                                 saved=frozenset(subset), nodes=nodes, signature=sig))
    return GraphSpace(x_grad, w_grad, bias, dropout, fwd, bwd)


# ----------------------------------------------------------------------------- named graphs
# The paper's public code (facts.md; U = A, V = B) has no LoRA scale; we map each variant to
# the graph with the scale as the alpha of its last GEMM (free when s = 1), XA recomputed,
# and only X saved, unless the variant says otherwise.
PAPER_FORWARD = {
    "forward1": {"form": "split", "order": "((X A) B)", "scale": "alpha", "accumulate": "base-first"},
    "forward2": {"form": "merge", "merge_scale": "alpha", "merge_fused": True},
    "forward3": {"form": "split", "order": "((X A) B)", "scale": "alpha", "accumulate": "lora-first"},
    # forward4 is forward2 with torch.matmul on the 3-D input instead of addmm on a 2-D view:
    # a different kernel call, the same graph.
    "forward4": {"form": "merge", "merge_scale": "alpha", "merge_fused": True},
}
_SPLIT = {"form": "split", "order": "((dY Bᵀ) Aᵀ)", "scale": "alpha"}
_MERGE = {"form": "merge", "merge_scale": "alpha", "merge_fused": True}
PAPER_BACKWARD = {
    "backward1": {"dA": {"order": "(Xᵀ (dY Bᵀ))", "scale": "alpha"}, "dB": {"order": "((Aᵀ Xᵀ) dY)", "scale": "alpha"},
                  "dX": {**_SPLIT, "accumulate": "add"}},
    "backward2": {"dA": {"order": "(Xᵀ (dY Bᵀ))", "scale": "alpha"}, "dB": {"order": "(Aᵀ (Xᵀ dY))", "scale": "alpha"},
                  "dX": {**_SPLIT, "accumulate": "base-first"}},
    "backward3": {"dA": {"order": "((Xᵀ dY) Bᵀ)", "scale": "alpha"}, "dB": {"order": "(Aᵀ (Xᵀ dY))", "scale": "alpha"},
                  "dX": {**_SPLIT, "accumulate": "add"}},
    "backward4": {"dA": {"order": "((Xᵀ dY) Bᵀ)", "scale": "alpha"}, "dB": {"order": "(Aᵀ (Xᵀ dY))", "scale": "alpha"},
                  "dX": _MERGE},
    "backward5": {"dA": {"order": "(Xᵀ (dY Bᵀ))", "scale": "alpha"}, "dB": {"order": "((Aᵀ Xᵀ) dY)", "scale": "alpha"},
                  "dX": _MERGE},
    "backward6": {"dA": {"order": "((Xᵀ dY) Bᵀ)", "scale": "alpha"}, "dB": {"order": "((Aᵀ Xᵀ) dY)", "scale": "alpha"},
                  "dX": {**_SPLIT, "accumulate": "add"}},
    "backward7": {"dA": {"order": "((Xᵀ dY) Bᵀ)", "scale": "alpha"}, "dB": {"order": "((Aᵀ Xᵀ) dY)", "scale": "alpha"},
                  "dX": _MERGE},
    "backward8": {"dA": {"order": "(Xᵀ (dY Bᵀ))", "scale": "alpha"}, "dB": {"order": "(Aᵀ (Xᵀ dY))", "scale": "alpha"},
                  "dX": _MERGE},
}

# PEFT's LoraLayer as autograd runs it: Y = (X Wᵀ + b) + ((X_d A) B) * s  (separate scale, plain add);
# autograd scales dY once, saves X_d (dropout's input... its output) and X A for the adapters' grads.
PEFT = {
    "forward": {"form": "split", "order": "((X A) B)", "scale": "after", "accumulate": "add"},
    "backward": {"dA": {"order": "(Xᵀ (dY Bᵀ))", "scale": "on dY"}, "dB": {"order": "((Aᵀ Xᵀ) dY)", "scale": "on dY"},
                 "dX": {"form": "split", "order": "((dY Bᵀ) Aᵀ)", "scale": "on dY", "accumulate": "add"}},
}
