"""GPU mirror of :func:`lrmath.lotr.forward` (the LoTR adapter's batched core contraction).

``Y_l = X_l W_l + s X_l A G_l B^T``: ``X A`` by cuBLAS (once when the input is shared by
all layers), the per-layer core product ``(X A) G_l`` by the ``lotr_core`` kernel (``G_l``
in shared memory), ``B^T`` and ``X W`` by cuBLAS. The association order is fixed at
``((X A) G_l) B^T``, the cheapest whenever ``r << m, n`` (the regime LoTR targets); ``plan``
and ``matmul`` are accepted for signature parity and ignored.

:func:`backward` uses the same pieces: ``P = dY_l B`` and ``Z = X_l A`` by cuBLAS, the core
products ``P G_l^T`` and ``Z G_l`` by ``lotr_core``, then
``dX_l = s P G_l^T A^T (+ dY_l W_l^T)``, ``dA = s sum_l X_l^T P G_l^T``,
``dB = s sum_l dY_l^T Z G_l``, ``dG_l = s Z^T P``.
"""

from __future__ import annotations

from lrmath.backend import check_array
from lrmath.errors import ShapeError
from lrmath.lotr import LoTRGrads

from . import kernels as K
from ._device import resolve, to_work, work_xp

__all__ = ["forward", "backward"]



def _dims(X, A, G, B, validate: bool):
    """``(L, ra, rb, m, n, shared)`` of the chain ``X A G_l B^T``; :class:`ShapeError` if it does not chain."""
    if validate:
        check_array(X, "X", ndim=(2, 3))
        check_array(A, "A", ndim=2)
        check_array(G, "G", ndim=3)
        check_array(B, "B", ndim=2)
    L, ra, rb = (int(v) for v in G.shape)
    m, n = int(A.shape[0]), int(B.shape[0])
    shared = len(X.shape) == 2
    if int(X.shape[-1]) != m or int(A.shape[1]) != ra or int(B.shape[1]) != rb or (not shared and int(X.shape[0]) != L):
        raise ShapeError(f"shapes do not chain: X {tuple(X.shape)}, A {tuple(A.shape)}, G {tuple(G.shape)}, B {tuple(B.shape)}")
    return L, ra, rb, m, n, shared

def forward(X, A, G, B, *, W=None, scale: float = 1.0, plan=None, matmul=None, return_saved: bool = False,
            validate: bool = True):
    """``Y (L, t, n)`` for ``X (L, t, m)`` or shared ``(t, m)``, ``A (m, ra)``, ``G (L, ra, rb)``, ``B (n, rb)``."""
    if return_saved:
        raise NotImplementedError("lrmath_gpu.lotr.forward does not keep backward intermediates; "
                                  "use lrmath.lotr.forward on CuPy arrays for training")
    L, ra, rb, m, n, shared = _dims(X, A, G, B, validate)
    if W is not None and tuple(int(s) for s in W.shape) != (L, m, n):
        raise ShapeError(f"W must have shape {(L, m, n)}, got {tuple(W.shape)}")
    be = resolve(None)
    xp = work_xp(be)
    Xw = to_work(X, xp, dtype=xp.float32)
    Z = Xw @ to_work(A, xp, dtype=xp.float32)  # (t, ra) or (L, t, ra)
    core = K.lotr_core(Z, to_work(G, xp, dtype=xp.float32), backend=be)  # (L, t, rb)
    Y = core @ to_work(B, xp, dtype=xp.float32).T
    if scale != 1.0:
        Y = Y * xp.float32(scale)
    if W is not None:
        Y = Y + Xw @ to_work(W, xp, dtype=xp.float32)
    return K._restore(Y, K._dtype_name(X), X)


def backward(dY, X, A, G, B, *, W=None, scale: float = 1.0, plan=None, saved=None, matmul=None,
             validate: bool = True) -> LoTRGrads:
    """Gradients of ``sum_l <dY_l, Y_l>`` for ``Y_l = X_l W_l + s X_l A G_l B^T``; see
    :func:`lrmath.lotr.backward`. ``dX`` is summed over layers for a shared input; ``plan``,
    ``saved`` and ``matmul`` are accepted for signature parity and ignored."""
    if validate:
        check_array(dY, "dY", ndim=3)
    L, ra, rb, m, n, shared = _dims(X, A, G, B, validate)
    t = int(X.shape[-2])
    if tuple(int(v) for v in dY.shape) != (L, t, n):
        raise ShapeError(f"shapes do not chain: dY {tuple(dY.shape)}, X {tuple(X.shape)}, A {tuple(A.shape)}, "
                         f"G {tuple(G.shape)}, B {tuple(B.shape)}")
    be = resolve(None)
    xp = work_xp(be)
    f = lambda a: to_work(a, xp, dtype=xp.float32)  # noqa: E731
    dYw, Xw, Aw, Gw, Bw = f(dY), f(X), f(A), f(G), f(B)
    s = xp.float32(scale)
    P = dYw @ Bw  # (L, t, rb)
    Z = Xw @ Aw  # (t, ra) or (L, t, ra)
    PG = K.lotr_core(P, xp.ascontiguousarray(xp.swapaxes(Gw, 1, 2)), backend=be)  # dY_l B G_l^T  (L, t, ra)
    ZG = K.lotr_core(Z, Gw, backend=be)  # X_l A G_l  (L, t, rb)
    dX = s * (PG @ Aw.T)
    if W is not None:
        dX = dX + dYw @ xp.swapaxes(f(W), 1, 2)
    if shared:
        dX = dX.sum(axis=0)
        dA = s * (Xw.T @ PG.sum(axis=0))
        dG = s * (Z.T[None] @ P)
    else:
        dA = s * xp.einsum("ltm,ltr->mr", Xw, PG)
        dG = s * (xp.swapaxes(Z, 1, 2) @ P)
    dB = s * xp.einsum("ltn,ltr->nr", dYw, ZG)
    dt = K._dtype_name(X)
    return LoTRGrads(dX=K._restore(dX, dt, X), dA=K._restore(dA, dt, X), dB=K._restore(dB, dt, X),
                     dG=K._restore(dG, dt, X))
