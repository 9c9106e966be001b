"""Tucker-2 decomposition of a stack of matrices: HOSVD initialisation and HOOI sweeps.

A stack ``T`` of ``L`` matrices of shape ``(m, n)`` (the updates of ``L`` layers of equal
shape) is approximated as (LoTR, arXiv 2402.01376, eq. 3)::

    T[l] ~= A @ G[l] @ B.T        A (m, r_a), B (n, r_b) shared, G (L, r_a, r_b) per layer

i.e. a Tucker decomposition whose third (layer) mode is left uncompressed. With ``A`` and
``B`` orthonormal the best core for fixed factors is ``G[l] = A.T @ T[l] @ B`` and the error is
``||T||^2 - ||G||^2``, so the problem is to maximise ``sum_l ||A.T T[l] B||^2`` over the two
Stiefel factors (De Lathauwer, De Moor, Vandewalle 2000):

* **HOSVD** -- ``A`` = leading ``r_a`` left singular vectors of the mode-1 unfolding
  ``[T[0], ..., T[L-1]]`` (m, L n), ``B`` likewise from the mode-2 unfolding (n, L m).
* **HOOI** -- alternate ``A <- leading r_a left singular vectors of [T[l] @ B]_l`` (m, L r_b)
  and ``B <- leading r_b left singular vectors of [T[l].T @ A]_l`` (n, L r_a). Each half
  step maximises the objective over one factor with the other fixed, so the error never
  increases (up to rounding); the loop stops when the relative decrease of the error falls
  below ``tol``, the error itself is at rounding level, or ``max_iter`` sweeps ran.

Signs of singular vectors are fixed (largest-magnitude entry of each column positive) so
the factors are deterministic; compare reconstructions, not factors, across backends.

Written once against the array API (``xp = array_namespace(T)``): NumPy, CuPy, torch and
array-api-strict inputs give factors of the same kind. float16/bfloat16 inputs are computed
in float32 (``lrmath.backend.as_compute``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..backend import array_namespace, as_compute, check_array, check_positive_int, public
from ..errors import OptionError, RankError, ShapeError

__all__ = ["Tucker2", "tucker2", "hosvd2", "reconstruct", "relative_error", "check_ranks"]


# ----------------------------------------------------------------------------- validation
@public
def check_ranks(rank: int | Sequence[int], shape: Sequence[int]) -> tuple[int, int]:
    """Validate Tucker-2 ranks ``(r_a, r_b)`` for a stack of shape ``(L, m, n)``.

    A multilinear rank must satisfy ``1 <= r_a <= m``, ``1 <= r_b <= n`` and, because the
    mode-1 unfolding of the core is ``(r_a, L r_b)``, ``r_a <= L r_b`` (and ``r_b <= L r_a``);
    beyond that the extra columns of a factor would be arbitrary.

    Raises
    ------
    RankError
        With the offending values in the message.
    """
    if len(shape) != 3:
        raise ShapeError(f"a Tucker-2 stack must be 3-D (L, m, n), got shape {tuple(shape)}")
    L, m, n = (int(s) for s in shape)
    if isinstance(rank, (tuple, list)):
        if len(rank) != 2:
            raise RankError(f"rank must be an int or a pair (r_a, r_b), got {rank!r}")
        r_a, r_b = rank
    else:
        r_a = r_b = rank
    for name, r in (("r_a", r_a), ("r_b", r_b)):
        if isinstance(r, bool) or not isinstance(r, int) and not hasattr(r, "__index__"):
            raise RankError(f"{name} must be an integer, got {r!r}")
    r_a, r_b = int(r_a), int(r_b)
    if r_a < 1 or r_b < 1:
        raise RankError(f"ranks must be >= 1, got (r_a, r_b) = ({r_a}, {r_b})")
    if r_a > m:
        raise RankError(f"r_a = {r_a} exceeds m = {m} (stack shape (L, m, n) = {(L, m, n)})")
    if r_b > n:
        raise RankError(f"r_b = {r_b} exceeds n = {n} (stack shape (L, m, n) = {(L, m, n)})")
    if r_a > L * r_b or r_b > L * r_a:
        raise RankError(
            f"ranks (r_a, r_b) = ({r_a}, {r_b}) are not a valid multilinear rank for L = {L} layers: "
            f"need r_a <= L*r_b and r_b <= L*r_a"
        )
    return r_a, r_b


# ----------------------------------------------------------------------------- helpers
def _fix_signs(xp, U):
    """Flip columns so each column's largest-magnitude entry is positive (deterministic factors)."""
    a = xp.abs(U)
    mask = a == xp.max(a, axis=0, keepdims=True)
    v = xp.sum(xp.where(mask, U, xp.zeros_like(U)), axis=0)
    s = xp.where(v < 0, -xp.ones_like(v), xp.ones_like(v))
    return U * s


def _leading(xp, M, r: int):
    """Leading ``r`` left singular vectors of ``M`` (p, q), sign-fixed; shape (p, r).

    A wide unfolding (q > p, e.g. (m, L n)) is first reduced by a QR of ``M^T`` (M = R^T Q^T),
    so the SVD runs on the (p, p) factor: as accurate as an SVD of ``M`` (both backward
    stable; no Gram matrix, whose eigenvectors would lose accuracy as eps * cond^2) and
    several times faster than LAPACK's SVD of the wide matrix.
    """
    p, q = (int(s) for s in M.shape)
    if q > p:
        R = xp.linalg.qr(xp.matrix_transpose(M))[1]  # (p, p), M = R^T Q^T
        M = xp.matrix_transpose(R)
    U, _, _ = xp.linalg.svd(M, full_matrices=False)
    return _fix_signs(xp, U[:, :r])


def _unfold(xp, S, mode: int):
    """Mode unfolding of a stack ``S`` (L, p, q): mode 1 -> (p, L q), mode 2 -> (q, L p)."""
    L, p, q = (int(s) for s in S.shape)
    if mode == 1:
        return xp.reshape(xp.permute_dims(S, (1, 0, 2)), (p, L * q))
    return xp.reshape(xp.permute_dims(S, (2, 0, 1)), (q, L * p))


def _mT(xp, M):
    return xp.matrix_transpose(M)


@public
def reconstruct(A, G, B):
    """``A @ G[l] @ B.T`` for every layer: (m, r_a), (L, r_a, r_b), (n, r_b) -> (L, m, n)."""
    xp = array_namespace(A, G, B)
    return xp.matmul(xp.matmul(A, G), _mT(xp, B))


@public
def relative_error(T, approx) -> float:
    """``||T - approx||_F / ||T||_F`` over the whole stack (0 if both are zero)."""
    xp = array_namespace(T, approx)
    check_array(T, "T", dtype="real")
    check_array(approx, "approx", dtype="real", shape=tuple(T.shape))
    # scale by the largest magnitude first, so entries near 1e300 do not overflow the squares
    s = max(float(xp.max(xp.abs(T))), float(xp.max(xp.abs(approx))))
    if s == 0.0:
        return 0.0
    num = float(xp.linalg.vector_norm(T / s - approx / s))
    den = float(xp.linalg.vector_norm(T / s))
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


# ----------------------------------------------------------------------------- result
@public
@dataclass
class Tucker2:
    """A Tucker-2 decomposition ``T[l] ~= A @ G[l] @ B.T`` and how it was found.

    Attributes
    ----------
    A : array (m, r_a)
        Shared left factor, orthonormal columns.
    G : array (L, r_a, r_b)
        Per-layer cores.
    B : array (n, r_b)
        Shared right factor, orthonormal columns.
    errors : tuple of float
        Relative Frobenius error after the initialisation (``errors[0]``) and after each
        HOOI sweep; non-increasing up to rounding.
    n_iter : int
        HOOI sweeps run.
    converged : bool
        True when the stopping rule fired (rather than ``max_iter``).
    stop_reason : str
        Why the loop ended.
    init : str
        ``'hosvd'``, ``'random'`` or ``'given'``.
    tol : float
        The relative-decrease tolerance of the stopping rule.
    """

    A: Any
    G: Any
    B: Any
    errors: tuple = ()
    n_iter: int = 0
    converged: bool = False
    stop_reason: str = ""
    init: str = "hosvd"
    tol: float = 0.0
    shape: tuple = field(default=())

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.A.shape[1]), int(self.B.shape[1])

    @property
    def error(self) -> float:
        """Relative error of the final decomposition."""
        return float(self.errors[-1]) if self.errors else math.nan

    @property
    def n_params(self) -> int:
        """``r_a m + r_b n + L r_a r_b`` numbers stored."""
        L, m, n = self.shape
        r_a, r_b = self.ranks
        return r_a * m + r_b * n + L * r_a * r_b

    def reconstruct(self):
        """The approximation, shape (L, m, n)."""
        return reconstruct(self.A, self.G, self.B)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape), "ranks": list(self.ranks), "init": self.init, "n_iter": self.n_iter,
            "converged": self.converged, "stop_reason": self.stop_reason, "errors": [float(e) for e in self.errors],
            "n_params": self.n_params,
        }

    def __repr__(self) -> str:
        L, m, n = self.shape
        r_a, r_b = self.ranks
        lines = [
            f"Tucker2(L={L}, m={m}, n={n}, ranks=({r_a}, {r_b}), init={self.init!r})",
            f"  params     : {self.n_params:,} (A {r_a * m:,} + B {r_b * n:,} + cores {L * r_a * r_b:,}) "
            f"vs dense {L * m * n:,}",
            f"  sweeps     : {self.n_iter} ({'converged' if self.converged else 'not converged'}: {self.stop_reason})",
            f"  rel. error : {self.error:.6g}",
            "      sweep | rel. error   | decrease",
        ]
        idx = list(range(len(self.errors)))
        if len(idx) > 12:
            idx = idx[:6] + [None] + idx[-5:]
        for i in idx:
            if i is None:
                lines.append("        ... |              |")
                continue
            dec = "" if i == 0 else f"{self.errors[i - 1] - self.errors[i]:.3e}"
            lab = f"{i}" if i else f"0 ({self.init})"
            lines.append(f"  {lab:>9} | {self.errors[i]:.10f} | {dec}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- algorithms
@public
def tucker2(
    T,
    rank: int | Sequence[int],
    *,
    init: str | tuple = "hosvd",
    max_iter: int = 50,
    tol: float = 1e-7,
    seed: int = 0,
) -> Tucker2:
    """Tucker-2 decomposition of a stack ``T`` (L, m, n) by HOSVD + HOOI.

    Parameters
    ----------
    T : array (L, m, n)
        The stack (e.g. the updates ``Delta W_l`` of ``L`` layers, each (m, n)).
    rank : int or (r_a, r_b)
        Multilinear ranks of the shared factors (see :func:`check_ranks`).
    init : {'hosvd', 'random'} or (A, B)
        Initial factors: truncated HOSVD (default), seeded random orthonormal factors
        (``lrmath.rng.normal`` + QR), or given factors (orthonormalised by QR).
    max_iter : int
        Maximum HOOI sweeps (0 returns the initialisation, i.e. the truncated HOSVD).
    tol : float
        Stop when ``(err_prev - err) <= tol * err_prev``.
    seed : int
        Seed of ``init='random'``.

    Returns
    -------
    Tucker2
        Factors, cores, error history (``errors[0]`` after init), sweeps run, stop reason.

    Raises
    ------
    ShapeError, RankError, DTypeError, NonFiniteError
        On a non-3-D or empty stack, ranks out of range, a non-float dtype, NaN/Inf.
    """
    check_array(T, "T", ndim=3)
    r_a, r_b = check_ranks(rank, T.shape)
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    tol = float(tol)
    if not tol >= 0 or math.isinf(tol):
        raise OptionError(f"tol must be a finite number >= 0, got {tol}")
    xp, Tc, _ = as_compute(T)
    L, m, n = (int(s) for s in Tc.shape)
    tiny = 64 * _eps(Tc.dtype)

    if isinstance(init, str) and init == "hosvd":
        A = _leading(xp, _unfold(xp, Tc, 1), r_a)
        B = _leading(xp, _unfold(xp, Tc, 2), r_b)
        init_name = "hosvd"
    elif isinstance(init, str) and init == "random":
        from .. import rng

        dev = getattr(Tc, "device", None)
        kw = {} if dev is None or xp.__name__.endswith("numpy") else {"device": dev}
        Ra = rng.normal(seed, 0, (m, r_a), xp=xp, dtype=Tc.dtype, **kw)
        Rb = rng.normal(seed, 1, (n, r_b), xp=xp, dtype=Tc.dtype, **kw)
        A, B = xp.linalg.qr(Ra)[0], xp.linalg.qr(Rb)[0]
        init_name = "random"
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        A0, B0 = init
        check_array(A0, "init A", shape=(m, r_a))
        check_array(B0, "init B", shape=(n, r_b))
        A = xp.linalg.qr(xp.astype(A0, Tc.dtype))[0]
        B = xp.linalg.qr(xp.astype(B0, Tc.dtype))[0]
        init_name = "given"
    else:
        raise OptionError(f"init must be 'hosvd', 'random' or a pair (A, B), got {init!r}")

    G = xp.matmul(xp.matmul(_mT(xp, A), Tc), B)
    errors = [relative_error(Tc, reconstruct(A, G, B))]
    n_iter, converged, reason = 0, False, "max_iter = 0" if max_iter == 0 else ""
    if errors[0] <= tiny:
        converged, reason = True, f"error {errors[0]:.3g} at rounding level"
    else:
        for it in range(1, max_iter + 1):
            # one HOOI sweep: each half step maximises ||A^T T B|| over one factor
            A = _leading(xp, _unfold(xp, xp.matmul(Tc, B), 1), r_a)
            B = _leading(xp, _unfold(xp, xp.matmul(_mT(xp, Tc), A), 1), r_b)
            G = xp.matmul(xp.matmul(_mT(xp, A), Tc), B)
            errors.append(relative_error(Tc, reconstruct(A, G, B)))
            n_iter = it
            prev, cur = errors[-2], errors[-1]
            if cur <= tiny:
                converged, reason = True, f"error {cur:.3g} at rounding level"
                break
            if prev - cur <= tol * prev:
                converged, reason = True, f"relative decrease {(prev - cur) / prev:.2e} <= tol {tol:.1e}"
                break
        else:
            if max_iter:
                reason = f"max_iter = {max_iter} reached"
    return Tucker2(A=A, G=G, B=B, errors=tuple(errors), n_iter=n_iter, converged=converged,
                   stop_reason=reason, init=init_name, tol=tol, shape=(L, m, n))


@public
def hosvd2(T, rank: int | Sequence[int]) -> Tucker2:
    """Truncated Tucker-2 HOSVD of ``T`` (L, m, n): :func:`tucker2` with no HOOI sweep."""
    return tucker2(T, rank, init="hosvd", max_iter=0)


def _eps(dtype) -> float:
    name = str(dtype).rsplit(".", 1)[-1]
    return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(name, 2.0**-52)
