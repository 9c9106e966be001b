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


# ----------------------------------------------------------------------------- hostile input
# Strategies for the fuzz suite (tests/test_fuzz.py, tests/test_cli_errors.py): values a hostile
# or careless user passes where lrmath expects an array, an integer, a name or a path.


def _bf16():
    try:
        import ml_dtypes

        return ml_dtypes.bfloat16
    except ImportError:  # pragma: no cover - ml_dtypes ships with the test extra
        return np.float16


def bad_arrays_list(like=None) -> list:
    """A fixed, deterministic list of hostile arrays (shape/dtype/value edge cases).

    ``like`` (an array) is the valid input being replaced: variants keep its shape
    where that makes the case sharper (NaN at one entry, an integer copy, ...).
    """
    base = np.asarray(like, dtype=np.float64) if like is not None and getattr(like, "dtype", None) is not None and np.asarray(like).dtype.kind == "f" else np.ones((4, 6))
    shp = base.shape if base.size else (4, 6)
    ref = np.random.default_rng(0).standard_normal(shp)
    out = []
    for v in (np.nan, np.inf, -np.inf):
        a = ref.copy()
        a.flat[a.size // 2] = v
        out.append(a)
    out += [
        ref * 1e300,                         # finite but overflows any square
        np.full(shp, 1e-310),                # subnormal
        np.zeros(shp),
        np.empty((0,) + tuple(shp[1:])),     # empty
        np.empty(tuple(shp[:-1]) + (0,)),
        np.float64(1.5),                     # 0-d scalar
        np.array(1.5),                       # 0-d array
        ref.reshape(-1),                     # 1-D
        ref[..., None],                      # one more axis
        np.ones((3, 5, 7, 2)),               # 4-D, odd sizes
        ref.astype(np.int64),
        ref > 0,                              # bool
        ref.astype(np.complex128) + 1j,       # complex
        np.array([[object(), 1]], dtype=object),
        ref.astype(np.float16),
        ref.astype(_bf16()),
        ref.astype(np.float32)[::-1],         # negative strides
        ref.tolist(),                         # nested list, not an array
        "array",
        None,
    ]
    return out


BAD_SCALARS = (
    None, True, False, 2.5, 2.0, -1, 0, 1, 2**62, -(2**62), float("nan"), float("inf"), -float("inf"),
    1e300, np.int64(3), np.float32(2.5), 1 + 2j, "bogus", "", b"x", [1, 2], (3,), {"a": 1}, object(),
)


def bad_scalars():
    """Hostile scalars: bool, fractional float, NaN/Inf, huge, negative, complex, strings, containers."""
    return st.sampled_from(BAD_SCALARS)


def bad_arrays(like=None):
    """Hostile arrays (as a strategy): the fixed list plus random-shaped arrays with bad values."""
    fixed = st.sampled_from(bad_arrays_list(like))

    @st.composite
    def _random(draw):
        ndim = draw(st.integers(0, 4))
        shape = tuple(draw(st.integers(0, 5)) for _ in range(ndim))
        dtype = draw(st.sampled_from(["float64", "float32", "float16", "int32", "bool", "complex64"]))
        fill = draw(st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, 1e300, 1e-300]))
        a = np.full(shape, fill) if dtype.startswith(("float", "complex")) else np.full(shape, 1)
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(dtype)

    return st.one_of(fixed, _random())


def bad_values(like=None):
    """Any hostile value for a parameter: an array or a scalar."""
    return st.one_of(bad_scalars(), bad_arrays(like))


def bad_file_bytes(good: bytes):
    """Corruptions of a valid file: truncation, byte flips, garbage, an empty file."""

    @st.composite
    def _c(draw):
        kind = draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "append"]))
        if kind == "empty" or not good:
            return b""
        if kind == "truncate":
            return good[: draw(st.integers(0, len(good) - 1))]
        if kind == "flip":
            i = draw(st.integers(0, len(good) - 1))
            bit = draw(st.integers(0, 7))
            return good[:i] + bytes([good[i] ^ (1 << bit)]) + good[i + 1:]
        if kind == "append":
            return good + draw(st.binary(min_size=1, max_size=16))
        return draw(st.binary(min_size=1, max_size=64))

    return _c()
