"""Kashin quantization (Merkulov et al., "Quantization of Large Language Models with an Overdetermined
Basis", arXiv 2404.09737).

Public API
----------
``decompose(x, Q, method=...)``      Kashin representation ``x = u + Q v`` of many blocks at once
``quantize(W, bits=2, ...)``         -> :class:`KashinQuantized` (dequantize, linear/matmul/rmatmul,
                                     save/load in the format of ``FORMAT.md``); ``calibration=H``
                                     (``X^T X``) for GPTQ-style output-error coding (:mod:`.gptq`),
                                     ``rank=``/``rank_bpw=`` for LoftQ/LQER compensation
                                     (:mod:`.lowrank`), ``layout="rows"``, ``split=(bu, bv)``
``load(path, name=None)``            read a quantized file (``KashinQuantized.load``)
``load_entries(path)``               every quantized matrix of a checkpoint
``rtn_quantize(W, bits, group)``     round-to-nearest baseline with per-group scale/zero
``hqq_quantize(W, bits, group)``     HQQ baseline via the optional ``hqq`` package
"""

from .baselines import RTNQuantized, hqq_available, hqq_quantize, rtn_quantize
from .decompose import Decomposition, DecompositionReport, decompose
from .quantize import KashinQuantized, load_entries, lloyd_max, quantize, split_bits

load = KashinQuantized.load

__all__ = [
    "decompose",
    "Decomposition",
    "DecompositionReport",
    "quantize",
    "KashinQuantized",
    "load",
    "load_entries",
    "split_bits",
    "lloyd_max",
    "rtn_quantize",
    "RTNQuantized",
    "hqq_quantize",
    "hqq_available",
]
