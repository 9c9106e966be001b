"""GPU mirror of :func:`lrmath.lotr.forward` (the LoTR adapter's batched core contraction).

``Y_l = X_l W_l + s X_l A G_l B^T``: ``X A`` by cuBLAS (once when the input is shared by
all layers), the per-layer core product ``(X A) G_l`` by the ``lotr_core`` kernel (``G_l``
in shared memory), ``B^T`` and ``X W`` by cuBLAS. The association order is fixed at
``((X A) G_l) B^T``, the cheapest whenever ``r << m, n`` (the regime LoTR targets); ``plan``
and ``matmul`` are accepted for signature parity and ignored. The backward runs through
the reference on CuPy arrays (array API), not mirrored here.
"""

from __future__ import annotations

from lrmath.backend import check_array
from lrmath.errors import ShapeError

from . import kernels as K
from ._device import resolve, to_caller, to_work, work_xp

__all__ = ["forward"]


def forward(X, A, G, B, *, W=None, scale: float = 1.0, plan=None, matmul=None, return_saved: bool = False,
            validate: bool = True):
    """``Y (L, t, n)`` for ``X (L, t, m)`` or shared ``(t, m)``, ``A (m, ra)``, ``G (L, ra, rb)``, ``B (n, rb)``."""
    if return_saved:
        raise NotImplementedError("lrmath_gpu.lotr.forward does not keep backward intermediates; "
                                  "use lrmath.lotr.forward on CuPy arrays for training")
    if validate:
        check_array(X, "X", ndim=(2, 3))
        check_array(A, "A", ndim=2)
        check_array(G, "G", ndim=3)
        check_array(B, "B", ndim=2)
    L, ra, rb = (int(s) for s in G.shape)
    m, n = int(A.shape[0]), int(B.shape[0])
    shared = len(X.shape) == 2
    if int(X.shape[-1]) != m or int(A.shape[1]) != ra or int(B.shape[1]) != rb or (not shared and int(X.shape[0]) != L):
        raise ShapeError(f"shapes do not chain: X {tuple(X.shape)}, A {tuple(A.shape)}, G {tuple(G.shape)}, B {tuple(B.shape)}")
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
