"""LoRA on a frozen Kashin-quantized base (QLoRA-style): :class:`KashinLoRALinear`.

``y = x W_hatᵀ + b + s · dropout(x) Aᵀ Bᵀ`` with ``W_hat`` a frozen :class:`~lrmath.torch.kashin.KashinLinear`
(codes, scales, tables and any stored low-rank compensation). The forward and backward graphs are
planned by RunLoRA (:mod:`lrmath.runlora`) exactly as for a dense base, with one restriction: the
base may only enter *products* (``X W``, ``dY Wᵀ``, or the transposed forms), never a sum such as
the merged ``W + A B`` -- that would build the dense weight. Every product with ``W`` goes through
``KashinLinear``'s decode-as-you-go matmul (``_linear`` / ``_rlinear``), which never builds the
dense ``(out, in)`` matrix (the tests check with an allocation log). The FLOP model of the planner
counts a product with ``W`` as a dense GEMM; the decoding work on top is the same for every
admissible graph, so the FLOP-best admissible pair is chosen.

Adapters start as PEFT does (``A`` Kaiming-uniform, ``B = 0``), or, with ``init="lowrank"``, from the
base's stored compensation factors (LoftQ-style: the adapter then *is* the compensation and the
base keeps only the codes, so the starting function is unchanged).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from ..errors import ArgumentTypeError, OptionError, RankError, ShapeError
from ..runlora.execute_torch import TorchOps, run_program
from ..runlora.graphs import graph_space
from .kashin import KashinLinear
from .runlora import _dropout_mask, _run_forward
from ..backend import public

__all__ = ["KashinLoRALinear", "quantized_base_pair", "convert_peft_kashin"]


class _WOp:
    """Stand-in for the math-layout base ``W = W_hatᵀ`` (m, n) inside a RunLoRA program."""

    def __init__(self, layer: KashinLinear, transposed: bool = False):
        self.layer, self.transposed = layer, transposed

    def t(self):
        return _WOp(self.layer, not self.transposed)

    def dim(self):
        return 2

    @property
    def shape(self):
        m, n = self.layer.in_features, self.layer.out_features
        return (n, m) if self.transposed else (m, n)


def _product(a, b):
    """``a @ b`` where one side may be the quantized base (torch layout: ``W_hat`` is (out, in))."""
    if isinstance(b, _WOp):  # a (t, m) @ W = a W_hatᵀ ;  a (t, n) @ Wᵀ = a W_hat
        return b.layer._rlinear(a) if b.transposed else b.layer._linear(a)
    if isinstance(a, _WOp):  # W (m, n) @ b (n, k) = W_hatᵀ b = (bᵀ W_hat)ᵀ ; Wᵀ @ b = (bᵀ W_hatᵀ)ᵀ
        return (a.layer._linear(b.t()) if a.transposed else a.layer._rlinear(b.t())).t()
    return None


class _KashinOps(TorchOps):
    def mm(self, a, b, alpha):
        p = _product(a, b)
        if p is None:
            return super().mm(a, b, alpha)
        return p * self.s if alpha else p

    def addmm(self, c, a, b, alpha, inplace=False):
        p = _product(a, b)
        if p is None:
            return super().addmm(c, a, b, alpha, inplace)
        if alpha:
            p = p * self.s
        return c.add_(p) if inplace else c + p


def _w_products_only(g) -> bool:
    """The base ``W`` is read only by products (mm/addmm), never added, scaled or masked."""
    for st in g.steps:
        names = [a for a, _ in st.args]
        if "W" in names and st.op not in ("mm", "addmm"):
            return False
        if "W" in names and st.op == "addmm" and names[0] == "W":  # W as the accumulator: a sum
            return False
    return True


@lru_cache(maxsize=64)
def _admissible_cached(space_key, kind, m, n, r):
    space = graph_space(*space_key)
    pool = space.forward if kind == "forward" else space.backward
    return [(g, g.affine("flops", m, n, r)) for g in pool if _w_products_only(g)]


def _admissible(space, kind, m, n, r):
    key = (space.x_grad, space.w_grad, space.bias, space.dropout)
    return list(_admissible_cached(key, kind, m, n, r))


@public
@lru_cache(maxsize=4096)
def quantized_base_pair(m: int, n: int, r: int, t: int, x_grad: bool = True, bias: bool = False,
                        dropout: bool = False):
    """FLOP-best (forward, backward) RunLoRA pair whose base enters products only (module docstring).

    Ties go to fewer saved bytes. ``m, n`` = in, out features (math layout), ``t`` tokens.
    """
    space = graph_space(bool(x_grad), False, bool(bias), bool(dropout))
    fw = _admissible(space, "forward", m, n, r)
    bw = _admissible(space, "backward", m, n, r)
    fw.sort(key=lambda e: (e[1][0] + e[1][1] * t, e[0].name))
    best, key = None, None
    for b, (ba, bb) in bw:
        f = next((f for f, _ in fw if b.saved <= f.computes), None)  # cheapest compatible forward
        if f is None:
            continue
        fa, fb = f.affine("flops", m, n, r)
        sa, sb = space.saved_bytes(f, b, 4).affine(m, n, r)
        k = (fa + fb * t + ba + bb * t, sa + sb * t, f.name, b.name)
        if key is None or k < key:
            best, key = (f, b), k
    if best is None:  # pragma: no cover - the unmerged PEFT pair is always admissible
        raise RuntimeError("no RunLoRA graph pair keeps the quantized base in products only")
    return best


_pair_eager = torch.compiler.disable(quantized_base_pair) if hasattr(torch, "compiler") else quantized_base_pair


class _KashinLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, lora_A, lora_B, mask, s, layer, graphs):
        in_f = lora_A.shape[1]
        lead = x.shape[:-1]
        X = x.reshape(-1, in_f)
        t = X.shape[0]
        n = layer.out_features
        has_bias = bias is not None
        fwd, bwd = graphs if graphs is not None else _pair_eager(in_f, n, lora_A.shape[0], t, ctx.needs_input_grad[0],
                                                                 has_bias, mask is not None)
        env = {"X": X, "W": _WOp(layer), "A": lora_A.t(), "B": lora_B.t()}
        if has_bias:
            env["b"] = bias
        if mask is not None:
            env["K"] = mask.reshape(-1, in_f)
        Y, saved = _run_forward(fwd, bwd, env, _KashinOps(s, X))
        ctx.keys, ctx.bwd, ctx.layer = sorted(bwd.saved), bwd, layer
        ctx.meta = (lead, in_f, s, has_bias)
        uses_x, uses_k = "X" in bwd.inputs, "K" in bwd.inputs
        ctx.save_for_backward(X if uses_x else None, env.get("K") if uses_k else None, lora_A, lora_B, *saved)
        return Y.reshape(*lead, n)

    @staticmethod
    def backward(ctx, dy):
        X, K, lora_A, lora_B, *saved = ctx.saved_tensors
        lead, in_f, s, has_bias = ctx.meta
        dY = dy.reshape(-1, dy.shape[-1]).to(lora_A.dtype)
        env = {"dY": dY, "W": _WOp(ctx.layer), "A": lora_A.t(), "B": lora_B.t()}
        if X is not None:
            env["X"] = X
        if K is not None:
            env["K"] = K
        for k, v in zip(ctx.keys, saved):
            env["saved:" + k] = v
        want = ["dA", "dB"]
        if ctx.needs_input_grad[0]:
            want.append("dX")
        if has_bias and ctx.needs_input_grad[1]:
            want.append("db")
        g = run_program(ctx.bwd, env, _KashinOps(s, dY), want)
        dx = g["dX"].reshape(*lead, in_f) if "dX" in g else None
        return dx, g.get("db"), g["dA"].t(), g["dB"].t(), None, None, None, None


@public
class KashinLoRALinear(nn.Module):
    """A LoRA adapter over a frozen :class:`KashinLinear` (module docstring).

    Parameters
    ----------
    base : KashinLinear
        The frozen quantized layer (its bias, if any, stays frozen).
    r : int
        Adapter rank, ``1 <= r <= min(in, out)``.
    lora_alpha : float
        ``s = lora_alpha / r`` (PEFT's convention).
    lora_dropout : float
    init : {"zero", "lowrank"}
        ``"zero"``: PEFT's init (``B = 0``). ``"lowrank"``: the adapter starts from the base's stored
        compensation ``B A`` (rank ``r`` must equal the stored rank), which is moved out of the base.

    Attributes
    ----------
    base : KashinLinear, lora_A : (r, in), lora_B : (out, r)
    """

    def __init__(self, base: KashinLinear, r: int, lora_alpha: float = 1.0, lora_dropout: float = 0.0, *,
                 init: str = "zero"):
        super().__init__()
        if not isinstance(base, KashinLinear):
            raise ArgumentTypeError(f"base must be a KashinLinear, got {type(base).__name__}")
        m, n = base.in_features, base.out_features
        if isinstance(r, bool) or not isinstance(r, int) or r < 1 or r > min(m, n):
            raise RankError(f"rank r={r!r} must satisfy 1 <= r <= min(in, out) = {min(m, n)}")
        if not 0.0 <= lora_dropout < 1.0:
            raise OptionError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
        if init not in ("zero", "lowrank"):
            raise OptionError(f"init must be 'zero' or 'lowrank', got {init!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features, self.r = m, n, r
        self.lora_alpha = lora_alpha
        self.scaling = lora_alpha / r
        self.lora_dropout = float(lora_dropout)
        self.lora_A = nn.Parameter(torch.empty(r, m))
        self.lora_B = nn.Parameter(torch.zeros(n, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if init == "lowrank":
            lr = base.lowrank_factors()
            if lr is None or lr[1].shape[0] != r:
                raise RankError(f"init='lowrank' needs a base with stored rank-{r} compensation factors")
            with torch.no_grad():  # B A = s * lora_B lora_A: split the scale evenly
                g = 1.0 / math.sqrt(self.scaling)
                self.lora_A.copy_(lr[1] * g)
                self.lora_B.copy_(lr[0] * g)
            base.drop_lowrank()
        self.mask_fn = _dropout_mask

    @classmethod
    def from_kashin(cls, base: KashinLinear, r: int, lora_alpha: float = 1.0, lora_dropout: float = 0.0,
                    **kw) -> "KashinLoRALinear":
        return cls(base, r, lora_alpha, lora_dropout, **kw)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def plan(self, tokens: int, *, x_grad: bool = True):
        """The (forward, backward) graph pair used at ``tokens`` rows."""
        return quantized_base_pair(self.in_features, self.out_features, self.r, int(tokens), x_grad,
                                   self.base.bias is not None, self.training and self.lora_dropout > 0)

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"input has {x.shape[-1]} features, layer expects {self.in_features}")
        dt = self.lora_A.dtype
        s = self.scaling
        mask = None
        if self.training and self.lora_dropout > 0:
            mask = self.mask_fn(x, self.lora_dropout)
            s = s / (1.0 - self.lora_dropout)
        bias = self.base.bias.to(dt) if self.base.bias is not None else None
        y = _KashinLoRAFunction.apply(x.to(dt), bias, self.lora_A, self.lora_B, mask, float(s), self.base, None)
        return y.to(x.dtype)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"scaling={self.scaling:g}, lora_dropout={self.lora_dropout}")


@public
def convert_peft_kashin(model: nn.Module, r: int, lora_alpha: float = 1.0, lora_dropout: float = 0.0, *,
                        include=None, init: str = "zero") -> list[str]:
    """Wrap every :class:`KashinLinear` of ``model`` (matching fnmatch ``include``) in a
    :class:`KashinLoRALinear`, in place; freeze everything else. Returns the wrapped names."""
    import fnmatch

    from .kashin import _set_module

    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, KashinLinear)
             and (include is None or any(fnmatch.fnmatchcase(n, p) for p in include))]
    for n in names:
        _set_module(model, n, KashinLoRALinear(model.get_submodule(n), r, lora_alpha, lora_dropout, init=init))
    return names
