"""The packed file's integrity contract (FORMAT.md, version 2; issue 18).

The entry checksum covers everything that changes the decoded matrix: every header field of
the entry (shape, dtype, block, bits, basis kind/seed, the tensor list) and every stored tensor
(with its dtype and shape). Edits that keep the file self-consistent in size -- another shape with
the same element count, another basis seed or kind -- must be refused, not decoded to a different
matrix. Version-1 files (checksum over tensor bytes only) still load.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from lrmath.errors import FormatError, LrmathError
from lrmath.kashin import KashinQuantized, load_entries, quantize
from lrmath.kashin import format as fmt


def _header(p):
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw, n, json.loads(raw[8: 8 + n])


def _rewrite(p, hdr, data):
    h = json.dumps(hdr).encode()
    h += b" " * ((-len(h)) % 8)
    p.write_bytes(struct.pack("<Q", len(h)) + h + data)


def _edit_meta(p, edit):
    raw, n, hdr = _header(p)
    meta = json.loads(hdr["__metadata__"]["lrmath.kashin"])
    edit(meta)
    hdr["__metadata__"]["lrmath.kashin"] = json.dumps(meta)
    _rewrite(p, hdr, raw[8 + n:])


@pytest.fixture
def saved(tmp_path):
    W = np.random.default_rng(3).standard_normal((12, 48)).astype(np.float32)
    q = quantize(W, 3, block=16, iters=1, basis="rdct", seed=5)
    p = tmp_path / "q.safetensors"
    q.save(p)
    return p, q


def test_written_version_is_2_and_lists_every_tensor(saved):
    p, _ = saved
    header, keys = fmt.read_header(p)
    assert header["version"] == fmt.VERSION == 2
    entry = header["entries"]["weight"]
    assert sorted(entry["tensors"]) == sorted(fmt.TENSORS)
    assert {f"weight.kashin.{t}" for t in fmt.TENSORS} == set(keys)


@pytest.mark.parametrize("field,value", [
    ("shape", [24, 24]),                       # same element count: sizes still match
    ("shape", [48, 12]),
    ("basis", {"kind": "rdct", "n": 16, "seed": 6}),
    ("basis", {"kind": "dct", "n": 16, "seed": 5}),
    ("dtype", "float16"),
    ("method", "greedy"),
    ("tensors", list(fmt.TENSORS) + ["extra"]),
    ("new_field", 1),
])
def test_header_edits_break_the_checksum(saved, field, value):
    p, q = saved
    _edit_meta(p, lambda m: m["entries"]["weight"].__setitem__(field, value))
    with pytest.raises(FormatError):
        KashinQuantized.load(p)


@pytest.mark.parametrize("tensor", fmt.TENSORS)
def test_checksum_covers_every_stored_tensor(saved, tensor):
    """Flip one bit inside each stored tensor in turn: every one is caught."""
    p, _ = saved
    raw, n, hdr = _header(p)
    lo, hi = hdr[f"weight.kashin.{tensor}"]["data_offsets"]
    b = bytearray(raw)
    b[8 + n + lo + (hi - lo) // 2] ^= 0x04
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError):
        KashinQuantized.load(p)


def test_checksum_depends_on_each_field_and_tensor():
    """entry_checksum itself: any change of a field or a tensor changes the digest."""
    q = quantize(np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32), 2, block=32)
    meta = {**q.meta(), "tensors": sorted(fmt.TENSORS)}
    base = fmt.entry_checksum(q.tensors(), meta)
    for k in ("shape", "block", "bits_u", "bits_v", "basis", "dtype"):
        m2 = dict(meta)
        m2[k] = [1, 2] if k == "shape" else ({"kind": "x"} if k == "basis" else ("x" if k == "dtype" else 99))
        assert fmt.entry_checksum(q.tensors(), m2) != base, k
    for t in fmt.TENSORS:
        ts = dict(q.tensors())
        a = ts[t].copy()
        a.view(np.uint8)[0] ^= 1
        ts[t] = a
        assert fmt.entry_checksum(ts, meta) != base, t
    # the sha256 field itself is not hashed (it holds the digest)
    assert fmt.entry_checksum(q.tensors(), {**meta, "sha256": "x"}) == base


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["scale_u", "scale_v"])
def test_nonfinite_scales_are_refused(tmp_path, bad, which):
    """Even with a matching checksum (rewritten by hand), NaN/Inf scales never decode."""
    q = quantize(np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32), 2, block=32)
    t = q.tensors()
    t[which] = t[which].copy()
    t[which][0] = bad
    p = tmp_path / "bad.safetensors"
    with pytest.raises(LrmathError):  # the public writer refuses them up front
        fmt.write_checkpoint(p, {"w": {"meta": q.meta(), "tensors": t}})
    from safetensors.numpy import save_file

    meta = {**q.meta(), "tensors": sorted(fmt.TENSORS)}
    meta["sha256"] = fmt.entry_checksum(t, meta)  # a hostile writer with a valid checksum
    header = {"format": fmt.FORMAT, "version": 2, "entries": {"w": meta}}
    save_file({f"w.kashin.{k}": a for k, a in t.items()}, str(p), metadata={fmt.META_KEY: json.dumps(header)})
    with pytest.raises(FormatError, match="NaN/Inf"):
        load_entries(p)


def test_save_with_name_none_writes_a_loadable_file(tmp_path):
    W = np.random.default_rng(2).standard_normal((4, 40)).astype(np.float32)
    q = quantize(W, 2, block=8)
    p = tmp_path / "n.safetensors"
    q.save(p, None)
    back = KashinQuantized.load(p)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    for bad in ("", "a.kashin.b", 3):
        with pytest.raises(LrmathError):
            q.save(tmp_path / "x.safetensors", bad)


def _v1_checksum(tensors):
    h = hashlib.sha256()
    for t in fmt.TENSORS:  # FORMAT.md version 1: the six tensors' bytes, nothing else
        h.update(np.ascontiguousarray(tensors[t]).tobytes())
    return h.hexdigest()


def test_version_1_files_still_load(tmp_path):
    """A file as version 1 wrote it (no 'tensors' field, tensor-only checksum) decodes identically."""
    from safetensors.numpy import save_file

    W = np.random.default_rng(4).standard_normal((6, 40)).astype(np.float32)
    q = quantize(W, 2, block=16)
    meta = q.meta()
    meta["sha256"] = _v1_checksum(q.tensors())
    header = {"format": fmt.FORMAT, "version": 1, "entries": {"weight": meta}}
    p = tmp_path / "v1.safetensors"
    save_file({f"weight.kashin.{t}": a for t, a in q.tensors().items()}, str(p),
              metadata={fmt.META_KEY: json.dumps(header)})
    back = KashinQuantized.load(p)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    # version 1 still refuses tampered tensors
    raw, n, hdr = _header(p)
    lo, _ = hdr["weight.kashin.codes_v"]["data_offsets"]
    b = bytearray(raw)
    b[8 + n + lo] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="SHA-256"):
        KashinQuantized.load(p)


def test_unknown_future_version_is_refused(saved):
    p, _ = saved
    _edit_meta(p, lambda m: m.update(version=3))
    with pytest.raises(FormatError, match="version"):
        KashinQuantized.load(p)


def test_extra_named_tensors_are_covered(tmp_path):
    """An entry may carry more named tensors (the low-rank factors); they are checksummed too."""
    q = quantize(np.random.default_rng(6).standard_normal((8, 32)).astype(np.float32), 2, block=32,
                 layout="rows", rank=2, lowrank_bits=16, iters=1)
    t = q.tensors()
    assert "lowrank_a" in t
    p = tmp_path / "x.safetensors"
    fmt.write_checkpoint(p, {"w": {"meta": q.meta(), "tensors": t}})
    header, keys = fmt.read_header(p)
    assert "lowrank_a" in header["entries"]["w"]["tensors"] and "w.kashin.lowrank_a" in keys
    load_entries(p)  # loads
    raw, n, hdr = _header(p)
    lo, _ = hdr["w.kashin.lowrank_a"]["data_offsets"]
    b = bytearray(raw)
    b[8 + n + lo] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(FormatError, match="SHA-256"):
        load_entries(p)
