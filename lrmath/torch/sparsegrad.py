"""SparseGrad layers for PyTorch: train only a fixed set of entries of ``W~ = U^T W V``.

Chekalina et al., EMNLP 2024. Decision (decisions.md): the trainable parameter of
:class:`SparseGradLinear` is ``delta``, a *vector* of ``nnz`` values at a fixed flat
index set of the transformed ``(n, m)`` weight, so any torch optimizer works and its
state has exactly ``nnz`` entries. The effective weight is

    W = W_0 + U S(delta) V^T,            S(delta)[r_k, c_k] = delta_k            (paper eq. 1-2)

with ``W_0`` the frozen original weight. Each side (``U`` and ``V``) takes one of two routes:

* ``columns``: only the touched basis columns ``U_I = U[:, I]`` and ``V_J = V[:, J]``
  (``I``, ``J`` = distinct rows / cols of the index set) are stored and multiplied, so a
  basis whose selected energy sits in its leading vectors (the learned one) costs
  ``2 t (n |I| + m |J|)`` extra flops per product;
* ``transform``: for an operator with a fast transform (``lrmath.ops`` kinds ``dct``,
  ``rdct``, ``hadamard``, ``butterfly``, ``identity``) nothing is stored;
  ``X V_J = (X V)[:, J]`` is the transform of the rows of ``X`` followed by a gather, and
  ``P U_I^T`` is ``P`` scattered into a ``(t, n)`` buffer at columns ``I`` followed by the
  inverse transform -- ``t * U.flops`` instead of ``2 t n |I|`` (DCT/Hadamard index sets
  touch nearly all rows and columns, where this is ~5x cheaper).

``route="auto"`` (default) picks, per side, the cheaper by that flop comparison;
``"columns"`` / ``"transform"`` force one (``"transform"`` needs a fast operator on both sides).

Forward   ``Y = X W_0^T + b + ((X V_J) S^T) U_I^T``  (at ``delta = 0`` the output equals
          the original layer's exactly: the extra term is an exact zero).
Backward  ``d delta_k = sum_t (dY U_I)[t, r_k] (X V_J)[t, c_k]`` -- the sampled product
          of :mod:`lrmath.sparsegrad.sddmm`, never a dense ``(n, m)`` gradient;
          ``dX = dY W_0 + ((dY U_I) S) V_J^T``. Saved for backward: ``X V_J (t, |J|)``
          (not ``X``), plus references to the frozen ``W_0`` and the basis columns.

:meth:`SparseGradLinear.refresh` moves to a new index set (and optionally a new basis):
dropped entries are folded into ``W_0``; kept entries keep their value and optimizer
state; new entries start at zero value and zero state. With ``layer.probing = True``
the backward also streams the step's top entries of the full ``G~`` (computed in row
blocks, never the whole matrix) into ``layer.selector`` for the next refresh.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Callable, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import ops as _ops
from ..errors import ArgumentTypeError, OptionError, ShapeError
from ..sparsegrad.bases import GramAccumulator, basis as _basis, columns
from ..sparsegrad.sddmm import route_model, topk_product
from ..sparsegrad.select import IndexSelector, _fixed_index_set, check_indices
from ._compile import handle, is_compiling, lookup
from ..backend import check_float, public
from ._inputs import layer_forward

__all__ = ["SparseGradLinear", "sparsegrad_mlp", "DEFAULT_PATTERNS", "DEFAULT_EXCLUDE", "ROUTES", "FAST_KINDS"]

#: Values of the ``route`` option of :class:`SparseGradLinear`.
ROUTES = ("auto", "columns", "transform")
#: ``lrmath.ops`` operator kinds applied by a fast transform (``haar`` is a dense product).
FAST_KINDS = ("identity", "dct", "rdct", "hadamard", "butterfly")


def _has_fast(Q) -> bool:
    return isinstance(Q, _ops.OrthogonalOperator) and Q.kind in FAST_KINDS


def _side_route(Q, touched: int, route: str, name: str) -> str:
    """Route of one side: ``2 n |I|`` flops per row for the dense columns vs ``Q.flops``."""
    if route == "columns":
        return "columns"
    if route == "transform":
        if not _has_fast(Q):
            raise OptionError(f"route='transform' needs a fast-transform basis for {name} "
                             f"(ops kinds {FAST_KINDS}), got {getattr(Q, 'kind', type(Q).__name__)!r}")
        return "transform"
    return "transform" if _has_fast(Q) and Q.flops < 2 * Q.n * touched else "columns"


def _to_sub(x, Q, cols, idx):
    """``x Q[:, idx]`` (t, k) for rows ``x`` (t, N): a product with the stored columns, or the
    full transform of the rows (``x Q = (Q^T x^T)^T``) and a gather."""
    if cols is not None:
        return x @ cols
    return Q.apply_t(x, axis=1).index_select(1, idx)


def _from_sub(p, Q, cols, idx, N):
    """``p Q[:, idx]^T`` (t, N) for ``p`` (t, k): a product with the stored columns, or ``p``
    scattered into a (t, N) buffer at columns ``idx`` and the inverse transform (``r -> r Q^T``)."""
    if cols is not None:
        return p @ cols.t()
    buf = p.new_zeros(p.shape[0], N)
    buf.index_copy_(1, idx, p)
    return Q.apply(buf, axis=1)



def _csr(crow, col, values, shape):
    """CSR tensor of the index structure (invariants hold by construction: sorted flat indices)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)

#: Module-name patterns (fnmatch) of the MLP linears of a BERT-style model (the default
#: model); ``DEFAULT_EXCLUDE`` keeps the attention output projection (``attention.output.dense``) out.
DEFAULT_PATTERNS = ("*intermediate.dense", "*output.dense")
DEFAULT_EXCLUDE = ("*attention*",)


def _structure(idx: np.ndarray, m: int, t_hint: int = 128, dense_cap: float = 8.0):
    r, c = idx // m, idx % m
    I, ri = np.unique(r, return_inverse=True)
    J, ci = np.unique(c, return_inverse=True)
    block = I.size * J.size
    # Dense |I| x |J| block when it is small (a memory bound: never near a dense (n, m) matrix)
    # and the machine's calibrated route model (sddmm.route_model, torch) predicts it faster
    dense = block <= dense_cap * max(idx.size, 1) and route_model("torch").choose(t_hint, I.size, J.size, idx.size, overhead=False) == "dense"
    return I, J, ri.astype(np.int64), ci.astype(np.int64), dense


def _sg_forward(x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, layer):
    """``(Y (t, n), Z = X V_J (t, |J|))`` for 2-D ``x`` (t, m) (module docstring)."""
    y = torch.nn.functional.linear(x, weight, bias)
    Z = _to_sub(x, layer.V, VJ, Jix)  # X V_J (t, |J|)
    nI, nJ = Iix.numel(), Jix.numel()
    if dense:
        S = torch.zeros(nI, nJ, dtype=delta.dtype, device=delta.device)
        S[ri, ci] = delta
        P = Z @ S.t()
    else:
        S = _csr(crow, col, delta, (nI, nJ))
        P = (S @ Z.t()).t()
    return y + _from_sub(P, layer.U, UI, Iix, layer.n), Z


def _sg_backward(dy, Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x, dense, layer, want_x, want_delta,
                 want_b):
    """``(g_x, g_delta, g_b)`` (None where not wanted); feeds the selector when ``x`` is given."""
    nI, nJ = Iix.numel(), Jix.numel()
    A = _to_sub(dy, layer.U, UI, Iix)  # dY U_I (t, |I|)
    g_delta = g_x = g_b = None
    if want_delta:
        if dense:
            g_delta = (A.t() @ Z)[ri, ci]
        else:
            t = A.shape[0]
            chunk = max(1, (1 << 20) // max(t, 1))  # bounds the (t, chunk) temporaries to 4 MB
            parts = [(A[:, ri[s:s + chunk]] * Z[:, ci[s:s + chunk]]).sum(0) for s in range(0, ri.numel(), chunk)]
            g_delta = torch.cat(parts) if len(parts) > 1 else parts[0]
    if want_x:
        if dense:
            S = torch.zeros(nI, nJ, dtype=delta.dtype, device=delta.device)
            S[ri, ci] = delta
            AS = A @ S
        else:
            S = _csr(crow, col, delta, (nI, nJ))
            AS = (S.t() @ A.t()).t()
        g_x = dy @ weight + _from_sub(AS, layer.V, VJ, Jix, layer.m)
    if want_b:
        g_b = dy.sum(0)
    if x is not None:
        layer._probe(dy.detach(), x.detach())
    return g_x, g_delta, g_b


class _SparseGradFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, layer):
        y, Z = _sg_forward(x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, layer)
        ctx.dense = dense
        ctx.layer = layer
        ctx.has_bias = bias is not None
        probing = layer is not None and layer.probing
        ctx.save_for_backward(Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x if probing else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_x, g_delta, g_b = _sg_backward(dy, Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x, ctx.dense,
                                         ctx.layer, need[0], need[3], ctx.has_bias and need[2])
        return g_x, None, g_b, g_delta, None, None, None, None, None, None, None, None, None, None


# ------------------------------------------------------------------ torch.compile path
# The layer travels as an int handle (weak reference) to its bases and selector.
@torch.library.custom_op("lrmath::sparsegrad_forward", mutates_args=())
def _op_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], delta: torch.Tensor,
                UI: Optional[torch.Tensor], VJ: Optional[torch.Tensor], Iix: torch.Tensor, Jix: torch.Tensor,
                ri: torch.Tensor, ci: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, dense: bool,
                h: int) -> List[torch.Tensor]:
    return list(_sg_forward(x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, lookup(h)))


@_op_forward.register_fake
def _(x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, h):
    return [x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], Jix.shape[0])]


@torch.library.custom_op("lrmath::sparsegrad_backward", mutates_args=())
def _op_backward(dy: torch.Tensor, Z: torch.Tensor, weight: torch.Tensor, delta: torch.Tensor,
                 UI: Optional[torch.Tensor], VJ: Optional[torch.Tensor], Iix: torch.Tensor, Jix: torch.Tensor,
                 ri: torch.Tensor, ci: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, x: Optional[torch.Tensor],
                 dense: bool, h: int, want_x: bool, want_delta: bool, want_b: bool) -> List[torch.Tensor]:
    g = _sg_backward(dy, Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x, dense, lookup(h), want_x,
                     want_delta, want_b)
    return [v.contiguous() for v in g if v is not None]


@_op_backward.register_fake
def _(dy, Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x, dense, h, want_x, want_delta, want_b):
    outs = []
    if want_x:
        outs.append(dy.new_empty(dy.shape[0], weight.shape[1]))
    if want_delta:
        outs.append(delta.new_empty(delta.shape))
    if want_b:
        outs.append(dy.new_empty(dy.shape[1]))
    return outs


def _op_setup(ctx, inputs, output):
    x, weight, bias, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, dense, h = inputs
    layer = lookup(h)
    probing = layer is not None and layer.probing
    ctx.save_for_backward(output[1], weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x if probing else None)
    ctx.meta = (dense, h, bias is not None)


def _op_grad(ctx, grads):
    Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x = ctx.saved_tensors
    dense, h, has_bias = ctx.meta
    need = ctx.needs_input_grad
    want_x, want_delta, want_b = bool(need[0]), bool(need[3]), bool(has_bias and need[2])
    outs = list(_op_backward(grads[0], Z, weight, delta, UI, VJ, Iix, Jix, ri, ci, crow, col, x, dense, h, want_x,
                             want_delta, want_b))
    g_x = outs.pop(0) if want_x else None
    g_delta = outs.pop(0) if want_delta else None
    g_b = outs.pop(0) if want_b else None
    return (g_x, None, g_b, g_delta) + (None,) * 10


_op_forward.register_autograd(_op_grad, setup_context=_op_setup)


@public
class SparseGradLinear(nn.Module):
    """A linear layer trained through ``nnz`` entries of its weight in the basis ``(U, V)``.

    Parameters
    ----------
    weight : Tensor (n, m)
        The original weight (torch layout; copied into the frozen buffer ``weight``).
    bias : Tensor (n,) or None
    U, V : basis objects (:mod:`lrmath.sparsegrad.bases` / :mod:`lrmath.ops`) or kind names
    indices : int array (nnz,)
        Sorted flat indices into ``(n, m)`` of the trainable entries of ``W~``.
    train_bias : bool
        Keep the bias trainable (default False: only ``delta`` trains).
    route : {"auto", "columns", "transform"}
        How ``U_I`` / ``V_J`` are applied (module docstring): ``"auto"`` picks per side the
        cheaper of dense touched columns (``2 n |I|`` flops per row) and the basis's fast
        transform (``U.flops``); ``"columns"`` always stores the columns; ``"transform"``
        always transforms (ValueError unless both bases are fast ``lrmath.ops`` operators).

    Attributes
    ----------
    delta : nn.Parameter (nnz,)
        The trainable values (change of ``W~`` at ``indices``); starts at zero.
    probing : bool
        When True, each backward feeds the step's top entries of ``G~`` to ``selector``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, U, V, indices, *, train_bias: bool = False,
                 selector: IndexSelector | None = None, route: str = "auto"):
        super().__init__()
        if route not in ROUTES:
            raise OptionError(f"route must be one of {ROUTES}, got {route!r}")
        self.route = route
        if weight.dim() != 2:
            raise ShapeError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
        if not weight.dtype.is_floating_point:
            from ..errors import DTypeError

            raise DTypeError(f"weight must be floating point, got {weight.dtype}")
        n, m = weight.shape
        if bias is not None and tuple(bias.shape) != (n,):
            raise ShapeError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
        if not torch.isfinite(weight).all():
            from ..errors import NonFiniteError

            raise NonFiniteError("weight holds NaN/Inf")
        self.n, self.m = int(n), int(m)
        self.register_buffer("weight", weight.detach().clone())
        if bias is None:
            self.bias = None
        elif train_bias:
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_buffer("bias", bias.detach().clone())
        self.U, self.V = _basis(U, self.n), _basis(V, self.m)
        idx = check_indices(indices, (self.n, self.m))
        self.delta = nn.Parameter(torch.zeros(idx.size, dtype=weight.dtype, device=weight.device))
        self.selector = selector
        self.probing = False
        self._set_structure(idx)

    # -- index structure -------------------------------------------------------------
    def _set_structure(self, idx: np.ndarray) -> None:
        dev, dt = self.weight.device, self.weight.dtype
        I, J, ri, ci, dense = _structure(idx, self.m)
        route_u = _side_route(self.U, I.size, self.route, "U")
        route_v = _side_route(self.V, J.size, self.route, "V")
        self.indices = idx
        self._dense = bool(dense)
        self.routes = (route_u, route_v)
        ref = self.weight[:1, :1]
        # transform sides store no columns (buffer None); columns are built only where used
        UI = columns(self.U, I, ref=ref).to(dev).to(dt).contiguous() if route_u == "columns" else None
        VJ = columns(self.V, J, ref=ref).to(dev).to(dt).contiguous() if route_v == "columns" else None
        self.register_buffer("UI", UI, persistent=False)
        self.register_buffer("VJ", VJ, persistent=False)
        self.register_buffer("Iix", torch.from_numpy(I.astype(np.int64)).to(dev), persistent=False)
        self.register_buffer("Jix", torch.from_numpy(J.astype(np.int64)).to(dev), persistent=False)
        self.register_buffer("ri", torch.from_numpy(ri).to(dev), persistent=False)
        self.register_buffer("ci", torch.from_numpy(ci).to(dev), persistent=False)
        crow = np.zeros(I.size + 1, dtype=np.int64)
        np.add.at(crow, ri + 1, 1)
        self.register_buffer("crow", torch.from_numpy(np.cumsum(crow)).to(dev), persistent=False)
        self.register_buffer("col", torch.from_numpy(ci).to(dev), persistent=False)
        self.rows_touched, self.cols_touched = int(I.size), int(J.size)
        self._handle = handle(self, weak=True)

    def __setstate__(self, state):
        # a copy (deepcopy, pickle) needs its own handle: the compiled path looks the layer up by it
        super().__setstate__(state)
        self._handle = handle(self, weak=True)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_linear(cls, linear: nn.Linear, U, V, indices, **kw) -> "SparseGradLinear":
        """Wrap an ``nn.Linear`` (its weight and bias are copied)."""
        if not isinstance(linear, nn.Linear):
            raise ArgumentTypeError(f"expected nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias, U, V, indices, **kw)

    # -- forward ---------------------------------------------------------------------
    @layer_forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.m:
            raise ShapeError(f"input has {x.shape[-1]} features, layer expects {self.m} (shape {tuple(x.shape)})")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.m)
        args = (x2, self.weight, self.bias, self.delta, self.UI, self.VJ, self.Iix, self.Jix, self.ri, self.ci,
                self.crow, self.col, self._dense)
        if is_compiling():  # opaque custom op: no graph break (the probe and CSR products stay eager)
            y = _op_forward(*args, self._handle)[0]
        else:
            y = _SparseGradFn.apply(*args, self)
        return y.reshape(*lead, self.n)

    # -- statistics and refresh ----------------------------------------------------------
    def _probe(self, dy: torch.Tensor, x: torch.Tensor) -> None:
        if self.selector is None:
            self.selector = IndexSelector((self.n, self.m), k=self.nnz)
        A = self.U.apply_t(dy, axis=1)  # dY U, full transform (t, n)
        B = self.V.apply_t(x, axis=1)   # X V (t, m)
        idx, val = topk_product(A, B, min(self.selector.capacity, self.n * self.m))
        self.selector.update(indices=idx, values=val)

    def _update_matrix(self, S: torch.Tensor) -> torch.Tensor:
        """``U_I S V_J^T`` (n, m) for a block ``S (|I|, |J|)`` -- a dense (n, m) result, used only
        off the training step (export, refresh), through the same per-side routes."""
        SV = _from_sub(S, self.V, self.VJ, self.Jix, self.m)  # (|I|, m)
        return _from_sub(SV.t(), self.U, self.UI, self.Iix, self.n).t()  # ((S V_J^T)^T U_I^T)^T

    def merged_weight(self) -> torch.Tensor:
        """The effective dense weight ``W_0 + U S(delta) V^T`` (n, m), for export/inspection."""
        with torch.no_grad():
            S = torch.zeros(self.rows_touched, self.cols_touched, dtype=self.delta.dtype, device=self.delta.device)
            S[self.ri, self.ci] = self.delta
            return self.weight + self._update_matrix(S)

    @torch.no_grad()
    def refresh(self, indices=None, *, optimizer: torch.optim.Optimizer | None = None, U=None, V=None,
                rotate_state: bool = False) -> dict:
        """Move to a new index set (default: ``selector.select()``) and optionally a new basis.

        Entries that leave the set are folded into ``W_0`` (so the function computed by the
        layer does not change); kept entries keep ``delta`` and their optimizer state; new
        entries start at zero. With a new basis, all of ``delta`` is folded; the optimizer
        state restarts at zero, or with ``rotate_state=True`` (what
        :class:`lrmath.sparsegrad.online.OnlineBasis` refreshes use) it is carried into the new
        basis: a first moment ``M~`` (sparse on the old set) maps exactly to
        ``U_new^T U_old M~ V_old^T V_new`` read at the new set; a second moment (a state key
        containing ``"sq"``, e.g. AdamW's ``exp_avg_sq``) maps through the elementwise squares
        of those rotations (the variance of a rotated sum of independent coordinates), so it
        stays non-negative.

        Returns ``{"kept", "added", "dropped"}`` counts.
        """
        if indices is None:
            if self.selector is None:
                raise OptionError("refresh() needs indices or a selector with statistics (set probing=True first)")
            indices = self.selector.select()
        new = check_indices(indices, (self.n, self.m))
        old = self.indices
        new_basis = U is not None or V is not None
        if new_basis:
            keep_old = np.zeros(0, dtype=np.int64)
        else:
            keep_old = np.intersect1d(old, new, assume_unique=True)
        drop_mask = ~np.isin(old, keep_old, assume_unique=True)
        if drop_mask.any():
            S = torch.zeros(self.rows_touched, self.cols_touched, dtype=self.delta.dtype, device=self.delta.device)
            dm = torch.from_numpy(drop_mask).to(self.delta.device)
            S[self.ri[dm], self.ci[dm]] = self.delta[dm]
            self.weight.add_(self._update_matrix(S))
        _, pos_old, pos_new = np.intersect1d(old, new, assume_unique=True, return_indices=True)
        if new_basis:
            pos_old = pos_new = np.zeros(0, dtype=np.int64)
        po = torch.from_numpy(pos_old).to(self.delta.device)
        pn = torch.from_numpy(pos_new).to(self.delta.device)

        def remap(t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(new.size, dtype=t.dtype, device=t.device)
            out[pn] = t[po]
            return out

        rotate = None
        if new_basis and rotate_state and optimizer is not None:
            rotate = self._state_rotation(U if U is not None else self.U, V if V is not None else self.V, new)
        if optimizer is not None:
            st = optimizer.state.get(self.delta, {})
            for key, val in list(st.items()):
                if torch.is_tensor(val) and val.dim() == 1 and val.numel() == old.size:
                    st[key] = rotate(val, "sq" in key) if rotate is not None else remap(val)
        self.delta.data = remap(self.delta.data)
        if self.delta.grad is not None:
            self.delta.grad = None
        if new_basis:
            self.U = _basis(U, self.n) if U is not None else self.U
            self.V = _basis(V, self.m) if V is not None else self.V
        self._set_structure(new)
        return {"kept": int(pos_old.size), "added": int(new.size - pos_old.size), "dropped": int(old.size - pos_old.size)}

    def _state_rotation(self, U_new, V_new, new_idx: np.ndarray):
        """A function ``(values on the old set, squared) -> values on new_idx`` in the new basis."""
        Un, Vn = _basis(U_new, self.n), _basis(V_new, self.m)
        r, c = new_idx // self.m, new_idx % self.m
        I2, ri2 = np.unique(r, return_inverse=True)
        J2, ci2 = np.unique(c, return_inverse=True)
        ref = self.weight[:1, :1]
        dt, dev = self.delta.dtype, self.delta.device
        Uo = columns(self.U, self.Iix.cpu().numpy(), ref=ref).to(dev).to(dt)   # (n, |I|)
        Vo = columns(self.V, self.Jix.cpu().numpy(), ref=ref).to(dev).to(dt)   # (m, |J|)
        Ru = columns(Un, I2, ref=ref).to(dev).to(dt).t() @ Uo                 # U_new[:, I']^T U_old[:, I]
        Rv = Vo.t() @ columns(Vn, J2, ref=ref).to(dev).to(dt)                 # V_old[:, J]^T V_new[:, J']
        ri2t, ci2t = torch.from_numpy(ri2.astype(np.int64)).to(dev), torch.from_numpy(ci2.astype(np.int64)).to(dev)

        def rotate(val: torch.Tensor, squared: bool) -> torch.Tensor:
            S = torch.zeros(self.rows_touched, self.cols_touched, dtype=val.dtype, device=dev)
            S[self.ri, self.ci] = val
            out = (Ru * Ru) @ S @ (Rv * Rv) if squared else Ru @ S @ Rv
            return out[ri2t, ci2t].contiguous()

        return rotate

    def extra_repr(self) -> str:
        return (f"out={self.n}, in={self.m}, nnz={self.nnz} ({self.nnz / (self.n * self.m):.2%}), "
                f"basis=({getattr(self.U, 'kind', '?')}, {getattr(self.V, 'kind', '?')}), "
                f"touched rows={self.rows_touched}, cols={self.cols_touched}, route(U, V)={self.routes}, "
                f"S={'dense-block' if self._dense else 'csr'}")


def _match(name: str, patterns: Sequence[str], exclude: Sequence[str] = ()) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)


@public
def sparsegrad_mlp(model: nn.Module, density: float = 0.01, basis: str = "learned", *,
                   patterns: Sequence[str] = DEFAULT_PATTERNS, exclude: Sequence[str] = DEFAULT_EXCLUDE, warmup: Callable[[nn.Module], torch.Tensor] | None = None,
                   steps: int = 8, grads: Mapping[str, Iterable[torch.Tensor]] | None = None,
                   normalize: bool = True, decay: float | None = None, score_decay: float | None = None, seed: int = 0,
                   route: str = "auto") -> dict[str, SparseGradLinear]:
    """Replace the MLP linears of ``model`` by :class:`SparseGradLinear` layers (in place).

    The basis (``'learned'``, ``'dct'``, ``'hadamard'``, ``'random'``, ``'original'``) and the
    fixed index set (top ``density`` share of the accumulated transformed-gradient energy)
    come from warm-up gradients of the linears whose names match ``patterns`` and none of
    ``exclude`` (fnmatch; default: ``intermediate.dense`` and ``output.dense`` outside
    attention): either ``warmup(model) -> loss`` called ``steps`` times
    (dense gradients, no optimizer step), or precomputed ``grads[name]`` lists, e.g. from
    :func:`lrmath.data.capture_linears`. Every other parameter of the model is frozen.
    ``route`` is passed to each :class:`SparseGradLinear`.

    ``decay`` weighs the warm-up steps in the Gram matrices of the learned basis (default
    :data:`lrmath.sparsegrad.bases.DEFAULT_DECAY`, 0.85); the index set is the top entries of the
    ``score_decay``-weighted sum (default ``DEFAULT_SCORE_DECAY``, 0.97) of each step's transformed
    energy divided by that step's total, so every step counts by its direction, not its size.
    Both defaults were chosen on validation steps (``benchmarks/results/sparsegrad_settings_cpu.md``).

    Returns ``{module name: SparseGradLinear}``.
    """
    from ..sparsegrad.bases import DEFAULT_DECAY, DEFAULT_SCORE_DECAY

    # checked before the warm-up runs, so a bad value fails at once
    decay = check_float(DEFAULT_DECAY if decay is None else decay, "decay", minimum=0.0, maximum=1.0, min_open=True)
    score_decay = check_float(DEFAULT_SCORE_DECAY if score_decay is None else score_decay, "score_decay",
                              minimum=0.0, maximum=1.0, min_open=True)
    k_density = float(density)
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear) and _match(n, patterns, exclude)]
    if not names:
        raise OptionError(f"no nn.Linear of the model matches {list(patterns)}")
    if grads is None:
        if warmup is None:
            raise OptionError("sparsegrad_mlp needs warm-up gradients: pass warmup=callable or grads={name: [G, ...]}")
        mods = dict(model.named_modules())
        collected: dict[str, list[np.ndarray]] = {n: [] for n in names}
        req = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for n in names:
            mods[n].weight.requires_grad_(True)
        try:
            for _ in range(int(steps)):
                for n in names:
                    mods[n].weight.grad = None
                loss = warmup(model)
                loss.backward()
                for n in names:
                    collected[n].append(mods[n].weight.grad.detach().to(torch.float64).cpu().numpy())
                    mods[n].weight.grad = None
        finally:
            for p, r in req.items():
                p.requires_grad_(r)
        grads = collected
    missing = [n for n in names if n not in grads]
    if missing:
        raise OptionError(f"no warm-up gradients for {missing}")
    for p in model.parameters():
        p.requires_grad_(False)
    out: dict[str, SparseGradLinear] = {}
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, attr)
        n, m = lin.weight.shape
        gl = [np.asarray(g.detach().cpu().numpy() if torch.is_tensor(g) else g, dtype=np.float64) for g in grads[name]]
        if not gl:
            raise OptionError(f"empty gradient list for {name}")
        if basis == "learned":
            acc = GramAccumulator(n, m, normalize=normalize, decay=decay)
            for g in gl:
                acc.update(g)
            # float32 eigensolver unless the model is float64 (half the time; the layer stores its dtype anyway)
            U, V = acc.bases(dtype=np.float64 if lin.weight.dtype == torch.float64 else np.float32)
        else:
            U, V = _basis(basis, n, seed), _basis(basis, m, seed)
        idx = _fixed_index_set(gl, lambda g: U.apply_t(V.apply_t(g, axis=1), axis=0), (n, m), k_density,
                               decay=score_decay, normalize=True)
        layer = SparseGradLinear.from_linear(lin, U, V, idx, route=route)
        layer.selector = IndexSelector((n, m), k=idx.size, decay=score_decay)
        setattr(parent, attr, layer)
        out[name] = layer
    return out
