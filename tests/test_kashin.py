"""Kashin quantization: decomposition, quantizer, packed format, baselines (issue #4).

Oracles are written here independently of the package: the randomized Hadamard matrix from
SciPy's Sylvester ``hadamard`` and the documented sign stream, a bit-by-bit decoder of FORMAT.md,
and a naive round-to-nearest.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import scipy.linalg
from hypothesis import example, given
from hypothesis import strategies as st

from lrmath import ops, rng
from lrmath.errors import DTypeError, EmptyInputError, FormatError, NonFiniteError, ShapeError
from lrmath.kashin import KashinQuantized, decompose, load, quantize, rtn_quantize, split_bits
from lrmath.kashin import format as fmt
from lrmath.testing import assert_close, tolerance

N = 256


def _hadamard_dense(n, seed):
    """Independent randomized Hadamard: Sylvester H_n / sqrt(n) times the documented sign stream."""
    D = rng.signs(seed, ops.STREAM_SIGNS, n)
    return scipy.linalg.hadamard(n) / np.sqrt(n) * D[None, :]


@pytest.fixture(scope="module")
def real_weights():
    from lrmath import data

    try:
        w = data.load_weights(["encoder.layer.0.intermediate.dense.weight", "encoder.layer.2.output.dense.weight",
                               "encoder.layer.4.attention.self.value.weight"])
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"default model unavailable: {exc}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in w.items()}


def _family(name, seed, real):
    g = np.random.default_rng(seed)
    if name == "gaussian":
        return g.standard_normal((64, N))
    if name == "student-t":
        return g.standard_t(3, size=(64, N))
    if name == "outliers":
        x = g.standard_normal((64, N))
        x[:, g.integers(0, N, 3)] *= 30
        return x
    W = list(real.values())[seed % len(real)].reshape(-1, N)
    return W[g.choice(W.shape[0], 64, replace=False)].astype(np.float64)


# ----------------------------------------------------------------------------- decomposition
def test_hadamard_oracle_matches_operator():
    assert_close(ops.orthogonal("hadamard", N, 3).matrix(), _hadamard_dense(N, 3), n=N)


@pytest.mark.parametrize("method", ["truncation", "greedy"])
@pytest.mark.parametrize("family", ["gaussian", "student-t", "outliers", "real"])
def test_decompose_exact_and_kashin_bound(method, family, real_weights):
    """x = u + Q v to float tolerance, and the infinity-norm bound with K fixed in advance (<= 2)."""
    for seed in range(4):
        x = _family(family, seed, real_weights)
        Qd = _hadamard_dense(N, seed)
        u, v, rep = decompose(x, ops.orthogonal("hadamard", N, seed), method=method)
        assert u.shape == v.shape == x.shape and u.dtype == x.dtype
        assert_close(u + v @ Qd.T, x, n=N, depth=rep.iterations + 2)
        nx = np.linalg.norm(x, axis=-1)
        K = np.maximum(np.abs(u).max(-1), np.abs(v).max(-1)) * np.sqrt(N) / nx
        assert_close(rep.K, K, rtol=1e-9)  # the reported constant is the achieved one
        assert rep.converged
        if method == "truncation":
            assert K.max() <= 2.0, (family, seed, K.max())
        else:  # the paper's greedy pursuit: bounded, but looser (facts.md: ~1.75)
            assert K.max() <= 3.0, (family, seed, K.max())


@pytest.mark.parametrize("method", ["truncation", "greedy"])
def test_decompose_on_every_backend(xp, method):
    """Written once against the array API: same factors on every backend as the NumPy run."""
    from lrmath.backend import to_numpy

    x = np.random.default_rng(4).standard_normal((6, 64))
    ref = decompose(x, "rdct", method=method, seed=2)
    got = decompose(xp.asarray(x), "rdct", method=method, seed=2)
    assert type(got.u) is type(xp.asarray(x))
    assert got.report.iterations == ref.report.iterations
    assert_close(to_numpy(got.u), ref.u, n=64, depth=ref.report.iterations + 2)
    assert_close(to_numpy(got.v), ref.v, n=64, depth=ref.report.iterations + 2)


def test_decompose_residual_history_and_report():
    x = np.random.default_rng(0).standard_normal((10, 128))
    d = decompose(x, "rdct", iters=50, tol=1e-10)
    assert d.report.residual[0] == 1.0 and d.report.residual[-1] <= 1e-10
    assert np.all(np.diff(d.report.residual) < 0)  # the truncation residual falls geometrically
    assert d.report.iterations == len(d.report.residual) - 1
    assert "K mean / max" in repr(d.report)
    few = decompose(x, "hadamard", iters=2, tol=0)
    assert few.report.iterations == 2 and not few.report.converged
    assert_close(few.u + ops.orthogonal("hadamard", 128).apply(few.v), x, n=128, depth=4)


def test_decompose_zero_blocks_and_batches():
    x = np.zeros((2, 3, 64))
    x[1, 2] = np.arange(64.0)
    d = decompose(x, "hadamard")
    assert d.report.K.shape == (2, 3)
    assert d.report.K[0, 0] == 0 and np.all(d.u[0] == 0) and np.all(d.v[0] == 0)
    x32 = np.random.default_rng(1).standard_normal((5, 64)).astype(np.float32)
    d32 = decompose(x32, "dct")
    assert d32.u.dtype == np.float32
    assert_close(d32.u + d32.v @ ops.orthogonal("dct", 64).matrix().T.astype(np.float32), x32, n=64, depth=8)


def test_decompose_errors():
    with pytest.raises(NonFiniteError):
        decompose(np.array([[1.0, np.nan] * 4]), "hadamard")
    with pytest.raises(ShapeError):
        decompose(np.ones((3, 8)), ops.orthogonal("hadamard", 16))
    with pytest.raises(ValueError, match="method"):
        decompose(np.ones((3, 8)), "hadamard", method="nope")
    with pytest.raises(DTypeError):
        decompose(np.ones((3, 8), dtype=np.int64), "hadamard")
    with pytest.raises(EmptyInputError):
        decompose(np.ones((0, 8)), "hadamard")


# ----------------------------------------------------------------------------- bit packing
def test_pack_bit_order_documented_examples():
    # FORMAT.md: 2 bits -> byte = c0 | c1<<2 | c2<<4 | c3<<6 ; LSB-first stream for odd widths
    assert fmt.pack_codes(np.array([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert fmt.pack_codes(np.array([1, 0, 0, 0, 0, 0, 0, 1, 1]), 1).tolist() == [0b10000001, 1]
    # 3 bits: codes 5, 3, 7 -> stream bits 101 110 111 (LSB first) -> byte0 = 0b11011101, byte1 = 0b1
    assert fmt.pack_codes(np.array([5, 3, 7]), 3).tolist() == [0b11011101, 0b1]


@given(bits=st.integers(1, 8), n=st.integers(1, 200), seed=st.integers(0, 2**31))
def test_pack_unpack_roundtrip(bits, n, seed):
    c = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint8)
    p = fmt.pack_codes(c, bits)
    assert p.size == -(-n * bits // 8)
    assert np.array_equal(fmt.unpack_codes(p, bits, n), c)
    # naive bit-by-bit reading of the stream
    naive = [sum(((int(p[(k * bits + j) // 8]) >> ((k * bits + j) % 8)) & 1) << j for j in range(bits)) for k in range(n)]
    assert naive == c.tolist()


# ----------------------------------------------------------------------------- quantizer
def _decode_naive(q: KashinQuantized) -> np.ndarray:
    """FORMAT.md's decoder written out bit by bit with a dense Q, independent of the package."""
    out, inn = q.shape
    B = -(-out * inn // q.block)
    Qd = ops.orthogonal(q.basis).matrix()

    def codes(packed, bits):
        bitsarr = np.unpackbits(packed, bitorder="little")
        return np.array([int(sum(int(bitsarr[k * bits + j]) << j for j in range(bits))) for k in range(B * q.block)])

    cu = codes(q.codes_u, q.bits_u).reshape(B, q.block)
    cv = codes(q.codes_v, q.bits_v).reshape(B, q.block)
    u = q.scale_u.astype(np.float64)[:, None] * q.table_u.astype(np.float64)[cu]
    v = q.scale_v.astype(np.float64)[:, None] * q.table_v.astype(np.float64)[cv]
    return (u + v @ Qd.T).reshape(-1)[: out * inn].reshape(out, inn)


@pytest.mark.parametrize("shape,bits,block,basis", [((24, 40), 2, 16, "hadamard"), ((7, 33), 3, 8, "rdct"),
                                                    ((16, 64), 5, 32, "haar"), ((5, 48), 8, 24, "hadamard")])
def test_dequantize_matches_independent_decoder(shape, bits, block, basis):
    W = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    q = quantize(W, bits, block=block, basis=basis, seed=7)
    assert (q.bits_u, q.bits_v) == split_bits(bits) == ((bits + 1) // 2, bits // 2)
    assert_close(q.dequantize(np.float64), _decode_naive(q), rtol=1e-5, atol=1e-5 * float(np.abs(W).max()))


@pytest.mark.parametrize("shape", [(48, 256), (40, 96), (3, 70)])
def test_products_match_dense(shape):
    W = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    q = quantize(W, 2, block=32 if shape[1] % 32 == 0 else 16, iters=2)
    q._CHUNK = 100  # force several row chunks
    Wd = q.dequantize(np.float64)
    g = np.random.default_rng(2)
    X = g.standard_normal((2, 5, shape[1])).astype(np.float32)
    Y = g.standard_normal((7, shape[0])).astype(np.float32)
    assert_close(q.linear(X), (X.astype(np.float64) @ Wd.T).astype(np.float32), n=shape[1], depth=3)
    assert_close(q.rmatmul(Y), (Y.astype(np.float64) @ Wd).astype(np.float32), n=shape[0], depth=3)
    assert_close(Y @ q, (Y.astype(np.float64) @ Wd).astype(np.float32), n=shape[0], depth=3)
    Z = X[0].T
    assert_close(q @ Z, (Wd @ Z.astype(np.float64)).astype(np.float32), n=shape[1], depth=3)
    with pytest.raises(ShapeError):
        q.linear(np.ones((3, shape[1] + 1), np.float32))


def test_error_decreases_with_bits(real_weights):
    W = real_weights["encoder.layer.0.intermediate.dense.weight"][:128]
    G = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    for M in (W, G):
        errs = [quantize(M, b, iters=3).relative_error(M) for b in range(2, 9)]
        assert all(a > b for a, b in zip(errs, errs[1:])), errs


def test_sweeps_never_increase_error():
    import sys

    qmod = sys.modules["lrmath.kashin.quantize"]
    W = np.random.default_rng(3).standard_t(4, size=(64, 256)).astype(np.float32)
    old = qmod._TRACK
    qmod._TRACK = True
    try:
        for bits in (2, 4):
            h = quantize(W, bits, iters=8).info["sweep_error"]
            assert all(b <= a * (1 + 1e-5) for a, b in zip(h, h[1:])), h
    finally:
        qmod._TRACK = old


def test_two_bits_beats_rtn_on_real_weights(real_weights):
    """The issue's target at 2 bits: lower error than RTN at matched (2.125) and common (2.5) bpw."""
    for name, W in list(real_weights.items())[1:]:
        q = quantize(W, 2)
        assert abs(q.bits_per_weight - 2.125) < 0.002
        e = q.relative_error(W)
        r256, r64 = rtn_quantize(W, 2, 256), rtn_quantize(W, 2, 64)
        assert r256.bits_per_weight == pytest.approx(2.125) and r64.bits_per_weight == pytest.approx(2.5)
        assert e < r256.relative_error(W) and e < r64.relative_error(W), name
        g = quantize(W, 2, method="greedy")
        assert e < g.relative_error(W)  # the measured recipe beats the paper's variant (facts.md)


def test_bits_per_weight_from_bytes_written(tmp_path):
    W = np.random.default_rng(0).standard_normal((100, 200)).astype(np.float32)
    q = quantize(W, 3, block=64, iters=1)
    path = tmp_path / "w.safetensors"
    q.save(path)
    from safetensors.numpy import load_file

    data = load_file(str(path))
    written = sum(a.nbytes for a in data.values())
    assert q.nbytes == written
    assert q.bits_per_weight == pytest.approx(8 * written / W.size)
    B = -(-W.size // 64)  # codes + 2 fp16 scales per block + fp32 tables
    assert written == B * 64 * 3 // 8 + 4 * B + 4 * (4 + 2)


@given(out=st.integers(1, 12), inn=st.integers(1, 40), bits=st.integers(2, 8), seed=st.integers(0, 1000))
@example(out=1, inn=3, bits=8, seed=292)  # a refitted table ascending in float64 but with a tie in float32
def test_save_load_bit_exact(tmp_path_factory, out, inn, bits, seed):
    W = np.random.default_rng(seed).standard_normal((out, inn)).astype(np.float32)
    q = quantize(W, bits, block=16, iters=1, seed=seed)
    p = tmp_path_factory.mktemp("kq") / "q.safetensors"
    q.save(p)
    q2 = load(p)
    for t in fmt.TENSORS:
        a, b = getattr(q, t), getattr(q2, t)
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), t
    assert q2.meta() == q.meta()
    assert np.array_equal(q.dequantize(), q2.dequantize())


def test_dtypes_and_torch_input():
    import torch

    W = torch.randn(16, 64, dtype=torch.bfloat16)
    q = quantize(W, 2, block=32)
    assert q.dtype == "bfloat16" and q.shape == (16, 64)
    W64 = np.random.default_rng(0).standard_normal((8, 64))
    assert quantize(W64, 4, block=32).dequantize().dtype == np.float32


# ----------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("bits,exc", [(1, ValueError), (9, ValueError), (0, ValueError), (2.5, TypeError),
                                      (True, TypeError), ("2", TypeError)])
def test_bits_out_of_range(bits, exc):
    with pytest.raises(exc, match="bits"):
        quantize(np.ones((4, 16), np.float32), bits, block=16)


def test_bad_weights():
    W = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        V = W.copy()
        V[3, 5] = bad
        with pytest.raises(NonFiniteError, match="NaN/Inf"):
            quantize(V, 2, block=16)
    with pytest.raises(EmptyInputError):
        quantize(np.ones((0, 16), np.float32), 2)
    with pytest.raises(ShapeError, match="2-D"):
        quantize(np.ones(64, np.float32), 2)
    with pytest.raises(ShapeError, match="2-D"):
        quantize(np.ones((2, 2, 16), np.float32), 2)
    with pytest.raises(DTypeError):
        quantize(np.ones((4, 16), np.int32), 2)
    with pytest.raises(ValueError, match="block"):
        quantize(W, 2, block=12)
    with pytest.raises(ValueError, match="method"):
        quantize(W, 2, block=16, method="kmeans")
    with pytest.raises(ValueError, match="basis"):
        quantize(W, 2, block=16, basis="wavelet")
    with pytest.raises(ValueError, match="float16"):
        quantize(W * 1e6, 2, block=16)


# ----------------------------------------------------------------------------- bad files
@pytest.fixture()
def saved(tmp_path):
    W = np.random.default_rng(5).standard_normal((12, 48)).astype(np.float32)
    q = quantize(W, 2, block=16, iters=1)
    p = tmp_path / "q.safetensors"
    q.save(p)
    return p, q


def _header(p):
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8: 8 + n])


def _rewrite(p, hdr, data):
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    p.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_truncated_file(saved):
    p, _ = saved
    raw = p.read_bytes()
    p.write_bytes(raw[:-10])
    with pytest.raises(FormatError):
        load(p)
    p.write_bytes(raw[:5])
    with pytest.raises(FormatError):
        load(p)


def test_garbage_and_plain_files(tmp_path):
    p = tmp_path / "g.safetensors"
    p.write_bytes(os.urandom(300))
    with pytest.raises(FormatError):
        load(p)
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 2), np.float32)}, str(p))
    with pytest.raises(FormatError, match="lrmath.kashin"):
        load(p)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.safetensors")


def test_tampered_data_is_refused(saved):
    p, _ = saved
    raw, n, hdr = _header(p)
    off = hdr["weight.kashin.codes_u"]["data_offsets"][0]
    b = bytearray(raw)
    b[8 + n + off] ^= 0x01
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="SHA-256"):
        load(p)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(version=3), "version"),
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m["entries"]["weight"].update(shape=[13, 48]), "shape"),
    (lambda m: m["entries"]["weight"].update(bits_u=2), "codes_u"),
    (lambda m: m["entries"]["weight"].pop("block"), "missing"),
    (lambda m: m["entries"]["weight"].update(basis={"kind": "hadamard", "n": 32, "seed": 0}), "basis"),
])
def test_mismatched_header_is_refused(saved, edit, match):
    p, _ = saved
    raw, n, hdr = _header(p)
    meta = json.loads(hdr["__metadata__"]["lrmath.kashin"])
    edit(meta)
    hdr["__metadata__"]["lrmath.kashin"] = json.dumps(meta)
    _rewrite(p, hdr, raw[8 + n:])
    with pytest.raises(FormatError, match=match):
        load(p)


def test_atomic_write_keeps_old_file(saved, monkeypatch):
    p, q = saved
    before = p.read_bytes()
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        q.save(p)
    assert p.read_bytes() == before
    assert [f.name for f in p.parent.iterdir()] == [p.name]  # no temporary left behind


# ----------------------------------------------------------------------------- baselines
def test_rtn_matches_naive():
    W = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    r = rtn_quantize(W, 3, 16)
    flat = list(W.reshape(-1)) + [W.reshape(-1)[-1]] * 8
    ref = []
    for g in range(len(flat) // 16):
        grp = np.array(flat[16 * g: 16 * g + 16], np.float32)
        lo = np.float16(grp.min())
        s = np.float16((grp.max() - grp.min()) / 7)
        ref += [float(np.float32(s)) * min(max(round((x - np.float32(lo)) / np.float32(s)), 0), 7) + float(np.float32(lo)) for x in grp]
    ref = np.array(ref[: W.size]).reshape(W.shape)
    assert_close(r.dequantize(np.float64), ref, rtol=tolerance(np.float32, 4))
    assert r.bits_per_weight == pytest.approx(8 * (-(-W.size * 3 // 8) + 4 * 15) / W.size)


def test_hqq_optional():
    from lrmath.kashin import hqq_available, hqq_quantize

    ok, why = hqq_available()
    W = np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32)
    if not ok:
        from lrmath.errors import BackendUnavailableError

        with pytest.raises(BackendUnavailableError):
            hqq_quantize(W, 2, 64)
        pytest.skip(why)
    Wh, bpw = hqq_quantize(W, 2, 64)
    assert Wh.shape == W.shape and bpw == 2.5
    assert np.linalg.norm(Wh - W) / np.linalg.norm(W) < 0.6
