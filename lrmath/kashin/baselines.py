"""Baselines users compare Kashin quantization against, in the same code base.

``rtn_quantize``
    Round-to-nearest with an asymmetric per-group scale and zero point (the usual "g64"/"g128"
    integer format): the matrix is cut into groups of ``group`` consecutive weights;
    ``q = round((w - min) / s)``, ``s = (max - min) / (2**bits - 1)``, both ``s`` and ``min`` stored
    as float16. Groups of 256 give 2.125 bits per weight at 2 bits (matched with Kashin's blocks of
    256), groups of 64 give 2.5 (the common setting).
``hqq_quantize``
    Half-Quadratic Quantization through the real ``hqq`` package (optional; the same group layout,
    zero and scale in float16 as hqq keeps them). Raises ``BackendUnavailableError`` without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BackendUnavailableError, OptionError
from . import format as fmt
from .quantize import _check_weight
from ..backend import public

__all__ = ["rtn_quantize", "RTNQuantized", "hqq_quantize", "hqq_available"]


def _check_bits_group(bits, group):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise OptionError(f"bits must be an integer 1..8, got {bits!r}")
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise OptionError(f"group must be a positive integer, got {group!r}")


@public
@dataclass
class RTNQuantized:
    """Round-to-nearest result: packed codes, float16 scales and zeros (per group)."""

    shape: tuple
    bits: int
    group: int
    codes: np.ndarray  # packed, LSB-first like FORMAT.md
    scale: np.ndarray  # float16 (groups,)
    zero: np.ndarray  # float16 (groups,): the group minimum

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.zero.nbytes)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.shape[0] * self.shape[1])

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        out, inn = self.shape
        ng = self.scale.shape[0]
        q = fmt.unpack_codes(self.codes, self.bits, ng * self.group).reshape(ng, self.group)
        w = q.astype(np.float32) * self.scale.astype(np.float32)[:, None] + self.zero.astype(np.float32)[:, None]
        return np.ascontiguousarray(w.reshape(-1)[: out * inn].reshape(out, inn), dtype=dtype)

    def relative_error(self, W) -> float:
        A = np.asarray(W, dtype=np.float64)
        return float(np.linalg.norm(A - self.dequantize(np.float64)) / np.linalg.norm(A))


@public
def rtn_quantize(W, bits: int = 2, group: int = 64, *, calibration=None, damp: float = 0.01) -> RTNQuantized:
    """Round-to-nearest, per-group asymmetric scale/zero (see the module docstring).

    Parameters
    ----------
    W : array, shape (out, in)
    bits : int, 1..8
    group : int
        Consecutive weights sharing one scale and zero, taken from the row-major flattened matrix
        like Kashin's blocks (the same as per-row groups when ``in % group == 0``); the end is
        padded with the last weight, and the padding is dropped on decoding.
    calibration : array (in, in), optional
        ``H = X^T X`` of the layer's inputs: code with GPTQ error propagation instead of plain
        rounding (same stored format and bits per weight). Needs ``in % group == 0`` (groups
        then lie inside rows, as GPTQ's do).
    damp : float
        GPTQ's relative damping of ``H`` (:func:`lrmath.kashin.gptq.prepare_hessian`).
    """
    _check_bits_group(bits, group)
    A, _ = _check_weight(W)
    out, inn = A.shape
    if calibration is not None:
        return _gptq_rtn(A, int(bits), int(group), calibration, damp)
    ng = -(-(out * inn) // group)
    P = np.empty(ng * group, np.float32)
    P[: out * inn] = A.reshape(-1)
    P[out * inn:] = P[out * inn - 1]  # pad with the last value so it does not widen the range
    G = P.reshape(ng, group)
    lo = G.min(axis=-1)
    hi = G.max(axis=-1)
    levels = (1 << bits) - 1
    scale16 = ((hi - lo) / levels).astype(np.float16)
    zero16 = lo.astype(np.float16)
    s = scale16.astype(np.float32)[:, None]
    z = zero16.astype(np.float32)[:, None]
    q = np.rint((G - z) / np.where(s > 0, s, 1))
    q = np.clip(q, 0, levels).astype(np.uint8)
    return RTNQuantized((out, inn), int(bits), int(group), fmt.pack_codes(q, bits), scale16, zero16)


def _gptq_rtn(A, bits, group, H, damp) -> RTNQuantized:
    from .gptq import gptq_columns, inverse_cholesky, prepare_hessian

    out, inn = A.shape
    if inn % group:
        raise OptionError(f"calibrated RTN needs in = {inn} to be a multiple of group {group} (groups inside rows)")
    Hd, dead = prepare_hessian(H, inn, damp)
    levels = (1 << bits) - 1
    k = inn // group
    scale16 = np.zeros((out, k), np.float16)
    zero16 = np.zeros((out, k), np.float16)
    table = np.arange(levels + 1, dtype=np.float64)

    def fit(x, j):  # the group's grid from its current (compensated) weights, stored in float16
        lo, hi = x.min(axis=1), x.max(axis=1)
        scale16[:, j] = ((hi - lo) / levels).astype(np.float16)
        zero16[:, j] = lo.astype(np.float16)
        z = zero16[:, j].astype(np.float64)
        return np.broadcast_to(z[:, None], x.shape), scale16[:, j].astype(np.float64), table, None

    bounds = [(j * group, (j + 1) * group) for j in range(k)]
    codes, _, _ = gptq_columns(A.astype(np.float64), inverse_cholesky(Hd), bounds, fit, dead=dead)
    q = codes.reshape(out * k, group)
    return RTNQuantized((out, inn), bits, group, fmt.pack_codes(q, bits), scale16.reshape(-1), zero16.reshape(-1))


@public
def hqq_available() -> tuple[bool, str]:
    """``(True, version)`` when the optional ``hqq`` package imports, else ``(False, reason)``."""
    try:
        import hqq  # noqa: F401
        from hqq.core.quantize import Quantizer  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return False, f"hqq not usable ({type(exc).__name__}: {exc})"
    try:
        from importlib.metadata import version

        return True, version("hqq")
    except Exception:  # noqa: BLE001
        return True, "unknown"


@public
def hqq_quantize(W, bits: int = 2, group: int = 64, *, optimize: bool = True) -> tuple[np.ndarray, float]:
    """HQQ (``hqq.core.quantize.Quantizer``, CPU) -> ``(W_hat float32, bits_per_weight)``.

    ``bits_per_weight = bits + 32 / group`` (a float16 scale and zero per group, as hqq keeps them
    before its optional zero/scale quantization, which we leave off).
    """
    ok, why = hqq_available()
    if not ok:
        raise BackendUnavailableError(why)
    _check_bits_group(bits, group)
    A, _ = _check_weight(W)
    import torch
    from hqq.core.quantize import Quantizer

    out, inn = A.shape
    if (out * inn) % group:  # hqq groups the row-major flattened matrix, like rtn_quantize
        raise OptionError(f"hqq needs out * in = {out * inn} to be a multiple of group {group}")
    t = torch.from_numpy(np.array(A, dtype=np.float32, copy=True))
    Wq, meta = Quantizer.quantize(t, nbits=bits, group_size=group, optimize=optimize, axis=1, bitpack=False,
                                  compute_dtype=torch.float32, device="cpu")
    Wd = Quantizer.dequantize(Wq, meta).reshape(out, inn).float().numpy()
    return np.ascontiguousarray(Wd), float(bits + 32.0 / group)
