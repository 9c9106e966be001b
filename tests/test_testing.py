"""The test helpers themselves must be able to fail."""

from __future__ import annotations

import numpy as np
import pytest

from lrmath.testing import assert_close, assert_z, eps, tolerance, z_limit


def test_tolerance_grows_with_size_and_precision():
    assert tolerance(np.float32, 10_000) > tolerance(np.float32, 10) > tolerance(np.float64, 10)
    assert eps("bfloat16") == 2.0**-7
    with pytest.raises(TypeError):
        eps(np.int32)


def test_assert_close_catches_value_dtype_shape_and_kind():
    a = np.ones(4)
    assert_close(a + 1e-17, a)
    with pytest.raises(AssertionError, match="differ beyond"):
        assert_close(a + 1e-6, a)
    with pytest.raises(AssertionError, match="dtypes"):
        assert_close(a.astype(np.float32), a)
    with pytest.raises(AssertionError, match="shapes"):
        assert_close(np.ones(3), a)
    torch = pytest.importorskip("torch")
    with pytest.raises(AssertionError, match="kinds"):
        assert_close(torch.ones(4, dtype=torch.float64), a)


def test_float32_matmul_within_derived_tolerance():
    g = np.random.default_rng(0)
    x, y = g.standard_normal((50, 300)), g.standard_normal((300, 40))
    ref = x @ y
    got = (x.astype(np.float32) @ y.astype(np.float32)).astype(np.float32)
    assert_close(got, ref.astype(np.float32), n=300)
    with pytest.raises(AssertionError):  # a bf16-sized error is caught at float32 tolerance
        assert_close((ref * (1 + 2**-8)).astype(np.float32), ref.astype(np.float32), n=300)


def test_z_limits():
    assert abs(z_limit(1) - 4.0) < 1e-9
    assert z_limit(100) > z_limit(10) > 4.0
    assert_z(3.9)
    with pytest.raises(AssertionError):
        assert_z(4.1)
    assert_z(4.1, family=50)
