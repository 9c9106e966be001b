"""Exact symbolic costs: integer polynomials in the sizes (t, m, n, r).

The graphs of :mod:`lrmath.runlora.graphs` are built over symbolic shapes, so every FLOP
count, saved-byte count and bytes-moved count comes out as an exact polynomial with integer
coefficients, e.g. ``2tmn + 4tmr + 2tnr + tn``.  All RunLoRA costs are affine in ``t``
(each term has degree 0 or 1 in ``t``), which is what makes the token breakpoints of a
plan exact (:mod:`lrmath.runlora.plan`).

FLOP conventions (the instrumented executor counts with the same rules from the shapes of
the arrays it actually multiplies):

* ``(p, q) @ (q, r)``: ``2 p q r`` (a multiply-add is two FLOPs);
* a GEMM with ``alpha != 1`` adds ``p r`` (the scaling), with ``beta = 1`` adds ``p r``
  (the accumulation into C, broadcast bias included);
* elementwise scale, add, mask multiply: one FLOP per output element;
* a column sum of a ``(t, n)`` array (the bias gradient): ``t n``.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping

import numpy as np
from ..errors import OptionError, ArgumentTypeError
from ..backend import public

__all__ = ["Poly", "SYMBOLS", "T", "M", "N", "R"]

SYMBOLS = ("t", "m", "n", "r")


@public(methods=False)
class Poly:
    """Polynomial with integer coefficients in the symbols ``t, m, n, r`` (immutable)."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[tuple, int] | None = None):
        self.terms = {k: int(v) for k, v in (terms or {}).items() if v}

    @classmethod
    def sum(cls, polys) -> "Poly":
        """Sum of many polynomials (one dict, no intermediates)."""
        out: dict = {}
        for p in polys:
            for k, v in p.terms.items():
                out[k] = out.get(k, 0) + v
        return cls(out)

    def scaled(self, c: int) -> "Poly":
        return Poly({k: v * c for k, v in self.terms.items()})

    @classmethod
    def var(cls, name: str) -> "Poly":
        e = [0, 0, 0, 0]
        e[SYMBOLS.index(name)] = 1
        return cls({tuple(e): 1})

    @classmethod
    def const(cls, c: int) -> "Poly":
        return cls({(0, 0, 0, 0): c})

    @staticmethod
    def _lift(x) -> "Poly":
        if isinstance(x, Poly):
            return x
        if isinstance(x, int):
            return Poly.const(x)
        raise ArgumentTypeError(f"cannot combine Poly with {type(x).__name__}")

    def __add__(self, other):
        o = self._lift(other)
        out = dict(self.terms)
        for k, v in o.terms.items():
            out[k] = out.get(k, 0) + v
        return Poly(out)

    __radd__ = __add__

    def __mul__(self, other):
        o = self._lift(other)
        out: dict = {}
        for k1, v1 in self.terms.items():
            for k2, v2 in o.terms.items():
                k = tuple(a + b for a, b in zip(k1, k2))
                out[k] = out.get(k, 0) + v1 * v2
        return Poly(out)

    __rmul__ = __mul__

    def __eq__(self, other):
        try:
            return self.terms == self._lift(other).terms
        except TypeError:
            return NotImplemented

    def __hash__(self):
        return hash(frozenset(self.terms.items()))

    def __call__(self, t=0, m=0, n=0, r=0):
        """Evaluate at integer (or Fraction) sizes; exact."""
        from fractions import Fraction

        vals = (t, m, n, r)
        for name, v in zip(SYMBOLS, vals):
            if isinstance(v, bool) or not isinstance(v, (int, Fraction, np.integer)):
                raise ArgumentTypeError(f"Poly size {name} must be an integer or a Fraction, got {v!r}")
        total = 0
        for k, c in self.terms.items():
            term = c
            for v, e in zip(vals, k):
                if e:
                    term = term * v**e
            total += term
        return total

    def degree_in(self, sym: str) -> int:
        i = SYMBOLS.index(sym)
        return max((k[i] for k in self.terms), default=0)

    def split_t(self) -> tuple["Poly", "Poly"]:
        """``(c0, c1)`` with ``self = c0 + t * c1``; raises if not affine in t."""
        c0, c1 = {}, {}
        for k, v in self.terms.items():
            if k[0] == 0:
                c0[k] = v
            elif k[0] == 1:
                c1[(0,) + k[1:]] = v
            else:
                raise OptionError(f"{self} is not affine in t")
        return Poly(c0), Poly(c1)

    def affine(self, m: int, n: int, r: int) -> tuple[int, int]:
        """``(a, b)`` with ``self(t, m, n, r) = a + b t`` for the given sizes."""
        c0, c1 = self.split_t()
        return c0(0, m, n, r), c1(0, m, n, r)

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        parts = []
        for k in sorted(self.terms, key=lambda k: (-sum(k), [-e for e in k])):
            c = self.terms[k]
            mono = "".join(s if e == 1 else f"{s}^{e}" for s, e in zip(SYMBOLS, k) if e)
            if not mono:
                parts.append(str(c))
            elif c == 1:
                parts.append(mono)
            else:
                parts.append(f"{c}{mono}")
        return " + ".join(parts).replace("+ -", "- ")

    def __repr__(self) -> str:
        return f"Poly({self})"


T, M, N, R = (Poly.var(s) for s in SYMBOLS)


def fit_affine(samples) -> tuple[Fraction, Fraction]:
    """Exact line through ``[(t, value), ...]`` (first two points; checked on the rest)."""
    (t0, v0), (t1, v1) = samples[0], samples[1]
    b = Fraction(v1 - v0, t1 - t0)
    a = v0 - b * t0
    for t, v in samples[2:]:
        if a + b * t != v:
            raise OptionError("samples are not on one line")
    return a, b
