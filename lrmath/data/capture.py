"""Activation capture: real X, dY and weight gradients of the default model's linear layers.

Decisions
---------
* **Captured activations exclude padding tokens.** Padding keys get attention weight
  exactly 0 and padding positions are masked out of the mean pooling, so the output
  gradient of every linear layer is exactly 0 on padding rows; dropping those rows
  changes no weight gradient (``grad == dY.T @ X`` over real tokens only) and keeps the
  statistics of X and dY those of real text. ``include_padding=True`` keeps them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import EmptyInputError
from .models import _task_layers, _torch, linear_layers, load_model
from .tasks import _batch_calls, _row_owners, loss, task_batch

if TYPE_CHECKING:  # pragma: no cover
    from ..torch.model import MiniLM

# ======================================================================== capture
class Capture(dict):
    """``{layer name: {"X", "dY", "grad", ...}}`` from :func:`capture_linears`.

    Attributes
    ----------
    losses : list of float
        Task loss at each step (before that step's update).
    tokens : list of int
        Rows ``t`` of X and dY at each step (real tokens of both sides).
    row_pair, row_side : ndarray of int, shape (t,)
        For each row of the last step's X and dY: the index of its sentence pair in the
        batch and the side (0 = ``a``, 1 = ``b``), e.g. to form per-example gradients.
    """

    losses: list
    tokens: list
    row_pair: np.ndarray
    row_side: np.ndarray

    def __repr__(self) -> str:
        lines = [f"Capture of {len(self)} linear layers, {len(self.losses)} step(s), "
                 f"losses {[round(x, 4) for x in self.losses]}",
                 f"{'layer':<42} {'X':>14} {'dY':>14} {'grad':>14}"]
        for name, d in self.items():
            lines.append(f"{name:<42} {str(d['X'].shape):>14} {str(d['dY'].shape):>14} {str(d['grad'].shape):>14}")
        return "\n".join(lines)


def _resolve_linear(model: Any, name: str):
    """The module called ``name`` and its weight, looking through a PEFT wrapper."""
    for candidate in (name, "base_model.model." + name):
        try:
            mod = model.get_submodule(candidate)
        except AttributeError:
            continue
        weight = getattr(getattr(mod, "base_layer", mod), "weight", None)
        if weight is None or weight.ndim != 2:
            raise ValueError(f"{name!r} is not a linear layer (no 2-D weight)")
        return mod, weight
    raise ValueError(f"model has no submodule {name!r}; linear layers: {[n for n, _ in linear_layers()][:8]}...")


def capture_linears(
    model: "MiniLM | None" = None,
    steps: int = 1,
    n_pairs: int = 16,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    optimizer_lr: float | None = None,
    *,
    max_length: int = 32,
    include_padding: bool = False,
    keep_activations: bool = False,
) -> Capture:
    """Real input activations, output gradients and weight gradients of linear layers.

    Runs forward and backward of :func:`loss` on :func:`task_batch` ``(n_pairs, seed,
    max_length, step=k)`` for ``k = 0 .. steps-1``. For a linear layer ``Y = X Wᵀ + b``
    with W of shape (out, in), the weight gradient is ``dL/dW = dYᵀ X`` summed over all
    token rows; the returned ``grad`` is what autograd put in ``W.grad``, so
    ``grad ≈ dY.T @ X`` is a check of the capture, not an identity.

    Parameters
    ----------
    model : MiniLM, optional
        Default: a fresh :func:`load_model` (float32, eval mode). A model passed in is
        used in its current mode and, when ``optimizer_lr`` is set, **updated in
        place**. PEFT-wrapped models work (names are looked up under
        ``base_model.model.``; the weight is the LoRA layer's frozen base weight and
        dY is the gradient of the whole layer output).
    steps : int
        Forward/backward passes, each on the next batch of the task.
    n_pairs : int
        Sentence pairs per batch (2 * n_pairs sentences).
    seed : int
        Order of the task's pairs.
    layers : sequence of str, optional
        Names as in :func:`linear_layers`; default the 36 encoder linears (the pooler
        is not on the loss path and has no gradient; asking for it is an error).
    optimizer_lr : float, optional
        If set, take an AdamW step (torch defaults otherwise: betas (0.9, 0.999),
        weight_decay 0.01) over the parameters that require grad after each pass, so
        the steps follow a fine-tuning trajectory; if None the weights stay fixed and
        the steps only see different batches.
    max_length : int
        Token truncation length.
    include_padding : bool
        Keep padding-token rows in X and dY (their dY is exactly 0; see the module
        notes). Default False.
    keep_activations : bool
        With ``steps > 1``, also keep every step's X and dY (lists ``"Xs"``, ``"dYs"``);
        by default only the last step's are kept to bound memory.

    Returns
    -------
    Capture (a dict)
        ``{name: {"X": (t, in), "dY": (t, out), "grad": (out, in)}}``, float32 NumPy, from
        the last step; with ``steps > 1`` also ``"grads"``: list of ``steps`` arrays
        (out, in), the weight gradient at each step (before its update). ``.losses``
        lists the loss at each step. The model is left with no ``.grad`` and with its
        ``requires_grad`` flags as they were.

    Raises
    ------
    ValueError
        Unknown layer name, or a layer the loss does not reach.
    """
    from ..backend import check_positive_int

    torch = _torch()
    steps = check_positive_int(steps, "steps")
    if optimizer_lr is not None and not (
        isinstance(optimizer_lr, (int, float)) and optimizer_lr > 0 and math.isfinite(optimizer_lr)
    ):
        raise ValueError(f"optimizer_lr must be a positive finite number or None, got {optimizer_lr!r}")
    if model is None:
        model = load_model()
    names = list(layers) if layers is not None else _task_layers()
    if not names:
        raise EmptyInputError("layers is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"layers has duplicates: {names}")
    targets = {n: _resolve_linear(model, n) for n in names}

    trainable = [p for p in model.parameters() if p.requires_grad]
    # a frozen layer (e.g. a LoRA base) still needs W.grad for the capture: enable it for
    # the duration and restore it afterwards; such weights are not in the optimizer
    temporarily = [w for _, w in targets.values() if not w.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=optimizer_lr) if optimizer_lr is not None and trainable else None

    records: dict[str, dict[str, list]] = {n: {"X": [], "dY": []} for n in names}
    result = Capture({n: {} for n in names})
    result.losses, result.tokens = [], []
    if steps > 1:
        for n in names:
            result[n]["grads"] = []
            if keep_activations:
                result[n]["Xs"], result[n]["dYs"] = [], []

    def make_hook(name: str):
        def hook(module, inputs, output):
            x = inputs[0]
            records[name]["X"].append(x.detach().reshape(-1, x.shape[-1]))
            slot = len(records[name]["dY"])
            records[name]["dY"].append(None)

            def grad_hook(g):
                records[name]["dY"][slot] = g.detach().reshape(-1, g.shape[-1])

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    handles = [mod.register_forward_hook(make_hook(n)) for n, (mod, _) in targets.items()]
    for w in temporarily:
        w.requires_grad_(True)
    try:
        for k in range(steps):
            batch = task_batch(n_pairs, seed, max_length, step=k)
            calls = _batch_calls(batch)
            keep = torch.cat([m.reshape(-1) for _, m in calls]).bool()
            for r in records.values():
                r["X"].clear()
                r["dY"].clear()
            model.zero_grad(set_to_none=True)
            for _, w in targets.values():
                w.grad = None
            value = loss(model, batch)
            value.backward()
            result.losses.append(float(value.detach()))
            for n, (_, w) in targets.items():
                r = records[n]
                if not r["X"] or any(g is None for g in r["dY"]) or w.grad is None:
                    raise ValueError(f"layer {n!r} is not on the path of the task loss (no gradient reached it)")
                X = torch.cat(r["X"])
                dY = torch.cat(r["dY"])
                if not include_padding:
                    rows = keep.to(X.device)
                    X, dY = X[rows], dY[rows]
                X = X.float().cpu().numpy()
                dY = dY.float().cpu().numpy()
                grad = w.grad.detach().float().cpu().numpy().copy()
                result[n].update(X=X, dY=dY, grad=grad)
                if steps > 1:
                    result[n]["grads"].append(grad)
                    if keep_activations:
                        result[n]["Xs"].append(X)
                        result[n]["dYs"].append(dY)
            result.tokens.append(int(keep.sum()) if not include_padding else int(keep.numel()))
            owners = _row_owners(calls, batch["labels"].shape[0], None if include_padding else keep)
            result.row_pair, result.row_side = owners
            if optimizer is not None:
                optimizer.step()
    finally:
        for h in handles:
            h.remove()
        for w in temporarily:
            w.requires_grad_(False)
        model.zero_grad(set_to_none=True)  # the gradients are returned; free the model's copies
        for r in records.values():
            r["X"].clear()
            r["dY"].clear()
    return result
