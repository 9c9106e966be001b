"""RunLoRA layers for PyTorch: :class:`LoRALinear` and :func:`convert_peft`.

PyTorch/PEFT layout: ``weight`` (out, in), ``lora_A`` (r, in), ``lora_B`` (out, r),
``y = x weightᵀ + bias + s · dropout(x) lora_Aᵀ lora_Bᵀ`` with ``s = lora_alpha / r``.
The planner works in the math layout of the RunLoRA paper (arXiv 2312.03415):
``X = x`` (t, m=in), ``W = weightᵀ`` (m, n=out), ``A = lora_Aᵀ`` (m, r), ``B = lora_Bᵀ`` (r, n);
the layer hands it transposed *views*, never copies.

A :class:`torch.autograd.Function` runs the forward and backward graphs the plan picks for
the current number of tokens, with fused GEMMs (``addmm`` with ``alpha``/``beta``), and
saves only the activations that backward graph reads (checked in the tests with
``torch.autograd.graph.saved_tensors_hooks``).
"""

from __future__ import annotations

import math
import types
import warnings
from functools import lru_cache
from typing import List, Optional

import torch
from torch import nn

from ..errors import OptionError, RankError, ShapeError
from ..runlora.execute_torch import TorchOps, run_program
from ..runlora.plan import plan as _plan
from ._compile import constant, handle, is_compiling, lookup
from ..backend import check_bool, check_choice, check_float, check_int, public
from ._inputs import layer_forward

__all__ = ["LoRALinear", "convert_peft", "lora_function", "RunLoRAPeftLinear"]


@lru_cache(maxsize=256)
def _layer_plan(m, n, r, x_grad, w_grad, bias, dropout, objective):
    return _plan(m, n, r, x_grad=x_grad, w_grad=w_grad, bias=bias, dropout=dropout,
                 objective="flops" if objective == "time" else objective)


@lru_cache(maxsize=4096)
def _pair(m, n, r, t, x_grad, w_grad, bias, dropout, objective, dtype="float32", device="cpu"):
    if objective == "time":
        p = _plan(m, n, r, tokens=t, x_grad=x_grad, w_grad=w_grad, bias=bias, dropout=dropout, objective="time",
                  backend="cuda" if device == "cuda" else "torch", dtype=dtype)
        c = p.choice
    else:
        c = _layer_plan(m, n, r, x_grad, w_grad, bias, dropout, objective).select(t)
    return c.forward, c.backward


# planning is plain Python over cached tables: keep torch.compile from tracing into it
_pair_eager = torch.compiler.disable(_pair) if hasattr(torch, "compiler") else _pair


@constant
def _segments(m, n, r, x_grad, w_grad, bias, dropout, objective):
    """The plan's lower envelope as ``((t_from, forward handle, backward handle), ...)``.

    Evaluated once per shape/flag set while Dynamo traces; traced code then compares the
    token count with ``t_from`` (a guard), so a new batch size inside the same segment
    reuses the compiled graph.
    """
    p = _layer_plan(m, n, r, x_grad, w_grad, bias, dropout, objective)
    return tuple((seg.t_from, handle(seg.choice.forward), handle(seg.choice.backward)) for seg in p.segments)


@constant
def _time_pair(m, n, r, t, x_grad, w_grad, bias, dropout, dtype, device):
    """``objective="time"`` measures per token count: the pair's handles at this (static) t."""
    f, b = _pair(m, n, r, t, x_grad, w_grad, bias, dropout, "time", dtype, device)
    return handle(f), handle(b)


def _forward_body(X, weight, bias, lora_A, lora_B, K, s, fan_in_fan_out, fwd, bwd):
    """Run forward graph ``fwd`` on 2-D ``X`` (t, in); returns ``(Y (t, out), [saved for bwd])``.

    The saved list follows ``sorted(bwd.saved)``.
    """
    W = weight if fan_in_fan_out else weight.t()  # (m, n) view
    env = {"X": X, "W": W, "A": lora_A.t(), "B": lora_B.t()}
    if bias is not None:
        env["b"] = bias
    if K is not None:
        env["K"] = K
    return _run_forward(fwd, bwd, env, TorchOps(s, X))


def _run_forward(fwd, bwd, env, ops):
    """Execute forward graph ``fwd`` on ``env`` with ``ops``; returns ``(Y, [what bwd saves])``.

    The saved list follows ``sorted(bwd.saved)``, each tensor in the orientation ``bwd`` reads.
    """
    keep = [fwd.made[k][0] for k in bwd.saved]
    Y = run_program(fwd, env, ops, ["Y"], keep_alive=keep)["Y"]
    saved = []
    for k in sorted(bwd.saved):
        tensor, flipped = fwd.made[k]
        v = env[tensor]
        saved.append(v.t() if flipped else v)
    return Y, saved


def _backward_body(dY, X, K, weight, lora_A, lora_B, saved, s, fan_in_fan_out, bwd, want_dx, want_dw, want_db):
    """Run backward graph ``bwd``; returns ``{"dA", "dB"[, "dX", "dW", "db"]}`` in math layout."""
    if dY.dtype != lora_A.dtype:
        dY = dY.to(lora_A.dtype)
    env = {"dY": dY, "W": weight if fan_in_fan_out else weight.t(), "A": lora_A.t(), "B": lora_B.t()}
    if X is not None:
        env["X"] = X
    if K is not None:
        env["K"] = K
    for k, v in zip(sorted(bwd.saved), saved):
        env["saved:" + k] = v
    want = ["dA", "dB"]
    if want_dx:
        want.append("dX")
    if want_dw:
        want.append("dW")
    if want_db:
        want.append("db")
    return run_program(bwd, env, TorchOps(s, dY), want)


class _LoRAFunction(torch.autograd.Function):
    """y = x Wᵀ + b + s (x∘K) Aᵀ Bᵀ (torch layout) executing a planned graph pair (eager mode)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, objective):
        in_f = lora_A.shape[1]
        lead = x.shape[:-1]
        X = x.reshape(-1, in_f)
        t = X.shape[0]
        m, n = (weight.shape if fan_in_fan_out else weight.shape[::-1])
        r = lora_A.shape[0]
        has_bias = bias is not None
        dropout = mask is not None
        if isinstance(objective, tuple):  # an explicit (forward, backward) graph pair
            fwd, bwd = objective
        else:
            fwd, bwd = _pair_eager(m, n, r, t, ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias, dropout,
                                   objective, str(X.dtype).rsplit(".", 1)[-1], X.device.type)
        K = mask.reshape(-1, in_f) if dropout else None
        Y, saved = _forward_body(X, weight, bias, lora_A, lora_B, K, s, fan_in_fan_out, fwd, bwd)
        ctx.bwd = bwd
        ctx.meta = (lead, in_f, s, fan_in_fan_out, has_bias)
        ctx.save_for_backward(X if "X" in bwd.inputs else None, K if "K" in bwd.inputs else None,
                              weight, lora_A, lora_B, *saved)
        return Y.reshape(*lead, n)

    @staticmethod
    def backward(ctx, dy):
        X, K, weight, lora_A, lora_B, *saved = ctx.saved_tensors
        lead, in_f, s, fifo, has_bias = ctx.meta
        g = _backward_body(dy.reshape(-1, dy.shape[-1]), X, K, weight, lora_A, lora_B, saved, s, fifo, ctx.bwd,
                           ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2])
        dx = g["dX"].reshape(*lead, in_f) if "dX" in g else None
        dw = None
        if "dW" in g:
            dw = g["dW"] if fifo else g["dW"].t()
        return dx, dw, g.get("db"), g["dA"].t(), g["dB"].t(), None, None, None, None


# ------------------------------------------------------------------ torch.compile path
def _fresh(outs, inputs):
    """Custom-op outputs must not alias inputs or each other: copy the (rare) ones that do."""
    if any(o.device.type == "meta" or type(o) is not torch.Tensor for o in outs):
        return outs  # fake/meta tensors: shapes only
    seen = {i.untyped_storage().data_ptr() for i in inputs if i is not None}
    res = []
    for o in outs:
        ptr = o.untyped_storage().data_ptr()
        if ptr in seen:
            o = o.clone()
            ptr = o.untyped_storage().data_ptr()
        seen.add(ptr)
        res.append(o)
    return res


@torch.library.custom_op("lrmath::runlora_forward", mutates_args=())
def _op_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora_A: torch.Tensor,
                lora_B: torch.Tensor, mask: Optional[torch.Tensor], s: float, fan_in_fan_out: bool, fwd: int,
                bwd: int) -> List[torch.Tensor]:
    Y, saved = _forward_body(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, lookup(fwd), lookup(bwd))
    return _fresh([Y, *saved], (x, weight, bias, lora_A, lora_B, mask))


@_op_forward.register_fake
def _(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, fwd, bwd):
    Y, saved = _forward_body(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, lookup(fwd), lookup(bwd))
    return [Y.clone(), *(v.clone() for v in saved)]


@torch.library.custom_op("lrmath::runlora_backward", mutates_args=())
def _op_backward(dy: torch.Tensor, x: Optional[torch.Tensor], mask: Optional[torch.Tensor], weight: torch.Tensor,
                 lora_A: torch.Tensor, lora_B: torch.Tensor, saved: List[torch.Tensor], s: float,
                 fan_in_fan_out: bool, bwd: int, want_dx: bool, want_dw: bool, want_db: bool) -> List[torch.Tensor]:
    g = _backward_body(dy, x, mask, weight, lora_A, lora_B, saved, s, fan_in_fan_out, lookup(bwd), want_dx, want_dw,
                       want_db)
    outs = [g["dA"].t(), g["dB"].t()]
    if want_dx:
        outs.append(g["dX"])
    if want_dw:
        outs.append(g["dW"] if fan_in_fan_out else g["dW"].t())
    if want_db:
        outs.append(g["db"])
    return _fresh([o.contiguous() for o in outs], (dy, x, mask, weight, lora_A, lora_B, *saved))


@_op_backward.register_fake
def _(dy, x, mask, weight, lora_A, lora_B, saved, s, fan_in_fan_out, bwd, want_dx, want_dw, want_db):
    t, n = dy.shape
    r, m = lora_A.shape
    outs = [lora_A.new_empty(r, m), lora_B.new_empty(n, r)]
    if want_dx:
        outs.append(dy.new_empty(t, m, dtype=lora_A.dtype))
    if want_dw:
        outs.append(weight.new_empty(weight.shape))
    if want_db:
        outs.append(dy.new_empty(n, dtype=lora_A.dtype))
    return outs


def _op_setup(ctx, inputs, output):
    x, weight, bias, lora_A, lora_B, mask, s, fifo, fwd, bwd = inputs
    g = lookup(bwd)
    ctx.save_for_backward(x if "X" in g.inputs else None, mask if "K" in g.inputs else None, weight, lora_A, lora_B,
                          *output[1:])
    ctx.meta = (s, fifo, bwd, bias is not None)


def _op_grad(ctx, grads):
    x, mask, weight, lora_A, lora_B, *saved = ctx.saved_tensors
    s, fifo, bwd, has_bias = ctx.meta
    need = ctx.needs_input_grad
    want_dx, want_dw, want_db = bool(need[0]), bool(need[1]), bool(has_bias and need[2])
    outs = _op_backward(grads[0], x, mask, weight, lora_A, lora_B, saved, s, fifo, bwd, want_dx, want_dw, want_db)
    dA, dB, rest = outs[0], outs[1], list(outs[2:])
    dx = rest.pop(0) if want_dx else None
    dw = rest.pop(0) if want_dw else None
    db = rest.pop(0) if want_db else None
    return dx, dw, db, dA, dB, None, None, None, None, None


_op_forward.register_autograd(_op_grad, setup_context=_op_setup)


def _compiled_lora(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, objective):
    """The traced path: choose the pair by comparing the token count with the plan's breakpoints."""
    in_f = lora_A.shape[1]
    lead = x.shape[:-1]
    X = x.reshape(-1, in_f)
    t = X.shape[0]
    m, n = (weight.shape if fan_in_fan_out else weight.shape[::-1])
    r = lora_A.shape[0]
    grad = torch.is_grad_enabled()
    x_grad, w_grad = grad and x.requires_grad, grad and weight.requires_grad
    has_bias, dropout = bias is not None, mask is not None
    if isinstance(objective, tuple):
        fwd, bwd = handle(objective[0]), handle(objective[1])
    elif objective == "time":
        fwd, bwd = _time_pair(int(m), int(n), int(r), int(t), x_grad, w_grad, has_bias, dropout,
                              str(X.dtype).rsplit(".", 1)[-1], X.device.type)
    else:
        segs = _segments(int(m), int(n), int(r), x_grad, w_grad, has_bias, dropout, objective)
        fwd, bwd = segs[0][1], segs[0][2]
        for t_from, f, b in segs[1:]:
            if t >= t_from:
                fwd, bwd = f, b
    K = mask.reshape(-1, in_f) if dropout else None
    out = _op_forward(X, weight, bias, lora_A, lora_B, K, float(s), bool(fan_in_fan_out), fwd, bwd)
    return out[0].reshape(*lead, n)


@public
def lora_function(x, weight, bias, lora_A, lora_B, scale, *, mask=None, fan_in_fan_out=False, objective="flops",
                  graphs=None):
    """Functional RunLoRA layer (torch layout).

    Parameters
    ----------
    x : Tensor (..., in)
    weight : Tensor (out, in), or (in, out) with ``fan_in_fan_out``
    bias : Tensor (out,) or None
    lora_A : Tensor (r, in);  lora_B : Tensor (out, r)
    scale : float
        ``lora_alpha / r`` (divide by ``1 - p`` yourself when passing a dropout ``mask``).
    mask : bool Tensor (..., in), optional
        LoRA-dropout keep mask.
    objective : str
        Planner objective (the pair is re-planned per token count and cached).
    graphs : (Graph, Graph), optional
        Run this forward/backward pair instead of the planned one (must match the flags:
        which inputs need grads, bias, dropout).

    Returns
    -------
    Tensor (..., out)
    """
    if graphs is not None:
        objective = tuple(graphs)
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        x, weight, lora_A, lora_B = (v.to(dt) for v in (x, weight, lora_A, lora_B))
        bias = bias.to(dt) if bias is not None else None
        with torch.autocast(dev, enabled=False):
            return _apply(x, weight, bias, lora_A, lora_B, mask, float(scale), fan_in_fan_out, objective)
    if x.dtype != weight.dtype:
        x = x.to(weight.dtype)
    return _apply(x, weight, bias, lora_A, lora_B, mask, float(scale), fan_in_fan_out, objective)


def _apply(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, objective):
    if is_compiling():
        return _compiled_lora(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, objective)
    return _LoRAFunction.apply(x, weight, bias, lora_A, lora_B, mask, s, fan_in_fan_out, objective)


def _dropout_mask(x, p):
    return torch.empty(x.shape, device=x.device, dtype=torch.bool).bernoulli_(1.0 - p)


@public
class LoRALinear(nn.Module):
    """A frozen linear layer with a LoRA adapter, executed with a RunLoRA plan.

    Parameters
    ----------
    in_features, out_features : int
    r : int
        Rank, ``1 <= r <= min(in_features, out_features)``.
    lora_alpha : float
        Scale ``s = lora_alpha / r`` (PEFT's convention).
    lora_dropout : float
        Dropout probability on the adapter's input (PEFT's ``lora_dropout``).
    bias : bool
    objective : "flops" | "memory" | "time"
        Passed to :func:`lrmath.runlora.plan`; re-planned per token count (cached).
    train_weight : bool
        Let the frozen weight train too (ReLoRA-style); the plan then computes ``dW``.

    Attributes
    ----------
    weight : (out, in), bias : (out,), lora_A : (r, in), lora_B : (out, r)
    """

    def __init__(self, in_features, out_features, r, lora_alpha=1.0, lora_dropout=0.0, bias=True, *,
                 objective="flops", train_weight=False, device=None, dtype=None):
        super().__init__()
        in_features = check_int(in_features, "in_features", minimum=1)
        out_features = check_int(out_features, "out_features", minimum=1)
        r = check_int(r, "rank r", error=RankError)
        lora_alpha = check_float(lora_alpha, "lora_alpha")
        lora_dropout = check_float(lora_dropout, "lora_dropout")
        bias, train_weight = check_bool(bias, "bias"), check_bool(train_weight, "train_weight")
        check_choice(objective, "objective", ("flops", "memory", "time"))
        if r < 1 or r > min(in_features, out_features):
            raise RankError(f"rank r={r} must satisfy 1 <= r <= min(in, out) = {min(in_features, out_features)}")
        if not 0.0 <= lora_dropout < 1.0:
            raise OptionError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        self.lora_dropout = float(lora_dropout)
        self.objective = objective
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw), requires_grad=train_weight)
        self.bias = nn.Parameter(torch.zeros(out_features, **kw), requires_grad=False) if bias else None
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, **kw))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default init
        self.merged = False
        self.mask_fn = _dropout_mask  # replaceable (tests share a mask with PEFT)

    @classmethod
    def from_linear(cls, linear: nn.Linear, r, lora_alpha=1.0, lora_dropout=0.0, **kw) -> "LoRALinear":
        """Wrap an existing ``nn.Linear`` (its weight and bias are shared, not copied)."""
        out_f, in_f = linear.weight.shape
        layer = cls(in_f, out_f, r, lora_alpha, lora_dropout, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype, **kw)
        layer.weight = linear.weight
        layer.weight.requires_grad_(kw.get("train_weight", False))
        if linear.bias is not None:
            layer.bias = linear.bias
        return layer

    @staticmethod
    def from_kashin(base, r, lora_alpha=1.0, lora_dropout=0.0, **kw):
        """A LoRA adapter over a frozen :class:`~lrmath.torch.kashin.KashinLinear` (QLoRA-style): a
        :class:`~lrmath.torch.kashin_lora.KashinLoRALinear`, planned by RunLoRA with the base kept in
        products (never densified). ``init="lowrank"`` starts from the base's stored compensation."""
        from .kashin_lora import KashinLoRALinear

        return KashinLoRALinear(base, r, lora_alpha, lora_dropout, **kw)

    def delta_weight(self) -> torch.Tensor:
        """``s · lora_B @ lora_A`` (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self):
        """Add the adapter into ``weight`` for inference (forward becomes one GEMM)."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def plan(self, tokens=None, *, x_grad=True):
        """The :class:`lrmath.runlora.Plan` this layer uses (math layout m=in, n=out)."""
        return _plan(self.in_features, self.out_features, self.r, tokens=tokens, x_grad=x_grad,
                     w_grad=self.weight.requires_grad, bias=self.bias is not None,
                     dropout=self.training and self.lora_dropout > 0, objective=self.objective)

    @layer_forward
    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"input has {x.shape[-1]} features, layer expects {self.in_features}")
        if self.merged:
            return nn.functional.linear(x, self.weight, self.bias)
        s = self.scaling
        mask = None
        if self.training and self.lora_dropout > 0:
            mask = self.mask_fn(x, self.lora_dropout)
            s = s / (1.0 - self.lora_dropout)
        return lora_function.__wrapped__(x, self.weight, self.bias, self.lora_A, self.lora_B, s, mask=mask,
                             objective=self.objective)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"scaling={self.scaling:g}, lora_dropout={self.lora_dropout}, merged={self.merged}")


# ----------------------------------------------------------------------------- PEFT
class RunLoRAPeftLinear:
    """Mixin swapped into PEFT's ``lora.Linear`` instances by :func:`convert_peft`.

    Only ``forward`` changes: parameters, adapter names, state-dict keys, ``merge``,
    ``unmerge``, ``set_adapter`` and ``merge_and_unload`` stay PEFT's own.  A call runs the
    RunLoRA function when exactly one adapter is active, the layer is not merged and the
    adapter is plain LoRA (no DoRA, no bias on lora_B); otherwise PEFT's forward.
    """

    runlora_objective = "flops"

    def forward(self, x, *args, **kwargs):
        active = [a for a in self.active_adapters if a in self.lora_A]
        if (self.disable_adapters or self.merged or len(active) != 1 or args or kwargs
                or self.use_dora.get(active[0], False)):
            return self._runlora_peft_forward(x, *args, **kwargs)
        name = active[0]
        lA, lB = self.lora_A[name], self.lora_B[name]
        if lB.bias is not None or lA.bias is not None:
            return self._runlora_peft_forward(x, *args, **kwargs)
        base = self.get_base_layer()
        drop = self.lora_dropout[name]
        s = self.scaling[name]
        mask = None
        if isinstance(drop, nn.Dropout) and drop.p > 0 and drop.training:
            mask = _dropout_mask(x, drop.p)
            s = s / (1.0 - drop.p)
        elif not isinstance(drop, (nn.Dropout, nn.Identity)):
            return self._runlora_peft_forward(x, *args, **kwargs)
        w = base.weight
        x_in = x.to(lA.weight.dtype) if not torch.is_autocast_enabled(x.device.type) else x
        y = lora_function.__wrapped__(x_in, w, base.bias, lA.weight, lB.weight, s, mask=mask,
                          fan_in_fan_out=self.fan_in_fan_out, objective=self.runlora_objective)
        return y.to(x.dtype) if not torch.is_autocast_enabled(x.device.type) else y


@public
def convert_peft(model: nn.Module, *, objective: str = "flops") -> nn.Module:
    """Make every LoRA ``Linear`` of a PEFT model run RunLoRA graphs, in place.

    Each ``peft.tuners.lora.Linear`` whose base layer is ``nn.Linear`` or GPT-2's ``Conv1D``
    gets the :class:`RunLoRAPeftLinear` forward (its class is swapped for a subclass; weights,
    adapters and state-dict keys are untouched, so saved adapters load either way and PEFT's
    ``merge_and_unload`` still works).  Layers with ``r > min(in, out)`` are left as they are
    and listed in a warning.

    Returns
    -------
    model (the same object).
    """
    try:
        from peft.tuners.lora import Linear as PeftLinear
    except ImportError as exc:  # pragma: no cover - peft is a test dependency
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError("convert_peft needs the `peft` package") from exc
    skipped, converted = [], 0
    for name, mod in model.named_modules():
        if not isinstance(mod, PeftLinear) or isinstance(mod, RunLoRAPeftLinear):
            continue
        base = mod.get_base_layer()
        if not hasattr(base, "weight") or base.weight.dim() != 2:
            skipped.append((name, "base layer is not a dense Linear/Conv1D"))
            continue
        out_f, in_f = (base.weight.shape[::-1] if mod.fan_in_fan_out else base.weight.shape)
        bad = [a for a, rr in mod.r.items() if rr > min(in_f, out_f)]
        if bad:
            skipped.append((name, f"r={mod.r[bad[0]]} > min(in={in_f}, out={out_f})"))
            continue
        cls = _peft_class(type(mod))
        mod._runlora_peft_forward = types.MethodType(type(mod).forward, mod)
        mod.__class__ = cls
        mod.runlora_objective = objective
        converted += 1
    if skipped:
        warnings.warn("convert_peft left these LoRA layers unchanged: "
                      + "; ".join(f"{n} ({why})" for n, why in skipped), stacklevel=2)
    model._runlora_converted = converted
    return model


@lru_cache(maxsize=None)
def _peft_class(base_cls):
    return type(f"RunLoRA{base_cls.__name__}", (RunLoRAPeftLinear, base_cls), {})
