"""``plan(m, n, r)``: the cheapest LoRA forward/backward pair, for one or for every token count.

Costs of a pair (forward graph, backward graph) are affine in the number of tokens ``t``
(:mod:`lrmath.runlora.costs`), so the optimum over ``t >= 1`` is a lower envelope of lines.
:class:`Plan` stores that envelope exactly: rational crossing points and the first integer
token count at which each pair takes over.  ``plan.select(t)`` picks the pair for a batch.

Math layout throughout: ``X`` (t, m), ``W`` (m, n), ``A`` (m, r), ``B`` (r, n).
"""

from __future__ import annotations

import math
import numpy as np
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ..backend import check_bool, check_choice, check_int, check_positive_int, public, require_module
from ..errors import BackendUnavailableError, OptionError, RankError
from .costs import Poly
from .graphs import PAPER_BACKWARD, PAPER_FORWARD, PEFT, Graph, GraphSpace, graph_space

__all__ = ["plan", "Plan", "Choice", "Selection", "Segment", "itemsize_of", "peft_pair", "paper_graphs"]

_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
_OBJECTIVES = ("flops", "time", "memory")


@public
def itemsize_of(dtype: Any) -> int:
    """Bytes per element of a float dtype given as a string, NumPy, torch or ml_dtypes dtype."""
    if isinstance(dtype, type) and issubclass(dtype, np.generic):  # np.float16 (the scalar type)
        dtype = np.dtype(dtype)
    name = str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1] if isinstance(dtype, str) or hasattr(dtype, "name") or type(dtype).__module__.startswith("torch") else None
    if name not in _ITEMSIZE:
        from ..errors import DTypeError

        raise DTypeError(f"dtype must be one of {sorted(_ITEMSIZE)}, got {dtype!r}")
    return _ITEMSIZE[name]


@public(methods=False)
@dataclass(frozen=True)
class Choice:
    """A forward/backward pair with its exact costs (polynomials in t, m, n, r)."""

    forward: Graph
    backward: Graph
    flops: Poly
    saved_bytes: Poly
    bytes_moved: Poly

    @property
    def name(self) -> str:
        return f"{self.forward.name}/{self.backward.name}"

    def at(self, t: int, m: int, n: int, r: int) -> dict:
        return {"flops": self.flops(t, m, n, r), "saved_bytes": self.saved_bytes(t, m, n, r),
                "bytes_moved": self.bytes_moved(t, m, n, r)}


@public(methods=False)
@dataclass(frozen=True)
class Selection:
    """The pair chosen for one token count, with its costs as *numbers* at that size.

    Like opt_einsum's ``PathInfo``: ``flops``, ``saved_bytes`` and ``bytes_moved`` are the costs
    at ``(tokens, m, n, r)``; the closed forms (polynomials in t, m, n, r) stay available as
    ``poly.flops``, ``poly.saved_bytes`` and ``poly.bytes_moved`` (``poly`` is the :class:`Choice`).

    Attributes
    ----------
    forward, backward : Graph
    tokens, m, n, r : int
    flops, saved_bytes, bytes_moved : int
    poly : Choice
    """

    forward: Graph
    backward: Graph
    tokens: int
    m: int
    n: int
    r: int
    flops: int
    saved_bytes: int
    bytes_moved: int
    poly: Choice = field(repr=False)

    @classmethod
    def of(cls, choice: Choice, t: int, m: int, n: int, r: int) -> "Selection":
        v = choice.at(t, m, n, r)
        return cls(choice.forward, choice.backward, int(t), int(m), int(n), int(r), int(v["flops"]),
                   int(v["saved_bytes"]), int(v["bytes_moved"]), choice)

    @property
    def name(self) -> str:
        return self.poly.name

    def at(self, t: int, m: int, n: int, r: int) -> dict:
        """Costs at another size (from the polynomials)."""
        return self.poly.at(t, m, n, r)

    def __repr__(self) -> str:
        return (f"Selection({self.name} at t={self.tokens}, m={self.m}, n={self.n}, r={self.r}: "
                f"flops={self.flops:,}, saved_bytes={self.saved_bytes:,}, bytes_moved={self.bytes_moved:,})")


@public(methods=False)
@dataclass
class Segment:
    """``choice`` is optimal for ``t_from <= t <= t_to`` (integers; ``t_to`` None = no end).

    ``crossing`` is the exact rational t where this pair's line crosses the previous one's
    (None for the first segment).
    """

    t_from: int
    t_to: int | None
    choice: Choice
    crossing: Fraction | None


@public(methods=False)
@dataclass
class Plan:
    """The result of :func:`plan`.

    Attributes
    ----------
    m, n, r : int
        Shapes in math layout (``W`` is (m, n)).
    tokens : int or None
        The token count asked for; None = the plan covers every ``t >= 1``.
    objective : str
    itemsize : int
    segments : list of Segment
        The lower envelope over t (one segment when ``tokens`` was given).
    peft : Choice
        The pair PEFT's LoRA layer runs (for the predicted gain).
    paper_best : Choice
        The FLOP-best pair among the RunLoRA paper's named variants.
    front : list of Choice
        Pareto front of FLOPs vs saved bytes at ``reference_tokens``.
    reference_tokens : int
        ``tokens``, or 4096 when the plan covers every t (where ``choice``, the front and
        ``objective="time"`` are evaluated).
    measured : dict
        For ``objective="time"``: seconds per candidate name.
    """

    m: int
    n: int
    r: int
    tokens: int | None
    objective: str
    itemsize: int
    flags: dict
    segments: list
    peft: Choice
    paper_best: Choice
    front: list
    reference_tokens: int
    space: GraphSpace = field(repr=False)
    measured: dict = field(default_factory=dict)

    @property
    def breakpoints(self) -> list[int]:
        """Token counts at which the chosen pair changes (first t of each later segment)."""
        return [s.t_from for s in self.segments[1:]]

    @property
    def choice(self) -> Selection:
        """The pair for ``tokens`` (or for ``reference_tokens`` when the plan covers all t)."""
        return self.select(self.tokens or self.reference_tokens)

    @property
    def forward(self) -> Graph:
        return self.choice.forward

    @property
    def backward(self) -> Graph:
        return self.choice.backward

    def select(self, tokens: int) -> Selection:
        """The optimal pair for a batch of ``tokens`` rows, with its costs at that size.

        Returns a :class:`Selection`: ``.flops``, ``.saved_bytes`` and ``.bytes_moved`` are numbers
        at ``tokens``; ``.poly`` holds the pair's cost polynomials.
        """
        check_positive_int(tokens, "tokens")
        for seg in self.segments:
            if tokens >= seg.t_from and (seg.t_to is None or tokens <= seg.t_to):
                return Selection.of(seg.choice, tokens, self.m, self.n, self.r)
        raise OptionError(f"tokens={tokens} is outside the planned range (memory budget?)")

    def gain_over_peft(self, tokens: int | None = None) -> dict:
        """Predicted ratios PEFT / chosen for FLOPs, saved bytes and bytes moved at ``tokens``."""
        t = tokens or self.tokens or self.reference_tokens
        ours = self.select(t).at(t, self.m, self.n, self.r)
        peft = self.peft.at(t, self.m, self.n, self.r)
        return {k: peft[k] / ours[k] if ours[k] else math.inf for k in ours}

    def _rows(self, choices, t):
        rows = []
        for c in choices:
            v = c.at(t, self.m, self.n, self.r)
            rows.append([c.name, _fmt(v["flops"]), _fmt(v["saved_bytes"]), _fmt(v["bytes_moved"]), str(c.flops)])
        return rows

    def __repr__(self) -> str:
        t = self.tokens or self.reference_tokens
        f = self.flags
        lines = [f"Plan(m={self.m}, n={self.n}, r={self.r}, tokens={self.tokens}, objective={self.objective!r}, "
                 f"itemsize={self.itemsize}, x_grad={f['x_grad']}, w_grad={f['w_grad']}, bias={f['bias']}, "
                 f"dropout={f['dropout']})"]
        if self.tokens is None:
            lines.append("lower envelope over tokens:")
            for seg in self.segments:
                end = "inf" if seg.t_to is None else str(seg.t_to)
                cross = "" if seg.crossing is None else f"   (lines cross at t = {seg.crossing})"
                lines.append(f"  t in [{seg.t_from}, {end}]: {seg.choice.name}{cross}")
        c = self.select(t)
        lines.append(f"chosen at t={t}: {c.name}  forward {_short(c.forward.choices)}")
        lines.append(f"  backward {_short(c.backward.choices)}")
        g = self.gain_over_peft(t)
        lines.append(f"predicted gain over PEFT ({self.peft.name}) at t={t}: FLOPs x{g['flops']:.3f}, "
                     f"saved bytes x{g['saved_bytes']:.3f}, bytes moved x{g['bytes_moved']:.3f}")
        if self.measured:
            lines.append("measured seconds: " + ", ".join(f"{k} {v:.4g}" for k, v in self.measured.items()))
        lines.append(f"Pareto front (FLOPs vs saved bytes) at t={t}:")
        lines.append(_table(["pair", "FLOPs", "saved B", "moved B", "FLOPs(t,m,n,r)"], self._rows(self.front, t)))
        lines.append("reference pairs:")
        lines.append(_table(["pair", "FLOPs", "saved B", "moved B", "FLOPs(t,m,n,r)"],
                            self._rows([c for c in (self.peft, self.paper_best) if c], t),
                            names=["PEFT", "paper best"]))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        t = self.tokens or self.reference_tokens
        return {
            "m": self.m, "n": self.n, "r": self.r, "tokens": self.tokens, "objective": self.objective,
            "segments": [{"t_from": s.t_from, "t_to": s.t_to, "pair": s.choice.name,
                          "forward": s.choice.forward.choices, "backward": s.choice.backward.choices,
                          "flops": str(s.choice.flops)} for s in self.segments],
            "chosen": self.select(t).name, "gain_over_peft": self.gain_over_peft(t),
            "front": [{"pair": c.name, **c.at(t, self.m, self.n, self.r)} for c in self.front],
            "measured": self.measured,
        }


def _short(ch: dict) -> str:
    return "; ".join(f"{k}: {_short(v) if isinstance(v, dict) else v}" for k, v in ch.items() if v not in ((), {}))


def _fmt(x) -> str:
    x = float(x)
    for unit, d in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= d:
            return f"{x / d:.4g}{unit}"
    return f"{x:.4g}"


def _table(header, rows, names=None) -> str:
    if names:
        rows = [[f"{nm}: {r[0]}"] + r[1:] for nm, r in zip(names, rows)]
    w = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = ["  " + "  ".join(str(h).ljust(k) for h, k in zip(header, w))]
    for r in rows:
        out.append("  " + "  ".join(str(x).ljust(k) for x, k in zip(r, w)))
    return "\n".join(out)


# ----------------------------------------------------------------------------- envelope
def _pareto_lines(items, key):
    """Keep items whose line (a + b t, t >= 1) is not dominated: value at t=1 and slope."""
    items = sorted(items, key=lambda it: (key(it)[0] + key(it)[1], key(it)[1], key(it)[2:]))
    out, best_slope = [], None
    for it in items:
        a, b = key(it)[:2]
        if best_slope is None or b < best_slope:
            out.append(it)
            best_slope = b
    return out


def _envelope(cands, value, t_max=None):
    """Exact lower envelope over integer t >= 1 of affine keys.

    ``value(c)`` returns a tuple of (a, b) lines compared lexicographically; ``t_max(c)``
    an upper feasibility bound (or None).  Returns [(t_from, t_to, c, crossing)].
    """
    lines = [(c, value(c)) for c in cands]
    crit = set()
    for i in range(len(lines)):
        li = lines[i][1]
        for j in range(i + 1, len(lines)):
            lj = lines[j][1]
            for (a1, b1), (a2, b2) in zip(li, lj):
                if b1 != b2:
                    x = Fraction(a2 - a1, b1 - b2)
                    if x > 1:
                        crit.add(x)
        if t_max is not None and t_max(lines[i][0]) is not None:
            crit.add(Fraction(t_max(lines[i][0])) + Fraction(1, 2))
    # integer intervals: the optimum can only change at floor(x) -> floor(x) + 1
    starts = sorted({1} | {math.floor(x) + 1 for x in crit})
    segs = []
    for k, t0 in enumerate(starts):
        feas = [(c, v) for c, v in lines if t_max is None or t_max(c) is None or t0 <= t_max(c)]
        if not feas:
            continue
        best = min(feas, key=lambda cv: tuple(a + b * t0 for a, b in cv[1]))[0]
        t_to = starts[k + 1] - 1 if k + 1 < len(starts) else None
        if segs and segs[-1][2] is best:
            segs[-1] = (segs[-1][0], t_to, best, segs[-1][3])
        else:
            prev = segs[-1][2] if segs else None
            cross = None
            if prev is not None:
                (a1, b1), (a2, b2) = value(prev)[0], value(best)[0]
                cross = Fraction(a2 - a1, b1 - b2) if b1 != b2 else None
            segs.append((t0, t_to, best, cross))
    # check each segment's choice at both ends exactly (the envelope is piecewise linear)
    return segs


@public
def peft_pair(space: GraphSpace) -> tuple[Graph, Graph]:
    """The forward/backward graphs PEFT's LoraLayer runs under autograd (see graphs.PEFT)."""
    f = space.find("forward", **PEFT["forward"])
    want = dict(PEFT["backward"])
    if not space.x_grad:
        want["dX"] = {}
    bs = space.find("backward", **want)
    bs = [b for b in bs if b.saved <= f[0].computes]
    # autograd keeps every activation a backward reads (X A, and X_d under dropout):
    # the variant that saves the most
    b = max(bs, key=lambda g: (len(g.saved), -int(g.name[1:])))
    return f[0], b


_MAX_DIM = 1 << 40  # sizes beyond this overflow nothing here but are surely a mistake
_TIME_BACKENDS = ("numpy", "torch", "cuda", "torch:cuda")


def _check_time_backend(backend):
    """``objective='time'`` measures on a real backend: it must exist here (else BackendUnavailableError)."""
    if backend is None:
        backend = "torch"
    check_choice(backend, "backend", _TIME_BACKENDS)
    if backend != "numpy":
        torch = require_module("torch", "objective='time' on backend " + repr(backend), extra="torch")
        if backend.endswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError(f"backend {backend!r} needs a CUDA GPU, and torch sees none")
    return backend


def _choice(space, f, b, itemsize) -> Choice:
    return Choice(f, b, f.flops + b.flops, space.saved_bytes(f, b, itemsize),
                  f.bytes_moved(itemsize) + b.bytes_moved(itemsize))


@public
def plan(m: int, n: int, r: int, *, tokens: int | None = None, dtype: Any = "float32", x_grad: bool = True,
         w_grad: bool = False, bias: bool = False, dropout: bool = False, objective: str = "flops",
         memory_budget: int | None = None, backend: Any = None, cache: bool = True) -> Plan:
    """Choose the LoRA forward/backward graphs for a ``(m, n)`` layer with rank ``r``.

    Parameters
    ----------
    m, n : int
        Input and output features (math layout: ``W`` is (m, n), ``X`` is (t, m)).
    r : int
        LoRA rank, ``1 <= r <= min(m, n)``.
    tokens : int, optional
        Rows of ``X`` (batch x sequence).  None: plan for every ``t >= 1`` (the
        envelope's breakpoints are exact).
    dtype : str or dtype
        Element type for byte counts (and for timing).
    x_grad, w_grad, bias, dropout : bool
        Whether ``X`` and ``W`` need gradients, whether there is a bias, LoRA dropout.
    objective : "flops", "time" or "memory"
        ``flops``: fewest FLOPs (ties: fewer saved bytes, fewer bytes moved).
        ``memory``: fewest saved activation bytes (ties: FLOPs).
        ``time``: measure the FLOP-envelope candidates, PEFT's pair and the paper's best
        on ``backend`` and keep the fastest (cached on disk, see :mod:`.autotune`).
    memory_budget : int, optional
        Upper bound on saved activation bytes; pairs above it are excluded.
    backend : str, optional
        For ``objective="time"``: ``"numpy"``, ``"torch"`` (CPU) or ``"cuda"``/``"torch:cuda"``.

    Returns
    -------
    Plan

    Raises
    ------
    RankError
        If ``r < 1`` or ``r > min(m, n)`` (a rank-r update of a smaller matrix is not low-rank).
    """
    m = check_positive_int(m, "m", maximum=_MAX_DIM)
    n = check_positive_int(n, "n", maximum=_MAX_DIM)
    r = check_int(r, "rank r", error=RankError)
    if r < 1 or r > min(m, n):
        raise RankError(f"rank r={r} must satisfy 1 <= r <= min(m, n) = {min(m, n)} for a ({m}, {n}) weight")
    if tokens is not None:
        tokens = check_positive_int(tokens, "tokens", maximum=_MAX_DIM)
    check_choice(objective, "objective", _OBJECTIVES)
    if memory_budget is not None:
        memory_budget = check_positive_int(memory_budget, "memory_budget")
    x_grad, w_grad, bias, dropout, cache = (check_bool(v, k) for k, v in
                                            (("x_grad", x_grad), ("w_grad", w_grad), ("bias", bias), ("dropout", dropout), ("cache", cache)))
    item = itemsize_of(dtype)
    if objective == "time":
        backend = _check_time_backend(backend)
    space = graph_space(bool(x_grad), bool(w_grad), bool(bias), bool(dropout))
    flags = {"x_grad": bool(x_grad), "w_grad": bool(w_grad), "bias": bool(bias), "dropout": bool(dropout)}

    # group backward graphs by what they save (saved bytes are equal within a group)
    groups: dict = {}
    for b in space.backward:
        groups.setdefault((b.saved, "X" in b.inputs, "K" in b.inputs), []).append(b)
    def key(g):
        a, bb = g.affine("flops", m, n, r)
        ma, mb = g.affine("bytes_moved", m, n, r, item)
        return (a, bb, ma + mb, mb, int(g.name[1:]))

    cands = []
    for (saved, _, _), bs in groups.items():
        fs = [f for f in space.forward if saved <= f.computes]
        if not fs:
            continue

        fbest = _pareto_lines(fs, key)
        bbest = _pareto_lines(bs, key)
        for f in fbest:
            for b in bbest:
                cands.append(_choice(space, f, b, item))

    def val(c: Choice):
        fa = c.flops.affine(m, n, r)
        sa = c.saved_bytes.affine(m, n, r)
        ma = c.bytes_moved.affine(m, n, r)
        if objective == "memory":
            return (sa, fa, ma)
        return (fa, sa, ma)

    def tmax(c: Choice):
        if memory_budget is None:
            return None
        a, b = c.saved_bytes.affine(m, n, r)
        if a > memory_budget:
            return 0
        return None if b == 0 else (memory_budget - a) // b

    if tokens is not None:
        feas = [c for c in cands if tmax(c) is None or tokens <= tmax(c)]
        if not feas:
            raise OptionError(f"no LoRA graph saves at most {memory_budget} bytes at t={tokens}")
        best = min(feas, key=lambda c: tuple(a + b * tokens for a, b in val(c)))
        segs = [Segment(tokens, tokens, best, None)]
    else:
        segs = [Segment(a, b, c, x) for a, b, c, x in _envelope(cands, val, tmax if memory_budget else None)]
        if not segs:
            raise OptionError(f"no LoRA graph saves at most {memory_budget} bytes for any t >= 1")
    ref_t = tokens or 4096
    pf, pb = peft_pair(space)
    peft = _choice(space, pf, pb, item)
    paper = _paper_best(space, item, m, n, r, ref_t)
    front = _front(space, cands, m, n, r, ref_t)
    p = Plan(m, n, r, tokens, objective, item, flags, segs, peft, paper, front, ref_t, space)
    if objective == "time":
        from .autotune import tune

        tune(p, dtype=dtype, backend=backend, cache=cache)
    return p


def _paper_best(space, item, m, n, r, t) -> Choice | None:
    """FLOP-best pair among the paper's named variants (None under dropout: the paper has none)."""
    if space.dropout:
        return None
    best = None
    for fname in PAPER_FORWARD:
        for bname in PAPER_BACKWARD:
            f, b = paper_graphs(space, fname, bname)
            c = _choice(space, f, b, item)
            if best is None or c.flops(t, m, n, r) < best.flops(t, m, n, r):
                best = c
    return best


@public
def paper_graphs(space: GraphSpace, forward: str, backward: str) -> tuple[Graph, Graph]:
    """Our graphs for the paper's ``forwardK``/``backwardK`` names (X saved, XA recomputed).

    ``forward1 + backward1`` with XA saved instead of recomputed is what the facts call
    the "fused" layer; pass ``backward="backward1+saved"`` for it.
    """
    saved = backward.endswith("+saved")
    bname = backward.removesuffix("+saved")
    fs = space.find("forward", **PAPER_FORWARD[forward])
    want = dict(PAPER_BACKWARD[bname])
    if not space.x_grad:  # without dX several names are the same graph
        want["dX"] = {}
    bs = space.find("backward", **want)
    bs = [b for b in bs if bool(b.saved) == saved and (not b.saved or b.saved <= fs[0].computes)]
    if len(fs) != 1 or len(bs) != 1:
        raise LookupError(f"{forward}/{backward} matches {len(fs)} forward and {len(bs)} backward graphs")
    return fs[0], bs[0]


def _front(space, cands, m, n, r, t) -> list:
    pts = sorted(cands, key=lambda c: (c.saved_bytes(t, m, n, r), c.flops(t, m, n, r), c.bytes_moved(t, m, n, r)))
    out, best = [], None
    for c in pts:
        f = c.flops(t, m, n, r)
        if best is None or f < best:
            out.append(c)
            best = f
    return out
