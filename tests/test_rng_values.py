"""Value oracles for lrmath.rng: the documented formulas recomputed in pure Python integers.

A one-line change to a constant, a shift, the counter offset or the Box-Muller mapping changes
these values; nothing here calls lrmath's own generator to get the expected numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrmath import rng

M64 = (1 << 64) - 1


def _mix(z: int) -> int:
    z &= M64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def _key(seed: int, stream: int) -> int:
    return _mix(seed * 0x9E3779B97F4A7C15 + _mix(stream + 0xD1B54A32D192ED03))


def _bits(seed: int, stream: int, i: int) -> int:
    return _mix(_key(seed, stream) + (i + 1) * 0x9E3779B97F4A7C15)


CASES = [(0, 0, 0), (1, 0, 5), (12345, 7, 0), (2**64 - 1, 2**64 - 1, 3), (42, 1, 1000)]


@pytest.mark.parametrize("seed,stream,offset", CASES)
def test_random_bits(seed, stream, offset):
    got = rng.random_bits(seed, stream, 6, offset=offset)
    assert got.dtype == np.uint64
    assert [int(v) for v in got] == [_bits(seed, stream, offset + i) for i in range(6)]


@pytest.mark.parametrize("seed,stream,offset", CASES)
def test_uniform(seed, stream, offset):
    got = rng.uniform(seed, stream, (2, 3), offset=offset)
    want = [(_bits(seed, stream, offset + i) >> 11) * 2.0**-53 for i in range(6)]
    assert got.dtype == np.float64 and got.shape == (2, 3)
    assert got.ravel().tolist() == want  # exact: one correctly rounded multiplication
    assert np.all((got >= 0) & (got < 1))


@pytest.mark.parametrize("seed,stream,offset", CASES)
def test_normal(seed, stream, offset):
    got = rng.normal(seed, stream, 5, offset=offset)
    want = []
    for i in range(5):
        u1 = 1.0 - (_bits(seed, stream, 2 * (offset + i)) >> 11) * 2.0**-53      # in (0, 1]
        u2 = (_bits(seed, stream, 2 * (offset + i) + 1) >> 11) * 2.0**-53
        want.append(math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2))
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float64).eps, atol=4 * np.finfo(np.float64).eps)


@pytest.mark.parametrize("seed,stream,offset", CASES)
def test_signs_and_integers(seed, stream, offset):
    s = rng.signs(seed, stream, 8, offset=offset)
    assert s.tolist() == [(-1.0 if _bits(seed, stream, offset + i) >> 63 else 1.0) for i in range(8)]
    for high in (1, 7, 2**32):
        v = rng.integers(seed, stream, 8, high, offset=offset)
        assert v.dtype == np.int64
        assert v.tolist() == [((_bits(seed, stream, offset + i) >> 32) * high) >> 32 for i in range(8)]


def test_offset_continues_the_stream():
    whole = rng.uniform(3, 4, 10)
    np.testing.assert_array_equal(np.concatenate([rng.uniform(3, 4, 4), rng.uniform(3, 4, 6, offset=4)]), whole)


def test_normal_moments():
    z = rng.normal(9, 0, 200_000)
    # mean 0, variance 1, z-scores from the sample size (|z| < 4 for each of the two checks)
    assert abs(z.mean()) / (1 / math.sqrt(z.size)) < 4
    assert abs(z.var() - 1) / math.sqrt(2 / z.size) < 4


@pytest.mark.parametrize("bad", [2.5, True, -1, 2**64, "1", None, float("nan")])
def test_seed_is_strict(bad):
    from lrmath.errors import LrmathError

    with pytest.raises(LrmathError):
        rng.uniform(bad, 0, 3)
    with pytest.raises(LrmathError):
        rng.normal(0, bad, 3)
