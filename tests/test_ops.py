"""Orthogonal operators: orthogonality, exact inverse, fast == dense, independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from lrmath import ops, rng
from lrmath.errors import ShapeError
from lrmath.testing import assert_close, tolerance

from .strategies import dims, seeds

KINDS = ["identity", "hadamard", "dct", "rdct", "haar", "butterfly"]


@given(st.sampled_from(KINDS), dims(1, 40), seeds())
def test_orthogonal_and_inverse(kind, n, seed):
    Q = ops.orthogonal(kind, n, seed)
    M = Q.matrix()
    tol = tolerance(np.float64, n, depth=int(math.log2(n)) + 2)
    np.testing.assert_allclose(M @ M.T, np.eye(n), atol=tol)
    x = np.random.default_rng(seed % 1000).standard_normal((3, n))
    np.testing.assert_allclose(Q.apply_t(Q.apply(x)), x, atol=tol * 4)
    # fast path == dense matrix, along another axis too
    np.testing.assert_allclose(Q.apply(x), x @ M.T, atol=tol * 4)
    np.testing.assert_allclose(Q.apply_t(x.T, axis=0), M.T @ x.T, atol=tol * 4)


def test_dct_matches_formula():
    n = 12
    k, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    C = np.sqrt(2 / n) * np.cos(np.pi * k * (2 * j + 1) / (2 * n))
    C[0] /= np.sqrt(2)
    np.testing.assert_allclose(ops.orthogonal("dct", n).matrix(), C, atol=1e-14)
    D = np.diag(rng.signs(3, ops.STREAM_SIGNS, n))
    np.testing.assert_allclose(ops.orthogonal("rdct", n, 3).matrix(), C @ D, atol=1e-14)


def test_hadamard_matches_sylvester_and_padding_rule():
    for n in (16, 24, 96):
        p = n & -n
        q = n // p
        H = scipy.linalg.hadamard(p) / math.sqrt(p)
        R = ops._haar_np(q, 5, ops.STREAM_QFACTOR) if q > 1 else np.ones((1, 1))
        D = np.diag(rng.signs(5, ops.STREAM_SIGNS, n))
        np.testing.assert_allclose(ops.orthogonal("hadamard", n, 5).matrix(), np.kron(H, R) @ D, atol=1e-13)


def test_haar_is_haar_distributed():
    # For Haar Q, E[Q_11^2] = 1/n and E[trace(Q)] = 0; check over seeds with z-scores
    from lrmath.testing import assert_z

    n, reps = 6, 600
    q11 = np.array([ops.orthogonal("haar", n, s).matrix()[0, 0] ** 2 for s in range(reps)])
    tr = np.array([np.trace(ops.orthogonal("haar", n, s).matrix()) for s in range(reps)])
    assert_z((q11.mean() - 1 / n) / (q11.std(ddof=1) / math.sqrt(reps)), family=2)
    assert_z(tr.mean() / (tr.std(ddof=1) / math.sqrt(reps)), family=2)  # Var(trace) = 1


def test_kron_matches_numpy_kron():
    A, B = ops.orthogonal("haar", 3, 1), ops.orthogonal("hadamard", 8, 2)
    K = ops.kron(A, B)
    np.testing.assert_allclose(K.matrix(), np.kron(A.matrix(), B.matrix()), atol=1e-13)
    assert ops.orthogonal(K.spec) == K


def test_regenerable_from_spec():
    Q = ops.orthogonal("butterfly", 48, 9)
    Q2 = ops.OrthogonalOperator.from_spec(Q.spec)
    assert np.array_equal(Q.matrix(), Q2.matrix())
    assert not np.array_equal(Q.matrix(), ops.orthogonal("butterfly", 48, 10).matrix())


def test_backends_agree(xp):
    from lrmath.backend import convert

    x = np.random.default_rng(0).standard_normal((4, 24)).astype(np.float32)
    kind = {"numpy": "numpy", "array_api_strict": "array_api_strict", "cupy": "cupy"}.get(xp.__name__.split(".")[0], "torch")
    xa = convert(x, kind)
    for k in KINDS:
        Q = ops.orthogonal(k, 24, 3)
        y = Q.apply(xa)
        assert_close(y, convert(Q.apply(x), kind), n=24, depth=5)
        assert_close(Q.apply_t(y), xa, n=24, depth=10)


def test_low_precision_storage_policy():
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    Q = ops.orthogonal("hadamard", 32, 0)
    y = Q.apply(x)
    assert y.dtype == torch.bfloat16
    ref = Q.apply(x.float()).to(torch.bfloat16)
    assert torch.equal(y, ref)  # computed in float32, rounded once


def test_shape_errors():
    Q = ops.orthogonal("dct", 8)
    with pytest.raises(ShapeError, match="size 8"):
        Q.apply(np.ones((3, 7)))
    with pytest.raises(ValueError):
        ops.orthogonal("nope", 8)
    with pytest.raises(ValueError):
        ops.orthogonal("dct", 0)
    with pytest.raises(ShapeError):
        ops.fwht(np.ones(6))
