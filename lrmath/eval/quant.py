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
from ..errors import EmptyInputError, OptionError
from ..backend import public

__all__ = ["quantize_linears", "calibrated_kashin", "block_linears", "QuantReport", "QUANTIZERS"]

QUANTIZERS = ("kashin", "rtn", "hqq")
# a linear inside a numbered transformer block: model.layers.3.mlp.up_proj,
# encoder.layer.0.attention.self.query, transformer.h.2.attn.c_attn, blocks.1.ff
_BLOCK_RE = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.\d+\.")


@public
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
    calibration: dict | None = None  # calibrated_kashin: windows, tokens, compensation, distillation

    @property
    def label(self) -> str:
        if self.quantizer == "kashin-cal":
            c = self.calibration or {}
            label = "Kashin calibrated" + (" + LQER" if c.get("rank_bpw") else "")
            return label + (f" + distilled {'/'.join(c['distill_params'])}" if c.get("distill_steps") else "")
        if self.quantizer == "kashin":
            return f"Kashin {self.method}"
        return f"{self.quantizer.upper()} g{self.group}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("names")
        d["label"] = self.label
        return d


@public
def block_linears(model: Any) -> list[tuple[str, Any]]:
    """``(name, nn.Linear)`` of every linear layer inside a numbered transformer block."""
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _BLOCK_RE.search(n)]


def _targets(model: Any) -> list[tuple[str, Any]]:
    """:func:`block_linears`, refusing a model that has none."""
    targets = block_linears(model)
    if not targets:
        raise EmptyInputError(
            f"{type(model).__name__} has no nn.Linear inside numbered transformer blocks "
            f"(module names like 'model.layers.0.mlp.up_proj' or 'encoder.layer.0.attention.self.query'); "
            f"nothing to quantize"
        )
    return targets


class _Tally:
    """The weight errors and stored bytes of the quantized layers, summed as :class:`QuantReport`
    states them (mean of the per-layer relative errors, and the total over all weights)."""

    def __init__(self):
        self.errors: list[float] = []
        self.nbytes, self.weights, self.sq_err, self.sq_w = 0, 0, 0.0, 0.0

    def add(self, W: np.ndarray, W_hat: np.ndarray, nbytes: int) -> None:
        W = np.asarray(W, np.float64)
        e2 = float(np.sum((W - W_hat) ** 2))
        w2 = float(np.sum(W ** 2))
        self.errors.append(np.sqrt(e2 / w2) if w2 else 0.0)
        self.sq_err, self.sq_w = self.sq_err + e2, self.sq_w + w2
        self.nbytes += int(nbytes)
        self.weights += W.size

    def fields(self) -> dict:
        return {"weights": self.weights, "bytes": self.nbytes, "bits_per_weight": 8.0 * self.nbytes / self.weights,
                "weight_error": float(np.mean(self.errors)),
                "weight_error_total": float(np.sqrt(self.sq_err / self.sq_w)) if self.sq_w else 0.0}


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
        raise OptionError(f"hqq needs out * in = {out * inn} to be a multiple of group {group}")
    t = torch.from_numpy(np.ascontiguousarray(W, dtype=np.float32))
    Wq, meta = Quantizer.quantize(t, nbits=bits, group_size=group, optimize=True, axis=1, bitpack=False,
                                  compute_dtype=torch.float32, device="cpu")
    W_hat = Quantizer.dequantize(Wq, meta).reshape(out, inn).float().numpy()
    codes = fmt.pack_codes(Wq.reshape(-1).to(torch.uint8).numpy(), bits)
    nbytes = codes.nbytes + 2 * (meta["scale"].numel() + meta["zero"].numel())  # float16 each
    return W_hat, int(nbytes)


@public
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
        raise OptionError(f"unknown quantizer {quantizer!r}; choose one of {QUANTIZERS}")
    if packed and quantizer != "kashin":
        raise OptionError("packed=True is only available for the kashin quantizer")
    targets = _targets(model)
    tally = _Tally()
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
        tally.add(W, W_hat, nbytes)
        if packed:
            from ..torch.kashin import KashinLinear, _set_module

            _set_module(model, name, KashinLinear(q, lin.bias).to(lin.weight.device))
        else:
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W_hat).to(lin.weight.dtype))
    seconds = time.perf_counter() - t0
    return QuantReport(
        quantizer=quantizer, bits=int(bits), group=None if quantizer == "kashin" else int(group),
        method=method if quantizer == "kashin" else None, layers=len(targets), seconds=seconds,
        names=[n for n, _ in targets], **tally.fields(),
    )


def _dense_linear(kl: Any, weight: Any = None) -> Any:
    """An ``nn.Linear`` holding a :class:`KashinLinear`'s dequantized weight (or ``weight``, that
    same array computed already) and its bias: the same function, at dense speed."""
    import torch

    lin = torch.nn.Linear(kl.in_features, kl.out_features, bias=kl.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(kl.dequantize() if weight is None else torch.as_tensor(weight))
        if kl.bias is not None:
            lin.bias.copy_(kl.bias)
    return lin


def _densify(model: Any, names) -> None:
    """Replace each :class:`KashinLinear` ``names[i]`` of ``model`` by :func:`_dense_linear` of it."""
    from ..torch.kashin import _set_module

    for n in names:
        _set_module(model, n, _dense_linear(model.get_submodule(n)))


@public
def calibrated_kashin(
    model: Any,
    bits: int,
    calibration: Any,
    *,
    tokenizer: Any = None,
    windows: int = 8,
    window: int = 512,
    iters: int = 4,
    gptq: str = "uv",
    rank_bpw: float | None = None,
    distill_steps: int = 0,
    distill_params=("norm", "scales"),
    distill_lr: float = 1e-3,
    distill_window: int = 256,
    seed: int = 0,
    packed: bool = False,
    progress_bar: bool | None = None,
) -> QuantReport:
    """Calibrated Kashin on every ``nn.Linear`` inside the blocks of a causal LM, then (optionally)
    distillation of the floats that cost no bits; in place.

    The recipe of ``python -m benchmarks kashin_model`` (``benchmarks/results/kashin_model_cpu.md``):

    1. the first ``windows`` windows of ``window`` tokens of ``calibration`` give every layer its
       ``H = X^T X``; :func:`lrmath.torch.kashin.quantize_model` codes the layers block by block
       with GPTQ propagation (``iters`` alternating sweeps per block fit), with LQER factors
       within ``rank_bpw`` bits per weight when given;
    2. ``distill_steps > 0``: :func:`lrmath.torch.kashin.distill_floats` tunes ``distill_params``
       (default the norm weights and the Kashin block scales; both stored anyway, so the bits per
       weight do not change) for token-level KL to a float copy of the model taken before step 1,
       over every window of ``distill_window`` tokens of ``calibration``.

    Defaults are the measured best of ``benchmarks/results/kashin_model_cpu.md`` on SmolLM2-135M (fp
    26.58): at 4 bits the codes alone give 28.91 and distilling the norms and block scales 27.98 (the
    first coder, ``gptq="u"``: 35.22 and 29.06; norms alone 30.08); lr 1e-3 beat 5e-4 (29.06 against
    29.15 on the first coder), and neither 300 steps (29.06) nor 512-token windows (29.08) did better
    than 150 steps on 256-token windows.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM with ``.logits`` outputs (e.g. transformers ``LlamaForCausalLM``).
    bits : int
        Code bits per weight, 2..8.
    calibration : str, list of str, or 1-D token ids
        Text to calibrate and distill on (never the evaluation text). A list of documents is
        joined by blank lines (:func:`lrmath.eval.token_ids`).
    tokenizer : transformers tokenizer, needed for text.
    windows, window : int
        How much of ``calibration`` step 1 uses (``windows * window`` tokens from its start).
    gptq : {'uv', 'u'}
        :func:`lrmath.kashin.quantize`'s calibrated coder: both factors (default) or ``u`` only.
    packed : bool
        Keep the ``KashinLinear`` modules (codes in memory); default: dense reconstructions.

    Returns
    -------
    QuantReport
        ``quantizer="kashin-cal"``; ``calibration`` holds the token counts and the distillation's
        first and last losses.

    Raises
    ------
    lrmath.errors.ShapeError
        ``calibration`` is shorter than one window.
    """
    import copy

    from ..backend import check_choice, check_int
    from ..errors import ShapeError
    from ..kashin.quantize import GPTQ_MODES
    from ..torch.kashin import KashinLinear, _id_windows, _set_module, distill_floats, quantize_model
    from .metrics import token_ids

    bits = check_int(bits, "bits", minimum=2, maximum=8)
    check_choice(gptq, "gptq", GPTQ_MODES)
    windows = check_int(windows, "windows", minimum=1)
    window = check_int(window, "window", minimum=2)
    distill_steps = check_int(distill_steps, "distill_steps", minimum=0)
    distill_window = check_int(distill_window, "distill_window", minimum=2)
    params = (distill_params,) if isinstance(distill_params, str) else tuple(distill_params)
    if distill_steps:  # checked before minutes of quantization, not after
        from ..backend import check_float
        from ..torch.kashin import DISTILL_PARAMS

        if not params or not set(params) <= set(DISTILL_PARAMS):
            raise OptionError(f"distill_params must be a non-empty subset of {DISTILL_PARAMS}, got {distill_params!r}")
        check_float(distill_lr, "distill_lr", minimum=0.0, min_open=True)
    targets = _targets(model)
    ids = token_ids(calibration, tokenizer)
    if ids.size < window:
        raise ShapeError(f"the calibration text has {ids.size} tokens, fewer than one window of {window}")
    cal = _id_windows(ids, window)[:windows]
    names = [n for n, _ in targets]
    reference = copy.deepcopy(model).eval() if distill_steps else None
    # the float weights for the error report, without a copy: quantize_model replaces the modules
    # and never writes into their weights
    originals = {n: lin.weight.detach().float().cpu().numpy() for n, lin in targets}
    t0 = time.perf_counter()
    quantize_model(model, bits, include=names, exclude=(), calibration=cal, progress=progress_bar is not False,
                   iters=iters, gptq=gptq, **({"rank_bpw": rank_bpw} if rank_bpw else {}))
    info: dict = {"windows": len(cal), "window": window, "tokens": len(cal) * window, "iters": iters, "gptq": gptq,
                  "rank_bpw": rank_bpw, "distill_steps": distill_steps}
    if distill_steps:
        dl = min(distill_window, ids.size)
        batches = _id_windows(ids, dl)
        rep = distill_floats(model, reference, batches, steps=distill_steps, lr=distill_lr, params=params,
                             loss="kl", seed=seed, progress=progress_bar is not False)
        del reference
        k = max(1, min(10, len(rep["losses"])))
        info.update(distill_params=list(params), distill_lr=distill_lr, distill_window=dl,
                    distill_windows=len(batches), distill_parameters=rep["parameters"],
                    distill_loss_first=float(np.mean(rep["losses"][:k])),
                    distill_loss_last=float(np.mean(rep["losses"][-k:])))
    seconds = time.perf_counter() - t0
    tally = _Tally()
    for n in names:
        kl = model.get_submodule(n)
        if not isinstance(kl, KashinLinear):  # quantize_model replaces every name it was given
            raise RuntimeError(f"{n} was not quantized")
        W_hat = kl.dequantize()
        tally.add(originals.pop(n), W_hat.double().numpy(), kl.nbytes)
        if not packed:
            _set_module(model, n, _dense_linear(kl, W_hat))
    return QuantReport(quantizer="kashin-cal", bits=int(bits), group=None, method="default", layers=len(names),
                       seconds=seconds, names=names, calibration=info, **tally.fields())
