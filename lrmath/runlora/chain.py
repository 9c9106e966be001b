"""Matrix-chain association model: every parenthesisation of a product chain and its cost.

This is the one cost model for products in lrmath: RunLoRA uses it for every chain in a LoRA
forward/backward graph and LoTR reuses it for its three-factor chains.

A chain of ``k`` matrices ``M0 M1 ... M(k-1)`` is described by ``dims`` (length ``k + 1``):
``Mi`` has shape ``(dims[i], dims[i+1])``.  Multiplying a ``(p, q)`` by a ``(q, r)`` matrix
costs ``2 p q r`` FLOPs (a multiply-add counts as two FLOPs).  The number of orders is the
Catalan number ``C(k-1)`` (1, 1, 2, 5, 14, 42, ... for k = 1, 2, 3, ...).

``dims`` may hold plain ints or any objects with ``*`` and ``+`` (RunLoRA passes symbolic
polynomials in (t, m, n, r), so each order's ``flops`` comes out as a closed form).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from ..errors import ArgumentTypeError, ShapeError, SizeLimitError
from ..backend import public

__all__ = ["ChainOrder", "matmul_flops", "orders", "best_order", "num_orders"]


@public
def matmul_flops(p, q, r):
    """FLOPs of a ``(p, q) @ (q, r)`` product: ``2 p q r`` (one multiply and one add per term)."""
    return 2 * p * q * r


@public(methods=False)
@dataclass(frozen=True)
class ChainOrder:
    """One parenthesisation of a matrix chain.

    Attributes
    ----------
    tree : int or tuple
        Nested pairs of factor indices, e.g. ``((0, 1), 2)`` for ``(M0 M1) M2``.
    expr : str
        The same as text, e.g. ``"((M0 M1) M2)"`` (single factors print bare: ``"M0"``).
    flops : int (or the type of ``dims``)
        Sum of ``2 p q r`` over the products the order computes.
    intermediates : tuple of (rows, cols)
        Shapes of the products formed before the last one (the temporaries), in
        evaluation order (left subtree first).
    steps : tuple of (p, q, r)
        Every product ``(p, q) @ (q, r)`` in evaluation order, the last one included.
    """

    tree: Any
    expr: str
    flops: Any
    intermediates: tuple = field(default=())
    steps: tuple = field(default=())

    def __repr__(self) -> str:
        return f"ChainOrder({self.expr}, flops={self.flops})"


MAX_FACTORS = 12  # orders() enumerates every tree: Catalan(11) = 58,786 orders at most


def _check_dims(dims: Sequence) -> tuple:
    if isinstance(dims, (str, bytes)) or not hasattr(dims, "__len__"):
        raise ArgumentTypeError(f"dims must be a sequence of sizes, got {dims!r}")
    if getattr(dims, "ndim", 1) != 1:
        raise ShapeError(f"dims must be one-dimensional, got shape {getattr(dims, 'shape', None)}")
    dims = tuple(dims)
    if len(dims) < 2:
        raise ShapeError(f"a chain needs at least 2 dims (one matrix), got dims={dims!r}")
    if len(dims) - 1 > MAX_FACTORS:
        raise SizeLimitError(f"a chain of {len(dims) - 1} matrices has too many association orders to list (limit {MAX_FACTORS} matrices)")
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not (isinstance(d, (int, np.integer)) or hasattr(d, "terms")):
            raise ShapeError(f"chain dims must be positive integer sizes (or symbolic Poly sizes), got {d!r} in {dims!r}")
        if isinstance(d, (int, np.integer)) and d < 1:
            raise ShapeError(f"chain dims must be positive, got {d} in {dims!r}")
    return tuple(int(d) if isinstance(d, np.integer) else d for d in dims)


@lru_cache(maxsize=None)
def _trees(i: int, j: int) -> tuple:
    """All binary trees over factors i..j (inclusive), as nested tuples of indices."""
    if i == j:
        return (i,)
    out = []
    for k in range(i, j):
        for left in _trees(i, k):
            for right in _trees(k + 1, j):
                out.append((left, right))
    return tuple(out)


def _span(tree) -> tuple[int, int]:
    if isinstance(tree, int):
        return tree, tree
    return _span(tree[0])[0], _span(tree[1])[1]


def _render(tree, names) -> str:
    if isinstance(tree, int):
        return names[tree]
    return f"({_render(tree[0], names)} {_render(tree[1], names)})"


def _evaluate(tree, dims, steps: list):
    """Append the products of ``tree`` to ``steps`` (post-order); return (rows, cols)."""
    if isinstance(tree, int):
        return dims[tree], dims[tree + 1]
    p, q = _evaluate(tree[0], dims, steps)
    _, r = _evaluate(tree[1], dims, steps)
    steps.append((p, q, r))
    return p, r


@public
def num_orders(k: int) -> int:
    """Number of parenthesisations of a chain of ``k`` matrices (Catalan number C(k-1))."""
    import math

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ArgumentTypeError(f"k must be an integer, got {k!r}")
    k = int(k)
    if k > 10_000:
        raise SizeLimitError(f"k={k}: the Catalan number of a chain this long has thousands of digits (limit 10000)")
    return math.comb(2 * (k - 1), k - 1) // k if k >= 1 else 0  # closed form: no enumeration


@public
def orders(dims: Sequence, names: Sequence[str] | None = None) -> list[ChainOrder]:
    """Every association order of the chain with shapes ``(dims[i], dims[i+1])``.

    Parameters
    ----------
    dims : sequence of length k + 1
        Sizes along the chain (ints, or symbolic sizes supporting ``*`` and ``+``).
    names : sequence of k str, optional
        Factor names used in ``expr`` (default ``M0, M1, ...``).

    Returns
    -------
    list of ChainOrder
        In a fixed order (split point of the outermost product from left to right, recursively).
    """
    dims = _check_dims(dims)
    k = len(dims) - 1
    if names is None:
        names = [f"M{i}" for i in range(k)]
    if len(names) != k:
        raise ShapeError(f"{len(names)} names for a chain of {k} matrices")
    out = []
    for tree in _trees(0, k - 1):
        steps: list = []
        _evaluate(tree, dims, steps)
        flops = 0
        for p, q, r in steps:
            flops = flops + matmul_flops(p, q, r)
        inter = tuple((p, r) for p, q, r in steps[:-1])
        out.append(ChainOrder(tree, _render(tree, names), flops, inter, tuple(steps)))
    return out


@public
def best_order(dims: Sequence[int], names: Sequence[str] | None = None) -> ChainOrder:
    """The order with the fewest FLOPs (ties: the first in :func:`orders`' order).

    ``dims`` must be numeric here (the comparison needs numbers).
    """
    return min(orders(dims, names), key=lambda o: o.flops)
