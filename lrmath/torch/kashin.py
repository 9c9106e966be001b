"""PyTorch side of Kashin quantization: ``KashinLinear``, ``quantize_model``, quantized checkpoints.

``KashinLinear`` keeps the packed codes, float16 scales and float32 tables of
:class:`lrmath.kashin.KashinQuantized` as buffers and computes ``y = x W_hat^T + b`` without ever
building the dense ``W_hat``: the factors (or, for blocks that straddle rows, the decoded rows) are
expanded ``chunk_rows`` output rows at a time, inside a custom autograd function that saves no
tensor for backward (``dx = dy W_hat`` is recomputed the same way; the quantized weight is frozen).

FORMAT.md version 2 entries work the same way: the rows layout (row-aligned column blocks, one
operator and table per block) transforms the input blockwise, and stored low-rank compensation
factors add ``(x A^T) B^T`` (never ``B A``). ``quantize_model(..., calibration=batches)`` codes every
layer against its own inputs (GPTQ-style, block by block, each block seeing the quantized blocks
before it; :func:`calibrated_quantize_model`). :func:`distill_floats` then tunes the float biases
and norm weights, and the stored float16 block scales (all kept anyway, so free in bits per
weight) towards the float model's outputs. LoRA
over a frozen ``KashinLinear`` lives in :mod:`lrmath.torch.kashin_lora`.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from typing import Iterable

import numpy as np
import torch
from torch import nn

from .. import ops
from ..errors import FormatError, OptionError, ShapeError
from ..kashin import format as fmt
from ..kashin.quantize import _F16_MAX, KashinQuantized, load_entries, quantize
from ..backend import check_choice, public
from ._inputs import layer_forward

__all__ = ["KashinLinear", "quantize_model", "calibrated_quantize_model", "load_quantized", "save_quantized",
           "distill_floats", "DEFAULT_EXCLUDE", "DISTILL_LOSSES", "DISTILL_PARAMS"]

DEFAULT_EXCLUDE = ("*embed*", "*head*", "*classifier*", "*pooler*")


def _unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Torch mirror of :func:`lrmath.kashin.format.unpack_codes` (FORMAT.md bit stream) -> int64."""
    if bits == 8:
        return packed[:count].long()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
        c = (packed[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
        return c.reshape(-1)[:count].long()
    bit = (packed[:, None] >> torch.arange(8, device=packed.device, dtype=torch.uint8)[None, :]) & 1
    bit = bit.reshape(-1)[: count * bits].reshape(count, bits).long()
    return (bit << torch.arange(bits, device=packed.device)[None, :]).sum(-1)


class _QuantizedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer  # no tensor is saved: backward re-decodes the codes (buffers)
        return layer._linear(x)

    @staticmethod
    def backward(ctx, gy):
        return ctx.layer._rlinear(gy), None


@public
class KashinLinear(nn.Module):
    """A frozen linear layer with a Kashin-quantized weight (FORMAT.md buffers).

    Parameters
    ----------
    q : KashinQuantized
        The quantized ``(out_features, in_features)`` weight.
    bias : tensor of shape (out_features,), optional
    chunk_rows : int, optional
        Output rows decoded at a time (default: about ``2**20`` decoded entries per chunk).
    """

    def __init__(self, q: KashinQuantized, bias: torch.Tensor | None = None, *, chunk_rows: int | None = None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.block = q.block
        self.bits_u, self.bits_v = q.bits_u, q.bits_v
        self.basis = dict(q.basis)
        self.method = q.method
        self.orig_dtype = q.dtype
        for t in fmt.TENSORS:
            self.register_buffer(t, torch.from_numpy(np.ascontiguousarray(getattr(q, t)).copy()))
        # version-2 fields: rows layout (per-column-block operators and tables), low-rank factors
        self.layout = q.layout
        self.blocks = list(q.blocks) if q.blocks else None
        self.bases = [dict(b) for b in q.bases] if q.bases else None
        self.lowrank = dict(q.lowrank) if q.lowrank else None
        self._extra_names = [t for t in fmt.EXTRA_TENSORS if t in q.extra]
        for t in self._extra_names:
            self.register_buffer(t, torch.from_numpy(np.ascontiguousarray(q.extra[t]).copy()))
        if self.layout == "rows":
            self._cols, keys = [], {}
            c0 = 0
            for b, sp in zip(self.blocks, self.bases):
                key = repr(sp)
                if key not in keys:
                    keys[key] = len(keys)
                    self.register_buffer(f"Qm{keys[key]}", torch.from_numpy(ops.orthogonal(sp).matrix().astype(np.float32)),
                                         persistent=False)
                self._cols.append((c0, c0 + b, f"Qm{keys[key]}"))
                c0 += b
            self.register_buffer("colidx", torch.repeat_interleave(torch.arange(len(self.blocks)), torch.tensor(self.blocks)),
                                 persistent=False)
        else:
            self.register_buffer("Qm", torch.from_numpy(q.Q.matrix().astype(np.float32)), persistent=False)
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ShapeError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone().float())
        else:
            self.register_parameter("bias", None)
        self.chunk_rows = int(chunk_rows) if chunk_rows else max(1, (1 << 20) // self.in_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 2, **kw) -> "KashinLinear":
        """Quantize an ``nn.Linear`` (keyword arguments go to :func:`lrmath.kashin.quantize`)."""
        chunk = kw.pop("chunk_rows", None)
        q = quantize(linear.weight.detach().cpu().float().numpy(), bits, **kw)
        return cls(q, linear.bias, chunk_rows=chunk)

    def to_quantized(self) -> KashinQuantized:
        return KashinQuantized(shape=(self.out_features, self.in_features), dtype=self.orig_dtype, block=self.block,
                               bits_u=self.bits_u, bits_v=self.bits_v, basis=self.basis, method=self.method,
                               layout=self.layout, blocks=self.blocks, bases=self.bases, lowrank=self.lowrank,
                               extra={t: getattr(self, t).cpu().numpy() for t in self._extra_names},
                               **{t: getattr(self, t).cpu().numpy() for t in fmt.TENSORS})

    @property
    def nbytes(self) -> int:
        """Every stored byte: codes, scales, tables, low-rank factors."""
        return sum(getattr(self, t).numel() * getattr(self, t).element_size()
                   for t in fmt.TENSORS + tuple(self._extra_names))

    @property
    def bits_per_weight(self) -> float:
        """Every stored byte (codes, scales, tables, low-rank factors) per weight."""
        return 8.0 * self.nbytes / (self.out_features * self.in_features)

    def lowrank_factors(self, dtype=torch.float32):
        """Decoded compensation ``(B (out, r), A (r, in))`` or None (FORMAT.md, low-rank tensors)."""
        if not self.lowrank:
            return None
        r, b = int(self.lowrank["rank"]), int(self.lowrank["bits"])

        def dec(name, n):
            p = getattr(self, name)
            if b == 16:
                return p.reshape(r, n).to(dtype)
            c = _unpack(p, b, r * n).reshape(r, n).to(dtype) - float(1 << (b - 1))
            return c * getattr(self, name + "_scale").to(dtype)[:, None]

        return dec("lowrank_bt", self.out_features).T, dec("lowrank_a", self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits_u}+{self.bits_v}, "
                f"block={self.block}, basis={self.basis.get('kind')}, bpw={self.bits_per_weight:.3f}, bias={self.bias is not None}")

    # ---------------------------------------------------------------- decoding (torch)
    def _decode(self, which: str, b0: int, b1: int, dtype) -> torch.Tensor:
        N = self.block
        bits = self.bits_u if which == "u" else self.bits_v
        per = N * bits // 8
        packed = getattr(self, "codes_" + which)[b0 * per: b1 * per]
        codes = _unpack(packed, bits, (b1 - b0) * N).reshape(b1 - b0, N)
        table = getattr(self, "table_" + which)
        scale = getattr(self, "scale_" + which)[b0:b1].float()
        return (scale[:, None] * table[codes]).to(dtype)

    def _xform(self, x2, dtype, transpose):
        """Rows layout: blockwise rows ``x Q_j`` (``Q_j^T x``, ``transpose``) or ``x Q_j^T``."""
        return torch.cat([x2[:, c0:c1] @ (getattr(self, qn).to(dtype) if transpose else getattr(self, qn).to(dtype).T)
                          for c0, c1, qn in self._cols], dim=1)

    def _uv_rows_cols(self, which, r0, r1, dtype):
        inn = self.in_features
        bits = self.bits_u if which == "u" else self.bits_v
        packed = getattr(self, "codes_" + which)[r0 * inn * bits // 8: r1 * inn * bits // 8]
        codes = _unpack(packed, bits, (r1 - r0) * inn).reshape(r1 - r0, inn)
        k = len(self.blocks)
        table = getattr(self, "table_" + which)
        scale = getattr(self, "scale_" + which).reshape(self.out_features, k)[r0:r1].float()
        vals = table[self.colidx[None, :] * (1 << bits) + codes]
        return (scale[:, self.colidx] * vals).to(dtype)

    def _terms(self, lo, hi, dtype):
        """The two decoded terms ``(U_hat, V_hat)`` of ``W_hat = U_hat + V_hat`` (``U_hat`` = scaled
        ``u`` codes, ``V_hat`` = scaled ``v`` codes through ``Q``): output rows ``lo..hi`` as
        ``(rows, in)`` in the rows layout, flat blocks ``lo..hi`` as ``(blocks, N)`` in the flat
        layout (padding not cut)."""
        if self.layout == "rows":
            U, V = self._uv_rows(lo, hi, dtype)
            return U, self._xform(V, dtype, transpose=False)
        return self._decode("u", lo, hi, dtype), self._decode("v", lo, hi, dtype) @ self.Qm.to(dtype).T

    def _w_rows(self, r0, r1, dtype):
        if self.layout == "rows":
            U, V = self._terms(r0, r1, dtype)
            return U + V
        inn, N = self.in_features, self.block
        f0, f1 = r0 * inn, r1 * inn
        b0, b1 = f0 // N, -(-f1 // N)
        U, V = self._terms(b0, b1, dtype)
        return (U + V).reshape(-1)[f0 - b0 * N: f1 - b0 * N].reshape(r1 - r0, inn)

    def _uv_rows(self, r0, r1, dtype):
        if self.layout == "rows":
            return self._uv_rows_cols("u", r0, r1, dtype), self._uv_rows_cols("v", r0, r1, dtype)
        nb = self.in_features // self.block
        return (self._decode("u", r0 * nb, r1 * nb, dtype).reshape(r1 - r0, -1),
                self._decode("v", r0 * nb, r1 * nb, dtype).reshape(r1 - r0, -1))

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x2 = x.reshape(-1, self.in_features).to(dt)
        t, out, N = x2.shape[0], self.out_features, self.block
        y = x2.new_empty((t, out))
        R = self.chunk_rows
        if self.layout == "rows" or self.in_features % N == 0:
            xt = (self._xform(x2, dt, transpose=True) if self.layout == "rows"
                  else (x2.reshape(t, -1, N) @ self.Qm.to(dt)).reshape(t, -1))  # rows of Q^T x, blockwise
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                U, V = self._uv_rows(r0, r1, dt)
                y[:, r0:r1] = x2 @ U.T + xt @ V.T
        else:
            for r0 in range(0, out, R):
                r1 = min(r0 + R, out)
                y[:, r0:r1] = x2 @ self._w_rows(r0, r1, dt).T
        lr = self.lowrank_factors(dt)
        if lr is not None:
            y += (x2 @ lr[1].T) @ lr[0].T
        return y.reshape(*x.shape[:-1], out).to(x.dtype)

    def _rlinear(self, g: torch.Tensor) -> torch.Tensor:
        dt = g.dtype if g.dtype in (torch.float32, torch.float64) else torch.float32
        g2 = g.reshape(-1, self.out_features).to(dt)
        t, inn, N = g2.shape[0], self.in_features, self.block
        R = self.chunk_rows
        if self.layout == "rows" or inn % N == 0:
            au = g2.new_zeros((t, inn))
            av = g2.new_zeros((t, inn))
            for r0 in range(0, self.out_features, R):
                r1 = min(r0 + R, self.out_features)
                U, V = self._uv_rows(r0, r1, dt)
                au += g2[:, r0:r1] @ U
                av += g2[:, r0:r1] @ V
            res = au + (self._xform(av, dt, transpose=False) if self.layout == "rows"
                        else (av.reshape(t, -1, N) @ self.Qm.to(dt).T).reshape(t, inn))
        else:
            res = g2.new_zeros((t, inn))
            for r0 in range(0, self.out_features, R):
                r1 = min(r0 + R, self.out_features)
                res += g2[:, r0:r1] @ self._w_rows(r0, r1, dt)
        lr = self.lowrank_factors(dt)
        if lr is not None:
            res += (g2 @ lr[0]) @ lr[1]
        return res.reshape(*g.shape[:-1], inn).to(g.dtype)

    @layer_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        y = _QuantizedMatmul.apply(x, self) if self._tuning is None else self._tuned_linear(x)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    # ---------------------------------------------------------------- scale tuning (distill_floats)
    _tuning = None  # (U_hat, V_hat) while the block scales are being tuned, else None
    _SCALES = ("scale_u", "scale_v")
    _GAINS = ("gain_u", "gain_v")

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_terms` of the whole weight in float32. A gain ``g`` on a block's scale multiplies
        that block of its term: the scale is a scalar per block and ``Q`` acts inside a block, so
        the two commute."""
        return self._terms(0, self.out_features if self.layout == "rows" else self.scale_u.numel(), torch.float32)

    def _scaled_weight(self) -> torch.Tensor:
        """Dense ``W_hat`` (out, in), differentiable in the per-block gains (while tuning)."""
        U, V = self._tuning
        out, inn = self.out_features, self.in_features
        gu, gv = self.gain_u, self.gain_v
        if self.layout == "rows":
            k = len(self.blocks)
            return gu.reshape(out, k)[:, self.colidx] * U + gv.reshape(out, k)[:, self.colidx] * V
        w = gu[:, None] * U + gv[:, None] * V
        return w.reshape(-1)[: out * inn].reshape(out, inn)

    def _tuned_linear(self, x: torch.Tensor) -> torch.Tensor:
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        x2 = x.reshape(-1, self.in_features).to(dt)
        y = x2 @ self._scaled_weight().to(dt).T
        lr = self.lowrank_factors(dt)
        if lr is not None:
            y = y + (x2 @ lr[1].T) @ lr[0].T
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _start_scale_tuning(self) -> list[tuple[str, nn.Parameter]]:
        """Make the block scales trainable, as float32 gains ``gain_u, gain_v`` (one per stored
        scale, starting at 1): a relative parametrisation, so one learning rate suits scales of any
        magnitude and the float norm weights tuned beside them. ``forward`` then builds ``W_hat``
        densely from cached decoded terms; :meth:`_stop_scale_tuning` folds the gains into the
        stored float16 scales."""
        if self._tuning is None:
            with torch.no_grad():
                self._tuning = self._parts()
            for t, g in zip(self._SCALES, self._GAINS):
                setattr(self, g, nn.Parameter(torch.ones(getattr(self, t).shape, dtype=torch.float32)))
        return [(g, getattr(self, g)) for g in self._GAINS]

    def _scales_fit_float16(self) -> bool:
        return all(bool(torch.all((getattr(self, t).float() * getattr(self, g).detach()).abs() <= _F16_MAX))
                   for t, g in zip(self._SCALES, self._GAINS))

    def _stop_scale_tuning(self) -> None:
        """Fold the gains into the scales, rounded to float16 (the stored format), and drop them."""
        if self._tuning is None:
            return
        with torch.no_grad():
            for t, g in zip(self._SCALES, self._GAINS):
                gain = self._parameters.pop(g).detach()
                s = getattr(self, t)
                s.copy_((s.float() * gain).to(s.dtype))
        self._tuning = None

    def drop_lowrank(self) -> None:
        """Remove the stored compensation factors (e.g. after moving them into a LoRA adapter)."""
        for t in self._extra_names:
            delattr(self, t)
        self._extra_names, self.lowrank = [], None

    def dequantize(self) -> torch.Tensor:
        """The dense ``W_hat`` (+ ``B A``) (for inspection only; ``forward`` never builds it)."""
        w = self._w_rows(0, self.out_features, torch.float32)
        lr = self.lowrank_factors()
        return w + lr[0] @ lr[1] if lr is not None else w


def _match(name: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


@public
def quantize_model(model: nn.Module, bits: int = 2, *, include: Iterable[str] | None = None,
                   exclude: Iterable[str] | None = DEFAULT_EXCLUDE, calibration=None, progress: bool = False,
                   tokenizer=None, window: int = 512, **kw) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`KashinLinear`.

    Parameters
    ----------
    bits : int
        Code bits per weight (2..8), see :func:`lrmath.kashin.quantize`.
    include, exclude : iterables of fnmatch patterns on module names
        A layer is quantized when it matches ``include`` (all when ``None``) and no ``exclude``
        pattern (default: embeddings and heads, :data:`DEFAULT_EXCLUDE`).
    calibration : iterable of model inputs or of str, optional
        Batches to calibrate on (each a LongTensor of token ids, or a dict of keyword arguments of
        ``model``), or texts: joined by blank lines, tokenized with ``tokenizer`` and cut into
        windows of ``window`` tokens (one batch each; ``use_cache=False`` is passed). Then every layer is coded against ``H = X^T X`` of its own inputs (GPTQ-style,
        :mod:`lrmath.kashin.gptq`), block by block: the inputs of the first repeated block (the
        ``nn.ModuleList`` holding most targets, e.g. a transformer's layers) are captured once, each
        block is run on them with forward hooks on its linears, its linears are quantized, and the
        block is run again *quantized* to give the next block its inputs (so every layer sees the
        already-quantized layers before it). Targets outside the blocks are calibrated by a last
        full pass; targets the calibration inputs never reach (e.g. an unused pooler) are quantized
        data-free and listed in ``model.kashin_uncalibrated``. See :func:`calibrated_quantize_model`.
    progress : bool
        A progress bar over blocks (calibrated path).
    **kw
        Passed to :func:`lrmath.kashin.quantize` (``block``, ``basis``, ``method``, ``iters``, ``seed``,
        ``layout``, ``rank``/``rank_bpw``, ``lowrank``, ``lowrank_bits``, ``damp``).

    Returns
    -------
    nn.Module
        ``model`` itself; ``model.kashin_layers`` lists the names replaced.
    """
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and (include is None or _match(n, include)) and not _match(n, exclude)]
    if calibration is not None:
        calibration = list(calibration)
        if calibration and all(isinstance(c, str) for c in calibration):
            calibration = _text_windows(calibration, tokenizer, window)
        return calibrated_quantize_model(model, bits, [n for n, _ in targets], calibration, progress=progress, **kw)
    for name, lin in targets:
        _set_module(model, name, KashinLinear.from_linear(lin, bits, **kw))
    model.kashin_layers = [n for n, _ in targets]
    return model


class _Stop(Exception):
    pass


def _text_windows(texts, tokenizer, window):
    """Texts -> batches ``{"input_ids": (1, window), "use_cache": False}`` (the last partial window dropped
    unless it is the only one)."""
    if tokenizer is None:
        raise OptionError("calibration texts need tokenizer= (a callable returning {'input_ids': [...]})")
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise OptionError(f"window must be an integer >= 2, got {window!r}")
    ids = list(tokenizer("\n\n".join(texts))["input_ids"])
    if not ids:
        raise OptionError("calibration texts tokenize to nothing")
    return _id_windows(ids, window)


def _id_windows(ids, window: int) -> list[dict]:
    """1-D token ids -> batches ``{"input_ids": (1, window), "use_cache": False}``: consecutive
    non-overlapping windows, the last partial one dropped unless it is the only one."""
    ids = torch.as_tensor(ids)
    return [{"input_ids": ids[i * window:(i + 1) * window][None], "use_cache": False}
            for i in range(max(1, ids.numel() // window))]


def _call(model, item):
    if isinstance(item, dict):
        return model(**item)
    if isinstance(item, (tuple, list)):
        return model(*item)
    return model(item)


def _is_kv_cache(value) -> bool:
    """True for a transformers ``Cache`` (a model that passes one has imported transformers)."""
    tf = sys.modules.get("transformers")
    cache_cls = getattr(getattr(tf, "cache_utils", None), "Cache", None)
    return cache_cls is not None and isinstance(value, cache_cls)


def _find_blocks(model, names):
    """The ``nn.ModuleList`` (and its name) whose children hold the most of ``names``."""
    best, best_n, best_name = None, 0, ""
    for mn, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 1:
            pre = mn + "." if mn else ""
            n = sum(1 for t in names if t.startswith(pre))
            if n > best_n:
                best, best_n, best_name = mod, n, mn
    return best, best_name


def _hessian_hooks(model, names, H, state=None):
    """Accumulate ``H[n] += X^T X`` of each linear's inputs; rows at padding positions are skipped when
    ``state["mask"]`` holds the current batch's attention mask (b, s) and the input is (b, s, in)."""
    hooks = []
    for n in names:
        mod = model.get_submodule(n)

        def hook(m, inputs, output, n=n):
            x = inputs[0].detach()
            mask = (state or {}).get("mask")
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            if n not in H:
                H[n] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            H[n].addmm_(x.T, x)

        hooks.append(mod.register_forward_hook(hook))
    return hooks


def _quantize_with(model, names, H, bits, kw, replace=None):
    for n in names:
        lin = model.get_submodule(n)
        if replace is not None:
            _set_module(model, n, replace(lin, H[n].numpy()))
            continue
        q = quantize(lin.weight.detach().cpu().float().numpy(), bits, calibration=H[n].numpy(), **kw)
        _set_module(model, n, KashinLinear(q, lin.bias))


@public
@torch.no_grad()
def calibrated_quantize_model(model: nn.Module, bits: int, names, calibration, *, progress: bool = False,
                              replace=None, **kw) -> nn.Module:
    """Calibrated, block-sequential quantization of the linears ``names`` (see :func:`quantize_model`).

    ``replace``, optional: a callable ``(linear, H) -> nn.Module`` (``H`` the float64 NumPy
    ``X^T X`` of the linear's inputs) used instead of Kashin -- e.g. a peer quantizer such as
    GPTQ (``rtn_quantize(W, bits, group, calibration=H)``), so that peers run through the same
    block-sequential capture. Linears the calibration never reaches are then left as they are.

    The decision on what "sequential" means here: per repeated block (GPTQ's choice); within a
    block, all linears see the block's inputs through the unquantized block (q/k/v and o_proj are
    calibrated on one pass), then the quantized block produces the next block's inputs. Batches
    given as dicts with an ``attention_mask`` (b, s) leave their padding positions out of ``H``.
    """
    from .._progress import progress as _bar

    batches = list(calibration)
    if not batches:
        raise OptionError("calibration is empty: pass at least one batch of inputs")
    if replace is not None and not callable(replace):
        raise OptionError(f"replace must be a callable (linear, H) -> module, got {type(replace).__name__}")
    names = list(names)
    was_training = model.training
    model.eval()
    blocks, bname = _find_blocks(model, names)
    done: list[str] = []
    masks = [item.get("attention_mask") if isinstance(item, dict) else None for item in batches]
    state: dict = {}
    if blocks is not None:
        store = []

        def grab(mod, args, kwargs):
            # no KV cache: blocks are re-run on these inputs (H capture, then the outputs), and a cache
            # would take each block's keys twice (whatever the model names the argument)
            kwargs = {k: (None if _is_kv_cache(v) else v) for k, v in kwargs.items()}
            store.append((args, kwargs))
            raise _Stop

        h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            for item in batches:
                try:
                    _call(model, item)
                except _Stop:
                    pass
        finally:
            h.remove()
        pre = bname + "." if bname else ""
        it = _bar(range(len(blocks)), desc="calibrated Kashin", total=len(blocks)) if progress else range(len(blocks))
        for i in it:
            mine = [n for n in names if n.startswith(f"{pre}{i}.")]
            blk = blocks[i]
            if mine:
                H: dict = {}
                hooks = _hessian_hooks(model, mine, H, state)
                try:
                    for (args, kwargs), mask in zip(store, masks):
                        state["mask"] = mask
                        blk(*args, **kwargs)
                finally:
                    state["mask"] = None
                    for hk in hooks:
                        hk.remove()
                _quantize_with(model, [n for n in mine if n in H], H, bits, kw, replace)
                done += [n for n in mine if n in H]
            new = []
            for args, kwargs in store:
                o = blk(*args, **kwargs)
                o = o[0] if isinstance(o, (tuple, list)) else o
                new.append(((o,) + tuple(args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": o}))
            store = new
    rest = [n for n in names if n not in done]
    if rest:  # outside the repeated blocks: one full pass with the rest of the model quantized
        H = {}
        hooks = _hessian_hooks(model, rest, H, state)
        try:
            for item, mask in zip(batches, masks):
                state["mask"] = mask
                _call(model, item)
        finally:
            state["mask"] = None
            for hk in hooks:
                hk.remove()
        _quantize_with(model, [n for n in rest if n in H], H, bits, kw, replace)
        done += [n for n in rest if n in H]
    never = [n for n in names if n not in done]  # not reached by the calibration inputs: data-free
    if replace is not None:  # a peer: what it cannot calibrate stays as it was
        model.train(was_training)
        model.kashin_uncalibrated = never
        return model
    kw_free = {k: v for k, v in kw.items() if k not in ("damp",)}
    if kw_free.get("lowrank") == "lqer":
        kw_free["lowrank"] = "loftq"
    for n in never:
        lin = model.get_submodule(n)
        _set_module(model, n, KashinLinear.from_linear(lin, bits, layout=kw_free.pop("layout", "rows"), **kw_free))
    model.train(was_training)
    model.kashin_layers = list(names)
    model.kashin_uncalibrated = never
    return model


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@public
def save_quantized(model: nn.Module, path) -> None:
    """Write ``model`` as a quantized checkpoint: one FORMAT.md entry ``<module>.weight`` per
    :class:`KashinLinear`, every other state-dict tensor plain (atomic write)."""
    entries, plain = {}, {}
    kl = {n: m for n, m in model.named_modules() if isinstance(m, KashinLinear)}
    for n, m in kl.items():
        q = m.to_quantized()
        entries[f"{n}.weight"] = {"meta": q.meta(), "tensors": q.tensors()}
    skip = {f"{n}.{t}" for n in kl for t in fmt.TENSORS + fmt.EXTRA_TENSORS}
    for k, v in model.state_dict().items():
        if k not in skip:
            plain[k] = v.detach().cpu().contiguous().numpy()
    fmt.write_checkpoint(path, entries, plain)


@public
def load_quantized(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Load a quantized checkpoint (from :func:`save_quantized` or ``lrmath quantize``) into ``model``.

    Each entry ``<module>.weight`` replaces the ``nn.Linear`` (or ``KashinLinear``) ``<module>`` by a
    :class:`KashinLinear`; plain tensors are loaded with ``load_state_dict``. With ``strict``, a
    missing module, a shape mismatch or a missing/unexpected plain tensor raises.
    """
    from safetensors import safe_open

    entries = load_entries(path)
    modules = dict(model.named_modules())
    for name, q in entries.items():
        if not name.endswith(".weight"):
            raise FormatError(f"{path}: entry {name!r} does not name a module weight")
        mod_name = name[: -len(".weight")]
        mod = modules.get(mod_name)
        if not isinstance(mod, (nn.Linear, KashinLinear)):
            if strict:
                raise FormatError(f"{path}: entry {name!r} has no linear module {mod_name!r} in the model")
            continue
        shape = (mod.out_features, mod.in_features)
        if shape != q.shape:
            raise FormatError(f"{path}: entry {name!r} has shape {q.shape}, module {mod_name!r} is {shape}")
        _set_module(model, mod_name, KashinLinear(q, mod.bias.detach() if mod.bias is not None else None))
    header, keys = fmt.read_header(path)
    plain_keys = [k for k in keys if ".kashin." not in k]
    state = {}
    with safe_open(os.fspath(path), framework="pt") as f:
        for k in plain_keys:
            state[k] = f.get_tensor(k)
    missing, unexpected = model.load_state_dict(state, strict=False)
    kl = {n for n, m in model.named_modules() if isinstance(m, KashinLinear)}
    missing = [m for m in missing
               if m.rsplit(".", 1)[0] not in kl or m.rsplit(".", 1)[1] not in fmt.TENSORS + fmt.EXTRA_TENSORS]
    if strict and (missing or unexpected):
        raise FormatError(f"{path}: state does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.kashin_layers = sorted(kl)
    return model


# --------------------------------------------------------------------------------------------
# Float-parameter distillation (bias correction / norm tweaking after quantization)

DISTILL_LOSSES = ("auto", "kl", "cosine", "mse")
DISTILL_PARAMS = ("bias", "norm", "scales")


def _is_norm(module: nn.Module) -> bool:
    # LayerNorm, GroupNorm, and the RMSNorm classes of transformers (LlamaRMSNorm, ...) by name
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")


def _distill_params(model: nn.Module, which) -> list[tuple[str, nn.Parameter]]:
    out, seen = [], set()
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if id(p) in seen or not p.is_floating_point():
                continue
            if ("norm" in which and _is_norm(mod)) or ("bias" in which and pname == "bias"):
                seen.add(id(p))
                out.append((full, p))
    return out


def _states(out):
    # last hidden states of an encoder, else the logits of a language model, else a bare tensor
    for key in ("last_hidden_state", "logits"):
        v = getattr(out, key, None)
        if v is not None:
            return v
    return out


def _distill_loss(kind, out_q, out_r, mask):
    """Loss between the quantized model's output ``out_q`` and the reference's ``out_r``."""
    import torch.nn.functional as F

    from .model import mean_pool

    if kind == "kl":
        lq = getattr(out_q, "logits", None)
        lr_ = getattr(out_r, "logits", None)
        if lq is None or lr_ is None:
            raise OptionError("loss='kl' needs model outputs with .logits (a language model)")
        kl = F.kl_div(F.log_softmax(lq.float(), -1), F.log_softmax(lr_.float(), -1), log_target=True,
                      reduction="none").sum(-1)
        if mask is None:
            return kl.mean()
        m = mask.to(kl.dtype)
        return (kl * m).sum() / m.sum().clamp_min(1.0)
    hq, hr = _states(out_q), _states(out_r)
    if not torch.is_tensor(hq) or hq.shape != hr.shape:
        raise ShapeError("the model and the reference must return hidden states of one shape")
    if mask is None:
        mask = torch.ones(hq.shape[:-1], dtype=torch.long, device=hq.device)
    if kind == "cosine":
        return (1.0 - (mean_pool(hq.float(), mask) * mean_pool(hr.float(), mask)).sum(-1)).mean()
    m = mask.to(torch.float32)[..., None]
    return ((hq.float() - hr.float()) ** 2 * m).sum() / ((hr.float() ** 2) * m).sum().clamp_min(1e-30)


@public
def distill_floats(model: nn.Module, reference: nn.Module, calibration, *, steps: int = 300, lr: float = 1e-3,
                   params=("bias", "norm"), loss: str = "auto", seed: int = 0, tokenizer=None, window: int = 512,
                   progress: bool = False) -> dict:
    """Tune the float parameters a weight quantizer leaves alone so ``model`` matches ``reference``.

    After weight-only quantization the biases and normalisation weights are still stored in float
    (and so cost no bits per weight). Training only them to reproduce the float model's outputs on
    calibration inputs undoes part of the quantization's systematic error: bias correction (Nagel et
    al. 2019, DFQ, sec. 4.2) and norm tweaking (Li et al. 2024, "Norm Tweaking", eq. 4) do the same
    layer by layer; here it is end to end, with AdamW, in place.

    Parameters
    ----------
    model : nn.Module
        The quantized model (e.g. after :func:`quantize_model`); modified in place. Only the
        selected parameters change; every other parameter keeps its ``requires_grad``.
    reference : nn.Module
        The float model it was quantized from (keep a ``copy.deepcopy`` before quantizing); only run
        forward, never changed.
    calibration : iterable of model inputs, or of str
        Batches as for :func:`quantize_model` (a LongTensor of ids or a dict of keyword arguments,
        whose ``attention_mask`` (b, s) marks the real tokens), or texts with ``tokenizer`` (cut into
        windows of ``window`` tokens). Steps cycle through the batches, in a seeded order per pass.
    steps : int
        AdamW steps (one batch each). lr : float, AdamW learning rate (no weight decay).
    params : iterable of {"bias", "norm", "scales"}
        Which floats to train: every parameter named ``bias`` (of any module), the parameters
        of normalisation modules (``nn.LayerNorm``, ``nn.GroupNorm``, classes named ``*Norm`` such
        as transformers' ``LlamaRMSNorm``), and ``"scales"``: the per-block float16 scales
        ``alpha, beta`` of every :class:`KashinLinear` (the codes and tables stay fixed). Each
        scale is trained as a float32 gain (starting at 1, so ``lr`` is a relative step as for
        the norm weights) on a dense ``W_hat = G_u * U_hat + G_v * V_hat`` built from the cached
        decoded terms (a dense matmul per layer and step, two float32 ``(out, in)`` tensors of
        memory per layer); at the end the scales become ``float16(scale * gain)``, stored as
        before, so the bits per weight do not change. Tuning a quantizer's scales end to end is
        PEQA's idea (Kim et al. 2023); here with the distillation loss instead of the task loss.
    loss : {"auto", "kl", "cosine", "mse"}
        ``"kl"``: token-level KL(reference || model) of ``.logits`` over real tokens (language
        models); ``"cosine"``: 1 - cosine of the mean-pooled last hidden states (sentence encoders);
        ``"mse"``: squared error of the last hidden states (of the logits when the output has no
        ``.last_hidden_state``) over real tokens, relative to the reference's energy. ``"auto"``: ``"kl"`` when the output has ``.logits``, else ``"cosine"``.
    seed : int
        Seeds the batch order.
    progress : bool
        A progress bar over steps (on a terminal, or with ``LRMATH_PROGRESS=1``).

    Returns
    -------
    dict
        ``{"parameters": int, "tensors": int, "loss": str, "losses": list[float] (one per step)}``.

    Raises
    ------
    NonFiniteError
        A step's loss is NaN or Inf, or a tuned scale left the float16 range; the selected
        parameters are then restored to their values on entry.
    """
    from .._progress import progress as _bar
    from ..backend import check_float, check_int
    from ..errors import ArgumentTypeError, NonFiniteError

    if not isinstance(model, nn.Module) or not isinstance(reference, nn.Module):
        raise ArgumentTypeError("model and reference must be torch.nn.Module instances")
    if model is reference:
        raise OptionError("reference must be a separate float copy of the model, not the model itself")
    steps = check_int(steps, "steps", minimum=1)
    lr = check_float(lr, "lr", minimum=0.0, min_open=True)
    seed = check_int(seed, "seed", minimum=0)
    if isinstance(params, str):
        params = (params,)
    try:
        which = set(params)
    except TypeError:
        raise ArgumentTypeError(f"params must be an iterable of 'bias'/'norm'/'scales', got {params!r}") from None
    if not which or not which <= set(DISTILL_PARAMS):
        raise OptionError(f"params must be a non-empty subset of {DISTILL_PARAMS}, got {params!r}")
    loss = check_choice(loss, "loss", DISTILL_LOSSES)
    batches = list(calibration) if calibration is not None else []
    if batches and all(isinstance(c, str) for c in batches):
        batches = _text_windows(batches, tokenizer, window)
    if not batches:
        raise OptionError("calibration is empty: pass at least one batch of inputs")
    chosen = _distill_params(model, which)
    kashin = [(n, m) for n, m in model.named_modules() if isinstance(m, KashinLinear)] if "scales" in which else []
    if "scales" in which and not kashin:
        raise OptionError("params 'scales' tunes the block scales of KashinLinear layers, and the model has none")
    if not chosen and not kashin:
        raise OptionError(f"the model has no {'/'.join(sorted(which))} parameters to tune")
    shared = {id(p) for p in reference.parameters()} & {id(p) for _, p in chosen}
    if shared:
        raise OptionError(f"model and reference share {len(shared)} of the tuned parameters: pass a deep copy "
                          "of the float model as reference")

    flags = {id(p): p.requires_grad for p in model.parameters()}
    for n, m in kashin:
        chosen += [(f"{n}.{t}" if n else t, p) for t, p in m._start_scale_tuning()]
    saved = [p.detach().clone() for _, p in chosen]
    was_training = (model.training, reference.training)
    model.eval()  # dropout off: the two models must see the same function of the inputs
    reference.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in chosen:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([p for _, p in chosen], lr=lr, weight_decay=0.0)
    order = np.random.default_rng(seed)
    perm: list[int] = []
    losses: list[float] = []
    kind = loss
    try:
        for _ in (_bar(range(steps), desc="distill floats", total=steps) if progress else range(steps)):
            if not perm:
                perm = list(order.permutation(len(batches)))
            item = batches[perm.pop()]
            mask = item.get("attention_mask") if isinstance(item, dict) else None
            with torch.no_grad():
                out_r = _call(reference, item)
            out_q = _call(model, item)
            if kind == "auto":
                kind = "kl" if getattr(out_q, "logits", None) is not None else "cosine"
            value = _distill_loss(kind, out_q, out_r, mask)
            if not torch.isfinite(value):
                raise NonFiniteError(f"distill_floats: loss is {float(value)} at step {len(losses)}; "
                                     "parameters restored (try a smaller lr)")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
        if not all(m._scales_fit_float16() for _, m in kashin):
            raise NonFiniteError("distill_floats: a tuned block scale left the float16 range of the stored format; "
                                 "parameters restored (try a smaller lr)")
    except BaseException:
        with torch.no_grad():
            for (_, p), s in zip(chosen, saved):
                p.copy_(s)
        raise
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))
        for _, p in chosen:  # the only gradients this call made
            p.grad = None
        for _, m in kashin:  # the scales go back to float16 buffers (what the format stores)
            m._stop_scale_tuning()
        model.train(was_training[0])
        reference.train(was_training[1])
    return {"parameters": int(sum(p.numel() for _, p in chosen)), "tensors": len(chosen), "loss": kind,
            "losses": losses}
