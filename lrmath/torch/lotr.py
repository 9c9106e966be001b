"""LoTR adapters for PyTorch: shared ``A``, ``B`` and one core per layer (arXiv 2402.01376).

Layout: torch's ``nn.Linear`` computes ``y = x W^T + b`` with ``W`` (out, in). LoTR adds::

    y_l = x W_l^T + b_l + s x A G_l B^T        A (in, r_a), B (out, r_b) shared; G_l (r_a, r_b)

so the merged weight is ``W_l + s B G_l^T A^T`` (out, in). This is the NumPy reference
(:mod:`lrmath.lotr.adapter`) with ``m = in``, ``n = out`` and ``W_ref = W^T``.

* :class:`LoTR` owns ``A``, ``B`` and the cores ``G`` (L, r_a, r_b) of a group of ``L`` layers
  of equal shape. ``planned=True`` runs the branch through a custom autograd Function that
  executes the FLOP-optimal association order of :func:`lrmath.lotr.plan` for the forward *and*
  the four gradient chains (products of the forward reused in the backward); ``planned=False``
  uses plain autograd on ``((x A) G) B^T``. The default ``"auto"`` takes the planned Function
  only where its FLOPs are below 0.9x those of autograd's orders
  (``lrmath.lotr.adapter.AUTOGRAD_ORDERS``, costed by the same model): where they tie (e.g.
  t >> r), the Function's Python overhead made it slower on CPU (``benchmarks/bench_lotr.py``).
* :class:`LoTRLinear` wraps a frozen ``nn.Linear`` and one core index of a :class:`LoTR`.
* :func:`apply_lotr` finds target linears, groups them by shape and wraps them; the LoTR
  modules live in ``model.lotr_adapters`` (so ``A``, ``B`` appear once in ``parameters()`` and in
  the state dict). :func:`merge_lotr` folds the updates into the weights for inference.

Initialisation (decision, as the public LoTR code): cores start at zero so training starts at
the base model, ``A`` and ``B`` are seeded random orthonormal columns (``lrmath.rng``), and
the scale is ``1 / r``. Alternatively ``init="tucker"`` starts from the Tucker-2 (HOSVD + HOOI)
of given updates ``Delta W_l`` (out, in), so the merged model reproduces their best
Tucker-2 approximation.
"""

from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import lotr as _lotr
from ._compile import constant, handle, is_compiling, lookup
from ..errors import OptionError, RankError, ShapeError
from ..backend import check_int, public
from ._inputs import layer_forward

__all__ = ["LoTR", "LoTRLinear", "apply_lotr", "merge_lotr", "lotr_parameters"]


def _orthonormal(seed: int, stream: int, rows: int, cols: int) -> np.ndarray:
    from .. import rng

    q, r = np.linalg.qr(rng.normal(seed, stream, (rows, cols), dtype=np.float64))
    return q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))


def _lotr_forward(x2, A, Gl, B, scale, plan):
    """``(Y (t, out), keys, saved tensors)`` of one layer's planned branch."""
    Y, saved = _lotr.forward.__wrapped__(x2.unsqueeze(0), A, Gl.unsqueeze(0), B, scale=scale, plan=plan, return_saved=True,
                             validate=False)
    # memo entries are key -> (tensor, orientation flag); tensors go through save_for_backward
    items = [("layers", k, v) for k, v in saved["layers"][0].items()] + [("shared", k, v) for k, v in saved["shared"].items()]
    return Y[0], [(where, k, flag) for where, k, (_, flag) in items], [v for _, _, (v, _) in items]


def _lotr_backward(dy, x2, A, Gl, B, keys, vals, scale, plan):
    saved = {"layers": [{}], "shared": {}}
    for (where, k, flag), v in zip(keys, vals):
        (saved["layers"][0] if where == "layers" else saved["shared"])[k] = (v, flag)
    g = _lotr.backward.__wrapped__(dy.unsqueeze(0), x2.unsqueeze(0), A, Gl.unsqueeze(0), B, scale=scale, plan=plan, saved=saved,
                       validate=False)
    return g.dX[0], g.dA, g.dG[0], g.dB


class _PlannedLoTR(torch.autograd.Function):
    """One layer's branch ``s x A G_l B^T`` with the planned forward and backward orders."""

    @staticmethod
    def forward(ctx, x2, A, Gl, B, scale, plan):
        Y, keys, vals = _lotr_forward(x2, A, Gl, B, scale, plan)
        ctx.keys, ctx.scale, ctx.plan = keys, scale, plan
        ctx.save_for_backward(x2, A, Gl, B, *vals)
        return Y

    @staticmethod
    def backward(ctx, dy):
        x2, A, Gl, B, *vals = ctx.saved_tensors
        return _lotr_backward(dy, x2, A, Gl, B, ctx.keys, vals, ctx.scale, ctx.plan) + (None, None)


# ------------------------------------------------------------------ torch.compile path
# The plan travels as an int handle; the keys of its saved products are recorded per plan
# the first time the body runs (on fake tensors while tracing), for setup_context.
_KEYS: dict = {}


@torch.library.custom_op("lrmath::lotr_forward", mutates_args=())
def _op_forward(x2: torch.Tensor, A: torch.Tensor, Gl: torch.Tensor, B: torch.Tensor, scale: float,
                plan: int) -> List[torch.Tensor]:
    Y, keys, vals = _lotr_forward(x2, A, Gl, B, scale, lookup(plan))
    _KEYS[plan] = keys
    seen = {v.untyped_storage().data_ptr() for v in (x2, A, Gl, B)}
    outs = []
    for v in (Y, *vals):  # outputs may not alias inputs or each other
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        outs.append(v)
    return outs


@_op_forward.register_fake
def _(x2, A, Gl, B, scale, plan):
    Y, keys, vals = _lotr_forward(x2, A, Gl, B, scale, lookup(plan))
    _KEYS[plan] = keys
    return [Y.clone()] + [v.clone() for v in vals]


@torch.library.custom_op("lrmath::lotr_backward", mutates_args=())
def _op_backward(dy: torch.Tensor, x2: torch.Tensor, A: torch.Tensor, Gl: torch.Tensor, B: torch.Tensor,
                 vals: List[torch.Tensor], scale: float, plan: int) -> List[torch.Tensor]:
    g = _lotr_backward(dy, x2, A, Gl, B, _KEYS[plan], vals, scale, lookup(plan))
    return [v.contiguous().clone() for v in g]


@_op_backward.register_fake
def _(dy, x2, A, Gl, B, vals, scale, plan):
    return [x2.new_empty(x2.shape), A.new_empty(A.shape), Gl.new_empty(Gl.shape), B.new_empty(B.shape)]


def _op_setup(ctx, inputs, output):
    x2, A, Gl, B, scale, plan = inputs
    ctx.save_for_backward(x2, A, Gl, B, *output[1:])
    ctx.meta = (scale, plan)


def _op_grad(ctx, grads):
    x2, A, Gl, B, *vals = ctx.saved_tensors
    scale, plan = ctx.meta
    return tuple(_op_backward(grads[0], x2, A, Gl, B, vals, scale, plan)) + (None, None)


_op_forward.register_autograd(_op_grad, setup_context=_op_setup)


def _choose_plan(t, inn, out, ra, rb, planned):
    """The plan for ``t`` tokens, or None where plain autograd is used ("auto" and no gain)."""
    p = _lotr.plan(t, inn, out, ra, 1, r_b=rb)
    if planned == "auto":
        from ..lotr.adapter import AUTOGRAD_ORDERS

        ref = _lotr.plan(t, inn, out, ra, 1, r_b=rb, orders=AUTOGRAD_ORDERS)
        if p.flops >= 0.9 * ref.flops:
            return None
    return p


@constant
def _plan_handle(t, inn, out, ra, rb, planned):
    """Handle of :func:`_choose_plan`'s plan, or -1 for plain autograd."""
    p = _choose_plan(t, inn, out, ra, rb, planned)
    return -1 if p is None else handle(p)


@public
class LoTR(nn.Module):
    """Shared factors and per-layer cores of ``L`` LoTR-adapted linears of shape (out, in).

    Parameters
    ----------
    in_features, out_features : int
        Shape of every adapted layer (torch layout: weight (out, in)).
    n_layers : int
        ``L``, number of cores.
    rank : int
        ``r_a`` (columns of ``A``); ``rank_out`` sets ``r_b`` (default ``rank``).
    scale : float, optional
        ``s`` (default ``1 / r_a`` as in the public LoTR code).
    seed : int
        Seed of the orthonormal ``A``, ``B``.
    planned : bool or "auto"
        Run the branch through the FLOP-planned autograd Function (True), plain autograd
        (False), or the planned Function only when it saves >= 10% of the FLOPs ("auto").

    Attributes
    ----------
    A : Parameter (in, r_a);  B : Parameter (out, r_b);  G : Parameter (L, r_a, r_b)
    layer_names : list of str
        Names of the wrapped layers (set by :func:`apply_lotr`).
    """

    def __init__(self, in_features: int, out_features: int, n_layers: int, rank: int, *, rank_out: int | None = None,
                 scale: float | None = None, seed: int = 0, planned: bool | str = "auto", dtype=None, device=None):
        super().__init__()
        ra = check_int(rank, "rank", error=RankError)
        rb = ra if rank_out is None else check_int(rank_out, "rank_out", error=RankError)
        for nm, v in (("n_layers", n_layers), ("in_features", in_features), ("out_features", out_features)):
            check_int(v, nm, minimum=1)
        _lotr.check_ranks((ra, rb), (int(n_layers), int(in_features), int(out_features)))
        self.in_features, self.out_features, self.n_layers = int(in_features), int(out_features), int(n_layers)
        self.scale = float(1.0 / ra if scale is None else scale)
        if planned not in (True, False, "auto"):
            raise OptionError(f"planned must be True, False or 'auto', got {planned!r}")
        self.planned = planned
        self.seed = check_int(seed, "seed", minimum=0, maximum=2**64 - 1)
        kw = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        self.A = nn.Parameter(torch.empty(self.in_features, ra, **kw))
        self.B = nn.Parameter(torch.empty(self.out_features, rb, **kw))
        self.G = nn.Parameter(torch.zeros(self.n_layers, ra, rb, **kw))
        self.layer_names: list[str] = []
        self.reset_parameters()

    @property
    def ranks(self) -> tuple[int, int]:
        return int(self.A.shape[1]), int(self.B.shape[1])

    def reset_parameters(self) -> None:
        """Orthonormal ``A``, ``B`` from the seed; zero cores (the model starts at its base)."""
        ra, rb = self.ranks
        with torch.no_grad():
            self.A.copy_(torch.from_numpy(_orthonormal(self.seed, 0, self.in_features, ra)))
            self.B.copy_(torch.from_numpy(_orthonormal(self.seed, 1, self.out_features, rb)))
            self.G.zero_()

    @classmethod
    def from_updates(cls, updates, rank: int, *, rank_out: int | None = None, scale: float | None = None,
                     max_iter: int = 30, tol: float = 1e-7, planned: bool | str = "auto", dtype=None,
                     device=None) -> "LoTR":
        """A LoTR whose ``s B G_l^T A^T`` is the Tucker-2 approximation of ``updates``.

        Parameters
        ----------
        updates : tensor or array (L, out, in)
            Updates ``Delta W_l`` in torch layout.
        rank, rank_out, scale, planned
            As in :class:`LoTR`.
        max_iter, tol
            HOOI settings (:func:`lrmath.lotr.tucker2`).
        """
        from ..backend import to_numpy

        U = np.asarray(to_numpy(updates.detach() if isinstance(updates, torch.Tensor) else updates), dtype=np.float64)
        if U.ndim != 3:
            raise ShapeError(f"updates must be (L, out, in), got shape {U.shape}")
        L, out, inn = U.shape
        ra = check_int(rank, "rank", error=RankError)
        rb = ra if rank_out is None else check_int(rank_out, "rank_out", error=RankError)
        dec = _lotr.tucker2(np.ascontiguousarray(U.transpose(0, 2, 1)), (ra, rb), max_iter=max_iter, tol=tol)
        if dtype is None and isinstance(updates, torch.Tensor) and updates.is_floating_point():
            dtype = updates.dtype
        mod = cls(inn, out, L, ra, rank_out=rb, scale=scale, planned=planned, dtype=dtype, device=device)
        with torch.no_grad():
            mod.A.copy_(torch.from_numpy(dec.A))
            mod.B.copy_(torch.from_numpy(dec.B))
            mod.G.copy_(torch.from_numpy(dec.G / mod.scale))
        mod.decomposition = dec
        return mod

    def delta(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``s x A G_layer B^T`` for ``x`` (..., in) -> (..., out)."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(f"input has {x.shape[-1]} features, LoTR expects {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        A, B, Gl = self.A, self.B, self.G[layer]
        if x2.dtype != A.dtype:
            x2 = x2.to(A.dtype)
        if is_compiling():
            # the plan depends on the token count: it is fixed per traced shape (a guard)
            h = _plan_handle(int(x2.shape[0]), self.in_features, self.out_features, *self.ranks, self.planned) \
                if self.planned and x2.shape[0] > 0 else -1
            if h >= 0:
                return _op_forward(x2, A, Gl, B, self.scale, h)[0].reshape(*lead, self.out_features)
            p = None
        else:
            p = self._plan(int(x2.shape[0])) if self.planned and x2.shape[0] > 0 else None
        if p is not None:
            y = _PlannedLoTR.apply(x2, A, Gl, B, self.scale, p)
        else:
            # s folded into the (r_a, r_b) core: no extra pass over the (t, out) output
            y = ((x2 @ A) @ (Gl * self.scale)) @ B.T
        return y.reshape(*lead, self.out_features)

    def _plan(self, t: int):
        """The plan for ``t`` tokens, or None where plain autograd is used ("auto" and no gain)."""
        return _choose_plan(t, self.in_features, self.out_features, *self.ranks, self.planned)

    def delta_weight(self, layer: int | None = None) -> torch.Tensor:
        """``s B G_l^T A^T`` (out, in) for one layer, or (L, out, in) for all."""
        if layer is None:
            return self.scale * (self.B @ self.G.transpose(1, 2) @ self.A.T)
        return self.scale * (self.B @ self.G[layer].T @ self.A.T)

    def num_parameters(self) -> int:
        """``r_a in + r_b out + L r_a r_b``."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        ra, rb = self.ranks
        return (f"in={self.in_features}, out={self.out_features}, layers={self.n_layers}, ranks=({ra}, {rb}), "
                f"scale={self.scale:.4g}, params={self.num_parameters():,}, planned={self.planned}")


@public
class LoTRLinear(nn.Module):
    """A frozen ``nn.Linear`` plus core ``index`` of a shared :class:`LoTR`.

    The :class:`LoTR` is held by reference (not registered here) so its shared parameters are
    registered once, in ``model.lotr_adapters``.
    """

    def __init__(self, base: nn.Linear, lotr: LoTR, index: int):
        super().__init__()
        if (base.out_features, base.in_features) != (lotr.out_features, lotr.in_features):
            raise ShapeError(f"layer {base.out_features}x{base.in_features} does not match LoTR "
                             f"{lotr.out_features}x{lotr.in_features}")
        self.base = base
        object.__setattr__(self, "lotr", lotr)
        self.index = int(index)
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    @layer_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lotr.delta(x, self.index).to(y.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """``W += s B G^T A^T`` in place (inference); idempotent."""
        if not self.merged:
            self.base.weight += self.lotr.delta_weight(self.index).to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.lotr.delta_weight(self.index).to(self.base.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"core={self.index}, merged={self.merged}"


def _matches(name: str, targets) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


@public
def apply_lotr(model: nn.Module, target_modules: str | Sequence[str], rank: int, *, rank_out: int | None = None,
               scale: float | None = None, init: str = "zeros", updates: Mapping[str, torch.Tensor] | None = None,
               group_by: str = "shape", seed: int = 0, freeze: bool = True, planned: bool | str = "auto",
               max_iter: int = 30) -> nn.ModuleDict:
    """Wrap the target linears of ``model`` in LoTR adapters, grouped by shape; in place.

    Parameters
    ----------
    model : nn.Module
    target_modules : str or sequence of str
        A regex matched against full module names (``re.fullmatch``), or names matched as
        PEFT does (the name itself or a ``.``-separated suffix, e.g. ``"query"``).
    rank : int
        ``r_a`` (and ``r_b`` unless ``rank_out``).
    scale : float, optional
        ``s`` (default ``1 / rank``).
    init : {'zeros', 'tucker'}
        Zero cores (the model is unchanged until trained), or the Tucker-2 of ``updates``.
    updates : mapping name -> tensor (out, in)
        The per-layer updates for ``init='tucker'`` (every wrapped layer needs one).
    group_by : {'shape', 'name'}
        Share ``A``, ``B`` among all targets of equal shape (default), or only among targets of
        equal shape *and* equal last name component (e.g. all ``query`` layers).
    seed : int
        Seed of the orthonormal ``A``, ``B`` (group ``i`` uses ``seed + i``).
    freeze : bool
        Freeze every other parameter of ``model`` (PEFT's convention).
    planned : bool or "auto"
        Use the FLOP-planned autograd Function (see :class:`LoTR`).

    Returns
    -------
    nn.ModuleDict
        The LoTR module of each group (also registered as ``model.lotr_adapters``), keyed
        ``"<out>x<in>"`` or ``"<name>_<out>x<in>"``; each has ``layer_names``.

    Raises
    ------
    ValueError
        No module matched, LoTR already applied, or a bad option.
    RankError
        ``rank`` exceeds a group's ``min(in, out)``.
    """
    if hasattr(model, "lotr_adapters"):
        raise OptionError("model already has LoTR adapters (model.lotr_adapters); merge_lotr() first")
    if init not in ("zeros", "tucker"):
        raise OptionError(f"init must be 'zeros' or 'tucker', got {init!r}")
    if group_by not in ("shape", "name"):
        raise OptionError(f"group_by must be 'shape' or 'name', got {group_by!r}")
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, target_modules)]
    if not found:
        raise OptionError(f"no nn.Linear in the model matches target_modules={target_modules!r}")
    groups: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, mod in found:
        key = f"{mod.out_features}x{mod.in_features}"
        if group_by == "name":
            key = f"{name.rsplit('.', 1)[-1]}_{key}"
        groups.setdefault(key, []).append((name, mod))
    rb = rank if rank_out is None else rank_out
    for key, members in groups.items():
        out, inn = members[0][1].out_features, members[0][1].in_features
        if rank > inn or rb > out:
            raise RankError(f"rank ({rank}, {rb}) exceeds the shape of group {key} (in={inn}, out={out}): "
                            f"{[n for n, _ in members]}")
    adapters = nn.ModuleDict()
    for gi, (key, members) in enumerate(groups.items()):
        base0 = members[0][1]
        w = base0.weight
        if init == "tucker":
            if updates is None:
                raise OptionError("init='tucker' needs updates={name: Delta W (out, in)}")
            missing = [n for n, _ in members if n not in updates]
            if missing:
                raise OptionError(f"updates lack layers {missing}")
            stack = torch.stack([torch.as_tensor(updates[n]).detach().to("cpu", torch.float64) for n, _ in members])
            if tuple(stack.shape[1:]) != (base0.out_features, base0.in_features):
                raise ShapeError(f"updates of group {key} have shape {tuple(stack.shape[1:])}, "
                                 f"layers are {(base0.out_features, base0.in_features)}")
            lt = LoTR.from_updates(stack, rank, rank_out=rank_out, scale=scale, max_iter=max_iter, planned=planned,
                                   dtype=w.dtype).to(w.device)
        else:
            lt = LoTR(base0.in_features, base0.out_features, len(members), rank, rank_out=rank_out, scale=scale,
                      seed=seed + gi, planned=planned, dtype=w.dtype, device=w.device)
        lt.layer_names = [n for n, _ in members]
        adapters[key] = lt
        for idx, (name, mod) in enumerate(members):
            _set_module(model, name, LoTRLinear(mod, lt, idx))
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    model.add_module("lotr_adapters", adapters)
    for p in adapters.parameters():
        p.requires_grad_(True)
    return adapters


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@public
@torch.no_grad()
def merge_lotr(model: nn.Module) -> nn.Module:
    """Fold every LoTR update into its weight and restore plain ``nn.Linear`` layers; in place."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoTRLinear)]
    for name, mod in wrapped:
        mod.merge()
        _set_module(model, name, mod.base)
    if hasattr(model, "lotr_adapters"):
        del model.lotr_adapters
    return model


@public
def lotr_parameters(model: nn.Module) -> Iterable[nn.Parameter]:
    """The trainable LoTR parameters of a model prepared by :func:`apply_lotr`."""
    if not hasattr(model, "lotr_adapters"):
        raise OptionError("model has no LoTR adapters; call apply_lotr first")
    return model.lotr_adapters.parameters()
