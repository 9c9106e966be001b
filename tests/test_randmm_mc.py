"""Monte-Carlo checks of the library's samplers (fixed seeds): every estimator's mean
converges to C = X^T Y (per-entry z-scores, Bonferroni over all entries of all
estimators) and its mean squared error matches the exact variance formula within the
confidence interval implied by the sample size (standard error of the squared-error
samples, Bonferroni over the estimators)."""

from __future__ import annotations

import numpy as np
import pytest

from lrmath import randmm as R
from lrmath.testing import assert_z, z_score

T, M, N, K = 10, 3, 2, 4
TRIALS = 500

CASES = [
    ("gaussian", {}),
    ("rademacher", {}),
    ("srht", {}),
    ("srht", {"replace": False}),
    ("srdct", {}),
    ("srdct", {"replace": False}),
    ("crs", {"probs": "uniform"}),
    ("crs", {"probs": "x"}),
    ("crs", {"probs": "xy"}),
    ("crs", {"probs": "uniform", "replace": False}),
    ("bernoulli", {"probs": "xy"}),
    ("bernoulli", {"probs": "x"}),
    ("wta", {"probs": "xy"}),
    ("wta", {"probs": "xy", "deterministic": "authors"}),
    ("wta", {"probs": "x", "deterministic": 1}),
]
FAMILY_MEAN = len(CASES) * M * N
FAMILY_VAR = len(CASES)


def _data(t=T):
    rs = np.random.default_rng(2024)
    X = rs.standard_normal((t, M)) * np.exp(rs.standard_normal((t, 1)))
    Y = rs.standard_normal((t, N)) * np.exp(0.5 * rs.standard_normal((t, 1)))
    return X, Y


@pytest.mark.parametrize("kind,opts", CASES, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}" for k, o in CASES])
def test_unbiased_and_variance_matches_formula(kind, opts):
    X, Y = _data()
    C = X.T @ Y
    E = np.stack([R.estimate(X, Y, K, kind, seed=s, stream=3, **opts) for s in range(TRIALS)])
    # unbiasedness, entry by entry
    se = E.std(axis=0, ddof=1) / np.sqrt(TRIALS)
    for idx in np.ndindex(M, N):
        assert_z(z_score(E[(slice(None),) + idx].mean(), C[idx], se[idx]), family=FAMILY_MEAN, what=f"{kind} {opts} mean entry {idx}")
    # variance: mean of squared errors vs the closed form
    sq = ((E - C) ** 2).sum(axis=(1, 2))
    formula = R.variance(X, Y, K, kind, **opts)
    assert_z(z_score(sq.mean(), formula, sq.std(ddof=1) / np.sqrt(TRIALS)), family=FAMILY_VAR, what=f"{kind} {opts} variance {sq.mean():.4g} vs {formula:.4g}")


def test_srht_power_of_two_and_public_scale_bug():
    """SRHT at t = 8 (pure Hadamard): unbiased with scale t/k; the k*t scale of a public
    implementation is off by exactly k**2 (checked on the same samples)."""
    X, Y = _data(8)
    C = X.T @ Y
    k = 3
    E = np.stack([R.estimate(X, Y, k, "srht", seed=s) for s in range(TRIALS)])
    sq = ((E - C) ** 2).sum(axis=(1, 2))
    formula = R.variance(X, Y, k, "srht")
    assert formula == pytest.approx(R.variance(X, Y, k, "rademacher"))
    assert_z(z_score(sq.mean(), formula, sq.std(ddof=1) / np.sqrt(TRIALS)), family=2, what="srht t=8 variance")
    bad = E * (k * 8) / (8 / k)  # what a k*t scale would return
    rel = np.linalg.norm(bad.mean(0) - C) / np.linalg.norm(C)
    assert rel > 0.5 * (k * k - 1)  # mean is k**2 C, far from C


def test_wta_optimal_size_on_heavy_tails_in_simulation():
    rs = np.random.default_rng(7)
    t, k = 32, 8
    X = rs.standard_normal((t, 3)) * (rs.pareto(1.0, size=(t, 1)) + 0.1)
    Y = rs.standard_normal((t, 2))
    C = X.T @ Y
    trials = 400
    v_opt, v_crs = R.variance(X, Y, k, "wta"), R.variance(X, Y, k, "crs")
    assert v_opt <= v_crs
    sq = np.array([np.sum((R.estimate(X, Y, k, "wta", seed=s) - C) ** 2) for s in range(trials)])
    assert_z(z_score(sq.mean(), v_opt, sq.std(ddof=1) / np.sqrt(trials)), what="wta optimal |D|")
