"""Quantize every linear layer inside the transformer blocks of a model (weight-only, data-free).

:func:`quantize_linears` replaces the weight of each ``nn.Linear`` inside the blocks
(attention and MLP projections; not the embeddings, the LM head or a pooler, as GPTQ and
HQQ evaluations do) with its quantized reconstruction and reports what was stored.

Quantizers
----------
``kashin``  :func:`lrmath.kashin.quantize` (blocks of 256, Hadamard basis; ``method``
            ``"default"`` or ``"greedy"``, the paper's); ``bits`` code bits per weight.
``rtn``     :func:`lrmath.kashin.baselines.rtn_quantize`: asymmetric round-to-nearest per
            group of ``group`` weights, float16 scale and zero.
``hqq``     HQQ (``hqq.core.quantize.Quantizer``, hqq 0.2.8), same group layout.

Decisions
---------
* **Bits per weight from bytes.** Every stored byte of the quantized layers counts: the
  packed codes (``lrmath.kashin.format.pack_codes``, LSB-first), float16 scales and zeros,
  Kashin's float32 tables. For RTN and Kashin they are the bytes of their stored arrays;
  for HQQ the codes hqq returns are packed the same way and its float16 scale and zero
  are counted, i.e. what a file of them holds. Biases stay float and are not counted
  (they are not quantized by any of the three).
* **Evaluation with dense reconstructions.** By default the layer keeps being an
  ``nn.Linear`` whose weight is the dequantized ``W_hat`` (in the layer's dtype); the
  model computes exactly what a quantized kernel would, up to rounding, and runs at
  dense speed. ``packed=True`` (Kashin only) installs :class:`lrmath.torch.kashin.KashinLinear`
  modules instead, which hold only codes, scales and tables.
* **Weight error** is the mean over layers of ``||W - W_hat||_F / ||W||_F``; the total
  ``||W - W_hat||_F / ||W||_F`` over all quantized weights is reported too.
* **Time** is wall-clock seconds of the quantization loop (the machine may be shared).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._progress import progress
from ..errors import EmptyInputError

__all__ = ["quantize_linears", "block_linears", "QuantReport", "QUANTIZERS"]

QUANTIZERS = ("kashin", "rtn", "hqq")
# a linear inside a numbered transformer block: model.layers.3.mlp.up_proj,
# encoder.layer.0.attention.self.query, transformer.h.2.attn.c_attn, blocks.1.ff
_BLOCK_RE = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.\d+\.")


@dataclass
class QuantReport:
    """What :func:`quantize_linears` did."""

    quantizer: str
    bits: int
    group: int | None
    method: str | None
    layers: int
    weights: int
    bytes: int
    bits_per_weight: float
    weight_error: float  # mean over layers of ||W - W_hat|| / ||W||
    weight_error_total: float  # ||W - W_hat|| / ||W|| over all quantized weights
    seconds: float
    names: list = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        if self.quantizer == "kashin":
            return f"Kashin {self.method}"
        return f"{self.quantizer.upper()} g{self.group}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("names")
        d["label"] = self.label
        return d


def block_linears(model: Any) -> list[tuple[str, Any]]:
    """``(name, nn.Linear)`` of every linear layer inside a numbered transformer block."""
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _BLOCK_RE.search(n)]


def _hqq(W: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, int]:
    """HQQ reconstruction and the bytes of its packed codes + float16 scale and zero."""
    import torch

    from ..kashin import format as fmt
    from ..kashin.baselines import _check_bits_group, hqq_available
    from ..errors import BackendUnavailableError

    ok, why = hqq_available()
    if not ok:
        raise BackendUnavailableError(f"{why}; pip install .[eval] (hqq==0.2.8)")
    _check_bits_group(bits, group)
    from hqq.core.quantize import Quantizer

    out, inn = W.shape
    if (out * inn) % group:
        raise ValueError(f"hqq needs out * in = {out * inn} to be a multiple of group {group}")
    t = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32))
    Wq, meta = Quantizer.quantize(t, nbits=bits, group_size=group, optimize=True, axis=1, bitpack=False,
                                  compute_dtype=torch.float32, device="cpu")
    W_hat = Quantizer.dequantize(Wq, meta).reshape(out, inn).float().numpy()
    codes = fmt.pack_codes(Wq.reshape(-1).to(torch.uint8).numpy(), bits)
    nbytes = codes.nbytes + 2 * (meta["scale"].numel() + meta["zero"].numel())  # float16 each
    return W_hat, int(nbytes)


def quantize_linears(
    model: Any,
    quantizer: str = "kashin",
    bits: int = 3,
    *,
    group: int = 64,
    method: str = "default",
    block: int = 256,
    packed: bool = False,
    progress_bar: bool | None = None,
) -> QuantReport:
    """Quantize every ``nn.Linear`` inside the transformer blocks of ``model``, in place.

    Parameters
    ----------
    model : torch.nn.Module
        E.g. a transformers ``LlamaForCausalLM`` (210 block linears in SmolLM2-135M) or
        ``BertModel`` (36 in all-MiniLM-L6-v2).
    quantizer : {"kashin", "rtn", "hqq"}
    bits : int
        Code bits per weight (2..8).
    group : int
        Group size of RTN and HQQ (64 or 256 in the tables); ignored by Kashin.
    method : {"default", "greedy", "truncation"}
        Kashin's encoder (see :func:`lrmath.kashin.quantize`); ignored by the others.
    block : int
        Kashin's block length.
    packed : bool
        Kashin only: install ``KashinLinear`` modules (codes in memory) instead of
        dense reconstructions.
    progress_bar : bool, optional

    Returns
    -------
    QuantReport
        Bits per weight from the stored bytes, weight errors and wall time.

    Raises
    ------
    lrmath.errors.EmptyInputError
        The model has no ``nn.Linear`` inside numbered transformer blocks.
    ValueError
        Unknown quantizer or method, bad bits or group.
    """
    import torch

    from ..kashin.baselines import rtn_quantize
    from ..kashin.quantize import quantize

    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; choose one of {QUANTIZERS}")
    if packed and quantizer != "kashin":
        raise ValueError("packed=True is only available for the kashin quantizer")
    targets = block_linears(model)
    if not targets:
        raise EmptyInputError(
            f"{type(model).__name__} has no nn.Linear inside numbered transformer blocks "
            f"(module names like 'model.layers.0.mlp.up_proj' or 'encoder.layer.0.attention.self.query'); "
            f"nothing to quantize"
        )
    errors, bytes_total, weights, sq_err, sq_w = [], 0, 0, 0.0, 0.0
    t0 = time.perf_counter()
    for name, lin in progress(targets, desc=f"{quantizer} {bits}-bit", enabled=progress_bar):
        W = lin.weight.detach().float().cpu().numpy()
        if quantizer == "kashin":
            q = quantize(W, bits, block=block, method=method)
            nbytes = q.nbytes
            W_hat = q.dequantize()
        elif quantizer == "rtn":
            q = rtn_quantize(W, bits, group)
            nbytes, W_hat = q.nbytes, q.dequantize()
        else:
            W_hat, nbytes = _hqq(W, bits, group)
        e2 = float(np.sum((W.astype(np.float64) - W_hat) ** 2))
        w2 = float(np.sum(W.astype(np.float64) ** 2))
        errors.append(np.sqrt(e2 / w2) if w2 else 0.0)
        sq_err, sq_w = sq_err + e2, sq_w + w2
        bytes_total += int(nbytes)
        weights += W.size
        if packed:
            from ..torch.kashin import KashinLinear, _set_module

            _set_module(model, name, KashinLinear(q, lin.bias).to(lin.weight.device))
        else:
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W_hat).to(lin.weight.dtype))
    seconds = time.perf_counter() - t0
    return QuantReport(
        quantizer=quantizer, bits=int(bits), group=None if quantizer == "kashin" else int(group),
        method=method if quantizer == "kashin" else None, layers=len(targets), weights=weights,
        bytes=bytes_total, bits_per_weight=8.0 * bytes_total / weights, weight_error=float(np.mean(errors)),
        weight_error_total=float(np.sqrt(sq_err / sq_w)) if sq_w else 0.0, seconds=seconds,
        names=[n for n, _ in targets],
    )
