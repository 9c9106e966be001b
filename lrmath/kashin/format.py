"""Bit packing and the safetensors file layout of ``FORMAT.md`` (version 2; version 1 still loads).

Everything here is plain NumPy so that the GPU kernels have a readable reference to match bit
for bit: :func:`pack_codes` / :func:`unpack_codes` implement the little-endian bit stream of
FORMAT.md, :func:`write_checkpoint` / :func:`read_header` / :func:`validate_entry` the header
and validation rules.

Version 2 (issue 18) makes the entry checksum cover *everything that changes the decoded
values*: the entry's header fields (shape, dtype, block, bits, basis kind/seed/factors, the
list of its tensors, and any field added later) as canonical JSON, then every tensor the entry
lists, each with its name, dtype and shape. An entry is a header dict plus named tensors, so
later additions (low-rank factors, ...) are new names in ``tensors`` and are covered by the same
checksum without a format change. Version 1 files (checksum over the six tensors' bytes only)
still load; their header fields cannot be verified, which FORMAT.md states.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from ..errors import FormatError, NonFiniteError, OptionError
from ..backend import public

__all__ = [
    "FORMAT",
    "VERSION",
    "TENSORS",
    "pack_codes",
    "unpack_codes",
    "entry_checksum",
    "write_checkpoint",
    "read_header",
    "validate_entry",
    "atomic_write",
]

FORMAT = "lrmath.kashin"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
META_KEY = "lrmath.kashin"
TENSORS = ("codes_u", "codes_v", "scale_u", "scale_v", "table_u", "table_v")
# version 2: optional tensors of the low-rank compensation ``W ~ W_hat + B A`` (FORMAT.md), in the
# order they enter the checksum after the six above
EXTRA_TENSORS = ("lowrank_a", "lowrank_bt", "lowrank_a_scale", "lowrank_bt_scale")
_DTYPES = {"codes_u": np.uint8, "codes_v": np.uint8, "scale_u": np.float16, "scale_v": np.float16,
           "table_u": np.float32, "table_v": np.float32, "lowrank_a_scale": np.float16,
           "lowrank_bt_scale": np.float16}


@public(finite=False)
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes ``0 <= c < 2**bits`` into the little-endian bit stream of FORMAT.md.

    Parameters
    ----------
    codes : ndarray of unsigned ints, any shape (flattened in C order)
    bits : int, 1..8

    Returns
    -------
    ndarray of uint8, shape (ceil(codes.size * bits / 8),)
    """
    c = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if not 1 <= bits <= 8:
        raise OptionError(f"bits must be in 1..8, got {bits}")
    if c.size and int(c.max()) >= (1 << bits):
        raise OptionError(f"a code {int(c.max())} does not fit in {bits} bits")
    if bits == 8:
        return c.copy()
    if 8 % bits == 0:
        per = 8 // bits
        pad = (-c.size) % per
        if pad:
            c = np.concatenate([c, np.zeros(pad, np.uint8)])
        c = c.reshape(-1, per)
        out = np.zeros(c.shape[0], np.uint8)
        for j in range(per):
            out |= c[:, j] << np.uint8(j * bits)
        return out
    # general widths: expand to single bits (LSB of each code first), then LSB-first bytes
    bitarr = ((c[:, None] >> np.arange(bits, dtype=np.uint8)[None, :]) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1), bitorder="little")


@public(finite=False)
def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``count`` codes as uint8, shape (count,)."""
    p = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    need = -(-count * bits // 8)
    if p.size < need:
        raise FormatError(f"packed codes hold {p.size} bytes, {need} needed for {count} codes of {bits} bits")
    if bits == 8:
        return p[:count].copy()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits)[None, :]
        mask = np.uint8((1 << bits) - 1)
        return ((p[: -(-count // per), None] >> shifts) & mask).reshape(-1)[:count]
    bitarr = np.unpackbits(p[:need], bitorder="little")[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (bitarr.astype(np.uint16) @ weights).astype(np.uint8)


def _tensor_bytes(a) -> bytes:
    a = np.asarray(a)
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False)).tobytes()


@public(finite=False)
def entry_checksum(tensors: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None, *, version: int = VERSION) -> str:
    """SHA-256 (hex) of an entry (FORMAT.md, "Checksum").

    Version 2 (default): the canonical JSON of ``meta`` without ``sha256`` (sorted keys, no
    spaces), a NUL byte, then for every tensor named in ``meta["tensors"]`` (default: the six
    of :data:`TENSORS`) in sorted order: ``name``, NUL, ``dtype.str``, NUL, the shape as JSON,
    NUL and the little-endian bytes. Version 1: the six tensors' bytes in :data:`TENSORS` order.
    """
    h = hashlib.sha256()
    if version == 1:
        for t in TENSORS:
            h.update(_tensor_bytes(tensors[t]))
        return h.hexdigest()
    if version != 2:
        raise FormatError(f"no checksum rule for format version {version!r}")
    m = {k: v for k, v in dict(meta or {}).items() if k != "sha256"}
    names = list(m.get("tensors", TENSORS))
    m["tensors"] = sorted(names)
    try:
        h.update(json.dumps(m, sort_keys=True, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise FormatError(f"entry header is not JSON-serialisable ({exc})") from exc
    for t in sorted(names):
        if t not in tensors:
            raise FormatError(f"entry lists tensor {t!r} but does not hold it")
        a = np.asarray(tensors[t])
        h.update(b"\0" + t.encode() + b"\0" + a.dtype.newbyteorder("<").str.encode() + b"\0"
                 + json.dumps(list(a.shape)).encode() + b"\0")
        h.update(_tensor_bytes(a))
    return h.hexdigest()


@public
def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` on a temporary file next to ``path``, then ``os.replace`` it.

    A failure (or an interrupt) leaves any existing ``path`` untouched and no partial file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@public
def write_checkpoint(path, entries: Mapping[str, dict], plain: Mapping[str, np.ndarray] | None = None) -> None:
    """Write quantized entries (``{name: {"meta": {...}, "tensors": {...}}}``) and plain tensors.

    ``meta`` holds the entry fields of FORMAT.md except ``sha256``, which is computed here.
    The write is atomic.
    """
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    # always the current version: its checksum covers the header fields as well as the tensors
    header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "entries": {}}
    for name, e in entries.items():
        if not isinstance(name, str) or not name or ".kashin." in name:
            raise OptionError(f"entry name must be a non-empty string without '.kashin.', got {name!r}")
        meta = dict(e["meta"])
        meta.pop("sha256", None)
        names = sorted(set(TENSORS) | set(e["tensors"]))
        meta["tensors"] = names
        stored = {t: np.ascontiguousarray(e["tensors"][t], dtype=_DTYPES.get(t)) for t in names}
        for t, a in stored.items():
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                raise NonFiniteError(f"entry {name!r}: tensor {t} holds NaN/Inf; refusing to write an undecodable file")
        meta["sha256"] = entry_checksum(stored, meta)
        header["entries"][name] = meta
        for t in names:
            tensors[f"{name}.kashin.{t}"] = stored[t]
    use_torch = False
    for name, a in (plain or {}).items():
        if name in tensors:
            raise OptionError(f"plain tensor {name!r} collides with a quantized entry")
        if isinstance(a, np.ndarray):
            tensors[name] = np.ascontiguousarray(a)
        else:  # a torch tensor (bfloat16 has no NumPy dtype): write the file through torch
            use_torch = True
            tensors[name] = a.detach().cpu().contiguous()
    meta = {META_KEY: json.dumps(header, sort_keys=True)}
    if use_torch:
        import torch
        from safetensors.torch import save_file as save_pt

        tt = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_pt(tt, tmp, metadata=meta))
        return
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


@public
def read_header(path) -> tuple[dict, list[str]]:
    """Parse and check the header of a quantized file; return ``(header, all tensor names)``."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise FormatError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    size = os.path.getsize(path)
    _check_size(path, size)
    if META_KEY not in meta:
        raise FormatError(f"{path}: no '{META_KEY}' header; not a Kashin-quantized file")
    try:
        header = json.loads(meta[META_KEY])
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: header '{META_KEY}' is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError(f"{path}: header format is {header.get('format') if isinstance(header, dict) else header!r}, expected {FORMAT!r}")
    if header.get("version") not in SUPPORTED_VERSIONS or isinstance(header.get("version"), bool):
        raise FormatError(f"{path}: format version {header.get('version')!r} is not supported (this reader knows versions {list(SUPPORTED_VERSIONS)})")
    if not isinstance(header.get("entries"), dict):
        raise FormatError(f"{path}: header has no 'entries' object")
    return header, names


def _check_size(path, size):
    # safetensors validates offsets lazily; check that the data section is all there
    import struct

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise FormatError(f"{path}: truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        try:
            hdr = json.loads(fh.read(n))
        except Exception as exc:  # noqa: BLE001
            raise FormatError(f"{path}: corrupt safetensors header ({exc})") from exc
    end = max((v["data_offsets"][1] for k, v in hdr.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise FormatError(f"{path}: file is {size} bytes, header describes {8 + n + end} (truncated or padded)")


def entry_tensor_names(meta: Mapping[str, Any], version: int = VERSION) -> list[str]:
    """The tensors an entry stores: ``meta["tensors"]`` (version 2) or the six of :data:`TENSORS`."""
    if version == 1:
        return list(TENSORS)
    names = meta.get("tensors") if isinstance(meta, Mapping) else None
    if not isinstance(names, list) or not all(isinstance(t, str) and t for t in names) or not set(TENSORS) <= set(names):
        raise FormatError(f"entry field 'tensors' must list at least {list(TENSORS)}, got {names!r}")
    return names


def entry_layout(meta: Mapping[str, Any]) -> tuple[str, list[int]]:
    """``(layout, column blocks)`` of an entry: ``("flat", [])`` (version 1) or ``("rows", sizes)``."""
    layout = meta.get("layout", "flat")
    if layout == "flat":
        return "flat", []
    if layout != "rows":
        raise ValueError(f"unknown layout {layout!r}")
    return "rows", [int(b) for b in meta["blocks"]]


def expected_sizes(meta: Mapping[str, Any]) -> dict[str, int]:
    """Element counts of every tensor an entry must hold (FORMAT.md), keyed by tensor name."""
    out, inn = (int(s) for s in meta["shape"])
    bu, bv = int(meta["bits_u"]), int(meta["bits_v"])
    layout, blocks = entry_layout(meta)
    if layout == "flat":
        N = int(meta["block"])
        B = -(-(out * inn) // N)
        exp = {"codes_u": B * N * bu // 8, "codes_v": B * N * bv // 8, "scale_u": B, "scale_v": B,
               "table_u": 1 << bu, "table_v": 1 << bv}
    else:
        k = len(blocks)  # one table per column block
        exp = {"codes_u": out * inn * bu // 8, "codes_v": out * inn * bv // 8, "scale_u": out * k,
               "scale_v": out * k, "table_u": k << bu, "table_v": k << bv}
    lr = meta.get("lowrank")
    if lr:
        r, lb = int(lr["rank"]), int(lr["bits"])
        if lb == 16:
            exp.update(lowrank_a=r * inn, lowrank_bt=r * out)
        else:
            exp.update(lowrank_a=-(-r * inn * lb // 8), lowrank_bt=-(-r * out * lb // 8),
                       lowrank_a_scale=r, lowrank_bt_scale=r)
    return exp


def _check_layout(where, meta, out, inn, N, bu, bv, basis):
    layout, blocks = entry_layout(meta)
    if layout == "flat":
        if not isinstance(basis, dict) or basis.get("n") != N:
            raise FormatError(f"{where}: basis {basis!r} does not describe an operator of size {N}")
        return
    bases = meta.get("bases")
    if (not blocks or sum(blocks) != inn or any(b < 1 for b in blocks) or inn % 8
            or not isinstance(bases, list) or len(bases) != len(blocks)
            or any(not isinstance(s, dict) or s.get("n") != b for s, b in zip(bases, blocks))):
        raise FormatError(f"{where}: rows layout with blocks {blocks!r} and bases {bases!r} does not cover in = {inn} "
                          "(sizes must sum to in, in a multiple of 8, one basis of matching size per block)")


@public(finite=False)
def validate_entry(path, name: str, meta: dict, tensors: Mapping[str, np.ndarray], *, version: int = VERSION) -> None:
    """Check an entry's fields, tensor dtypes and sizes, table order, scales and checksum (FORMAT.md)."""
    where = f"{path}: entry {name!r}"
    if not isinstance(meta, Mapping):
        raise FormatError(f"{where}: entry is not an object")
    if not isinstance(tensors, Mapping):
        raise FormatError(f"{where}: tensors must be a mapping of name -> array")
    try:
        out, inn = (int(s) for s in meta["shape"])
        N = int(meta["block"])
        bu, bv = int(meta["bits_u"]), int(meta["bits_v"])
        basis = meta["basis"]
        _ = meta["dtype"]
        digest = meta["sha256"]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (*meta["shape"], meta["block"], meta["bits_u"], meta["bits_v"])):
            raise TypeError("shape, block and bits must be integers")
        if len(meta["shape"]) != 2:
            raise ValueError("shape must be [out, in]")
        expect = expected_sizes(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{where}: missing or malformed field ({exc!r})") from exc
    if out < 1 or inn < 1 or N < 8 or N % 8 or not (1 <= bu <= 7 and 1 <= bv <= 7):
        raise FormatError(f"{where}: fields out of range (shape={meta['shape']}, block={N}, bits_u={bu}, bits_v={bv})")
    _check_layout(where, meta, out, inn, N, bu, bv, basis)
    lr = meta.get("lowrank")
    if lr and (int(lr.get("bits", 0)) not in (16, 8, 4) or not 1 <= int(lr.get("rank", 0)) <= min(out, inn)):
        raise FormatError(f"{where}: lowrank {lr!r} out of range (bits 16, 8 or 4; 1 <= rank <= min(out, in))")
    lr_dtype = {"lowrank_a": np.float16 if lr and int(lr["bits"]) == 16 else np.uint8}
    lr_dtype["lowrank_bt"] = lr_dtype["lowrank_a"]
    extra = set(tensors) - set(TENSORS) - set(expect)
    if extra:
        raise FormatError(f"{where}: unexpected tensors {sorted(extra)} for this entry's fields")
    for t in expect:
        if t not in tensors:
            raise FormatError(f"{where}: tensor {name}.kashin.{t} is missing")
        a = tensors[t]
        want = _DTYPES.get(t) or lr_dtype[t]
        if a.dtype != want:
            raise FormatError(f"{where}: {t} has dtype {a.dtype}, expected {np.dtype(want)}")
        if a.ndim != 1 or a.size != expect[t]:
            raise FormatError(f"{where}: {t} has shape {a.shape}, expected ({expect[t]},) for shape {(out, inn)}, block {N}")
    for t, b in (("table_u", bu), ("table_v", bv)):
        tab = tensors[t].reshape(-1, 1 << b)
        if not np.all(np.isfinite(tab)) or np.any(np.diff(tab, axis=-1) <= 0):
            raise FormatError(f"{where}: {t} is not finite and strictly ascending")
    for t in ("scale_u", "scale_v"):
        if not np.all(np.isfinite(tensors[t].astype(np.float32))):
            raise FormatError(f"{where}: {t} holds NaN/Inf block scales")
    names = entry_tensor_names(meta, version)
    if version >= 2 and sorted(names) != sorted(expect):
        raise FormatError(f"{where}: field 'tensors' lists {sorted(names)}, the entry's fields need {sorted(expect)}")
    if entry_checksum(tensors, meta, version=version) != digest:
        covered = "header fields and tensors" if version >= 2 else "tensors"
        raise FormatError(f"{where}: SHA-256 mismatch over the entry's {covered} (the file was modified or is corrupt)")
