"""Orthogonal operators shared by Kashin quantization, SparseGrad and randomized matmul.

Every operator is an orthogonal ``n x n`` matrix ``Q`` that is never stored: it is
regenerated from ``(kind, n, seed)`` (randomness from :mod:`lrmath.rng`, so every
backend rebuilds the same operator) and applied with a fast transform where one
exists.

Kinds
-----
``identity``
    ``Q = I``.
``hadamard``
    Randomized Walsh-Hadamard ``Q = (H_p / sqrt(p)  kron  R_q) D``, where
    ``n = p * q`` with ``p`` the largest power of two dividing ``n``, ``D`` holds
    seeded random signs, and ``R_q`` is a seeded Haar ``q x q`` factor (absent when
    ``q = 1``). This is the *padding rule* for sizes that are not powers of two: no
    zero padding, the operator stays square and orthogonal, and costs
    ``O(n log p + n q)``.
``dct``
    Orthonormal DCT-II (SciPy's ``dct(norm='ortho')`` on NumPy; the array's own FFT
    elsewhere, by Makhoul's reordering).
``rdct``
    Randomized DCT, ``Q = C D`` with random signs ``D``.
``haar``
    Dense Haar-random orthogonal matrix: QR of a seeded Gaussian matrix with the sign
    fix ``Q <- Q diag(sign(diag R))`` (Mezzadri 2007), which makes the law exactly Haar.
``butterfly``
    ``log2 p`` layers of seeded 2x2 rotations on index pairs ``(i, i + h)`` (then the
    ``R_q`` factor as for ``hadamard``): orthogonal, ``O(n log n)`` to apply.
``kron``
    Kronecker product ``Q_1 kron Q_2 kron ...`` of smaller operators (the matrix form
    ``Q_1^T V Q_2`` of the Kashin paper acts on ``vec(V)`` like this).

Interface
---------
``op.apply(x, axis=-1)`` returns ``Q x`` for every vector along ``axis`` (batched over
all other axes); ``op.apply_t(x, axis=-1)`` returns ``Q^T x``; ``op.matrix()`` the dense
``Q`` (for tests and small sizes). Inputs may be any array kind (NumPy, CuPy, torch,
array-API); bfloat16/float16 are computed in float32 and cast back.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from . import rng
from .backend import as_compute, backend_name, check_array, check_axis, check_int, device_of, like, public, restore
from .errors import ArgumentTypeError, OptionError, ShapeError

__all__ = [
    "KINDS",
    "OrthogonalOperator",
    "orthogonal",
    "kron",
    "fwht",
    "dct2",
    "idct2",
]

KINDS = ("identity", "hadamard", "dct", "rdct", "haar", "butterfly", "kron")

# Streams of the operator randomness (documented so GPU kernels can regenerate them).
STREAM_SIGNS = 1
STREAM_HAAR = 2
STREAM_ANGLES = 3
STREAM_QFACTOR = 4


def _split_pow2(n: int) -> tuple[int, int]:
    p = n & -n  # largest power of two dividing n
    return p, n // p


@lru_cache(maxsize=64)
def _haar_np(n: int, seed: int, stream: int) -> np.ndarray:
    g = rng.normal(seed, stream, (n, n))
    q, r = np.linalg.qr(g)
    d = np.sign(np.diag(r))
    d[d == 0] = 1.0
    return np.ascontiguousarray(q * d[None, :])


@lru_cache(maxsize=64)
def _signs_np(n: int, seed: int) -> np.ndarray:
    return rng.signs(seed, STREAM_SIGNS, n)


@lru_cache(maxsize=64)
def _angles_np(n: int, seed: int) -> np.ndarray:
    levels = int(math.log2(n)) if n > 1 else 0
    return 2.0 * np.pi * rng.uniform(seed, STREAM_ANGLES, (max(levels, 1), max(n // 2, 1)))


# ----------------------------------------------------------------------------- kernels on (b, n) rows
@public
def fwht(x, xp=None):
    """Unnormalised fast Walsh-Hadamard transform along the last axis (length a power of two).

    ``H`` is symmetric with ``H H = n I``; ``fwht(x) / sqrt(n)`` is orthonormal.
    """
    if xp is None:
        from .backend import array_namespace

        xp = array_namespace(x)
    n = x.shape[-1]
    if n & (n - 1):
        raise ShapeError(f"fwht needs a power-of-two length, got {n}")
    lead = tuple(x.shape[:-1])
    h = 1
    while h < n:
        y = xp.reshape(x, lead + (n // (2 * h), 2, h))
        a = y[..., 0, :]
        b = y[..., 1, :]
        x = xp.reshape(xp.stack([a + b, a - b], axis=-2), lead + (n,))
        h *= 2
    return x


def _dct_scale(xp, n, dtype, dev):
    k = xp.arange(n, dtype=dtype, **dev)
    scale = xp.full((n,), math.sqrt(2.0 / n), dtype=dtype, **dev)
    return k, xp.where(k == 0, xp.asarray(math.sqrt(1.0 / n), dtype=dtype, **dev), scale)


def _dev(x):
    return {} if backend_name(x) == "numpy" else {"device": device_of(x)}


@public
def dct2(x, xp=None):
    """Orthonormal DCT-II along the last axis (SciPy on NumPy, the namespace's FFT otherwise)."""
    if xp is None:
        from .backend import array_namespace

        xp = array_namespace(x)
    if backend_name(x) == "numpy":
        import scipy.fft

        return scipy.fft.dct(x, type=2, norm="ortho", axis=-1)
    n = x.shape[-1]
    dev = _dev(x)
    # Makhoul: v = [x0, x2, x4, ..., x5, x3, x1]; X_k = Re(exp(-i pi k / 2n) FFT(v)_k)
    v = xp.concat([x[..., 0::2], xp.flip(x[..., 1::2], axis=-1)], axis=-1)
    cdt = xp.complex64 if x.dtype == xp.float32 else xp.complex128
    V = xp.fft.fft(xp.astype(v, cdt), axis=-1)
    k, scale = _dct_scale(xp, n, x.dtype, dev)
    ang = -math.pi / (2 * n) * k
    re = xp.real(V) * xp.cos(ang) - xp.imag(V) * xp.sin(ang)
    return re * scale


@public
def idct2(x, xp=None):
    """Inverse (= transpose) of :func:`dct2`: the orthonormal DCT-III along the last axis."""
    if xp is None:
        from .backend import array_namespace

        xp = array_namespace(x)
    if backend_name(x) == "numpy":
        import scipy.fft

        return scipy.fft.idct(x, type=2, norm="ortho", axis=-1)
    n = x.shape[-1]
    dev = _dev(x)
    cdt = xp.complex64 if x.dtype == xp.float32 else xp.complex128
    k, scale = _dct_scale(xp, n, x.dtype, dev)
    c = x / scale  # c_k = sum_n v... (unnormalised DCT-II coefficients)
    # c_{n-k} with c_n = 0: reverse of c[1:], then a zero in front
    rev = xp.concat([xp.zeros(tuple(x.shape[:-1]) + (1,), dtype=x.dtype, **dev), xp.flip(c[..., 1:], axis=-1)], axis=-1)
    ang = math.pi / (2 * n) * k
    cos, sin = xp.cos(ang), xp.sin(ang)
    # V_k = exp(i ang) (c_k - i rev_k)
    re = cos * c + sin * rev
    im = sin * c - cos * rev
    V = xp.astype(re, cdt) + xp.astype(im, cdt) * xp.asarray(1j, dtype=cdt, **dev)
    v = xp.real(xp.fft.ifft(V, axis=-1))
    half = (n + 1) // 2
    even = v[..., :half]
    odd = xp.flip(v[..., half:], axis=-1)
    out = xp.stack([even[..., : n // 2], odd], axis=-1)
    out = xp.reshape(out, tuple(x.shape[:-1]) + (2 * (n // 2),))
    if n % 2:
        out = xp.concat([out, even[..., -1:]], axis=-1)
    return out


# ----------------------------------------------------------------------------- the operator
@public
class OrthogonalOperator:
    """A seeded orthogonal ``n x n`` operator; see the module docstring for the kinds.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS` (``'kron'`` is built with :func:`kron`).
    n : int
        Size.
    seed : int
        Seed of all its randomness (signs, Haar factors, rotation angles).
    """

    def __init__(self, kind: str, n: int, seed: int = 0, *, factors: Sequence["OrthogonalOperator"] | None = None):
        if kind not in KINDS:
            raise OptionError(f"unknown operator kind {kind!r}; choose one of {KINDS}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise OptionError(f"operator size must be a positive integer, got {n!r}")
        if kind == "kron":
            if not factors:
                raise OptionError("a 'kron' operator needs factors")
            if int(np.prod([f.n for f in factors])) != n:
                raise ShapeError(f"kron factor sizes {[f.n for f in factors]} do not multiply to {n}")
        self.kind = kind
        self.n = int(n)
        self.seed = check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
        self.factors = tuple(factors) if factors else ()
        self._cache: dict[Any, Any] = {}

    # -- identity and serialisation
    @property
    def spec(self) -> dict:
        """Plain-dict description ``{kind, n, seed[, factors]}``; :func:`orthogonal` rebuilds it."""
        d = {"kind": self.kind, "n": self.n, "seed": self.seed}
        if self.factors:
            d["factors"] = [f.spec for f in self.factors]
        return d

    @classmethod
    def from_spec(cls, spec: dict) -> "OrthogonalOperator":
        if spec["kind"] == "kron":
            return kron(*[cls.from_spec(f) for f in spec["factors"]])
        return cls(spec["kind"], spec["n"], spec.get("seed", 0))

    def __repr__(self) -> str:
        if self.kind == "kron":
            return "OrthogonalOperator(kron: " + " x ".join(repr(f) for f in self.factors) + ")"
        return f"OrthogonalOperator(kind={self.kind!r}, n={self.n}, seed={self.seed})"

    def __eq__(self, other) -> bool:
        return isinstance(other, OrthogonalOperator) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(repr(self.spec))

    @property
    def flops(self) -> int:
        """Approximate floating-point operations to apply the operator to one vector."""
        n = self.n
        p, q = _split_pow2(n)
        if self.kind == "identity":
            return 0
        if self.kind in ("hadamard", "butterfly"):
            lg = int(math.log2(p))
            per = n * lg * (1 if self.kind == "hadamard" else 3)
            return per + n + (2 * n * q if q > 1 else 0)
        if self.kind in ("dct", "rdct"):
            return int(5 * n * math.log2(max(n, 2))) + 4 * n
        if self.kind == "haar":
            return 2 * n * n
        return sum(f.flops * (n // f.n) for f in self.factors)

    # -- constants converted to the caller's array kind, cached
    def _const(self, name: str, make, ref):
        key = (name, backend_name(ref), str(device_of(ref)), str(ref.dtype))
        c = self._cache.get(key)
        if c is None:
            from .backend import array_namespace

            xp = array_namespace(ref)
            c = xp.astype(like(make(), ref), ref.dtype)
            self._cache[key] = c
        return c

    # -- rows: y = x Q^T (apply) and y = x Q (apply_t) for x of shape (b, n)
    def _rows(self, x, xp, transpose: bool):
        k = self.kind
        n = self.n
        if k == "identity":
            return x
        if k == "haar":
            Q = self._const("haar", lambda: _haar_np(n, self.seed, STREAM_HAAR), x)
            return x @ Q if transpose else x @ xp.permute_dims(Q, (1, 0))
        if k in ("dct", "rdct"):
            D = self._const("signs", lambda: _signs_np(n, self.seed), x) if k == "rdct" else None
            if not transpose:
                return dct2(x * D if D is not None else x, xp)
            y = idct2(x, xp)
            return y * D if D is not None else y
        if k in ("hadamard", "butterfly"):
            return self._pow2_rows(x, xp, transpose)
        if k == "kron":
            b = x.shape[0]
            sizes = [f.n for f in self.factors]
            y = xp.reshape(x, (b, *sizes))
            for ax, f in enumerate(self.factors, start=1):
                y = f.apply_t(y, axis=ax) if transpose else f.apply(y, axis=ax)
            return xp.reshape(y, (b, n))
        raise AssertionError(k)  # pragma: no cover

    def _pow2_rows(self, x, xp, transpose):
        n = self.n
        p, q = _split_pow2(n)
        b = x.shape[0]
        R = self._const("qfactor", lambda: _haar_np(q, self.seed, STREAM_QFACTOR), x) if q > 1 else None
        if self.kind == "hadamard":
            D = self._const("signs", lambda: _signs_np(n, self.seed), x)
            if not transpose:
                y = xp.reshape(x * D, (b, p, q))
                y = xp.permute_dims(fwht(xp.permute_dims(y, (0, 2, 1)), xp), (0, 2, 1)) / math.sqrt(p)
                if R is not None:
                    y = y @ xp.permute_dims(R, (1, 0))
                return xp.reshape(y, (b, n))
            y = xp.reshape(x, (b, p, q))
            if R is not None:
                y = y @ R
            y = xp.permute_dims(fwht(xp.permute_dims(y, (0, 2, 1)), xp), (0, 2, 1)) / math.sqrt(p)
            return xp.reshape(y, (b, n)) * D
        # butterfly
        ang = self._const("angles", lambda: _angles_np(p, self.seed), x)
        levels = int(math.log2(p))
        y = xp.reshape(x, (b, p, q))
        if transpose and R is not None:
            y = y @ R
        order = range(levels - 1, -1, -1) if transpose else range(levels)
        for lvl in order:
            h = 1 << lvl
            c = xp.reshape(xp.cos(ang[lvl, :]), (p // (2 * h), 1, h, 1))
            s = xp.reshape(xp.sin(ang[lvl, :]), (p // (2 * h), 1, h, 1))
            z = xp.reshape(y, (b, p // (2 * h), 2, h, q))
            lo = z[:, :, 0:1, :, :]
            hi = z[:, :, 1:2, :, :]
            if transpose:
                nlo, nhi = c * lo + s * hi, -s * lo + c * hi
            else:
                nlo, nhi = c * lo - s * hi, s * lo + c * hi
            y = xp.reshape(xp.concat([nlo, nhi], axis=2), (b, p, q))
        if not transpose and R is not None:
            y = y @ xp.permute_dims(R, (1, 0))
        return xp.reshape(y, (b, n))

    def _along(self, x, axis: int, transpose: bool):
        xp = check_array(x, "x", finite=False, nonempty=False)
        nd = len(x.shape)
        if nd == 0:
            raise ShapeError("x must have at least one dimension")
        ax = check_axis(axis, nd)  # no modulo wrap: axis 2 of a 2-D array is an error
        if x.shape[ax] != self.n:
            raise ShapeError(f"operator of size {self.n} applied along axis {axis} of length {x.shape[ax]} (shape {tuple(x.shape)})")
        xp, xc, dt = as_compute(x, xp)
        moved = xp.moveaxis(xc, ax, -1) if ax != nd - 1 else xc
        lead = tuple(moved.shape[:-1])
        rows = xp.reshape(moved, (-1, self.n))
        y = self._rows(rows, xp, transpose)
        y = xp.reshape(y, lead + (self.n,))
        if ax != nd - 1:
            y = xp.moveaxis(y, -1, ax)
        return restore(xp, y, dt)

    def apply(self, x, axis: int = -1):
        """``Q x`` for every vector of ``x`` along ``axis`` (any leading/trailing batch axes)."""
        return self._along(x, axis, transpose=False)

    def apply_t(self, x, axis: int = -1):
        """``Q^T x`` (the inverse) for every vector of ``x`` along ``axis``."""
        return self._along(x, axis, transpose=True)

    def matrix(self, xp=np, dtype=None):
        """The dense ``n x n`` matrix ``Q`` (float64 NumPy by default), built by applying to ``I``."""
        eye = np.eye(self.n)
        Q = self.apply(eye, axis=0)  # columns are Q e_j
        if xp is not np:
            Q = xp.asarray(Q)
        return Q if dtype is None else xp.astype(Q, dtype)


@public
def orthogonal(kind: str | dict | OrthogonalOperator, n: int | None = None, seed: int = 0) -> OrthogonalOperator:
    """Build an operator from ``(kind, n, seed)``, a ``spec`` dict or an existing operator.

    Examples
    --------
    >>> Q = orthogonal("hadamard", 256, seed=1)
    >>> import numpy as np
    >>> x = np.ones((3, 256))
    >>> bool(np.allclose(Q.apply_t(Q.apply(x)), x))
    True
    """
    if isinstance(kind, OrthogonalOperator):
        return kind
    if isinstance(kind, dict):
        return OrthogonalOperator.from_spec(kind)
    if n is None:
        raise ArgumentTypeError("orthogonal() needs the size n")
    return OrthogonalOperator(kind, n, seed)


@public
def kron(*factors: OrthogonalOperator) -> OrthogonalOperator:
    """Kronecker product ``Q_1 kron Q_2 kron ...`` (acts on a vector reshaped to ``(n_1, n_2, ...)``)."""
    if not factors:
        raise OptionError("kron needs at least one factor")
    n = int(np.prod([f.n for f in factors]))
    return OrthogonalOperator("kron", n, 0, factors=factors)
