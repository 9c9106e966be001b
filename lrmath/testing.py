"""Test helpers shared by the suite and the notebooks (like ``numpy.testing``).

* :func:`tolerance` -- relative tolerance derived from the dtype's machine epsilon
  and the problem size (the length of the reductions involved), not picked to pass.
* :func:`assert_close` -- checks namespace, dtype, shape and values.
* :func:`z_limit`, :func:`assert_z` -- statistical assertions: ``|z| < 4`` for a single
  check, widened by a Bonferroni correction across a family of ``k`` checks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import backend_name, public, to_numpy
from .errors import ArgumentTypeError

__all__ = ["eps", "tolerance", "assert_close", "z_limit", "z_score", "assert_z"]

_EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}


def _name(dtype: Any) -> str:
    if isinstance(dtype, type):  # np.float64 the class
        return np.dtype(dtype).name
    return str(dtype).rsplit(".", 1)[-1]


@public(finite=False, result=False)
def eps(dtype: Any) -> float:
    """Machine epsilon of a floating dtype (numpy, torch, cupy, array-API or ml_dtypes)."""
    name = _name(dtype)
    if name not in _EPS:
        raise ArgumentTypeError(f"no epsilon for dtype {name}")
    return _EPS[name]


@public(finite=False, result=False)
def tolerance(dtype: Any, n: int = 1, *, depth: int = 1, safety: float = 4.0) -> float:
    """Relative tolerance for results of ``depth`` chained reductions of length ``n``.

    A float dot product of length ``n`` has error at most ``n * eps`` in the worst case
    and about ``sqrt(n) * eps`` for random data (Higham, ch. 3); we take
    ``safety * depth * (sqrt(n) + 1) * eps`` plus one rounding to the storage dtype,
    which is what an independent implementation in the same precision can differ by.
    """
    e = eps(dtype)
    return safety * depth * (math.sqrt(max(int(n), 1)) + 1.0) * e + e


@public(finite=False, result=False)
def assert_close(
    actual: Any,
    desired: Any,
    *,
    n: int = 1,
    depth: int = 1,
    rtol: float | None = None,
    atol: float | None = None,
    check_namespace: bool = True,
    check_dtype: bool = True,
    check_shape: bool = True,
    err_msg: str = "",
) -> None:
    """Assert ``actual`` matches ``desired``: same kind of array, dtype, shape, and values.

    Values are compared as ``|a - d| <= atol + rtol * |d|`` with ``atol`` defaulting to
    ``rtol * max|d|`` (so entries that cancel to ~0 are judged on the scale of the
    result). ``rtol`` defaults to :func:`tolerance` of ``desired``'s dtype (or the coarser
    of both) for reductions of length ``n`` chained ``depth`` times.
    """
    msg = f" {err_msg}" if err_msg else ""
    if check_namespace and backend_name(actual) != backend_name(desired):
        raise AssertionError(f"array kinds differ: {backend_name(actual)} vs {backend_name(desired)}.{msg}")
    if check_dtype and _name(actual.dtype) != _name(desired.dtype):
        raise AssertionError(f"dtypes differ: {_name(actual.dtype)} vs {_name(desired.dtype)}.{msg}")
    if check_shape and tuple(actual.shape) != tuple(desired.shape):
        raise AssertionError(f"shapes differ: {tuple(actual.shape)} vs {tuple(desired.shape)}.{msg}")
    a = np.asarray(to_numpy(actual), dtype=np.float64) if _name(actual.dtype) != "bool" else to_numpy(actual)
    d = np.asarray(to_numpy(desired), dtype=np.float64) if _name(desired.dtype) != "bool" else to_numpy(desired)
    if rtol is None:
        da, dd = _name(actual.dtype), _name(desired.dtype)
        cands = [t for t in (da, dd) if t in _EPS]
        rtol = max(tolerance(t, n, depth=depth) for t in cands) if cands else 0.0
    if a.size == 0:
        return
    if atol is None:
        atol = rtol * float(np.max(np.abs(d))) if d.size else 0.0
    err = np.abs(a - d)
    bound = atol + rtol * np.abs(d)
    bad = ~(err <= bound)
    if np.any(bad):
        i = np.unravel_index(np.argmax(np.where(bad, err - bound, -np.inf)), a.shape)
        raise AssertionError(
            f"{int(bad.sum())} of {a.size} entries differ beyond rtol={rtol:.3g}, atol={atol:.3g}; "
            f"worst at {tuple(int(j) for j in i)}: {a[i]!r} vs {d[i]!r}; max abs err {float(err.max()):.3g}.{msg}"
        )


@public(finite=False, result=False)
def z_limit(family: int = 1, base: float = 4.0) -> float:
    """Two-sided |z| limit for one of ``family`` checks: the per-check false-alarm rate of
    ``|z| < base`` divided by ``family`` (Bonferroni)."""
    from scipy.stats import norm

    p = 2 * norm.sf(base)
    return float(norm.isf(p / (2 * max(int(family), 1))))


@public(finite=False, result=False)
def z_score(estimate: float, expected: float, std_err: float) -> float:
    """``(estimate - expected) / std_err`` (``inf`` if ``std_err`` is 0 and they differ)."""
    diff = float(estimate) - float(expected)
    if std_err <= 0:
        return 0.0 if diff == 0 else math.inf
    return diff / float(std_err)


@public(finite=False, result=False)
def assert_z(z: float, *, family: int = 1, what: str = "") -> None:
    """Assert ``|z|`` is within :func:`z_limit` for a family of ``family`` checks."""
    lim = z_limit(family)
    if not abs(z) < lim:
        raise AssertionError(f"|z| = {abs(z):.2f} >= {lim:.2f} (family of {family}){': ' + what if what else ''}")
