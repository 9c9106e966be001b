"""The route choice of the sampled product: a time model fitted from measurements, cached per machine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrmath.sparsegrad import sddmm


def _true_times(t, rows, cols, nnz):
    # a made-up machine: GEMM 50x faster per flop than gather-reduce, plus fixed and gather costs
    dense = 3e-5 + 2e-11 * 2 * t * rows * cols + 4e-10 * t * (rows + cols) + 5e-10 * rows * cols + 2e-9 * nnz
    sparse = 1e-5 + 1e-9 * 2 * t * nnz
    return dense, sparse


def _samples():
    out = []
    for t in (16, 64, 256):
        for rows, cols in ((8, 300), (64, 64), (200, 40), (90, 90)):
            for nnz in (5, rows * cols // 8, rows * cols):
                d, s = _true_times(t, rows, cols, nnz)
                out.append({"t": t, "rows": rows, "cols": cols, "nnz": nnz, "dense": d, "sparse": s})
    return out


def test_fit_recovers_the_time_model():
    model = sddmm.fit_route_model(_samples())
    for smp in _samples():
        p = model.predict(smp["t"], smp["rows"], smp["cols"], smp["nnz"])
        assert p["dense"] == pytest.approx(smp["dense"], rel=1e-6)
        assert p["sparse"] == pytest.approx(smp["sparse"], rel=1e-6)
    assert model.gemm_speedup == pytest.approx(50.0, rel=1e-6)


def test_auto_route_minimises_the_model():
    model = sddmm.fit_route_model(_samples())
    r = np.random.default_rng(0)
    n, m = 40, 70
    for _ in range(60):
        t = int(r.integers(1, 400))
        nnz = int(r.integers(1, n * m))
        idx = np.sort(r.choice(n * m, nnz, replace=False))
        if r.random() < 0.5:  # concentrate some sets in a leading block
            idx = np.unique((idx // m) % 7 * m + idx % m % 9)
        rows, cols = np.unique(idx // m).size, np.unique(idx % m).size
        d, s = _true_times(t, rows, cols, idx.size)
        got = sddmm.route_cost(t, idx, (n, m), model=model)
        assert got["route"] == ("dense" if d <= s else "sparse")
        assert (got["rows"], got["cols"]) == (rows, cols)


def test_fit_needs_enough_samples_and_rejects_bad_models():
    with pytest.raises(ValueError):
        sddmm.fit_route_model(_samples()[:2])
    with pytest.raises(ValueError):
        sddmm.RouteModel([1, -1, 0, 0, 0], [0, 1])


def test_route_model_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LRMATH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("LRMATH_CALIBRATE", raising=False)
    monkeypatch.setattr(sddmm, "_MODELS", {})
    calls = []
    fitted = sddmm.fit_route_model(_samples())

    def fake(backend="numpy", **kw):
        calls.append(backend)
        return fitted, _samples()

    monkeypatch.setattr(sddmm, "calibrate_routes", fake)
    a = sddmm.route_model("numpy")
    assert calls == ["numpy"]
    stored = json.loads((tmp_path / "sparsegrad" / "routes.json").read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["dense"] == pytest.approx(list(fitted.dense))
    monkeypatch.setattr(sddmm, "_MODELS", {})  # a new process: read from the file
    b = sddmm.route_model("numpy")
    assert calls == ["numpy"] and np.allclose(a.dense, b.dense) and np.allclose(a.sparse, b.sparse)
    sddmm.route_model("numpy", recalibrate=True)
    assert calls == ["numpy", "numpy"]
    monkeypatch.setenv("LRMATH_CALIBRATE", "0")
    assert sddmm.route_model("numpy").source == sddmm.DEFAULT_ROUTE_MODEL["source"]


def test_chunked_dense_route_equals_naive():
    r = np.random.default_rng(1)
    A, B = r.standard_normal((9, 30)), r.standard_normal((9, 20))
    idx = np.sort(r.choice(600, 150, replace=False))
    want = (A.T @ B).ravel()[idx]
    for chunk in (1, 7, 45, 1 << 22):  # row chunks of 1, 1, 2 and all rows of the 20-column block
        np.testing.assert_allclose(sddmm.sampled_product(A, B, idx, method="dense", chunk_elems=chunk), want, rtol=1e-12, atol=1e-12)
