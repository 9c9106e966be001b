"""Calibration-aware Kashin (GPTQ propagation), the rows layout, low-rank compensation (issue #14).

Oracles written here: the optimal-brain-surgeon update recomputed from scratch at every column
(``w_R + (w_P - q_P) H_PR H_RR^{-1}``, no Cholesky factor), a bit-by-bit decoder of the rows layout
with a Sylvester Hadamard matrix, naive dense products, and file bytes counted from the safetensors
header.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import scipy.linalg

from lrmath import ops, rng
from lrmath.errors import FormatError, OptionError, RankError, ShapeError
from lrmath.kashin import KashinQuantized, load, quantize
from lrmath.kashin import format as fmt
from lrmath.kashin.gptq import alternate_uv, gptq_columns, inverse_cholesky, nearest_plane, prepare_hessian
from lrmath.kashin.lowrank import pack_factor, rank_for_budget, unpack_factor
from lrmath.testing import assert_close


def _correlated(t, n, seed, decay=20.0):
    g = np.random.default_rng(seed)
    M = g.standard_normal((n, n)) * np.exp(-np.arange(n) / decay)[None, :]
    return g.standard_normal((t, n)) @ M.T + 0.05 * g.standard_normal((t, n))


def _out_err(W, Wh, X):
    return float(np.linalg.norm((W - Wh) @ X.T) / np.linalg.norm(W @ X.T))


# ----------------------------------------------------------------------------- GPTQ core
def test_inverse_cholesky_is_upper_factor_of_inverse():
    X = _correlated(200, 24, 0)
    H = X.T @ X + 0.1 * np.eye(24)
    U = inverse_cholesky(H)
    assert np.allclose(U, np.triu(U))
    assert_close(U.T @ U, np.linalg.inv(H), rtol=1e-8, atol=1e-10)


def test_propagation_matches_naive_obs_oracle():
    """Codes and coded weights equal a from-scratch OBS computation at every column (tiny case)."""
    g = np.random.default_rng(3)
    out, inn = 4, 12
    blocks = [(0, 5), (5, 12)]  # ragged blocks
    W = g.standard_normal((out, inn))
    X = _correlated(60, inn, 4, decay=4.0)
    H = X.T @ X + 0.5 * np.eye(inn)
    table = np.array([-1.5, -0.5, 0.5, 1.5])
    alpha = np.array([0.4, 0.3, 0.5, 0.35])

    def fit(wb, j):  # a fixed part depending on the block's current weights, and a fixed grid
        P = 0.5 * wb.mean(axis=1, keepdims=True) * np.ones_like(wb)
        return P, alpha, table, None

    codes, _, W_hat = gptq_columns(W, inverse_cholesky(H), blocks, fit)

    # oracle: before each column (and each block fit) the remaining weights are the OBS optimum given
    # the columns fixed so far: w_R + (w_P - q_P) H_PR H_RR^{-1}
    q = np.zeros_like(W)
    c_or = np.zeros((out, inn), int)
    for c0, c1 in blocks:
        R = np.arange(c0, inn)
        P_idx = np.arange(0, c0)
        cur = W[:, R] + ((W[:, P_idx] - q[:, P_idx]) @ H[np.ix_(P_idx, R)] @ np.linalg.inv(H[np.ix_(R, R)])
                         if c0 else 0)
        Pfix = 0.5 * cur[:, : c1 - c0].mean(axis=1, keepdims=True)
        for j in range(c0, c1):
            Rj = np.arange(j, inn)
            Pj = np.arange(0, j)
            w_j = (W[:, Rj] + ((W[:, Pj] - q[:, Pj]) @ H[np.ix_(Pj, Rj)] @ np.linalg.inv(H[np.ix_(Rj, Rj)])
                               if j else 0))[:, 0]
            z = (w_j - Pfix[:, 0]) / alpha
            c_or[:, j] = np.argmin(np.abs(z[:, None] - table[None, :]), axis=1)
            q[:, j] = Pfix[:, 0] + alpha * table[c_or[:, j]]
    np.testing.assert_array_equal(codes, c_or)
    assert_close(W_hat, q, rtol=1e-10, atol=1e-12)


def test_prepare_hessian_damps_and_marks_dead_columns():
    H = np.diag([4.0, 0.0, 2.0])
    Hd, dead = prepare_hessian(H, 3, damp=0.1)
    np.testing.assert_array_equal(dead, [False, True, False])
    # dead column -> 1 on the diagonal before damping; lambda = 0.1 * mean([4, 1, 2])
    assert_close(np.diag(Hd), np.array([4.0, 1.0, 2.0]) + 0.1 * 7 / 3, rtol=1e-12)
    with pytest.raises(ShapeError):
        prepare_hessian(np.eye(3), 4)


@pytest.mark.parametrize("c0,c1", [(0, 5), (5, 9), (9, 12)])
def test_block_cost_is_the_obs_cost_after_compensation(c0, c1):
    """``||delta U_bb^{-1}||^2`` (gptq.py) equals the output cost left after the later columns absorb
    what they can: ``delta [(H_{c0:, c0:})^{-1}]_{bb}^{-1} delta^T`` from explicit inverses; and the
    GPTQ loop's ``Err`` is ``(T - Q) U_bb^{-1}``."""
    g = np.random.default_rng(c0)
    inn = 12
    X = _correlated(80, inn, 5 + c0, decay=3.0)
    H = X.T @ X + 0.3 * np.eye(inn)
    U = inverse_cholesky(H)
    Ub = U[c0:c1, c0:c1]
    delta = g.standard_normal((3, c1 - c0))
    S = np.linalg.inv(np.linalg.inv(H[c0:, c0:])[: c1 - c0, : c1 - c0])
    oracle = np.einsum("ij,jk,ik->i", delta, S, delta)
    ours = np.sum((delta @ np.linalg.inv(Ub)) ** 2, axis=1)
    assert_close(ours, oracle, rtol=1e-9, atol=1e-12)
    T = g.standard_normal((3, c1 - c0))
    codes, Q, Err = nearest_plane(T, Ub, np.array([0.5, 1.0, 2.0]), np.array([-1.0, 0.0, 1.0]))
    assert_close(Err, scipy.linalg.solve_triangular(Ub.T, (T - Q).T, lower=True).T, rtol=1e-9, atol=1e-12)
    assert_close(Q, np.array([0.5, 1.0, 2.0])[:, None] * np.array([-1.0, 0.0, 1.0])[codes], rtol=0, atol=0)


def _hadamard_rows(n, seed=0):
    return _hadamard_dense(n, seed).T  # row b -> b @ F = (Q b^T)^T


def test_alternate_uv_lowers_the_cost_and_reports_its_error():
    g = np.random.default_rng(11)
    n, out = 16, 24
    X = _correlated(200, n, 12, decay=3.0)
    H = X.T @ X + 0.2 * np.eye(n)
    Ub = inverse_cholesky(H)
    F = _hadamard_rows(n)
    x0 = g.standard_normal((out, n))
    Tu, Tv = np.array([-1.0, 1.0]), np.array([-1.5, -0.5, 0.5, 1.5])
    cu0 = g.integers(0, 2, (out, n)).astype(np.uint8)
    cv0 = g.integers(0, 4, (out, n)).astype(np.uint8)
    al0, be0 = np.full(out, 0.3), np.full(out, 0.5)
    cu, cv, al, be, Err = alternate_uv(x0, Ub, F, al0, be0, Tu, Tv, cu0, cv0, rounds=2)
    Ui = np.linalg.inv(Ub)

    def cost(cu_, cv_, a_, b_):
        xh = a_[:, None] * Tu[cu_] + b_[:, None] * (Tv[cv_] @ F)
        return np.sum(((x0 - xh) @ Ui) ** 2, axis=1), xh

    c_start, _ = cost(cu0, cv0, al0, be0)
    c_end, xh = cost(cu, cv, al, be)
    assert np.all(c_end <= c_start * (1 + 1e-12)) and np.mean(c_end) < 0.7 * np.mean(c_start)
    assert_close(Err, (x0 - xh) @ Ui, rtol=1e-9, atol=1e-12)
    # identity metric: the v step of a round is plain rounding of the rotated residual (at the
    # starting scales: the refit comes after it)
    cu, cv, al, be, _ = alternate_uv(x0, np.eye(n), F, al0, be0, Tu, Tv, cu0, cv0, rounds=1)
    R = (x0 - al0[:, None] * Tu[cu]) @ F.T / be0[:, None]
    assert np.array_equal(cv, np.argmin(np.abs(R[..., None] - Tv), axis=-1))


# ----------------------------------------------------------------------------- calibrated quantize
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("gptq", ["uv", "u"])
def test_calibrated_output_error_below_data_free(bits, gptq):
    g = np.random.default_rng(bits)
    W = g.standard_normal((48, 256)).astype(np.float32)
    X = _correlated(1024, 256, 10 + bits)
    cal = quantize(W, bits, calibration=X.T @ X, iters=3, gptq=gptq)
    free = quantize(W, bits, layout="rows", iters=3)
    flat = quantize(W, bits, iters=3)
    e_cal, e_free, e_flat = (_out_err(W, q.dequantize(np.float64), X) for q in (cal, free, flat))
    assert e_cal < 0.8 * min(e_free, e_flat), (e_cal, e_free, e_flat)
    same_split = quantize(W, bits, layout="rows", iters=0, split=(cal.bits_u, cal.bits_v))
    assert cal.bits_per_weight == same_split.bits_per_weight  # calibration stores nothing more
    assert cal.info["calibrated"] == gptq
    assert (cal.bits_u, cal.bits_v) == ((1, bits - 1) if gptq == "uv" else ((bits + 1) // 2, bits // 2))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_both_factors_beat_u_only(bits):
    g = np.random.default_rng(20 + bits)
    W = g.standard_normal((64, 512)).astype(np.float32)
    X = _correlated(2048, 512, 30 + bits)
    H = X.T @ X
    split = ((bits + 1) // 2, bits // 2)
    e_u = _out_err(W, quantize(W, bits, calibration=H, iters=2, gptq="u").dequantize(np.float64), X)
    e_uv_same = _out_err(W, quantize(W, bits, calibration=H, iters=2, split=split).dequantize(np.float64), X)
    assert e_uv_same < 0.97 * e_u, (e_u, e_uv_same)
    if bits == 4:  # the default 1 + 3 split: v's 8 levels are coded for the output error too
        e_uv = _out_err(W, quantize(W, bits, calibration=H, iters=2).dequantize(np.float64), X)
        assert e_uv < 0.8 * e_uv_same, (e_uv_same, e_uv)
    with pytest.raises(OptionError, match="gptq"):
        quantize(W, bits, calibration=H, gptq="v")


def test_both_factor_coder_on_zero_rows_and_dead_inputs():
    """All-zero rows decode to zero; dead input columns (H_jj = 0) get zero weight; no NaN anywhere."""
    g = np.random.default_rng(5)
    W = g.standard_normal((16, 64)).astype(np.float32)
    W[3] = 0
    X = _correlated(300, 64, 6)
    X[:, [7, 40]] = 0  # inputs that never fire
    q = quantize(W, 3, calibration=X.T @ X, iters=2)
    Wh = q.dequantize(np.float64)
    assert np.all(np.isfinite(Wh)) and np.all(Wh[3] == 0)
    assert q.info["dead_columns"] == 2
    assert _out_err(W, Wh, X) < 0.8 * _out_err(W, quantize(W, 3, layout="rows", iters=2).dequantize(np.float64), X)


@pytest.mark.parametrize("gptq", ["uv", "u"])
def test_identity_calibration_no_worse_than_data_free(gptq):
    g = np.random.default_rng(7)
    W = g.standard_normal((40, 192)).astype(np.float32)
    for bits in (2, 4):
        free = quantize(W, bits, layout="rows", iters=2)
        cal = quantize(W, bits, calibration=np.eye(192), iters=2, gptq=gptq, split=(free.bits_u, free.bits_v))
        assert cal.relative_error(W) <= free.relative_error(W) * (1 + 1e-6)


def test_rows_layout_blocks_policy_and_errors():
    from lrmath.kashin.quantize import _row_blocks

    assert _row_blocks(576, 256) == [288, 288]
    assert _row_blocks(1536, 256) == [256] * 6
    assert _row_blocks(384, 256) == [384]
    assert _row_blocks(576, 512) == [576]
    assert _row_blocks(600, 256) == [256, 256, 88]  # 600 / 2 = 300 is no multiple of 8
    with pytest.raises(ShapeError):
        _row_blocks(100, 64)
    with pytest.raises(ShapeError):
        quantize(np.ones((4, 64), np.float32), 2, blocks=[32, 16])
    with pytest.raises(ValueError):
        quantize(np.ones((4, 64), np.float32), 2, calibration=np.eye(64), layout="flat")
    with pytest.raises(ShapeError):
        quantize(np.ones((4, 64), np.float32), 2, calibration=np.eye(32))


# ----------------------------------------------------------------------------- rows layout: decode oracle
def _hadamard_dense(n, seed):
    D = rng.signs(seed, ops.STREAM_SIGNS, n)
    return scipy.linalg.hadamard(n) / np.sqrt(n) * D[None, :]


def _bits_lsb(packed, bits, count):
    out = np.zeros(count, int)
    for k in range(count):
        v = 0
        for b in range(bits):
            t = k * bits + b
            v |= ((int(packed[t // 8]) >> (t % 8)) & 1) << b
        out[k] = v
    return out


def test_rows_layout_decodes_as_documented():
    g = np.random.default_rng(5)
    out, inn, blocks = 3, 96, [64, 32]
    W = g.standard_normal((out, inn)).astype(np.float32)
    q = quantize(W, 3, blocks=blocks, iters=2, seed=2)
    assert q.layout == "rows" and q.blocks == blocks
    cu = _bits_lsb(q.codes_u, q.bits_u, out * inn).reshape(out, inn)
    cv = _bits_lsb(q.codes_v, q.bits_v, out * inn).reshape(out, inn)
    Tu = q.table_u.reshape(2, -1)
    Tv = q.table_v.reshape(2, -1)
    su = q.scale_u.astype(np.float32).reshape(out, 2)
    sv = q.scale_v.astype(np.float32).reshape(out, 2)
    ref = np.zeros((out, inn))
    c0 = 0
    for j, b in enumerate(blocks):
        Q = _hadamard_dense(b, 2)
        u = su[:, j:j + 1] * Tu[j][cu[:, c0:c0 + b]]
        v = sv[:, j:j + 1] * Tv[j][cv[:, c0:c0 + b]]
        ref[:, c0:c0 + b] = u + v @ Q.T
        c0 += b
    assert_close(q.dequantize(np.float64), ref, n=64, depth=3, rtol=1e-5)
    X = g.standard_normal((5, inn)).astype(np.float32)
    assert_close(q.linear(X).astype(np.float64), X.astype(np.float64) @ ref.T, rtol=1e-4, atol=1e-4)
    Y = g.standard_normal((5, out)).astype(np.float32)
    assert_close((Y @ q).astype(np.float64), Y.astype(np.float64) @ ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- files
def _tensor_bytes(path):
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        hdr = json.loads(fh.read(n))
    meta = json.loads(hdr["__metadata__"][fmt.META_KEY])
    nbytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in hdr.items() if k != "__metadata__")
    return meta, nbytes


@pytest.mark.parametrize("fbits", [16, 8, 4])
def test_compensated_file_roundtrip_bpw_and_checksum(tmp_path, fbits):
    g = np.random.default_rng(fbits)
    W = g.standard_normal((40, 96)).astype(np.float32)
    W += np.outer(g.standard_normal(40), g.standard_normal(96)) * 2  # a strong rank-1 part
    q = quantize(W, 2, layout="rows", rank=3, lowrank_bits=fbits, iters=2)
    p = tmp_path / "q.safetensors"
    q.save(p)
    meta, nbytes = _tensor_bytes(p)
    assert meta["version"] == 2 and meta["entries"]["weight"]["lowrank"]["rank"] == 3
    assert abs(q.bits_per_weight - 8 * nbytes / W.size) < 1e-12  # every stored byte counted
    q2 = load(p)
    assert_close(q2.dequantize(), q.dequantize(), rtol=0, atol=0)
    # the factors are covered by the checksum: flip one byte of lowrank_a in the file
    raw = bytearray(p.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8:8 + n])
    off = 8 + n + hdr["weight.kashin.lowrank_a"]["data_offsets"][0]
    raw[off] ^= 0x01
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="SHA-256"):
        load(bad)


def test_flat_files_are_written_as_version2_without_the_new_fields(tmp_path):
    # every file is version 2 (its checksum covers the header); a flat entry has no rows/low-rank
    # fields, and version-1 files still load (tests/test_kashin_format.py)
    g = np.random.default_rng(0)
    W = g.standard_normal((8, 64)).astype(np.float32)
    q = quantize(W, 2, block=64, iters=1)
    p = tmp_path / "v2.safetensors"
    q.save(p)
    meta, _ = _tensor_bytes(p)
    assert meta["version"] == 2 and "layout" not in meta["entries"]["weight"]
    assert "lowrank" not in meta["entries"]["weight"]
    assert_close(load(p).dequantize(), q.dequantize(), rtol=0, atol=0)


def test_rows_entry_with_missing_factor_tensor_is_refused(tmp_path):
    g = np.random.default_rng(1)
    q = quantize(g.standard_normal((8, 64)).astype(np.float32), 2, layout="rows", rank=2, iters=1)
    t = q.tensors()
    t.pop("lowrank_bt_scale")
    with pytest.raises(FormatError):
        KashinQuantized.from_entry(q.meta(), t)


# ----------------------------------------------------------------------------- low-rank compensation
def test_rank_for_budget_respects_budget():
    for out, inn in [(576, 576), (192, 576), (576, 1536)]:
        for bits in (16, 8, 4):
            r = rank_for_budget(out, inn, 0.375, bits)
            cost = (16 * r * (out + inn)) if bits == 16 else (8 * (-(-r * inn * bits // 8) - (-r * out * bits // 8)) + 32 * r)
            assert cost <= 0.375 * out * inn
            r1 = r + 1
            cost1 = (16 * r1 * (out + inn)) if bits == 16 else (8 * (-(-r1 * inn * bits // 8) - (-r1 * out * bits // 8)) + 32 * r1)
            assert cost1 > 0.375 * out * inn
    # decisions.md: rank 16 fp16 on 576 x 576 costs 16 * 16 * 1152 / 576^2 = 0.89 bpw
    assert rank_for_budget(576, 576, 16 * 16 * 1152 / 576**2, 16) == 16


@pytest.mark.parametrize("bits", [8, 4])
def test_factor_codes_naive_oracle(bits):
    g = np.random.default_rng(bits)
    F = g.standard_normal((3, 17))
    packed, s = pack_factor(F, bits)
    dec = unpack_factor(packed, s, bits, F.shape)
    half = 2 ** (bits - 1) - 1
    s_ref = (np.abs(F).max(1) / half).astype(np.float16).astype(np.float64)
    ref = np.clip(np.round(F / s_ref[:, None]), -half, half) * s_ref[:, None]
    assert_close(dec.astype(np.float64), ref, rtol=1e-6, atol=1e-7)


def test_loftq_and_lqer_reduce_their_errors():
    g = np.random.default_rng(11)
    W = (g.standard_normal((64, 128)) + 0.5 * g.standard_normal((64, 3)) @ g.standard_normal((3, 128))).astype(np.float32)
    X = _correlated(512, 128, 12)
    H = X.T @ X
    plain = quantize(W, 2, layout="rows", iters=2)
    loftq = quantize(W, 2, layout="rows", rank=4, lowrank="loftq", lowrank_bits=16, iters=2)
    assert loftq.relative_error(W) < plain.relative_error(W)
    cal = quantize(W, 2, calibration=H, iters=2)
    lqer = quantize(W, 2, calibration=H, rank=4, lowrank_bits=16, iters=2)
    assert lqer.method.endswith("+lqer")
    assert _out_err(W, lqer.dequantize(np.float64), X) < _out_err(W, cal.dequantize(np.float64), X)
    # bits per weight: the factors are on top of the codes, and counted
    r = 4
    assert abs(lqer.bits_per_weight - cal.bits_per_weight - 16 * r * (64 + 128) / W.size) < 1e-12
    with pytest.raises(ValueError):
        quantize(W, 2, rank=2, lowrank="lqer")
    with pytest.raises(RankError):
        quantize(W, 2, rank=65)


def test_uneven_split_roundtrip_and_errors(tmp_path):
    g = np.random.default_rng(9)
    W = g.standard_normal((16, 128)).astype(np.float32)
    q = quantize(W, 4, split=(1, 3), block=128, iters=2)
    assert (q.bits_u, q.bits_v) == (1, 3) and q.table_u.size == 2 and q.table_v.size == 8
    p = tmp_path / "s.safetensors"
    q.save(p)
    assert_close(load(p).dequantize(), q.dequantize(), rtol=0, atol=0)
    for bad in [(2, 1), (0, 4), (4,), "ab"]:
        with pytest.raises(ValueError):
            quantize(W, 4, split=bad)


# ----------------------------------------------------------------------------- the calibrated peer (GPTQ on the RTN grid)
def test_gptq_rtn_matches_naive_obs_oracle():
    """``rtn_quantize(calibration=H)``: group grids from the OBS-current weights, columns rounded one
    at a time, recomputed here from scratch (no Cholesky factor) at every column."""
    from lrmath.kashin import rtn_quantize

    g = np.random.default_rng(11)
    out, inn, group, bits = 5, 12, 4, 3
    W = g.standard_normal((out, inn)).astype(np.float32)
    X = _correlated(80, inn, 12, decay=5.0)
    H = X.T @ X
    damp = 0.01
    Hd = H + damp * np.mean(np.diag(H)) * np.eye(inn)
    r = rtn_quantize(W, bits, group, calibration=H, damp=damp)
    levels = 2**bits - 1
    A = W.astype(np.float64)
    q = np.zeros_like(A)
    codes = np.zeros((out, inn), int)
    for j in range(inn):
        Rj, Pj = np.arange(j, inn), np.arange(0, j)
        cur = A[:, Rj] + ((A[:, Pj] - q[:, Pj]) @ Hd[np.ix_(Pj, Rj)] @ np.linalg.inv(Hd[np.ix_(Rj, Rj)]) if j else 0)
        if j % group == 0:
            blk = cur[:, :group]
            s = ((blk.max(1) - blk.min(1)) / levels).astype(np.float16).astype(np.float64)
            z = blk.min(1).astype(np.float16).astype(np.float64)
        c = np.clip(np.floor((cur[:, 0] - z) / s + 0.5), 0, levels).astype(int)  # ties up, like nearest_code
        codes[:, j] = c
        q[:, j] = z + s * c
    got = fmt.unpack_codes(r.codes, bits, out * inn).reshape(out, inn)
    np.testing.assert_array_equal(got, codes)
    assert_close(r.dequantize(np.float64), q, rtol=1e-6, atol=1e-6)
    packed_bits = 8 * -(-(out * inn * bits) // 8)  # codes padded to whole bytes
    assert r.bits_per_weight == (packed_bits + 32 * (out * inn // group)) / (out * inn)


def test_gptq_rtn_identity_calibration_is_rtn_and_lowers_output_error():
    from lrmath.errors import OptionError
    from lrmath.kashin import rtn_quantize

    g = np.random.default_rng(5)
    W = g.standard_normal((16, 64)).astype(np.float32)
    plain = rtn_quantize(W, 3, 16)
    same = rtn_quantize(W, 3, 16, calibration=np.eye(64))  # diagonal H: nothing to propagate
    np.testing.assert_array_equal(same.codes, plain.codes)
    np.testing.assert_array_equal(same.scale, plain.scale)
    X = _correlated(300, 64, 6)
    cal = rtn_quantize(W, 3, 16, calibration=X.T @ X)
    assert _out_err(W, cal.dequantize(np.float64), X) < 0.9 * _out_err(W, plain.dequantize(np.float64), X)
    with pytest.raises(OptionError, match="multiple of group"):
        rtn_quantize(W, 3, 24, calibration=X.T @ X)
    with pytest.raises(ShapeError):
        rtn_quantize(W, 3, 16, calibration=np.eye(63))
