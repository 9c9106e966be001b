"""Model-level evaluation: perplexity, STS Spearman, and quantizing a model's block linears.

=========================  =================================================================
name                       what
=========================  =================================================================
:func:`perplexity`         causal-LM perplexity over 512-token windows, token-weighted NLL
:func:`sts_spearman`       sentence-encoder STS score (mean pooling, cosine, Spearman x 100)
:func:`spearman`           Spearman rank correlation (average ranks for ties)
:func:`quantize_linears`   replace every ``nn.Linear`` inside the transformer blocks by its
                           Kashin / RTN / HQQ reconstruction; bits per weight from bytes
:func:`calibrated_kashin`  the same with calibrated Kashin (GPTQ propagation on a calibration
                           text), optional LQER factors and distilled norms / block scales
=========================  =================================================================

CLI: ``lrmath eval ppl`` and ``lrmath eval sts``; the table of all methods is
``python -m benchmarks quant_model``. Needs the ``eval`` extra (torch, transformers, gguf,
hqq); ``import lrmath.eval`` itself imports none of them.
"""

from __future__ import annotations

from .metrics import Perplexity, perplexity, spearman, sts_spearman, token_ids
from .quant import QUANTIZERS, QuantReport, block_linears, calibrated_kashin, quantize_linears

__all__ = ["perplexity", "Perplexity", "sts_spearman", "spearman", "token_ids", "quantize_linears",
           "calibrated_kashin", "block_linears", "QuantReport", "QUANTIZERS"]
