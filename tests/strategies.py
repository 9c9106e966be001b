"""Shared hypothesis strategies: shapes (ragged, non-power-of-two, 1-element), ranks, arrays."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = ("float32", "float64")


def dims(min_value: int = 1, max_value: int = 48):
    """A dimension: mostly ragged sizes, with 1 and powers of two mixed in."""
    return st.one_of(
        st.integers(min_value, max_value),
        st.sampled_from([d for d in (1, 2, 4, 8, 16, 32, 64) if min_value <= d <= max_value]),
    )


def pow2(min_exp: int = 0, max_exp: int = 7):
    return st.integers(min_exp, max_exp).map(lambda e: 2**e)


def seeds():
    return st.integers(0, 2**32 - 1)


def matrices(shape, dtype="float64", scale: float = 1.0, seed=None):
    """A float matrix of ``shape`` with entries from a seeded normal (fast; hypothesis picks the seed)."""

    @st.composite
    def _m(draw):
        s = draw(seeds()) if seed is None else seed
        g = np.random.default_rng(s)
        return (g.standard_normal(shape) * scale).astype(dtype)

    return _m()


def finite_arrays(shape, dtype="float64", max_abs: float = 1e3):
    """Arrays with arbitrary finite entries (edge values included)."""
    return hnp.arrays(dtype, shape, elements=st.floats(-max_abs, max_abs, allow_nan=False, width=64 if dtype == "float64" else 32))


def matmul_shapes(max_dim: int = 40):
    """(t, m, n) with t possibly 1."""
    return st.tuples(dims(1, max_dim), dims(1, max_dim), dims(1, max_dim))


def ranks(max_rank: int):
    return st.integers(1, max(1, max_rank))
