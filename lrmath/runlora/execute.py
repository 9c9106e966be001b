"""Executors for RunLoRA graphs: a readable array-API reference and an instrumented counter.

Arrays follow the issue's math layout: ``X`` (t, m), ``W`` (m, n), ``A`` (m, r), ``B`` (r, n),
``dY`` (t, n), ``b`` (n,), ``K`` (t, m) boolean dropout mask.  The same code runs on NumPy,
CuPy, torch or any array-API library (``xp = array_namespace(X)``).

:class:`CountingOps` wraps the operations and counts FLOPs and bytes from the shapes of the
arrays it is actually handed at run time; the closed forms of :mod:`lrmath.runlora.costs`
are checked against these counts in the tests.
"""

from __future__ import annotations

from typing import Any

from ..backend import array_namespace, public
from ..errors import OptionError, ShapeError

__all__ = ["ArrayOps", "CountingOps", "run_forward", "run_backward", "run_pair"]


@public(methods=False)
class ArrayOps:
    """The six step operations written once against the array API."""

    def __init__(self, xp, s: float):
        self.xp = xp
        self.s = s

    def mm(self, a, b, alpha: bool):
        out = self.xp.matmul(a, b)
        return out * self.s if alpha else out

    def addmm(self, c, a, b, alpha: bool):
        prod = self.xp.matmul(a, b)
        return c + (prod * self.s if alpha else prod)

    def scale(self, x):
        return x * self.s

    def add(self, x, y):
        return x + y

    def mask(self, x, k):
        return x * self.xp.astype(k, x.dtype)

    def colsum(self, x):
        return self.xp.sum(x, axis=0)


_ITEM: dict = {}


def _itemsize(dtype) -> int:
    try:
        return _ITEM[dtype]
    except (KeyError, TypeError):
        pass
    name = str(dtype).rsplit(".", 1)[-1]
    item = {"bool": 1, "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}[name]
    try:
        _ITEM[dtype] = item
    except TypeError:
        pass
    return item


@public(methods=False)
class CountingOps:
    """Wraps an ops object; counts FLOPs and bytes from the shapes of the actual operands.

    Conventions as in :mod:`lrmath.runlora.costs`: a ``(p, q) @ (q, r)`` product is
    ``2 p q r``; an alpha scaling or a beta accumulation adds one FLOP per output entry;
    elementwise ops one per output entry; a column sum one per input entry.
    """

    def __init__(self, inner):
        self.inner = inner
        self.flops = 0
        self.bytes = 0
        self.calls: list[tuple] = []

    @staticmethod
    def _size(x) -> int:
        n = 1
        for d in x.shape:
            n *= int(d)
        return n

    def _nbytes(self, *xs) -> int:
        tot = 0
        for x in xs:
            tot += self._size(x) * _itemsize(x.dtype)
        return tot

    def _mm_flops(self, a, b) -> int:
        (p, q), (q2, r) = a.shape, b.shape
        if q != q2:
            raise ShapeError(f"matmul of {tuple(a.shape)} and {tuple(b.shape)}")
        return 2 * int(p) * int(q) * int(r)

    def mm(self, a, b, alpha):
        out = self.inner.mm(a, b, alpha)
        f = self._mm_flops(a, b) + (self._size(out) if alpha else 0)
        self._log("mm", f, a, b, out)
        return out

    def addmm(self, c, a, b, alpha):
        out = self.inner.addmm(c, a, b, alpha)
        f = self._mm_flops(a, b) + self._size(out) * (2 if alpha else 1)
        self._log("addmm", f, c, a, b, out)
        return out

    def scale(self, x):
        out = self.inner.scale(x)
        self._log("scale", self._size(out), x, out)
        return out

    def add(self, x, y):
        out = self.inner.add(x, y)
        self._log("add", self._size(out), x, y, out)
        return out

    def mask(self, x, k):
        out = self.inner.mask(x, k)
        self._log("mask", self._size(out), x, k, out)
        return out

    def colsum(self, x):
        out = self.inner.colsum(x)
        self._log("colsum", self._size(x), x, out)
        return out

    def _log(self, op, flops, *arrays):
        self.flops += flops
        self.bytes += self._nbytes(*arrays)
        self.calls.append((op, flops, tuple(tuple(int(d) for d in a.shape) for a in arrays)))


def _run(graph, env: dict, ops) -> dict:
    def get(ref):
        name, tr = ref
        x = env[name]
        return x.T if tr else x

    for st in graph.steps:
        args = [get(a) for a in st.args]
        if st.op == "mm":
            env[st.out] = ops.mm(args[0], args[1], st.alpha)
        elif st.op == "addmm":
            env[st.out] = ops.addmm(args[0], args[1], args[2], st.alpha)
        else:
            env[st.out] = getattr(ops, st.op)(*args)
    return {k: get(ref) for k, ref in graph.outputs.items()}


def _ops(xp, s, count):
    ops = ArrayOps(xp, s)
    return CountingOps(ops) if count else ops


@public
def run_forward(graph, inputs: dict, s: float, *, keep=(), ops=None):
    """Execute a forward graph.

    Parameters
    ----------
    graph : Graph (kind "forward")
    inputs : dict
        ``X`` (t, m), ``W`` (m, n), ``A`` (m, r), ``B`` (r, n); ``b`` (n,) with bias;
        ``K`` (t, m) bool with dropout.
    s : float
        LoRA scale (``alpha / r``, divided by ``1 - p`` under dropout).
    keep : iterable of str
        Keys of activations to hand to the backward (``Graph.computes``); returned in their
        canonical orientation.
    ops : ArrayOps or CountingOps, optional

    Returns
    -------
    Y : array (t, n)
    saved : dict key -> array
    """
    xp = array_namespace(inputs["X"])
    ops = ops or ArrayOps(xp, s)
    env = dict(inputs)
    out = _run(graph, env, ops)
    saved = {}
    for key in keep:
        tensor, flipped = graph.made[key]
        saved[key] = env[tensor].T if flipped else env[tensor]
    return out["Y"], saved


@public
def run_backward(graph, inputs: dict, saved: dict, s: float, *, ops=None) -> dict:
    """Execute a backward graph; ``inputs`` as for the forward plus ``dY`` (t, n).

    Returns a dict with ``dA`` (m, r), ``dB`` (r, n) and, as flagged, ``dX`` (t, m),
    ``dW`` (m, n), ``db`` (n,).
    """
    xp = array_namespace(inputs["dY"])
    ops = ops or ArrayOps(xp, s)
    env = dict(inputs)
    for key in graph.saved:
        if key not in saved:
            raise OptionError(f"backward {graph.name} needs the saved activation {key!r}")
        env["saved:" + key] = saved[key]
    return _run(graph, env, ops)


@public
def run_pair(fwd, bwd, inputs: dict, s: float, *, count: bool = False) -> tuple[Any, dict, Any]:
    """Forward then backward; with ``count`` returns the two :class:`CountingOps` too."""
    xp = array_namespace(inputs["X"])
    fo, bo = _ops(xp, s, count), _ops(xp, s, count)
    Y, saved = run_forward(fwd, inputs, s, keep=bwd.saved, ops=fo)
    grads = run_backward(bwd, inputs, saved, s, ops=bo)
    return Y, grads, (fo, bo) if count else None
